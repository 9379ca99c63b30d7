"""jaxbp.explain and `jaxbp explain`: the notes' chain as text and LaTeX."""

import io
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import mathtext

import jaxbp
from jaxbp import cli

TWO = jaxbp.Network(sizes=(1, 1, 1), activations=("tanh", "sigmoid"), loss="squared")
HEADLINE = "∂L/∂W^1 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂a^1) · (∂a^1/∂z^1 · ∂z^1/∂W^1)"


def two_params():
    return (jaxbp.Dense(jnp.array([[0.7]]), jnp.array([-0.2])),
            jaxbp.Dense(jnp.array([[-1.3]]), jnp.array([0.4])))


def test_symbolic_text_is_the_notes_chain():
    text = jaxbp.explain(TWO, layer=1)
    lines = text.splitlines()
    assert lines[0] == HEADLINE
    assert lines[1].split() == ["loss", "unit", "layer", "2", "layer", "1"]
    rows = [ln.split() for ln in lines if ln.strip()[:1].isdigit()]
    assert [r[:3] for r in rows] == [
        ["1", "loss", "∂L/∂a^2"], ["2", "activation", "∂a^2/∂z^2"], ["3", "link", "∂z^2/∂a^1"],
        ["4", "activation", "∂a^1/∂z^1"], ["5", "weight", "∂z^1/∂W^1"]]
    assert "sigmoid'(z^2)" in text and "tanh'(z^1)" in text and "a^0 = x" in text
    assert "2 (a − y)" in text  # from the loss table's own derivative docstring
    assert jaxbp.explain(TWO, layer=2).splitlines()[0] == (
        "∂L/∂W^2 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂W^2)")


def test_values_beside_each_factor_product_and_jax_grad():
    params, x, y = two_params(), 0.9, 0.25
    text = jaxbp.explain(TWO, layer=1, params=params, x=x, y=y)
    a1 = np.tanh(0.7 * 0.9 - 0.2)
    a2 = 1 / (1 + np.exp(-(-1.3 * a1 + 0.4)))
    want = [2 * (a2 - y), a2 * (1 - a2), -1.3, 1 - a1**2, 0.9]
    rows = [ln for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    for row, v in zip(rows, want, strict=True):
        assert float(row.split()[-1]) == pytest.approx(v, rel=1e-5), row
    grad = float(jax.grad(TWO.loss)(params, jnp.array([x]), jnp.array([y]))[0].W[0, 0])
    product = next(ln for ln in text.splitlines() if ln.startswith("product of the 5 factors"))
    autodiff = next(ln for ln in text.splitlines() if ln.startswith("jax.grad"))
    assert float(product.split("=")[1]) == pytest.approx(grad, rel=1e-5)
    assert float(autodiff.split("=")[1].split()[0]) == pytest.approx(grad, rel=1e-5)
    assert float(autodiff.split()[-1]) <= 1e-10  # the relative error shown
    assert "∂L/∂W0^1" in text  # the bias, ∂z^1/∂W0^1 = 1


def test_fused_loss_line_for_nll():
    net = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "softmax"), loss="nll")
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    x, y = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.0, 1.0])
    text = jaxbp.explain(net, layer=1, params=params, x=x, y=y)
    fused = next(ln for ln in text.splitlines() if ln.startswith("fused"))
    assert "a^2 − y" in fused and float(fused.split()[-1]) <= 1e-10
    assert "diag(" in text and "(Jacobian)" in text
    assert "fuses factors 1 and 2" in jaxbp.explain(net, layer=2)


LATEX_CASES = [
    (TWO, 1, True), (TWO, 2, False),
    (jaxbp.Network(sizes=(3, 4, 2), activations=("leaky_relu", "softmax"), loss="nll"), 1, True),
    (jaxbp.Network(sizes=(2, 3, 3, 1), activations=("gelu", "relu", "sigmoid"),
                   loss="binary_nll"), 1, True),
    (jaxbp.Network(sizes=(1, 1), activations=("identity",), loss="hinge"), 1, True),
]


@pytest.mark.parametrize("net,layer,values", LATEX_CASES,
                         ids=[f"{'-'.join(n.activations)}-l{l}-{'values' if v else 'symbolic'}"
                              for n, l, v in LATEX_CASES])
def test_latex_renders_with_mathtext(net, layer, values):
    kwargs = {}
    if values:
        params = net.init(jax.random.key(1), dtype=jnp.float64)
        y = {"nll": jnp.array([1.0, 0.0]), "binary_nll": jnp.array([1.0]),
             "hinge": jnp.array([-1.0])}.get(net.loss_name, jnp.array([0.3]))
        kwargs = dict(params=params, x=jnp.linspace(-1, 1, net.sizes[0]) + 0.3, y=y)
    latex = jaxbp.explain(net, layer=layer, format="latex", **kwargs)
    lines = latex.splitlines()
    assert len(lines) >= 1 + 2 * (net.num_layers - layer) + 3
    assert r"\frac{\partial \mathcal{L}}{\partial W^{%d}}" % layer in lines[0]
    for line in lines:
        assert line.startswith("$") and line.endswith("$") and line.count("$") == 2, line
        mathtext.math_to_image(line, io.BytesIO(), format="png")  # raises if it cannot parse


# ------------------------------------------------------------ bad input

def test_bad_input():
    with pytest.raises(ValueError, match=r"1\.\.L = 1\.\.2.*got 3"):
        jaxbp.explain(TWO, layer=3)
    with pytest.raises(ValueError, match="format.*'markdown'"):
        jaxbp.explain(TWO, layer=1, format="markdown")
    with pytest.raises(ValueError, match="missing x, y"):
        jaxbp.explain(TWO, layer=1, params=two_params())
    with pytest.raises(ValueError, match=r"x: expected shape \(m,\) with m=1, got \(2,\)"):
        jaxbp.explain(TWO, layer=1, params=two_params(), x=jnp.ones(2), y=0.5)
    with pytest.raises(ValueError, match=r"y: expected shape .*\(1,\).*got \(3,\)"):
        jaxbp.explain(TWO, layer=1, params=two_params(), x=0.5, y=jnp.ones(3))


# ------------------------------------------------------------ the command line

BASE = ["explain", "--sizes", "1,1,1", "--activations", "tanh,sigmoid", "--loss", "squared",
        "--layer", "1"]


def test_cli_symbolic_values_and_latex(capsys):
    assert cli.main(BASE) == 0
    assert capsys.readouterr().out.splitlines()[0] == HEADLINE
    assert cli.main(BASE + ["--seed", "3", "--x64"]) == 0
    out = capsys.readouterr().out
    autodiff = next(ln for ln in out.splitlines() if ln.startswith("jax.grad"))
    assert float(autodiff.split()[-1]) <= 1e-10
    assert cli.main(BASE + ["--x", "0.5", "--y", "0.2", "--latex"]) == 0
    for line in capsys.readouterr().out.splitlines():
        mathtext.math_to_image(line, io.BytesIO(), format="png")


def test_cli_layer_out_of_range_is_a_clean_error(capsys):
    assert cli.main(BASE[:-1] + ["3"]) == 2
    assert "1..L = 1..2" in capsys.readouterr().err
    assert cli.main(BASE + ["--x", "1,2"]) == 2
    assert "got (2,)" in capsys.readouterr().err


def test_console_script():
    out = subprocess.run([sys.executable, "-m", "jaxbp", *BASE], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""}).stdout
    assert out.splitlines()[0] == HEADLINE
