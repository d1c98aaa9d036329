"""Regularised T2 distributions: the Tikhonov weight chosen per voxel, many voxels at once.

The regularised NNLS ``min ||A x - y||² + mu ||x||², x >= 0`` smooths the T2 spectrum and
makes it stable against noise (Whittall KP, MacKay AL. J Magn Reson 1989;84:134-152). The
weight ``mu`` is chosen per voxel by one of:

``none``
    ``mu = 0``: the plain NNLS spectrum (a few spikes).
``chi2``
    The ``mu`` whose misfit is ``factor`` times the unregularised one (1.02 is the common
    choice; Whittall and MacKay 1989; Prasloski T et al. Magn Reson Med 2012;67:1803-1814),
    found by Newton steps on ``log(chi2 / chi2_min - 1)`` against ``log mu`` (nearly
    linear) with a semismooth Newton solver of the dual when the Gram matrices come as a
    :class:`~bids_app.models.mwf._nnls.GramStack` with a reduced basis
    (:mod:`bids_app.models.mwf._dual`, what the model uses), else by secant steps on the
    active-set NNLS.
``gcv``
    The minimum of generalised cross-validation ``chi2 / (n - dof)²`` over a log grid of
    weights, ``dof = tr(G_P (G_P + mu I)⁻¹)`` on the passive set ``P`` (Golub GH, Heath M,
    Wahba G. Technometrics 1979;21:215-223).
``lcurve``
    The corner of the L-curve ``(log chi2, log ||x||²)`` over the same grid: the point of
    largest (Menger) curvature (Hansen PC, O'Leary DP. SIAM J Sci Comput 1993;14:1487-1503).

Weights are relative to ``tr(G) / m``, so the choice does not depend on the signal scale.
"""

from __future__ import annotations

import numpy as np

from bids_app.models.mwf._dual import chi2_dual
from bids_app.models.mwf._nnls import GramStack, nnls_gram, nnls_objective

__all__ = ["METHODS", "regularised_nnls"]

METHODS = ("none", "chi2", "gcv", "lcurve")

#: chi2 root: first log10 relative weight tried (the median root at SNR 100 is -3.9), the
#: prior slope of g per decade, and the range of log10 relative weights searched
_START, _SLOPE, _LOWEST, _HIGHEST = -4.0, 1.55, -9.0, 2.0
#: relative weights of the gcv/lcurve grid
_GRID = 10.0 ** np.linspace(-7.0, 1.0, 17)
#: T2 indices by which the plain NNLS support is grown to warm-start the first chi2 weight
_DILATE = 4


def dilate(passive: np.ndarray, r: int) -> np.ndarray:
    """Passive sets grown by ``r`` T2 indices on each side: (n, m) bool."""
    out = passive.copy()
    for d in range(1, r + 1):
        out[:, d:] |= passive[:, :-d]
        out[:, :-d] |= passive[:, d:]
    return out


def _raw(gram):
    """The (g, m, m) array of a Gram matrix, stack or :class:`GramStack`."""
    g = gram.gram if isinstance(gram, GramStack) else np.asarray(gram, dtype=np.float64)
    return g if g.ndim == 3 else g[None]


def _take(index, rows):
    return None if index is None else index[rows]


def _dof(gram, index, passive, mu):
    """``tr(G_P (G_P + mu I)⁻¹) = |P| - mu tr((G_P + mu I)⁻¹)`` per voxel."""
    gram = _raw(gram)
    n = passive.shape[0]
    index = np.zeros(n, np.intp) if index is None else index
    sizes = np.count_nonzero(passive, axis=1)
    out = np.zeros(n)
    for k in np.unique(sizes):
        if k == 0:
            continue
        sel = np.flatnonzero(sizes == k)
        idx = np.nonzero(passive[sel])[1].reshape(sel.size, k)
        sub = gram[index[sel][:, None, None], idx[:, :, None], idx[:, None, :]]
        sub = sub + mu[sel, None, None] * np.eye(k)
        out[sel] = k - mu[sel] * np.trace(np.linalg.inv(sub), axis1=1, axis2=2)
    return out


