"""Generic batched least-squares numerics for the voxel fits (array in, array out).

* :func:`line_fit`, a closed-form (weighted) least-squares straight line per row;
* :func:`levenberg_marquardt_2p`, a Levenberg-Marquardt solver for two-parameter signal
  models, iterating all voxels together with a per-voxel damping factor;
* :func:`positive_rows`, the rows whose signal can be fitted at all.

Everything works on ``(n_vox, n_meas)`` arrays, vectorised over voxels (no Python loop over
voxels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: ``model(params (k, 2), rows (k,), jac) -> pred (k, m)`` or ``(pred, jac (k, m, 2))``
ModelFunction = Callable[[np.ndarray, np.ndarray, bool], "np.ndarray | tuple"]


def positive_rows(signal: np.ndarray) -> np.ndarray:
    """Rows whose every value is finite and strictly positive.

    Parameters
    ----------
    signal : (n, m) ndarray

    Returns
    -------
    (n,) ndarray of bool
    """
    with np.errstate(invalid="ignore"):
        return np.all(np.isfinite(signal) & (signal > 0), axis=-1)


def line_fit(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line ``y = slope * x + intercept`` for every row, in closed form.

    Parameters
    ----------
    x : (m,) or (n, m) ndarray
        Abscissae, shared by all rows or one set per row.
    y : (n, m) ndarray
        Ordinates.
    w : (n, m) ndarray, optional
        Non-negative weights (default 1); the weighted sum of squared residuals is minimised.

    Returns
    -------
    slope, intercept : (n,) ndarray
        NaN where the abscissae of a row (with non-zero weight) do not vary.

    Notes
    -----
    Uses the centred normal equations (weighted means subtracted first), which are better
    conditioned than the raw sums when ``x`` has a large offset.

    Examples
    --------
    >>> s, i = line_fit(np.array([0.0, 1.0, 2.0]), np.array([[1.0, 3.0, 5.0]]))
    >>> float(s[0]), float(i[0])
    (2.0, 1.0)
    """
    x = np.broadcast_to(np.asarray(x, dtype=float), np.shape(y))
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    with np.errstate(all="ignore"):
        sw = w.sum(axis=-1, keepdims=True)
        xm = (w * x).sum(axis=-1, keepdims=True) / sw
        ym = (w * y).sum(axis=-1, keepdims=True) / sw
        dx = x - xm
        sxx = (w * dx * dx).sum(axis=-1)
        slope = (w * dx * (y - ym)).sum(axis=-1) / sxx
        slope = np.where(sxx > 0, slope, np.nan)
        intercept = ym[..., 0] - slope * xm[..., 0]
    return slope, intercept


def levenberg_marquardt_2p(
    model: ModelFunction,
    p0: np.ndarray,
    y: np.ndarray,
    *,
    n_iter: int = 200,
    xtol: float = 1e-10,
    ftol: float = 1e-14,
    lam0: float = 1e-3,
) -> np.ndarray:
    """Least-squares fit of a two-parameter model to many rows at once (Levenberg-Marquardt).

    Every row (voxel) has its own damping factor λ. A step solves
    ``(JᵀJ + λ diag(JᵀJ)) δ = Jᵀr`` (Marquardt's scaling, so the parameters may have very
    different units) by Cramer's rule; it is accepted, and λ divided by 10, when the sum of
    squared residuals does not increase, otherwise λ is multiplied by 10. A row stops when an
    accepted step changes every parameter by less than ``xtol`` relative, or the cost by less
    than ``ftol`` relative, or λ exceeds 1e12 (no descent step left); all rows stop after
    ``n_iter`` iterations. The cost never increases, so a row that has not converged keeps
    its best parameters so far.

    Parameters
    ----------
    model : callable
        ``model(p, rows, jac)`` with ``p`` of shape (k, 2), ``rows`` the (k,) indices of
        those rows in ``y`` (for per-row constants such as B1) and ``jac`` a bool; returns
        the prediction (k, m), or ``(prediction, jacobian)`` with the Jacobian (k, m, 2)
        when ``jac`` is true.
    p0 : (n, 2) ndarray
        Starting parameters; rows with a non-finite start are not fitted (NaN returned).
    y : (n, m) ndarray
        Data.
    n_iter : int
        Maximum number of iterations.
    xtol, ftol : float
        Relative step and relative cost-decrease tolerances.
    lam0 : float
        Initial damping.

    Returns
    -------
    (n, 2) ndarray
        Fitted parameters.

    References
    ----------
    .. [1] Levenberg K. A method for the solution of certain non-linear problems in least
       squares. Q Appl Math 1944;2:164-168.
    .. [2] Marquardt DW. An algorithm for least-squares estimation of nonlinear parameters.
       J Soc Ind Appl Math 1963;11:431-441.
    """
    y = np.asarray(y, dtype=float)
    p = np.array(p0, dtype=float, copy=True)
    active = np.all(np.isfinite(p), axis=-1)
    p[~active] = np.nan
    lam = np.full(p.shape[0], float(lam0))
    with np.errstate(all="ignore"):
        for _ in range(int(n_iter)):
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            pa = p[rows]
            pred, jac = model(pa, rows, True)
            r = y[rows] - pred
            cost = np.sum(r * r, axis=-1)
            a11 = np.sum(jac[..., 0] ** 2, axis=-1)
            a22 = np.sum(jac[..., 1] ** 2, axis=-1)
            a12 = np.sum(jac[..., 0] * jac[..., 1], axis=-1)
            g1 = np.sum(jac[..., 0] * r, axis=-1)
            g2 = np.sum(jac[..., 1] * r, axis=-1)
            d11, d22 = a11 * (1 + lam[rows]), a22 * (1 + lam[rows])
            det = d11 * d22 - a12 * a12
            step = np.stack(((d22 * g1 - a12 * g2) / det, (d11 * g2 - a12 * g1) / det), -1)
            trial = pa + step
            r_trial = y[rows] - model(trial, rows, False)
            cost_trial = np.sum(r_trial * r_trial, axis=-1)
            ok = np.isfinite(cost_trial) & np.all(np.isfinite(trial), -1) & (cost_trial <= cost)
            p[rows[ok]] = trial[ok]
            lam[rows] = np.where(ok, np.maximum(lam[rows] / 10, 1e-15), lam[rows] * 10)
            small_step = np.all(np.abs(step) <= xtol * np.abs(pa), axis=-1)
            small_gain = (cost - cost_trial) <= ftol * cost
            done = (ok & (small_step | small_gain)) | (lam[rows] > 1e12) | ~np.isfinite(cost)
            active[rows[done]] = False
    return p
