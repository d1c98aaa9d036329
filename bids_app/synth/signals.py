"""Forward signal equations of the synthetic protocol, and Rician noise.

Written independently of :mod:`bids_app.models` (nothing is imported from there) so that
a fit that shares a wrong assumption with the simulator cannot pass unnoticed.
All functions are element-wise over broadcastable arrays. Times are in seconds, angles in
degrees, ``b1`` is the relative transmit field (actual / nominal flip angle) and ``m0``
is the equilibrium magnetisation in arbitrary units.

References
----------
.. [1] Ernst RR, Anderson WA. Application of Fourier transform spectroscopy to magnetic
   resonance. Rev Sci Instrum 1966;37:93-102 (steady-state spoiled gradient echo).
.. [2] Helms G, Dathe H, Kallenberg K, Dechent P. High-resolution maps of magnetization
   transfer with inherent correction for RF inhomogeneity and T1 relaxation obtained
   from 3D FLASH MRI. Magn Reson Med 2008;60:1396-1407 (erratum 2010;64:1856).
.. [3] Hajnal JV, Bryant DJ, Kasuboski L, et al. Use of fluid attenuated inversion
   recovery (FLAIR) pulse sequences in MRI of the brain. J Comput Assist Tomogr
   1992;16:841-844.
.. [4] Gudbjartsson H, Patz S. The Rician distribution of noisy MRI data. Magn Reson Med
   1995;34:910-914.
"""

from __future__ import annotations

import numpy as np


def spgr(m0, t1, t2star, b1, *, flip_angle: float, tr: float, te: float) -> np.ndarray:
    """Steady-state spoiled gradient echo (Ernst equation) [1]_.

    ``S = M0 sin(a) (1 - E1) / (1 - E1 cos(a)) exp(-TE/T2*)`` with ``a = B1 * flip``,
    ``E1 = exp(-TR/T1)``; ideal spoiling, instantaneous excitation.

    Parameters
    ----------
    m0, t1, t2star, b1 : array_like
        Equilibrium magnetisation, T1 (s), T2* (s), relative B1+.
    flip_angle : float
        Nominal flip angle (deg).
    tr, te : float
        Repetition and echo time (s).

    Returns
    -------
    ndarray
        Magnitude signal, same units as ``m0``.

    Examples
    --------
    >>> float(np.round(spgr(1.0, 1.0, np.inf, 1.0, flip_angle=90.0, tr=1.0, te=0.0), 6))
    0.632121
    """
    return spgr_mt(m0, t1, t2star, b1, 0.0, flip_angle=flip_angle, tr=tr, te=te)


def spgr_mt(m0, t1, t2star, b1, delta, *, flip_angle: float, tr: float, te: float) -> np.ndarray:
    """Spoiled gradient echo with an MT pre-pulse in every TR (Helms' model) [2]_.

    Derivation (our own; Helms 2008 uses the same picture). Let ``M`` be the longitudinal
    magnetisation just before the MT pulse. The pulse saturates instantaneously a fraction
    ``delta`` of it, the excitation ``a`` follows at once, then ``M`` relaxes for ``TR``::

        M+ = M0 (1 - E1) + E1 cos(a) (1 - delta) M

    The steady state ``M+ = M`` gives ``M = M0 (1 - E1) / (1 - (1 - delta) E1 cos(a))``
    and the signal ``S = (1 - delta) M sin(a) exp(-TE/T2*)``, i.e.::

        S = M0 sin(a) (1 - delta) (1 - E1) / (1 - (1 - delta) E1 cos(a)) exp(-TE/T2*)

    ``delta = 0`` is the Ernst equation. For small ``a``, ``TR/T1`` and ``delta`` it
    reduces to Helms' ``S ~ M0 a (TR/T1) / (TR/T1 + a^2/2 + delta)``. ``delta`` does not
    depend on B1 here (a simplification: the real saturation grows with the MT pulse's
    B1^2, which is what the empirical B1 correction of MTsat addresses).

    Parameters
    ----------
    m0, t1, t2star, b1 : array_like
        As in :func:`spgr`.
    delta : array_like
        Saturated fraction per TR (MTsat / 100), dimensionless.
    flip_angle : float
        Nominal flip angle (deg).
    tr, te : float
        Repetition and echo time (s).

    Returns
    -------
    ndarray
        Magnitude signal.
    """
    a = np.deg2rad(flip_angle) * np.asarray(b1, dtype=float)
    e1 = np.exp(-tr / np.asarray(t1, dtype=float))
    keep = 1.0 - np.asarray(delta, dtype=float)
    with np.errstate(divide="ignore"):
        decay = np.exp(-te / np.asarray(t2star, dtype=float))
    return m0 * np.sin(a) * keep * (1.0 - e1) / (1.0 - keep * e1 * np.cos(a)) * decay


