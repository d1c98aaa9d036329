"""Enhancing-lesion counts of the group lesion-count table (``n_enhancing``).

A participant/session is *assessed* for gadolinium enhancement when its lesion ``dseg``
sidecar (``sub-*/[ses-*/]anat/*_desc-lesions_dseg.json``) holds an ``Enhancement`` record
with a NAWM reference (:func:`bids_app.stages.enhancement.subject_enhancement`): then a
subject without lesions has 0 enhancing lesions, while a subject without a post-contrast
T1w has n/a (unknown, not 0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: description of the ``n_enhancing`` column
N_ENHANCING = (
    "gadolinium-enhancing lesions (enhancing = 1 in the lesion table); n/a without a "
    "post-contrast (ce-) T1w"
)


def assessed_subjects(out: Path) -> set[tuple[str, str]]:
    """``(participant_id, session_id or 'n/a')`` of every subject assessed for enhancement.

    Parameters
    ----------
    out : Path
        The output directory (participant level done).

    Returns
    -------
    set of tuple of str
        Unreadable sidecars are skipped (debug log).
    """
    found = set()
    pattern = "*_desc-lesions_dseg.json"
    for path in [*out.glob(f"sub-*/anat/{pattern}"), *out.glob(f"sub-*/ses-*/anat/{pattern}")]:
        try:
            record = json.loads(path.read_text()).get("Enhancement") or {}
        except (OSError, ValueError, AttributeError):
            logger.debug("%s: unreadable sidecar", path)
            continue
        if "NAWMVoxels" not in record:
            continue
        ses = path.parent.parent.name
        found.add((path.name.split("_")[0], ses if ses.startswith("ses-") else "n/a"))
    return found


def enhancing_count(rows: pd.DataFrame, assessed: bool) -> float:
    """Number of enhancing lesions of one participant/session (NaN when unknown).

    Parameters
    ----------
    rows : pandas.DataFrame
        The subject's lesion rows (one per lesion x map; may be empty).
    assessed : bool
        Whether the subject had a post-contrast T1w (:func:`assessed_subjects`).

    Returns
    -------
    float
        Distinct ``lesion_id`` with ``enhancing`` > 0; 0 for an assessed subject without
        lesions; NaN when not assessed or when every lesion's ``enhancing`` is n/a.
    """
    if rows.empty or "enhancing" not in rows.columns:
        return 0.0 if assessed else np.nan
    flag = pd.to_numeric(rows["enhancing"], errors="coerce")
    if not np.isfinite(flag.to_numpy(dtype=float)).any():
        return np.nan
    return float(rows.loc[flag > 0, "lesion_id"].nunique())
