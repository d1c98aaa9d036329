"""Brain extraction on whole-head images (skull, scalp, neck) and on skull-stripped ones.

Pure array code (DESIGN 2.1). :func:`extract_brain` returns ``(mask, description)`` like
:func:`bids_app.segmentation.brain_mask`; the description is the method string of the
mask sidecar (CONTRACT 2.2).

Methods (``method`` option, the ``[brainmask]`` table of the options file):

``'head'``
    Threshold, erosion, central component, conditional dilation, after Brummer et al.
    [1]_ and Lemieux et al. [2]_: edge-preserving Perona-Malik diffusion [3]_ (a median
    filter would erase the one-voxel-thin dark skull tables), inside the box of the
    voxels above 1 % of the 99.9th percentile; the head is the Otsu threshold of the log
    intensity (holes filled); the brain intensity is the median inside a
    sphere at the head's intensity-weighted centre (radius half the head's equivalent
    radius); tissue is above ``threshold`` times that median (the skull tables, which
    are dark in every contrast, and on T1w/FLAIR the CSF fall below it); the tissue
    mask is eroded by a ball of ``erosion_mm`` (detaching the brain from marrow, scalp,
    eyes and neck), the component chosen is the one with the largest sum over its voxels
    of ``exp(-d^2 / (2 s^2))`` (``d`` the voxel's distance to the head centre, ``s`` 0.4
    times the head's equivalent radius: a central, compact brain beats a larger scalp or
    neck shell, whose centroid may be central too), then dilated back by the same ball
    inside the tissue mask; the brainstem is cut where,
    going down from the largest axial section, the section first falls below
    ``neck_fraction`` of it (the cord and the lower medulla are dropped); holes are
    filled and the mask is closed with a ball of ``closing_mm`` (sulcal and ventricular
    CSF). Where CSF is bright (T2-weighted images: more than half of the mask's outer
    voxel layer is above ``rim_factor`` times the brain median), the bright voxels within
    ``rim_mm`` of the surface (the extra-axial CSF up to the dark skull) are removed;
    on PD-like images (VFA low flip angle, first GRE echo) CSF is about as bright as the
    brain and the mask keeps it (about +11 % volume on the synthetic heads).
``'otsu'``
    :func:`bids_app.segmentation.brain_mask` (method ``'otsu'``, ``closing_mm``), for
    skull-stripped images.
``'fov'``
    The whole field of view is brain (a slab or patch imaged inside the brain, e.g. a
    high-resolution MEGRE patch): every finite voxel above 5 % of the median signal.
``'auto'`` (default)
    ``'fov'`` when more than ``fov_border`` of the voxels on the six faces of the field
    of view carry signal (above the Otsu threshold of the log intensity: an image of the
    head has air around it, a skull-stripped one zeros); else ``'head'`` unless the image
    looks skull-stripped: when the head (Otsu foreground) is less than
    ``stripped_ratio`` times the ``'head'`` brain mask, nothing but the brain is imaged
    and ``'otsu'`` is used (today's masks on skull-stripped data stay the same).

References
----------
.. [1] Brummer ME, Mersereau RM, Eisner RL, Lewine RRJ. Automatic detection of brain
   contours in MRI data sets. IEEE Trans Med Imaging 1993;12:153-166.
.. [2] Lemieux L, Hagemann G, Krakow K, Woermann FG. Fast, accurate, and reproducible
   automatic segmentation of the brain in T1-weighted volume MRI data. Magn Reson Med
   1999;42:127-135.
.. [3] Perona P, Malik J. Scale-space and edge detection using anisotropic diffusion.
   IEEE Trans Pattern Anal Mach Intell 1990;12:629-639.

Limits: on the synthetic heads at 4 mm (``--size tiny``) the 1-2 mm skull tables are
not resolved on T1w/VFA/MEGRE, the brain stays attached to the marrow and scalp, and
``'auto'`` then falls back to ``'otsu'`` (the whole head); FLAIR works at 4 mm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure

from bids_app import segmentation
from bids_app.regions import check_zooms

logger = logging.getLogger(__name__)

#: options of :func:`extract_brain`: name -> (default, documentation)
BRAINMASK_OPTIONS: dict[str, tuple[object, str]] = {
    "method": ("auto", "'auto' (head unless skull-stripped or all brain), 'head', 'otsu', 'fov'"),
    "threshold": (0.4, "tissue threshold, fraction of the central brain median intensity"),
    "erosion_mm": (4.0, "ball radius (mm) of the erosion detaching the brain"),
    "closing_mm": (4.0, "ball radius (mm) of the final closing"),
    "neck_fraction": (0.03, "brainstem cut: axial section below this fraction of the largest"),
    "rim_mm": (4.0, "outer band (mm) where bright voxels (extra-axial CSF) are removed"),
    "rim_factor": (1.5, "bright: above this times the central brain median intensity"),
    "stripped_ratio": (1.3, "auto: head volume / brain volume below this means skull-stripped"),
    "fov_border": (0.5, "auto: a border of the field of view with signal above this means 'fov'"),
}
METHODS = ("auto", "head", "otsu", "fov")
_POSITIVE = ("threshold", "stripped_ratio", "rim_factor", "fov_border")
_NON_NEGATIVE = ("erosion_mm", "closing_mm", "neck_fraction", "rim_mm")
#: SD of the Gaussian weight of the component choice, in head equivalent radii
_SCALE = 0.4


def check_options(options: dict[str, object]) -> dict[str, object]:
    """Validate brain-extraction options and return them merged with the defaults.

    Parameters
    ----------
    options : dict
        Any subset of :data:`BRAINMASK_OPTIONS`.

    Returns
    -------
    dict
        All options; numbers as float.

    Raises
    ------
    ValueError
        For an unknown name, an unknown method, a non-numeric or non-finite number, a
        negative radius or fraction, a threshold or ratio <= 0, or ``neck_fraction >= 1``.
    """
    unknown = set(options) - set(BRAINMASK_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown brain-mask option(s) {sorted(unknown)}; "
            f"expected some of {sorted(BRAINMASK_OPTIONS)}"
        )
    opts = {k: v for k, (v, _) in BRAINMASK_OPTIONS.items()} | dict(options)
    if opts["method"] not in METHODS:
        raise ValueError(f"method={opts['method']!r}: expected one of {list(METHODS)}")
    for name in (*_POSITIVE, *_NON_NEGATIVE):
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name}={value!r}: expected a number")
        value = float(value)
        bad = value <= 0 if name in _POSITIVE else value < 0
        if not np.isfinite(value) or bad or (name == "neck_fraction" and value >= 1):
            what = "> 0" if name in _POSITIVE else ">= 0"
            raise ValueError(f"{name}={opts[name]!r}: expected a finite number {what}")
        opts[name] = value
    return opts


def describe_brain_extraction(used: str, **options) -> str:
    """Return the method string of :func:`extract_brain` for the sidecar.

    Parameters
    ----------
    used : {'head', 'otsu'}
        The method applied (after the ``'auto'`` choice).
    **options
        :data:`BRAINMASK_OPTIONS` (missing ones take their defaults).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Invalid options (:func:`check_options`).
    """
    opts = check_options(options)
    if used == "otsu":
        text = segmentation.describe_brain_mask(method="otsu", closing_mm=opts["closing_mm"])
    elif used == "fov":
        text = "the field of view is brain: finite voxels above 5 % of the median signal"
    else:
        text = (
            "threshold-erosion-dilation brain extraction (after Brummer et al. 1993, "
            "Lemieux et al. 1999): Perona-Malik diffusion (5 iterations), tissue > "
            f"{opts['threshold']:g} x central brain median, erosion "
            f"{opts['erosion_mm']:g} mm, central component, "
            f"conditional dilation, brainstem cut at {opts['neck_fraction']:g} of the "
            f"largest axial section, closing {opts['closing_mm']:g} mm, bright rim "
            f"(> {opts['rim_factor']:g} x brain median) removed within {opts['rim_mm']:g} mm "
            "of the surface where the surface is bright"
        )
    choice = "auto: " if opts["method"] == "auto" else ""
    options_text = ", ".join(f"{k}={opts[k]!r}" for k in BRAINMASK_OPTIONS)
    return f"{choice}{used}: {text}; options {options_text}"


def _ball(mask: np.ndarray, radius_mm: float, zooms: np.ndarray, grow: bool) -> np.ndarray:
    """Dilate (``grow``) or erode by a Euclidean ball (EDT threshold, any zooms)."""
    if grow:
        return ndi.distance_transform_edt(~mask, sampling=zooms) <= radius_mm
    depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
    return depth > radius_mm


def anisotropic_diffusion(image: np.ndarray, *, iterations: int = 5) -> np.ndarray:
    """Perona-Malik edge-preserving smoothing [3]_ (6 neighbours, explicit steps).

    ``I += (1/7) sum_n exp(-(D_n I / kappa)^2) D_n I`` over the six face neighbours
    (zero flux at the border); ``kappa`` is twice the noise-like spread of the
    neighbour differences (1.4826 x their median absolute value), so that noise is
    smoothed and the skull, CSF and brain edges are kept (unlike a median filter, which
    removes one-voxel-thin dark skull tables).

    Parameters
    ----------
    image : (X, Y, Z) ndarray
    iterations : int

    Returns
    -------
    (X, Y, Z) float64 ndarray
    """
    out = np.asarray(image, dtype=np.float64).copy()
    diffs = np.abs(np.diff(out, axis=0))
    kappa = 2.0 * 1.4826 * float(np.median(diffs[diffs > 0])) if (diffs > 0).any() else 1.0
    for _ in range(iterations):
        flux = np.zeros_like(out)
        for axis in range(3):
            d = np.diff(out, axis=axis)
            f = np.exp(-((d / kappa) ** 2)) * d
            lead = [slice(None)] * 3
            lead[axis] = slice(0, -1)
            trail = [slice(None)] * 3
            trail[axis] = slice(1, None)
            flux[tuple(lead)] += f
            flux[tuple(trail)] -= f
        out += flux / 7.0
    return out


def _superior_axis(affine: np.ndarray | None) -> tuple[int, int]:
    """Voxel axis closest to world +z and its direction (+1: index grows upwards)."""
    if affine is None:
        return 2, 1
    axis = int(np.argmax(np.abs(affine[2, :3])))
    return axis, 1 if affine[2, axis] > 0 else -1


def _central_component(core: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The component with the largest sum of ``weight``.

    ``weight`` is a Gaussian of the distance to the head centre: a central, compact brain
    beats a larger scalp or neck shell, whose centroid may also be central.
    """
    labels = measure.label(core, connectivity=1)
    scores = np.bincount(labels.ravel(), weights=weight.ravel())
    scores[0] = -1.0
    return labels == int(np.argmax(scores))


