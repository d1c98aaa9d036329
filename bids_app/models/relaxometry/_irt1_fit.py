"""Batched inversion-recovery T1 fit: reduced-dimension non-linear least squares (RD-NLS).

The signal of an inversion-recovery series is modelled as ``S(TI) = a + b exp(-TI/T1)``
(Barral et al. 2010 [1]_): for perfect inversion and ``TR >> T1``, ``a = M0`` and
``b = -2 M0``. For a fixed T1 the model is linear in ``(a, b)``, so the least-squares cost
reduces to a function of T1 alone (variable projection, Golub & Pereyra 1973 [2]_). This
module evaluates it on a log-spaced T1 grid for every voxel at once, one matrix product for
all grid points and polarity patterns, then refines it by a parabola through the best grid
point and its neighbours, and (``refine=True``) by Gauss-Newton steps on ``R1 = 1/T1`` with
Kaufman's variable-projection Jacobian [3]_, every voxel together.

Magnitude data lose the sign of ``S``: the signal is negative before the null point. As in
[1]_, polarity is restored by trying every sign-flip point over the sorted inversion times
(the first ``k`` values negated, ``k = 0..m``) and keeping the pattern of least residual
among those with ``b < 0`` (recovery) and ``a > 0``; where the runner-up pattern of the grid
is within :data:`AMBIGUOUS` of the best (a point near the null), both are refined and the
better one kept. Signed data (polarity restored from the phase) are fitted with the single
all-positive pattern.

Inside, with the orthonormal basis ``q1 = 1/sqrt(m)``, ``q2 = (e - mean e)/|e - mean e|`` of
``span{1, e}``, ``e = exp(-TI/T1)``, the projected energy is ``Q = (y.q1)^2 + (y.q2)^2`` and the
residual ``|y|^2 - Q``; the coefficients are ``b = (y.q2)/|e - mean e|`` and
``a = (y.q1)/sqrt(m) - b mean(e)``.

References
----------
.. [1] Barral JK, Gudmundson E, Stikov N, Etezadi-Amoli M, Stoica P, Nishimura DG. A robust
   methodology for in vivo T1 mapping. Magn Reson Med 2010;64:1057-1067.
.. [2] Golub GH, Pereyra V. The differentiation of pseudo-inverses and nonlinear least
   squares problems whose variables separate. SIAM J Numer Anal 1973;10:413-432.
.. [3] Kaufman L. A variable projection method for solving separable nonlinear least
   squares problems. BIT 1975;15:49-57.
"""

from __future__ import annotations

import numpy as np

#: voxels per block of the grid search: (block, grid, patterns) float64 stays ~20 MB
BLOCK = 8192
#: energy gap (signal scaled to a unit peak) under which the runner-up sign pattern is refined
AMBIGUOUS = 0.005


def ir_signal(t1: np.ndarray, a: np.ndarray, b: np.ndarray, ti: np.ndarray) -> np.ndarray:
    """Signed inversion-recovery signal ``a + b exp(-TI/T1)``.

    Parameters
    ----------
    t1, a, b : (n,) array_like
        T1 (s) and the two linear coefficients (signal units).
    ti : (m,) array_like
        Inversion times, s.

    Returns
    -------
    (n, m) ndarray

    Examples
    --------
    >>> s = ir_signal([1.0], [1.0], [-2.0], [np.log(2.0)])   # the null point of T1 = 1 s
    >>> bool(abs(s[0, 0]) < 1e-12)
    True
    """
    t1 = np.asarray(t1, dtype=float).reshape(-1, 1)
    a = np.asarray(a, dtype=float).reshape(-1, 1)
    b = np.asarray(b, dtype=float).reshape(-1, 1)
    with np.errstate(all="ignore"):
        return a + b * np.exp(-np.asarray(ti, dtype=float)[None, :] / t1)


def _basis(r1: np.ndarray, ti: np.ndarray) -> np.ndarray:
    """``q2 = (e - mean e) / |e - mean e|``, ``e = exp(-r1 TI)``, for rates ``r1`` (G,): (G, m)."""
    e = np.exp(-r1[:, None] * ti)
    c = e - e.mean(axis=1, keepdims=True)
    return c / np.sqrt(np.einsum("ij,ij->i", c, c))[:, None]


def _patterns(m: int, restore: bool) -> np.ndarray:
    """(m, K) signs: column ``k`` negates the first ``k`` sorted points (``K = m + 1``)."""
    if not restore:
        return np.ones((m, 1))
    return np.where(np.arange(m)[:, None] < np.arange(m + 1)[None, :], -1.0, 1.0)


