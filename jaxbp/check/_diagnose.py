"""What *kind* of mistake a wrong gradient is: the fixed vocabulary and how findings combine.

Every report (``verify``, ``check_module``, ``check_vjp``, ``check_intermediates``, the
NumPy checks) carries ``diagnosis``: a tuple of ``Finding(kind, where, detail, value)``,
most telling first. ``kind`` is one word of ``KINDS``; each is made only when it explains
the error to within the check's budget (what remains after the fit is within budget), so
a correct gradient has no findings, except "kink" (a valid subgradient at a point where
the forward is not differentiable, which leaves ``ok`` True).

One example of each kind:

* "scale": yours = c × truth, one c ≠ 1 (c = 1/B: a loss divided by B whose gradient is not);
* "sign": c = −1 (a minus sign lost in a subtraction's derivative);
* "transpose": dW equals the truth transposed (``x.T @ dy`` written ``dy.T @ x``);
* "flipped": a convolution's dW equals the truth flipped along its spatial axes;
* "masked": a ReLU's or a dropout's backward that forgets its mask (wrong exactly where the
  mask is off, right elsewhere);
* "repeated ids": an embedding gradient assigned (``dW[ids] = dy``) instead of accumulated;
* "ties": a max-pool backward that gives the whole gradient to every tied maximum;
* "border": a convolution's input gradient wrong only where the padding reaches;
* "time steps": a BPTT that forgets the carried state gradient (right at the last step only);
* "missing term": yours = truth − the contribution through one consumer (a forgotten ``+=``);
* "reduction": a mean where a sum is due, or the right numbers summed over the wrong axis;
* "clipped": yours = the truth clipped to ±c (min-char-rnn's ``np.clip(d, -5, 5)``);
* "ignores upstream": the backward's result does not scale with the upstream gradient;
* "not reentrant": two calls of the backward on the same inputs disagree;
* "mutates input": the backward changed an array it was given;
* "kink": the only disagreement is at a kink (ReLU at 0, a tie in a max) and yours is a
  valid subgradient there;
* "other": none of the above explains the error.
"""

from __future__ import annotations

from jaxbp.check._report import Finding

KINDS = ("scale", "sign", "transpose", "flipped", "masked", "repeated ids", "ties", "border",
         "time steps", "missing term", "reduction", "clipped", "ignores upstream",
         "not reentrant", "mutates input", "kink", "other")

# Findings about how the backward behaves as a function (it is wrong whatever its values).
STRUCTURAL = ("ignores upstream", "not reentrant", "mutates input")

# Most telling first: structural kinds, then the kinds read from the forward's structure,
# then the plain numeric fits; "kink" (not an error) and "other" (no explanation) last.
_RANK = {kind: i for i, kind in enumerate(
    STRUCTURAL + ("time steps", "repeated ids", "ties", "border", "masked", "missing term",
                  "flipped", "transpose", "reduction", "clipped", "sign", "scale", "kink",
                  "other"))}
assert set(_RANK) == set(KINDS)


def merge(*groups) -> tuple:
    """Concatenates tuples of ``Finding``, most telling first, without duplicates.

    The order is by kind (structural kinds first, "kink" and "other" last), stable
    within a kind, so the order each group gave its findings in is kept. A finding
    equal in (kind, where) to an earlier one is dropped.

    Args:
      *groups: tuples (or lists) of ``Finding``; None and () are skipped.

    Returns:
      One tuple of ``Finding``.

    Example:
      >>> from jaxbp import Finding
      >>> a = (Finding("scale", "layer 1 W", "yours is 2 × the truth", 2.0),)
      >>> b = (Finding("not reentrant", "layer 1 W", "two calls disagree"),)
      >>> [f.kind for f in merge(a, b, a)]
      ['not reentrant', 'scale']
    """
    seen, out = set(), []
    for group in groups:
        for f in group or ():
            if not isinstance(f, Finding):
                raise TypeError(f"merge: expected Finding values, got {type(f).__name__}")
            if f.kind not in _RANK:
                raise ValueError(f"merge: kind {f.kind!r} is not one of {KINDS}")
            key = (f.kind, f.where)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return tuple(sorted(out, key=lambda f: _RANK[f.kind]))
