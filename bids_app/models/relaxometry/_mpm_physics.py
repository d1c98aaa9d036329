r"""Exact spoiled-gradient-echo algebra of the MPM protocol (pure NumPy, SI, radians).

The TE = 0 intercept of each contrast (from :mod:`bids_app.models.relaxometry._estatics`)
is the steady state of an ideally spoiled FLASH with an instantaneous saturation of a
fraction :math:`\delta` of :math:`M_z` before each excitation (MT pulse, Helms et al. 2008):

.. math:: A = M_0 \sin\alpha \; x (1 - E_1) / (1 - x E_1 \cos\alpha),
   \qquad E_1 = e^{-R_1 T_R}, \; x = 1 - \delta,

with :math:`\alpha = B_1 \alpha_\mathrm{nominal}` and :math:`x = 1` without MT. No
small-angle or short-TR expansion is used:

* R1 is the root of :math:`\log(A_{PD}/A_{T1}) = \log f(\alpha_{PD}, T_{R,PD}) -
  \log f(\alpha_{T1}, T_{R,T1})`, :math:`f = \sin\alpha (1 - E_1)/(1 - E_1\cos\alpha)`,
  by Newton iterations from the small-angle estimate (Helms et al. 2008);
* M0 follows from the PD-weighted intercept, :math:`M_0 = A_{PD} (1 - E_1\cos\alpha_{PD}) /
  (\sin\alpha_{PD} (1 - E_1))`;
* the MT-weighted intercept inverts in closed form, :math:`x = A_{MT} / (M_0 \sin\alpha
  (1 - E_1) + A_{MT} E_1 \cos\alpha)`.

References
----------
.. [1] Helms G, Dathe H, Kallenberg K, Dechent P. Magn Reson Med 2008;60:1396-1407; erratum
   2010;64:1856.
.. [2] Weiskopf N, Suckling J, Williams G, et al. Front Neurosci 2013;7:95 (MPM protocol).
"""

from __future__ import annotations

import numpy as np

from bids_app.models.mt._physics import _log_spgr_ratio, r1_a_small_angle

__all__ = ["m0_exact", "mtsat_from_m0", "r1_exact", "spgr_intercept"]

#: R1 search interval of the Newton iterations (1/s)
R1_BOUNDS = (1e-3, 1e3)


def spgr_intercept(
    m0: np.ndarray, r1: np.ndarray, alpha: np.ndarray, tr: float, delta: np.ndarray | float = 0.0
) -> np.ndarray:
    """Exact SPGR steady state with an MT saturation ``delta`` before each excitation.

    Parameters
    ----------
    m0 : (...) array_like
        Equilibrium magnetisation times receive sensitivity (signal units).
    r1 : (...) array_like
        1/s.
    alpha : (...) array_like
        Actual flip angle in radians.
    tr : float
        Repetition time in s.
    delta : (...) array_like or float
        Saturated fraction of Mz per TR (0 without MT).

    Returns
    -------
    (...) ndarray
        Signal at TE = 0, in the units of ``m0``.

    Examples
    --------
    >>> round(float(spgr_intercept(1.0, 1.0, np.deg2rad(90.0), 1e6)), 9)
    1.0
    """
    e1 = np.exp(-np.asarray(r1, dtype=float) * tr)
    x = 1.0 - np.asarray(delta, dtype=float)
    return np.asarray(m0) * np.sin(alpha) * x * (1 - e1) / (1 - x * e1 * np.cos(alpha))


