"""Synthetic multi-shell diffusion MRI: protocols, Gaussian-mixture signals, noise, motion.

Pure array code (no file writing) and independent of :mod:`bids_app.models`. A voxel is a
mixture of Gaussian compartments (ball, zeppelin, stick: tensors with fractions ``f_i``);
its signal is either the exact mixture ``S = S0 sum_i f_i exp(-b g'D_i g)`` or its
second-order cumulant (DKI) representation [1]_,

``log S = log S0 - b d(g) + b^2 v(g) / 2``, ``d = sum f_i d_i``, ``v = sum f_i d_i^2 - d^2``

with ``d_i(g) = g'D_i g``; the apparent kurtosis along ``g`` is ``K(g) = 3 v / d^2`` and
the mean kurtosis is its average over the sphere. A single compartment is the DTI signal
[2]_. b-values are in s/mm², diffusivities in mm²/s, angles in degrees.

References
----------
.. [1] Jensen JH, Helpern JA, Ramani A, Lu H, Kaczynski K. Diffusional kurtosis imaging:
   the quantification of non-Gaussian water diffusion by means of magnetic resonance
   imaging. Magn Reson Med 2005;53:1432-1440.
.. [2] Basser PJ, Mattiello J, LeBihan D. MR diffusion tensor spectroscopy and imaging.
   Biophys J 1994;66:259-267.
.. [3] Jones DK, Horsfield MA, Simmons A. Optimal strategies for measuring diffusion in
   anisotropic systems by magnetic resonance imaging. Magn Reson Med 1999;42:515-525
   (directions by electrostatic repulsion).
.. [4] Gudbjartsson H, Patz S. The Rician distribution of noisy MRI data. Magn Reson Med
   1995;34:910-914.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "add_rician",
    "apparent_kurtosis",
    "dki_signal",
    "mean_kurtosis_truth",
    "mixture_signal",
    "multishell_protocol",
    "phantom",
    "rotation_matrix",
    "simulate_dwi",
    "tensor_from_eigen",
    "tensor_metrics",
]


def _directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors spread on the half sphere by electrostatic repulsion [3]_."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    xyz = rng.standard_normal((n, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    hemi, _ = disperse_charges(HemiSphere(xyz=xyz), 1000)
    return np.asarray(hemi.vertices, dtype=float)


def multishell_protocol(
    shells: Sequence[float] = (1000, 2000),
    n_dirs: int | Sequence[int] = 32,
    n_b0: int = 6,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-shell gradient table with well-spread directions and interleaved b=0.

    Parameters
    ----------
    shells : sequence of float
        Non-zero b-values, s/mm².
    n_dirs : int or sequence of int
        Directions per shell (electrostatic repulsion on the half sphere, one set per shell).
    n_b0 : int
        Number of b=0 volumes (at least 1): the first volume, the others spread evenly.
    rng : numpy.random.Generator, optional
        Start positions of the repulsion (default ``default_rng(0)``).

    Returns
    -------
    bvals : (n,) float ndarray
        s/mm².
    bvecs : (n, 3) float ndarray
        Unit vectors, zero for b=0.

    Raises
    ------
    ValueError
        ``n_b0 < 1``, a non-positive shell or fewer than 6 directions in a shell.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    counts = [n_dirs] * len(shells) if np.isscalar(n_dirs) else list(n_dirs)
    if n_b0 < 1 or len(counts) != len(shells) or min(counts) < 6 or min(shells) <= 0:
        raise ValueError(f"need n_b0 >= 1, positive shells, >= 6 dirs: {shells}, {counts}")
    bvals = np.concatenate([np.full(int(c), float(b)) for b, c in zip(shells, counts)])
    bvecs = np.concatenate([_directions(int(c), rng) for c in counts])
    order = rng.permutation(bvals.size)  # interleave shells in time
    bvals, bvecs = bvals[order], bvecs[order]
    n = bvals.size + n_b0
    b0_at = np.unique(np.round(np.linspace(0, n - 1, n_b0)).astype(int))
    out_b, out_v = np.zeros(n), np.zeros((n, 3))
    dw = np.setdiff1d(np.arange(n), b0_at)
    out_b[dw], out_v[dw] = bvals, bvecs
    return out_b, out_v


def tensor_from_eigen(evals: np.ndarray, evecs: np.ndarray) -> np.ndarray:
    """Diffusion tensors ``V diag(l) V'``.

    Parameters
    ----------
    evals : (..., 3) array_like
        Eigenvalues, mm²/s.
    evecs : (..., 3, 3) array_like
        Eigenvectors in the columns.

    Returns
    -------
    (..., 3, 3) ndarray
    """
    evals, evecs = np.asarray(evals, float), np.asarray(evecs, float)
    return np.einsum("...ik,...k,...jk->...ij", evecs, evals, evecs)


def tensor_metrics(evals: np.ndarray) -> dict[str, np.ndarray]:
    """FA, MD, AD, RD of eigenvalues sorted descending on the last axis (Basser 1996).

    Parameters
    ----------
    evals : (..., 3) array_like
        mm²/s, ``evals[..., 0]`` the largest.

    Returns
    -------
    dict of str to (...) ndarray
        ``FA`` (1), ``MD``, ``AD``, ``RD`` (mm²/s).
    """
    ev = np.sort(np.asarray(evals, float), axis=-1)[..., ::-1]
    md = ev.mean(-1)
    num = np.sqrt(((ev - md[..., None]) ** 2).sum(-1))
    den = np.sqrt((ev**2).sum(-1))
    fa = np.sqrt(1.5) * np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return {"FA": fa, "MD": md, "AD": ev[..., 0], "RD": ev[..., 1:].mean(-1)}


def _projections(tensors: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """``g'D g`` for every compartment and gradient: (n_vox, n_comp, n_meas)."""
    return np.einsum("mi,vcij,mj->vcm", bvecs, tensors, bvecs)