def _grid_search(y: np.ndarray, ti: np.ndarray, r1_grid: np.ndarray, signs: np.ndarray):
    """Per row of ``y`` and sign pattern: the best grid index and its projected energy.

    For a pattern ``k`` the energy ``Q = (y.q1)^2 + (y.q2)^2`` depends on T1 only through
    ``y.q2``, so its maximum under ``b < 0`` is at the most negative ``y.q2``: one matrix
    product (float32) and one minimum over the grid per block of rows.

    Returns
    -------
    g : (n, K) int ndarray
        Best grid index per pattern.
    q : (n, K) ndarray
        Its energy, ``-inf`` where no grid point gives ``b < 0``.
    """
    n, m = y.shape
    n_grid, n_pat = r1_grid.size, signs.shape[1]
    q2 = _basis(r1_grid, ti)  # (G, m)
    w = (signs[:, :, None] * q2.T[:, None, :]).reshape(m, n_pat * n_grid).astype(np.float32)
    amp2 = ((y @ signs) ** 2) / m  # (n, K): (y.q1)^2 for each pattern
    g = np.empty((n, n_pat), dtype=np.intp)
    bmin = np.empty((n, n_pat))
    y32 = y.astype(np.float32)
    for lo in range(0, n, BLOCK):
        sl = slice(lo, min(lo + BLOCK, n))
        proj = (y32[sl] @ w).reshape(-1, n_pat, n_grid)  # y.q2 per pattern and grid point
        gi = proj.argmin(axis=2)
        g[sl] = gi
        bmin[sl] = np.take_along_axis(proj, gi[:, :, None], axis=2)[:, :, 0]
    q = np.where(bmin < 0, amp2 + bmin**2, -np.inf)
    return g, q


def _parabolic(ys: np.ndarray, g: np.ndarray, ti: np.ndarray, r1_grid: np.ndarray):
    """Offset (grid steps, |.| <= 0.5) of the parabola through the energy at ``g - 1..g + 1``."""
    n_grid = r1_grid.size
    gi = np.clip(g, 1, n_grid - 2)
    q2 = _basis(r1_grid, ti)
    qm, q0, qp = (np.einsum("ij,ij->i", ys, q2[gi + d]) ** 2 for d in (-1, 0, 1))
    with np.errstate(all="ignore"):
        curv = qm - 2 * q0 + qp
        step = 0.5 * (qm - qp) / curv
    inner = (g > 0) & (g < n_grid - 1) & (curv < 0) & np.isfinite(step)
    return np.clip(np.where(inner, step, 0.0), -0.5, 0.5)


def _coefficients(y: np.ndarray, r1: np.ndarray, ti: np.ndarray):
    """Closed-form ``a``, ``b``, the residual sum of squares and ``e`` at rates ``r1`` (n,)."""
    m = y.shape[1]
    e = np.exp(-r1[:, None] * ti)
    se, sy = e.sum(axis=1), y.sum(axis=1)
    var_e = np.einsum("ij,ij->i", e, e) - se * se / m
    b = (np.einsum("ij,ij->i", e, y) - se * sy / m) / var_e
    a = (sy - b * se) / m
    resid = y - a[:, None] - b[:, None] * e  # explicit: no cancellation near a perfect fit
    return a, b, np.einsum("ij,ij->i", resid, resid), e, resid, se, var_e


def _gauss_newton(y, r1, ti, n_iter, r1_bounds):
    """Variable-projection Gauss-Newton on ``r1`` (n,) for signed rows ``y`` (n, m).

    Kaufman's step: with the residual ``r = y - a - b e`` and ``d = d(b e)/d r1 = -b TI e``
    (``a``, ``b`` held), ``step = d.r / |(I - P) d|^2``, ``P`` the projector on
    ``span{1, e}``; a step that increases the residual is halved (up to 4 times). A row stops
    when its step falls below 1e-6 of ``r1`` (quadratic convergence: the next error would
    be ~1e-12).
    """
    m = y.shape[1]
    ti2 = ti * ti
    a, b, sse, e, resid, se, var_e = _coefficients(y, r1, ti)
    active = np.arange(r1.size)
    for _ in range(n_iter):
        if active.size == 0:
            break
        ya, ra, ba = y[active], r1[active], b[active]
        ea, rea = e[active], resid[active]
        e2 = ea * ea
        sd = -ba * (ea @ ti)
        sde = -ba * (e2 @ ti)
        sdd = ba * ba * (e2 @ ti2)
        cov = sde - sd * se[active] / m
        jtj = sdd - sd * sd / m - cov * cov / var_e[active]
        with np.errstate(all="ignore"):
            step = -ba * ((ea * rea) @ ti) / jtj
        step = np.where(np.isfinite(step), step, 0.0)
        new = np.clip(ra + step, *r1_bounds)
        for _half in range(4):  # step halving until the residual does not grow
            out = _coefficients(ya, new, ti)
            worse = ~(out[2] <= sse[active])
            if not worse.any():
                break
            new = np.where(worse, 0.5 * (new + ra), new)
        keep = ~worse
        sel = active[keep]
        r1[sel] = new[keep]
        for full, part in zip((a, b, sse, e, resid, se, var_e), out, strict=True):
            full[sel] = part[keep]
        small = np.abs(new - ra) <= 1e-6 * ra
        active = active[keep & ~small]
    return r1


