"""Stimulated-echo-compensated T2 of a CPMG multi-echo spin echo: the EPG dictionary fit.

With refocusing pulses below 180° (B1+ inhomogeneity, slice profile) the echo train of a
single T2 is not mono-exponential: stimulated echoes lift the later echoes and a
mono-exponential fit overestimates T2. Fitting the extended-phase-graph (EPG) decay with the
refocusing angle as a free parameter removes that bias (Lebel RM, Wilman AH. Magn Reson Med
2010;64:1005-1014; Prasloski T et al. Magn Reson Med 2012;67:1803-1814 for the EPG).

The fit is batched and has two steps, neither with a Python loop over voxels:

1. **Dictionary match.** The decays of :func:`~bids_app.models._epg.epg_cpmg_decay` are
   computed once per protocol on a grid regular in ``ln T2`` and in the angle (cached,
   :mod:`~bids_app.models.relaxometry._epg_dictionary`). Every voxel takes the grid node of
   largest normalised correlation with its echoes (one matrix product per block of voxels).
2. **Refinement.** Around that node the decay is interpolated by the tensor product of
   quadratic Lagrange polynomials over its 3 x 3 neighbourhood, ``d(u, v) = Σ L_a(u) L_b(v)
   d_ab`` (``u``, ``v`` in grid steps), and a few Gauss-Newton steps minimise
   ``||y - M0 d(u, v)||²`` over (M0, u, v). Every inner product it needs is a combination of
   the nine correlations ``y·d_ab`` already computed and the precomputed 9 x 9 Gram matrix of
   the neighbourhood, so the refinement costs a few hundred flops per voxel whatever the
   number of echoes. M0 is then the closed form ``y·d / d·d``.

The CPMG decay is even in ``α - 180°`` (the sign of ``sin α`` cancels), so the angle grid
runs one step past 180° (that node repeats the one below it) and around the 180° node the
refinement works in ``s = v²``, in which the decay is smooth and its derivative does not
vanish at 180°, where the best angle of ideal data lies. An optimum beyond the 3 x 3 cell
re-centres the refinement on the neighbouring node (a few times at most).
"""

from __future__ import annotations

import numpy as np

from bids_app.models.relaxometry._epg_dictionary import EPGDictionary, epg_dictionary

__all__ = ["EPGDictionary", "epg_dictionary", "epg_t2_fit", "epg_t2_signal"]

#: voxels per matrix product (bounds the (block, n_atoms) float32 correlation array)
_BLOCK = 8192
#: most Gauss-Newton iterations of the refinement (most voxels stop after 3-4)
_N_ITER = 4
#: a voxel's refinement stops at steps below this, grid steps (2e-4 in ln T2)
_TOL = 2e-3
#: re-centrings on a neighbour node when the optimum lies beyond the first cell
_N_WALK = 4


#: quadratic Lagrange polynomials on the nodes -1, 0, 1: L(x) = C0 + x C1 + x² C2
_C0, _C1, _C2 = np.array([0.0, 1.0, 0.0]), np.array([-0.5, 0.0, 0.5]), np.array([0.5, -1.0, 0.5])


