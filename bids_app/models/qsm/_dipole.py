"""k-space kernels of QSM: the unit dipole, spherical mean values and finite differences.

All kernels are for :func:`scipy.fft.rfftn` (real-to-complex FFTs, the last axis halved) on a
grid of voxel size ``zooms`` (mm). The B0 direction is expressed in the voxel axes from the
image affine, so oblique acquisitions are handled (Salomir R, de Senneville BD, Moonen CTW,
Concepts Magn Reson B 2003; Marques JP, Bowtell R, Concepts Magn Reson B 2005: the field of a
susceptibility distribution is the convolution with the dipole kernel
``D(k) = 1/3 - (k . b)^2 / |k|^2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

#: gyromagnetic ratio / 2 pi of 1H (MHz/T)
GAMMA_BAR_MHZ_T = 42.577478518


def zooms_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) as the norms of the affine's first three columns."""
    return tuple(float(z) for z in np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))


def b0_direction(affine: np.ndarray, b0_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit B0 direction in the (physical, mm-scaled) voxel axes of an image.

    Parameters
    ----------
    affine : (4, 4) array_like
        Voxel to world (scanner RAS+, mm); B0 is along the world z axis (``b0_world``).
    b0_world : (3,) array_like

    Returns
    -------
    (3,) float ndarray
        ``d`` with ``R d = b0_world`` where ``R`` is the affine with unit columns; for an axial
        acquisition ``(0, 0, +-1)``.

    Raises
    ------
    ValueError
        If the affine is singular.
    """
    m = np.asarray(affine, float)[:3, :3]
    zooms = np.linalg.norm(m, axis=0)
    if np.any(zooms == 0) or abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(f"singular affine {m.tolist()}")
    d = np.linalg.solve(m / zooms, np.asarray(b0_world, float))
    return d / np.linalg.norm(d)


def _kgrid(shape, zooms):
    """Spatial frequencies (cycles/mm) of an rfftn grid, broadcastable, float64."""
    freqs = [sfft.fftfreq(n, d=z) for n, z in zip(shape[:-1], zooms[:-1], strict=True)]
    freqs.append(sfft.rfftfreq(shape[-1], d=zooms[-1]))
    return np.meshgrid(*freqs, indexing="ij", sparse=True)


def dipole_kernel(shape, zooms, b0_dir, dtype=np.float32) -> np.ndarray:
    """Unit dipole kernel ``D(k) = 1/3 - (k . b)^2 / |k|^2`` on an rfftn grid.

    Parameters
    ----------
    shape : (3,) tuple of int
        Spatial (padded) grid.
    zooms : (3,) tuple of float
        Voxel size (mm).
    b0_dir : (3,) array_like
        Unit B0 direction in voxel axes (:func:`b0_direction`).
    dtype : numpy dtype

    Returns
    -------
    (X, Y, Z // 2 + 1) ndarray
        ``D(0) = 0``: a constant field offset carries no susceptibility information.
    """
    k = _kgrid(shape, zooms)
    b = np.asarray(b0_dir, float)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    kb = k[0] * b[0] + k[1] * b[1] + k[2] * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.astype(dtype)


def laplacian_kernel(shape, zooms, dtype=np.float32) -> np.ndarray:
    """Fourier transform of the 7-point discrete Laplacian (1/mm^2), rfftn grid, <= 0."""
    out = np.zeros(_rshape(shape), dtype=np.float64)
    for axis, (n, z) in enumerate(zip(shape, zooms, strict=True)):
        idx = np.arange(out.shape[axis])
        term = (2.0 * np.cos(2.0 * np.pi * idx / n) - 2.0) / z**2
        out = out + term.reshape([-1 if a == axis else 1 for a in range(3)])
    return out.astype(dtype)


def gradient_kernels(shape, zooms) -> list[np.ndarray]:
    """Forward differences ``(x[n+1] - x[n]) / zoom`` (periodic) as rfftn multipliers."""
    out = []
    rs = _rshape(shape)
    for axis, (n, z) in enumerate(zip(shape, zooms, strict=True)):
        idx = np.arange(rs[axis])
        e = (np.exp(2j * np.pi * idx / n) - 1.0) / z
        out.append(e.reshape([-1 if a == axis else 1 for a in range(3)]).astype(np.complex64))
    return out


def smv_kernel(shape, zooms, radius_mm: float, dtype=np.float32) -> np.ndarray:
    """Real FFT of the normalised sphere of radius ``radius_mm`` centred at the origin (periodic).

    The spherical mean value operator of SHARP (Schweser F, Deistung A, Lehr BW,
    Reichenbach JR, NeuroImage 2011). ``S(0) = 1``.
    """
    grids = []
    for n, z in zip(shape, zooms, strict=True):
        i = np.arange(n)
        grids.append(np.minimum(i, n - i) * z)  # periodic distance to the origin, mm
    x, y, w = np.meshgrid(*grids, indexing="ij", sparse=True)
    ball = (x**2 + y**2 + w**2 <= radius_mm**2).astype(np.float32)
    ball /= ball.sum()
    return sfft.rfftn(ball, workers=-1).real.astype(dtype)


def _rshape(shape):
    return (*shape[:-1], shape[-1] // 2 + 1)


def padded_shape(shape, pad: int) -> tuple[int, int, int]:
    """``shape`` plus ``pad`` voxels on each side, rounded up to fast FFT lengths."""
    return tuple(sfft.next_fast_len(int(n) + 2 * int(pad), real=True) for n in shape)


@dataclass(frozen=True)
class Grid:
    """A zero-padded FFT grid: original shape, padded shape, offset, zooms, B0 direction.

    Parameters
    ----------
    shape : (3,) tuple of int
    zooms : (3,) tuple of float
        mm.
    b0_dir : (3,) ndarray
        Unit vector in voxel axes.
    pad : int
        Voxels of zeros on each side at least (FFT wrap-around of the dipole field).
    """

    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    b0_dir: np.ndarray
    pad: int = 8

    @property
    def fft_shape(self) -> tuple[int, int, int]:
        """Padded grid."""
        return padded_shape(self.shape, self.pad)

    @property
    def _slices(self):
        return tuple(
            slice((p - n) // 2, (p - n) // 2 + n)
            for p, n in zip(self.fft_shape, self.shape, strict=True)
        )

    def pad_array(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        """(X, Y, Z) -> padded grid, zeros around, ``dtype``."""
        out = np.zeros(self.fft_shape, dtype=dtype)
        out[self._slices] = x
        return out

    def crop(self, x: np.ndarray) -> np.ndarray:
        """Padded grid -> (X, Y, Z)."""
        return x[self._slices]

    def dipole(self) -> np.ndarray:
        """:func:`dipole_kernel` on the padded grid."""
        return dipole_kernel(self.fft_shape, self.zooms, self.b0_dir)

    def rfft(self, x: np.ndarray) -> np.ndarray:
        """Real FFT (rfftn) of a padded array (all CPU workers)."""
        return sfft.rfftn(x, workers=-1)

    def irfft(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`rfft` onto the padded grid."""
        return sfft.irfftn(x, s=self.fft_shape, workers=-1)
