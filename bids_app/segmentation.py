"""Brain mask and three-class tissue segmentation (GM, WM, CSF) of a structural image.

Pure array code (DESIGN 2.1). Output labels: 0 background, 1 GM, 2 WM, 3 CSF
(:data:`TISSUE_LABELS`). Both functions return ``(array, description)``: the description
is the short method string for the mask sidecar (CONTRACT 2.2: "the sidecar of every
derived mask says which method made it"); ``describe_*`` build the same strings from
options alone.

Neither function is a skull stripper for raw heads: on images with skull and scalp the
``'otsu'`` mask relies on the erosion in ``opening_mm`` to detach the brain, which can
fail; provide a brain mask as a derivative (``desc-brain_mask``) for such data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from dipy.segment.mask import median_otsu
from dipy.segment.tissue import TissueClassifierHMRF
from scipy import ndimage as ndi
from skimage import filters, measure

from bids_app.regions import CSF, GM, WM, check_zooms

logger = logging.getLogger(__name__)

#: tissue label values of :func:`segment_tissue`
TISSUE_LABELS = {"GM": GM, "WM": WM, "CSF": CSF}

#: tissue labels in order of increasing mean intensity, per contrast
CLASS_ORDER = {
    "T1w": (CSF, GM, WM),
    "FLAIR": (CSF, WM, GM),
    "T2w": (WM, GM, CSF),
    "PDw": (WM, GM, CSF),
}

#: brain-mask methods
MASK_METHODS = {
    "otsu": "Otsu threshold of the log intensity after a 3x3x3 median filter, opening (ball "
    "{opening_mm:g} mm), largest component, hole filling, closing (ball {closing_mm:g} mm)",
    "median_otsu": "dipy median_otsu (median_radius={median_radius}, numpass={numpass}), "
    "largest component, hole filling",
}

#: tissue-segmentation methods
TISSUE_METHODS = {
    "hmrf": "dipy TissueClassifierHMRF on the brain-masked {contrast}, 3 classes, started "
    "from multi-Otsu, beta={beta:g}, max_iter={max_iter}, tolerance={tolerance:g}",
    "multiotsu": "scikit-image threshold_multiotsu on the brain-masked {contrast}, 3 classes",
}
_FILLING = "; lesions filled with the median WM intensity before classification and labelled WM"


def _choice(value: str, choices: dict, what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what}={value!r}: expected one of {sorted(choices)}")


def describe_brain_mask(
    *,
    method: str = "otsu",
    opening_mm: float = 4.0,
    closing_mm: float = 4.0,
    median_radius: int = 2,
    numpass: int = 2,
) -> str:
    """Return the method description of :func:`brain_mask` called with these options."""
    _choice(method, MASK_METHODS, "method")
    return MASK_METHODS[method].format(
        opening_mm=opening_mm,
        closing_mm=closing_mm,
        median_radius=median_radius,
        numpass=numpass,
    )


def describe_tissue_segmentation(
    *,
    method: str = "hmrf",
    contrast: str = "T1w",
    beta: float = 0.6,
    max_iter: int = 20,
    tolerance: float = 1e-5,
    lesion_filling: bool = False,
) -> str:
    """Return the method description of :func:`segment_tissue` called with these options.

    ``lesion_filling`` says whether an ``exclude`` mask was passed.
    """
    _choice(method, TISSUE_METHODS, "method")
    _choice(contrast, CLASS_ORDER, "contrast")
    text = TISSUE_METHODS[method].format(
        contrast=contrast, beta=beta, max_iter=max_iter, tolerance=tolerance
    )
    return text + (_FILLING if lesion_filling else "")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels = measure.label(mask, connectivity=1)
    if labels.max() == 0:
        return mask
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == np.argmax(counts)


def _dilate(mask: np.ndarray, radius_mm: float, zooms: np.ndarray) -> np.ndarray:
    """Dilate by a Euclidean ball of ``radius_mm`` (EDT threshold; exact for any zooms)."""
    if not mask.any():
        return mask
    return ndi.distance_transform_edt(~mask, sampling=zooms) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: float, zooms: np.ndarray) -> np.ndarray:
    """Erode by a Euclidean ball of ``radius_mm``; outside the image counts as background."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
    return depth > radius_mm


