"""Reports in notebooks and on pages: _repr_html_, plot() and `jaxbp verify --html`."""

import base64
import dataclasses
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import jaxbp
from jaxbp.cli import main
from tests import _user_backprops as user

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = jaxbp.Network(sizes=(3, 4, 3), activations=("tanh", "softmax"), loss="nll")
# float64 and B = 8 like the fixture below, so the CLI reuses its compiled programs.
CLI_NET = ["--sizes", "3,4,3", "--activations", "tanh,softmax", "--loss", "nll",
           "--dtype", "float64", "--batch", "8"]


def _nan_backprop(params, x, y):
    grads = user.tanh_softmax_nll(params, x, y)
    return (grads[0], jaxbp.Dense(grads[1].W * jnp.nan, grads[1].W0))


def _tapped(w, x, *, tap):
    w = tap("w", w)
    h = tap("h", jnp.tanh(w * x))
    u = tap("u", 2 * h)
    return jnp.sum(u ** 2 + h)


def _intermediates_report():
    """h's gradient forgets the path straight to the loss; w's has the wrong shape."""
    w, x = jnp.linspace(0.5, 1.5, 3), jnp.arange(3.0)
    v = jaxbp.intermediates(_tapped, (w, x))
    du = 2 * v["u"]
    dh = 2 * du  # the "+ 1" from the loss's own h term is missing
    dw = (dh + 1) * (1 - v["h"] ** 2) * x
    return jaxbp.check_intermediates(_tapped, (w, x), {"u": du, "h": dh, "w": dw[None]})


