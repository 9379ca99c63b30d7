"""`explain`: the notes' chain for one weight as text or LaTeX, and `jaxbp explain`.

The chain is the one ``jaxbp.chain`` computes, grouped as the notes group it
(their eq. 7): the loss unit, then each layer's pair of factors,

    ∂L/∂W^1 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂a^1) · (∂a^1/∂z^1 · ∂z^1/∂W^1)
               loss unit   layer 2                   layer 1

With params, x and y each factor's value stands beside it, followed by their
product next to ``jax.grad``'s ∂L/∂W^l, the bias gradient (∂z^l/∂W0^l = 1) and,
for ``nll``/``binary_nll``, the fused ∂L/∂z^L = a^L − y that the library's
backprop uses in place of the first two factors.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core import _chain
from jaxbp.core._network import _forward_trace
from jaxbp.core._tolerances import relative_error

FORMATS = ("text", "latex")


# ------------------------------------------------------------------ symbols

def _latex_symbol(name: str, k: int) -> str:
    frac = r"\frac{\partial %s}{\partial %s}"
    if name == "loss":
        return frac % (r"\mathcal{L}", f"a^{{{k}}}")
    if name == "activation":
        return frac % (f"a^{{{k}}}", f"z^{{{k}}}")
    if name == "link":
        return frac % (f"z^{{{k}}}", f"a^{{{k - 1}}}")
    return frac % (f"z^{{{k}}}", f"W^{{{k}}}")


def _grad_symbol(layer: int, latex: bool, bias: bool = False) -> str:
    if latex:
        return r"\frac{\partial \mathcal{L}}{\partial %s^{%d}}" % ("W_0" if bias else "W", layer)
    return f"∂L/∂{'W0' if bias else 'W'}{_chain._sup(layer)}"


def _loss_formula(net) -> str:
    # The loss derivative's own docstring ("∂L/∂a = 2 (a − y).") is the one place
    # its formula is written; show its right-hand side rather than a copy.
    doc = (net._loss.dL_da.__doc__ or "").strip().splitlines()
    if not doc or "=" not in doc[0]:
        return f"{net.loss_name}'(a^L, y)"
    return doc[0].split("=", 1)[1].strip().rstrip(".") + f", a = a{_chain._sup(net.num_layers)}"


def _formula(net, name: str, k: int, latex: bool) -> str:
    """The factor's right-hand side in the notes' terms, e.g. "tanh'(z^1)"."""
    if name == "loss":
        return "" if latex else _loss_formula(net)
    if name == "activation":
        act = net.activations[k - 1]
        if latex:
            return r"\mathrm{%s}'(z^{%d})" % (act.replace("_", r"\_"), k)
        suffix = "" if net._acts[k - 1].elementwise else " (Jacobian)"
        return f"{act}'(z{_chain._sup(k)}){suffix}"
    if name == "link":
        return f"W^{{{k}}}" if latex else f"W{_chain._sup(k)}"
    if latex:
        return "a^{0} = x" if k == 1 else f"a^{{{k - 1}}}"
    return "a^0 = x" if k == 1 else f"a{_chain._sup(k - 1)}"


def _groups(spec):
    """[(label, [(name, k), ...]), ...]: the loss unit, then one group per layer."""
    groups = [("loss unit", [spec[0]])]
    for i in range(1, len(spec), 2):
        groups.append((f"layer {spec[i][1]}", [spec[i], spec[i + 1]]))
    return groups


def _headline(spec, layer: int, latex: bool) -> list[str]:
    groups = _groups(spec)
    if latex:
        parts = [r"\left(" + r" \cdot ".join(_latex_symbol(n, k) for n, k in g) + r"\right)"
                 for _, g in groups]
        return [f"${_grad_symbol(layer, True)} = " + r" \cdot ".join(parts) + "$"]
    parts = ["(" + " · ".join(_chain.symbol(n, k) for n, k in g) + ")" for _, g in groups]
    head = f"{_grad_symbol(layer, False)} = "
    labels = " " * len(head)
    for (label, _), part in zip(groups, parts):
        width = len(part) + 3  # the " · " between groups
        labels += label.ljust(width)
    return [head + " · ".join(parts), labels.rstrip()]


# ------------------------------------------------------------------ numbers

def _num(v: float, latex: bool) -> str:
    s = f"{v + 0.0:.6g}"  # + 0.0 turns −0 (e.g. −y/a with y = 0) into 0
    if latex and "e" in s:
        mantissa, exponent = s.split("e")
        s = r"%s\times 10^{%d}" % (mantissa, int(exponent))
    return s


def _fmt(value, latex: bool, diagonal: bool = False) -> str:
    """A factor's value: a number when 1×1, else its shape and entries."""
    v = np.asarray(value, dtype=np.float64)
    if v.size == 1:
        return _num(v.item(), latex)
    if v.ndim == 2 and diagonal:
        body = r"\mathrm{diag}(%s)" if latex else "diag(%s)"
        body %= ", ".join(_num(d, latex) for d in np.diag(v))
    elif v.ndim == 2 and v.shape[1] == 1:
        body = "[" + ", ".join(_num(d, latex) for d in v[:, 0]) + "]"
        body += r"^{\top}" if latex else "ᵀ"
    else:
        body = np.array2string(v, precision=4, separator=", ", threshold=24,
                               max_line_width=10**6)
        body = re.sub(r"\s*\n\s*", " ", body)
        if latex:
            body = re.sub(r"(\d)e([+-]\d+)", lambda m: r"%s\times 10^{%d}" % (
                m.group(1), int(m.group(2))), body)
    shape = "×".join(str(s) for s in v.shape)
    return (r"%s \quad (%s)" % (body, shape.replace("×", r"\times "))) if latex else \
        f"{body}  ({shape})"


