"""DCE-MRI forward physics: SPGR signal to concentration and tracer-kinetic models.

Conventions used throughout the perfusion package
-------------------------------------------------
* time ``t`` in **seconds** (samples may be non-uniform, the first need not be 0);
* ``Ktrans`` and ``PS`` in **/min**, ``Fp`` in **ml/100ml/min**, ``vp`` and ``ve`` as volume
  fractions (0-1), ``kep = Ktrans / ve`` in /min, arterial delay in s;
* concentrations in mM, ``cp`` is the *plasma* AIF (divide a blood AIF by ``1 - Hct``).

All functions are vectorised over voxels (rows). Convolutions with an exponential are
computed exactly for a piecewise-linear input by a first-order recursion over time (one
vector operation per time point for all voxels), see e.g. Flouri, Lesnic & Sourbron,
MRM 2016 (appendix).
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_MINUTE = 60.0


def signal_to_concentration(
    signal: np.ndarray,
    fa_deg: float | np.ndarray,
    tr_s: float | np.ndarray,
    t10_s: np.ndarray,
    r1: float | np.ndarray,
    n_baseline: int | np.ndarray,
    baseline_start: int = 0,
) -> np.ndarray:
    """Spoiled-gradient-echo signal to contrast-agent concentration.

    The steady-state SPGR equation ``S = M0 sin(a) (1 - E) / (1 - cos(a) E)`` with
    ``E = exp(-TR R1)`` gives ``M0`` from the mean of the first ``n_baseline`` samples and the
    pre-contrast ``T10``; it is inverted for ``R1(t)`` and ``C = (R1 - 1/T10) / r1`` (fast
    water exchange, linear relaxivity). The baseline signal is the mean of the samples
    ``baseline_start <= i < n_baseline``.

    Parameters
    ----------
    signal : (n_vox, n_t) ndarray
        Signal magnitude (arbitrary units).
    fa_deg : float or (n_vox,) ndarray
        Flip angle in degrees.
    tr_s : float or (n_vox,) ndarray
        Repetition time in s.
    t10_s : (n_vox,) ndarray
        Pre-contrast T1 in s.
    r1 : float or (n_vox,) ndarray
        Longitudinal relaxivity in /s/mM.
    n_baseline : int or (n_vox,) ndarray of int
        End (exclusive) of the pre-contrast samples.
    baseline_start : int, optional
        First baseline sample (default 0). The OSIPI SI-to-concentration reference excludes
        the first dynamic (``baseline_start=1``), which is often not yet at steady state.

    Returns
    -------
    (n_vox, n_t) ndarray
        Concentration in mM; NaN where the signal exceeds the fully relaxed value.

    Raises
    ------
    ValueError
        If ``signal`` is not 2-D or the baseline window is empty or beyond ``n_t``.
    """
    s = np.asarray(signal, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"signal must be (n_vox, n_t), got shape {s.shape}")
    n_vox, n_t = s.shape
    nb = np.broadcast_to(np.asarray(n_baseline, dtype=int), (n_vox,))
    if baseline_start < 0 or np.any(nb <= baseline_start) or np.any(nb > n_t):
        raise ValueError(f"need 0 <= baseline_start < n_baseline <= {n_t}")
    a = np.deg2rad(np.broadcast_to(np.asarray(fa_deg, dtype=float), (n_vox,)))[:, None]
    tr = np.broadcast_to(np.asarray(tr_s, dtype=float), (n_vox,))[:, None]
    r10 = 1.0 / np.broadcast_to(np.asarray(t10_s, dtype=float), (n_vox,))[:, None]
    rel = np.broadcast_to(np.asarray(r1, dtype=float), (n_vox,))[:, None]
    idx = np.arange(n_t)[None, :]
    baseline_mask = (idx >= baseline_start) & (idx < nb[:, None])
    s_base = np.sum(np.where(baseline_mask, s, 0.0), axis=1, keepdims=True) / (
        nb[:, None] - baseline_start
    )
    e10 = np.exp(-tr * r10)
    m0_sin = s_base * (1.0 - np.cos(a) * e10) / (1.0 - e10)  # M0 sin(a)
    k = s / m0_sin
    with np.errstate(invalid="ignore", divide="ignore"):
        e = (1.0 - k) / (1.0 - k * np.cos(a))
        r1_t = -np.log(e) / tr
    return (r1_t - r10) / rel


def shift_aif(t: np.ndarray, cp: np.ndarray, delay_s: float | np.ndarray) -> np.ndarray:
    """The AIF delayed by ``delay_s``: ``cp(t - delay)``, linear interpolation, 0 before t0.

    Parameters
    ----------
    t : (n_t,) ndarray
        Sample times in s (increasing).
    cp : (n_t,) or (n_vox, n_t) ndarray
        AIF samples, shared or one per voxel.
    delay_s : float or (n_vox,) ndarray
        Delay(s) in s (>= 0 moves the bolus later).

    Returns
    -------
    ndarray
        (n_t,) for a shared AIF and a scalar delay, else (n_vox, n_t).
    """
    t = np.asarray(t, dtype=float)
    cp = np.asarray(cp, dtype=float)
    d = np.asarray(delay_s, dtype=float)
    if d.ndim == 0 and cp.ndim == 1:
        return np.interp(t - d, t, cp, left=0.0, right=cp[-1])
    if d.ndim == 0 and not np.any(d):
        return cp
    n = cp.shape[0] if cp.ndim == 2 else d.size
    tq = t[None, :] - np.broadcast_to(d, (n,))[:, None]
    idx = np.clip(np.searchsorted(t, tq, side="right") - 1, 0, t.size - 2)
    t0, t1 = t[idx], t[idx + 1]
    w = np.clip((tq - t0) / (t1 - t0), 0.0, 1.0)
    if cp.ndim == 1:
        out = (1.0 - w) * cp[idx] + w * cp[idx + 1]
    else:
        c0 = np.take_along_axis(cp, idx, axis=1)
        c1 = np.take_along_axis(cp, idx + 1, axis=1)
        out = (1.0 - w) * c0 + w * c1
    return np.where(tq < t[0], 0.0, out)


def _lin_exp_weights(x: np.ndarray, dt: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (w_prev, w_next) of the exact exponential integral of a linear segment."""
    small = x < 1e-3
    xs = np.where(small, 1.0, x)
    em = np.exp(-xs)
    g1 = np.where(small, 1.0 - x / 2.0 + x * x / 6.0, -np.expm1(-xs) / xs)  # (1-e^-x)/x
    g2 = np.where(
        small, 0.5 - x / 3.0 + x * x / 8.0, (-np.expm1(-xs) - xs * em) / (xs * xs)
    )  # (1-e^-x(1+x))/x^2
    return dt * g2, dt * (g1 - g2)


