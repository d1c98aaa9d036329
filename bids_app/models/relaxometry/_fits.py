"""Signal equations and batched solvers of the relaxometry models (array in, array out).

Everything here works on ``(n_vox, n_meas)`` arrays, vectorised over voxels (no Python loop
over voxels). Times are in seconds, flip angles in degrees at the interface (radians
inside). A voxel with any zero, negative or non-finite signal value gets NaN parameters (no
exception, no warning). The numerics (:func:`~bids_app.models._solvers.line_fit`,
:func:`~bids_app.models._solvers.levenberg_marquardt_2p`) live in
:mod:`bids_app.models._solvers`.

The public functions are re-exported by :mod:`bids_app.models.relaxometry.classic`, whose model
classes choose between them.
"""

from __future__ import annotations

import numpy as np

from bids_app.models._solvers import levenberg_marquardt_2p, line_fit, positive_rows


def _actual_flip(flip_angle: np.ndarray, n: int, b1: np.ndarray | None) -> np.ndarray:
    """Actual flip angles in radians, shape (n, m): nominal degrees times the relative B1+.

    Rows whose B1+ is not a positive finite number get NaN angles (hence NaN fits).
    """
    alpha = np.deg2rad(np.asarray(flip_angle, dtype=float))[None, :]
    if b1 is None:
        return np.broadcast_to(alpha, (n, alpha.shape[1]))
    b1 = np.asarray(b1, dtype=float).reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        return np.where(b1 > 0, b1, np.nan) * alpha


# --------------------------------------------------------------------------- SPGR / DESPOT1


def spgr_signal(
    m0: np.ndarray,
    r1: np.ndarray,
    flip_angle: np.ndarray,
    tr: float,
    *,
    b1: np.ndarray | None = None,
) -> np.ndarray:
    """Steady-state spoiled gradient-echo (SPGR) signal.

    ``S = M0 sin(α) (1 − E1) / (1 − E1 cos(α))`` with ``E1 = exp(−TR·R1)`` and the actual
    flip ``α = b1 · α_nominal`` [1]_ [2]_ (T2* decay is absorbed in M0).

    Parameters
    ----------
    m0 : (n,) array_like
        Equilibrium signal (arbitrary units).
    r1 : (n,) array_like
        Longitudinal relaxation rate, 1/s.
    flip_angle : (m,) array_like
        Nominal flip angles, degrees.
    tr : float
        Repetition time, s.
    b1 : (n,) array_like, optional
        Relative B1+ (actual / nominal flip angle); default 1.

    Returns
    -------
    (n, m) ndarray
        Signal, same units as ``m0``.

    References
    ----------
    .. [1] Wang HZ, Riederer SJ, Lee JN. Optimizing the precision in T1 relaxation
       estimation using limited flip angles. Magn Reson Med 1987;5:399-416.
    .. [2] Fram EK, et al. Rapid calculation of T1 using variable flip angle gradient
       refocused imaging. Magn Reson Imaging 1987;5:201-208.

    Examples
    --------
    >>> s = spgr_signal([1.0], [1.0], [90.0], 1.0)   # 90°: S = M0 (1 − E1)
    >>> bool(np.isclose(s[0, 0], 1 - np.exp(-1)))
    True
    """
    m0 = np.asarray(m0, dtype=float).reshape(-1, 1)
    r1 = np.asarray(r1, dtype=float).reshape(-1, 1)
    alpha = _actual_flip(flip_angle, max(m0.shape[0], r1.shape[0]), b1)
    with np.errstate(all="ignore"):
        one_minus_e1 = -np.expm1(-tr * r1)
        e1 = 1 - one_minus_e1
        # 1 − E1 cos α written so that it keeps precision when TR·R1 and α are small
        denom = one_minus_e1 + 2 * e1 * np.sin(alpha / 2) ** 2
        return m0 * np.sin(alpha) * one_minus_e1 / denom


