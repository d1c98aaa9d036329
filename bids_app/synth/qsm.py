"""Synthetic multi-echo GRE magnitude and phase from a susceptibility truth (QSM tests).

The field is the forward dipole model in k-space (Salomir 2003; Marques & Bowtell 2005):
``dB/B0 = F^-1[D(k) F(chi)]`` with ``D = 1/3 - (k . b)^2 / |k|^2``, computed on a grid padded
to twice the volume (no wrap-around of the dipole field), plus a background field made by
air-filled spheres outside the brain (``+9.4 ppm`` relative to tissue) and a linear shim term.
The signal of echo ``n`` is ``M0 exp(-R2* TE_n) exp(i (phi_0 + 2 pi gamma_bar B0 dB TE_n))``
with complex Gaussian noise of standard deviation ``mean brain |S(TE_1)| / SNR``.

The geometric phantom (:func:`qsm_phantom`) is an ellipsoidal brain: white matter at
-0.03 ppm, a cortical grey-matter shell at +0.01 ppm, ventricles (CSF, 0 ppm), iron-rich
deep grey matter (caudate +0.06, putamen +0.08, globus pallidus +0.15, thalamus +0.02 ppm;
values of the order of Deistung A et al., NeuroImage 2013 / Lim IAL et al., NeuroImage 2013)
and spherical white-matter lesions (core +0.005 ppm), half of them with a paramagnetic rim:
``rim_chi`` (+0.05 ppm) added in the lesion's outer ``rim_mm`` shell (Absinta M et al., J Clin
Invest 2016: iron-laden microglia at the edge of chronic active lesions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from bids_app.models.qsm._dipole import GAMMA_BAR_MHZ_T, Grid, b0_direction, zooms_of

#: deep grey-matter structure -> (susceptibility ppm, centre and semi-axes as brain fractions)
DEEP_GM = {
    "caudate": (0.06, (0.16, 0.22, 0.18), (0.08, 0.12, 0.12)),
    "putamen": (0.08, (0.28, 0.05, 0.0), (0.08, 0.14, 0.14)),
    "pallidus": (0.15, (0.19, 0.0, -0.02), (0.05, 0.07, 0.08)),
    "thalamus": (0.02, (0.1, -0.18, 0.05), (0.09, 0.12, 0.13)),
}
WM_CHI, GM_CHI, CSF_CHI, LESION_CHI = -0.03, 0.01, 0.0, 0.005
AIR_CHI = 9.4  # ppm, air relative to tissue


@dataclass(frozen=True)
class QSMPhantom:
    """Truth maps on one grid (all (X, Y, Z)).

    ``chi`` ppm (brain only, CSF 0), ``m0`` arbitrary, ``r2star`` 1/s, ``brain`` bool,
    ``deep_gm`` int (0 none, 1.. the structures of :data:`DEEP_GM` in order, both sides),
    ``csf``/``nawm`` bool, ``lesions`` int labels, ``rim`` bool per lesion (index label-1),
    ``affine`` (4, 4).
    """

    chi: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    brain: np.ndarray
    deep_gm: np.ndarray
    csf: np.ndarray
    nawm: np.ndarray
    lesions: np.ndarray
    rim: np.ndarray
    affine: np.ndarray


def _ellipsoid(coords, centre, axes):
    return sum(((c - c0) / a) ** 2 for c, c0, a in zip(coords, centre, axes, strict=True)) <= 1


def qsm_phantom(
    shape=(64, 76, 56),
    zooms=(2.0, 2.0, 2.0),
    *,
    n_rim: int = 4,
    n_plain: int = 4,
    lesion_radius_mm: float = 5.0,
    rim_mm: float = 2.0,
    rim_chi: float = 0.05,
    rotation: np.ndarray | None = None,
    rng: np.random.Generator,
) -> QSMPhantom:
    """The geometric brain of the module docstring.

    Parameters
    ----------
    shape : (3,) tuple of int
    zooms : (3,) tuple of float
        mm.
    n_rim, n_plain : int
        Lesions with and without a paramagnetic rim.
    lesion_radius_mm, rim_mm, rim_chi : float
        Lesion radius, rim thickness (mm) and rim excess susceptibility (ppm).
    rotation : (3, 3) ndarray, optional
        Rotation of the voxel axes in the world (an oblique acquisition); default identity.
    rng : numpy.random.Generator
        Lesion positions.

    Returns
    -------
    QSMPhantom

    Raises
    ------
    RuntimeError
        If the lesions do not fit in the white matter.
    """
    zooms = np.asarray(zooms, float)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, float)
    affine = np.eye(4)
    affine[:3, :3] = rot * zooms
    affine[:3, 3] = -(rot * zooms) @ ((np.asarray(shape) - 1) / 2)
    coords = [  # voxel-centred mm coordinates, origin at the centre of the grid
        (np.arange(n) - (n - 1) / 2)[tuple(slice(None) if a == i else None for a in range(3))] * z
        for i, (n, z) in enumerate(zip(shape, zooms, strict=True))
    ]
    semi = 0.42 * np.asarray(shape) * zooms
    brain = _ellipsoid(coords, (0, 0, 0), semi)
    inner = _ellipsoid(coords, (0, 0, 0), semi - 2.5 * zooms.max())
    chi = np.where(brain, GM_CHI, 0.0)
    chi[inner] = WM_CHI
    m0 = np.where(brain, 0.8, 0.0)
    m0[inner] = 0.7
    r2s = np.where(brain, 15.0, 0.0)
    r2s[inner] = 20.0
    csf = np.zeros(shape, bool)
    for side in (-1, 1):
        csf |= _ellipsoid(
            coords,
            (side * 0.06 * semi[0], 0.05 * semi[1], 0.15 * semi[2]),
            (0.04 * semi[0], 0.25 * semi[1], 0.1 * semi[2]),
        )
    deep = np.zeros(shape, np.int16)
    for i, (value, centre, axes) in enumerate(DEEP_GM.values(), start=1):
        for side in (-1, 1):
            c = (side * centre[0] * semi[0], centre[1] * semi[1], centre[2] * semi[2])
            region = _ellipsoid(coords, c, np.asarray(axes) * semi) & inner & (deep == 0)
            deep[region] = i
            chi[region] = value
            m0[region], r2s[region] = 0.75, 20.0 + 200.0 * value
    chi[csf], m0[csf], r2s[csf] = CSF_CHI, 1.0, 2.0
    deep[csf] = 0
    lesions = _place_lesions(
        coords, inner & ~csf & (deep == 0), n_rim + n_plain, lesion_radius_mm, zooms, rng
    )
    rim_flags = np.zeros(n_rim + n_plain, bool)
    rim_flags[rng.permutation(n_rim + n_plain)[:n_rim]] = True
    dist = ndi.distance_transform_edt(lesions > 0, sampling=zooms)
    for lab in range(1, n_rim + n_plain + 1):
        les = lesions == lab
        chi[les], m0[les], r2s[les] = LESION_CHI, 0.8, 12.0
        if rim_flags[lab - 1]:
            shell = les & (dist <= rim_mm + 1e-6)
            chi[shell] += rim_chi
            r2s[shell] = 25.0
    nawm = inner & ~csf & (deep == 0) & ~ndi.binary_dilation(lesions > 0, iterations=2)
    return QSMPhantom(chi, m0, r2s, brain, deep, csf, nawm, lesions, rim_flags, affine)


def _place_lesions(coords, allowed, n, radius, zooms, rng, max_tries=2000):
    shape = allowed.shape
    eroded = ndi.binary_erosion(allowed, iterations=int(np.ceil(radius / zooms.min())) + 1)
    cand = np.argwhere(eroded)
    labels = np.zeros(shape, np.int16)
    taken = np.zeros(shape, bool)
    for lab in range(1, n + 1):
        for _ in range(max_tries):
            idx = cand[rng.integers(len(cand))]
            centre = [c.ravel()[i] for c, i in zip(coords, idx, strict=True)]
            ball = _ellipsoid(coords, centre, (radius,) * 3)
            if not (ndi.binary_dilation(ball, iterations=2) & taken).any():
                labels[ball] = lab
                taken |= ball
                break
        else:
            raise RuntimeError(f"could not place lesion {lab} of {n} in the white matter")
    return labels


def dipole_field(chi: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Field perturbation ``dB / B0`` (ppm) of ``chi`` (ppm), grid padded to twice its size."""
    shape = chi.shape
    grid = Grid(shape, zooms_of(affine), b0_direction(affine), pad=max(shape) // 2)
    out = grid.irfft(grid.rfft(grid.pad_array(chi, np.float64)) * grid.dipole().astype(float))
    return grid.crop(out)


def background_chi(phantom: QSMPhantom, *, rng: np.random.Generator) -> np.ndarray:
    """Air spheres (``+9.4 ppm``) below the front of the brain, outside it (sinus-like)."""
    shape = phantom.chi.shape
    zooms = zooms_of(phantom.affine)
    coords = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * z for n, z in zip(shape, zooms)],
        indexing="ij",
        sparse=True,
    )
    out = np.zeros(shape)
    ext = np.asarray(shape) * np.asarray(zooms) / 2
    for _ in range(2):
        centre = (rng.uniform(-0.2, 0.2) * ext[0], 0.75 * ext[1], -0.75 * ext[2])
        ball = _ellipsoid(coords, centre, (0.18 * ext[0],) * 3)
        out[ball & ~ndi.binary_dilation(phantom.brain, iterations=2)] = AIR_CHI
    return out


