"""The one generic fitting driver shared by every model (DESIGN 2.2).

``fit_masked`` validates the mask, flattens the masked voxels to ``(n_vox, n_meas)``, cuts them
into chunks, calls the model's pure ``_fit_voxels`` on each chunk (in ``nprocs`` worker
processes when asked), scatters the results back and leaves NaN outside the mask. Models never
repeat any of this.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from bids_app.models.base import QMRIFit, QMRIModel

logger = logging.getLogger(__name__)

#: default number of voxels handed to a solver at once (bounds peak memory)
CHUNK_SIZE = 65536


def _fit_chunk(
    model: QMRIModel, signal: np.ndarray, covariates: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit one chunk; return params (n, n_params) and rmse (n,) or None."""
    n_params = len(model.outputs)
    with np.errstate(all="ignore"):
        params = np.asarray(model._fit_voxels(signal, **covariates), dtype=np.float64)
        if params.shape != (signal.shape[0], n_params):
            raise RuntimeError(
                f"{model.name}._fit_voxels returned shape {params.shape}, "
                f"expected {(signal.shape[0], n_params)}"
            )
        params[~np.isfinite(params)] = np.nan
        pred = model.predict(params, **covariates)
        rmse = None
        if pred is not None:
            rmse = np.sqrt(np.mean((pred - signal) ** 2, axis=-1))
            # an overflowing residual (e.g. a 1e300 signal) is not a fit quality: NaN
            rmse[~np.isfinite(rmse) | (rmse > np.finfo(np.float32).max)] = np.nan
    return params, rmse


def fit_masked(
    model: QMRIModel,
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    covariates: Mapping[str, np.ndarray] | None = None,
    chunk_size: int = CHUNK_SIZE,
    nprocs: int = 1,
) -> QMRIFit:
    """Fit ``model`` to every voxel of ``data`` inside ``mask``.

    Parameters
    ----------
    model : QMRIModel
        The model; its ``_fit_voxels`` takes (n_vox, n_meas) and returns (n_vox, n_params).
    data : (..., n_meas) array_like
        Signal; a 1-D array is one voxel.
    mask : (...) array_like of bool, optional
        Voxels to fit; default all. Voxels whose signal has a non-finite value are not fitted.
    covariates : mapping of str to (...) ndarray, optional
        Per-voxel inputs of the model such as ``b1`` (relative B1+), same spatial shape.
    chunk_size : int
        Voxels per solver call.
    nprocs : int
        Worker processes over chunks (1: in this process).

    Returns
    -------
    QMRIFit
        ``params`` of shape (..., n_params), NaN outside the mask and where undefined.

    Raises
    ------
    ValueError
        If the mask or a covariate does not have the spatial shape of ``data``.
    """
    data = np.asarray(data)
    if data.ndim == 0:
        raise ValueError("data must have at least one dimension (the measurements)")
    spatial = data.shape[:-1]
    if mask is None:
        mask = np.ones(spatial, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match data shape {spatial}")
    covariates = dict(covariates or {})
    for name, cov in covariates.items():
        if np.shape(cov) != spatial:
            raise ValueError(f"covariate {name!r} shape {np.shape(cov)} != data shape {spatial}")

    flat = data.reshape(-1, data.shape[-1])
    sel = mask.reshape(-1) & np.all(np.isfinite(flat), axis=-1)
    idx = np.flatnonzero(sel)
    n_params = len(model.outputs)
    params = np.full((flat.shape[0], n_params), np.nan)
    rmse = np.full(flat.shape[0], np.nan)
    has_rmse = False

    starts = range(0, idx.size, max(int(chunk_size), 1))
    jobs = []
    for s in starts:
        chunk = idx[s : s + chunk_size]
        cov = {
            k: np.asarray(v).reshape(-1)[chunk].astype(np.float64) for k, v in covariates.items()
        }
        jobs.append((chunk, flat[chunk].astype(np.float64), cov))

    if nprocs > 1 and len(jobs) > 1:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=nprocs, mp_context=ctx) as pool:
            futures = [pool.submit(_fit_chunk, model, sig, cov) for _, sig, cov in jobs]
            results = [f.result() for f in futures]
    else:
        results = [_fit_chunk(model, sig, cov) for _, sig, cov in jobs]

    for (chunk, _, _), (p, r) in zip(jobs, results, strict=True):
        params[chunk] = p
        if r is not None:
            rmse[chunk] = r
            has_rmse = True
    logger.debug("%s: fitted %d voxels in %d chunk(s)", model.name, idx.size, len(jobs))
    params = params.reshape((*spatial, n_params))
    return QMRIFit(model, params, rmse.reshape(spatial) if has_rmse else None)