def despot1_linear(
    signal: np.ndarray, flip_angle: np.ndarray, tr: float, *, b1: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """DESPOT1: R1 and M0 from the linearised SPGR equation, in closed form for every voxel.

    ``S/sin α = E1 · S/tan α + M0 (1 − E1)`` is a straight line whose slope is E1 [1]_ [2]_;
    it is fitted by ordinary least squares in the transformed coordinates, then
    ``R1 = −ln(E1)/TR`` and ``M0 = intercept / (1 − E1)``.

    Parameters
    ----------
    signal : (n, m) array_like
        Magnitude signal at each flip angle.
    flip_angle : (m,) array_like
        Nominal flip angles, degrees (at least two distinct).
    tr : float
        Repetition time, s.
    b1 : (n,) array_like, optional
        Relative B1+ (actual / nominal flip); default 1.

    Returns
    -------
    r1, m0 : (n,) ndarray
        R1 in 1/s (≤ 0 when the data imply E1 ≥ 1) and M0 in signal units; NaN where a signal
        value is not positive and finite, or E1 ≤ 0.

    References
    ----------
    .. [1] Deoni SCL, Rutt BK, Peters TM. Rapid combined T1 and T2 mapping using gradient
       recalled acquisition in the steady state. Magn Reson Med 2003;49:515-526.
    .. [2] Gupta RK. A new look at the method of variable nutation angle for the measurement
       of spin-lattice relaxation times using Fourier transform NMR. J Magn Reson
       1977;25:231-235.

    Examples
    --------
    >>> s = spgr_signal([1000.0], [1.25], [3.0, 15.0], 0.015)
    >>> r1, m0 = despot1_linear(s, [3.0, 15.0], 0.015)
    >>> round(float(r1[0]), 9), round(float(m0[0]), 6)
    (1.25, 1000.0)
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    alpha = _actual_flip(flip_angle, signal.shape[0], b1)
    with np.errstate(all="ignore"):
        e1, intercept = line_fit(signal / np.tan(alpha), signal / np.sin(alpha))
        ok = positive_rows(signal) & (e1 > 0)
        r1 = np.where(ok, -np.log(np.where(ok, e1, 1.0)) / tr, np.nan)
        m0 = np.where(ok, intercept / -np.expm1(-tr * r1), np.nan)
    return r1, m0


def despot1_nonlinear(
    signal: np.ndarray,
    flip_angle: np.ndarray,
    tr: float,
    *,
    b1: np.ndarray | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    n_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """R1 and M0 by non-linear least squares on the SPGR equation, all voxels at once.

    Minimises ``Σ (S − spgr_signal(M0, R1))²`` over (M0, R1) with
    :func:`~bids_app.models._solvers.levenberg_marquardt_2p`, starting from
    :func:`despot1_linear` (or ``init``); a voxel whose start is unusable (NaN or R1 ≤ 0)
    starts at R1 = 1 /s with M0 from a linear projection.

    Parameters
    ----------
    signal : (n, m) array_like
        Magnitude signal at each flip angle.
    flip_angle : (m,) array_like
        Nominal flip angles, degrees.
    tr : float
        Repetition time, s.
    b1 : (n,) array_like, optional
        Relative B1+ (actual / nominal flip); default 1.
    init : tuple of two (n,) ndarray, optional
        Starting (R1, M0).
    n_iter : int
        Maximum number of Levenberg-Marquardt iterations.

    Returns
    -------
    r1, m0 : (n,) ndarray
        R1 in 1/s and M0 in signal units; NaN where a signal value is not positive and finite
        or the fit produced a non-finite value.

    References
    ----------
    .. [1] Wang HZ, Riederer SJ, Lee JN. Optimizing the precision in T1 relaxation
       estimation using limited flip angles. Magn Reson Med 1987;5:399-416.
    .. [2] Deoni SCL, Rutt BK, Peters TM. Magn Reson Med 2003;49:515-526.
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    n = signal.shape[0]
    alpha = _actual_flip(flip_angle, n, b1)
    r1, m0 = despot1_linear(signal, flip_angle, tr, b1=b1) if init is None else init
    r1, m0 = np.array(r1, dtype=float), np.array(m0, dtype=float)
    valid = positive_rows(signal)
    with np.errstate(all="ignore"):
        bad = valid & ~(np.isfinite(r1) & (r1 > 0) & np.isfinite(m0))
        r1[bad] = 1.0
        f = spgr_signal(np.ones(n), r1, flip_angle, tr, b1=b1)
        m0[bad] = (np.sum(f * signal, -1) / np.sum(f * f, -1))[bad]

    def model(p, rows, jac):
        a = alpha[rows]
        one_minus_e1 = -np.expm1(-tr * p[:, 1:2])
        e1 = 1 - one_minus_e1
        denom = one_minus_e1 + 2 * e1 * np.sin(a / 2) ** 2
        shape = np.sin(a) * one_minus_e1 / denom
        pred = p[:, :1] * shape
        if not jac:
            return pred
        d_r1 = p[:, :1] * np.sin(a) * (1 - np.cos(a)) * tr * e1 / denom**2
        return pred, np.stack((shape, d_r1), axis=-1)

    p0 = np.where(valid[:, None], np.stack((m0, r1), axis=-1), np.nan)
    p = levenberg_marquardt_2p(model, p0, signal, n_iter=n_iter)
    ok = valid & np.all(np.isfinite(p), axis=-1)
    return np.where(ok, p[:, 1], np.nan), np.where(ok, p[:, 0], np.nan)


# --------------------------------------------------------------------------- mono-exponential


def monoexp_signal(s0: np.ndarray, rate: np.ndarray, te: np.ndarray) -> np.ndarray:
    """Mono-exponential echo decay ``S = S0 exp(−R · TE)`` (R2 for spin echo, R2* for GRE).

    Parameters
    ----------
    s0 : (n,) array_like
        Signal at TE = 0 (arbitrary units).
    rate : (n,) array_like
        Relaxation rate, 1/s.
    te : (m,) array_like
        Echo times, s.

    Returns
    -------
    (n, m) ndarray

    Examples
    --------
    >>> monoexp_signal([100.0], [np.log(2) / 0.05], [0.0, 0.05, 0.1]).round(9)
    array([[100.,  50.,  25.]])
    """
    s0 = np.asarray(s0, dtype=float).reshape(-1, 1)
    rate = np.asarray(rate, dtype=float).reshape(-1, 1)
    with np.errstate(all="ignore"):
        return s0 * np.exp(-rate * np.asarray(te, dtype=float)[None, :])


def monoexp_loglinear(signal: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relaxation rate and S0 by weighted least squares on the log signal (closed form).

    Fits ``ln S = ln S0 − R·TE`` with weights ``S²``: the variance of ``ln S`` is about
    ``σ²/S²``, so these are the inverse-variance weights that make the log-linear estimate
    close to the non-linear one at moderate SNR [1]_ [2]_.

    Parameters
    ----------
    signal : (n, m) array_like
        Magnitude signal at each echo.
    te : (m,) array_like
        Echo times, s (at least two distinct).

    Returns
    -------
    rate, s0 : (n,) ndarray
        Rate in 1/s and S0 in signal units; NaN where a signal value is not positive and
        finite.

    References
    ----------
    .. [1] Veraart J, Sijbers J, Sunaert S, Leemans A, Jeurissen B. Weighted linear least
       squares estimation of diffusion MRI parameters: strengths, limitations, and
       pitfalls. NeuroImage 2013;81:335-346.
    .. [2] Weiskopf N, et al. Estimating the apparent transverse relaxation rate (R2*) from
       images with different contrasts (ESTATICS) reduces motion artifacts. Front Neurosci
       2014;8:278.

    Examples
    --------
    >>> rate, s0 = monoexp_loglinear([[100.0, 50.0, 25.0]], [0.0, 0.05, 0.1])
    >>> round(float(np.log(2) / rate[0]), 9), round(float(s0[0]), 9)   # half-life 50 ms
    (0.05, 100.0)
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    valid = positive_rows(signal)
    with np.errstate(all="ignore"):
        s = np.where(valid[:, None], signal, 1.0)
        # weights scaled per voxel by the largest signal, which leaves the solution unchanged
        w = (s / s.max(axis=-1, keepdims=True)) ** 2
        slope, intercept = line_fit(np.asarray(te, dtype=float), np.log(s), w)
        return np.where(valid, -slope, np.nan), np.where(valid, np.exp(intercept), np.nan)


def monoexp_nonlinear(
    signal: np.ndarray,
    te: np.ndarray,
    *,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    n_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Relaxation rate and S0 by non-linear least squares on ``S0 exp(−R·TE)``.

    Levenberg-Marquardt over all voxels at once, starting from :func:`monoexp_loglinear`
    (or ``init``).

    Parameters
    ----------
    signal : (n, m) array_like
        Magnitude signal at each echo.
    te : (m,) array_like
        Echo times, s.
    init : tuple of two (n,) ndarray, optional
        Starting (rate, S0).
    n_iter : int
        Maximum number of iterations.

    Returns
    -------
    rate, s0 : (n,) ndarray
        NaN where a signal value is not positive and finite or the fit failed.

    References
    ----------
    .. [1] Marquardt DW. J Soc Ind Appl Math 1963;11:431-441.
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    te = np.asarray(te, dtype=float)[None, :]
    rate, s0 = monoexp_loglinear(signal, te[0]) if init is None else init
    valid = positive_rows(signal)

    def model(p, rows, jac):
        decay = np.exp(-p[:, 1:2] * te)
        pred = p[:, :1] * decay
        if not jac:
            return pred
        return pred, np.stack((decay, -te * pred), axis=-1)

    p0 = np.where(valid[:, None], np.stack((s0, rate), axis=-1), np.nan)
    p = levenberg_marquardt_2p(model, p0, signal, n_iter=n_iter)
    ok = valid & np.all(np.isfinite(p), axis=-1)
    return np.where(ok, p[:, 1], np.nan), np.where(ok, p[:, 0], np.nan)