def _largest(mask: np.ndarray) -> np.ndarray:
    labels = measure.label(mask, connectivity=1)
    if labels.max() <= 1:
        return mask
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def _cut_neck(mask: np.ndarray, axis: int, sign: int, fraction: float) -> np.ndarray:
    """Drop the slices below the first section (downwards from the largest) < fraction."""
    area = mask.sum(axis=tuple(a for a in range(3) if a != axis)).astype(float)
    order = np.arange(area.size)[::sign]  # inferior to superior
    prof = area[order]
    top = int(np.argmax(prof))
    small = np.nonzero(prof[:top] < fraction * prof[top])[0]
    if fraction <= 0 or small.size == 0:
        return mask
    drop = order[: small[-1] + 1]
    out = mask.copy()
    index = [slice(None)] * 3
    index[axis] = drop
    out[tuple(index)] = False
    return _largest(out)


def _head_box(img: np.ndarray, z: np.ndarray, opts: dict) -> tuple[slice, ...]:
    """Bounding box of the voxels above 1 % of the 99.9th percentile, plus a margin."""
    high = np.percentile(img, 99.9)
    box = ndi.find_objects((img > 0.01 * high).astype(np.uint8)) if high > 0 else []
    if not box:
        return (slice(None),) * 3
    margin = np.ceil((max(opts["erosion_mm"], opts["closing_mm"]) + 2.0) / z).astype(int) + 1
    return tuple(
        slice(max(s.start - m, 0), min(s.stop + m, n))
        for s, m, n in zip(box[0], margin, img.shape)
    )


