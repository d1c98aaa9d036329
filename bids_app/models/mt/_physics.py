r"""Closed-form formulas of the MT models (pure NumPy, SI units, angles in radians).

Derivation (Helms et al. 2008, with the erratum of 2010)
--------------------------------------------------------
The spoiled-gradient-echo (SPGR) steady state is

.. math:: S = A \sin\alpha \, (1 - E_1) / (1 - E_1 \cos\alpha), \qquad E_1 = e^{-R_1 T_R}.

For :math:`R_1 T_R \ll 1` and small :math:`\alpha` (:math:`1 - E_1 \approx R_1 T_R`,
:math:`\cos\alpha \approx 1 - \alpha^2/2`, :math:`\sin\alpha \approx \alpha`, products of
small terms dropped) this becomes

.. math:: S = A \alpha R_1 T_R / (R_1 T_R + \alpha^2/2)
   \iff A R_1 - R_1 S/\alpha = S \alpha / (2 T_R).

Written for the PD-weighted (:math:`S_1, \alpha_1, T_{R1}`) and T1-weighted
(:math:`S_2, \alpha_2, T_{R2}`) images, two equations linear in :math:`R_1` and
:math:`A R_1`; subtracting them and substituting back gives

.. math::
   R_1 = \tfrac12 \frac{S_2 \alpha_2/T_{R2} - S_1 \alpha_1/T_{R1}}{S_1/\alpha_1 - S_2/\alpha_2},
   \qquad
   A = S_1 S_2 \frac{T_{R1}\alpha_2/\alpha_1 - T_{R2}\alpha_1/\alpha_2}
                    {S_2 T_{R1}\alpha_2 - S_1 T_{R2}\alpha_1}.

An MT pulse that saturates a fraction :math:`\delta` of the longitudinal magnetisation once
per TR adds :math:`\delta` to the denominator, :math:`S_{MT} = A\alpha R_1 T_R / (R_1 T_R +
\alpha^2/2 + \delta)`, hence

.. math:: \delta = (A \alpha_{MT} / S_{MT} - 1) R_1 T_{R,MT} - \alpha_{MT}^2 / 2.

**B1 correction.** Every :math:`\alpha` above is the flip angle the spins actually see,
:math:`B_1 \alpha_\mathrm{nominal}`. Substituting it everywhere gives
:math:`R_1 = B_1^2 R_{1,\mathrm{nom}}`, :math:`A = A_\mathrm{nom}/B_1`, and in the
:math:`\delta` expression both :math:`A\alpha_{MT}` (invariant) and :math:`\alpha_{MT}^2/2`
(scaled by :math:`B_1^2`) must use the actual angle: altogether
:math:`\delta = B_1^2 \delta_\mathrm{nom}`. For a saturation that does not depend on B1,
nominal angles anywhere (in R1 and A, or only in the :math:`\alpha_{MT}` terms), or an
empirical factor on :math:`\delta_\mathrm{nom}` alone, give errors of 13-60 % at
:math:`B_1 = 0.85` or 1.15 (measured in ``tests/models/test_mt.py``); qMRLab (PR #497)
and the Spinal Cord Toolbox (PR #4306) added the missing flip-angle corrections in 2023. The
dependence of the saturation itself on the MT pulse amplitude (also scaled by B1) is a
separate matter: see :mod:`bids_app.models.mt.models`.

The neglected terms are of relative size :math:`R_1 T_R`, :math:`\alpha^2` and
:math:`\delta` (the last one because an MT pre-pulse also scales the signal read right after
it by :math:`1 - \delta`): 1-4 % for brain tissue at 3 T with TR ~ 25 ms and flips <= 25 deg.

References
----------
.. [1] Helms G, Dathe H, Kallenberg K, Dechent P. High-resolution maps of magnetization
   transfer with inherent correction for RF inhomogeneity and T1 relaxation obtained from 3D
   FLASH MRI. Magn Reson Med 2008;60:1396-1407. Erratum: Magn Reson Med 2010;64:1856.
.. [2] Weiskopf N, Suckling J, Williams G, et al. Quantitative multi-parameter mapping of R1,
   PD*, MT, and R2* at 3T: a multi-center validation. Front Neurosci 2013;7:95.
"""