def _prepare(net, params, x, y):
    """x, y validated as ``chain`` validates them (a scalar x or y is fine in 1-D)."""
    if net.sizes[0] == 1 and np.ndim(x) == 0:
        x = jnp.reshape(jnp.asarray(x), (1,))
    params, x, y = net._example(params, x, y, batched=False)
    return params, x, y


# ------------------------------------------------------------------ explain

def explain(net, *, layer: int, params=None, x=None, y=None, format: str = "text") -> str:
    """The notes' chain rule for ∂L/∂W^layer, symbolic, or with each factor's value.

    Args:
      net: a ``Network``.
      layer: l in 1..L.
      params: the net's parameters. ``params``, ``x`` and ``y`` come all three
        or none. With them each factor's value is shown (see ``jaxbp.chain``
        for shapes), then the product (``jaxbp.contract``) beside
        ``jax.grad``'s ∂L/∂W^l and the bias gradient ∂L/∂W0^l.
      x: one input (with ``params`` and ``y``).
      y: its target (with ``params`` and ``x``).
      format: "text" (Unicode, aligned columns) or "latex": one ``$...$``
        expression per line, in the subset of LaTeX that matplotlib's mathtext
        renders.

    Returns:
      A multi-line string.

    Raises:
      ValueError: layer outside 1..L, an unknown format, only some of params,
        x, y, or x/y shapes that do not fit the net.

    Example:
      >>> import jaxbp
      >>> net = jaxbp.Network(sizes=(1, 1, 1), activations=("tanh", "sigmoid"), loss="squared")
      >>> print(jaxbp.explain(net, layer=1).splitlines()[0])
      ∂L/∂W^1 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂a^1) · (∂a^1/∂z^1 · ∂z^1/∂W^1)
    """
    layer = _chain.check_layer(net, layer)
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    given = {"params": params is not None, "x": x is not None, "y": y is not None}
    if any(given.values()) and not all(given.values()):
        missing = ", ".join(k for k, v in given.items() if not v)
        raise ValueError(f"explain: params, x and y go together (to show values); missing {missing}")
    latex = format == "latex"
    L = net.num_layers
    spec = _chain.spec(L, layer)
    lines = _headline(spec, layer, latex)
    factors = None
    if params is not None:
        params, x, y = _prepare(net, params, x, y)
        factors = _chain.chain(net, params, x, y, layer=layer)
    if latex:
        lines += _latex_rows(net, spec, factors)
    else:
        lines += _text_rows(net, spec, layer, factors)
    if factors is not None:
        lines += _checks_lines(net, params, x, y, layer, factors, latex)
    elif net._loss.dL_dz is not None and not latex:
        lines.append(f"note: the library's backprop fuses factors 1 and 2 of loss "
                     f"{net.loss_name!r} into the stable ∂L/∂z{_chain._sup(L)} = a{_chain._sup(L)} − y")
    return "\n".join(lines)