def mixture_signal(
    s0: np.ndarray, fractions: np.ndarray, tensors: np.ndarray, bvals, bvecs
) -> np.ndarray:
    """Exact multi-compartment Gaussian signal ``S0 sum_i f_i exp(-b g'D_i g)``.

    Parameters
    ----------
    s0 : (n_vox,) array_like
    fractions : (n_vox, n_comp) array_like
        Signal fractions, summing to 1.
    tensors : (n_vox, n_comp, 3, 3) array_like
        Compartment diffusion tensors, mm²/s.
    bvals : (n_meas,) array_like
        s/mm².
    bvecs : (n_meas, 3) array_like

    Returns
    -------
    (n_vox, n_meas) ndarray
    """
    proj = _projections(np.asarray(tensors, float), np.asarray(bvecs, float))
    att = np.exp(-np.asarray(bvals, float)[None, None, :] * proj)
    return np.asarray(s0, float)[:, None] * np.einsum("vc,vcm->vm", fractions, att)


def dki_signal(
    s0: np.ndarray, fractions: np.ndarray, tensors: np.ndarray, bvals, bvecs
) -> np.ndarray:
    """Cumulant (DKI) representation of a Gaussian mixture, exact to second order in b [1]_.

    Parameters and returns as :func:`mixture_signal`; ``log S = log S0 - b d + b^2 v / 2``.
    """
    proj = _projections(np.asarray(tensors, float), np.asarray(bvecs, float))
    f = np.asarray(fractions, float)[..., None]
    d = (f * proj).sum(1)
    v = (f * proj**2).sum(1) - d**2
    b = np.asarray(bvals, float)[None, :]
    return np.asarray(s0, float)[:, None] * np.exp(-b * d + 0.5 * b**2 * v)


def apparent_kurtosis(fractions: np.ndarray, tensors: np.ndarray, dirs: np.ndarray):
    """Directional kurtosis ``K(n) = 3 v(n) / d(n)^2`` of a mixture: (n_vox, n_dirs)."""
    proj = _projections(np.asarray(tensors, float), np.asarray(dirs, float))
    f = np.asarray(fractions, float)[..., None]
    d = (f * proj).sum(1)
    v = (f * proj**2).sum(1) - d**2
    return 3.0 * v / d**2


def mean_kurtosis_truth(fractions: np.ndarray, tensors: np.ndarray, n_dirs: int = 1500):
    """Mean kurtosis: ``K(n)`` averaged over ``n_dirs`` repulsion-spread directions.

    The quadrature error is below 1e-3 for 1500 directions (checked against 3000).

    Returns
    -------
    (n_vox,) ndarray
    """
    dirs = _directions(n_dirs, np.random.default_rng(1))
    return apparent_kurtosis(fractions, tensors, dirs).mean(1)


