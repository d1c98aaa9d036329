"""Group level: aggregate the participant tables (outputs only) into group tables.

Like MRIQC's ``generate_tsv``: find every participant table, concatenate, drop duplicates,
sort; then join ``participants.tsv`` and summarise each map x region, comparing patients with
controls when the ``group`` column says who is who.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_app.bids.derivatives import write_table
from bids_app.errors import NoInputsError, UsageError
from bids_app.failures import (
    ParticipantsFailedError,
    describe,
    group_message,
    maps_only_hint,
    read_failures,
)
from bids_app.group_enhancement import N_ENHANCING, assessed_subjects, enhancing_count
from bids_app.group_options import GroupOptions
from bids_app.group_results import harmonize, write_statistics
from bids_app.group_stats import SUMMARY_COLUMNS, cohens_d  # noqa: F401 (re-exported)
from bids_app.lesions import LOCATIONS
from bids_app.reports.html import group_report
from bids_app.schema import LESION_COLUMNS, REGION_COLUMNS, group_role  # noqa: F401

logger = logging.getLogger(__name__)

#: columns of ``group_desc-lesioncounts_stats.tsv`` (one row per participant x session)
COUNT_COLUMNS = {
    "participant_id": REGION_COLUMNS["participant_id"],
    "session_id": REGION_COLUMNS["session_id"],
    "n_lesions": "lesions (connected components) in the desc-lesions_dseg image",
    "lesion_volume_mm3": "total lesion volume (lesion load) in mm^3",
    "lesion_load_ml": "total lesion volume (lesion load) in mL",
    **{f"n_{loc}": f"lesions located {loc.replace('_', ' ')}" for loc in LOCATIONS},
    "n_prl_candidates": (
        "paramagnetic rim lesion candidates (prl_candidate of the Chimap rows); n/a "
        "without a Chimap"
    ),
    "n_enhancing": N_ENHANCING,
}


def lesion_counts(
    regions: pd.DataFrame,
    lesions: pd.DataFrame,
    enhancement_assessed: set[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Lesion count, load, counts per location and of rim lesions, per participant/session.

    Parameters
    ----------
    regions : pandas.DataFrame
        Concatenated region tables: every participant/session listed gets a row (0
        lesions when absent from ``lesions``); a ``map`` ending in ``Chimap`` tells that
        the subject has a susceptibility map.
    lesions : pandas.DataFrame
        Concatenated per-lesion tables (one row per lesion x map; may be empty).
    enhancement_assessed : set of (participant_id, session_id or 'n/a'), optional
        Subjects with a post-contrast T1w
        (:func:`bids_app.group_enhancement.assessed_subjects`): ``n_enhancing`` 0 rather
        than n/a when they have no lesion.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COUNT_COLUMNS`; ``n_prl_candidates`` NaN for subjects without a
        Chimap, ``n_enhancing`` NaN for subjects without a post-contrast T1w.
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
        row["lesion_load_ml"] = row["lesion_volume_mm3"] / 1000.0
        row["n_enhancing"] = enhancing_count(mine, (pid, ses) in (enhancement_assessed or ()))
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


def _roster(out: Path) -> pd.DataFrame:
    """participant_id / session_id of every participant table file (empty tables too)."""
    rows = []
    for pattern in ("*_desc-regions_stats.tsv", "*_desc-lesions_stats.tsv"):
        for f in [*out.glob(f"sub-*/{pattern}"), *out.glob(f"sub-*/ses-*/{pattern}")]:
            ses = f.parent.name if f.parent.name.startswith("ses-") else None
            rows.append({"participant_id": f.name.split("_")[0], "session_id": ses})
    roster = pd.DataFrame(rows, columns=["participant_id", "session_id"]).drop_duplicates()
    return roster.sort_values(["participant_id", "session_id"], na_position="first")


def run_group(
    bids_dir: Path,
    out: Path,
    *,
    reports: bool = True,
    options: GroupOptions | Mapping[str, Any] | None = None,
) -> int:
    """Write the group tables from the participant outputs in ``out``; return the exit code.

    The code is 0, or the highest exit code of the participants whose last participant run
    failed (their failure records, :mod:`bids_app.failures`; logged by name): the group
    tables then leave them out (or hold the tables of an earlier successful run).

    Lesion-only studies (lesion tables, no map) get the lesion tables, counts, summary and
    longitudinal changes too (:mod:`bids_app.group_results`).

    Raises
    ------
    NoInputsError
        When ``out`` holds neither region nor lesion tables (run the participant level
        first).
    ParticipantsFailedError
        When it holds no tables because every participant failed: the message names each
        failure, the exit code is theirs (highest).
    """
    if not isinstance(options, GroupOptions):
        try:
            options = GroupOptions.from_mapping(options)
        except ValueError as err:
            raise UsageError(f"group options: {err}") from None
    regions = _read_all(out, "*_desc-regions_stats.tsv")
    lesions = _read_all(out, "*_desc-lesions_stats.tsv")
    roster = _roster(out)
    failures = read_failures(out)
    if roster.empty and failures:
        raise ParticipantsFailedError(
            f"{out}: no participant tables: the participant level failed for {describe(failures)}",
            max(f["exit_code"] for f in failures),
        )
    if roster.empty:
        raise NoInputsError(
            f"{out}: no participant tables (*_desc-regions_stats.tsv or "
            f"*_desc-lesions_stats.tsv); {maps_only_hint(out)}"
        )
    if regions.empty:
        logger.info("group level: no map statistics; lesion results only")
        regions = pd.DataFrame(columns=list(REGION_COLUMNS))
    part = _participants(bids_dir)
    extra = {}
    if part is not None:
        extra = {c: f"from participants.tsv: {c}" for c in part.columns if c != "participant_id"}
        regions = regions.merge(part, on="participant_id", how="left")
        if not lesions.empty:
            lesions = lesions.merge(part, on="participant_id", how="left")
    regions, value = harmonize(regions, options)
    if value != "mean":
        extra["mean_harmonized"] = "mean after ComBat harmonisation across sites (neuroCombat)"
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
    counts = lesion_counts(
        pd.concat([regions, roster], ignore_index=True), lesions, assessed_subjects(out)
    )
    if part is not None:
        counts = counts.merge(part, on="participant_id", how="left")
    write_table(out / "group_desc-lesioncounts_stats.tsv", counts, {**COUNT_COLUMNS, **extra})
    summary = write_statistics(bids_dir, out, regions, lesions, counts, part, options, value=value)
    n_sub = roster["participant_id"].nunique()
    logger.info(
        "group level: %d participant(s), %d region rows, %d lesion rows -> %s",
        n_sub,
        len(regions),
        len(lesions),
        out,
    )
    if reports:
        try:
            group_report(
                out, regions, summary, lesions, counts=counts, bids_dir=bids_dir, options=options
            )
        except Exception:
            logger.warning("group report failed (see log)")
            logger.debug("report traceback", exc_info=True, extra={"file_only": True})
    if failures:
        published = {(p, s if isinstance(s, str) else None) for p, s in roster.to_numpy()}
        logger.error("%s", group_message(failures, published))
        return max(f["exit_code"] for f in failures)
    return 0
