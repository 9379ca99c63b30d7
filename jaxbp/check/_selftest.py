"""``jaxbp selftest``: does the verifier catch real bugs, and only real bugs?

Over random correct configurations (depths 1–5, widths, activations, losses,
float32 and float64, random weights, biases, inputs and targets) it runs

* four correct backprops written differently from jaxbp's own (the notes'
  chain, jax.grad in your dtype, the chain's batch mean, and that mean as one
  matrix product): any failure is a false alarm;
* every per-example mutant of ``jaxbp.check._mutants.MUTANTS`` that applies to the
  network, at one random layer where it applies, two of the batch mutants
  (drawn at random; each calls the function once per example, the slow part),
  and the 3e-4 precision probe;

and counts mutants caught, first bad layer right, and suspect right. A mutant
whose gradient differs from the truth by less than EFFECT_MIN (relative to the
leaf) or by no more than round-off on the drawn inputs is "ineffective" there
(e.g. a relu bug when no z < 0, or any bug behind a dead unit) and is counted
apart; the probe's 3e-4 is above EFFECT_MIN.
"""

from __future__ import annotations

import collections
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core._activations import ACTIVATIONS
from jaxbp.core._network import Dense, Network

EFFECT_MIN = 1e-4
BATCH_MUTANTS_PER_CONFIG = 2
WIDTHS = (1, 2, 3, 4, 6)  # few distinct shapes keep JAX's per-shape compilation cheap
BATCH = 32
LAST_ACTIVATIONS = {
    "squared": ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softplus", "gelu",
                "softmax"),
    "hinge": ("identity", "tanh"),
    "binary_nll": ("sigmoid",),
    "nll": ("softmax",),
}


def random_network(rng: np.random.Generator):
    """A random valid Network: depth 1–5; half of them with equal widths."""

    depth = int(rng.integers(1, 6))
    loss = str(rng.choice(tuple(LAST_ACTIVATIONS)))
    hidden = [str(rng.choice(tuple(ACTIVATIONS))) for _ in range(depth - 1)]
    last = str(rng.choice(LAST_ACTIVATIONS[loss]))
    if rng.random() < 0.5:  # equal widths: the link and weight mix-ups need square W
        sizes = [int(rng.choice(WIDTHS[1:]))] * (depth + 1)
    else:
        sizes = [int(rng.choice(WIDTHS)) for _ in range(depth + 1)]
    return make_network(sizes, hidden, last, loss)


def make_network(sizes, hidden, last, loss):
    """A Network with the output width fitted to the loss (hinge: 1 unit, nll: at least 2)."""

    sizes = list(sizes)
    if loss == "hinge":
        sizes[-1] = 1
    if loss == "nll":
        sizes[-1] = max(sizes[-1], 2)
    return Network(sizes=tuple(sizes), activations=(*hidden, last), loss=loss)


def random_targets(net, key, batch: int, dtype):
    """Random valid targets (B, n^L) for the net's loss: one-hot, {0, 1}, {-1, +1} or normal."""
    n = net.sizes[-1]
    if net.loss_name == "nll":
        return jax.nn.one_hot(jax.random.randint(key, (batch,), 0, n), n, dtype=dtype)
    if net.loss_name == "binary_nll":
        return jax.random.bernoulli(key, 0.5, (batch, n)).astype(dtype)
    if net.loss_name == "hinge":
        return jnp.where(jax.random.bernoulli(key, 0.5, (batch, n)), 1.0, -1.0).astype(dtype)
    return jax.random.normal(key, (batch, n), dtype)


def random_problem(net, seed: int, batch: int, dtype):
    """Params with nonzero biases, inputs N(0, 1) and valid targets."""

    kp, kb, kx, ky = jax.random.split(jax.random.key(seed), 4)
    params = net.init(kp, dtype=dtype)
    params = tuple(Dense(p.W, 0.3 * jax.random.normal(k, p.W0.shape, dtype))
                   for p, k in zip(params, jax.random.split(kb, net.num_layers)))
    X = jax.random.normal(kx, (batch, net.sizes[0]), dtype)
    return params, X, random_targets(net, ky, batch, dtype)


def _stats():
    return collections.Counter()


