"""Paramagnetic rim columns of the per-lesion table from a susceptibility map (pure arrays).

For the rows of a ``Chimap`` (QSM, ppm), :func:`bids_app.models.qsm.rim.rim_metrics` gives
``core_mean`` and ``rim_mean`` (its inner border shell of ``rim_mm``, default 2 mm, instead
of the generic one-voxel rim of :func:`bids_app.lesions.lesion_table`), ``rim_index`` (the
fraction of the shell whose chi exceeds both the NAWM mean and the core mean by more than
``threshold_ppm``) and ``prl_candidate`` (1 for a paramagnetic rim lesion candidate, else
0). Rows of the other maps keep ``rim_index`` and ``prl_candidate`` n/a. Criteria:
Absinta M et al., J Clin Invest 2016; Bagnato F et al., Brain 2024; thresholds chosen on
synthetic data in :mod:`bids_app.models.qsm.rim`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: columns written from :func:`rim_metrics` for the susceptibility rows
RIM_TABLE_COLUMNS = ("core_mean", "rim_mean", "rim_index", "prl_candidate")


def fill_rim_columns(
    table: pd.DataFrame,
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray,
    nawm: np.ndarray | None,
    zooms: Sequence[float],
    chi_maps: Collection[str],
    **rim_options: Any,
) -> pd.DataFrame:
    """Fill the rim columns of the rows whose ``map`` is one of ``chi_maps``.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-lesion table (``lesion_id``, ``map`` and the :data:`RIM_TABLE_COLUMNS`).
    maps : mapping of str to (X, Y, Z) ndarray
        The maps of the table, on the grid of ``labels``.
    labels : (X, Y, Z) int ndarray
        Lesion labels (0 background).
    nawm : (X, Y, Z) bool ndarray or None
        Normal-appearing white matter; None or without finite chi: the rim columns stay
        n/a (warning).
    zooms : sequence of 3 float
        Voxel size in mm.
    chi_maps : collection of str
        Names in ``maps`` that are susceptibility maps in ppm.
    **rim_options
        ``rim_mm``, ``threshold_ppm``, ``min_fraction``, ``min_rim_voxels`` of
        :func:`rim_metrics`.

    Returns
    -------
    pandas.DataFrame
        A copy of ``table``; ``rim_index`` in [0, 1] and ``prl_candidate`` 1.0/0.0 on the
        susceptibility rows, NaN elsewhere.
    """
    out = table.copy()
    for col in ("rim_index", "prl_candidate"):
        out[col] = np.nan
    if not chi_maps:
        return out
    # imported here: the models package (registry) is not needed without a Chimap
    from bids_app.models.qsm.rim import rim_metrics

    for name in chi_maps:
        if name not in maps:
            continue
        if nawm is None:
            logger.warning("%s: no NAWM mask: rim columns left n/a", name)
            continue
        try:
            rim = rim_metrics(maps[name], labels, nawm, tuple(zooms), **rim_options)
        except ValueError as err:
            logger.warning("%s: rim metrics not computed (%s): rim columns left n/a", name, err)
            continue
        per = pd.DataFrame(
            {
                "lesion_id": rim["lesion_id"].astype(np.int64),
                "core_mean": rim["core_mean"].astype(np.float64),
                "rim_mean": rim["rim_mean"].astype(np.float64),
                "rim_index": rim["rim_index"].astype(np.float64),
                "prl_candidate": rim["prl_candidate"].astype(np.float64),
            }
        ).set_index("lesion_id")
        rows = out["map"] == name
        ids = out.loc[rows, "lesion_id"].to_numpy(np.int64)
        for col in RIM_TABLE_COLUMNS:
            out.loc[rows, col] = per[col].reindex(ids).to_numpy()
        logger.info(
            "%s: %d of %d lesion(s) are paramagnetic rim candidates",
            name,
            int(np.nansum(per["prl_candidate"])),
            len(per),
        )
    return out
