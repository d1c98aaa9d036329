r"""ESTATICS: one R2* shared by every contrast of a multi-echo protocol (batched).

Model (Weiskopf et al. 2014): the echo ``k`` of contrast ``c`` decays as

.. math:: S_{ck} = A_c \exp(-R_2^* \, T_{E,ck}),
   \qquad \log S_{ck} = \log A_c - R_2^* T_{E,ck},

linear in the unknowns :math:`\beta = (\log A_1, \dots, \log A_C, R_2^*)`. With the design
matrix :math:`X` (one indicator column per contrast and a column :math:`-T_E`) the ordinary
least-squares solution is :math:`\hat\beta = (X^T X)^{-1} X^T \log S`: the pseudo-inverse
depends on the echo times only, so it is computed once and every voxel costs one small
matrix product. The optional ``'signal'`` weighting (weights :math:`S^2`, the inverse
variance of :math:`\log S` for Gaussian noise on S) solves one :math:`(C+1)\times(C+1)`
system per voxel, batched.

References
----------
.. [1] Weiskopf N, Callaghan MF, Josephs O, Lutti A, Mohammadi S. Estimating the apparent
   transverse relaxation time (R2*) from images with different contrasts (ESTATICS) reduces
   motion artifacts. Front Neurosci 2014;8:278.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["estatics_design", "estatics_fit", "estatics_signal"]


def estatics_design(echo_times: Sequence[np.ndarray]) -> np.ndarray:
    """The ESTATICS design matrix.

    Parameters
    ----------
    echo_times : sequence of (m_c,) array_like
        Echo times in s of each contrast, in the order of the data's last axis.

    Returns
    -------
    (sum m_c, C + 1) ndarray
        Indicator columns of the contrasts, then ``-TE``.

    Raises
    ------
    ValueError
        If the system is not identifiable (fewer than two distinct echo times in total or a
        contrast without echoes).

    Examples
    --------
    >>> estatics_design([[0.002, 0.004], [0.002]])
    array([[ 1.   ,  0.   , -0.002],
           [ 1.   ,  0.   , -0.004],
           [ 0.   ,  1.   , -0.002]])
    """
    tes = [np.asarray(t, dtype=float).ravel() for t in echo_times]
    if not tes or any(t.size == 0 for t in tes):
        raise ValueError("ESTATICS needs at least one echo per contrast")
    n = sum(t.size for t in tes)
    x = np.zeros((n, len(tes) + 1))
    row = 0
    for c, t in enumerate(tes):
        x[row : row + t.size, c] = 1.0
        x[row : row + t.size, -1] = -t
        row += t.size
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise ValueError("ESTATICS needs a contrast with at least two distinct echo times")
    return x


def estatics_fit(
    signal: np.ndarray, design: np.ndarray, *, weighting: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Joint log-linear fit of a common R2* and one intercept per contrast.

    Parameters
    ----------
    signal : (n, M) array_like
        Magnitudes, echoes of all contrasts on the last axis in the order of ``design``.
    design : (M, C + 1) ndarray
        From :func:`estatics_design`.
    weighting : {'none', 'signal'}
        Ordinary least squares on ``log S`` (one pseudo-inverse for all voxels) or
        ``S²``-weighted least squares (one small solve per voxel, batched).

    Returns
    -------
    intercepts : (n, C) ndarray
        ``A_c``, the signal of each contrast extrapolated to TE = 0 (signal units).
    r2star : (n,) ndarray
        Common R2* in 1/s.

    Notes
    -----
    A voxel with any non-positive or non-finite value gets NaN (no exception, no warning).

    References
    ----------
    .. [1] Weiskopf N et al. Front Neurosci 2014;8:278.
    """
    signal = np.asarray(signal, dtype=np.float64)
    ok = np.all(np.isfinite(signal) & (signal > 0), axis=-1)
    with np.errstate(all="ignore"):
        logs = np.log(np.where(ok[:, None], signal, 1.0))
        if weighting == "none":
            beta = logs @ np.linalg.pinv(design).T
        elif weighting == "signal":
            s = np.where(ok[:, None], signal, 1.0)
            w = (s / s.max(axis=-1, keepdims=True)) ** 2  # S² up to a per-voxel scale
            xtwx = np.einsum("mi,nm,mj->nij", design, w, design)
            xtwy = np.einsum("mi,nm->ni", design, w * logs)
            try:
                beta = np.linalg.solve(xtwx, xtwy[..., None])[..., 0]
            except np.linalg.LinAlgError:  # a voxel with (numerically) zero weights
                beta = (np.linalg.pinv(xtwx) @ xtwy[..., None])[..., 0]
        else:
            raise ValueError(f"weighting must be 'none' or 'signal', got {weighting!r}")
        intercepts = np.exp(beta[:, :-1])
    r2star = beta[:, -1]
    intercepts[~ok] = np.nan
    r2star = np.where(ok, r2star, np.nan)
    return intercepts, r2star


def estatics_signal(intercepts: np.ndarray, r2star: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Forward model: (n, C) intercepts and (n,) R2* to (n, M) signals on ``design``."""
    beta = np.concatenate([np.log(intercepts), np.asarray(r2star)[:, None]], axis=-1)
    with np.errstate(all="ignore"):
        return np.exp(beta @ design.T)
