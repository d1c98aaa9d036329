"""The fitting driver of whole-volume models (QSM, DSC/DCE as volumes, MWF spatial steps).

:meth:`bids_app.models.base.QMRIModel.fit` dispatches here for ``kind = "volume"``; the
voxelwise driver is :mod:`bids_app.models.fitting`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_app.models.results import QMRIFit

if TYPE_CHECKING:  # pragma: no cover
    from bids_app.models.base import QMRIModel

__all__ = ["fit_whole_volume"]


def fit_whole_volume(
    model: QMRIModel,
    data: Mapping[str, np.ndarray],
    *,
    mask: np.ndarray | None,
    affine: np.ndarray | None,
    covariates: Mapping[str, np.ndarray] | None = None,
    **_ignored: Any,
) -> QMRIFit:
    """The whole-volume driver: shape checks, the model's fit, NaN outside the mask.

    Parameters
    ----------
    model : QMRIModel
        A model of ``kind = "volume"`` (its ``_fit_volume`` is called).
    data : mapping of str to (X, Y, Z, ...) ndarray
        The inputs, all on one grid.
    mask : (X, Y, Z) bool ndarray, optional
        Fitted voxels (default all); parameters are NaN outside.
    affine : (4, 4) ndarray, optional
        Voxel-to-world affine (default identity).
    covariates : mapping of str to (X, Y, Z) ndarray, optional

    Returns
    -------
    QMRIFit

    Raises
    ------
    ValueError
        Inputs, mask or covariates of different spatial shapes.
    RuntimeError
        ``_fit_volume`` returned an array of the wrong shape.
    """
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{model.name}: whole-volume data must be a mapping of input arrays")
    spatial = next(iter(data.values())).shape[:3]
    for name, arr in data.items():
        if arr.shape[:3] != spatial:
            raise ValueError(f"input {name!r} shape {arr.shape[:3]} != {spatial}")
    mask = np.ones(spatial, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match data shape {spatial}")
    covariates = dict(covariates or {})
    for name, cov in covariates.items():
        if np.shape(cov) != spatial:
            raise ValueError(f"covariate {name!r} shape {np.shape(cov)} != data shape {spatial}")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    with np.errstate(all="ignore"):
        out = model._fit_volume(data, mask=mask, affine=affine, **covariates)
    params, rmse = out if isinstance(out, tuple) else (out, None)
    params = np.array(params, dtype=np.float64)
    expected = (*spatial, len(model.outputs))
    if params.shape != expected:
        raise RuntimeError(
            f"{model.name}._fit_volume returned {params.shape}, expected {expected}"
        )
    params[~mask] = np.nan
    params[~np.isfinite(params)] = np.nan
    if rmse is not None:
        rmse = np.where(mask, rmse, np.nan)
    return QMRIFit(model, params, rmse)