def _head_mask(smooth: np.ndarray, z: np.ndarray, opts: dict, axis: int, sign: int):
    """The 'head' method; returns (brain mask, head foreground)."""
    eps = 1e-3 * np.percentile(smooth, 99.9)
    if not eps > 0:
        raise ValueError("image has no positive voxel: cannot compute a brain mask")
    log = np.log(np.maximum(smooth, eps))
    head = ndi.binary_fill_holes(log > filters.threshold_otsu(log.ravel()))
    weights = np.where(head, smooth, 0.0)
    centre = np.asarray(ndi.center_of_mass(weights))
    radius = (3 * head.sum() * np.prod(z) / (4 * np.pi)) ** (1 / 3)
    grid = np.indices(head.shape, sparse=True)
    r2 = sum(((g - c) * zi) ** 2 for g, c, zi in zip(grid, centre, z))
    central = head & (r2 <= (0.5 * radius) ** 2)
    brain_median = float(np.median(smooth[central]))
    tissue = head & (smooth > opts["threshold"] * brain_median)
    core = _ball(tissue, opts["erosion_mm"], z, grow=False) if opts["erosion_mm"] else tissue
    if not core.any():
        raise ValueError("no tissue left after the erosion: cannot compute a brain mask")
    core = _central_component(core, np.exp(-0.5 * r2 / (_SCALE * radius) ** 2))
    if opts["erosion_mm"]:
        grown = _ball(core, opts["erosion_mm"] + 0.5 * z.min(), z, grow=True)
        mask = _largest(tissue & grown)
    else:
        mask = core
    mask = _cut_neck(ndi.binary_fill_holes(mask), axis, sign, opts["neck_fraction"])
    if opts["closing_mm"] > 0:
        pad = int(np.ceil(opts["closing_mm"] / z.min())) + 1
        grown = _ball(np.pad(mask, pad), opts["closing_mm"], z, grow=True)
        closed = _ball(grown, opts["closing_mm"], z, grow=False)
        mask = closed[pad:-pad, pad:-pad, pad:-pad] | mask
    mask = ndi.binary_fill_holes(mask)
    if opts["rim_mm"] > 0:  # bright extra-axial CSF (T2-weighted images)
        depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=z)[1:-1, 1:-1, 1:-1]
        bright = smooth > opts["rim_factor"] * brain_median
        surface = mask & (depth <= z.max())
        if bright[surface].mean() > 0.5:
            mask = _largest(ndi.binary_fill_holes(mask & ~(bright & (depth <= opts["rim_mm"]))))
    return mask, head


