"""Batched non-negative least squares on the normal equations, many voxels at once.

Every voxel solves ``min ||A x - y||² + mu ||x||²`` subject to ``x >= 0`` with a basis ``A``
shared by many voxels, so only the Gram matrix ``G = AᵀA`` (shared, or one of a small stack)
and the projections ``c = Aᵀy`` per voxel are needed. The algorithm is the active-set method
of Lawson and Hanson (Solving Least Squares Problems, Prentice-Hall 1974, ch. 23) run for
all voxels in lock-step: each iteration adds one index to the passive set of the voxels
that are at a subproblem optimum, or steps back towards feasibility for the others, and
then solves every voxel's passive-set subsystem. The subsystems are gathered into compact
``(K, K)`` blocks, padded with identity up to a few block sizes ``K`` (1-6, 8, 10, 12,
16, ...), and solved with one batched :func:`numpy.linalg.solve` per block size, so the
cost per voxel is that of a few small solves, not of a Python loop. A warm start (the
passive set of a neighbouring problem) cuts the iterations when many related problems
are solved in turn (angle grid, regularisation).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["nnls_gram", "nnls_objective"]

logger = logging.getLogger(__name__)


#: passive-set sizes are padded up to these block sizes (identity on the padding), so that
#: one batched solve serves many sizes: fewer, larger :func:`numpy.linalg.solve` calls
_BINS = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 256])


def _groups(passive: np.ndarray):
    """Yield ``(rows, idx, valid)`` per padded block size ``K``.

    ``idx`` (len(rows), K) holds each row's passive columns (ascending) then as many
    non-passive columns as the padding needs; ``valid`` marks the passive ones.
    """
    m = passive.shape[1]
    sizes = np.count_nonzero(passive, axis=1)
    pad = np.minimum(_BINS[np.searchsorted(_BINS, sizes)], m) if m <= _BINS[-1] else sizes
    pad[sizes == 0] = 0
    # slot of every column: passive ones first, in order, then the others
    on = np.cumsum(passive, axis=1) - 1
    off = sizes[:, None] + np.cumsum(~passive, axis=1) - 1
    slot = np.where(passive, on, off)
    for k in np.unique(pad):
        if k == 0:
            continue
        rows = np.flatnonzero(pad == k)
        sl = slot[rows]
        r, j = np.nonzero(sl < k)
        idx = np.empty((rows.size, k), dtype=np.intp)
        idx[r, sl[r, j]] = j
        yield rows, idx, np.arange(k)[None, :] < sizes[rows, None]


def _gram_times(gram, gidx, x, passive, ridge):
    """``(G_v + mu_v I) x_v`` for every row: (n, m), using only the passive columns."""
    if gram.shape[0] == 1:
        out = x @ gram[0]
    else:
        out = np.zeros_like(x)
        for rows, idx, _valid in _groups(passive):
            cols = gram[gidx[rows, None], idx, :]  # (r, k, m); x is 0 on the padding
            xp = np.take_along_axis(x[rows], idx, axis=1)
            out[rows] = np.einsum("rk,rkm->rm", xp, cols)
    return out + ridge[:, None] * x


def _solve_passive(gram, gidx, c, ridge, passive):
    """Solutions of the passive-set subsystems of every row; zero off the passive set."""
    z = np.zeros(passive.shape)
    for rows, idx, valid in _groups(passive):
        k = idx.shape[1]
        if gram.shape[0] == 1:
            sub = gram[0][idx[:, :, None], idx[:, None, :]]
        else:
            sub = gram[gidx[rows, None, None], idx[:, :, None], idx[:, None, :]]
        sub += ridge[rows, None, None] * np.eye(k)
        both = valid[:, :, None] & valid[:, None, :]
        sub = np.where(both, sub, np.eye(k))
        rhs = np.where(valid, np.take_along_axis(c[rows], idx, axis=1), 0.0)
        if k == 1:
            sol = rhs / sub[:, :, 0]
        else:
            sol = np.linalg.solve(sub, rhs[..., None])[..., 0]
        z[rows[:, None], idx] = sol
    return z


def nnls_gram(
    gram: np.ndarray,
    c: np.ndarray,
    *,
    index: np.ndarray | None = None,
    ridge: np.ndarray | float | None = None,
    passive: np.ndarray | None = None,
    rtol: float = 1e-10,
    max_iter: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve many NNLS problems that share a Gram matrix (or one of a few).

    Parameters
    ----------
    gram : (m, m) or (g, m, m) ndarray
        ``AᵀA`` of the basis ``A`` (n_meas, m), or a stack of ``g`` such matrices.
    c : (n, m) ndarray
        ``Aᵀy`` of each voxel's signal ``y``.
    index : (n,) int ndarray, optional
        Which matrix of the stack each voxel uses (required when ``g > 1``).
    ridge : float or (n,) ndarray, optional
        Tikhonov weight ``mu >= 0`` per voxel (added to the diagonal); default 0.
    passive : (n, m) bool ndarray, optional
        Warm start: a guess of the final passive (positive) set.
    rtol : float
        A gradient component ``(c - G x)_j`` counts as positive above ``rtol * max|c|``.
    max_iter : int, optional
        Iterations at most; default ``3 m`` (plus ``m`` for the warm start).

    Returns
    -------
    x : (n, m) ndarray
        Non-negative solutions.
    passive : (n, m) bool ndarray
        Their passive sets (``x > 0``), usable as the next warm start.

    Raises
    ------
    ValueError
        On inconsistent shapes or a negative ridge.

    Notes
    -----
    A voxel with ``c <= 0`` everywhere has the solution 0 and costs nothing. Voxels still
    iterating after ``max_iter`` keep their last feasible iterate (logged at debug level).
    """
    gram = np.asarray(gram, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if gram.ndim == 2:
        gram = gram[None]
    n, m = c.shape
    if gram.shape[1:] != (m, m):
        raise ValueError(f"gram shape {gram.shape} does not match c shape {c.shape}")
    if index is None:
        if gram.shape[0] != 1:
            raise ValueError("index is required with a stack of Gram matrices")
        index = np.zeros(n, dtype=np.intp)
    index = np.asarray(index, dtype=np.intp)
    ridge = np.broadcast_to(np.asarray(0.0 if ridge is None else ridge, float), (n,)).copy()
    if np.any(ridge < 0):
        raise ValueError("ridge must be >= 0")
    max_iter = 3 * m if max_iter is None else int(max_iter)
    tol = rtol * np.max(np.abs(c), axis=1, initial=0.0)

    x = np.zeros((n, m))
    p = np.zeros((n, m), dtype=bool)
    if passive is not None:  # warm start: drop non-positive components until feasible
        pw = np.array(passive, dtype=bool)
        rows = np.flatnonzero(pw.any(axis=1))
        pw = pw[rows]
        for _ in range(m):
            if rows.size == 0:
                break
            z = _solve_passive(gram, index[rows], c[rows], ridge[rows], pw)
            bad = pw & (z <= 0)
            worse = bad.any(axis=1)
            x[rows[~worse]], p[rows[~worse]] = z[~worse], pw[~worse]
            rows, pw = rows[worse], pw[worse] & ~bad[worse]

    # working arrays of the voxels still iterating, compressed as voxels finish
    rows = np.arange(n)
    xw, pw, cw, gw, muw, tw = x.copy(), p.copy(), c, index, ridge, tol
    inner = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        outer = np.flatnonzero(~inner)
        if outer.size:
            w = cw[outer] - _gram_times(gram, gw[outer], xw[outer], pw[outer], muw[outer])
            w[pw[outer]] = -np.inf
            j = np.argmax(w, axis=1)
            grow = w[np.arange(outer.size), j] > tw[outer]
            pw[outer[grow], j[grow]] = True
            if not grow.all():
                done = outer[~grow]
                x[rows[done]], p[rows[done]] = xw[done], pw[done]
                keep = np.ones(rows.size, dtype=bool)
                keep[done] = False
                rows, xw, pw, cw = rows[keep], xw[keep], pw[keep], cw[keep]
                gw, muw, tw, inner = gw[keep], muw[keep], tw[keep], inner[keep]
        if rows.size == 0:
            break
        z = _solve_passive(gram, gw, cw, muw, pw)
        neg = pw & (z <= 0)
        feasible = ~neg.any(axis=1)
        xw[feasible] = z[feasible]
        inner[feasible] = False
        if feasible.all():
            continue
        bad = np.flatnonzero(~feasible)
        xb, zb, nb = xw[bad], z[bad], neg[bad]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(nb, xb / (xb - zb), np.inf)
        k = np.argmin(ratio, axis=1)
        step = np.clip(ratio[np.arange(bad.size), k], 0.0, 1.0)
        xb = xb + step[:, None] * (zb - xb)
        keep = pw[bad] & (xb > 0)
        keep[np.arange(bad.size), k] = False  # the blocking component leaves the set
        xw[bad] = np.where(keep, xb, 0.0)
        pw[bad] = keep
        inner[bad] = True
    if rows.size:
        logger.debug("nnls_gram: %d voxel(s) not converged in %d iterations", rows.size, max_iter)
        x[rows], p[rows] = xw, pw
    x[~p] = 0.0
    return x, p


def nnls_objective(
    gram: np.ndarray, c: np.ndarray, yy: np.ndarray, x: np.ndarray, index: np.ndarray | None = None
) -> np.ndarray:
    """Squared residual ``||A x - y||² = yᵀy - 2 cᵀx + xᵀGx`` of each voxel, clipped at 0.

    Parameters
    ----------
    gram : (m, m) or (g, m, m) ndarray
    c, x : (n, m) ndarray
    yy : (n,) ndarray
        ``yᵀy`` of each voxel.
    index : (n,) int ndarray, optional
        As in :func:`nnls_gram`.

    Returns
    -------
    (n,) ndarray
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim == 2:
        gram = gram[None]
    n = c.shape[0]
    index = np.zeros(n, dtype=np.intp) if index is None else np.asarray(index, np.intp)
    gx = _gram_times(gram, index, x, x > 0, np.zeros(n))
    return np.maximum(yy - 2 * np.sum(c * x, axis=1) + np.sum(x * gx, axis=1), 0.0)
