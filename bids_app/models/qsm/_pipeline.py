"""The QSM pipeline on arrays: mask, echo combination, background removal, inversion, reference.

Every step is a pure array function of the private modules; this module only chains them,
converts units (rad/s -> Hz -> ppm of B0) and times each step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from bids_app.models.qsm._bgremoval import remove_background
from bids_app.models.qsm._dipole import GAMMA_BAR_MHZ_T, Grid, b0_direction, zooms_of
from bids_app.models.qsm._echoes import combine_echoes
from bids_app.models.qsm._inversion import invert

logger = logging.getLogger(__name__)

REFERENCES = ("whole_brain", "csf", "none")


def magnitude_mask(mag: np.ndarray, zooms, *, erosion_mm: float = 2.0) -> np.ndarray:
    """Brain mask from the magnitude: Otsu threshold, largest component, holes filled, eroded.

    Parameters
    ----------
    mag : (X, Y, Z) or (X, Y, Z, n) ndarray
        Magnitude (echoes combined by root sum of squares).
    zooms : (3,) tuple of float
        mm.
    erosion_mm : float
        Erosion at the edge (mm), where the field is least reliable.

    Returns
    -------
    (X, Y, Z) bool ndarray
        Empty if the magnitude has no positive finite voxel.
    """
    from skimage.filters import threshold_otsu

    mag = np.nan_to_num(np.asarray(mag, np.float32))
    rss = np.sqrt((mag**2).sum(-1)) if mag.ndim == 4 else np.abs(mag)
    if not (rss > 0).any() or np.ptp(rss) == 0:
        return np.zeros(rss.shape, bool)
    mask = rss > threshold_otsu(rss)
    mask = ndi.binary_opening(mask, iterations=1)
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, iterations=2)) & mask | (
        ndi.binary_fill_holes(mask)
    )
    if erosion_mm > 0:
        dist = ndi.distance_transform_edt(mask, sampling=zooms)
        mask &= dist > erosion_mm
    return mask


@dataclass
class QSMResult:
    """Outputs of :func:`qsm_pipeline` (all (X, Y, Z) float32 unless noted).

    ``chi`` ppm (referenced), ``local_hz`` and ``total_hz`` Hz, ``mask`` bool (where ``chi``
    is defined), ``reference_ppm`` the subtracted mean, ``timings`` step -> seconds.
    """

    chi: np.ndarray
    local_hz: np.ndarray
    total_hz: np.ndarray
    mask: np.ndarray
    reference_ppm: float
    timings: dict[str, float] = field(default_factory=dict)


def qsm_pipeline(
    mag: np.ndarray,
    phase: np.ndarray,
    te,
    b0_tesla: float,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    unwrap: str = "laplacian",
    background: str = "vsharp",
    inversion: str = "tvadmm",
    reference: str = "whole_brain",
    csf: np.ndarray | None = None,
    erosion_mm: float = 2.0,
    vsharp_radius_mm: float = 10.0,
    inversion_kwargs: dict | None = None,
) -> QSMResult:
    """Susceptibility from multi-echo magnitude and wrapped phase.

    Parameters
    ----------
    mag, phase : (X, Y, Z, n_echo) ndarray
        Magnitude (any scale) and phase (rad).
    te : (n_echo,) array_like
        Echo times (s).
    b0_tesla : float
        Field strength (T).
    affine : (4, 4) ndarray
        Voxel to world; gives the voxel sizes and the B0 direction (world z).
    mask : (X, Y, Z) bool ndarray, optional
        Brain mask; intersected with :func:`magnitude_mask` (without it, that mask alone).
    unwrap, background, inversion : str
        Methods of :mod:`._unwrap`, :mod:`._bgremoval` and :mod:`._inversion`.
    reference : {'whole_brain', 'csf', 'none'}
        Mean subtracted from chi: over the final mask, over ``csf`` in it, or none.
    csf : (X, Y, Z) bool ndarray, optional
        CSF mask for ``reference='csf'``.
    erosion_mm, vsharp_radius_mm : float
        Mask erosion and largest V-SHARP radius (mm).
    inversion_kwargs : dict, optional
        Passed to the inversion (``threshold``, ``lam``, ``max_iter``).

    Returns
    -------
    QSMResult

    Raises
    ------
    ValueError
        Unknown method, CSF referencing without a CSF mask overlapping the brain, or an
        empty brain mask.
    """
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; valid: {list(REFERENCES)}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick(name):
        nonlocal t0
        now = time.perf_counter()
        timings[name] = now - t0
        t0 = now

    zooms = zooms_of(affine)
    b0_dir = b0_direction(affine)
    brain = magnitude_mask(mag, zooms, erosion_mm=erosion_mm)
    if mask is not None:
        brain &= np.asarray(mask, bool)
    if not brain.any():
        raise ValueError("empty brain mask (no magnitude above the Otsu threshold)")
    tick("mask")
    omega, weight = combine_echoes(mag, phase, np.asarray(te, float), zooms, brain, method=unwrap)
    total_hz = (omega / np.float32(2 * np.pi)).astype(np.float32)
    tick("echo_combination")
    hz_per_ppm = GAMMA_BAR_MHZ_T * float(b0_tesla)
    total_ppm = np.where(brain, total_hz / np.float32(hz_per_ppm), 0).astype(np.float32)
    kwargs = {"radii_mm": None} if background == "vsharp" else {}
    if background == "vsharp":
        from bids_app.models.qsm._bgremoval import default_radii

        kwargs["radii_mm"] = default_radii(zooms, vsharp_radius_mm)
    local_ppm, final = remove_background(
        total_ppm, brain, zooms, b0_dir, method=background, weight=weight, **kwargs
    )
    tick("background_removal")
    grid = Grid(local_ppm.shape, zooms, b0_dir, pad=8)
    chi = invert(np.where(final, local_ppm, 0), grid, inversion, **(inversion_kwargs or {}))
    tick("inversion")
    if reference == "csf":
        if csf is None or not (np.asarray(csf, bool) & final).any():
            raise ValueError("reference='csf' needs a CSF mask overlapping the brain mask")
        ref = float(np.mean(chi[np.asarray(csf, bool) & final]))
    elif reference == "whole_brain":
        ref = float(np.mean(chi[final]))
    else:
        ref = 0.0
    chi = np.where(final, chi - np.float32(ref), np.nan).astype(np.float32)
    tick("reference")
    logger.info("QSM steps (s): %s", {k: round(v, 3) for k, v in timings.items()})
    return QSMResult(
        chi=chi,
        local_hz=np.where(final, local_ppm * np.float32(hz_per_ppm), np.nan).astype(np.float32),
        total_hz=np.where(brain, total_hz, np.nan).astype(np.float32),
        mask=final,
        reference_ppm=ref,
        timings=timings,
    )
