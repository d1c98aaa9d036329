"""Multi-echo spin-echo signals of myelinated tissue by an explicit EPG simulation.

Written independently of the fitting basis (:mod:`bids_app.models._epg`): here the
configuration states are complex, the pulses are the general rotation operator of Weigel
(J Magn Reson Imaging 2015;41:266-295, eq. 15) with a 90° excitation about x and
refocusing pulses about y (CPMG), and each state is stepped explicitly. A voxel is the sum
of three water pools (MacKay A et al. Magn Reson Med 1994;31:673-677): myelin water (T2
about 10-25 ms), intra/extracellular water (60-90 ms) and CSF (about 2 s). Pure functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TISSUE_PRIORS", "epg_cpmg_signal", "simulate_voxels", "three_pool_signal"]

#: uniform ranges per tissue: (MWF, CSF fraction, T2 MW s, T2 IEW s)
TISSUE_PRIORS = {
    "WM": ((0.10, 0.20), (0.0, 0.02), (0.010, 0.025), (0.060, 0.090)),
    "GM": ((0.02, 0.06), (0.0, 0.05), (0.010, 0.025), (0.070, 0.090)),
    "lesion": ((0.00, 0.06), (0.0, 0.05), (0.010, 0.025), (0.080, 0.090)),
}


def _rotation(alpha: np.ndarray, phi: float) -> np.ndarray:
    """Weigel's rotation of (F+, F-, Z) by ``alpha`` (rad, (n,)) about phase ``phi``: (n, 3, 3)."""
    c2, s2 = np.cos(alpha / 2) ** 2, np.sin(alpha / 2) ** 2
    sa, ca = np.sin(alpha), np.cos(alpha)
    e, e2 = np.exp(1j * phi), np.exp(2j * phi)
    t = np.empty((alpha.size, 3, 3), dtype=complex)
    t[:, 0] = np.stack([c2 + 0j, e2 * s2, -1j * e * sa], axis=-1)
    t[:, 1] = np.stack([np.conj(e2) * s2, c2 + 0j, 1j * np.conj(e) * sa], axis=-1)
    t[:, 2] = np.stack([-0.5j * np.conj(e) * sa, 0.5j * e * sa, ca + 0j], axis=-1)
    return t