@pytest.fixture(scope="module")
def reports():
    params = NET.init(jax.random.key(0), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    Y = jax.nn.one_hot(jnp.arange(8) % 3, 3, dtype=jnp.float64)
    forward = lambda x: jnp.tanh(x)  # noqa: E731
    return {
        "right": jaxbp.verify(NET, params, X, Y, backprop=user.tanh_softmax_nll),
        "wrong": jaxbp.verify(NET, params, X, Y,
                              backprop=user.tanh_softmax_nll_wrong_derivative),
        "nonfinite": jaxbp.verify(NET, params, X, Y, backprop=_nan_backprop),
        "vjp": jaxbp.check_vjp(forward, lambda x, dy: 2 * dy * (1 - jnp.tanh(x) ** 2),
                               jnp.linspace(-1.0, 1.0, 4)),
        "intermediates": _intermediates_report(),
        "intermediates, some not given": jaxbp.check_intermediates(
            _tapped, (jnp.ones(3), jnp.arange(3.0)), {"u": 4 * jnp.tanh(jnp.arange(3.0))}),
    }


def _status(row):
    """The status class a row should get: Report rows, then check_intermediates rows."""
    if isinstance(row, jaxbp.Row):
        return "nonfinite" if row.nonfinite else ("ok" if row.ok else "wrong")
    return row.status.replace(" ", "-")


NAMES = ["right", "wrong", "nonfinite", "vjp", "intermediates", "intermediates, some not given"]


@pytest.mark.parametrize("name", NAMES)
def test_repr_html_is_the_verdict_then_a_row_per_leaf(reports, name):
    report = reports[name]
    text = report._repr_html_()
    verdict = str(report).splitlines()[0]
    assert text.index(verdict) < text.index("<table")
    row_tags = re.findall(r'<tr class="jaxbp-row jaxbp-([\w-]+)" style="background:(#\w+)"', text)
    assert [status for status, _ in row_tags] == [_status(r) for r in report.rows]
    colours = {status: colour for status, colour in row_tags}
    assert len(set(colours.values())) == len(colours)  # one colour per status
    if name.startswith("intermediates"):
        assert [s for s, _ in row_tags] != ["ok"] * len(row_tags)  # the cases show other statuses
    assert text.count("first bad") == (0 if report.ok else 1)
    # every line of the text report but the verdict and the table is a detail paragraph
    n_details = len(str(report).splitlines()) - 2 - len(report.rows)
    assert text.count('<p class="jaxbp-detail"') == n_details


def test_repr_html_escapes_text(reports):
    report = dataclasses.replace(reports["wrong"], network="<script>alert(1)</script>")
    text = report._repr_html_()
    assert "<script>" not in text and "&lt;script&gt;" in text


@pytest.mark.parametrize("name", NAMES)
def test_plot_is_a_log_scale_figure_with_a_bar_per_leaf(reports, name):
    report = reports[name]
    fig = report.plot()
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    bars = ax.patches
    assert len(bars) == len(report.rows)
    low, high = ax.get_xlim()
    for bar, row in zip(bars, report.rows):
        end = bar.get_x() + bar.get_width()
        if row.max_rel_error is None:
            assert end == pytest.approx(low)  # nothing compared: no bar
        elif not math.isfinite(row.max_rel_error):
            assert end == pytest.approx(high)  # inf and NaN at the ceiling
        elif row.max_rel_error > low:
            assert end == pytest.approx(row.max_rel_error, rel=1e-9)
    (budgets,) = ax.collections
    ticks = np.ma.filled(np.ma.asarray(budgets.get_offsets())[:, 0].astype(float), np.nan)
    assert list(ticks) == pytest.approx(
        [math.nan if r.budget is None else r.budget for r in report.rows], rel=1e-9,
        nan_ok=True)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    marked = [i for i, t in enumerate(labels) if t.startswith("first bad")]
    first_bad = next((i for i, r in enumerate(report.rows) if not r.ok), None)
    assert marked == ([] if first_bad is None else [first_bad])


def _png_of(page):
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no embedded PNG"
    return base64.b64decode(match.group(1))


def test_verify_html_writes_a_standalone_page(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "report.html"
    code = main(["verify", "tests._user_backprops:tanh_softmax_nll_wrong_derivative", *CLI_NET,
                 "--html", str(path)])
    assert code == 1
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "WRONG — layer 1, suspect: activation" in page
    assert "<table" in page and page.count('<tr class="jaxbp-row') == 4
    assert _png_of(page).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http" not in page  # nothing to fetch: it opens offline
    assert "WRONG" in capsys.readouterr().out  # the terminal report is still printed


def test_verify_html_for_a_backprop_that_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "report.html"
    assert main(["verify", "tests._user_backprops:raises", *CLI_NET, "--html", str(path)]) == 1
    page = path.read_text(encoding="utf-8")
    assert "RuntimeError" in page and "http" not in page


def test_checking_log_has_the_same_views():
    sine = jaxbp.custom_vjp(jnp.sin, lambda x, dy: (jnp.cos(x) * dy,), name="sine")
    cube = jaxbp.custom_vjp(lambda x: x ** 3, lambda x, dy: (2 * x ** 2 * dy,), name="cube")
    with jaxbp.checking() as log:  # cube's backward: 2x² where 3x² is due
        jax.jit(jax.grad(lambda x: cube(sine(x)).sum()))(jnp.arange(1.0, 4.0))
    names = list(log.records)
    assert sorted(names) == ["cube", "sine"] and log.first_bad == "cube"
    text = log._repr_html_()
    row_tags = re.findall(r'<tr class="jaxbp-row jaxbp-([\w-]+)"', text)
    assert row_tags == ["ok" if log.records[n].ok else "wrong" for n in names]
    (ax,) = log.plot().axes
    assert ax.get_xscale() == "log" and len(ax.patches) == len(names)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[names.index("cube")] == "first bad: cube"
    # cube's error is 1/3 relative: |2x² − 3x²| / max 3x² at the largest x
    bar = ax.patches[names.index("cube")]
    assert bar.get_x() + bar.get_width() == pytest.approx(1 / 3, rel=1e-5)


def test_without_matplotlib_plot_says_so_and_the_page_keeps_the_table(reports, monkeypatch):
    from jaxbp.check import _report_view

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match="pip install matplotlib"):
        reports["wrong"].plot()
    page = _report_view.page(reports["wrong"]._view())
    assert "<table" in page and "data:image/png" not in page
    assert "install matplotlib for the plot" in page