def _text_rows(net, spec, layer, factors) -> list[str]:
    L = net.num_layers
    lines = [
        f"network: sizes {net.sizes}, activations {net.activations}, loss {net.loss_name!r}; "
        f"L = {L}, l = {layer}: 2(L − l) + 3 = {len(spec)} factors, from the loss backwards",
        "",
    ]
    rows = [("#", "factor", "symbol", "", "formula", "value" if factors else "")]
    for i, (name, k) in enumerate(spec):
        value = ""
        if factors is not None:
            diagonal = name == "activation" and net._acts[k - 1].elementwise
            value = _fmt(factors[i].value, False, diagonal)
        rows.append((str(i + 1), name, _chain.symbol(name, k), "=",
                     _formula(net, name, k, False), value))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for r in rows:
        lines.append(("  " + "  ".join(r[c].ljust(widths[c]) for c in range(5))
                      + "  " + r[5]).rstrip())
    return lines


def _latex_rows(net, spec, factors) -> list[str]:
    lines = []
    for i, (name, k) in enumerate(spec):
        parts = [_latex_symbol(name, k)]
        formula = _formula(net, name, k, True)
        if formula:
            parts.append(formula)
        if factors is not None:
            diagonal = name == "activation" and net._acts[k - 1].elementwise
            parts.append(_fmt(factors[i].value, True, diagonal))
        lines.append("$" + " = ".join(parts) + "$")
    return lines


@functools.partial(jax.jit, static_argnums=0)
def _reference(net, params, x, y):
    """jax.grad's gradient (the ground truth) and z^L, compiled once per net."""
    return jax.grad(net.loss)(params, x, y), _forward_trace(net, params, x).z[-1]


def _checks_lines(net, params, x, y, layer, factors, latex) -> list[str]:
    """Product of the factors beside jax.grad, the bias, and the fused loss factor."""
    grads, zL = _reference(net, params, x, y)
    grads = grads[layer - 1]
    product, bias = _chain.contract(factors), _chain.contract(factors[:-1])
    err_W, err_b = relative_error(product, grads.W), relative_error(bias, grads.W0)
    L = net.num_layers
    if latex:
        out = [r"$%s = %s \quad \mathrm{jax.grad}: %s \quad \mathrm{rel.\ error}\ %s$" % (
            _grad_symbol(layer, True), _fmt(product, True), _fmt(grads.W, True),
            _num(err_W, True)),
            r"$%s = \frac{\partial \mathcal{L}}{\partial z^{%d}} = %s \quad "
            r"\mathrm{jax.grad}: %s$" % (_grad_symbol(layer, True, bias=True), layer,
                                         _fmt(bias[:, None], True), _fmt(grads.W0[:, None], True))]
    else:
        n = len(factors)
        head = f"product of the {n} factors"
        out = ["",
               f"{head}  {_grad_symbol(layer, False)} = {_fmt(product, False)}",
               f"{'jax.grad'.ljust(len(head))}  {_grad_symbol(layer, False)} = {_fmt(grads.W, False)}"
               f"   relative error {err_W:.1e}",
               f"bias: ∂z{_chain._sup(layer)}/∂W0{_chain._sup(layer)} = 1, so "
               f"{_grad_symbol(layer, False, bias=True)} = ∂L/∂z{_chain._sup(layer)} = factors 1..{n - 1}"
               f" = {_fmt(bias[:, None], False)}   jax.grad {_fmt(grads.W0[:, None], False)}"
               f"   relative error {err_b:.1e}"]
    if net._loss.dL_dz is not None:
        fused = net._loss.dL_dz(zL, y)
        unfused = _chain.contract(factors[:2])
        err = relative_error(unfused, fused)
        if latex:
            out.append(r"$\frac{\partial \mathcal{L}}{\partial a^{%d}} \cdot "
                       r"\frac{\partial a^{%d}}{\partial z^{%d}} = %s \quad a^{%d} - y = %s$" % (
                           L, L, L, _fmt(unfused[:, None], True), L, _fmt(fused[:, None], True)))
        else:
            s = _chain._sup(L)
            out.append(f"fused: factors 1·2 = ∂L/∂a{s} · ∂a{s}/∂z{s} = {_fmt(unfused[:, None], False)}"
                       f"; the library's stable ∂L/∂z{s} = a{s} − y = {_fmt(fused[:, None], False)}"
                       f"   relative error {err:.1e}")
    return out
