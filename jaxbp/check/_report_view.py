"""Reports in notebooks and on pages: an HTML table and a matplotlib figure.

Written once for every report type over a tiny row protocol: a report gives
``_view()`` -> ``View(ok, verdict, details, rows)``, each row a ``ViewRow``
(``label``, ``max_rel_error``, ``budget``, ``ok``, ``status``, extra
``cells``). Then

* ``html_table(view)`` is the verdict and a ``<table>`` with one ``<tr>`` per
  row, coloured by status (``_repr_html_`` in Jupyter);
* ``plot(view)`` is a ``matplotlib.figure.Figure``: per row the relative error
  as a bar against its budget (a black tick), on a log scale, the first bad row
  marked. matplotlib is optional and imported only here, inside ``plot``;
* ``page(view)`` is a standalone HTML page with both, the figure embedded as a
  base64 PNG ``data:`` URI, so it opens with no network access.

The figure is built with ``matplotlib.figure.Figure`` (no pyplot state), so it
works under any backend, Agg included, and in threads.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import NamedTuple, Optional, Sequence

# Keyed by the status in lower case: "ok", "wrong", "nonfinite" (every report),
# "shape" and "not given" (``check_intermediates``).
STATUS_COLOURS = {"ok": "#d9f2d9", "wrong": "#f8d0d0", "nonfinite": "#e6d0f5",
                  "shape": "#fbe3c4", "not given": "#eeeeee"}
_BAR_COLOURS = {"ok": "#3a9d3a", "wrong": "#d03030", "nonfinite": "#8a3fc0",
                "shape": "#e08a10", "not given": "#999999"}


class ViewRow(NamedTuple):
    """One row of a report as the views see it.

    Attributes:
      label: what the row compares (e.g. "layer 2 W", "primals[0]").
      max_rel_error: the largest relative error (inf or NaN allowed; None when
        nothing was compared).
      budget: the allowed relative error (None when nothing was compared).
      ok: whether the row passed.
      status: the text shown, e.g. "ok", "WRONG", "NONFINITE", "SHAPE (3,)",
        "not given"; its first word, in lower case, picks the colour.
      cells: extra ``(column, text)`` pairs shown in the table only.
    """

    label: str
    max_rel_error: Optional[float]
    budget: Optional[float]
    ok: bool
    status: str
    cells: tuple = ()

    @property
    def kind(self) -> str:
        """The status's colour key: "ok", "wrong", "nonfinite", "shape" or "not given"."""
        low = self.status.lower()
        return next((k for k in STATUS_COLOURS if low.startswith(k)), "wrong")


class View(NamedTuple):
    """A report as the views see it: the verdict, detail lines and rows.

    ``first_bad`` is the index of the row to mark; None marks the first row
    that failed, in the rows' order.
    """

    ok: bool
    verdict: str
    details: tuple
    rows: Sequence[ViewRow]
    first_bad: Optional[int] = None


def verdict_and_details(text: str, n_rows: int) -> tuple:
    """(verdict, detail lines) of a report's text: its first line, and every
    other line but the table (the line with "max abs err" and the n_rows after it)."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if "max abs err" in line)
    rest = lines[1:head] + lines[head + 1 + n_rows:]
    return lines[0], tuple(line.strip() for line in rest)


def first_bad(view: View) -> Optional[int]:
    """The row to mark: ``view.first_bad``, else the first that failed; None if all passed."""
    if view.first_bad is not None:
        return view.first_bad
    return next((i for i, r in enumerate(view.rows) if not r.ok), None)


def fmt(x: Optional[float]) -> str:
    """A number for the table: 3 significant digits, "inf", "nan" or "-"."""
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def html_table(view: View) -> str:
    """The verdict, then one table row per ``ViewRow``, coloured by status."""
    e = html.escape
    colour = "#1d6b1d" if view.ok else "#a01010"
    parts = ['<div class="jaxbp-report">',
             f'<p class="jaxbp-verdict" style="font-weight:bold;color:{colour}">'
             f"{e(view.verdict)}</p>"]
    for line in view.details:
        parts.append(f'<p class="jaxbp-detail" style="margin:0.2em 0">{e(line)}</p>')
    extra = [name for name, _ in view.rows[0].cells] if view.rows else []
    head = ["", "row", "max rel err", "budget", *extra, "status"]
    parts.append('<table class="jaxbp-table" style="border-collapse:collapse">')
    parts.append("<thead><tr>" + "".join(
        f'<th style="padding:2px 8px;text-align:left">{e(h)}</th>' for h in head)
        + "</tr></thead><tbody>")
    bad = first_bad(view)
    for i, r in enumerate(view.rows):
        mark = "first bad" if i == bad else ""
        cells = [mark, r.label, fmt(r.max_rel_error), fmt(r.budget),
                 *(text for _, text in r.cells), r.status]
        bg = STATUS_COLOURS[r.kind]
        parts.append(f'<tr class="jaxbp-row jaxbp-{r.kind.replace(" ", "-")}" '
                     f'style="background:{bg}">' + "".join(
                         f'<td style="padding:2px 8px">{e(str(c))}</td>' for c in cells)
                     + "</tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def _bar_end(x: Optional[float], low: float, high: float) -> float:
    """Where a row's bar ends: 0 or None at the floor, inf or NaN at the ceiling."""
    if x is None:
        return low
    if not math.isfinite(x):
        return high
    return min(max(x, low), high)