def add_rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of s.d. ``sigma`` [4]_."""
    re = signal + rng.normal(0.0, sigma, np.shape(signal))
    im = rng.normal(0.0, sigma, np.shape(signal))
    return np.hypot(re, im)


def rotation_matrix(angle_deg: float, axis: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """Rotation by ``angle_deg`` about ``axis`` (Rodrigues): (3, 3)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def phantom(
    shape=(24, 24, 12),
    rng: np.random.Generator | None = None,
    *,
    texture: float = 0.15,
    texture_scale: float = 2.0,
) -> dict:
    """A small asymmetric brain-like phantom of WM, GM and CSF with Gaussian compartments.

    An ellipsoid of GM around a WM core whose fibres circle the z axis (ball + zeppelin +
    stick), two off-centre CSF "ventricles", CSF outside the brain up to a second
    ellipsoid, background zero; S0 varies smoothly (by up to ``texture``, Gaussian-smoothed
    noise of ``texture_scale`` voxels) so that images have texture (registration needs it).

    Returns
    -------
    dict
        ``labels`` (X, Y, Z) int (0 background, 1 CSF, 2 GM, 3 WM), ``mask`` (X, Y, Z) bool
        (tissue), ``s0`` (n_vox,), ``fractions`` (n_vox, 3), ``tensors`` (n_vox, 3, 3, 3)
        for the voxels of ``mask`` in C order, and ``wm_axis`` (n_vox, 3) (WM fibres).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    r = np.sqrt(((grid / np.array([0.92, 0.8, 0.95])) ** 2).sum(-1))
    labels = np.zeros(shape, np.int16)
    labels[r < 1.0] = 1
    labels[r < 0.85] = 2
    labels[r < 0.6] = 3
    for centre, radii in (
        ((0.25, 0.1, 0.1), (0.15, 0.3, 0.35)),
        ((-0.3, 0.2, -0.1), (0.12, 0.2, 0.3)),
    ):
        rv = np.sqrt((((grid - centre) / np.array(radii)) ** 2).sum(-1))
        labels[rv < 1.0] = 1
    mask = labels > 0
    lab = labels[mask]
    xyz = grid[mask]
    n = lab.size
    azim = np.stack([-xyz[:, 1], xyz[:, 0], 0.3 * np.ones(n)], 1)
    axis = azim / np.linalg.norm(azim, axis=1, keepdims=True)
    iso = np.eye(3)[None]
    stick = 1.7e-3 * axis[:, :, None] * axis[:, None, :]
    zep = 0.5e-3 * iso + (1.7e-3 - 0.5e-3) * axis[:, :, None] * axis[:, None, :]
    tensors = np.zeros((n, 3, 3, 3))
    frac = np.zeros((n, 3))
    csf, gm, wm = lab == 1, lab == 2, lab == 3
    tensors[:, 0] = 3.0e-3 * iso  # ball (free water)
    tensors[:, 1] = np.where(wm[:, None, None], zep, 0.9e-3 * iso)
    tensors[:, 2] = np.where(wm[:, None, None], stick, 0.5e-3 * iso)
    frac[csf] = (1.0, 0.0, 0.0)
    frac[gm] = (0.1, 0.5, 0.4)
    frac[wm] = (0.05, 0.45, 0.5)
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), texture_scale)
    tex = 1 + texture * tex / (np.abs(tex).max() + 1e-12)
    s0 = np.select([csf, gm, wm], [2000.0, 1200.0, 1000.0]) * tex[mask]
    return {
        "labels": labels,
        "mask": mask,
        "s0": s0,
        "fractions": frac,
        "tensors": tensors,
        "wm_axis": axis,
    }


def _rotate_image(vol: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """``vol`` with its object rotated by ``rot`` about the grid centre (isotropic voxels)."""
    centre = (np.asarray(vol.shape) - 1) / 2.0
    inv = rot.T  # output(x) = input(R^-1 (x - c) + c)
    return ndimage.affine_transform(vol, inv, offset=centre - inv @ centre, order=3)


def simulate_dwi(
    mask: np.ndarray,
    s0: np.ndarray,
    fractions: np.ndarray,
    tensors: np.ndarray,
    bvals,
    bvecs,
    *,
    signal: str = "mixture",
    snr: float | None = None,
    rng: np.random.Generator | None = None,
    rotations: Mapping[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
    """A 4-D DWI series of the voxels of ``mask``, with optional noise and known motion.

    Parameters
    ----------
    mask : (X, Y, Z) bool ndarray
        Voxels with tissue; the others are 0 (before noise).
    s0, fractions, tensors : see :func:`mixture_signal`
        One row per voxel of ``mask`` (C order).
    bvals : (n,) array_like
    bvecs : (n, 3) array_like
    signal : {'mixture', 'dki'}
        :func:`mixture_signal` or :func:`dki_signal`.
    snr : float, optional
        ``S0 / sigma`` of the median b=0 tissue signal; Rician noise if given.
    rng : numpy.random.Generator, optional
    rotations : mapping of int to (3, 3) ndarray, optional
        Volume index -> rotation of the head during that volume (about the grid centre,
        isotropic voxels assumed). The tissue turns with the head, so the signal is the one
        of gradient ``R' g`` in the head frame, and the image is rotated by ``R``.

    Returns
    -------
    data : (X, Y, Z, n) float32 ndarray
    sigma : float
        Noise s.d. (0 without noise).

    Raises
    ------
    ValueError
        If the per-voxel arrays do not have one row per voxel of ``mask``.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    mask = np.asarray(mask, bool)
    bvals, bvecs = np.asarray(bvals, float), np.asarray(bvecs, float)
    n_vox = int(mask.sum())
    if len(s0) != n_vox or len(fractions) != n_vox or len(tensors) != n_vox:
        raise ValueError(f"per-voxel arrays must have {n_vox} rows (voxels of the mask)")
    forward = {"mixture": mixture_signal, "dki": dki_signal}[signal]
    data = np.zeros((*mask.shape, bvals.size), np.float32)
    data[mask] = forward(s0, fractions, tensors, bvals, bvecs)
    for k, rot in (rotations or {}).items():
        g = bvecs[k : k + 1] @ np.asarray(rot)  # R' g as a row vector
        vol = np.zeros(mask.shape)
        vol[mask] = forward(s0, fractions, tensors, bvals[k : k + 1], g)[:, 0]
        data[..., k] = _rotate_image(vol, np.asarray(rot))
    sigma = 0.0
    if snr is not None:
        sigma = float(np.median(s0)) / float(snr)
        data = add_rician(data, sigma, rng).astype(np.float32)
    return data, sigma