def _lagrange(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic Lagrange weights on nodes -1, 0, 1 and their derivatives: 2 x (n, 3)."""
    x = x[:, None]
    return _C0 + x * (_C1 + x * _C2), _C1 + (2 * x) * _C2


#: the weights at the 180° node in s = v² (its two angle neighbours are the same decay)
_S0, _S1 = np.array([0.0, 1.0, 0.0]), np.array([0.5, -1.0, 0.5])


def _weights(u: np.ndarray, v: np.ndarray, sym: np.ndarray | None = None) -> np.ndarray:
    """Weights of the nine neighbours for d, d_u and d_v: (n, 3, 9).

    Rows flagged ``sym`` (centred on the 180° node) take ``v`` as ``s = v²``: the decay is
    even in the angle offset there, and linear in ``s`` (weights ``s/2, 1 - s, s/2``), which
    keeps d_v from vanishing at 180° and the Gauss-Newton steps from oscillating.
    """
    lu, du = _lagrange(u)
    lv, dv = _lagrange(v)
    if sym is not None and sym.any():
        lv[sym] = _S0 + v[sym, None] * _S1
        dv[sym] = _S1
    w = np.empty((u.size, 3, 3, 3))
    np.multiply(lu[:, :, None], lv[:, None, :], out=w[:, 0])
    np.multiply(du[:, :, None], lv[:, None, :], out=w[:, 1])
    np.multiply(lu[:, :, None], dv[:, None, :], out=w[:, 2])
    return w.reshape(-1, 3, 9)


def _refine(p, gram, u, v, free_v, sym=None):
    """Gauss-Newton on (u, v) of the interpolated decay, M0 projected out in closed form.

    With ``M0 = y·d / d·d`` (variable projection, Golub GH, Pereyra V. SIAM J Numer Anal
    1973;10:413-432) the step solves the 2 x 2 normal equations of ``M0 [d_u, d_v]``
    projected orthogonally to ``d``. ``p`` (n, 9) holds ``y·d_ab``, ``gram`` (n, 9, 9) the
    neighbourhood Gram matrices; ``u``, ``v`` are start values in grid steps, kept in
    [-1, 1] (``v`` is left unchanged unless ``free_v``; ``v`` is ``s`` in [0, 1] on rows
    flagged ``sym``, see :func:`_weights`). A voxel stops once its step is
    below :data:`_TOL` or it is pinned to the cell edge. Returns (u, v, M0).
    """
    u, v = u.copy(), v.copy()
    sym = np.zeros(u.size, bool) if sym is None else sym
    v_lo = np.where(sym, 0.0, -1.0)
    act = np.arange(u.size)
    for _ in range(_N_ITER):
        full = act.size == u.size  # no gathers while every voxel is still refined
        pa, ga = (p, gram) if full else (p[act], gram[act])
        ua, va = u[act], v[act]
        w = _weights(ua, va, sym[act])  # d, d_u, d_v as combinations of the neighbours
        gw = w @ ga  # (n, 3, 9)
        dd, ddu, ddv = (np.einsum("nk,nk->n", gw[:, 0], w[:, k]) for k in range(3))
        py = np.einsum("njk,nk->nj", w, pa)  # y·d, y·d_u, y·d_v
        m0 = py[:, 0] / dd
        # normal equations of the projected Jacobian, divided by M0²; the right-hand side
        # (y - M0 d)·d_j is divided by M0 once more below
        a_uu = np.einsum("nk,nk->n", gw[:, 1], w[:, 1]) - ddu * ddu / dd
        b_u = py[:, 1] - m0 * ddu
        if free_v:
            a_uv = np.einsum("nk,nk->n", gw[:, 1], w[:, 2]) - ddu * ddv / dd
            a_vv = np.einsum("nk,nk->n", gw[:, 2], w[:, 2]) - ddv * ddv / dd
            b_v = py[:, 2] - m0 * ddv
            # a trace-scaled ridge keeps the system regular where d_v = 0 (exactly at 180°)
            ridge = 1e-10 * (a_uu + a_vv) + 1e-300
            a_uu, a_vv = a_uu + ridge, a_vv + ridge
            det = (a_uu * a_vv - a_uv * a_uv) * m0
            step_u = (a_vv * b_u - a_uv * b_v) / det
            step_v = (a_uu * b_v - a_uv * b_u) / det
            v[act] = np.clip(va + step_v, v_lo[act], 1.0)
        else:
            step_u = b_u / ((a_uu + 1e-300) * m0)
            step_v = np.zeros_like(step_u)
        u[act] = un = np.clip(ua + step_u, -1.0, 1.0)
        # converged: a step below _TOL, or pinned to the cell edge
        # (re-centred by the caller); NaN steps stay active
        moved = np.abs(un - ua) + np.abs(v[act] - va)
        act = act[~((np.abs(step_u) + np.abs(step_v) < _TOL) | (moved < 1e-12))]
        if act.size == 0:
            break
    w = _weights(u, v, sym)[:, 0]
    dd = np.einsum("nk,nkl,nl->n", w, gram, w)
    return u, v, np.einsum("nk,nk->n", w, p) / dd


def epg_t2_fit(
    signal: np.ndarray, dic: EPGDictionary, angle: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T2, M0 and the refocusing angle of every voxel (dictionary match, then refinement).

    Parameters
    ----------
    signal : (n, m) array_like
        Magnitude echoes, the ``m`` fitted echoes of ``dic`` in echo order.
    dic : EPGDictionary
        From :func:`epg_dictionary`.
    angle : (n,) array_like, optional
        Known refocusing angles, degrees (e.g. B1 x nominal): only T2 and M0 are fitted where
        finite (angles above 180° are folded to ``360 - α``, values are clipped to the
        searched range); NaN entries, or ``None``, fit the angle too.

    Returns
    -------
    t2, m0, angle : (n,) ndarray
        T2 in s, M0 in signal units, the angle in degrees (fitted or given); NaN where a
        signal value is not positive and finite.

    References
    ----------
    .. [1] Lebel RM, Wilman AH. Transverse relaxometry with stimulated echo compensation.
       Magn Reson Med 2010;64:1005-1014.
    .. [2] Prasloski T, et al. Applications of stimulated echo correction to multicomponent
       T2 analysis. Magn Reson Med 2012;67:1803-1814.
    """
    y = np.atleast_2d(np.asarray(signal, dtype=np.float64))
    n = y.shape[0]
    t2, m0, out_angle = (np.full(n, np.nan) for _ in range(3))
    with np.errstate(all="ignore"):
        ok = np.all(np.isfinite(y) & (y > 0), axis=1)
        scale = np.where(ok, np.max(np.abs(y), axis=1), 1.0)
        ok &= np.isfinite(scale) & (scale > 0)
    given = None
    if angle is not None:
        a = np.asarray(angle, dtype=np.float64).reshape(-1)
        a = np.where(a > 180.0, 360.0 - a, a)
        lo, hi = dic.angles[dic.search[1]]
        given = np.where(np.isfinite(a), np.clip(a, lo, hi), np.nan)
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, n))
        rows = rows[ok[rows]]
        if rows.size == 0:
            continue
        ys = y[rows] / scale[rows, None]
        res = _fit_block(ys, dic, None if given is None else given[rows])
        t2[rows], m0[rows], out_angle[rows] = res[0], res[1] * scale[rows], res[2]
    return t2, m0, out_angle


