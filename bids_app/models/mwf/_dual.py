"""Tikhonov-regularised NNLS by semismooth Newton on its dual, the chi2 weight by Newton steps.

With the reduced basis ``B = L_r^½ V_rᵀ`` (r, m) and data ``z = L_r^-½ V_rᵀ c`` (r,) of a
:class:`~bids_app.models.mwf._nnls.GramStack` (``G ≈ BᵀB``, ``c = Bᵀz``), the problem

    min_x ½ ||B x - z||² + ½ mu ||x||²,  x >= 0

has the dual ``min_λ φ(λ) = ½||λ||² - zᵀλ + ||max(0, Bᵀλ)||² / (2 mu)``, whose minimiser
gives ``x = max(0, Bᵀλ) / mu`` and is the residual ``λ = z - B x``. ``φ`` is convex,
piecewise quadratic and continuously differentiable, with gradient ``F(λ) = λ - z + B
max(0, Bᵀλ) / mu`` and generalised Hessian ``J = I + B_P B_Pᵀ / mu`` (``P = {Bᵀλ > 0}``), so
Newton's method with Armijo backtracking converges globally and stops after finitely many
steps, once ``P`` is right (semismooth Newton: Qi L, Sun J. Math Program 1993;58:353-367).
Every voxel solves ``(r, r)`` systems (``r`` about 11 for 32 echoes), whatever the size of
its support, and every product with ``B`` is one matrix product per basis.

The misfit is ``||A x - y||² = ||λ||² + yᵀy - ||z||²`` and, differentiating ``F = 0``,
``d misfit / d mu = 2 λᵀ J⁻¹ B max(0, Bᵀλ) / mu²``: the chi2 weight (misfit = factor x
the unregularised one; Whittall KP, MacKay AL. J Magn Reson 1989;84:134-152) is found by
safeguarded Newton steps on ``log(misfit / misfit_0 - 1)`` against ``log10 mu``, each
warm-started from the previous ``λ``.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.models.mwf._nnls import GramStack, _runs

__all__ = ["chi2_dual"]

logger = logging.getLogger(__name__)

#: first log10 relative weight, prior slope of g per decade (see _regularise), bounds
_START, _SLOPE, _LOWEST, _HIGHEST = -4.0, 1.55, -9.0, 2.0
#: Newton steps per weight at most, and backtracking halvings at most
_NEWTON, _HALVINGS = 40, 30


def _times(a: np.ndarray, mats: np.ndarray, runs, transpose: bool = False) -> np.ndarray:
    """``a_v @ mats[g_v]`` (or ``mats[g_v].T``) for rows grouped in ``runs``."""
    cols = mats.shape[1] if transpose else mats.shape[2]
    out = np.empty((a.shape[0], cols))
    for g, s, e in runs:
        out[s:e] = a[s:e] @ (mats[g].T if transpose else mats[g])
    return out


def _hessians(pos: np.ndarray, stack: GramStack, runs, mu: np.ndarray) -> np.ndarray:
    """``J = I + B_P B_Pᵀ / mu`` of every row, stored (r, r, n) for :func:`_spd_solve`."""
    r = stack.rank
    out = np.empty((r * r, pos.shape[0]))
    for g, s, e in runs:
        out[:, s:e] = stack.outer[g].T @ pos[s:e].T
    out /= mu
    out[:: r + 1] += 1.0
    return out.reshape(r, r, -1)


def _spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a_v⁻¹ b_v`` for symmetric positive definite ``a`` (r, r, n), ``b`` (r, k, n).

    Cholesky factorisation and the two triangular solves written column by column and
    vectorised over the last axis ``v`` (Golub GH, Van Loan CF. Matrix Computations, 4th ed.
    2013, algorithm 4.2.1): for ``r`` about 10 about twice as fast as a batched LAPACK solve.
    Returns (r, k, n).
    """
    r = a.shape[0]
    low = np.zeros_like(a)
    for j in range(r):
        lj = low[j, :j]
        d = np.sqrt(np.maximum(a[j, j] - np.einsum("kn,kn->n", lj, lj), 1e-300))
        low[j, j] = d
        if j + 1 < r:
            low[j + 1 :, j] = (a[j + 1 :, j] - np.einsum("ikn,kn->in", low[j + 1 :, :j], lj)) / d
    y = np.empty_like(b)
    for i in range(r):
        y[i] = (b[i] - np.einsum("kn,kmn->mn", low[i, :i], y[:i])) / low[i, i]
    x = np.empty_like(b)
    for i in range(r - 1, -1, -1):
        x[i] = (y[i] - np.einsum("kn,kmn->mn", low[i + 1 :, i], x[i + 1 :])) / low[i, i]
    return x


