"""Participant and group HTML reports (failures are logged by the caller, never fatal)."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app.bids.derivatives import build_name, subject_dir
from bids_app.io import save_text
from bids_app.reports.figures import mosaic, svg_figure

logger = logging.getLogger(__name__)

_CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eee}img{max-width:100%;margin:4px 0}h2{border-bottom:1px solid #999}"""


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>\n"
    )


def _table(df: pd.DataFrame, max_rows: int = 400) -> str:
    return df.head(max_rows).to_html(index=False, na_rep="n/a", float_format="%.4g", border=0)


def participant_report(ctx) -> Path:
    """Write ``sub-<l>[_ses-<s>].html`` with one mosaic figure per map and the tables."""
    out = ctx.cfg.output_dir
    ents = {"subject": ctx.subject, "session": ctx.session}
    figdir = subject_dir(out, ents, "figures")
    parts = [
        f"<p>Reference: {html.escape(str(ctx.reference_name))}; brain mask: "
        f"{html.escape(ctx.brain_mask_source)}; tissue: {html.escape(ctx.tissue_source)}"
        f"; lesions: {html.escape(ctx.lesion_source)}</p>"
    ]
    if ctx.skipped:
        parts.append("<p>Skipped: " + html.escape("; ".join(ctx.skipped)) + "</p>")
    outline = ctx.lesion_mask > 0.5 if ctx.lesion_mask is not None else None
    for rec in ctx.maps:
        data = rec.data_ref if rec.data_ref is not None else rec.native
        desc = re.sub(r"[^a-zA-Z0-9]", "", rec.key.replace("desc-", ""))
        name = build_name(dict(ents, desc=desc), "mosaic", ".svg")
        ol = outline if rec.data_ref is not None else None
        save_text(
            figdir / name,
            svg_figure(mosaic(data, outline=ol), html.escape(f"{rec.key} [{rec.units}]")),
        )
        rel = (figdir / name).relative_to(out).as_posix()
        parts.append(f"<h3>{html.escape(rec.key)}</h3><img src='{rel}' alt='{rec.key}'>")
    stats = subject_dir(out, ents, "") / build_name(dict(ents, desc="regions"), "stats", ".tsv")
    if stats.is_file():
        df = pd.read_csv(stats, sep="\t", na_values="n/a", keep_default_na=False)
        parts.append("<h2>Regions</h2>" + _table(df))
    path = out / (f"sub-{ctx.subject}" + (f"_ses-{ctx.session}" if ctx.session else "") + ".html")
    save_text(path, _page(f"msqmri: {ctx.label}", "\n".join(parts)))
    return path


def group_report(
    out: Path, regions: pd.DataFrame, summary: pd.DataFrame, lesions: pd.DataFrame
) -> Path:
    """Write ``group.html``: the summary table and per-region patient/control bar charts."""
    parts = [
        f"<p>{regions['participant_id'].nunique()} participant(s); "
        f"{lesions['lesion_id'].notna().sum() if not lesions.empty else 0} lesion rows."
        "</p>"
    ]
    key = summary[summary["region"].isin(["lesion", "NAWM", "NAGM"])]
    parts.append("<h2>Lesion and normal-appearing tissue</h2>" + _table(key))
    parts.append("<h2>All regions</h2>" + _table(summary))
    for m, g in summary[summary["region"].isin(["NAWM", "lesion", "NAGM"])].groupby("map"):
        bars = []
        vmax = (
            np.nanmax(g[["mean_patients", "mean_controls", "mean"]].to_numpy(float))
            if len(g)
            else 1.0
        )
        for _, row in g.iterrows():
            for who, col in (("patients", "mean_patients"), ("controls", "mean_controls")):
                v = row[col]
                if np.isfinite(v) and vmax > 0:
                    w = int(300 * v / vmax)
                    bars.append(
                        f"<div>{html.escape(row['region'])} {who}: "
                        f"<span style='display:inline-block;background:#4a7;width:{w}px'>"
                        f"&nbsp;</span> {v:.4g}</div>"
                    )
        parts.append(f"<h3>{html.escape(str(m))}</h3>" + "".join(bars))
    path = out / "group.html"
    save_text(path, _page("msqmri: group report", "\n".join(parts)))
    return path
