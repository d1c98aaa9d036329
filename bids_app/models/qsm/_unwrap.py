"""Spatial phase unwrapping: Laplacian (FFT) and quality-guided (scikit-image).

* ``laplacian``: Schofield MA, Zhu Y, "Fast phase unwrapping algorithm for interferometric
  applications", Optics Letters 2003: the Laplacian of the true phase is
  ``cos(p) lap(sin p) - sin(p) lap(cos p)`` for the wrapped phase ``p``; inverting the
  Laplacian in k-space gives a wrap-free phase up to a harmonic term. Here the result is then
  *snapped* to the data (``p + 2 pi round((u - p) / 2 pi)``, after matching the constant), so
  that it equals the wrapped phase modulo 2 pi wherever the Laplacian estimate is within pi.
* ``quality``: :func:`skimage.restoration.unwrap_phase` (Herraez MA et al., Applied Optics
  2002; Abdul-Rahman HS et al., Applied Optics 2007: reliability-sorted region growing in 3-D).
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.models.qsm._dipole import Grid, laplacian_kernel

logger = logging.getLogger(__name__)

UNWRAP_METHODS = ("laplacian", "quality")


def wrap(x: np.ndarray) -> np.ndarray:
    """Wrap angles (rad) to [-pi, pi)."""
    return (np.asarray(x) + np.pi) % (2.0 * np.pi) - np.pi


def _laplacian(x: np.ndarray, lap_k: np.ndarray, grid: Grid) -> np.ndarray:
    return grid.irfft(grid.rfft(x) * lap_k)


def laplacian_unwrap(
    phase: np.ndarray, zooms, mask: np.ndarray | None = None, *, snap: bool = True, pad: int = 4
) -> np.ndarray:
    """Laplacian phase unwrapping (Schofield & Zhu 2003).

    Parameters
    ----------
    phase : (X, Y, Z) ndarray
        Wrapped phase (rad).
    zooms : (3,) tuple of float
        Voxel size (mm).
    mask : (X, Y, Z) bool ndarray, optional
        Where the constant offset is matched and the result snapped (default everywhere).
    snap : bool
        Return ``phase + 2 pi k`` (exact multiples of 2 pi added to the data).
    pad : int
        Zero padding (voxels) of the FFT grid.

    Returns
    -------
    (X, Y, Z) float32 ndarray
        Unwrapped phase (rad); outside ``mask`` the smooth Laplacian estimate.
    """
    phase = np.asarray(phase, dtype=np.float32)
    mask = np.ones(phase.shape, bool) if mask is None else np.asarray(mask, bool)
    grid = Grid(phase.shape, tuple(zooms), np.array([0.0, 0.0, 1.0]), pad=pad)
    lap_k = laplacian_kernel(grid.fft_shape, grid.zooms)
    s, c = grid.pad_array(np.sin(phase)), grid.pad_array(np.cos(phase))
    lap_phi = c * _laplacian(s, lap_k, grid) - s * _laplacian(c, lap_k, grid)
    inv = np.zeros_like(lap_k)
    nz = lap_k != 0
    inv[nz] = 1.0 / lap_k[nz]
    est = grid.crop(grid.irfft(grid.rfft(lap_phi) * inv)).astype(np.float32)
    if mask.any():  # match the constant lost at k = 0 (circular mean of the residual)
        res = phase[mask] - est[mask]
        est += np.float32(np.angle(np.mean(np.exp(1j * res))))
    if not snap:
        return est
    snapped = phase + np.float32(2 * np.pi) * np.round((est - phase) / np.float32(2 * np.pi))
    return np.where(mask, snapped, est).astype(np.float32)


def quality_unwrap(phase: np.ndarray, mask: np.ndarray | None = None, *, seed: int = 0):
    """Quality-guided 3-D unwrapping with :func:`skimage.restoration.unwrap_phase`.

    Parameters
    ----------
    phase : (X, Y, Z) ndarray
        Wrapped phase (rad).
    mask : (X, Y, Z) bool ndarray, optional
        Voxels to unwrap; outside, the wrapped phase is returned.
    seed : int
        Seed of the unwrapper's random start (reproducible).

    Returns
    -------
    (X, Y, Z) float32 ndarray
        Unwrapped phase (rad), shifted by a multiple of 2 pi so that its mean over ``mask``
        is in [-pi, pi).
    """
    from skimage.restoration import unwrap_phase

    phase = np.asarray(phase, dtype=np.float64)
    mask = np.ones(phase.shape, bool) if mask is None else np.asarray(mask, bool)
    if not mask.any():
        return phase.astype(np.float32)
    masked = np.ma.masked_array(wrap(phase), mask=~mask)
    out = unwrap_phase(masked, rng=seed)
    out = np.where(mask, np.ma.getdata(out), phase)
    shift = 2 * np.pi * np.round(out[mask].mean() / (2 * np.pi))
    return np.where(mask, out - shift, phase).astype(np.float32)


def unwrap(phase: np.ndarray, zooms, mask: np.ndarray, method: str = "laplacian") -> np.ndarray:
    """Unwrap with ``method`` in :data:`UNWRAP_METHODS`.

    Raises
    ------
    ValueError
        Unknown ``method``.
    """
    if method == "laplacian":
        return laplacian_unwrap(phase, zooms, mask)
    if method == "quality":
        return quality_unwrap(phase, mask)
    raise ValueError(f"unknown unwrapping method {method!r}; valid: {list(UNWRAP_METHODS)}")
