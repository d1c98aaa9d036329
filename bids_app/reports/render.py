"""Rendering helpers of the reports: matplotlib figures to SVG, tables and jinja2 pages.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no ``pyplot``, so
no global figure state and no interactive backend: the Agg/SVG canvases are chosen per
``savefig`` call). Each figure is written as a BIDS ``figures/`` derivative and embedded in
the page as a ``data:`` URI, so a report copied alone still shows every figure (the NiPreps
convention of self-contained reports, Esteban et al. 2019, Nat Methods 16:111-116).
"""

from __future__ import annotations

import base64
import io as _io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from bids_app.io import save_text

if TYPE_CHECKING:
    import matplotlib.figure

logger = logging.getLogger(__name__)

#: settings of every saved figure: text as SVG text in a generic font family (no font file
#: needed offline; ~2x faster and smaller than text as paths), stable ids
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "msqmri",
    "font.size": 8,
    "font.family": "sans-serif",
}

#: colour per group role (patients, controls, other)
COLOURS = {"patient": "#c0392b", "control": "#2471a3", None: "#7f8c8d"}


@dataclass
class Figure:
    """A report figure: title, caption, the ``data:`` URI embedded and its file."""

    title: str
    uri: str
    caption: str = ""
    path: str = ""


def new_figure(width: float, height: float) -> matplotlib.figure.Figure:
    """A matplotlib figure of ``width`` x ``height`` inches, detached from ``pyplot``."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=100)


def figure_svg(fig: matplotlib.figure.Figure, *, tight: bool = True) -> bytes:
    """The figure as an SVG document (no date in the metadata: deterministic output).

    ``tight`` crops to the drawn artists (one more draw; figures laid out by hand, like
    the mosaics, skip it).
    """
    buf = _io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def save_figure(
    draw: Callable[[], matplotlib.figure.Figure],
    path: Path,
    title: str,
    caption: str = "",
    root: Path | None = None,
    *,
    tight: bool = True,
) -> Figure:
    """Draw a figure with ``draw()``, write it to ``path`` (SVG), return it embeddable.

    ``draw`` runs under the report style (:data:`_RC`, a temporary rc context), so every
    figure has the same fonts and its text is stored as paths.
    """
    import matplotlib  # here: a broken matplotlib set-up fails a figure, not the run

    with matplotlib.rc_context(_RC):
        svg = figure_svg(draw(), tight=tight)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(svg)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    rel = path.relative_to(root).as_posix() if root is not None else path.name
    return Figure(title=title, uri=uri, caption=caption, path=rel)


def guarded(problems: list[str], what: str, make: Callable[[], Any], default: Any = None) -> Any:
    """``make()``, or ``default`` with ``what`` appended to ``problems`` when it raises.

    One figure that cannot be drawn (odd data, a plotting bug) is logged and listed in the
    report instead of losing the whole report.
    """
    try:
        return make()
    except Exception as err:  # a report is never worth failing for
        logger.warning("report: %s failed: %r", what, err)
        logger.debug("report traceback", exc_info=True, extra={"file_only": True})
        problems.append(f"{what}: {err!r}")
        return default


def cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, missing (NaN, None, '') as ``n/a``."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "nan", "None")):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def table(df: pd.DataFrame | None, max_rows: int = 400) -> Markup:
    """``df`` as an escaped HTML table (cells by :func:`cell`); at most ``max_rows`` rows."""
    if df is None:
        return Markup("")
    shown = df.head(max_rows).astype(object).map(cell)
    text = shown.to_html(index=False, border=0, escape=True)
    if len(df) > max_rows:
        text += f"<p>First {max_rows} of {len(df)} rows.</p>"
    return Markup(text)


def robust_window(values: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> tuple[float, float]:
    """Display range: the ``lo``-``hi`` percentiles of the finite values ((0, 1) if none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(finite, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a) - 0.5, float(a) + 0.5)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bids_app.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["na"] = lambda v: (
        "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else v
    )
    return env


def render_page(template: str, path: Path, **context: Any) -> Path:
    """Render ``templates/<template>`` with ``context`` into ``path``; return it."""
    save_text(path, _environment().get_template(template).render(**context))
    return path