def _chi2_root(gram, c, yy, index, x0, p0, chi2_0, factor, scale, tol, max_iter):
    """Per-voxel ``mu`` with ``chi2(mu) = factor chi2_0``.

    The root is sought on ``g(t) = log(chi2(mu) / chi2_0 - 1) - log(factor - 1)`` with
    ``t = log10 mu``: the misfit increase of Tikhonov regularisation grows as ``mu²`` for
    small weights and saturates for large ones (Hansen PC, Rank-Deficient and Discrete
    Ill-Posed Problems, SIAM 1998, ch. 4), so ``g`` is nearly linear in ``t`` (measured
    slope 0.8-2.3 per decade on EPG bases, median 1.55: :data:`_SLOPE`). A first step with
    that slope, then secant steps (regula falsi inside the bracket once the root is
    bracketed, Illinois-damped) converge in 3-4 NNLS solves, each warm-started from the
    previous weight's passive set; the solution closest to the target misfit is returned.
    """
    n = c.shape[0]
    target = factor * chi2_0
    x, mu = x0.copy(), np.zeros(n)
    if factor - 1.0 < 1e-12:
        return x, mu
    # warm start of the first weight: the regularised spectrum is (strictly convex, unique)
    # a broadened version of the plain one, so the dilated support saves most of the
    # one-index-at-a-time growth of the active set
    p = dilate(p0, _DILATE)
    # a misfit below 1e-13 yᵀy is the round-off floor of the normal-equation misfit (a
    # relative residual < 3e-7, SNR > 1e6): such voxels have no noise to trade, mu = 0
    todo = np.flatnonzero(chi2_0 > 1e-13 * yy)
    lo = np.full(n, -np.inf)  # log10 of relative weights, g(lo) < 0 <= g(hi)
    hi = np.full(n, np.inf)
    g_lo = np.full(n, np.nan)
    g_hi = np.full(n, np.nan)
    best = np.full(n, np.inf)

    def evaluate(rows, logm):
        ridge = 10.0**logm * scale[rows]
        xr, pr = nnls_gram(gram, c[rows], index=_take(index, rows), ridge=ridge, passive=p[rows])
        chi2 = nnls_objective(gram, c[rows], yy[rows], xr, _take(index, rows))
        err = np.abs(chi2 - target[rows]) / target[rows]
        closer = err < best[rows]  # keep the closest solution found so far
        r = rows[closer]
        x[r], mu[r], best[r] = xr[closer], ridge[closer], err[closer]
        p[rows] = pr
        rise = np.maximum(chi2 / chi2_0[rows] - 1.0, 1e-30)
        g = np.log(rise) - np.log(factor - 1.0)
        up = chi2 >= target[rows]
        hi[rows[up]], g_hi[rows[up]] = logm[up], g[up]
        lo[rows[~up]], g_lo[rows[~up]] = logm[~up], g[~up]
        return g

    t_prev = np.full(n, np.nan)
    g_prev = np.full(n, np.nan)
    t_now = np.full(n, _START)
    side = np.zeros(n, dtype=np.int8)  # Illinois: which end was replaced last time
    rows = todo
    for _ in range(max_iter):
        if rows.size == 0:
            break
        t = t_now[rows]
        g = evaluate(rows, t)
        with np.errstate(divide="ignore", invalid="ignore"):
            sec = (g - g_prev[rows]) / (t - t_prev[rows])
        sec = np.clip(np.where(np.isfinite(sec), sec, _SLOPE), 0.3, 5.0)
        t_prev[rows], g_prev[rows] = t, g
        new = t - np.clip(g / sec, -2.0, 2.0)
        a, b = lo[rows], hi[rows]
        both = np.isfinite(a) & np.isfinite(b)
        # inside a bracket: the secant point if it falls well inside, else regula falsi
        # with the end kept twice in a row halved (Illinois)
        up = g >= 0
        s = side[rows]
        halve_lo = both & up & (s == 1)
        halve_hi = both & ~up & (s == -1)
        g_lo[rows[halve_lo]] *= 0.5
        g_hi[rows[halve_hi]] *= 0.5
        side[rows] = np.where(up, 1, -1)
        ga, gb = g_lo[rows], g_hi[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.clip(np.nan_to_num(ga / (ga - gb), nan=0.5), 0.05, 0.95)
            inside = (new > a + 0.05 * (b - a)) & (new < b - 0.05 * (b - a))
            new = np.where(both & ~inside, a + frac * (b - a), new)
        t_now[rows] = new
        rows = rows[(best[rows] > tol) & (new >= _LOWEST) & (new <= _HIGHEST)]
    return x, mu


def _grid_choice(gram, c, yy, index, p0, scale, n_meas, method):
    """Best weight of the grid by gcv or the L-curve corner; returns (x, mu)."""
    n, m = c.shape
    xs = np.empty((_GRID.size, n, m))
    chi2 = np.empty((_GRID.size, n))
    crit = np.empty((_GRID.size, n))
    p = p0
    for i, rel in enumerate(_GRID):
        mu = np.full(n, rel * scale)
        xs[i], p = nnls_gram(gram, c, index=index, ridge=mu, passive=p)
        chi2[i] = nnls_objective(gram, c, yy, xs[i], index)
        if method == "gcv":
            dof = _dof(gram, index, p, mu)
            crit[i] = chi2[i] / np.maximum(n_meas - dof, 1e-6) ** 2
    if method == "lcurve":
        u = np.log(np.maximum(chi2, 1e-300))
        v = np.log(np.maximum(np.sum(xs**2, axis=2), 1e-300))
        crit[:] = np.inf
        # Menger curvature of consecutive triplets (signed: the corner bends towards origin)
        du1, dv1 = u[1:-1] - u[:-2], v[1:-1] - v[:-2]
        du2, dv2 = u[2:] - u[1:-1], v[2:] - v[1:-1]
        area = du1 * dv2 - dv1 * du2
        d13 = np.hypot(u[2:] - u[:-2], v[2:] - v[:-2])
        norm = np.hypot(du1, dv1) * np.hypot(du2, dv2) * d13
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = np.where(norm > 0, 2 * area / norm, 0.0)
        crit[1:-1] = -kappa
    pick = np.argmin(crit, axis=0)
    cols = np.arange(n)
    return xs[pick, cols], _GRID[pick] * scale


def regularised_nnls(
    gram: np.ndarray,
    c: np.ndarray,
    yy: np.ndarray,
    *,
    n_meas: int,
    method: str = "chi2",
    chi2_factor: float = 1.02,
    index: np.ndarray | None = None,
    passive: np.ndarray | None = None,
    chi2_tol: float = 1e-3,
    max_iter: int = 12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T2 spectra regularised as chosen, for many voxels sharing one Gram matrix (or a few).

    Parameters
    ----------
    gram : (m, m) or (g, m, m) ndarray, or GramStack
        ``AᵀA``; a stack needs ``index`` (see :func:`~bids_app.models.mwf._nnls.nnls_gram`).
    c : (n, m) ndarray
        ``Aᵀy`` per voxel.
    yy : (n,) ndarray
        ``yᵀy`` per voxel.
    n_meas : int
        Number of echoes (for the gcv degrees of freedom).
    method : {'none', 'chi2', 'gcv', 'lcurve'}
    chi2_factor : float
        Misfit increase of ``chi2`` (>= 1).
    index : (n,) int ndarray, optional
    passive : (n, m) bool ndarray, optional
        Warm start of the unregularised solve.
    chi2_tol : float
        Relative tolerance on the reached misfit of ``chi2``.
    max_iter : int
        NNLS solves (weights tried) of ``chi2`` at most.

    Returns
    -------
    x : (n, m) ndarray
        Non-negative spectra.
    mu : (n,) ndarray
        The weights used (0 for ``none`` and for voxels fitted to round-off).
    chi2 : (n,) ndarray
        Misfit ``||A x - y||²`` of the returned spectra.

    Raises
    ------
    ValueError
        For an unknown method or ``chi2_factor < 1``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown regularisation {method!r}; valid: {list(METHODS)}")
    if chi2_factor < 1:
        raise ValueError(f"chi2_factor must be >= 1, got {chi2_factor}")
    g = _raw(gram)
    scale = np.trace(g, axis1=1, axis2=2) / g.shape[1]
    scale = scale[0 if index is None else index] * np.ones(c.shape[0])
    x0, p0 = nnls_gram(gram, c, index=index, passive=passive)
    chi2_0 = nnls_objective(gram, c, yy, x0, index)
    if method == "none" or c.shape[0] == 0:
        x, mu = x0, np.zeros(c.shape[0])
    elif method == "chi2" and isinstance(gram, GramStack) and gram.b is not None:
        index = np.zeros(c.shape[0], np.intp) if index is None else np.asarray(index, np.intp)
        x, mu = chi2_dual(gram, c, yy, index, x0, chi2_0, chi2_factor, scale, chi2_tol, max_iter)
    elif method == "chi2":
        x, mu = _chi2_root(
            gram, c, yy, index, x0, p0, chi2_0, chi2_factor, scale, chi2_tol, max_iter
        )
    else:
        x, mu = _grid_choice(gram, c, yy, index, p0, scale, n_meas, method)
    return x, mu, nnls_objective(gram, c, yy, x, index)