def plot(view: View, *, title: Optional[str] = None):
    """A matplotlib ``Figure``: relative error per row against its budget, log scale.

    Bars are the rows' max relative errors (coloured by status), black ticks
    their budgets. A zero error is drawn at the axis floor; inf or NaN at the
    axis ceiling, labelled; a row with no bar to see (a zero error, or nothing
    compared: "not given") is labelled with its status. The first bad row's
    label reads "first bad: ..." (bold) and its bar is outlined.

    Args:
      view: the report's ``View``.
      title: the axes' title (default: the verdict).

    Returns:
      A ``matplotlib.figure.Figure`` with one axes: one bar per row.

    Raises:
      ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # optional dependency
        raise ImportError("report.plot() needs matplotlib: pip install matplotlib") from e
    rows = list(view.rows)
    values = [r.max_rel_error for r in rows] + [r.budget for r in rows]
    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    low = min(positive) / 10 if positive else 1e-17
    high = max(positive) * 10 if positive else 1.0
    fig = Figure(figsize=(7, 1 + 0.4 * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(rows)))
    ends = [_bar_end(r.max_rel_error, low, high) for r in rows]
    ax.barh(ys, [end - low for end in ends], left=low, height=0.6,
            color=[_BAR_COLOURS[r.kind] for r in rows])
    budgets = [math.nan if r.budget is None else _bar_end(r.budget, low, high) for r in rows]
    ax.scatter(budgets, ys, marker="|", s=400, color="black", label="budget", zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    bad = first_bad(view)
    ax.set_yticks(ys, [("first bad: " if i == bad else "") + r.label
                       for i, r in enumerate(rows)])
    ax.invert_yaxis()  # the report's order, top to bottom
    for y, r in zip(ys, rows):
        if r.max_rel_error is None or r.max_rel_error <= low:  # no bar to see: say why
            text = r.status if r.max_rel_error is None else f"{fmt(r.max_rel_error)} {r.status}"
            ax.annotate(text, (low, y), xytext=(4, 0), textcoords="offset points",
                        va="center", color=_BAR_COLOURS[r.kind])
        elif not math.isfinite(r.max_rel_error):
            ax.annotate(fmt(r.max_rel_error), (high, y), xytext=(-4, 0),
                        textcoords="offset points", ha="right", va="center")
    if bad is not None:
        label = ax.get_yticklabels()[bad]
        label.set_fontweight("bold")
        label.set_color(_BAR_COLOURS["wrong"])
        ax.patches[bad].set(edgecolor="black", linewidth=2)
    ax.set_xlabel("max relative error (bars) and budget (ticks)")
    ax.set_title(title or view.verdict, fontsize="small", loc="left")
    return fig


def png_data_uri(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (no file, no network)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def page(view: View, *, title: str = "jaxbp report") -> str:
    """A standalone HTML page: the table and the plot (embedded PNG), no links.

    Without matplotlib the page has the table and a note instead of the plot;
    a view with no rows (nothing could be compared) has no plot.
    """
    figure = ""
    if view.rows:
        try:
            figure = (f'<img alt="relative error per row against its budget" '
                      f'src="{png_data_uri(plot(view))}">')
        except ImportError:
            figure = "<p>(install matplotlib for the plot)</p>"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", "</head>",
        '<body style="font-family:sans-serif">', f"<h1>{html.escape(title)}</h1>",
        html_table(view), figure, "</body>", "</html>", ""])


class Viewable:
    """Mixin: ``_repr_html_`` and ``plot`` for a report class that defines ``_view()``."""

    def _view(self) -> "View":
        raise NotImplementedError

    def _repr_html_(self) -> str:
        """Jupyter's view: the verdict, then the table with rows coloured by status."""
        return html_table(self._view())

    def plot(self, *, title: Optional[str] = None):
        """Relative error per row against its budget, log scale, the first bad row marked.

        Args:
          title: the axes' title (default: the verdict).

        Returns:
          A ``matplotlib.figure.Figure`` (built without pyplot; display it in a
          notebook or call ``fig.savefig(path)``). Needs matplotlib.
        """
        return plot(self._view(), title=title)