def _fit_block(y, dic, given):
    """:func:`epg_t2_fit` on one block of valid, scaled rows: (t2, m0, angle)."""
    n = y.shape[0]
    n_a = dic.angles.size
    (t_lo, t_hi), (a_lo, a_hi) = dic.search
    n_as = a_hi - a_lo + 1
    # the match only picks the start node (the refinement walks on from it), so it runs in
    # the principal subspace of the decays
    corr = (y.astype(np.float32) @ dic.basis) @ dic.matched  # (n, searched nodes)
    i, j = np.divmod(corr.argmax(axis=1), n_as)
    i += t_lo
    j += a_lo
    fixed = np.zeros(n, bool) if given is None else np.isfinite(given)
    v = np.zeros(n)  # angle offset in steps; s = v² on the fitted rows at the 180° node
    if fixed.any():  # the nearest angle node, the offset from it is the (fixed) v
        pos = (given[fixed] - dic.angles[0]) / dic.angle_step
        j[fixed] = np.clip(np.rint(pos).astype(int), a_lo, a_hi)
        v[fixed] = pos - j[fixed]
        rows = np.flatnonzero(fixed)
        along_t2 = corr.reshape(n, -1, n_as)[rows, :, j[fixed] - a_lo]
        i[fixed] = along_t2.argmax(axis=1) + t_lo
    u = np.zeros(n)
    m0 = np.empty(n)
    todo = np.arange(n)
    for _ in range(_N_WALK):
        for sel, free_v in ((todo[~fixed[todo]], True), (todo[fixed[todo]], False)):
            if sel.size == 0:
                continue
            cols = (i[sel, None] + _DI) * n_a + j[sel, None] + _DJ  # (k, 9)
            p = (dic.fitted_atoms[cols] @ y[sel, :, None])[..., 0]
            sym = (j[sel] == a_hi) if free_v else None
            gram = dic.grams[i[sel], j[sel]]
            u[sel], v[sel], m0[sel] = _refine(p, gram, u[sel], v[sel], free_v, sym)
        # an optimum beyond the cell: re-centre on the neighbour node and refine again
        du = np.where(np.abs(u[todo]) >= 1.0, np.sign(u[todo]), 0).astype(int)
        dv = np.where(np.abs(v[todo]) >= 1.0, np.sign(v[todo]), 0).astype(int)
        dv[fixed[todo]] = 0
        dv[(j[todo] == a_hi) & (dv > 0)] = -1  # s = 1 at the 180° node: on to 175°
        du[(i[todo] + du < t_lo) | (i[todo] + du > t_hi)] = 0
        dv[(j[todo] + dv < a_lo) | (j[todo] + dv > a_hi)] = 0
        move = (du != 0) | (dv != 0)
        if not move.any():
            break
        todo, du, dv = todo[move], du[move], dv[move]
        i[todo] += du
        j[todo] += dv
        u[todo] = np.where(du != 0, 0.0, u[todo])
        v[todo] = np.where(dv != 0, 0.0, v[todo])
    sym = (j == a_hi) & ~fixed
    v[sym] = -np.sqrt(v[sym])
    angle = dic.angles[j] + v * dic.angle_step
    t2 = dic.t2[i] * np.exp(u * dic.log_step)
    return t2, m0, np.where(angle > 180.0, 360.0 - angle, angle)