def epg_cpmg_signal(
    t2: np.ndarray,
    refocusing_angle: np.ndarray,
    *,
    echo_spacing: float,
    n_echoes: int,
    t1: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Complex echoes ``F+_0`` of a CPMG train for one pool per voxel (unit magnetisation).

    Pools of a voxel add as complex numbers; the magnitude image is the modulus of the sum.

    Parameters
    ----------
    t2 : (n,) array_like
        s.
    refocusing_angle : (n,) array_like
        Actual refocusing flip angle, degrees (180 x relative B1+).
    echo_spacing : float
        s.
    n_echoes : int
    t1 : float or (n,) array_like
        s.

    Returns
    -------
    (n, n_echoes) complex ndarray
    """
    t2 = np.atleast_1d(np.asarray(t2, dtype=float))
    n = t2.size
    alpha = np.deg2rad(np.broadcast_to(np.asarray(refocusing_angle, float), (n,)))
    t1 = np.broadcast_to(np.asarray(t1, dtype=float), (n,))
    k = 2 * n_echoes + 2
    omega = np.zeros((n, 3, k), dtype=complex)  # rows F+_k, F-_k, Z_k
    omega[:, 2, 0] = 1.0
    omega = _rotation(np.full(n, np.pi / 2), 0.0) @ omega  # excitation about x
    refocus = _rotation(alpha, np.pi / 2)  # about y
    tau = echo_spacing / 2
    e2 = np.exp(-tau / t2)[:, None]
    e1 = np.exp(-tau / t1)[:, None]

    def free(om):
        om = om.copy()
        om[:, 0] *= e2
        om[:, 1] *= e2
        om[:, 2] *= e1
        om[:, 2, 0] += 1 - e1[:, 0]
        out = np.zeros_like(om)  # dephasing: every F state moves one order up
        out[:, 0, 1:] = om[:, 0, :-1]
        out[:, 1, :-1] = om[:, 1, 1:]
        out[:, 0, 0] = np.conj(out[:, 1, 0])
        out[:, 2] = om[:, 2]
        return out

    echoes = np.empty((n, n_echoes), dtype=complex)
    for i in range(n_echoes):
        omega = free(omega)
        omega = refocus @ omega
        omega = free(omega)
        echoes[:, i] = omega[:, 0, 0]
    return echoes


def three_pool_signal(
    m0: np.ndarray,
    mwf: np.ndarray,
    csf: np.ndarray,
    t2_mw: np.ndarray,
    t2_iew: np.ndarray,
    refocusing_angle: np.ndarray,
    *,
    echo_spacing: float = 0.01,
    n_echoes: int = 32,
    t2_csf: float = 2.0,
    t1: float = 1.0,
    t1_csf: float = 4.0,
) -> np.ndarray:
    """Noiseless MESE decay of myelin water, intra/extracellular water and CSF.

    Parameters
    ----------
    m0 : (n,) array_like
        Total water signal (arbitrary units).
    mwf, csf : (n,) array_like
        Myelin-water and CSF fractions of the water (0-1); the rest is IE water.
    t2_mw, t2_iew : (n,) array_like
        s.
    refocusing_angle : (n,) array_like
        degrees.
    echo_spacing, t2_csf, t1, t1_csf : float
        s.
    n_echoes : int

    Returns
    -------
    (n, n_echoes) ndarray
    """
    m0, mwf, csf = (np.atleast_1d(np.asarray(v, float)) for v in (m0, mwf, csf))
    kw = {"echo_spacing": echo_spacing, "n_echoes": n_echoes}
    s_mw = epg_cpmg_signal(t2_mw, refocusing_angle, t1=t1, **kw)
    s_ie = epg_cpmg_signal(t2_iew, refocusing_angle, t1=t1, **kw)
    s_csf = epg_cpmg_signal(np.full(m0.size, t2_csf), refocusing_angle, t1=t1_csf, **kw)
    iew = 1 - mwf - csf
    total = mwf[:, None] * s_mw + iew[:, None] * s_ie + csf[:, None] * s_csf
    return m0[:, None] * np.abs(total)


def simulate_voxels(
    n: int,
    rng: np.random.Generator,
    *,
    tissue: str = "WM",
    snr: float | None = 100.0,
    angle_range: tuple[float, float] = (150.0, 180.0),
    echo_spacing: float = 0.01,
    n_echoes: int = 32,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Random voxels of a tissue with Rician noise: ``(signal, truth)``.

    Parameters
    ----------
    n : int
    rng : numpy.random.Generator
    tissue : {'WM', 'GM', 'lesion'}
        Priors from :data:`TISSUE_PRIORS`.
    snr : float or None
        Largest noiseless echo over the noise standard deviation of each channel (None:
        noiseless magnitude).
    angle_range : (2,) tuple of float
        Uniform range of the true refocusing angle, degrees.
    echo_spacing : float
        s.
    n_echoes : int

    Returns
    -------
    signal : (n, n_echoes) ndarray
    truth : dict of (n,) ndarray
        ``MWF`` (percent), ``IEWF`` (percent), ``CSF`` (percent), ``T2MW``, ``T2IEW`` (s),
        ``Angle`` (degrees), ``M0``.
    """
    (mwf_r, csf_r, t2mw_r, t2ie_r) = TISSUE_PRIORS[tissue]
    mwf = rng.uniform(*mwf_r, n)
    csf = rng.uniform(*csf_r, n)
    t2_mw = rng.uniform(*t2mw_r, n)
    t2_iew = rng.uniform(*t2ie_r, n)
    angle = rng.uniform(*angle_range, n)
    m0 = rng.uniform(800, 1200, n)
    clean = three_pool_signal(
        m0, mwf, csf, t2_mw, t2_iew, angle, echo_spacing=echo_spacing, n_echoes=n_echoes
    )
    signal = clean
    if snr is not None:
        sigma = clean.max(axis=1, keepdims=True) / snr
        noise = rng.normal(size=(2, *clean.shape)) * sigma
        signal = np.hypot(clean + noise[0], noise[1])
    truth = {
        "MWF": 100 * mwf,
        "IEWF": 100 * (1 - mwf - csf),
        "CSF": 100 * csf,
        "T2MW": t2_mw,
        "T2IEW": t2_iew,
        "Angle": angle,
        "M0": m0,
    }
    return signal, truth
