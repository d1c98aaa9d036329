"""Background-field removal: V-SHARP and PDF.

* ``vsharp``: sophisticated harmonic artifact reduction for phase data with varying kernel
  sizes (Schweser F, Deistung A, Lehr BW, Reichenbach JR, "Quantitative imaging of intrinsic
  magnetic tissue properties using MRI signal phase", NeuroImage 2011; Li W, Wu B, Liu C,
  NeuroImage 2011). The background field is harmonic inside the brain, so the spherical mean
  value ``S`` leaves it unchanged: ``(delta - S) * f`` is the local field blurred by
  ``delta - S``. Each voxel takes the largest sphere that fits inside the mask; the result is
  deconvolved by the largest kernel with truncation (``|1 - S| < tsvd`` -> 0).
* ``pdf``: projection onto dipole fields (Liu T, Khalidov I, de Rochefort L, Spincemaille P,
  Liu J, Tsiouris AJ, Wang Y, NMR Biomed 2011): the background field is the field of the
  dipoles outside the mask that best explains, in the noise-weighted least-squares sense, the
  field inside; solved by conjugate gradients on the normal equations.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse.linalg import LinearOperator, cg

from bids_app.models.qsm._dipole import Grid, smv_kernel

logger = logging.getLogger(__name__)

BG_METHODS = ("vsharp", "pdf")


def default_radii(zooms, max_radius_mm: float = 10.0) -> np.ndarray:
    """V-SHARP radii (mm): from ``max_radius_mm`` down to the largest voxel size in steps of it."""
    step = float(max(zooms))
    return np.arange(max_radius_mm, step - 1e-6, -step)


def vsharp(
    field: np.ndarray,
    mask: np.ndarray,
    zooms,
    *,
    radii_mm=None,
    tsvd: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP background removal (Schweser 2011).

    Parameters
    ----------
    field : (X, Y, Z) ndarray
        Total field (any unit; the result is in the same unit).
    mask : (X, Y, Z) bool ndarray
        Brain mask.
    zooms : (3,) tuple of float
        mm.
    radii_mm : sequence of float, optional
        Kernel radii (mm), default :func:`default_radii`; sorted largest first.
    tsvd : float
        Truncation of the deconvolution (``|1 - S| < tsvd`` set to zero).

    Returns
    -------
    local : (X, Y, Z) float32 ndarray
        Local field, zero outside the returned mask.
    mask : (X, Y, Z) bool ndarray
        The input mask eroded by the smallest radius (where ``local`` is defined).
    """
    radii = np.sort(np.asarray(default_radii(zooms) if radii_mm is None else radii_mm))[::-1]
    mask = np.asarray(mask, bool)
    grid = Grid(field.shape, tuple(zooms), np.array([0.0, 0.0, 1.0]), pad=0)
    f = np.where(mask, np.nan_to_num(np.asarray(field, np.float32)), 0).astype(np.float32)
    f_k = grid.rfft(grid.pad_array(f))
    m_k = grid.rfft(grid.pad_array(mask.astype(np.float32)))
    acc = np.zeros(field.shape, np.float32)
    done = np.zeros(field.shape, bool)
    first = None
    for r in radii:
        s = smv_kernel(grid.fft_shape, grid.zooms, float(r))
        if first is None:
            first = s
        eroded = grid.crop(grid.irfft(m_k * s)) > 1.0 - 1e-3
        eroded &= mask
        new = eroded & ~done
        if new.any():
            hp = f - grid.crop(grid.irfft(f_k * s))
            acc[new] = hp[new]
        done |= eroded
    if first is None:
        raise ValueError("V-SHARP needs at least one radius")
    kern = 1.0 - first
    inv = np.where(np.abs(kern) >= tsvd, 1.0 / np.where(kern == 0, 1, kern), 0).astype(np.float32)
    local = grid.crop(grid.irfft(grid.rfft(grid.pad_array(acc)) * inv)).astype(np.float32)
    local[~done] = 0
    logger.debug("V-SHARP radii %s mm, %d voxels kept", radii.tolist(), int(done.sum()))
    return local, done


def pdf(
    field: np.ndarray,
    mask: np.ndarray,
    zooms,
    b0_dir,
    *,
    weight: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 0.01,
    pad: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """PDF background removal (Liu 2011).

    Parameters
    ----------
    field : (X, Y, Z) ndarray
        Total field (ppm recommended: the result is in the same unit).
    mask : (X, Y, Z) bool ndarray
    zooms : (3,) tuple of float
        mm.
    b0_dir : (3,) array_like
        Unit B0 direction in voxel axes.
    weight : (X, Y, Z) ndarray, optional
        Inverse noise standard deviation of ``field`` (default uniform).
    max_iter, tol : int, float
        Conjugate-gradient iterations and relative residual tolerance.
    pad : int
        Voxels of padding around the volume where background sources may also lie.

    Returns
    -------
    local : (X, Y, Z) float32 ndarray
        ``field`` minus the fitted background field inside ``mask``, zero outside.
    mask : (X, Y, Z) bool ndarray
        ``mask`` (unchanged).
    """
    mask = np.asarray(mask, bool)
    grid = Grid(field.shape, tuple(zooms), np.asarray(b0_dir, float), pad=pad)
    d_k = grid.dipole()
    m = grid.pad_array(mask.astype(np.float32))
    w = np.where(mask, 1.0 if weight is None else np.nan_to_num(weight), 0).astype(np.float32)
    wm = grid.pad_array(w / max(float(w[mask].mean()) if mask.any() else 1.0, 1e-12)) ** 2
    outside = 1.0 - m
    f = grid.pad_array(np.where(mask, np.nan_to_num(field), 0))

    def conv(x):
        return grid.irfft(grid.rfft(x) * d_k).astype(np.float32)

    def normal(x):
        x = x.reshape(grid.fft_shape).astype(np.float32)
        return (outside * conv(wm * conv(outside * x))).ravel()

    n = int(np.prod(grid.fft_shape))
    op = LinearOperator((n, n), matvec=normal, dtype=np.float32)
    rhs = (outside * conv(wm * f)).ravel()
    chi_b, info = cg(op, rhs, rtol=tol, maxiter=max_iter)
    logger.debug("PDF conjugate gradients: info %d", info)
    background = grid.crop(conv(outside * chi_b.reshape(grid.fft_shape)))
    local = np.where(mask, np.nan_to_num(field) - background, 0).astype(np.float32)
    return local, mask


def remove_background(field, mask, zooms, b0_dir, *, method="vsharp", weight=None, **kwargs):
    """Dispatch to :func:`vsharp` or :func:`pdf`.

    Raises
    ------
    ValueError
        Unknown ``method``.
    """
    if method == "vsharp":
        return vsharp(field, mask, zooms, **kwargs)
    if method == "pdf":
        return pdf(field, mask, zooms, b0_dir, weight=weight, **kwargs)
    raise ValueError(f"unknown background removal {method!r}; valid: {list(BG_METHODS)}")
