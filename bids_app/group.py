"""Group level: aggregate the participant tables (outputs only) into group tables.

Like MRIQC's ``generate_tsv``: find every participant table, concatenate, drop duplicates,
sort; then join ``participants.tsv`` and summarise each map x region, comparing patients with
controls when the ``group`` column says who is who.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app.bids.derivatives import write_table
from bids_app.errors import NoInputsError
from bids_app.reports.html import group_report
from bids_app.schema import LESION_COLUMNS, REGION_COLUMNS, group_role

logger = logging.getLogger(__name__)

#: values of participants.tsv ``group`` read as patients / controls (case-insensitive)
SUMMARY_COLUMNS = {
    "map": REGION_COLUMNS["map"],
    "units": REGION_COLUMNS["units"],
    "region": REGION_COLUMNS["region"],
    "session_id": REGION_COLUMNS["session_id"],
    "n_subjects": "subjects with a finite region mean",
    "mean": "mean over subjects of the subject region means",
    "std": "standard deviation over subjects (ddof=1)",
    "n_patients": "patients with a finite region mean",
    "mean_patients": "mean over patients",
    "std_patients": "SD over patients (ddof=1)",
    "n_controls": "controls with a finite region mean",
    "mean_controls": "mean over controls",
    "std_controls": "SD over controls (ddof=1)",
    "cohens_d": "Cohen's d, patients minus controls, pooled SD (Cohen 1988)",
}


def _read_all(out: Path, pattern: str) -> pd.DataFrame:
    files = sorted(out.glob(f"sub-*/{pattern}")) + sorted(out.glob(f"sub-*/ses-*/{pattern}"))
    frames = [
        pd.read_csv(
            f,
            sep="\t",
            na_values="n/a",
            keep_default_na=False,
            dtype={"participant_id": str, "session_id": str},
        )
        for f in files
    ]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop_duplicates()


def _participants(bids_dir: Path) -> pd.DataFrame | None:
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        return None
    table = pd.read_csv(
        path, sep="\t", na_values="n/a", keep_default_na=False, dtype={"participant_id": str}
    )
    if "participant_id" not in table.columns:
        logger.warning("%s has no participant_id column; not joined", path)
        return None
    return table


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d of ``a`` minus ``b`` with the pooled SD (NaN when undefined).

    Examples
    --------
    >>> round(cohens_d(np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0])), 3)
    1.0
    """
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return float("nan")
    pooled = np.sqrt(
        ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    )
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def _stats(x: np.ndarray) -> tuple[int, float, float]:
    x = x[np.isfinite(x)]
    return (
        int(x.size),
        float(x.mean()) if x.size else np.nan,
        float(x.std(ddof=1)) if x.size > 1 else np.nan,
    )


def summarise(regions: pd.DataFrame) -> pd.DataFrame:
    """One row per map x region x session: all subjects, patients, controls, Cohen's d."""
    rows = []
    df = regions.copy()
    df["session_id"] = df["session_id"].fillna("n/a")
    role = (
        df["group"].map(group_role) if "group" in df.columns else pd.Series(None, index=df.index)
    )
    df["_role"] = role
    for (m, units, region, ses), g in df.groupby(
        ["map", "units", "region", "session_id"], sort=True, dropna=False
    ):
        vals = g["mean"].to_numpy(float)
        pat = g.loc[g["_role"] == "patient", "mean"].to_numpy(float)
        con = g.loc[g["_role"] == "control", "mean"].to_numpy(float)
        n, mu, sd = _stats(vals)
        n_p, mu_p, sd_p = _stats(pat)
        n_c, mu_c, sd_c = _stats(con)
        rows.append(
            {
                "map": m,
                "units": units,
                "region": region,
                "session_id": None if ses == "n/a" else ses,
                "n_subjects": n,
                "mean": mu,
                "std": sd,
                "n_patients": n_p,
                "mean_patients": mu_p,
                "std_patients": sd_p,
                "n_controls": n_c,
                "mean_controls": mu_c,
                "std_controls": sd_c,
                "cohens_d": cohens_d(pat, con),
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def run_group(bids_dir: Path, out: Path, *, reports: bool = True) -> int:
    """Write the group tables from the participant outputs in ``out``; return 0.

    Raises
    ------
    NoInputsError
        When ``out`` holds no participant tables (run the participant level first).
    """
    regions = _read_all(out, "*_desc-regions_stats.tsv")
    if regions.empty:
        raise NoInputsError(
            f"{out}: no participant tables (*_desc-regions_stats.tsv); run "
            "the participant level first"
        )
    lesions = _read_all(out, "*_desc-lesions_stats.tsv")
    part = _participants(bids_dir)
    extra = {}
    if part is not None:
        extra = {c: f"from participants.tsv: {c}" for c in part.columns if c != "participant_id"}
        regions = regions.merge(part, on="participant_id", how="left")
        if not lesions.empty:
            lesions = lesions.merge(part, on="participant_id", how="left")
    keys = ["participant_id", "session_id", "map", "region"]
    regions = regions.sort_values(keys, na_position="first", kind="stable")
    write_table(out / "group_desc-regions_stats.tsv", regions, {**REGION_COLUMNS, **extra})
    if lesions.empty:
        lesions = pd.DataFrame(columns=[*LESION_COLUMNS, *extra])
    else:
        lesions = lesions.sort_values(
            ["participant_id", "session_id", "lesion_id", "map"],
            na_position="first",
            kind="stable",
        )
    write_table(out / "group_desc-lesions_stats.tsv", lesions, {**LESION_COLUMNS, **extra})
    summary = summarise(regions)
    write_table(out / "group_desc-summary_stats.tsv", summary, SUMMARY_COLUMNS)
    n_sub = regions["participant_id"].nunique()
    logger.info(
        "group level: %d participant(s), %d region rows, %d lesion rows -> %s",
        n_sub,
        len(regions),
        len(lesions),
        out,
    )
    if reports:
        try:
            group_report(out, regions, summary, lesions)
        except Exception:
            logger.warning("group report failed (see log)")
            logger.debug("report traceback", exc_info=True, extra={"file_only": True})
    return 0