def fit_ir(
    signal: np.ndarray,
    ti: np.ndarray,
    *,
    signed: bool = False,
    t1_range: tuple[float, float] = (0.05, 5.0),
    n_grid: int = 100,
    refine: bool = True,
    n_iter: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, ``a`` and ``b`` of ``S(TI) = a + b exp(-TI/T1)`` for every row, batched.

    Parameters
    ----------
    signal : (n, m) array_like
        Magnitude (``signed=False``: polarity restored by the sign-flip search) or signed
        (``signed=True``, polarity already restored from the phase) signal per inversion time.
    ti : (m,) array_like
        Inversion times, s, any order, at least three distinct.
    signed : bool
        Whether ``signal`` carries its sign.
    t1_range : (2,) tuple of float
        Smallest and largest T1 of the log-spaced grid, s; refined values stay inside.
    n_grid : int
        Grid points (>= 3).
    refine : bool
        Gauss-Newton refinement after the grid (else grid plus parabolic interpolation).
    n_iter : int
        Maximum Gauss-Newton iterations.

    Returns
    -------
    t1 : (n,) ndarray
        s; NaN for rows with a non-finite value, a negative magnitude, no signal, or no
        recovering (``b < 0``) fit.
    a, b : (n,) ndarray
        Signal units (``a`` the signal at TI -> infinity).
    sse : (n,) ndarray
        Residual sum of squares of the signed fit.

    Raises
    ------
    ValueError
        Fewer than three distinct positive inversion times, or a bad grid.

    Examples
    --------
    >>> ti = np.array([0.05, 0.4, 1.1, 2.5])
    >>> s = np.abs(ir_signal([0.9], [1000.0], [-1950.0], ti))
    >>> t1, a, b, _ = fit_ir(s, ti)
    >>> round(float(t1[0]), 6), round(float(a[0]), 3), round(float(b[0]), 3)
    (0.9, 1000.0, -1950.0)
    """
    ti = np.asarray(ti, dtype=float).ravel()
    if not np.all(np.isfinite(ti) & (ti > 0)) or np.unique(ti).size < 3:
        raise ValueError(f"irt1: needs at least 3 distinct positive inversion times, got {ti}")
    lo, hi = float(t1_range[0]), float(t1_range[1])
    if not (0 < lo < hi) or n_grid < 3:
        raise ValueError(f"irt1: bad T1 grid {t1_range} with {n_grid} points")
    order = np.argsort(ti, kind="stable")
    ti = ti[order]
    y = np.atleast_2d(np.asarray(signal, dtype=np.float64))[:, order]
    n = y.shape[0]
    t1 = np.full(n, np.nan)
    a, b, sse = t1.copy(), t1.copy(), t1.copy()
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(y), axis=1) & (np.abs(y).max(axis=1, initial=0) > 0)
        if not signed:
            ok &= np.all(y >= 0, axis=1)
    # scale rows to unit peak: the fit is scale-invariant and huge values must not overflow
    scale = np.abs(y[ok]).max(axis=1)
    yk = y[ok] / scale[:, None]
    signs = _patterns(ti.size, restore=not signed)
    r1_grid = 1.0 / np.geomspace(hi, lo, n_grid)  # increasing rates
    g_all, q_all = _grid_search(yk, ti, r1_grid, signs)
    # candidates: the best pattern, and the runner-up where it is nearly as good (a point
    # near the null, whose sign the grid cannot tell): both refined, the better one kept
    ranked = np.argsort(-q_all, axis=1)
    rows = np.arange(yk.shape[0])
    k1 = ranked[:, 0]
    cand_rows, cand_k = [rows], [k1]
    if signs.shape[1] > 1:
        k2 = ranked[:, 1]
        close = q_all[rows, k1] - q_all[rows, k2] < AMBIGUOUS
        cand_rows.append(rows[close])
        cand_k.append(k2[close])
    c_rows, c_k = np.concatenate(cand_rows), np.concatenate(cand_k)
    c_q = q_all[c_rows, c_k]
    c_g = g_all[c_rows, c_k]
    ys = yk[c_rows] * signs[:, c_k].T
    u = np.log(r1_grid)
    r1 = np.exp(u[c_g] + _parabolic(ys, c_g, ti, r1_grid) * (u[1] - u[0]))
    if refine:
        r1 = _gauss_newton(ys, r1, ti, n_iter, (r1_grid[0], r1_grid[-1]))
    ak, bk, ssek, *_ = _coefficients(ys, r1, ti)
    ssek = np.where(np.isfinite(c_q) & (bk < 0) & (ak > 0), ssek, np.inf)
    # keep, per row, the candidate of least residual: rows 0..n-1 are the first candidates,
    # the rest the runners-up of the ``close`` rows
    n_ok = yk.shape[0]
    pick = np.arange(n_ok)
    second = np.arange(n_ok, c_rows.size)
    better = ssek[second] < ssek[c_rows[second]]
    pick[c_rows[second[better]]] = second[better]
    r1, ak, bk, ssek = r1[pick], ak[pick], bk[pick], ssek[pick]
    good = np.isfinite(ssek)
    idx = np.flatnonzero(ok)
    t1[idx] = np.where(good, 1.0 / r1, np.nan)
    a[idx] = np.where(good, ak * scale, np.nan)
    b[idx] = np.where(good, bk * scale, np.nan)
    with np.errstate(over="ignore"):
        sse[idx] = np.where(good, ssek * scale**2, np.nan)
    return t1, a, b, sse
