"""The statistical group tables: summary, z-scores, harmonised means, longitudinal change.

Called by :func:`bids_app.group.run_group` after the concatenated tables are written:

``group_desc-summary_stats.tsv``
    :func:`bids_app.group_stats.summary_table` of the region means and of the lesion count
    and load (columns :data:`bids_app.group_stats.SUMMARY_COLUMNS`);
``group_desc-zscores_stats.tsv``
    :func:`bids_app.group_norms.zscores` (when participants.tsv has the group column);
``group_desc-lesionchanges_stats.tsv``, ``sub-<l>/sub-<l>_desc-lesionchanges_stats.tsv``, ``group_desc-longitudinal_stats.tsv``
    :func:`bids_app.longitudinal.run_longitudinal` (subjects with several sessions).

With ``--harmonize combat`` the group regions table gains ``mean_harmonized`` and the
summary and z-scores use it.
"""  # noqa: E501

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_app.bids.derivatives import write_table
from bids_app.group_norms import ZSCORE_COLUMNS, combat_harmonize, zscores
from bids_app.group_options import GroupOptions
from bids_app.group_stats import SUMMARY_COLUMNS, lesion_values, summary_table
from bids_app.longitudinal import run_longitudinal

logger = logging.getLogger(__name__)

_VALUE_KEYS = ["participant_id", "session_id", "map", "units", "region", "mean"]


def harmonize(regions: pd.DataFrame, options: GroupOptions) -> tuple[pd.DataFrame, str]:
    """Add ``mean_harmonized`` (ComBat) when asked; return the table and the value column."""
    if options.harmonize != "combat" or regions.empty:
        return regions, "mean"
    regions = regions.copy()
    regions["mean_harmonized"] = combat_harmonize(regions, options)
    return regions, "mean_harmonized"


def write_statistics(
    bids_dir: Path,
    out: Path,
    regions: pd.DataFrame,
    lesions: pd.DataFrame,
    counts: pd.DataFrame,
    participants: pd.DataFrame | None,
    options: GroupOptions,
    *,
    value: str = "mean",
) -> pd.DataFrame:
    """Write the summary, z-score and longitudinal tables; return the summary.

    Parameters
    ----------
    bids_dir, out : Path
        Raw dataset and output directory.
    regions : pandas.DataFrame
        Concatenated region tables joined with participants.tsv (may be empty: lesion-only
        studies).
    lesions : pandas.DataFrame
        Concatenated per-lesion tables.
    counts : pandas.DataFrame
        :func:`bids_app.group.lesion_counts` rows.
    participants : pandas.DataFrame or None
    options : GroupOptions
    value : str
        Column of ``regions`` summarised (``mean`` or ``mean_harmonized``).

    Returns
    -------
    pandas.DataFrame
        The summary table.
    """
    harmonization = "combat" if value == "mean_harmonized" else "none"
    long = (
        regions[[*_VALUE_KEYS[:-1], value]].rename(columns={value: "mean"})
        if not regions.empty
        else pd.DataFrame(columns=_VALUE_KEYS)
    )
    les = lesion_values(counts) if not counts.empty else pd.DataFrame(columns=_VALUE_KEYS)
    both = pd.concat([df for df in (long, les) if not df.empty], ignore_index=True)
    if both.empty:
        both = pd.DataFrame(columns=_VALUE_KEYS)
    summary = summary_table(both, participants, options, harmonization=harmonization)
    write_table(out / "group_desc-summary_stats.tsv", summary, SUMMARY_COLUMNS)
    if not regions.empty and options.group_column in regions.columns:
        z = zscores(regions, options, value=value)
        write_table(out / "group_desc-zscores_stats.tsv", z, ZSCORE_COLUMNS)
    elif participants is not None:
        logger.info("participants.tsv has no %r column: no z-scores", options.group_column)
    run_longitudinal(bids_dir, out, regions, lesions, both, options)
    return summary