def r1_exact(
    a_pd: np.ndarray,
    a_t1: np.ndarray,
    alpha_pd: np.ndarray,
    alpha_t1: np.ndarray,
    tr_pd: float,
    tr_t1: float,
    *,
    n_iter: int = 8,
) -> np.ndarray:
    """R1 from two SPGR intercepts with the exact steady-state equation.

    Parameters
    ----------
    a_pd, a_t1 : (n,) array_like
        PD-weighted (low flip) and T1-weighted (high flip) intercepts, same units.
    alpha_pd, alpha_t1 : (n,) or scalar array_like
        Actual flip angles in radians.
    tr_pd, tr_t1 : float
        Repetition times in s.
    n_iter : int
        Newton iterations (machine precision for brain tissue after ~5).

    Returns
    -------
    (n,) ndarray
        R1 in 1/s; NaN where the iterations did not converge (non-physical ratio).

    References
    ----------
    .. [1] Helms G et al. Magn Reson Med 2008;60:1396 (starting value, small-angle form).
    """
    a_pd, a_t1 = np.asarray(a_pd, dtype=float), np.asarray(a_t1, dtype=float)
    with np.errstate(all="ignore"):
        r1, _ = r1_a_small_angle(a_pd, a_t1, alpha_pd, alpha_t1, tr_pd, tr_t1)
        target = np.log(a_pd / a_t1) - np.log(np.sin(alpha_pd) / np.sin(alpha_t1))
        r1 = np.where(np.isfinite(r1) & (r1 > 0), r1, 1.0)
        for _ in range(n_iter):
            f_pd, d_pd = _log_spgr_ratio(r1, alpha_pd, tr_pd)
            f_t1, d_t1 = _log_spgr_ratio(r1, alpha_t1, tr_t1)
            r1 = np.clip(r1 - (f_pd - f_t1 - target) / (d_pd - d_t1), *R1_BOUNDS)
        f_pd, _ = _log_spgr_ratio(r1, alpha_pd, tr_pd)
        f_t1, _ = _log_spgr_ratio(r1, alpha_t1, tr_t1)
        converged = np.abs(f_pd - f_t1 - target) < 1e-8
    return np.where(converged & np.isfinite(r1), r1, np.nan)


def m0_exact(a_pd: np.ndarray, r1: np.ndarray, alpha_pd: np.ndarray, tr_pd: float) -> np.ndarray:
    """M0 (signal units) from the PD-weighted intercept and R1 (exact SPGR).

    Parameters
    ----------
    a_pd : (n,) array_like
        PD-weighted intercept.
    r1 : (n,) array_like
        1/s.
    alpha_pd : (n,) or scalar array_like
        Actual flip angle, radians.
    tr_pd : float
        s.

    Returns
    -------
    (n,) ndarray
    """
    with np.errstate(all="ignore"):
        e1 = np.exp(-np.asarray(r1) * tr_pd)
        return np.asarray(a_pd) * (1 - e1 * np.cos(alpha_pd)) / (np.sin(alpha_pd) * (1 - e1))


def mtsat_from_m0(
    a_mt: np.ndarray, m0: np.ndarray, r1: np.ndarray, alpha_mt: np.ndarray, tr_mt: float
) -> np.ndarray:
    """MT saturation δ (fraction) from the MT-weighted intercept, M0 and R1 (exact, closed form).

    Parameters
    ----------
    a_mt : (n,) array_like
        MT-weighted intercept (same units as ``m0``).
    m0 : (n,) array_like
        From :func:`m0_exact`.
    r1 : (n,) array_like
        1/s.
    alpha_mt : (n,) or scalar array_like
        Actual excitation flip angle of the MTw contrast, radians.
    tr_mt : float
        s.

    Returns
    -------
    (n,) ndarray
        ``1 - x`` with ``x = A_MT / (M0 sin a (1 - E1) + A_MT E1 cos a)``.

    References
    ----------
    .. [1] Helms G et al. Magn Reson Med 2008;60:1396 (the model; solved exactly here).

    Examples
    --------
    >>> a = np.deg2rad(6.0)
    >>> s = spgr_intercept(1000.0, 1.2, a, 0.025, 0.015)
    >>> round(float(mtsat_from_m0(s, 1000.0, 1.2, a, 0.025)), 12)
    0.015
    """
    with np.errstate(all="ignore"):
        e1 = np.exp(-np.asarray(r1) * tr_mt)
        a_mt = np.asarray(a_mt, dtype=float)
        x = a_mt / (np.asarray(m0) * np.sin(alpha_mt) * (1 - e1) + a_mt * e1 * np.cos(alpha_mt))
    return 1.0 - x
