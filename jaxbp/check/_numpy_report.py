"""The ``Report`` of a NumPy check (modes "layer", "loss", "modules")."""

from __future__ import annotations

from jaxbp.check._report import Report


def numpy_report(rows, *, mode: str, dtype, trials: int, truth: str, network: str, notes=(),
                 time_step=None, gate=(), first_bad=None, first_bad_layer=None,
                 module=None, suspect=None) -> Report:
    """A report over ``rows``; the first wrong row names ``first_bad``."""
    common = dict(rows=tuple(rows), mode=mode, dtype=str(getattr(dtype, "name", dtype)),
                  batch_size=trials, network=network, truth=truth)
    bad = [r for r in rows if not r.ok]
    if not bad:
        return Report(ok=True, first_bad_layer=None, suspect=None, notes=tuple(notes),
                      **common)
    row = next((r for r in bad if r.nonfinite), bad[0])
    if suspect is None:
        suspect = "nonfinite" if row.nonfinite else "backward"
    primal = next(i for i, r in enumerate(rows) if r is row) if mode != "modules" else None
    note = (f"{first_bad or row.parameter}: worst entry {row.worst_entry} at trial "
            f"{row.worst_example}, error {row.max_abs_error:.3g} (relative "
            f"{row.max_rel_error:.3g})")
    return Report(ok=False, first_bad_layer=first_bad_layer, suspect=suspect, primal=primal,
                  candidates=(suspect,), notes=(note,) + tuple(notes),
                  first_bad=first_bad or row.parameter, module=module, time_step=time_step,
                  gate=tuple(gate), **common)
