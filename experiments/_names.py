"""The built-in corpus of experiments/backprop_ninja.py: 513 common English given names.

Written out by hand for jaxbp (a list of everyday first names, facts no one owns), lower case,
letters a–z only, so that the script needs no download. Karpathy's exercise trains on 32k names
(names.txt); this list is smaller, enough for a 3-character context model to learn something
(and to overfit: the script reports a held-out loss).
"""

NAMES = """
aaron abby abigail ada adam adele adrian agnes aidan aisha alan albert alec alex alexa alexander
alexis alfred alice alicia alison allan allen alma amanda amber amelia amy ana andre andrea andrew
andy angela angie anita ann anna anne annie anthony april archie arlo arthur ashley astrid audrey
austin ava avery barbara barry beatrice becky ben benjamin bernard beth betty beverly bianca bill
blake bonnie brad bradley brenda brent brian bridget brittany brooke bruce bryan caleb callum calvin
cameron camila carl carla carlos carmen carol caroline carolyn carter casey cassie catherine cecil
cecilia celia chad charles charlie charlotte chelsea cheryl chloe chris christian christina
christine christopher cindy claire clara clarence claudia clay clifford clyde cody colin connie
connor craig crystal curtis cynthia daisy dale dan dana daniel danielle danny darren david dawn dean
deborah debra delia denise dennis derek diana diane dolores dominic donald donna dora doris dorothy
douglas dylan earl eddie edgar edith edmund edna edward edwin eileen elaine eleanor elena eli elijah
elise eliza elizabeth ella ellen ellie elliot eloise elsie emily emma eric erica erin ernest esme
esther ethan eugene eva evan evelyn ezra faith felix fern fiona florence flora frances francis frank
fred freya gabriel gail gareth gary gavin gemma gene george georgia gerald gertrude gilbert gina
glen gloria gordon grace graham grant greg gregory gwen hannah harold harriet harry harvey hazel
heather hector heidi helen henry herbert holly howard hugh hugo ian ida imogen ingrid irene iris isaac
isabel isaiah ivan ivy jack jackie jacob jade jake james jamie jane janet janice jasmine jason jasper
jean jeff jennifer jenny jeremy jerry jesse jessica jill jim joan joanna joe joel john johnny jonah
jonathan jordan joseph josephine joshua joy joyce judith judy julia julian julie june justin karen
kate katherine kathleen kathy katie kay keith kelly ken kenneth kevin kim kirk kyle laura lauren
lawrence leah lee leo leon leonard leslie lewis lila lillian lily linda lisa lloyd logan lois lola
lorna louis louise lucas lucy luke lydia lynn mabel madeline maggie malcolm marcus margaret maria
marian marie marilyn mario marion mark martha martin mary matilda matthew maude maureen max maya
megan melanie melissa michael michelle mildred miles milo miriam molly monica morgan muriel nancy
naomi natalie nathan neil nell nicholas nicole nina noah nora norman oliver olivia oscar owen paige
pamela patricia patrick paul paula pauline pearl peggy penny percy peter philip phoebe phyllis piper
poppy priscilla quentin quinn rachel ralph randall ray raymond rebecca regina rex rhoda richard rita
robert robin roger roland ronald rosa rose rosie ross roy ruby russell ruth ryan sadie sally samantha
samuel sandra sara sarah scott sean seth sharon sheila shirley sidney silas simon sophia sophie
stanley stella stephanie stephen steven stuart sue susan sylvia tabitha tamara tanya ted teresa
terry thea theo thelma theodore thomas tiffany tim timothy tina toby todd tom tony tracy travis trevor
troy tyler ursula valerie vanessa vera veronica victor victoria vincent violet virginia vivian wade
wallace walter wanda warren wayne wendy wesley whitney wilbur will william willow wilma winifred
winston xavier yasmin yvonne zachary zara zoe
""".split()