def border_signal_fraction(image: np.ndarray) -> float:
    """Fraction of the voxels on the six faces of the field of view that carry signal.

    Signal: above the Otsu threshold of the log intensity of the positive finite voxels.
    About 0 for a head or a skull-stripped brain (air or zeros around), near 1 for a slab
    imaged inside the brain.

    Parameters
    ----------
    image : (X, Y, Z) ndarray

    Returns
    -------
    float
        In [0, 1]; 0 for an image with fewer than two distinct positive values.
    """
    img = np.where(np.isfinite(image), image, 0.0)
    positive = img[img > 0]
    if positive.size < 2 or positive.min() == positive.max():
        return 0.0
    cut = float(np.exp(filters.threshold_otsu(np.log(positive))))
    faces = [np.take(img, i, axis=a).ravel() for a in range(3) for i in (0, -1)]
    border = np.concatenate(faces)
    return float(np.mean(border > cut))


def extract_brain(
    image: np.ndarray,
    *,
    zooms: Sequence[float],
    affine: np.ndarray | None = None,
    **options,
) -> tuple[np.ndarray, str]:
    """Compute a brain mask from a whole-head or skull-stripped image.

    Parameters
    ----------
    image : (X, Y, Z) ndarray
        T1w, FLAIR, T2w or a qMRI reference image (e.g. a VFA or MEGRE first volume);
        NaN/inf count as background.
    zooms : sequence of 3 float
        Voxel size in mm.
    affine : (4, 4) ndarray, optional
        Voxel-to-world affine: gives the superior axis of the brainstem cut (default:
        the third voxel axis points up).
    **options
        :data:`BRAINMASK_OPTIONS` (see the module docstring).

    Returns
    -------
    mask : (X, Y, Z) bool ndarray
    description : str
        Method actually used and all options (for the mask sidecar).

    Raises
    ------
    ValueError
        Invalid options, a non 3-D image, a constant image, or an image without
        finite/positive voxels.
    """
    opts = check_options(options)
    z = check_zooms(zooms)
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"image has shape {img.shape}: expected a 3-D image")
    finite = np.isfinite(img)
    if not finite.any():
        raise ValueError("image has no finite voxel: cannot compute a brain mask")
    if np.ptp(img[finite]) == 0:
        raise ValueError("image is constant (no contrast): cannot compute a brain mask")
    used = opts["method"]
    if used == "auto" and border_signal_fraction(img) > opts["fov_border"]:
        used = "fov"
    if used == "fov":
        values = np.where(finite, img, 0.0)
        mask = (
            values > 0.05 * float(np.median(values[values > 0]))
            if (values > 0).any()
            else values > 0
        )
        if not mask.any():
            raise ValueError("image has no positive voxel: cannot compute a brain mask")
        logger.info("brain extraction (fov): %d voxels", int(mask.sum()))
        return mask, describe_brain_extraction(used, **options)
    if used != "otsu":
        img = np.where(finite, img, min(0.0, float(np.min(img[finite]))))
        box = _head_box(img, z, opts)
        mask, head = np.zeros(img.shape, bool), np.zeros(img.shape, bool)
        smooth = anisotropic_diffusion(img[box])
        mask[box], head[box] = _head_mask(smooth, z, opts, *_superior_axis(affine))
        ratio = head.sum() / max(int(mask.sum()), 1)
        logger.info("brain extraction: head / brain volume %.2f", ratio)
        if used == "auto":
            used = "head" if ratio >= opts["stripped_ratio"] else "otsu"
    if used == "otsu":
        mask, _ = segmentation.brain_mask(image, zooms=z, closing_mm=opts["closing_mm"])
    logger.info("brain extraction (%s): %d voxels", used, int(mask.sum()))
    return mask, describe_brain_extraction(used, **options)