def _phi(lam, z, xt, mu):
    """The dual objective of every row: (n,)."""
    return 0.5 * np.sum(lam * (lam - 2 * z), 1) + 0.5 * np.sum(xt * xt, 1) / mu


def _newton(stack: GramStack, gidx, z, mu, lam):
    """Dual minimisers for rows sorted by ``gidx``: ``(lam, w)``, both (n, r).

    ``w = J⁻¹ B max(0, Bᵀλ) / mu²`` with ``J`` and ``λ`` of the last Newton step (the
    derivative ``dλ/dmu`` at the solution when the last step kept ``P``; NaN for rows that
    took no step).
    """
    lam = lam.copy()
    deriv = np.full(lam.shape, np.nan)
    todo = np.arange(lam.shape[0])
    runs = _runs(gidx)
    lt, zt, mt, gt = lam, z, mu, gidx
    ftol = 1e-11 * (1.0 + np.max(np.abs(z), axis=1))
    qt = _times(lt, stack.b, runs)
    for _ in range(_NEWTON):
        xt = np.maximum(qt, 0.0)
        bx = _times(xt, stack.b, runs, transpose=True) / mt[:, None]
        f = lt - zt + bx
        going = np.max(np.abs(f), axis=1) > ftol
        if not going.all():
            lam[todo[~going]] = lt[~going]
            todo, lt, zt, mt, gt, qt, xt, f, bx, ftol = (
                v[going] for v in (todo, lt, zt, mt, gt, qt, xt, f, bx, ftol)
            )
            if todo.size == 0:
                break
            runs = _runs(gt)
        hess = _hessians((qt > 0).astype(float), stack, runs, mt)
        rhs = np.stack((-f.T, (bx / mt[:, None]).T), axis=1)  # (r, 2, n)
        sol = _spd_solve(hess, rhs)
        d = sol[:, 0].T
        deriv[todo] = sol[:, 1].T
        phi0 = _phi(lt, zt, xt, mt)
        slope = np.sum(f * d, axis=1)
        new = lt + d
        qn = _times(new, stack.b, runs)
        fail = _phi(new, zt, np.maximum(qn, 0.0), mt) > phi0 + 1e-4 * slope + 1e-15 * np.abs(phi0)
        if fail.any():  # Armijo backtracking on the rows that need it (rare)
            alpha = np.ones(todo.size)
            check = np.flatnonzero(fail)
            for _ in range(_HALVINGS):
                alpha[check] *= 0.5
                new[check] = lt[check] + alpha[check, None] * d[check]
                sub_runs = _runs(gt[check])
                qc = _times(new[check], stack.b, sub_runs)
                qn[check] = qc
                phin = _phi(new[check], zt[check], np.maximum(qc, 0.0), mt[check])
                bad = phin > phi0[check] + 1e-4 * alpha[check] * slope[check] + 1e-15 * np.abs(
                    phi0[check]
                )
                check = check[bad]
                if check.size == 0:
                    break
        lt, qt = new, qn
    else:
        if todo.size:
            logger.debug("chi2_dual: %d voxel(s) short of Newton convergence", todo.size)
    lam[todo] = lt
    return lam, deriv