from __future__ import annotations

import numpy as np

#: Weiskopf et al. 2013 empirical coefficient of the residual B1 dependence of MTsat (3T MPM)
WEISKOPF_LAMBDA = 0.4


def mtr(s_off: np.ndarray, s_on: np.ndarray) -> np.ndarray:
    """Magnetisation transfer ratio in percent.

    Parameters
    ----------
    s_off, s_on : (...) array_like
        Signals without and with the MT pulse (same arbitrary units).

    Returns
    -------
    (...) ndarray
        ``100 (s_off - s_on) / s_off``; NaN where ``s_off <= 0`` or either input is not
        finite. Nothing is clipped.

    References
    ----------
    .. [1] Wolff SD, Balaban RS. Magnetization transfer contrast (MTC) and tissue water proton
       relaxation in vivo. Magn Reson Med 1989;10:135-144.

    Examples
    --------
    >>> mtr([100.0, 0.0], [60.0, 1.0])
    array([40., nan])
    """
    s_off = np.asarray(s_off, dtype=np.float64)
    s_on = np.asarray(s_on, dtype=np.float64)
    ok = np.isfinite(s_off) & np.isfinite(s_on) & (s_off > 0)
    with np.errstate(all="ignore"):
        out = 100.0 * (s_off - s_on) / s_off
    return np.where(ok, out, np.nan)


def r1_a_small_angle(
    s_pd: np.ndarray,
    s_t1: np.ndarray,
    alpha_pd: np.ndarray,
    alpha_t1: np.ndarray,
    tr_pd: float,
    tr_t1: float,
) -> tuple[np.ndarray, np.ndarray]:
    """R1 and apparent signal amplitude A from two SPGR images (small-angle approximation).

    Parameters
    ----------
    s_pd, s_t1 : (...) array_like
        Low-flip (PD-weighted) and high-flip (T1-weighted) signals.
    alpha_pd, alpha_t1 : (...) array_like
        *Actual* flip angles in radians (B1 times nominal).
    tr_pd, tr_t1 : float
        Repetition times in s.

    Returns
    -------
    r1 : (...) ndarray
        Longitudinal relaxation rate in 1/s.
    a : (...) ndarray
        Apparent amplitude (M0 times receive sensitivity and T2* decay), signal units.

    References
    ----------
    .. [1] Helms G et al. Magn Reson Med 2008;60:1396 (Eqs. for R1 and A); erratum 2010.

    Examples
    --------
    >>> a, r1, tr = 1000.0, 1.0, 0.03
    >>> al = np.deg2rad([5.0, 20.0])
    >>> s = a * al * r1 * tr / (r1 * tr + al**2 / 2)  # the approximate signal model
    >>> np.round(r1_a_small_angle(s[0], s[1], al[0], al[1], tr, tr), 6)
    array([   1., 1000.])
    """
    s_pd, s_t1 = np.asarray(s_pd, dtype=np.float64), np.asarray(s_t1, dtype=np.float64)
    with np.errstate(all="ignore"):
        r1 = (
            0.5
            * (s_t1 * alpha_t1 / tr_t1 - s_pd * alpha_pd / tr_pd)
            / (s_pd / alpha_pd - s_t1 / alpha_t1)
        )
        a = (
            s_pd
            * s_t1
            * (tr_pd * alpha_t1 / alpha_pd - tr_t1 * alpha_pd / alpha_t1)
            / (s_t1 * tr_pd * alpha_t1 - s_pd * tr_t1 * alpha_pd)
        )
    return r1, a


