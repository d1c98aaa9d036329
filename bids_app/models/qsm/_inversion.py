"""Dipole inversion: the susceptibility from the local field (both in ppm of B0).

* ``tkd``: truncated k-space division (Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ,
  Duyn JH, "Magnetic susceptibility mapping of brain tissue in vivo using MRI phase data",
  Magn Reson Med 2009; threshold as in Wharton S, Schaefer A, Bowtell R, MRM 2010):
  ``chi = F^-1[F(f) / D]`` with ``1/D`` replaced by ``sign(D)/t`` where ``|D| < t``.
* ``tikhonov``: closed-form L2 inversion with a gradient penalty (Bilgic B, Fan AP, Polimeni JR,
  Cauley SF, Bianciardi M, Adalsteinsson E, Wald LL, Setsompop K, "Fast quantitative
  susceptibility mapping with L1-regularization and automatic parameter selection", Magn Reson
  Med 2014, eq. 3): ``chi = F^-1[D F(f) / (D^2 + lambda |E|^2)]``, ``E`` the gradient.
* ``tvadmm``: total-variation regularised inversion by ADMM with k-space closed-form updates
  (Bilgic et al., MRM 2014, eqs. 5-8): ``min ||D chi - f||^2 / 2 + lambda ||grad chi||_1``,
  splitting ``z = grad chi``; the chi update is a division in k-space, the z update a
  soft threshold.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.models.qsm._dipole import Grid, gradient_kernels

logger = logging.getLogger(__name__)

INVERSION_METHODS = ("tvadmm", "tkd", "tikhonov")


def tkd(local: np.ndarray, grid: Grid, threshold: float = 0.19) -> np.ndarray:
    """Truncated k-space division (Shmueli 2009).

    Parameters
    ----------
    local : (X, Y, Z) ndarray
        Local field (ppm), zero outside the brain.
    grid : Grid
        Padded FFT grid with the B0 direction.
    threshold : float
        Truncation ``t`` of ``|D|`` in (0, 1/3].

    Returns
    -------
    (X, Y, Z) float32 ndarray
        Susceptibility (ppm), not referenced.
    """
    d = grid.dipole()
    inv = np.where(np.abs(d) >= threshold, 1.0 / np.where(d == 0, 1, d), np.sign(d) / threshold)
    inv[0, 0, 0] = 0
    out = grid.irfft(grid.rfft(grid.pad_array(local)) * inv.astype(np.float32))
    return grid.crop(out).astype(np.float32)


def _grad_power(grid: Grid) -> tuple[list[np.ndarray], np.ndarray]:
    e = gradient_kernels(grid.fft_shape, grid.zooms)
    e2 = sum((np.abs(k) ** 2).astype(np.float32) for k in e)
    return e, e2


def tikhonov(local: np.ndarray, grid: Grid, lam: float = 0.01) -> np.ndarray:
    """Closed-form gradient-regularised L2 inversion (Bilgic 2014, eq. 3).

    Parameters
    ----------
    local : (X, Y, Z) ndarray
        Local field (ppm).
    grid : Grid
    lam : float
        Regularisation weight (mm^2, with gradients in 1/mm).

    Returns
    -------
    (X, Y, Z) float32 ndarray
        Susceptibility (ppm), not referenced.
    """
    d = grid.dipole()
    _, e2 = _grad_power(grid)
    den = d**2 + np.float32(lam) * e2
    with np.errstate(invalid="ignore", divide="ignore"):
        mult = np.where(den > 0, d / den, 0).astype(np.float32)
    out = grid.irfft(grid.rfft(grid.pad_array(local)) * mult)
    return grid.crop(out).astype(np.float32)


def _grad(x: np.ndarray, zooms) -> list[np.ndarray]:
    """Periodic forward differences (1/mm), matching :func:`gradient_kernels`."""
    return [(np.roll(x, -1, axis=a) - x) / np.float32(z) for a, z in enumerate(zooms)]


def tv_admm(
    local: np.ndarray,
    grid: Grid,
    lam: float = 3e-4,
    *,
    rho: float | None = None,
    max_iter: int = 40,
    tol: float = 1e-2,
) -> tuple[np.ndarray, int]:
    """Total-variation ADMM inversion (Bilgic 2014).

    Parameters
    ----------
    local : (X, Y, Z) ndarray
        Local field (ppm), zero outside the brain.
    grid : Grid
    lam : float
        TV weight (ppm mm).
    rho : float, optional
        ADMM penalty, default ``100 lam`` (Bilgic 2014 use a fixed ratio).
    max_iter : int
        Iterations at most.
    tol : float
        Stop when the relative change of chi between iterations is below ``tol``.

    Returns
    -------
    chi : (X, Y, Z) float32 ndarray
        Susceptibility (ppm), not referenced.
    n_iter : int
        Iterations done.
    """
    rho = 100.0 * lam if rho is None else rho
    d = grid.dipole()
    e, e2 = _grad_power(grid)
    f_k = grid.rfft(grid.pad_array(local))
    num0 = (d * f_k).astype(np.complex64)
    inv_den = (1.0 / (d**2 + np.float32(rho) * e2 + np.float32(1e-12))).astype(np.float32)
    x = grid.irfft(num0 * inv_den).astype(np.float32)
    z = _grad(x, grid.zooms)
    u = [np.zeros_like(x) for _ in range(3)]
    thr = np.float32(lam / rho)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007  (the count is returned)
        rhs = num0.copy()
        for ek, zk, uk in zip(e, z, u, strict=True):
            rhs += np.float32(rho) * np.conj(ek) * grid.rfft(zk - uk)
        x_new = grid.irfft(rhs * inv_den).astype(np.float32)
        change = float(np.linalg.norm(x_new - x) / max(np.linalg.norm(x_new), 1e-12))
        x = x_new
        g = _grad(x, grid.zooms)
        for k in range(3):
            v = g[k] + u[k]
            z[k] = np.sign(v) * np.maximum(np.abs(v) - thr, 0)
            u[k] = v - z[k]
        if change < tol:
            break
    logger.debug("TV-ADMM stopped after %d iterations", n_iter)
    return grid.crop(x).astype(np.float32), n_iter


def invert(local: np.ndarray, grid: Grid, method: str = "tvadmm", **kwargs) -> np.ndarray:
    """Dispatch to :func:`tv_admm`, :func:`tkd` or :func:`tikhonov`.

    Raises
    ------
    ValueError
        Unknown ``method``.
    """
    if method == "tvadmm":
        return tv_admm(local, grid, **kwargs)[0]
    if method == "tkd":
        return tkd(local, grid, **kwargs)
    if method == "tikhonov":
        return tikhonov(local, grid, **kwargs)
    raise ValueError(f"unknown dipole inversion {method!r}; valid: {list(INVERSION_METHODS)}")