def _open_fill_close(
    mask: np.ndarray, z: np.ndarray, opening_mm: float, closing_mm: float
) -> np.ndarray:
    """Open (keeping the largest component), fill holes and close, with balls in mm."""
    if opening_mm > 0:
        core = _largest_component(_erode(mask, opening_mm, z))
        mask = mask & _dilate(core, opening_mm, z) if core.any() else mask
    mask = ndi.binary_fill_holes(_largest_component(mask))
    if closing_mm > 0:
        pad = int(np.ceil(closing_mm / z.min())) + 1
        grown = _dilate(np.pad(mask, pad), closing_mm, z)
        mask = _erode(grown, closing_mm, z)[pad:-pad, pad:-pad, pad:-pad] | mask
    return mask


def brain_mask(
    image: np.ndarray,
    *,
    zooms: Sequence[float],
    method: str = "otsu",
    opening_mm: float = 4.0,
    closing_mm: float = 4.0,
    median_radius: int = 2,
    numpass: int = 2,
) -> tuple[np.ndarray, str]:
    """Compute a brain mask from a skull-stripped-looking structural or qMRI image.

    Parameters
    ----------
    image : (X, Y, Z) ndarray
        Structural (T1w, FLAIR, ...) or parameter map; NaN/inf count as background.
    zooms : sequence of 3 float
        Voxel size in mm (the morphology radii are in mm).
    method : {'otsu', 'median_otsu'}, optional
        ``'otsu'``: 3x3x3 median filter, Otsu threshold (skimage) of the log intensity,
        opening with a ball of ``opening_mm`` (erosion, largest 6-connected component,
        dilation back inside the threshold mask: detaches thin bridges to non-brain
        tissue), hole filling, then a closing with a ball of ``closing_mm`` and hole filling
        again. ``'median_otsu'``: dipy's :func:`~dipy.segment.mask.median_otsu` (radius in
        voxels), largest component and hole filling.
    opening_mm, closing_mm : float, optional
        Ball radii in mm for ``'otsu'`` (0 disables a step).
    median_radius, numpass : int, optional
        Options of dipy's ``median_otsu``.

    Returns
    -------
    mask : (X, Y, Z) bool ndarray
    description : str
        Method string for sidecars (:func:`describe_brain_mask` with the same options).

    Notes
    -----
    ``'otsu'`` thresholds the log intensity: on a T1w image the CSF (about a quarter of
    the WM signal) falls below a linear Otsu threshold between background and tissue, so
    the extra-axial CSF would be lost (Dice 0.86 instead of 0.99 on the test phantom); on
    the log scale it groups with the tissue. On FLAIR the CSF is as dark as the
    background: only the enclosed CSF (ventricles) gets in, through hole filling.
    """
    _choice(method, MASK_METHODS, "method")
    z = check_zooms(zooms)
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"image has shape {img.shape}: expected a 3-D image")
    finite = np.isfinite(img)
    if not finite.any():
        raise ValueError("image has no finite voxel: cannot compute a brain mask")
    img = np.where(finite, img, min(0.0, float(np.min(img[finite]))))
    if method == "median_otsu":
        _, mask = median_otsu(img, median_radius=median_radius, numpass=numpass)
        mask = _largest_component(mask)
    else:
        smooth = ndi.median_filter(img, size=3)
        eps = 1e-3 * np.percentile(smooth, 99.9)
        if not eps > 0:
            raise ValueError("image has no positive voxel: cannot compute a brain mask")
        log_smooth = np.log(np.maximum(smooth, eps))
        mask = log_smooth > filters.threshold_otsu(log_smooth.ravel())
        # work inside the bounding box of the threshold mask (+ the closing margin)
        margin = int(np.ceil(max(opening_mm, closing_mm) / z.min())) + 1
        box = ndi.find_objects(mask.astype(np.uint8))
        if box:
            box = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box[0])
            out = np.zeros(mask.shape, bool)
            out[box] = _open_fill_close(mask[box], z, opening_mm, closing_mm)
            mask = out
    mask = ndi.binary_fill_holes(mask)
    logger.info("brain mask (%s): %d voxels", method, int(mask.sum()))
    description = describe_brain_mask(
        method=method,
        opening_mm=opening_mm,
        closing_mm=closing_mm,
        median_radius=median_radius,
        numpass=numpass,
    )
    return mask, description