def mtsat_small_angle(
    s_mt: np.ndarray, a: np.ndarray, r1: np.ndarray, alpha_mt: np.ndarray, tr_mt: float
) -> np.ndarray:
    """MT saturation δ (fraction, not percent) of the MT-weighted SPGR image.

    Parameters
    ----------
    s_mt : (...) array_like
        MT-weighted signal.
    a : (...) array_like
        Apparent amplitude from :func:`r1_a_small_angle` computed with actual flip angles.
    r1 : (...) array_like
        R1 in 1/s, from the same call.
    alpha_mt : (...) array_like
        *Actual* excitation flip angle of the MT-weighted image in radians.
    tr_mt : float
        Its repetition time in s.

    Returns
    -------
    (...) ndarray
        ``(a * alpha_mt / s_mt - 1) * r1 * tr_mt - alpha_mt**2 / 2``.

    References
    ----------
    .. [1] Helms G et al. Magn Reson Med 2008;60:1396; erratum 2010;64:1856.

    Examples
    --------
    >>> a, r1, tr, al, d = 1000.0, 1.0, 0.03, np.deg2rad(5.0), 0.02
    >>> s_mt = a * al * r1 * tr / (r1 * tr + al**2 / 2 + d)
    >>> round(float(mtsat_small_angle(s_mt, a, r1, al, tr)), 12)
    0.02
    """
    with np.errstate(all="ignore"):
        return (a * alpha_mt / np.asarray(s_mt, dtype=np.float64) - 1.0) * r1 * tr_mt - (
            np.square(alpha_mt) / 2.0
        )


