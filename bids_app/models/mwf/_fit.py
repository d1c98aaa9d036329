"""Pure array core of the myelin water fit: bases, angle search, spectra and summaries.

The refocusing angle of each voxel is found as in Prasloski T et al. (Magn Reson Med
2012;67:1803-1814), a misfit on a coarse angle grid and a cubic spline through it minimised
on a fine grid, but with a cheaper misfit: that of the unconstrained Tikhonov fit at a fixed
relative weight (``_CRIT_MU``), a quadratic form in the signal (:func:`_criterion`), so all
coarse angles cost one matrix product instead of one NNLS each. On three-pool EPG
simulations (150-180°, SNR 100) its angles are as close to the truth as those of the NNLS
misfit (median 2.5° and 2.4°; tests/models/test_mwf.py). Every basis, Gram matrix and
criterion factor is computed once per protocol, on the fine grid; voxels then only choose an
index into that stack and are sorted by it, so all voxels of a chunk are solved together
(:mod:`bids_app.models.mwf._nnls`, :mod:`bids_app.models.mwf._dual`) whatever their angles,
with one matrix product per basis. The spectra are regularised as chosen
(:mod:`bids_app.models.mwf._regularise`) and summarised into water fractions and
geometric-mean T2 of the windows (MacKay A et al. Magn Reson Med 1994;31:673-677;
Whittall KP et al. Magn Reson Med 1997;37:34-43).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.interpolate import CubicSpline

from bids_app.models._epg import epg_cpmg_decay
from bids_app.models.mwf._nnls import GramStack, _runs
from bids_app.models.mwf._regularise import regularised_nnls

__all__ = ["MWFBasis", "fit_spectra", "make_basis", "summarise"]

#: relative Tikhonov weight of the angle criterion (1e-6: noiseless signals of the basis
#: get their exact angle, 1e-2 would bias them; at SNR 100 the angle errors differ by 0.1°),
#: the hat-matrix eigenvalues kept, and the fine steps searched each side of the spline
#: minimum
_CRIT_MU, _CRIT_EIG, _LOCAL = 1e-6, 1e-12, 3


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
    criterion : (n_fine, n_echoes, r) ndarray
        Angle criterion: ``yᵀy - ||yᵀ W_a||²`` is the ridge misfit at angle ``a``, ``W_a =
        criterion[a]`` (see :func:`_criterion`).
    stack : GramStack
        ``grams`` prepared for the batched NNLS.
    """

    t2: np.ndarray
    angles: np.ndarray
    coarse: np.ndarray
    bases: np.ndarray
    grams: np.ndarray
    criterion: np.ndarray
    stack: GramStack


def make_basis(
    t2: np.ndarray | tuple[float, ...],
    echo_spacing: float,
    n_echoes: int,
    *,
    angle_min: float = 100.0,
    n_coarse: int = 17,
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
    arrays = (np.asarray(t2, float), angles, coarse, bases, grams, _criterion(bases))
    for a in arrays:
        a.flags.writeable = False
    return MWFBasis(*arrays, GramStack(grams))


def _criterion(bases: np.ndarray) -> np.ndarray:
    """Factors of the ridge hat matrices of every angle: (n_angles, n_echoes, r).

    The misfit of the unconstrained Tikhonov fit ``min ||A x - y||² + mu ||x||²`` is
    ``yᵀ(I - H) y`` with ``H = A (AᵀA + mu I)⁻¹ Aᵀ``; ``H = U diag(l) Uᵀ`` (eigenvalues
    ``0 <= l < 1``) and only the ``r`` eigenvalues above ``_CRIT_EIG`` matter, so
    ``yᵀ H y = ||yᵀ U_r diag(l_r)^½||²``: one matrix product for all coarse angles.
    (Hoerl AE, Kennard RW. Technometrics 1970;12:55-67 for the ridge fit.)
    """
    mats = []
    for a in bases:
        g = a.T @ a
        mu = _CRIT_MU * np.trace(g) / g.shape[0]
        h = a @ np.linalg.solve(g + mu * np.eye(g.shape[0]), a.T)
        lam, u = np.linalg.eigh(0.5 * (h + h.T))
        mats.append((lam, u))
    r = max(int(np.count_nonzero(lam > _CRIT_EIG)) for lam, _ in mats)
    return np.stack([u[:, -r:] * np.sqrt(np.clip(lam[-r:], 0, None)) for lam, u in mats])


def _angle_search(basis: MWFBasis, y: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Fine-grid angle index of each voxel from the ridge misfits: (n,) int.

    The misfits of the coarse angles (one product), the minimum of a cubic spline through
    them on the fine grid, then the best fine angle within ``_LOCAL`` steps of it.
    """
    n = y.shape[0]
    crit = basis.criterion
    w = crit[basis.coarse].transpose(1, 0, 2).reshape(y.shape[1], -1)
    fit = (y @ w).reshape(n, basis.coarse.size, -1)
    start = _spline_argmin(basis, (yy[:, None] - np.einsum("nar,nar->na", fit, fit)).T)
    span = min(2 * _LOCAL + 1, basis.angles.size)
    lo = np.clip(start - _LOCAL, 0, basis.angles.size - span)
    order = np.argsort(lo, kind="stable")
    best = np.empty(n, dtype=np.intp)
    for a, s, e in _runs(lo[order]):
        rows = order[s:e]
        w = crit[a : a + span].transpose(1, 0, 2).reshape(y.shape[1], -1)
        f = (y[rows] @ w).reshape(rows.size, span, -1)
        best[rows] = a + np.argmax(np.einsum("nar,nar->na", f, f), axis=1)
    return best


def _project(basis: MWFBasis, y: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``A_{index_v}ᵀ y_v`` for every voxel, rows sorted by ``index``: (n, m)."""
    c = np.empty((y.shape[0], basis.t2.size))
    for g, s, e in _runs(index):
        c[s:e] = y[s:e] @ basis.bases[g]
    return c


def _residual(basis: MWFBasis, y: np.ndarray, x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``||A x - y||`` computed directly (no cancellation), rows sorted by ``index``: (n,)."""
    r = np.empty(y.shape[0])
    for g, s, e in _runs(index):
        r[s:e] = np.linalg.norm(x[s:e] @ basis.bases[g].T - y[s:e], axis=1)
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


def fit_spectra(
    y: np.ndarray,
    basis: MWFBasis,
    *,
    method: str = "chi2",
    chi2_factor: float = 1.02,
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
    yy = np.einsum("ij,ij->i", y, y)
    index = np.full(n, -1) if angle_index is None else np.asarray(angle_index).copy()
    search = np.flatnonzero(index < 0)
    if search.size:
        index[search] = _angle_search(basis, y[search], yy[search])
    order = np.argsort(index, kind="stable")  # grouped by angle: one product per basis
    ys, ixs = y[order], index[order]
    c = _project(basis, ys, ixs)
    xs, _, _ = regularised_nnls(
        basis.stack,
        c,
        yy[order],
        n_meas=y.shape[1],
        method=method,
        chi2_factor=chi2_factor,
        index=ixs,
    )
    x = np.empty_like(xs)
    x[order] = xs
    resid = np.empty(n)
    resid[order] = _residual(basis, ys, xs, ixs)
    return x, index, resid


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
