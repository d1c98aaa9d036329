"""The group report ``group.html``: participants with links, lesion load, group figures.

Lists every participant (and session) of the raw dataset with its status: ``ok`` (outputs
found), ``failed`` (a failure record of :mod:`bids_app.failures` names it) or ``missing``
(no output, never run), with lesion count and load and a link to its report.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from bids_app import __version__
from bids_app.reports.group_figures import (
    forest_figure,
    lesion_load_figure,
    region_figure,
    trajectory_figure,
)
from bids_app.reports.render import guarded, render_page, save_figure, table
from bids_app.schema import group_role

logger = logging.getLogger(__name__)

#: regions plotted in the group report
PLOT_REGIONS = ("lesion", "NAWM", "NAGM")


def _session(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    s = str(value).strip()
    return None if s in ("", "n/a", "nan", "None") else s


def _raw_units(bids_dir: Path | None) -> set[tuple[str, str | None]]:
    """(participant_id, session_id) of the raw dataset's subject/session folders."""
    units: set[tuple[str, str | None]] = set()
    if bids_dir is None or not Path(bids_dir).is_dir():
        return units
    for sub in sorted(Path(bids_dir).glob("sub-*")):
        if not sub.is_dir():
            continue
        sessions = [s.name for s in sorted(sub.glob("ses-*")) if s.is_dir()]
        units.update((sub.name, s) for s in sessions) if sessions else units.add((sub.name, None))
    return units


def failures(out: Path) -> dict[tuple[str, str | None], str]:
    """(participant_id, session_id) -> error, from the failure records of ``out``.

    The participant level writes them (:mod:`bids_app.failures`) and removes them when the
    subject later succeeds.
    """
    from bids_app.failures import read_failures

    return {
        (str(r.get("participant_id")), _session(r.get("session_id"))): (
            f"exit {r.get('exit_code')}: {r.get('message', '')}"
        )
        for r in read_failures(out)
    }


def participants_rows(
    out: Path, counts: pd.DataFrame, bids_dir: Path | None, role_of
) -> list[dict[str, Any]]:
    """One row per participant x session: group, status, lesions, load, report link."""
    rows: dict[tuple[str, str | None], dict[str, Any]] = {}
    for rec in counts.to_dict("records"):
        key = (str(rec["participant_id"]), _session(rec.get("session_id")))
        rows[key] = {
            "group": rec.get("group"),
            "n_lesions": rec.get("n_lesions"),
            "lesion_volume_mm3": rec.get("lesion_volume_mm3"),
            "status": "ok",
        }
    failed = failures(out)
    for key in _raw_units(bids_dir) | set(failed):
        if key not in rows:
            rows[key] = {"status": "failed" if key in failed else "missing", "reason": ""}
            rows[key]["reason"] = failed.get(key, "no output (not run, or no inputs)")
    table_rows = []
    for (pid, ses), rec in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        name = pid + (f"_{ses}" if ses else "") + ".html"
        table_rows.append(
            {
                "participant_id": pid,
                "session_id": ses or "n/a",
                "group": rec.get("group") if pd.notna(rec.get("group")) else "n/a",
                "role": role_of(rec.get("group")) or "other",
                "status": rec["status"],
                "reason": rec.get("reason", ""),
                "n_lesions": _fmt(rec.get("n_lesions"), "{:.0f}"),
                "lesion_volume_mm3": _fmt(rec.get("lesion_volume_mm3"), "{:.0f}"),
                "report": name if (Path(out) / name).is_file() else None,
            }
        )
    return table_rows


def _fmt(value: Any, pattern: str) -> str:
    v = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return "n/a" if pd.isna(v) else pattern.format(v)


