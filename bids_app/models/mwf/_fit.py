"""Pure array core of the myelin water fit: bases, angle search, spectra and summaries.

The refocusing angle of each voxel is found as in Prasloski T et al. (Magn Reson Med
2012;67:1803-1814): the unregularised NNLS misfit is computed on a coarse angle grid, a cubic
spline through it is minimised on a fine grid, and (here) a short descent over neighbouring
fine angles makes the choice exact on that grid. The coarse misfits are those of a
truncated active set warm-started angle to angle (see ``_COARSE_ITER``). Every basis and Gram
matrix is computed once per protocol, on the fine grid; voxels then only choose an index
into that stack, so all voxels of a chunk are solved together
(:mod:`bids_app.models.mwf._nnls`) whatever their angles. The spectra are regularised as
chosen (:mod:`bids_app.models.mwf._regularise`) and summarised into water fractions and
geometric-mean T2 of the windows (MacKay A et al. Magn Reson Med 1994;31:673-677;
Whittall KP et al. Magn Reson Med 1997;37:34-43).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.interpolate import CubicSpline

from bids_app.models.mwf._epg import epg_cpmg_decay
from bids_app.models.mwf._nnls import nnls_gram, nnls_objective
from bids_app.models.mwf._regularise import regularised_nnls

__all__ = ["MWFBasis", "fit_spectra", "make_basis", "summarise"]

#: active-set iterations of the coarse-grid NNLS after the first (180°) angle, each
#: warm-started from the previous angle's passive set; None: to convergence. One gives a
#: feasible upper bound of each coarse misfit (exact where the support does not move),
#: enough for the spline minimum that the refinement then polishes with converged NNLS:
#: about 15-20 % faster with the same angle and MWF errors (see tests/models/test_mwf.py)
_COARSE_ITER = 1


@dataclass(frozen=True)
class MWFBasis:
    """EPG decay bases of one protocol over a fine grid of refocusing angles.

    Attributes
    ----------
    t2 : (m,) ndarray
        T2 grid, s.
    angles : (n_fine,) ndarray
        Fine refocusing-angle grid, degrees, ascending, ending at 180.
    coarse : (n_coarse,) int ndarray
        Indices of the coarse search grid in ``angles`` (both ends included).
    bases : (n_fine, n_echoes, m) ndarray
        Echo amplitudes per angle and T2.
    grams : (n_fine, m, m) ndarray
        ``AᵀA`` per angle.
    """

    t2: np.ndarray
    angles: np.ndarray
    coarse: np.ndarray
    bases: np.ndarray
    grams: np.ndarray


def make_basis(
    t2: np.ndarray | tuple[float, ...],
    echo_spacing: float,
    n_echoes: int,
    *,
    angle_min: float = 100.0,
    n_coarse: int = 9,
    resolution: float = 0.5,
    t1: float = 1.0,
) -> MWFBasis:
    """Bases and Gram matrices for every angle of the fine grid (once per protocol).

    Parameters
    ----------
    t2 : (m,) array_like
        T2 grid, s.
    echo_spacing : float
        s.
    n_echoes : int
    angle_min : float
        Lowest refocusing angle searched, degrees (< 180).
    n_coarse : int
        Angles of the coarse grid, ``>= 4`` (a cubic spline needs them).
    resolution : float
        Largest step of the fine grid, degrees.
    t1 : float
        s, for the EPG.

    Returns
    -------
    MWFBasis
        Read-only arrays; the same protocol returns the same (cached) object.

    Raises
    ------
    ValueError
        If ``angle_min >= 180``, ``n_coarse < 4`` or ``resolution <= 0``.
    """
    if not angle_min < 180 or n_coarse < 4 or resolution <= 0:
        raise ValueError("need angle_min < 180, n_coarse >= 4 and resolution > 0")
    key = tuple(float(v) for v in np.asarray(t2, dtype=float).ravel())
    args = (float(echo_spacing), int(n_echoes), float(angle_min), int(n_coarse))
    return _cached_basis(key, *args, float(resolution), float(t1))


@lru_cache(maxsize=8)
def _cached_basis(t2, echo_spacing, n_echoes, angle_min, n_coarse, resolution, t1):
    """:func:`make_basis` on hashable arguments, memoised (the bases are read-only)."""
    q = int(np.ceil((180.0 - angle_min) / (n_coarse - 1) / resolution))
    angles = np.linspace(angle_min, 180.0, (n_coarse - 1) * q + 1)
    bases = epg_cpmg_decay(t2, echo_spacing, n_echoes, angles, t1=t1)
    grams = bases.transpose(0, 2, 1) @ bases
    coarse = np.arange(0, angles.size, q)
    arrays = (np.asarray(t2, float), angles, coarse, bases, grams)
    for a in arrays:
        a.flags.writeable = False
    return MWFBasis(*arrays)


def _project(basis: MWFBasis, y: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``A_{index_v}ᵀ y_v`` for every voxel: (n, m)."""
    c = np.empty((y.shape[0], basis.t2.size))
    for g in np.unique(index):
        sel = index == g
        c[sel] = y[sel] @ basis.bases[g]
    return c


