"""Batched fit of the two-compartment exchange model (2CXM) of DCE-MRI.

Start: the linear integral form of Flouri, Lesnic & Sourbron (MRM 2016),
``C = -a1 int C - a0 iint C + Fp int cp + b0 iint cp``, solved for all voxels at once; then
batched Levenberg-Marquardt on the non-linear model (Brix et al. 2004; Sourbron & Buckley,
MRM 2011). Units and delay handling as in :mod:`._dce_fit` (time s, Fp ml/100ml/min, PS /min).
"""

from __future__ import annotations

import numpy as np

from ._dce_fit import (
    _best_over_delays,
    _blank,
    _check,
    _chunks,
    _delays,
    _finite,
    _lstsq,
    _refine,
    _rows_of,
)
from ._dce_physics import SECONDS_PER_MINUTE, cumulative_integral, two_cxm_conc_from_input

#: Bounds (lower, upper) of the non-linear 2CXM fit.
TWO_CXM_BOUNDS = {"vp": (1e-4, 1.0), "ve": (1e-4, 1.0), "fp": (1e-2, 300.0), "ps": (0.0, 5.0)}
_MIN = SECONDS_PER_MINUTE
_FP_SCALE = 100.0 * SECONDS_PER_MINUTE  # ml/ml/s -> ml/100ml/min


def _two_cxm_linear(t, y, cpd):
    """Flouri et al. (MRM 2016) linear 2CXM fit; returns (vp, ve, fp, ps) in output units."""
    icp = cumulative_integral(t, cpd)
    iicp = cumulative_integral(t, icp)
    ic = cumulative_integral(t, y)
    coef, sse = _lstsq([icp, iicp], [-ic, -cumulative_integral(t, ic)], y)
    fp, b0, a1, a0 = coef.T
    with np.errstate(divide="ignore", invalid="ignore"):
        vtot = b0 / a0
        vp = fp / (a1 - a0 * vtot / fp)
        ve = vtot - vp
        ps = a0 * vp * ve / fp
    return np.stack([vp, ve, fp * _FP_SCALE, ps * _MIN], axis=1), sse


def _two_cxm_model(t):
    """2CXM in (vp, ve, fp, ps) with a forward-difference Jacobian."""

    def model(params, cpd, need_jac=True):
        pred = two_cxm_conc_from_input(t, cpd, *params.T)
        if not need_jac:
            return pred
        jac = np.empty((pred.shape[0], params.shape[1], pred.shape[1]))
        for j in range(params.shape[1]):
            step = 1e-6 * np.abs(params[:, j]) + 1e-8
            shifted = params.copy()
            shifted[:, j] += step
            jac[:, j] = (two_cxm_conc_from_input(t, cpd, *shifted.T) - pred) / step[:, None]
        return pred, jac

    return model


def fit_two_cxm(
    t: np.ndarray,
    ct: np.ndarray,
    cp: np.ndarray,
    delay_s: float = 0.0,
    fit_delay: bool = False,
    delay_grid: np.ndarray | None = None,
    max_iter: int = 100,
    chunk_size: int = 50_000,
) -> dict[str, np.ndarray]:
    """Two-compartment exchange model fit: linear start, then batched LM.

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    ct : (n_vox, n_t) ndarray
        Tissue concentration (mM).
    cp : (n_t,) or (n_vox, n_t) ndarray
        Plasma AIF (mM), shared or one per voxel.
    delay_s, fit_delay, delay_grid :
        Fixed delay in s, or grid search of the delay (see :func:`fit_patlak`).
    max_iter : int, optional
        LM iterations.
    chunk_size : int, optional
        Voxels processed together.

    Returns
    -------
    dict of (n_vox,) ndarray
        ``vp``, ``ve``, ``fp`` (ml/100ml/min), ``ps`` (/min), ``delay`` (s), ``sse``,
        ``converged`` (bool). Bounds: :data:`TWO_CXM_BOUNDS`.

    Raises
    ------
    ValueError
        On inconsistent shapes or non-increasing times.
    """
    t, ct, cp = _check(t, ct, cp)
    delays = _delays(fit_delay, delay_s, delay_grid)
    names = ("vp", "ve", "fp", "ps")
    lo = np.array([TWO_CXM_BOUNDS[k][0] for k in names])
    hi = np.array([TWO_CXM_BOUNDS[k][1] for k in names])
    fallback = np.array([0.05, 0.2, 20.0, 0.1])
    n = ct.shape[0]
    out = {k: np.full(n, np.nan) for k in (*names, "delay", "sse")}
    out["converged"] = np.zeros(n, dtype=bool)
    for sl in _chunks(n, chunk_size):
        y, bad = _finite(ct[sl])
        cpc = _rows_of(cp, sl)
        p0, _, dly = _best_over_delays(
            t, y, cpc, delays, lambda cpd, y=y: _two_cxm_linear(t, y, cpd)
        )
        invalid = ~np.all(np.isfinite(p0) & (p0 >= lo) & (p0 <= hi), axis=1)
        p0[invalid] = fallback
        params, sse, conv = _refine(
            _two_cxm_model(t), t, cpc, y, p0, lo, hi, dly, delays, fit_delay, max_iter
        )
        dly = params[:, -1] if fit_delay else dly
        for j, k in enumerate(names):
            out[k][sl] = params[:, j]
        out["delay"][sl], out["sse"][sl], out["converged"][sl] = dly, sse, conv
        _blank(out, sl, bad)
    return out