def _read(out: Path, name: str) -> pd.DataFrame | None:
    path = Path(out) / name
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _figures(out, regions, summary, counts, role_of, problems) -> dict[str, list]:
    figdir = Path(out) / "figures"
    res: dict[str, list] = {"regions": [], "forest": [], "lesionload": [], "longitudinal": []}
    df = regions.copy()
    df["_role"] = df["group"].map(role_of) if "group" in df else None
    df["session_id"] = df["session_id"].map(_session) if "session_id" in df else None
    key = df[df["region"].isin(PLOT_REGIONS)] if "region" in df else df.iloc[0:0]
    for (m, units), g in key.groupby(["map", "units"], sort=True):
        what = re.sub(r"[^a-zA-Z0-9]", "", str(m))
        res["regions"].append(
            guarded(
                problems,
                f"{m} group figure",
                lambda g=g, m=m, units=units, what=what: save_figure(
                    lambda: region_figure(g, title=str(m), units=str(units), regions=PLOT_REGIONS),
                    figdir / f"group_desc-{what}_boxplot.svg",
                    f"{m} [{units}]",
                    "subject means per region; red patients, blue controls, grey others",
                    root=out,
                ),
            )
        )
        multi = g.dropna(subset=["session_id"]).groupby("participant_id")["session_id"].nunique()
        if (multi > 1).any():
            res["longitudinal"].append(
                guarded(
                    problems,
                    f"{m} trajectories",
                    lambda g=g, m=m, units=units, what=what: save_figure(
                        lambda: trajectory_figure(
                            g, title=str(m), units=str(units), regions=PLOT_REGIONS
                        ),
                        figdir / f"group_desc-{what}_trajectories.svg",
                        f"{m} [{units}] across sessions",
                        "one line per subject (sessions in label order)",
                        root=out,
                    ),
                )
            )
    if summary is not None and not summary.empty and "cohens_d" in summary:
        res["forest"].append(
            guarded(
                problems,
                "forest plot",
                lambda: save_figure(
                    lambda: forest_figure(summary),
                    figdir / "group_desc-effectsizes_forest.svg",
                    "Effect sizes",
                    "Cohen's d of patients minus controls with 95 % confidence intervals",
                    root=out,
                ),
            )
        )
    if counts is not None and not counts.empty:
        c = counts.assign(_role=counts["group"].map(role_of) if "group" in counts else None)
        res["lesionload"].append(
            guarded(
                problems,
                "lesion load figure",
                lambda: save_figure(
                    lambda: lesion_load_figure(c),
                    figdir / "group_desc-lesionload_boxplot.svg",
                    "Lesion count and load",
                    "one point per subject and session",
                    root=out,
                ),
            )
        )
    return {k: [f for f in v if f] for k, v in res.items()}


def group_report(
    out: Path,
    regions: pd.DataFrame,
    summary: pd.DataFrame,
    lesions: pd.DataFrame,
    *,
    counts: pd.DataFrame | None = None,
    bids_dir: Path | None = None,
    options: Any = None,
) -> Path:
    """Write ``group.html`` and ``figures/group_desc-*``; return the page's path.

    Parameters
    ----------
    out : Path
        Output directory (holds the participant reports and group tables).
    regions, summary, lesions : pandas.DataFrame
        The group region rows (joined with participants.tsv), summary and lesion rows.
    counts : pandas.DataFrame, optional
        Lesion count and load per participant x session; default read from
        ``group_desc-lesioncounts_stats.tsv``.
    bids_dir : Path, optional
        The raw dataset: its subjects without outputs are listed as missing.
    options : bids_app.group_options.GroupOptions, optional
        Which ``participants.tsv`` values are patients and controls (default labels
        otherwise).
    """
    out = Path(out)
    role_of = options.role if options is not None else group_role
    if counts is None:
        counts = _read(out, "group_desc-lesioncounts_stats.tsv")
    counts = counts if counts is not None else pd.DataFrame(columns=["participant_id"])
    if options is not None and options.group_column in counts and "group" not in counts:
        counts = counts.assign(group=counts[options.group_column])
    if options is not None and options.group_column in regions and "group" not in regions:
        regions = regions.assign(group=regions[options.group_column])
    problems: list[str] = []
    rows = guarded(problems, "participant list", lambda: participants_rows(
        out, counts, bids_dir, role_of), [])  # fmt: skip
    figures = _figures(out, regions, summary, counts, role_of, problems)
    key = summary[summary["region"].isin(PLOT_REGIONS)] if "region" in summary else summary
    longitudinal = _read(out, "group_desc-longitudinal_stats.tsv")
    changes = _read(out, "group_desc-lesionchanges_stats.tsv")
    change_counts = None
    if changes is not None and {"participant_id", "change"} <= set(changes.columns):
        change_counts = pd.crosstab(changes["participant_id"], changes["change"])
        change_counts = change_counts.rename_axis(columns=None).reset_index()
    n_status = pd.Series([r["status"] for r in rows], dtype=object).value_counts().to_dict()
    return render_page(
        "group.html.j2",
        out / "group.html",
        title="msqmri: group report",
        version=__version__,
        rows=rows,
        n_status=n_status,
        n_participants=len({r["participant_id"] for r in rows}),
        n_lesion_rows=int(lesions["lesion_id"].notna().sum()) if "lesion_id" in lesions else 0,
        figures=figures,
        problems=problems,
        key_summary=table(key),
        summary=table(summary),
        longitudinal=table(longitudinal) if longitudinal is not None else None,
        change_counts=table(change_counts) if change_counts is not None else None,
    )