def megre(
    phantom: QSMPhantom,
    te,
    *,
    b0_tesla: float = 3.0,
    snr: float = 100.0,
    background: bool = True,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Magnitude and wrapped phase of a multi-echo GRE of ``phantom`` (module docstring).

    Parameters
    ----------
    phantom : QSMPhantom
    te : (n_echo,) array_like
        Echo times (s).
    b0_tesla : float
    snr : float
        Mean brain magnitude of the first echo over the noise standard deviation
        (``inf``: noiseless).
    background : bool
        Add the air-sphere field, a linear shim term (0.5 ppm across the field of view) and a
        smooth receive phase offset.
    rng : numpy.random.Generator

    Returns
    -------
    dict
        ``mag``, ``phase`` (X, Y, Z, n_echo; rad in [-pi, pi)), ``total_hz`` and ``local_hz``
        (X, Y, Z; Hz: the truth fields, local = brain sources only).
    """
    te = np.asarray(te, float)
    local_ppm = dipole_field(phantom.chi, phantom.affine)
    total_ppm = local_ppm.copy()
    shape = phantom.chi.shape
    offset = np.zeros(shape)
    if background:
        total_ppm += dipole_field(background_chi(phantom, rng=rng), phantom.affine)
        ramp = [
            np.linspace(-0.5, 0.5, n)[tuple(slice(None) if a == i else None for a in range(3))]
            for i, n in enumerate(shape)
        ]
        total_ppm = total_ppm + 0.5 * (0.6 * ramp[0] + 0.8 * ramp[2])
        offset = 1.0 + 3.0 * ramp[0] - 2.0 * ramp[1]
    hz = GAMMA_BAR_MHZ_T * b0_tesla  # Hz per ppm
    total_hz = total_ppm * hz
    sig = phantom.m0[..., None] * np.exp(-phantom.r2star[..., None] * te)
    sig = sig * np.exp(1j * (offset[..., None] + 2 * np.pi * total_hz[..., None] * te))
    if np.isfinite(snr):
        sigma = float(np.abs(sig[..., 0])[phantom.brain].mean()) / snr
        sig = sig + sigma * (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape))
    return {
        "mag": np.abs(sig).astype(np.float32),
        "phase": np.angle(sig).astype(np.float32),
        "total_hz": total_hz.astype(np.float32),
        "local_hz": (local_ppm * hz).astype(np.float32),
    }