def chi2_dual(
    stack: GramStack,
    c: np.ndarray,
    yy: np.ndarray,
    index: np.ndarray,
    x0: np.ndarray,
    chi2_0: np.ndarray,
    factor: float,
    scale: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Spectra and weights with ``misfit(mu) = factor * chi2_0``, many voxels at once.

    Parameters
    ----------
    stack : GramStack
        With a reduced basis (``stack.b`` not None).
    c : (n, m) ndarray
        ``Aᵀy`` per voxel.
    yy : (n,) ndarray
        ``yᵀy`` per voxel.
    index : (n,) int ndarray
        Gram matrix of each voxel.
    x0 : (n, m) ndarray
        Unregularised NNLS spectra (for the first dual point).
    chi2_0 : (n,) ndarray
        Their misfits.
    factor : float
        Misfit increase (> 1).
    scale : (n,) ndarray
        ``tr(G) / m`` of each voxel's Gram matrix: weights are ``10**t * scale``.
    tol : float
        Relative tolerance on the reached misfit.
    max_iter : int
        Weights tried at most.

    Returns
    -------
    x : (n, m) ndarray
        Non-negative spectra (``x0`` where the misfit is at round-off: ``mu = 0``).
    mu : (n,) ndarray
        Weights used.
    """
    n = c.shape[0]
    order = np.argsort(index, kind="stable")
    gidx = index[order]
    runs = _runs(gidx)
    z = _times(c[order], stack.zproj, runs)
    yperp = yy[order] - np.sum(z * z, axis=1)
    chi0 = chi2_0[order]
    target = factor * chi0
    xs = x0[order].copy()
    mu_out = np.zeros(n)
    sc = scale[order]
    t = np.full(n, _START)
    mu = 10.0**t * sc
    # first dual point: the unregularised residual, shifted so that Bᵀλ ≈ mu x0
    lam = (
        z - _times(xs, stack.b, runs, transpose=True) + mu[:, None] * _times(xs, stack.zproj, runs)
    )
    best = np.full(n, np.inf)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    todo = np.flatnonzero(chi0 > 1e-13 * yy[order])
    for _ in range(max_iter):
        if todo.size == 0:
            break
        g_ix, m_t = gidx[todo], 10.0 ** t[todo] * sc[todo]
        lt, w = _newton(stack, g_ix, z[todo], m_t, lam[todo])
        lam[todo] = lt
        sub = _runs(g_ix)
        q = _times(lt, stack.b, sub)
        xt = np.maximum(q, 0.0)
        chi2 = np.sum(lt * lt, axis=1) + yperp[todo]
        err = np.abs(chi2 - target[todo]) / target[todo]
        closer = err < best[todo]
        rc = todo[closer]
        xs[rc], mu_out[rc], best[rc] = xt[closer] / m_t[closer, None], m_t[closer], err[closer]
        rise = np.maximum(chi2 / chi0[todo] - 1.0, 1e-30)
        g = np.log(rise) - np.log(factor - 1.0)
        up = g >= 0
        hi[todo[up]] = t[todo[up]]
        lo[todo[~up]] = t[todo[~up]]
        # d misfit / d mu by implicit differentiation of F(λ, mu) = 0 (w = dλ/dmu)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            dg = np.log(10.0) * m_t * 2.0 * np.sum(lt * w, axis=1) / (chi2 - chi0[todo])
        dg = np.where(np.isfinite(dg) & (dg > 0.05), dg, _SLOPE)
        new = t[todo] - np.clip(g / dg, -1.5, 1.5)
        a, b = lo[todo], hi[todo]
        outside = np.isfinite(a) & np.isfinite(b) & ~((new > a) & (new < b))
        new = np.where(outside, 0.5 * (a + b), new)
        # tangent predictor of the next dual point (first order in log10 mu)
        step = m_t * (10.0 ** (new - t[todo]) - 1.0)
        lam[todo] = lt + np.nan_to_num(w) * step[:, None]
        t[todo] = new
        todo = todo[(best[todo] > tol) & (new >= _LOWEST) & (new <= _HIGHEST)]
    x = np.empty_like(xs)
    x[order] = xs
    out = np.empty(n)
    out[order] = mu_out
    return x, out