def selftest(configs: int = 500, *, seed: int = 0, batch: int = BATCH, progress=None) -> dict:
    """Runs the correct backprops and the mutant catalog over random configurations.

    Args:
      configs: how many random (network, dtype, data) configurations.
      seed: the seed of the whole run.
      batch: B, examples per configuration.
      progress: optional callable(i, configs) after each configuration.

    Returns:
      A JSON-ready dict: ``mutants`` (name -> counts), ``correct`` (name ->
      runs, false alarms), ``false_alarm_examples``, ``misses`` (examples of
      wrong verdicts), ``ambiguous`` (mutant -> the reasons given),
      ``seconds`` and ``passed`` (every effective mutant caught, its layer
      right, no false alarms).
    """
    from jaxbp.check._mutants import CORRECT, MUTANTS, PROBES
    from jaxbp.check._verify import check_against, reference

    rng = np.random.default_rng(seed)
    mutant_stats = collections.defaultdict(_stats)
    correct_stats = collections.defaultdict(_stats)
    false_alarms, misses, ambiguous_examples = [], [], []
    ambiguous = collections.defaultdict(collections.Counter)
    start = time.perf_counter()
    with jax.enable_x64(True):
        for i in range(configs):
            net = random_network(rng)
            dtype = jnp.float32 if i % 2 == 0 else jnp.float64
            params, X, Y = random_problem(net, int(rng.integers(2**31)), batch, dtype)
            where = f"{net!r} dtype={jnp.dtype(dtype).name} config={i}"
            ref = reference(net, params, X, Y)
            for name, batched, make in CORRECT:
                report = check_against(ref, make(net), batched=batched)
                correct_stats[name]["runs"] += 1
                if not report.ok:
                    correct_stats[name]["false_alarms"] += 1
                    false_alarms.append(f"{name} on {where}: layer {report.first_bad_layer} "
                                        f"{report.suspect}; {_worst(report)}")
            batch_bugs = [m for m in MUTANTS if m.batched]
            chosen = set(rng.choice(len(batch_bugs), BATCH_MUTANTS_PER_CONFIG, replace=False))
            for mutant in MUTANTS + PROBES:
                if mutant.batched and batch_bugs.index(mutant) not in chosen:
                    continue  # the batch stage is the slow one: a few per configuration
                layers = mutant.layers(net)
                if not layers:
                    continue
                l = int(rng.choice(layers))
                report = check_against(ref, mutant.build(net, l), batched=mutant.batched,
                                       vectorized=not mutant.batched)
                _score(mutant, net, l, ref, report, mutant_stats[mutant.name], misses,
                       ambiguous, ambiguous_examples, where)
            if progress is not None:
                progress(i + 1, configs)
    seconds = time.perf_counter() - start
    totals = sum((mutant_stats[m.name] for m in MUTANTS), collections.Counter())
    passed = (not false_alarms and totals["caught_effective"] == totals["effective"]
              and totals["layer_right"] == totals["effective"])
    return {
        "configs": configs, "batch": batch, "seed": seed, "seconds": round(seconds, 1),
        "mutants": {m.name: dict(mutant_stats[m.name], factor=m.factor,
                                 description=m.description) for m in MUTANTS + PROBES},
        "totals": dict(totals),
        "correct": {k: dict(v) for k, v in correct_stats.items()},
        "false_alarm_examples": false_alarms[:20],
        "misses": misses[:30],
        "ambiguous": {k: dict(v.most_common()) for k, v in ambiguous.items()},
        "ambiguous_examples": ambiguous_examples,
        "passed": bool(passed),
    }


def _effective(report, ref) -> bool:
    """Whether the mutant changed some leaf by more than EFFECT_MIN of its scale, and by
    more than round-off (100 eps of the largest per-example gradient entry): a batch
    mean that cancels to round-off has relative errors of 1 that mean nothing."""
    largest = max(float(np.max(np.abs(g))) for layer in ref.grads for g in layer)
    noise = 100 * np.finfo(np.dtype(report.dtype)).eps * largest
    return any(r.max_abs_error > max(EFFECT_MIN * r.scale, noise) for r in report.rows)


def _worst(report) -> str:
    r = max(report.rows, key=lambda r: r.max_rel_error / max(r.budget, 1e-300))
    return (f"layer {r.layer} {r.parameter} rel err {r.max_rel_error:.2e} > budget "
            f"{r.budget:.2e}")


