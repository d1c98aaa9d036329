"""Batched least-squares numerics for the DCE fits (array in, array out).

* :func:`block_lstsq`, linear least squares for every voxel when the design matrix has
  columns shared by all voxels plus a few voxel-specific columns (Murase-type linear
  tracer-kinetic fits), solved from block normal equations without a per-voxel loop;
  :func:`block_lstsq_delays` does it for many candidate shared designs at once (the AIF
  at every candidate arterial delay) and keeps each voxel's best;
* :func:`batched_lm`, a box-constrained Levenberg-Marquardt solver with any number of
  parameters, iterating all voxels together with a per-voxel damping factor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: ``model(params (k, p), rows (k,)) -> (pred (k, m), jac (k, p, m))``
JacobianModel = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def block_lstsq(
    shared: np.ndarray, own: np.ndarray | None, y: np.ndarray, ridge: float = 1e-12
) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel least squares ``y_i ~ [shared, own_i] b_i`` from the normal equations.

    Parameters
    ----------
    shared : (m, q) ndarray
        Columns common to every voxel.
    own : (n, m, r) ndarray or None
        Voxel-specific columns (``r`` may be 0 / None).
    y : (n, m) ndarray
        Data.
    ridge : float, optional
        Relative Tikhonov term added to the diagonal (keeps all-zero curves solvable).

    Returns
    -------
    coef : (n, q + r) ndarray
        Coefficients, shared columns first.
    sse : (n,) ndarray
        Residual sum of squares.
    """
    y = np.asarray(y, dtype=float)
    shared = np.asarray(shared, dtype=float)
    n = y.shape[0]
    q = shared.shape[1]
    r = 0 if own is None else own.shape[2]
    p = q + r
    ata = np.empty((n, p, p))
    aty = np.empty((n, p))
    ata[:, :q, :q] = shared.T @ shared
    aty[:, :q] = y @ shared
    if r:
        cross = np.einsum("mq,nmr->nqr", shared, own)
        ata[:, :q, q:] = cross
        ata[:, q:, :q] = np.swapaxes(cross, 1, 2)
        ata[:, q:, q:] = np.einsum("nmr,nms->nrs", own, own)
        aty[:, q:] = np.einsum("nmr,nm->nr", own, y)
    diag = np.einsum("npp->np", ata)
    scale = np.where(diag > 0, diag, 1.0)
    # Jacobi scaling then a small ridge: conditions columns of very different magnitude.
    d = 1.0 / np.sqrt(scale)
    m_scaled = ata * d[:, :, None] * d[:, None, :]
    m_scaled += ridge * np.eye(p)
    coef = np.linalg.solve(m_scaled, (aty * d)[..., None])[..., 0] * d
    sse = np.einsum("nm,nm->n", y, y) - 2.0 * np.einsum("np,np->n", coef, aty)
    sse += np.einsum("np,npq,nq->n", coef, ata, coef)
    return coef, np.maximum(sse, 0.0)