def mtsat_helms(
    s_pd: np.ndarray,
    s_t1: np.ndarray,
    s_mt: np.ndarray,
    flips: tuple[float, float, float],
    trs: tuple[float, float, float],
    b1: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MT saturation, R1 and A with every flip angle B1-corrected.

    Parameters
    ----------
    s_pd, s_t1, s_mt : (...) array_like
        PD-weighted (MT off, low flip), T1-weighted (MT off, high flip) and MT-weighted
        signals.
    flips : (3,) sequence of float
        Nominal flip angles (PD, T1, MT) in radians.
    trs : (3,) sequence of float
        Repetition times (PD, T1, MT) in s.
    b1 : (...) array_like or None
        Relative B1+ (actual / nominal flip angle); ``None`` means 1.

    Returns
    -------
    delta : (...) ndarray
        MT saturation as a fraction (multiply by 100 for percent units).
    r1 : (...) ndarray
        R1 in 1/s.
    a : (...) ndarray
        Apparent M0 (arbitrary units).

    References
    ----------
    .. [1] Helms G et al. Magn Reson Med 2008;60:1396; erratum 2010;64:1856.
    """
    scale = 1.0 if b1 is None else np.asarray(b1, dtype=np.float64)
    a_pd, a_t1, a_mt = (scale * f for f in flips)
    r1, a = r1_a_small_angle(s_pd, s_t1, a_pd, a_t1, trs[0], trs[1])
    delta = mtsat_small_angle(s_mt, a, r1, a_mt, trs[2])
    return delta, r1, a


def _log_spgr_ratio(r1, flip, tr):
    """Log of the SPGR factor (1 - E1) / (1 - E1 cos a) and its derivative in R1."""
    e1 = np.exp(-r1 * tr)
    val = np.log1p(-e1) - np.log1p(-e1 * np.cos(flip))
    der = tr * e1 / (1.0 - e1) - tr * e1 * np.cos(flip) / (1.0 - e1 * np.cos(flip))
    return val, der


def mtsat_exact(
    s_pd: np.ndarray,
    s_t1: np.ndarray,
    s_mt: np.ndarray,
    flips: tuple[float, float, float],
    trs: tuple[float, float, float],
    b1: np.ndarray | None = None,
    *,
    n_iter: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""MT saturation, R1 and M0 from the exact SPGR steady state (no small-angle algebra).

    The model is the one of Helms et al. 2008 (an instantaneous saturation of a fraction
    :math:`\delta` of the longitudinal magnetisation once per TR, just before excitation),
    solved without the approximations :math:`1 - E_1 \approx R_1 T_R`,
    :math:`\cos\alpha \approx 1 - \alpha^2/2`: R1 is the root of
    :math:`\log(S_{PD}/S_{T1}) = \log f(\alpha_{PD}, T_{R,PD}) - \log f(\alpha_{T1},
    T_{R,T1})` with :math:`f = \sin\alpha (1 - E_1)/(1 - E_1\cos\alpha)` (Newton
    iterations from the small-angle R1), M0 follows from the PD-weighted signal, and with
    :math:`x = 1 - \delta` the MT-weighted steady state
    :math:`S_{MT} = M_0 \sin\alpha\, x (1 - E_1)/(1 - x E_1 \cos\alpha)` inverts in closed
    form: :math:`x = S_{MT} / (M_0 \sin\alpha (1 - E_1) + S_{MT} E_1 \cos\alpha)`.
    Every flip angle is the actual one, :math:`B_1 \alpha_\mathrm{nominal}`.

    Parameters
    ----------
    s_pd, s_t1, s_mt : (...) array_like
        PD-weighted, T1-weighted and MT-weighted signals.
    flips : (3,) sequence of float
        Nominal flip angles (PD, T1, MT) in radians.
    trs : (3,) sequence of float
        Repetition times (PD, T1, MT) in s.
    b1 : (...) array_like or None
        Relative B1+ (actual / nominal flip angle); ``None`` means 1.
    n_iter : int
        Newton iterations on R1 (converged to machine precision for brain tissue).

    Returns
    -------
    delta, r1, m0 : (...) ndarray
        MT saturation (fraction), R1 (1/s), M0 (signal units); NaN where undefined.

    References
    ----------
    .. [1] Helms G et al. Magn Reson Med 2008;60:1396; erratum 2010;64:1856.
    .. [2] Fram EK et al. Magn Reson Imaging 1987;5:201 (SPGR steady state).
    """
    scale = 1.0 if b1 is None else np.asarray(b1, dtype=np.float64)
    a_pd, a_t1, a_mt = (scale * f for f in flips)
    s_pd, s_t1, s_mt = (np.asarray(x, dtype=np.float64) for x in (s_pd, s_t1, s_mt))
    r1, _ = r1_a_small_angle(s_pd, s_t1, a_pd, a_t1, trs[0], trs[1])
    target = np.log(s_pd / s_t1) - np.log(np.sin(a_pd) / np.sin(a_t1))
    r1 = np.where(np.isfinite(r1) & (r1 > 0), r1, 1.0)
    for _ in range(n_iter):
        f_pd, d_pd = _log_spgr_ratio(r1, a_pd, trs[0])
        f_t1, d_t1 = _log_spgr_ratio(r1, a_t1, trs[1])
        step = (f_pd - f_t1 - target) / (d_pd - d_t1)
        r1 = np.clip(r1 - step, 1e-3, 1e3)
    e_pd = np.exp(-r1 * trs[0])
    m0 = s_pd * (1.0 - e_pd * np.cos(a_pd)) / (np.sin(a_pd) * (1.0 - e_pd))
    e_mt = np.exp(-r1 * trs[2])
    x = s_mt / (m0 * np.sin(a_mt) * (1.0 - e_mt) + s_mt * e_mt * np.cos(a_mt))
    f_pd, _ = _log_spgr_ratio(r1, a_pd, trs[0])
    f_t1, _ = _log_spgr_ratio(r1, a_t1, trs[1])
    converged = np.abs(f_pd - f_t1 - target) < 1e-8
    bad = ~converged | ~np.isfinite(x)
    return (np.where(bad, np.nan, 1.0 - x), np.where(bad, np.nan, r1), np.where(bad, np.nan, m0))


def weiskopf2013_correction(
    mtsat: np.ndarray, b1: np.ndarray, lam: float = WEISKOPF_LAMBDA
) -> np.ndarray:
    """Empirical correction of the residual B1 dependence of MTsat (Weiskopf et al. 2013).

    Parameters
    ----------
    mtsat : (...) array_like
        MT saturation computed with *nominal* flip angles, as in [1]_ (any units; the factor
        is dimensionless). For a fully B1-corrected δ pass ``δ / b1**2``.
    b1 : (...) array_like
        Relative B1+.
    lam : float
        Empirical coefficient (0.4 in [1]_, calibrated for one 3T MPM protocol).

    Returns
    -------
    (...) ndarray
        ``mtsat * (1 - lam) / (1 - lam * b1)``.

    References
    ----------
    .. [1] Weiskopf N et al. Front Neurosci 2013;7:95.

    Examples
    --------
    >>> float(weiskopf2013_correction(1.0, 1.0))
    1.0
    """
    with np.errstate(all="ignore"):
        return np.asarray(mtsat, dtype=np.float64) * (1.0 - lam) / (1.0 - lam * np.asarray(b1))
