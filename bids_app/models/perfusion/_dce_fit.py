"""Batched DCE-MRI tracer-kinetic fits: Patlak, (extended) Tofts and the 2CXM.

Units follow :mod:`._dce_physics` (time in s; Ktrans and PS in /min; Fp in ml/100ml/min;
vp, ve fractions; delay in s). Every fit works on ``(n_vox, n_t)`` concentration arrays and
loops only over chunks of voxels and candidate delays, never over voxels.

* Patlak: linear least squares (Patlak et al., JCBFM 1983).
* Tofts / extended Tofts: the linear integral form of Murase (MRM 2004), then an optional
  batched Levenberg-Marquardt refinement of the non-linear model.
* 2CXM: in :mod:`._dce_2cxm` (same conventions, helpers from here).

Arterial delay: a fixed delay, or (``fit_delay=True``) a grid search where every candidate
delay is fitted with the linear form and each voxel keeps the delay of least squares; the
non-linear refinement (Tofts with ``refine``, 2CXM) then frees the delay as one more
parameter, bounded by the grid. Patlak and unrefined Tofts keep the grid value.
Curves with non-finite samples give NaN parameters (``converged`` False).
"""

from __future__ import annotations

import logging

import numpy as np

from ._dce_lm import batched_lm, block_lstsq, block_lstsq_delays
from ._dce_physics import (
    SECONDS_PER_MINUTE,
    cumulative_integral,
    exp_conv,
    shift_aif,
)

logger = logging.getLogger(__name__)

#: Bounds (lower, upper) used by the non-linear fits; Ktrans and ve follow the OSIPI
#: CodeCollection test settings (Ktrans 0-5 /min, ve 0-1, vp 0-1).
TOFTS_BOUNDS = {"ktrans": (0.0, 5.0), "ve": (1e-4, 1.0), "vp": (0.0, 1.0)}
DEFAULT_DELAY_GRID = np.arange(0.0, 10.01, 0.5)
_MIN = SECONDS_PER_MINUTE


def _check(t: np.ndarray, ct: np.ndarray, cp: np.ndarray) -> tuple[np.ndarray, ...]:
    t = np.asarray(t, dtype=float)
    ct = np.atleast_2d(np.asarray(ct, dtype=float))
    cp = np.asarray(cp, dtype=float)
    if t.ndim != 1 or ct.shape[1] != t.size or cp.shape not in ((t.size,), ct.shape):
        raise ValueError(
            "need t (n_t,), ct (n_vox, n_t), cp (n_t,) or (n_vox, n_t); "
            f"got {t.shape}, {ct.shape}, {cp.shape}"
        )
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing")
    return t, ct, cp


def _lstsq(cols: list[np.ndarray], own: list[np.ndarray], y: np.ndarray):
    """:func:`block_lstsq` with columns that are shared (1-D) or per voxel (2-D)."""
    if all(c.ndim == 1 for c in cols):
        shared = np.stack(cols, axis=1)
    else:
        own = [np.broadcast_to(c, y.shape) for c in cols] + list(own)
        shared = np.zeros((y.shape[1], 0))
    own_arr = np.stack(own, axis=2) if own else None
    return block_lstsq(shared, own_arr, y)


def _rows_of(cp: np.ndarray, sl: slice) -> np.ndarray:
    return cp if cp.ndim == 1 else cp[sl]