#: row and column offsets of the nine neighbours, in the order of the Gram matrices
_DI, _DJ = (np.divmod(np.arange(9), 3)[k] - 1 for k in (0, 1))


def epg_t2_signal(
    t2: np.ndarray, m0: np.ndarray, angle: np.ndarray, dic: EPGDictionary
) -> np.ndarray:
    """The EPG decay of every echo at (T2, M0, angle), interpolated as in the fit.

    Parameters
    ----------
    t2, m0, angle : (n,) array_like
        s, signal units, degrees.
    dic : EPGDictionary

    Returns
    -------
    (n, n_echoes) ndarray
        All echoes of the train (dropped ones included), echo order; NaN where a parameter is
        not finite or lies outside the searched grid.
    """
    t2, m0, angle = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (t2, m0, angle))
    n = t2.size
    out = np.full((n, dic.atoms.shape[-1]), np.nan)
    with np.errstate(all="ignore"):
        x = (np.log(t2) - np.log(dic.t2[0])) / dic.log_step
        z = (angle - dic.angles[0]) / dic.angle_step
    (t_lo, t_hi), (a_lo, a_hi) = dic.search
    ok = np.isfinite(x + z + m0) & (x >= t_lo - 1e-6) & (x <= t_hi + 1e-6)
    ok &= (z >= a_lo - 1e-6) & (z <= a_hi + 1e-6)
    if not ok.any():
        return out
    i = np.clip(np.rint(x[ok]).astype(int), t_lo, t_hi)
    j = np.clip(np.rint(z[ok]).astype(int), a_lo, a_hi)
    w = _weights(x[ok] - i, z[ok] - j)[:, 0] * m0[ok, None]
    flat = dic.atoms.reshape(-1, dic.atoms.shape[-1])
    cols = (i[:, None] + _DI) * dic.angles.size + j[:, None] + _DJ
    out[ok] = (w[:, None, :] @ flat[cols])[:, 0]
    return out
