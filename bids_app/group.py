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
from bids_app.lesions import LOCATIONS
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


#: columns of ``group_desc-lesioncounts_stats.tsv`` (one row per participant x session)
COUNT_COLUMNS = {
    "participant_id": REGION_COLUMNS["participant_id"],
    "session_id": REGION_COLUMNS["session_id"],
    "n_lesions": "lesions (connected components) in the desc-lesions_dseg image",
    "lesion_volume_mm3": "total lesion volume (lesion load) in mm^3",
    **{f"n_{loc}": f"lesions located {loc.replace('_', ' ')}" for loc in LOCATIONS},
    "n_prl_candidates": (
        "paramagnetic rim lesion candidates (prl_candidate of the Chimap rows); n/a "
        "without a Chimap"
    ),
}


def lesion_counts(regions: pd.DataFrame, lesions: pd.DataFrame) -> pd.DataFrame:
    """Lesion count, load, counts per location and of rim lesions, per participant/session.

    Parameters
    ----------
    regions : pandas.DataFrame
        Concatenated region tables: every participant/session listed gets a row (0
        lesions when absent from ``lesions``); a ``map`` ending in ``Chimap`` tells that
        the subject has a susceptibility map.
    lesions : pandas.DataFrame
        Concatenated per-lesion tables (one row per lesion x map; may be empty).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COUNT_COLUMNS`; ``n_prl_candidates`` NaN for subjects without a
        Chimap.
    """
    keys = ["participant_id", "session_id"]
    subjects = regions[keys].drop_duplicates().fillna({"session_id": "n/a"})
    has_chi = regions.loc[regions["map"].astype(str).str.endswith("Chimap"), keys]
    has_chi = set(map(tuple, has_chi.fillna({"session_id": "n/a"}).to_numpy()))
    rows = []
    les = lesions.fillna({"session_id": "n/a"}) if not lesions.empty else lesions
    for pid, ses in subjects.itertuples(index=False):
        mine = (
            les[(les["participant_id"] == pid) & (les["session_id"] == ses)]
            if not les.empty
            else les
        )
        one = mine.drop_duplicates("lesion_id") if not mine.empty else mine
        row = {
            "participant_id": pid,
            "session_id": None if ses == "n/a" else ses,
            "n_lesions": len(one),
            "lesion_volume_mm3": float(one["volume_mm3"].sum()) if len(one) else 0.0,
        }
        for loc in LOCATIONS:
            row[f"n_{loc}"] = int((one["location"] == loc).sum()) if len(one) else 0
        if (pid, ses) not in has_chi:
            row["n_prl_candidates"] = np.nan
        elif mine.empty or "prl_candidate" not in mine.columns:
            row["n_prl_candidates"] = 0
        else:
            chi = mine[mine["map"].astype(str).str.endswith("Chimap")]
            flag = pd.to_numeric(chi["prl_candidate"], errors="coerce") > 0
            row["n_prl_candidates"] = int(chi.loc[flag, "lesion_id"].nunique())
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COUNT_COLUMNS))


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
    counts = lesion_counts(regions, lesions)
    if part is not None:
        counts = counts.merge(part, on="participant_id", how="left")
    write_table(out / "group_desc-lesioncounts_stats.tsv", counts, {**COUNT_COLUMNS, **extra})
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