def _score(mutant, net, l, ref, report, stats, misses, ambiguous, ambiguous_examples, where):
    want_layer, want_suspect = mutant.expect(net, l)
    stats["applied"] += 1
    if not _effective(report, ref):
        stats["ineffective"] += 1
        stats["caught_ineffective"] += int(not report.ok)
        return
    stats["effective"] += 1
    if report.ok:
        misses.append(f"{mutant.name} at layer {l} NOT CAUGHT on {where}")
        return
    stats["caught_effective"] += 1
    layer_right = report.first_bad_layer == want_layer
    stats["layer_right"] += int(layer_right)
    if report.suspect == want_suspect and not report.ambiguous:
        stats["suspect_right"] += 1
    elif report.ambiguous and want_suspect in report.candidates:
        stats["ambiguous_listed"] += 1
        ambiguous[mutant.name][_reason(report)] += 1
        if sum(ambiguous[mutant.name].values()) <= 2:
            ambiguous_examples.append(f"{mutant.name} at layer {l} on {where}: {_reason(report)}")
    else:
        stats["suspect_wrong"] += 1
    if not layer_right or want_suspect not in report.candidates:
        misses.append(f"{mutant.name} at layer {l}: got layer {report.first_bad_layer} "
                      f"{report.suspect} {report.candidates} (want {want_layer} "
                      f"{want_suspect}) on {where}; evidence {report.evidence}")


AMBIGUITY = {
    "scaled": "your ∂L/∂z^ℓ is a multiple of the true one (a one-unit link is a scalar too)",
    "both_fit": "both an activation factor and a link fit the batch",
    "neither_fits": "neither fits alone",
    "link_undetermined": "too few examples to test the link",
    "activation_undetermined": "too few informative entries to test the activation",
    "dead_input": "a^(l-1) = 0 on the batch (dead units): ∂L/∂W^l cannot tell bias from ∂L/∂z",
    "weight_too": "∂L/∂W^l is not a^(l-1) (your ∂L/∂W0^l)ᵀ either",
}


def _reason(report) -> str:
    tag = (report.evidence or {}).get("ambiguity", "")
    return AMBIGUITY.get(tag, tag or "ambiguous")


def format_summary(result: dict) -> str:
    """The self-test result as a table a person can read at a glance."""
    lines = [f"jaxbp selftest: {result['configs']} random configurations, B={result['batch']}, "
             f"seed={result['seed']}, {result['seconds']} s"]
    head = (f"{'mutant':<34} {'factor':<10} {'applied':>7} {'effective':>9} {'caught':>6} "
            f"{'layer ok':>8} {'suspect ok':>10} {'ambiguous':>9} {'wrong':>5}")
    lines.append(head)
    for name, s in result["mutants"].items():
        lines.append(f"{name:<34} {s['factor']:<10} {s.get('applied', 0):>7} "
                     f"{s.get('effective', 0):>9} {s.get('caught_effective', 0):>6} "
                     f"{s.get('layer_right', 0):>8} {s.get('suspect_right', 0):>10} "
                     f"{s.get('ambiguous_listed', 0):>9} {s.get('suspect_wrong', 0):>5}")
    t = result["totals"]
    lines.append(f"{'TOTAL (catalog, probe excluded)':<34} {'':<10} {t.get('applied', 0):>7} "
                 f"{t.get('effective', 0):>9} {t.get('caught_effective', 0):>6} "
                 f"{t.get('layer_right', 0):>8} {t.get('suspect_right', 0):>10} "
                 f"{t.get('ambiguous_listed', 0):>9} {t.get('suspect_wrong', 0):>5}")
    for name, s in result["correct"].items():
        lines.append(f"correct backprop {name!r}: {s.get('runs', 0)} runs, "
                     f"{s.get('false_alarms', 0)} false alarms")
    if result["ambiguous"]:
        lines.append("ambiguous verdicts (expected suspect listed among the candidates):")
        for name, reasons in result["ambiguous"].items():
            for reason, count in reasons.items():
                lines.append(f"  {name}: {count}× {reason}")
    for line in result["false_alarm_examples"] + result["misses"]:
        lines.append(f"  ! {line}")
    lines.append("PASSED: every effective mutant caught at the right layer, no false alarms"
                 if result["passed"] else "FAILED")
    return "\n".join(lines)