def block_lstsq_delays(
    shared: np.ndarray, own: np.ndarray | None, y: np.ndarray, ridge: float = 1e-12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`block_lstsq` for ``D`` candidate shared designs; each voxel's best one.

    The voxel-specific blocks (``own^T own``, ``own^T y``, ``y^T y``) do not depend on the
    candidate and are formed once; the cross products with all ``D`` shared designs are one
    matrix product each, and the (at most 3 x 3) systems are solved in closed form, so the
    cost of a delay grid is a few GEMMs instead of ``D`` separate fits.

    Parameters
    ----------
    shared : (D, m, q) ndarray
        The shared columns of each candidate.
    own : (n, m, r) ndarray or None
        Voxel-specific columns, the same for every candidate.
    y : (n, m) ndarray
        Data.
    ridge : float, optional
        Relative Tikhonov term (as :func:`block_lstsq`).

    Returns
    -------
    coef : (n, q + r) ndarray
        Coefficients of each voxel's best candidate, shared columns first.
    sse : (n,) ndarray
        Its residual sum of squares.
    best : (n,) ndarray of int
        Index of the best candidate (least squares; the first on ties).
    """
    shared = np.asarray(shared, dtype=float)
    y = np.asarray(y, dtype=float)
    n_d, m, q = shared.shape
    n = y.shape[0]
    r = 0 if own is None else own.shape[2]
    p = q + r
    flat = shared.transpose(1, 0, 2).reshape(m, n_d * q)
    ata = np.empty((n, n_d, p, p))
    aty = np.empty((n, n_d, p))
    ata[:, :, :q, :q] = np.einsum("dmq,dms->dqs", shared, shared)[None]
    aty[:, :, :q] = (y @ flat).reshape(n, n_d, q)
    if r:
        cross = (own.transpose(0, 2, 1).reshape(n * r, m) @ flat).reshape(n, r, n_d, q)
        ata[:, :, :q, q:] = cross.transpose(0, 2, 3, 1)
        ata[:, :, q:, :q] = cross.transpose(0, 2, 1, 3)
        ata[:, :, q:, q:] = np.einsum("nmr,nms->nrs", own, own)[:, None]
        aty[:, :, q:] = np.einsum("nmr,nm->nr", own, y)[:, None]
    diag = np.einsum("ndpp->ndp", ata)
    d = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))
    scaled = ata * d[..., :, None] * d[..., None, :] + ridge * np.eye(p)
    coef = _solve_spd_small(scaled, aty * d) * d
    sse = np.einsum("nm,nm->n", y, y)[:, None] - np.einsum("ndp,ndp->nd", coef, aty)
    sse = np.where(np.isfinite(sse), sse, np.inf)
    best = np.argmin(sse, axis=1)
    rows = np.arange(n)
    return coef[rows, best], np.maximum(sse[rows, best], 0.0), best


def _solve_spd_small(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` for stacks of small systems: closed form up to 3 x 3, else LAPACK."""
    p = a.shape[-1]
    if p == 1:
        return b / a[..., 0]
    if p == 2:
        det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
        x0 = a[..., 1, 1] * b[..., 0] - a[..., 0, 1] * b[..., 1]
        x1 = a[..., 0, 0] * b[..., 1] - a[..., 1, 0] * b[..., 0]
        return np.stack([x0, x1], axis=-1) / det[..., None]
    if p == 3:
        inv = np.empty_like(a)
        for i in range(3):  # adjugate, by cofactors
            for j in range(3):
                r0, r1 = [k for k in range(3) if k != j]
                c0, c1 = [k for k in range(3) if k != i]
                inv[..., i, j] = (-1) ** (i + j) * (
                    a[..., r0, c0] * a[..., r1, c1] - a[..., r0, c1] * a[..., r1, c0]
                )
        det = np.einsum("...j,...j->...", a[..., 0, :], inv[..., :, 0])
        return np.einsum("...ij,...j->...i", inv, b) / det[..., None]
    return np.linalg.solve(a, b[..., None])[..., 0]


def _normal_equations(j: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``J^T J`` (k, p, p) and ``J^T r`` (k, p) from ``J`` (k, p, m), by row dot products."""
    k, n_par, _ = j.shape
    jtj = np.empty((k, n_par, n_par))
    jtr = np.empty((k, n_par))
    cols = [j[:, a, :] for a in range(n_par)]
    for a in range(n_par):
        jtr[:, a] = np.einsum("km,km->k", cols[a], r)
        for b in range(a, n_par):
            jtj[:, a, b] = jtj[:, b, a] = np.einsum("km,km->k", cols[a], cols[b])
    return jtj, jtr


def batched_lm(
    model: JacobianModel,
    y: np.ndarray,
    p0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_iter: int = 50,
    ftol: float = 1e-8,
    xtol: float = 1e-6,
    lam0: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box-constrained Levenberg-Marquardt for many small problems at once.

    Each voxel ``i`` minimises ``|y_i - f(p_i)|^2`` with ``lower <= p_i <= upper``. Steps use
    Marquardt's diagonal scaling ``(J^T J + lam diag(J^T J)) dp = J^T r`` and are projected
    on the box; a step is kept where it lowers the voxel's cost (then ``lam /= 10``), else
    ``lam *= 10``. Only unconverged voxels are evaluated (Marquardt, SIAM J Appl Math 1963).

    Parameters
    ----------
    model : callable
        ``model(params (k, p), rows (k,)) -> (pred (k, m), jac (k, p, m))``; ``rows`` index
        the voxels of ``y`` (for voxel-specific inputs).
    y : (n, m) ndarray
        Data.
    p0 : (n, p) ndarray
        Starting values (clipped to the box).
    lower, upper : (p,) ndarray
        Bounds.
    max_iter : int, optional
        Maximum number of iterations.
    ftol, xtol : float, optional
        A voxel stops when an accepted step lowers its cost by less than ``ftol`` (relative)
        and moves every parameter by less than ``xtol`` (relative to ``|p| + xtol``).
    lam0 : float, optional
        Initial damping.

    Returns
    -------
    params : (n, p) ndarray
    sse : (n,) ndarray
        Final residual sum of squares.
    converged : (n,) ndarray of bool
    """
    y = np.asarray(y, dtype=float)
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    params = np.clip(np.asarray(p0, dtype=float), lower, upper)
    n, n_par = params.shape
    rows_all = np.arange(n)
    pred, jac = model(params, rows_all)
    res = y - pred
    sse = np.einsum("nm,nm->n", res, res)
    lam = np.full(n, lam0)
    converged = np.zeros(n, dtype=bool)
    active = np.arange(n)
    eye = np.eye(n_par)
    for _ in range(max_iter):
        if active.size == 0:
            break
        jtj, jtr = _normal_equations(jac[active], res[active])
        dg = np.einsum("kpp->kp", jtj)
        dg = np.where(dg > 0, dg, 1e-30)
        a = jtj + lam[active, None, None] * dg[:, :, None] * eye
        try:
            step = np.linalg.solve(a, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:  # an exactly singular voxel: pseudo-inverse for all
            step = np.einsum("kpq,kq->kp", np.linalg.pinv(a), jtr)
        old = params[active]
        trial = np.clip(old + step, lower, upper)
        t_pred, t_jac = model(trial, active)
        t_res = y[active] - t_pred
        t_sse = np.einsum("km,km->k", t_res, t_res)
        better = t_sse < sse[active]
        acc = active[better]
        small_f = (sse[acc] - t_sse[better]) <= ftol * np.maximum(sse[acc], 1e-300)
        small_x = np.all(
            np.abs(trial[better] - old[better]) <= xtol * (np.abs(old[better]) + xtol), axis=1
        )
        params[acc] = trial[better]
        pred[acc] = t_pred[better]
        jac[acc] = t_jac[better]
        res[acc] = t_res[better]
        sse[acc] = t_sse[better]
        lam[acc] = np.maximum(lam[acc] / 10.0, 1e-12)
        rej = active[~better]
        lam[rej] *= 10.0
        converged[acc[small_f | small_x]] = True
        converged[rej[lam[rej] > 1e10]] = True
        active = active[~converged[active]]
    return params, sse, converged
