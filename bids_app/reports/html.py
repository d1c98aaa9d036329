"""Participant and group HTML reports (failures are logged by the caller, never fatal)."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import pandas as pd

from bids_app.bids.derivatives import build_name, subject_dir
from bids_app.io import save_text
from bids_app.reports.figures import mosaic, svg_figure
from bids_app.reports.plots import dot_plot
from bids_app.schema import group_role

#: regions plotted in the group report
PLOT_REGIONS = ("lesion", "NAWM", "NAGM")

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


def _registrations(ctx) -> pd.DataFrame:
    """One row per registered image: mode, NMI reached and with the headers, motion."""
    rows = [
        {
            "image": Path(key).name,
            "mode": reg.mode,
            "NMI": reg.metric,
            "NMI_headers": reg.metric_header,
            "peak_sharpness": reg.sharpness,
            "translation_mm": reg.translation_mm,
            "rotation_deg": reg.rotation_deg,
            "failed": reg.failed,
        }
        for key, reg in ctx.registrations.items()
    ]
    return pd.DataFrame(rows)


#: columns of the paramagnetic rim lesion candidates in the report
PRL_COLUMNS = (
    "lesion_id", "volume_mm3", "centroid_x", "centroid_y", "centroid_z", "location",
    "core_mean", "rim_mean", "rim_index",
)  # fmt: skip


def _rim_candidates(lesions: pd.DataFrame) -> str:
    """The QSM rim lesion candidates (``prl_candidate`` of the ``Chimap`` rows) as HTML."""
    if "prl_candidate" not in lesions or "map" not in lesions:
        return ""
    chi = lesions[lesions["map"] == "Chimap"]
    if chi.empty:
        return ""
    flagged = chi[pd.to_numeric(chi["prl_candidate"], errors="coerce") == 1]
    head = "<h2>Paramagnetic rim lesion candidates (QSM)</h2>"
    if flagged.empty:
        return head + f"<p>No candidate among {len(chi)} lesions.</p>"
    cols = [c for c in PRL_COLUMNS if c in flagged]
    return head + f"<p>{len(flagged)} of {len(chi)} lesions.</p>" + _table(flagged[cols])


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
    for warning in ctx.warnings:
        parts.append(f"<p><b>Warning</b>: {html.escape(warning)}</p>")
    if ctx.registrations:
        parts.append("<h2>Registrations</h2>" + _table(_registrations(ctx)))
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
        parts.append(
            f"<h3>{html.escape(rec.key)}</h3>"
            f'<img src="{html.escape(rel, quote=True)}" alt="{html.escape(rec.key, quote=True)}">'
        )
    stats = subject_dir(out, ents, "") / build_name(dict(ents, desc="regions"), "stats", ".tsv")
    if stats.is_file():
        df = pd.read_csv(stats, sep="\t", na_values="n/a", keep_default_na=False)
        parts.append("<h2>Regions</h2>" + _table(df))
    lesions = subject_dir(out, ents, "") / build_name(dict(ents, desc="lesions"), "stats", ".tsv")
    if lesions.is_file():
        parts.append(_rim_candidates(pd.read_csv(lesions, sep="\t", na_values="n/a")))
    path = out / (f"sub-{ctx.subject}" + (f"_ses-{ctx.session}" if ctx.session else "") + ".html")
    save_text(path, _page(f"msqmri: {ctx.label}", "\n".join(parts)))
    return path


def _region_plots(regions: pd.DataFrame) -> list[str]:
    """One dot plot per map: lesion, NAWM, NAGM subject means by group."""
    df = regions[regions["region"].isin(PLOT_REGIONS)].copy()
    roles = df["group"].map(group_role) if "group" in df.columns else None
    df["_role"] = roles if roles is not None else None
    df["_label"] = df["participant_id"] + df["session_id"].fillna("").map(
        lambda s: f"_{s}" if s else ""
    )
    figures = []
    for (m, units), g in df.groupby(["map", "units"], sort=True):
        columns = {
            r: list(
                zip(
                    g.loc[g["region"] == r, "mean"],
                    g.loc[g["region"] == r, "_role"],
                    g.loc[g["region"] == r, "_label"],
                    strict=True,
                )
            )
            for r in PLOT_REGIONS
        }
        figures.append(dot_plot(columns, title=str(m), units=str(units)))
    return figures


def group_report(
    out: Path, regions: pd.DataFrame, summary: pd.DataFrame, lesions: pd.DataFrame
) -> Path:
    """Write ``group.html``: summary tables and per-map dot plots of patients and controls."""
    parts = [
        f"<p>{regions['participant_id'].nunique()} participant(s); "
        f"{lesions['lesion_id'].notna().sum() if not lesions.empty else 0} lesion rows."
        "</p>"
    ]
    key = summary[summary["region"].isin(["lesion", "NAWM", "NAGM"])]
    parts.append("<h2>Lesion and normal-appearing tissue</h2>" + _table(key))
    parts.append("<h2>All regions</h2>" + _table(summary))
    parts.append(
        "<h2>Subject means per region</h2><p>One dot per subject and session; red patients, "
        "blue controls, grey others; bars are group means.</p>"
    )
    parts += _region_plots(regions)
    path = out / "group.html"
    save_text(path, _page("msqmri: group report", "\n".join(parts)))
    return path