def _finite(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Curves with non-finite samples replaced by zeros, and the mask of those curves."""
    bad = ~np.all(np.isfinite(y), axis=1)
    return (np.where(bad[:, None], 0.0, y) if bad.any() else y), bad


def _blank(out: dict[str, np.ndarray], sl: slice, bad: np.ndarray) -> None:
    """Mark the non-finite curves of a chunk as NaN / not converged."""
    if bad.any():
        for v in out.values():
            v[sl][bad] = False if v.dtype == bool else np.nan


def _chunks(n: int, size: int):
    for start in range(0, n, max(int(size), 1)):
        yield slice(start, min(start + size, n))


def _delays(fit_delay: bool, delay_s: float, grid: np.ndarray | None) -> np.ndarray:
    if not fit_delay:
        return np.array([float(delay_s)])
    return np.asarray(DEFAULT_DELAY_GRID if grid is None else grid, dtype=float)


def _best_over_delays(t, ct, cp, delays, linear_fit):
    """Run ``linear_fit(cp_delayed) -> (coef, sse)`` for each delay; keep the best per voxel."""
    best_coef, best_sse, best_delay = None, None, None
    for d in delays:
        coef, sse = linear_fit(shift_aif(t, cp, d) if d else cp)
        if best_coef is None:
            best_coef, best_sse = coef, sse
            best_delay = np.full(ct.shape[0], d)
            continue
        better = sse < best_sse
        best_coef[better], best_sse[better], best_delay[better] = coef[better], sse[better], d
    return best_coef, best_sse, best_delay


def _refine(inner, t, cp, y, p0, lo, hi, dly, delays, fit_delay, max_iter):
    """Batched LM from ``p0`` with a fixed delay, or with the delay as a last parameter."""
    if fit_delay:
        p0 = np.concatenate([p0, dly[:, None]], axis=1)
        lo = np.append(lo, delays.min())
        hi = np.append(hi, delays.max())
        base = cp
    else:
        base = shift_aif(t, cp, delays[0]) if delays[0] else cp
    return batched_lm(_lm_model(inner, t, base, fit_delay), y, p0, lo, hi, max_iter=max_iter)


def fit_patlak(
    t: np.ndarray,
    ct: np.ndarray,
    cp: np.ndarray,
    delay_s: float = 0.0,
    fit_delay: bool = False,
    delay_grid: np.ndarray | None = None,
    chunk_size: int = 200_000,
) -> dict[str, np.ndarray]:
    """Patlak fit ``C = vp cp + Ktrans int cp`` by linear least squares.

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    ct : (n_vox, n_t) ndarray
        Tissue concentration (mM).
    cp : (n_t,) or (n_vox, n_t) ndarray
        Plasma AIF (mM), shared or one per voxel.
    delay_s : float, optional
        Fixed arterial delay in s (ignored when ``fit_delay``).
    fit_delay : bool, optional
        Grid-search the delay over ``delay_grid`` (s; default 0-10 s step 0.5 s).
    delay_grid : (n_d,) ndarray, optional
    chunk_size : int, optional
        Voxels processed together (bounds memory).

    Returns
    -------
    dict of (n_vox,) ndarray
        ``ktrans`` (/min), ``vp``, ``delay`` (s), ``sse``.

    Raises
    ------
    ValueError
        On inconsistent shapes or non-increasing times.
    """
    t, ct, cp = _check(t, ct, cp)
    delays = _delays(fit_delay, delay_s, delay_grid)
    out = {k: np.full(ct.shape[0], np.nan) for k in ("ktrans", "vp", "delay", "sse")}
    for sl in _chunks(ct.shape[0], chunk_size):
        y, bad = _finite(ct[sl])

        def lin(cpd, y=y):
            return _lstsq([cpd, cumulative_integral(t, cpd)], [], y)

        cpc = _rows_of(cp, sl)
        if cpc.ndim == 1:  # a shared AIF: every delay at once
            coef, sse, best = linear_delay_fit(t, y, _delay_table(t, cpc, delays), "patlak")
            dly = delays[best]
        else:
            coef, sse, dly = _best_over_delays(t, y, cpc, delays, lin)
        out["vp"][sl], out["ktrans"][sl] = coef[:, 0], coef[:, 1] * _MIN
        out["delay"][sl], out["sse"][sl] = dly, sse
        _blank(out, sl, bad)
    return out


def _murase(t, y, cpd, extended):
    """Linear Tofts/extended-Tofts fit (Murase 2004); returns (ktrans /s, kep /s, vp), sse."""
    icp = cumulative_integral(t, cpd)
    own = [-cumulative_integral(t, y)]
    coef, sse = _lstsq([icp, cpd] if extended else [icp], own, y)
    return _murase_params(coef, extended), sse


def _murase_params(coef: np.ndarray, extended: bool) -> np.ndarray:
    """(ktrans /s, kep /s, vp) from the Murase coefficients ([int cp, cp,] -int C)."""
    if extended:
        b1, vp, kep = coef[:, 0], coef[:, 1], coef[:, 2]
        return np.stack([b1 - kep * vp, kep, vp], axis=1)
    return np.stack([coef[:, 0], coef[:, 1], np.zeros(coef.shape[0])], axis=1)


def linear_delay_fit(
    t: np.ndarray, ct: np.ndarray, table: np.ndarray, model: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The linear fit at every candidate AIF of ``table``; each voxel's best candidate.

    Murase's linear Tofts forms (Murase, MRM 2004) or Patlak, for all candidate arterial
    delays at once (:func:`._dce_lm.block_lstsq_delays`): the same result as one linear fit
    per delay keeping the least squares, without refitting the voxel-specific columns.

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    ct : (n_vox, n_t) ndarray
        Tissue concentration (mM), finite.
    table : (n_d, n_t) ndarray
        The plasma AIF (mM) at each candidate delay.
    model : {'tofts', 'etofts', 'patlak'}

    Returns
    -------
    params : (n_vox, 3) ndarray
        Tofts: (ktrans /s, kep /s, vp); Patlak: (vp, ktrans /s, 0).
    sse : (n_vox,) ndarray
    best : (n_vox,) ndarray of int
        Row of ``table`` chosen.
    """
    table = np.atleast_2d(np.asarray(table, dtype=float))
    icp = cumulative_integral(t, table)
    if model == "patlak":
        coef, sse, best = block_lstsq_delays(np.stack([table, icp], axis=-1), None, ct)
        return np.c_[coef, np.zeros(ct.shape[0])], sse, best
    extended = model == "etofts"
    shared = np.stack([icp, table], axis=-1) if extended else icp[..., None]
    own = -cumulative_integral(t, ct)[..., None]
    coef, sse, best = block_lstsq_delays(shared, own, ct)
    return _murase_params(coef, extended), sse, best


def _delay_table(t, cp, delays):
    return np.stack([shift_aif(t, cp, d) if d else cp for d in delays])


def _tofts_model(t, extended):
    """Tofts model in (ktrans /min, ve[, vp]), analytic Jacobian (kep derivative by FD)."""

    def model(params, cpd, need_jac=True):
        kt = params[:, 0] / _MIN
        ve = params[:, 1]
        kep = kt / ve
        cp2 = cpd if cpd.ndim == 2 else cpd[None, :]
        e0 = exp_conv(t, cpd, kep)
        pred = kt[:, None] * e0
        if extended:
            pred = pred + params[:, 2, None] * cp2
        if not need_jac:
            return pred
        h = 1e-6 * kep + 1e-10
        de = (exp_conv(t, cpd, kep + h) - e0) / h[:, None]
        jac = np.empty((pred.shape[0], params.shape[1], pred.shape[1]))
        jac[:, 0] = (e0 + kt[:, None] * de / ve[:, None]) / _MIN
        jac[:, 1] = -kt[:, None] * de * (kt / ve**2)[:, None]
        if extended:
            jac[:, 2] = cp2
        return pred, jac

    return model


def _lm_model(inner, t, cp_base, fit_delay, delay_step=1e-3):
    """``model(params, rows)`` for :func:`batched_lm` from ``inner(params, cp_input)``.

    With ``fit_delay`` the last parameter is the arterial delay (s), whose Jacobian column
    is a forward difference of ``delay_step`` s.
    """

    def model(params, rows):
        cpr = cp_base if cp_base.ndim == 1 else cp_base[rows]
        if not fit_delay:
            return inner(params, cpr)
        kin, d = params[:, :-1], params[:, -1]
        pred, jk = inner(kin, shift_aif(t, cpr, d))
        shifted = inner(kin, shift_aif(t, cpr, d + delay_step), need_jac=False)
        jac = np.concatenate([jk, ((shifted - pred) / delay_step)[:, None, :]], axis=1)
        return pred, jac

    return model


def fit_tofts(
    t: np.ndarray,
    ct: np.ndarray,
    cp: np.ndarray,
    extended: bool = True,
    refine: bool = True,
    delay_s: float = 0.0,
    fit_delay: bool = False,
    delay_grid: np.ndarray | None = None,
    max_iter: int = 50,
    chunk_size: int = 100_000,
) -> dict[str, np.ndarray]:
    """Standard or extended Tofts fit: Murase linear solution, then batched LM.

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    ct : (n_vox, n_t) ndarray
        Tissue concentration (mM).
    cp : (n_t,) or (n_vox, n_t) ndarray
        Plasma AIF (mM), shared or one per voxel.
    extended : bool, optional
        Include the plasma term ``vp cp`` (default) or fit the standard model (``vp = 0``).
    refine : bool, optional
        Refine the linear estimates with non-linear least squares (bounds
        :data:`TOFTS_BOUNDS`); otherwise return the Murase solution (clipped to the bounds).
    delay_s, fit_delay, delay_grid :
        Fixed delay in s, or grid search of the delay (see :func:`fit_patlak`).
    max_iter : int, optional
        LM iterations.
    chunk_size : int, optional
        Voxels processed together.

    Returns
    -------
    dict of (n_vox,) ndarray
        ``ktrans`` (/min), ``ve``, ``vp``, ``kep`` (/min), ``delay`` (s), ``sse``,
        ``converged`` (bool; True for every voxel when ``refine`` is False).

    Raises
    ------
    ValueError
        On inconsistent shapes or non-increasing times.
    """
    t, ct, cp = _check(t, ct, cp)
    delays = _delays(fit_delay, delay_s, delay_grid)
    names = ("ktrans", "ve", "vp") if extended else ("ktrans", "ve")
    lo = np.array([TOFTS_BOUNDS[k][0] for k in names])
    hi = np.array([TOFTS_BOUNDS[k][1] for k in names])
    n = ct.shape[0]
    out = {k: np.full(n, np.nan) for k in ("ktrans", "ve", "vp", "kep", "delay", "sse")}
    out["converged"] = np.zeros(n, dtype=bool)
    for sl in _chunks(n, chunk_size):
        y, bad = _finite(ct[sl])
        cpc = _rows_of(cp, sl)
        if cpc.ndim == 1:  # a shared AIF: every delay at once
            coef, sse, best = linear_delay_fit(
                t, y, _delay_table(t, cpc, delays), "etofts" if extended else "tofts"
            )
            dly = delays[best]
        else:
            coef, sse, dly = _best_over_delays(
                t, y, cpc, delays, lambda cpd, y=y: _murase(t, y, cpd, extended)
            )
        kt, kep, vp = coef[:, 0], coef[:, 1], coef[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            ve = np.where(kep > 0, kt / kep, TOFTS_BOUNDS["ve"][1])
        p0 = np.stack([kt * _MIN, ve, vp], axis=1)[:, : len(names)]
        p0 = np.where(np.isfinite(p0), p0, 0.5 * (lo + hi))
        p0 = np.clip(p0, lo, hi)
        if refine:
            params, sse, conv = _refine(
                _tofts_model(t, extended), t, cpc, y, p0, lo, hi, dly, delays, fit_delay, max_iter
            )
        else:
            params, conv = p0, np.ones(y.shape[0], dtype=bool)
        if refine and fit_delay:
            dly = params[:, -1]
        out["ktrans"][sl], out["ve"][sl] = params[:, 0], params[:, 1]
        out["vp"][sl] = params[:, 2] if extended else 0.0
        out["kep"][sl] = params[:, 0] / params[:, 1]
        out["delay"][sl], out["sse"][sl], out["converged"][sl] = dly, sse, conv
        _blank(out, sl, bad)
    return out
