"""Multi-echo combination: the total field from the phase of several echoes.

The phase of echo ``n`` is ``phi_n = phi_0 + omega TE_n`` (wrapped), with the receive offset
``phi_0`` and the field ``omega`` (rad/s). Following the weighted linear fit of unwrapped
phase over echo time (Wu B, Li W, Avram AV, Gho SM, Liu C, NeuroImage 2012; noise weights
``|S_n|^2`` as in Robinson SD et al., NMR Biomed 2017, section 4):

1. the offset-free phase difference of the first two echoes, ``wrap(phi_2 - phi_1)``, is
   unwrapped spatially (small: it accrues over one echo spacing), giving ``omega_0``;
2. each echo, minus the offset ``phi_0 = wrap(phi_1 - omega_0 TE_1)``, is unwrapped in time
   around ``omega_0 TE_n``;
3. ``omega`` is the slope of the weighted least-squares line ``psi_n = a + omega TE_n``,
   ``w_n = |S_n|^2`` (the intercept ``a`` takes the residual offset); its variance is
   ``sigma^2 / sum(w_n (TE_n - TE_w)^2)`` with the weighted mean echo time ``TE_w``.

A single echo is unwrapped spatially and divided by its echo time (the offset is then part of
the field and removed with the background field).
"""

from __future__ import annotations

import numpy as np

from bids_app.models.qsm._unwrap import unwrap, wrap


def temporal_fit(
    mag: np.ndarray, phase: np.ndarray, te: np.ndarray, omega0: np.ndarray, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Voxelwise steps 2-3: temporal unwrapping around ``omega0`` and the weighted fit.

    Parameters
    ----------
    mag, phase : (..., n_echo) ndarray
        Magnitude (any scale) and wrapped phase (rad).
    te : (n_echo,) ndarray
        Echo times (s), increasing.
    omega0 : (...) ndarray
        Field estimate (rad/s) within pi / TE_n of the truth.
    dtype : numpy dtype
        Of the computation and the results (float32 for volumes).

    Returns
    -------
    omega : (...) ndarray
        Field (rad/s).
    weight : (...) ndarray
        ``sqrt(sum(w_n (TE_n - TE_w)^2))``: the inverse noise standard deviation of
        ``omega`` up to the noise level of the magnitude.
    """
    mag = np.asarray(mag, dtype)
    phase = np.asarray(phase, dtype)
    omega0 = np.asarray(omega0, dtype)[..., None]
    te32 = np.asarray(te, dtype)
    phi0 = wrap(phase[..., :1] - omega0 * te32[0])
    pred = omega0 * te32
    psi = pred + wrap(phase - phi0 - pred)
    w = mag**2
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sw = np.sum(w, axis=-1, keepdims=True)
        t_mean = np.sum(w * te32, axis=-1, keepdims=True) / sw
        p_mean = np.sum(w * psi, axis=-1, keepdims=True) / sw
        dt = te32 - t_mean
        num = np.sum(w * dt * (psi - p_mean), axis=-1)
        den = np.sum(w * dt**2, axis=-1)
        omega = np.where(den > 0, num / den, np.nan)
    return omega.astype(dtype), np.sqrt(den).astype(dtype)


def combine_echoes(
    mag: np.ndarray,
    phase: np.ndarray,
    te: np.ndarray,
    zooms,
    mask: np.ndarray,
    *,
    method: str = "laplacian",
) -> tuple[np.ndarray, np.ndarray]:
    """Total field (rad/s) from multi-echo magnitude and wrapped phase.

    Parameters
    ----------
    mag, phase : (X, Y, Z, n_echo) ndarray
        Magnitude and wrapped phase (rad), echoes in increasing echo time.
    te : (n_echo,) array_like
        Echo times (s).
    zooms : (3,) tuple of float
        mm.
    mask : (X, Y, Z) bool ndarray
        Brain mask (spatial unwrapping region).
    method : {'laplacian', 'quality'}
        Spatial unwrapping of step 1 (:func:`~bids_app.models.qsm._unwrap.unwrap`).

    Returns
    -------
    omega : (X, Y, Z) float32 ndarray
        Unwrapped total field (rad/s).
    weight : (X, Y, Z) float32 ndarray
        See :func:`temporal_fit`.

    Raises
    ------
    ValueError
        Mismatched shapes or echo times not strictly increasing.
    """
    te = np.asarray(te, float)
    if mag.shape != phase.shape or mag.ndim != 4 or mag.shape[-1] != te.size:
        raise ValueError(
            f"magnitude {mag.shape} and phase {phase.shape} of (X, Y, Z, {te.size}) expected"
        )
    if te.size > 1 and np.any(np.diff(te) <= 0):
        raise ValueError(f"echo times must increase strictly, got {te.tolist()}")
    mag = np.nan_to_num(np.asarray(mag, np.float32))
    phase = np.nan_to_num(np.asarray(phase, np.float32))
    if te.size == 1:
        uw = unwrap(phase[..., 0], zooms, mask, method)
        return (uw / np.float32(te[0])).astype(np.float32), (mag[..., 0] * te[0]).astype(
            np.float32
        )
    dphi = wrap(phase[..., 1] - phase[..., 0])
    omega0 = unwrap(dphi, zooms, mask, method) / np.float32(te[1] - te[0])
    return temporal_fit(mag, phase, te, omega0)
