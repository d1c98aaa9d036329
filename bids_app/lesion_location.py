"""Infratentorial lesions: a geometric posterior-fossa rule on a proportional brain grid.

Without a registered template, a lesion is called ``infratentorial`` when most of its
voxels lie in the posterior fossa (brainstem or cerebellum), defined in an MNI-like frame
obtained from the brain mask alone, in the spirit of the proportional grid of Talairach J &
Tournoux P (Co-planar stereotaxic atlas of the human brain, Thieme, 1988):

1. World (scanner RAS+, mm) coordinates of the brain voxels come from the image affine, so
   any voxel order or orientation of the reference image is handled; the head is assumed
   to be roughly aligned with the scanner axes (standard positioning).
2. The brain's left-right and posterior-anterior extents (1st to 99th percentile of the
   brain voxel coordinates) and its top (99th percentile of z) are mapped linearly onto
   those of the ICBM-2009a brain (x -64..64 mm, y -96..63 mm, top z 72 mm; measured on the
   tissue map of the OSIPI ASL-DRO in ICBM-2009a space, brain = GM, WM and CSF labels).
   The vertical scale is the mean of the two horizontal ones and the top is the anchor,
   because the bottom of a brain mask depends on how much of the brainstem the field of
   view and the brain extraction keep.
3. In that frame the posterior fossa is the union of
   * the cerebellum: the ellipsoid centred at (0, -65, -38) mm with semi-axes
     (52, 32, 33) mm (cerebellar extent x +-52, y -97..-33, z -71..-5 in MNI space);
   * the brainstem: the elliptic column |x| <= 15 mm and |y + 28| <= 15 mm (ellipse in
     x-y) below z = -6 mm (midbrain below the thalamus, pons, medulla).

Lesions whose voxel fraction inside this region is at least ``min_fraction`` (default
0.5) are infratentorial. The rule is validated in ``tests/test_lesion_location.py`` on the
ICBM-2009a tissue map with lesions placed at anatomical landmarks, with the head scaled,
shifted, pitched by 10 degrees, and with the brainstem cut by the field of view. Lesions
within a few mm of the tentorium (superior vermis, fusiform gyrus) are the ambiguous cases
of any such rule.
"""

from __future__ import annotations

import logging

import numpy as np
from nibabel.affines import apply_affine

logger = logging.getLogger(__name__)

#: ICBM-2009a brain: 1st/99th percentiles of x and y, 99th of z (mm)
TEMPLATE_X = (-64.0, 64.0)
TEMPLATE_Y = (-96.0, 63.0)
TEMPLATE_TOP = 72.0
#: cerebellum ellipsoid (centre, semi-axes) and brainstem column (centre x-y, semi-axes, top)
CEREBELLUM = ((0.0, -65.0, -38.0), (52.0, 32.0, 33.0))
BRAINSTEM = ((0.0, -28.0), (15.0, 15.0), -6.0)


def _extent(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [1.0, 99.0])
    return float(lo), float(hi)