def mese(m0, t1, t2, *, tr: float, te: float) -> np.ndarray:
    """Multi-echo spin echo, perfect refocusing, mono-exponential decay.

    ``S = M0 (1 - exp(-TR/T1)) exp(-TE/T2)``. Each voxel has a single T2 compartment
    and the refocusing pulses are ideal (no stimulated echoes): multi-compartment and
    extended-phase-graph (EPG) realism comes with the myelin-water work.

    Parameters
    ----------
    m0, t1, t2 : array_like
        Equilibrium magnetisation, T1 (s), T2 (s).
    tr, te : float
        Repetition time and echo time (s).

    Returns
    -------
    ndarray
        Magnitude signal.

    Examples
    --------
    >>> float(np.round(mese(1.0, 1.0, 0.1, tr=np.inf, te=0.1), 6))
    0.367879
    """
    return m0 * (1.0 - np.exp(-tr / np.asarray(t1, dtype=float))) * np.exp(-te / np.asarray(t2))


def inversion_recovery(m0, t1, t2x, *, ti: float, tr: float, te: float) -> np.ndarray:
    """Magnitude inversion recovery with a perfect 180 deg inversion [3]_.

    ``S = M0 |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2x)``: full relaxation between
    the readout and the next inversion is assumed lost only through ``exp(-TR/T1)``,
    readout-train effects are ignored. ``t2x`` is T2 for spin-echo readouts (FLAIR) and
    T2* for gradient-echo readouts (MPRAGE-like T1w).

    Parameters
    ----------
    m0, t1, t2x : array_like
        Equilibrium magnetisation, T1 (s), T2 or T2* (s).
    ti, tr, te : float
        Inversion, repetition and echo times (s).

    Returns
    -------
    ndarray
        Magnitude signal.

    Examples
    --------
    >>> ti = float(flair_null_ti(4.0, tr=9.0))
    >>> float(np.round(inversion_recovery(1.0, 4.0, 1.0, ti=ti, tr=9.0, te=0.0), 12))
    0.0
    """
    t1 = np.asarray(t1, dtype=float)
    mz = 1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)
    return m0 * np.abs(mz) * np.exp(-te / np.asarray(t2x, dtype=float))


def flair_null_ti(t1: float, *, tr: float) -> float:
    """Inversion time that nulls a tissue of longitudinal relaxation ``t1`` (s).

    Solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``.

    Examples
    --------
    >>> round(flair_null_ti(1.0, tr=np.inf), 4)
    0.6931
    """
    return float(-t1 * np.log((1.0 + np.exp(-tr / t1)) / 2.0))


def mtr_percent(s_off, s_on) -> np.ndarray:
    """Magnetisation transfer ratio in percent: ``100 (S_off - S_on) / S_off``.

    Examples
    --------
    >>> float(mtr_percent(2.0, 1.5))
    25.0
    """
    s_off = np.asarray(s_off, dtype=float)
    out = np.zeros(np.broadcast(s_off, s_on).shape)
    np.divide(100.0 * (s_off - s_on), s_off, out=out, where=s_off > 0)
    return out


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise: Gaussian noise on the real and imaginary channels, then magnitude [4]_.

    The noiseless signal is taken as real (zero phase).

    Parameters
    ----------
    signal : ndarray
        Noiseless magnitude signal (any shape).
    sigma : float
        Standard deviation of each Gaussian channel, same units as ``signal``.
    rng : numpy.random.Generator
        Seeded generator.

    Returns
    -------
    float32 ndarray
        ``sqrt((S + n1)^2 + n2^2)``, same shape as ``signal``.
    """
    return np.hypot(*complex_noise(signal, sigma, rng))


def complex_noise(
    signal: np.ndarray, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The real and imaginary channels ``(S + n1, n2)`` behind :func:`add_rician_noise`.

    Same draws in the same order, so ``hypot(*complex_noise(...))`` equals
    :func:`add_rician_noise` with the same generator state (float32 arrays).
    """
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += signal.astype(np.float32, copy=False)
    imag = rng.standard_normal(signal.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    return real, imag
