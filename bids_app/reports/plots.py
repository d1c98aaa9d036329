"""Small dependency-free SVG plots for the HTML reports (no plotting library in the stack)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np

#: colour per group role (patients, controls, other)
COLOURS = {"patient": "#c0392b", "control": "#2471a3", None: "#7f8c8d"}


def _ticks(lo: float, hi: float, n: int = 4) -> np.ndarray:
    """Round tick values spanning [lo, hi]."""
    span = hi - lo if hi > lo else abs(hi) or 1.0
    step = 10 ** np.floor(np.log10(span / n))
    for mult in (1, 2, 2.5, 5, 10):
        if span / (step * mult) <= n:
            step *= mult
            break
    return np.arange(np.ceil(lo / step) * step, hi + step / 2, step)


def dot_plot(
    columns: Mapping[str, Sequence[tuple[float, str | None, str]]],
    *,
    title: str,
    units: str,
    width: int = 520,
    height: int = 240,
) -> str:
    """A dot plot: one column per category, one dot per subject, coloured by group.

    Parameters
    ----------
    columns : mapping of str to sequence of (value, role, label)
        Category (e.g. region) -> the subjects' values, their role (``'patient'``,
        ``'control'`` or None) and a label shown on hover (e.g. ``'sub-01'``).
    title, units : str
        Plot title and y-axis units.
    width, height : int
        Size in pixels.

    Returns
    -------
    str
        An ``<svg>`` element; empty columns are drawn without dots. Group means are drawn as
        short horizontal bars.
    """
    values = np.array([v for col in columns.values() for v, _, _ in col], dtype=float)
    values = values[np.isfinite(values)]
    left, right, top, bottom = 60, 10, 28, 30
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13">{html.escape(title)} '
        f"[{html.escape(units)}]</text>",
    ]
    if values.size == 0:
        out.append(f'<text x="{left}" y="{top + ph / 2}">no finite values</text></svg>')
        return "".join(out)
    lo, hi = float(values.min()), float(values.max())
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
    lo, hi = lo - pad, hi + pad

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    for t in _ticks(lo, hi):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>'
        )
    n = max(len(columns), 1)
    rng = np.random.default_rng(0)  # fixed jitter: reports are deterministic
    for i, (name, col) in enumerate(columns.items()):
        cx = left + pw * (i + 0.5) / n
        out.append(
            f'<text x="{cx:.1f}" y="{height - 10}" text-anchor="middle">{html.escape(name)}</text>'
        )
        for role, dx in (("patient", -0.12), ("control", 0.12), (None, 0.0)):
            pts = [(v, lab) for v, r, lab in col if r == role and np.isfinite(v)]
            if not pts:
                continue
            x0 = cx + dx * pw / n
            for v, lab in pts:
                jx = x0 + rng.uniform(-0.05, 0.05) * pw / n
                out.append(
                    f'<circle cx="{jx:.1f}" cy="{y(v):.1f}" r="3.5" '
                    f'fill="{COLOURS[role]}" fill-opacity="0.75">'
                    f"<title>{html.escape(lab)}: {v:.4g}</title></circle>"
                )
            mean = float(np.mean([v for v, _ in pts]))
            out.append(
                f'<line x1="{x0 - 0.1 * pw / n:.1f}" x2="{x0 + 0.1 * pw / n:.1f}" '
                f'y1="{y(mean):.1f}" y2="{y(mean):.1f}" stroke="{COLOURS[role]}" '
                'stroke-width="2"/>'
            )
    out.append("</svg>")
    return "".join(out)