def template_coordinates(points: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map world points to the MNI-like proportional frame of the brain mask (step 2).

    Parameters
    ----------
    points : (N, 3) float ndarray
        World coordinates (mm, RAS+).
    brain : (X, Y, Z) bool ndarray
        Brain mask of the image.
    affine : (4, 4) ndarray
        Voxel -> world (mm) affine of ``brain``.

    Returns
    -------
    (N, 3) float64 ndarray
        Coordinates in mm of the ICBM-2009a-like frame.

    Raises
    ------
    ValueError
        The brain mask is empty or flat along x or y.
    """
    brain = np.asarray(brain, bool)
    ijk = np.argwhere(brain[::2, ::2, ::2]) * 2  # every 2nd voxel: enough for percentiles
    if ijk.shape[0] < 10:
        ijk = np.argwhere(brain)
    if ijk.shape[0] == 0:
        raise ValueError("empty brain mask: no posterior-fossa frame")
    world = apply_affine(np.asarray(affine, np.float64), ijk)
    (x0, x1), (y0, y1) = _extent(world[:, 0]), _extent(world[:, 1])
    top = float(np.percentile(world[:, 2], 99.0))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("brain mask flat along x or y: no posterior-fossa frame")
    sx = (TEMPLATE_X[1] - TEMPLATE_X[0]) / (x1 - x0)
    sy = (TEMPLATE_Y[1] - TEMPLATE_Y[0]) / (y1 - y0)
    sz = 0.5 * (sx + sy)
    p = np.asarray(points, np.float64).reshape(-1, 3)
    return np.column_stack(
        [
            TEMPLATE_X[0] + (p[:, 0] - x0) * sx,
            TEMPLATE_Y[0] + (p[:, 1] - y0) * sy,
            TEMPLATE_TOP - (top - p[:, 2]) * sz,
        ]
    )


def in_posterior_fossa(template_points: np.ndarray) -> np.ndarray:
    """Whether points of the template frame are in the cerebellum or brainstem (step 3).

    Parameters
    ----------
    template_points : (N, 3) float ndarray
        Output of :func:`template_coordinates` (mm).

    Returns
    -------
    (N,) bool ndarray
    """
    q = np.asarray(template_points, np.float64).reshape(-1, 3)
    centre, axes = np.asarray(CEREBELLUM[0]), np.asarray(CEREBELLUM[1])
    cerebellum = (((q - centre) / axes) ** 2).sum(axis=1) <= 1.0
    (cx, cy), (ax, ay), top = BRAINSTEM
    stem = (((q[:, 0] - cx) / ax) ** 2 + ((q[:, 1] - cy) / ay) ** 2 <= 1.0) & (q[:, 2] <= top)
    return cerebellum | stem


def _superior_border_touched(brain: np.ndarray, affine: np.ndarray) -> bool:
    """True when the brain reaches the image face lying highest in world z."""
    axis = int(np.argmax(np.abs(affine[2, :3])))
    sl = [slice(None)] * 3
    sl[axis] = -1 if affine[2, axis] > 0 else 0
    return bool(brain[tuple(sl)].any())


def infratentorial_fraction(
    labels: np.ndarray, brain: np.ndarray, affine: np.ndarray
) -> dict[int, float] | None:
    """Fraction of each lesion's voxels in the posterior fossa (module docstring).

    Parameters
    ----------
    labels : (X, Y, Z) int ndarray
        0 background, one positive integer per lesion.
    brain : (X, Y, Z) bool ndarray
        Brain mask (lesions included) on the same grid.
    affine : (4, 4) ndarray
        Voxel -> world (mm) affine.

    Returns
    -------
    dict of int to float, or None
        Lesion label -> fraction in [0, 1]; None (with a warning) when the brain mask is
        empty or reaches the superior face of the image (the top anchor is then unknown).

    Raises
    ------
    ValueError
        ``brain`` and ``labels`` have different shapes.
    """
    labels = np.asarray(labels)
    brain = np.asarray(brain, bool)
    affine = np.asarray(affine, np.float64)
    if brain.shape != labels.shape:
        raise ValueError(f"brain mask has shape {brain.shape}: expected {labels.shape}")
    if not brain.any():
        logger.warning("empty brain mask: no lesion can be called infratentorial")
        return None
    if _superior_border_touched(brain, affine):
        logger.warning(
            "the brain reaches the top of the image: top of the brain unknown, "
            "no lesion is called infratentorial"
        )
        return None
    ijk = np.argwhere(labels > 0)
    if ijk.shape[0] == 0:
        return {}
    q = template_coordinates(apply_affine(affine, ijk), brain, affine)
    inside = in_posterior_fossa(q).astype(np.float64)
    lab = labels[tuple(ijk.T)]
    ids, inverse = np.unique(lab, return_inverse=True)
    frac = np.bincount(inverse, weights=inside) / np.bincount(inverse)
    return dict(zip(ids.tolist(), frac.tolist()))