def exp_conv(t: np.ndarray, cp: np.ndarray, k_per_s: np.ndarray) -> np.ndarray:
    """``E(t) = int_t0^t cp(u) exp(-k (t - u)) du`` for every voxel, exact for linear ``cp``.

    Parameters
    ----------
    t : (n_t,) ndarray
        Sample times in s (increasing).
    cp : (n_t,) or (n_vox, n_t) ndarray
        Input function, shared or one per voxel.
    k_per_s : (n_vox,) ndarray
        Rate constants in /s (>= 0).

    Returns
    -------
    (n_vox, n_t) ndarray
        In units of ``cp`` x s.
    """
    t = np.asarray(t, dtype=float)
    k = np.asarray(k_per_s, dtype=float)
    cp = np.asarray(cp, dtype=float)
    n_t = t.size
    dts = np.diff(t)
    out = np.empty((k.size, n_t))
    out[:, 0] = 0.0
    uniform = n_t > 1 and np.allclose(dts, dts[0], rtol=1e-9, atol=0.0)
    if uniform:
        decay = np.exp(-k * dts[0])
        w0, w1 = _lin_exp_weights(k * dts[0], dts[0])
    shared = cp.ndim == 1
    acc = np.zeros(k.size)
    for i in range(1, n_t):
        if not uniform:
            decay = np.exp(-k * dts[i - 1])
            w0, w1 = _lin_exp_weights(k * dts[i - 1], dts[i - 1])
        c_prev = cp[i - 1] if shared else cp[:, i - 1]
        c_next = cp[i] if shared else cp[:, i]
        acc = decay * acc + w0 * c_prev + w1 * c_next
        out[:, i] = acc
    return out