def _residual(basis: MWFBasis, y: np.ndarray, x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``||A x - y||`` computed directly (no cancellation): (n,)."""
    r = np.empty(y.shape[0])
    for g in np.unique(index):
        sel = index == g
        r[sel] = np.linalg.norm(x[sel] @ basis.bases[g].T - y[sel], axis=1)
    return r


def _spline_argmin(basis: MWFBasis, chi2: np.ndarray) -> np.ndarray:
    """Fine-grid index minimising a cubic spline through the coarse misfits (n_coarse, n)."""
    coarse_angles = basis.angles[basis.coarse]
    spline = CubicSpline(coarse_angles, chi2, axis=0)
    q = basis.coarse[1]
    best = np.argmin(chi2, axis=0) * q
    n = chi2.shape[1]
    lo, hi = 0, basis.angles.size - 1
    cand = best.copy()
    cand_val = np.full(n, np.inf)
    cols = np.arange(n)
    for off in range(-q, q + 1):
        fi = np.clip(best + off, lo, hi)
        seg = np.minimum(fi // q, coarse_angles.size - 2)
        dx = basis.angles[fi] - coarse_angles[seg]
        co = spline.c[:, seg, cols]
        val = ((co[0] * dx + co[1]) * dx + co[2]) * dx + co[3]
        better = val < cand_val
        cand[better], cand_val[better] = fi[better], val[better]
    return cand


def _refine(basis, y, yy, index, p, chi2, stride):
    """Fine-grid index at the vertex of a parabola through the misfits at ``index ± stride``.

    The vertex is clipped to two strides from ``index``; at the ends of the grid (or for a
    non-convex triplet) the best of the three angles is kept. Updates ``p`` (warm starts).
    """
    last = basis.angles.size - 1
    vals = [None, chi2, None]
    for slot, d in ((0, -stride), (2, stride)):
        nb = np.clip(index + d, 0, last)
        c = _project(basis, y, nb)
        xn, _pn = nnls_gram(basis.grams, c, index=nb, passive=p)
        vals[slot] = np.where(nb == index, np.inf, nnls_objective(basis.grams, c, yy, xn, nb))
    c_lo, c_mid, c_hi = vals
    best = np.argmin(np.stack(vals), axis=0) - 1  # -1, 0, +1 strides
    curv = c_lo - 2 * c_mid + c_hi
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(
            np.isfinite(curv) & (curv > 0), 0.5 * (c_lo - c_hi) / curv, best.astype(float)
        )
    shift = np.clip(np.nan_to_num(shift), -2.0, 2.0)
    return np.clip(np.rint(index + stride * shift).astype(np.intp), 0, last)


def fit_spectra(
    y: np.ndarray,
    basis: MWFBasis,
    *,
    method: str = "chi2",
    chi2_factor: float = 1.02,
    refine_steps: int = 1,
    refine_stride: float = 1.0,
    angle_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T2 spectra and refocusing angles of many voxels.

    Parameters
    ----------
    y : (n, n_echoes) ndarray
        Finite signals, scaled to order 1 (the caller normalises).
    basis : MWFBasis
    method : {'none', 'chi2', 'gcv', 'lcurve'}
        Regularisation of the final spectrum.
    chi2_factor : float
        For ``chi2``.
    refine_steps : int
        Parabolic refinements after the spline minimum, each through the misfits at the
        current angle and ``± refine_stride`` (halved at every step, down to the fine
        step); 0: the spline minimum as is.
    refine_stride : float
        First stride of the refinement, degrees.
    angle_index : (n,) int ndarray, optional
        Given angles (fine-grid indices, e.g. from a B1 map); ``-1`` marks voxels whose
        angle is fitted. Default: fit all.

    Returns
    -------
    x : (n, m) ndarray
        Spectra (amplitudes of ``basis.t2``), in the units of ``y``.
    index : (n,) int ndarray
        Fine-grid angle index of each voxel.
    residual : (n,) ndarray
        ``||A x - y||`` of the returned spectra.
    """
    n = y.shape[0]
    m = basis.t2.size
    yy = np.einsum("ij,ij->i", y, y)
    index = np.full(n, -1) if angle_index is None else np.asarray(angle_index).copy()
    x = np.zeros((n, m))
    p = np.zeros((n, m), dtype=bool)
    search = np.flatnonzero(index < 0)
    if search.size:
        ys, yys = y[search], yy[search]
        table = np.empty((basis.coarse.size, search.size))
        ps = None
        for i, a in enumerate(basis.coarse[::-1]):  # from 180 down: warm starts
            c = ys @ basis.bases[a]
            cap = None if ps is None else _COARSE_ITER  # 180°: converged, cold start
            xa, ps = nnls_gram(basis.grams[a], c, passive=ps, max_iter=cap)
            table[-1 - i] = nnls_objective(basis.grams[a], c, yys, xa)
        index[search] = _spline_argmin(basis, table)
        p[search] = ps
    if search.size and refine_steps > 0:
        ys, yys, ix = y[search], yy[search], index[search]
        c = _project(basis, ys, ix)
        xs, ps = nnls_gram(basis.grams, c, index=ix, passive=p[search])
        chi2 = nnls_objective(basis.grams, c, yys, xs, ix)
        stride = max(1, round(refine_stride / np.diff(basis.angles[:2])[0]))
        for _ in range(refine_steps):
            ix = _refine(basis, ys, yys, ix, ps, chi2, stride)
            c = _project(basis, ys, ix)
            xs, ps = nnls_gram(basis.grams, c, index=ix, passive=ps)
            chi2 = nnls_objective(basis.grams, c, yys, xs, ix)
            stride = max(1, stride // 2)
        index[search], p[search] = ix, ps
    c = _project(basis, y, index)
    x, _, _ = regularised_nnls(
        basis.grams,
        c,
        yy,
        n_meas=y.shape[1],
        method=method,
        chi2_factor=chi2_factor,
        index=index,
        passive=p,
    )
    return x, index, _residual(basis, y, x, index)


def summarise(
    x: np.ndarray, t2: np.ndarray, mw_cutoff: float, iew_cutoff: float
) -> dict[str, np.ndarray]:
    """Water fractions (percent) and geometric-mean T2 (s) of the windows.

    Parameters
    ----------
    x : (n, m) ndarray
        Non-negative spectra on ``t2``.
    t2 : (m,) ndarray
        s.
    mw_cutoff, iew_cutoff : float
        Upper T2 bounds (s) of the myelin-water and intra/extracellular windows.

    Returns
    -------
    dict
        ``MWF``, ``IEWF`` (percent of the total), ``T2MW``, ``T2IEW`` (s; NaN for an empty
        window) and ``total`` (the summed amplitude), each (n,).
    """
    mw = t2 < mw_cutoff
    iew = (t2 >= mw_cutoff) & (t2 < iew_cutoff)
    logt = np.log(t2)
    total = x.sum(axis=1)
    out = {"total": total}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, win in (("MW", mw), ("IEW", iew)):
            s = x[:, win].sum(axis=1)
            out[f"{name}F"] = np.where(total > 0, 100.0 * s / total, np.nan)
            gm = np.exp(x[:, win] @ logt[win] / s)
            out[f"T2{name}"] = np.where(s > 0, gm, np.nan)
    return out