def _normalise(image: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Map intensities to [0.05, 1] using the 0.5th-99.5th percentiles of ``voxels``."""
    lo, hi = np.percentile(image[voxels], [0.5, 99.5])
    if not hi > lo:
        raise ValueError("image is constant inside the brain mask: cannot segment tissue")
    return 0.05 + 0.95 * np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def _standardise(x: np.ndarray, brain: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Map the two multi-Otsu thresholds to 3/8 and 5/8 (piecewise linear, monotone).

    dipy's HMRF starts from class means spread uniformly over the image range, the
    background (about 0) being one of its classes: means 0, 1/4, 1/2, 3/4 on a [0, 1]
    image, i.e. a first labelling with boundaries at 1/8, 3/8 and 5/8. Mapping the brain
    range to [0.15, 1] with the multi-Otsu thresholds at 3/8 and 5/8 makes that first
    labelling the multi-Otsu one; otherwise a dark tissue class (CSF on T1w or FLAIR) can
    start in the background class and HMRF ends with an empty class. The map is linear
    inside each class, so class shapes are kept.
    """
    lo, hi = np.percentile(x[brain], [0.0, 100.0])
    knots = np.array([lo, *thresholds, hi], dtype=np.float64)
    values = np.array([0.15, 0.375, 0.625, 1.0])
    keep = np.concatenate([[True], np.diff(knots) > 0])
    return np.where(brain, np.interp(x, knots[keep], values[keep]), 0.0)


def _hmrf(x: np.ndarray, brain: np.ndarray, *, beta, max_iter, tolerance, rng) -> np.ndarray:
    """Run dipy's HMRF on the brain bounding box; return classes 0..3 (0 = background)."""
    box = ndi.find_objects(brain.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    xb, bb = x[box].copy(), brain[box]
    # dipy replaces exact zeros with unseeded noise (0.001 + N(0, 1e-4)); give the background
    # the same values from our own generator instead, so the result is reproducible.
    xb[~bb] = np.abs(0.001 + rng.normal(0.0, 1e-4, size=int((~bb).sum())))
    classifier = TissueClassifierHMRF(verbose=False)
    _, final, _ = classifier.classify(xb, 3, beta, tolerance=tolerance, max_iter=max_iter)
    out = np.zeros(x.shape, np.int16)
    out[box] = np.where(bb, final.astype(np.int16), 0)
    return out


def segment_tissue(
    image: np.ndarray,
    brain_mask: np.ndarray,
    *,
    contrast: str = "T1w",
    method: str = "hmrf",
    exclude: np.ndarray | None = None,
    beta: float = 0.6,
    max_iter: int = 20,
    tolerance: float = 1e-5,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, str]:
    """Segment the brain into GM, WM and CSF.

    Intensities inside the brain are mapped to [0.05, 1] (0.5th-99.5th percentiles,
    clipped). The three classes found are then named by their mean intensity with
    :data:`CLASS_ORDER` (T1w: CSF < GM < WM; FLAIR: CSF < WM < GM; T2w/PDw:
    WM < GM < CSF).

    Lesion voxels (``exclude``) are "filled" before classification, as in lesion filling
    (Chard et al. 2010; Battaglini et al. 2012): their intensity is replaced with the
    median intensity of the WM class of a first multi-Otsu pass over the other brain
    voxels, so lesions do not bias the class estimates. They are labelled WM in the output
    (and reported as lesions by :func:`bids_app.regions.build_regions`).

    Parameters
    ----------
    image : (X, Y, Z) ndarray
        Structural image (bias-corrected if possible).
    brain_mask : (X, Y, Z) bool ndarray
        Voxels to classify (NaN/inf voxels are left out).
    contrast : {'T1w', 'FLAIR', 'T2w', 'PDw'}, optional
        Contrast of ``image``; decides which class is which.
    method : {'hmrf', 'multiotsu'}, optional
        ``'hmrf'``: dipy :class:`~dipy.segment.tissue.TissueClassifierHMRF` (Gaussian classes
        with a Potts prior, ICM + EM; Zhang et al. 2001) on the brain bounding box, started
        from the multi-Otsu labelling (see ``_standardise``). ``'multiotsu'``:
        scikit-image ``threshold_multiotsu`` with 3 classes, no spatial prior, 50-100x
        faster. On a T1w simulated from the ICBM-2009a tissue map of the OSIPI ASL-DRO (1 mm
        Gaussian blur for partial volume, Rician noise), voxels right at 2 mm:
        SNR 20: 0.975 (hmrf) vs 0.964 (multiotsu); SNR 10: 0.92 vs 0.76.
    exclude : (X, Y, Z) bool ndarray, optional
        Lesion mask (see above).
    beta : float, optional
        HMRF smoothness (Potts) parameter, in nats per disagreeing neighbour. dipy's
        example uses 0.1, which is worse than multi-Otsu on the phantom above (SNR 10:
        0.70 vs 0.76); 0.3, 0.6 and 1.0 give 0.89, 0.93 and 0.90: default 0.6.
    max_iter : int, optional
        Maximum number of HMRF iterations. The accuracy stops changing after about 20
        (SNR 10: 0.907, 0.916, 0.923, 0.925 after 5, 10, 20, 40); each costs about 2 s
        for a 1 mm brain.
    tolerance : float, optional
        HMRF relative energy-change tolerance for early stopping.
    rng : numpy.random.Generator, optional
        Draws the tiny background values HMRF needs (see ``_hmrf``); default
        ``np.random.default_rng(0)``, so that calls are reproducible.

    Returns
    -------
    labels : (X, Y, Z) uint8 ndarray
        0 outside the brain, 1 GM, 2 WM, 3 CSF.
    description : str
        Method string for sidecars (:func:`describe_tissue_segmentation` with the same
        options), e.g. ``'dipy TissueClassifierHMRF on the brain-masked T1w, 3 classes,
        started from multi-Otsu, beta=0.6, max_iter=20, tolerance=1e-05'``.
    """
    _choice(method, TISSUE_METHODS, "method")
    _choice(contrast, CLASS_ORDER, "contrast")
    img = np.asarray(image, dtype=np.float64)
    brain = np.asarray(brain_mask, dtype=bool)
    lesion = np.zeros(img.shape, bool) if exclude is None else np.asarray(exclude) != 0
    for name, arr in (("brain_mask", brain), ("exclude", lesion)):
        if arr.shape != img.shape or img.ndim != 3:
            raise ValueError(f"{name} has shape {arr.shape}: expected {img.shape} (3-D image)")
    brain = brain & np.isfinite(img)
    lesion &= brain
    fit = brain & ~lesion
    if fit.sum() < 100:
        raise ValueError(f"only {int(fit.sum())} brain voxels outside lesions: cannot segment")
    order = np.asarray(CLASS_ORDER[contrast])
    x = np.where(brain, _normalise(np.where(np.isfinite(img), img, 0.0), fit), 0.0)
    thresholds = filters.threshold_multiotsu(x[fit], classes=3)
    rank = np.digitize(x, thresholds)  # 0, 1, 2 = dark, middle, bright
    if lesion.any():
        wm_rank = int(np.flatnonzero(order == WM)[0])
        x[lesion] = np.median(x[fit & (rank == wm_rank)])
    if method == "multiotsu":
        labels = order[rank]
    else:
        rng = np.random.default_rng(0) if rng is None else rng
        x = _standardise(x, brain, thresholds)
        classes = _hmrf(x, brain, beta=beta, max_iter=max_iter, tolerance=tolerance, rng=rng)
        means = np.array(ndi.mean(x, labels=classes * fit, index=[1, 2, 3]))
        if np.any(classes[brain] == 0) or not np.all(np.isfinite(means)):
            logger.warning("HMRF left brain voxels unclassified or a class empty")
        means = np.where(np.isfinite(means), means, np.inf)
        ranks = np.argsort(np.argsort(means))  # class k (1..3) -> intensity rank
        lut = np.concatenate([[order[0]], order[ranks]])  # class 0 in the brain -> darkest
        labels = lut[classes]
    labels = np.where(brain, labels, 0).astype(np.uint8)
    labels[lesion] = WM
    logger.info(
        "tissue (%s, %s): GM %d, WM %d, CSF %d voxels",
        method,
        contrast,
        *(int(np.count_nonzero(labels == k)) for k in (GM, WM, CSF)),
    )
    description = describe_tissue_segmentation(
        method=method,
        contrast=contrast,
        beta=beta,
        max_iter=max_iter,
        tolerance=tolerance,
        lesion_filling=bool(lesion.any()),
    )
    return labels, description