def cumulative_integral(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Running trapezoid integral along the last axis, starting at 0 at ``t[0]``.

    Parameters
    ----------
    t : (n_t,) ndarray
        Sample times in s.
    y : (..., n_t) ndarray

    Returns
    -------
    (..., n_t) ndarray
    """
    y = np.asarray(y, dtype=float)
    inc = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(np.asarray(t, dtype=float))
    out = np.zeros_like(y)
    np.cumsum(inc, axis=-1, out=out[..., 1:])
    return out


def _rows(x: np.ndarray | float) -> np.ndarray:
    return np.atleast_1d(np.asarray(x, dtype=float))


def tofts_conc(
    t: np.ndarray,
    cp: np.ndarray,
    ktrans: np.ndarray,
    ve: np.ndarray,
    vp: np.ndarray | float = 0.0,
    delay_s: np.ndarray | float = 0.0,
) -> np.ndarray:
    """(Extended) Tofts model tissue concentration.

    ``C(t) = vp cp(t) + Ktrans int cp(u) exp(-kep (t - u)) du``, ``kep = Ktrans / ve``
    (Tofts et al., JMRI 1999; ``vp = 0`` gives the standard model).

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    cp : (n_t,) ndarray
        Plasma AIF in mM.
    ktrans : (n_vox,) ndarray
        /min.
    ve, vp : (n_vox,) ndarray
        Fractions (``ve > 0``).
    delay_s : float or (n_vox,) ndarray
        Arterial delay in s.

    Returns
    -------
    (n_vox, n_t) ndarray
        Concentration in mM.
    """
    kt = _rows(ktrans) / SECONDS_PER_MINUTE
    n = kt.size
    ve = np.broadcast_to(_rows(ve), (n,))
    vp = np.broadcast_to(_rows(vp), (n,))
    cpd = shift_aif(t, cp, delay_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        kep = np.where(ve > 0, kt / ve, 0.0)
    cp_rows = cpd if cpd.ndim == 2 else cpd[None, :]
    return vp[:, None] * cp_rows + kt[:, None] * exp_conv(t, cpd, kep)


def patlak_conc(
    t: np.ndarray,
    cp: np.ndarray,
    ktrans: np.ndarray,
    vp: np.ndarray,
    delay_s: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Patlak model ``C(t) = vp cp(t) + Ktrans int_t0^t cp`` (Patlak et al., JCBFM 1983).

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    cp : (n_t,) ndarray
        Plasma AIF in mM.
    ktrans : (n_vox,) ndarray
        /min (equals PS for the unidirectional-uptake regime).
    vp : (n_vox,) ndarray
        Fraction.
    delay_s : float or (n_vox,) ndarray
        Arterial delay in s.

    Returns
    -------
    (n_vox, n_t) ndarray
    """
    kt = _rows(ktrans) / SECONDS_PER_MINUTE
    vp = np.broadcast_to(_rows(vp), kt.shape)
    cpd = shift_aif(t, cp, delay_s)
    icp = cumulative_integral(t, cpd)
    if cpd.ndim == 1:
        cpd, icp = cpd[None, :], icp[None, :]
    return vp[:, None] * cpd + kt[:, None] * icp


def two_cxm_rates(
    vp: np.ndarray, ve: np.ndarray, fp_per_s: np.ndarray, ps_per_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bi-exponential decomposition of the 2CXM impulse response.

    ``R(t) = Fp [A exp(-alpha t) + (1 - A) exp(-beta t)]`` with ``alpha + beta =
    (Fp + PS)/vp + PS/ve``, ``alpha beta = Fp PS/(vp ve)`` and ``A`` fixed by
    ``int R = vp + ve`` (Sourbron & Buckley, MRM 2011; Phys Med Biol 2012).

    Parameters
    ----------
    vp, ve : (n_vox,) ndarray
        Fractions (> 0).
    fp_per_s, ps_per_s : (n_vox,) ndarray
        Plasma flow and permeability-surface product in ml/ml/s and /s.

    Returns
    -------
    alpha, beta, a : (n_vox,) ndarray
        Rates in /s (``alpha >= beta >= 0``) and the weight of ``alpha``.
    """
    s = (fp_per_s + ps_per_s) / vp + ps_per_s / ve
    p = fp_per_s * ps_per_s / (vp * ve)
    root = np.sqrt(np.maximum(s * s - 4.0 * p, 0.0))
    alpha = 0.5 * (s + root)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(alpha > 0, p / alpha, 0.0)
        gap = alpha - beta
        a = np.where(gap > 0, (alpha - ps_per_s * (vp + ve) / (vp * ve)) / gap, 1.0)
    return alpha, beta, a


def two_cxm_conc(
    t: np.ndarray,
    cp: np.ndarray,
    vp: np.ndarray,
    ve: np.ndarray,
    fp: np.ndarray,
    ps: np.ndarray,
    delay_s: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Two-compartment exchange model (2CXM) tissue concentration.

    Plasma ``vp dCp/dt = Fp (ca - Cp) - PS (Cp - Ce)``, interstitium ``ve dCe/dt = PS (Cp - Ce)``,
    ``C = vp Cp + ve Ce`` (Brix et al. 2004; Sourbron & Buckley, MRM 2011).

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    cp : (n_t,) ndarray
        Plasma AIF in mM.
    vp, ve : (n_vox,) ndarray
        Fractions (> 0).
    fp : (n_vox,) ndarray
        Plasma flow in ml/100ml/min.
    ps : (n_vox,) ndarray
        Permeability-surface area product in /min.
    delay_s : float or (n_vox,) ndarray
        Arterial delay in s.

    Returns
    -------
    (n_vox, n_t) ndarray
    """
    return two_cxm_conc_from_input(t, shift_aif(t, cp, delay_s), vp, ve, fp, ps)


def two_cxm_conc_from_input(
    t: np.ndarray, cpd: np.ndarray, vp: np.ndarray, ve: np.ndarray, fp: np.ndarray, ps: np.ndarray
) -> np.ndarray:
    """:func:`two_cxm_conc` for an already delayed input, shared ``(n_t,)`` or ``(n_vox, n_t)``.

    Parameters
    ----------
    t : (n_t,) ndarray
        Times in s.
    cpd : (n_t,) or (n_vox, n_t) ndarray
        Plasma input (mM).
    vp, ve, fp, ps : (n_vox,) ndarray
        As in :func:`two_cxm_conc` (fractions, ml/100ml/min, /min).

    Returns
    -------
    (n_vox, n_t) ndarray
    """
    fp_s = _rows(fp) / (100.0 * SECONDS_PER_MINUTE)
    n = fp_s.size
    ps_s = np.broadcast_to(_rows(ps) / SECONDS_PER_MINUTE, (n,))
    vp = np.broadcast_to(_rows(vp), (n,))
    ve = np.broadcast_to(_rows(ve), (n,))
    alpha, beta, a = two_cxm_rates(vp, ve, fp_s, ps_s)
    ea = exp_conv(t, cpd, alpha)
    eb = exp_conv(t, cpd, beta)
    return fp_s[:, None] * (a[:, None] * ea + (1.0 - a[:, None]) * eb)
