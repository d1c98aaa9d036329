"""DSC-MRI: signal to ΔR2*, oSVD deconvolution, automatic AIF selection, leakage correction.

Conventions: time in s; ΔR2* ("concentration") in /s (any common scale works since CBF and
CBV depend on tissue-to-AIF ratios); CBF in ml/100g/min and CBV in ml/100g with the default
hematocrit/density scaling, or ml/100ml/min and ml/100ml with ``hct_large = hct_small = 0`` and
``density = 1``; MTT and Tmax in s.

Scaling constants (parameters of :func:`osvd_perfusion`): ``k_H = (1 - hct_large) /
(1 - hct_small)`` with large-vessel hematocrit 0.45 and small-vessel hematocrit 0.25, and brain
density 1.04 g/ml (Rempp et al., Radiology 1994; Østergaard et al., MRM 1996).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: Default singular-value thresholds (fractions of the largest) scanned by oSVD.
OSVD_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.075, 0.05, 0.035, 0.025, 0.015, 0.01, 0.005)


def signal_to_delta_r2s(signal: np.ndarray, te_s: float, n_baseline: int) -> np.ndarray:
    """DSC signal to ``ΔR2*(t) = -ln(S(t) / S0) / TE`` with ``S0`` the baseline mean.

    Parameters
    ----------
    signal : (n_vox, n_t) ndarray
        Gradient-echo (or spin-echo) signal magnitude.
    te_s : float
        Echo time in s.
    n_baseline : int
        Number of leading pre-bolus samples averaged for ``S0`` (>= 1).

    Returns
    -------
    (n_vox, n_t) ndarray
        ΔR2* in /s; NaN where the signal or the baseline is not positive.

    Raises
    ------
    ValueError
        If ``te_s <= 0`` or ``n_baseline`` is outside ``[1, n_t]``.
    """
    s = np.atleast_2d(np.asarray(signal, dtype=float))
    if te_s <= 0:
        raise ValueError("te_s must be > 0")
    if not 1 <= n_baseline <= s.shape[1]:
        raise ValueError(f"n_baseline must be in [1, {s.shape[1]}]")
    s0 = s[:, :n_baseline].mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log(s / s0) / te_s
    return np.where((s > 0) & (s0 > 0), out, np.nan)


def oscillation_index(residue: np.ndarray) -> np.ndarray:
    """Wu et al. (MRM 2003) oscillation index of residue functions.

    ``O = (1 / L) (1 / f_max) sum_k |f(k) - 2 f(k-1) + f(k-2)|``.

    Parameters
    ----------
    residue : (n_vox, L) ndarray

    Returns
    -------
    (n_vox,) ndarray
        ``inf`` where ``f_max <= 0``.
    """
    f = np.asarray(residue, dtype=float)
    fmax = f.max(axis=1)
    rough = np.abs(np.diff(f, n=2, axis=1)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fmax > 0, rough / (f.shape[1] * fmax), np.inf)


def osvd_perfusion(
    conc: np.ndarray,
    aif: np.ndarray,
    dt_s: float,
    oi_max: float = 0.095,
    thresholds: tuple[float, ...] = OSVD_THRESHOLDS,
    hct_large: float = 0.45,
    hct_small: float = 0.25,
    density: float = 1.04,
) -> dict[str, np.ndarray]:
    """CBF, CBV, MTT and Tmax by block-circulant SVD deconvolution with oscillation control.

    The AIF is zero-padded to ``L = 2 n_t`` and its circulant matrix (times ``dt``) is
    decomposed once; each voxel's flow-scaled residue ``f = CBF R(t)`` is rebuilt from the
    singular components above a threshold, scanning ``thresholds`` from high to low and
    keeping the lowest one whose oscillation index is ``<= oi_max`` (oSVD, Wu et al.,
    MRM 2003; circulant SVD makes CBF insensitive to tracer delay).

    Parameters
    ----------
    conc : (n_vox, n_t) ndarray
        Tissue ΔR2* (or concentration), uniformly sampled.
    aif : (n_t,) ndarray
        Arterial ΔR2* on the same scale.
    dt_s : float
        Sampling interval in s.
    oi_max : float, optional
        Oscillation-index limit (Wu et al. 2003 used 0.095 for their simulations).
    thresholds : tuple of float, optional
        Candidate singular-value thresholds as fractions of the largest, high to low.
    hct_large, hct_small : float, optional
        Large- and small-vessel hematocrit (``k_H = (1 - hct_large) / (1 - hct_small)``).
    density : float, optional
        Tissue density in g/ml (1 gives per-100-ml units).

    Returns
    -------
    dict of (n_vox,) ndarray
        ``cbf`` (ml/100g/min), ``cbv`` (ml/100g, from the area ratio), ``mtt`` (s,
        CBV/CBF), ``tmax`` (s, time of the residue peak; negative if the tissue leads the
        AIF), ``threshold`` (the chosen fraction), ``oi``.

    Raises
    ------
    ValueError
        On inconsistent shapes or ``dt_s <= 0``.
    """
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    a = np.asarray(aif, dtype=float)
    if a.shape != (c.shape[1],) or dt_s <= 0:
        raise ValueError(f"aif must be (n_t,) = ({c.shape[1]},) and dt_s > 0")
    n_vox, n_t = c.shape
    big = 2 * n_t
    a_pad = np.concatenate([a, np.zeros(n_t)])
    idx = (np.arange(big)[:, None] - np.arange(big)[None, :]) % big
    u, s, vt = np.linalg.svd(a_pad[idx] * dt_s)
    z = np.concatenate([np.nan_to_num(c), np.zeros((n_vox, n_t))], axis=1) @ u
    f = np.zeros((n_vox, big))
    chosen = np.full((n_vox, big), np.nan)
    thr_out = np.full(n_vox, np.nan)
    oi_out = np.full(n_vox, np.inf)
    n_used = 0
    for thr in sorted(thresholds, reverse=True):
        n_keep = int(np.sum(s > thr * s[0]))
        if n_keep > n_used:
            f += (z[:, n_used:n_keep] / s[n_used:n_keep]) @ vt[n_used:n_keep]
            n_used = n_keep
        oi = oscillation_index(f)
        ok = (oi <= oi_max) | np.isnan(thr_out)  # always keep the highest threshold first
        chosen[ok], thr_out[ok], oi_out[ok] = f[ok], thr, oi[ok]
    k_h = (1.0 - hct_large) / (1.0 - hct_small)
    scale = k_h / density
    peak = np.argmax(chosen, axis=1)
    cbf = scale * chosen[np.arange(n_vox), peak] * 6000.0
    area_aif = np.trapezoid(a, dx=dt_s)
    cbv = scale * 100.0 * np.trapezoid(c, dx=dt_s, axis=1) / area_aif
    with np.errstate(divide="ignore", invalid="ignore"):
        mtt = np.where(cbf > 0, 60.0 * cbv / cbf, np.nan)
    tmax = np.where(peak < n_t, peak, peak - big) * dt_s
    bad = ~np.all(np.isfinite(c), axis=1)
    out = {"cbf": cbf, "cbv": cbv, "mtt": mtt, "tmax": tmax, "threshold": thr_out, "oi": oi_out}
    for v in out.values():
        v[bad] = np.nan
    return out


def _fwhm(conc: np.ndarray, dt: float) -> np.ndarray:
    """Full width at half maximum (s) between the first and last half-maximum samples."""
    half = conc >= 0.5 * conc.max(axis=1, keepdims=True)
    first = np.argmax(half, axis=1)
    last = conc.shape[1] - 1 - np.argmax(half[:, ::-1], axis=1)
    return (last - first + 1) * dt


def select_aif_voxels(
    conc: np.ndarray,
    t: np.ndarray,
    candidates: np.ndarray | None = None,
    n_voxels: int = 5,
    peak_fraction: float = 0.1,
    max_roughness: float = 0.5,
) -> np.ndarray:
    """Automatic AIF selection: high peak, early arrival, narrow bolus.

    Among the candidate voxels, the curves whose peak is in the top ``peak_fraction`` are
    kept (at least ``n_voxels``), curves that are too noisy (sum of absolute second
    differences over the peak above ``max_roughness`` x the number of samples / 10) are
    dropped, and the rest are ranked by the sum of their ranks in time-to-peak and
    full width at half maximum (criteria of Rempp et al., Radiology 1994 and Carroll et al.,
    Radiology 2003).

    Parameters
    ----------
    conc : (n_vox, n_t) ndarray
        ΔR2* (DSC) or concentration (DCE) curves.
    t : (n_t,) ndarray
        Times in s (uniform sampling is assumed for the width).
    candidates : (n_vox,) ndarray of bool, optional
        Voxels allowed (e.g. a dilated arterial territory mask); all by default.
    n_voxels : int, optional
        Number of voxels returned.
    peak_fraction : float, optional
        Fraction of the highest-peak candidates considered.
    max_roughness : float, optional
        Noise rejection level (see above).

    Returns
    -------
    (k,) ndarray of int
        Indices into ``conc``, best first (``k <= n_voxels``; empty if no candidate).

    Raises
    ------
    ValueError
        If ``t`` does not match ``conc``.
    """
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    t = np.asarray(t, dtype=float)
    if t.shape != (c.shape[1],):
        raise ValueError("t must be (n_t,) matching conc")
    ok = np.all(np.isfinite(c), axis=1)
    if candidates is not None:
        ok &= np.asarray(candidates, dtype=bool)
    peak = np.where(ok, c.max(axis=1), -np.inf)
    ok &= peak > 0
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return idx
    n_keep = max(n_voxels, int(np.ceil(peak_fraction * idx.size)))
    idx = idx[np.argsort(-peak[idx], kind="stable")[:n_keep]]
    cc = c[idx]
    rough = np.abs(np.diff(cc, n=2, axis=1)).sum(axis=1) / cc.max(axis=1)
    quiet = rough <= max_roughness * c.shape[1] / 10.0
    if np.any(quiet):
        idx, cc = idx[quiet], cc[quiet]
    dt = float(np.median(np.diff(t)))
    ttp = t[np.argmax(cc, axis=1)]
    width = _fwhm(cc, dt)
    score = np.argsort(np.argsort(ttp, kind="stable")) + np.argsort(
        np.argsort(width, kind="stable")
    )
    return idx[np.argsort(score, kind="stable")[:n_voxels]]


def bsw_leakage_correction(
    delta_r2s: np.ndarray, t: np.ndarray, reference: np.ndarray
) -> dict[str, np.ndarray]:
    """Boxerman-Schmainda-Weisskoff leakage correction of DSC ΔR2* curves.

    Each curve is modelled as ``ΔR2*(t) = K1 ref(t) - K2 int_0^t ref`` with ``ref`` the
    average curve of non-enhancing tissue; the corrected curve is ``ΔR2* + K2 int ref``
    (Boxerman, Schmainda & Weisskoff, AJNR 2006). ``K2 > 0`` is T1-dominated leakage
    (signal increase), ``K2 < 0`` T2*-dominated.

    Parameters
    ----------
    delta_r2s : (n_vox, n_t) ndarray
        ΔR2* in /s.
    t : (n_t,) ndarray
        Times in s.
    reference : (n_t,) ndarray
        Whole-brain (non-enhancing) average ΔR2*.

    Returns
    -------
    dict
        ``corrected`` (n_vox, n_t) ndarray; ``k1`` (n_vox,) (dimensionless); ``k2`` (n_vox,)
        in /s.

    Raises
    ------
    ValueError
        On inconsistent shapes.
    """
    y = np.atleast_2d(np.asarray(delta_r2s, dtype=float))
    t = np.asarray(t, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if t.shape != (y.shape[1],) or ref.shape != t.shape:
        raise ValueError("t and reference must be (n_t,) matching delta_r2s")
    iref = np.concatenate([[0.0], np.cumsum(0.5 * (ref[1:] + ref[:-1]) * np.diff(t))])
    design = np.stack([ref, -iref], axis=1)
    coef = np.nan_to_num(y) @ np.linalg.pinv(design).T
    k1, k2 = coef[:, 0], coef[:, 1]
    return {"corrected": y + k2[:, None] * iref[None, :], "k1": k1, "k2": k2}
