"""Unsupervised white-matter lesion segmentation from FLAIR (T1w, T2w optional).

Pure array code (DESIGN 2.1), used when no lesion mask is given. The method is our own
implementation in the spirit of the lesion growth algorithm (LGA) of Schmidt et al.,
"An automated tool for detection of FLAIR-hyperintense white-matter lesions in Multiple
Sclerosis", NeuroImage 2012;59:3774-3783: a tissue segmentation (from the T1w when given)
defines the white matter; lesion *seeds* are white-matter voxels that are FLAIR-hyperintense
even relative to the grey matter (threshold ``kappa``, LGA's "belief map" against GM);
lesions then *grow* a short geodesic distance into neighbouring voxels that are
hyperintense relative to the white matter (the partial-volume border). Intensities are
normalised by robust tissue references: the mode and the full width at half maximum of the
FLAIR histogram of each tissue class (the lesions form a tail that moves neither; the
WM-peak normalisation of e.g. Jain et al., "MSmetrix", NeuroImage: Clinical
2015;8:367-375).

Steps (:func:`segment_lesions`):

1. Tissue labels (0 background, 1 GM, 2 WM, 3 CSF, :mod:`bids_app.segmentation`): given,
   or :func:`~bids_app.segmentation.segment_tissue` (``tissue_method``) on the T1w, else
   on the FLAIR itself (lesions then fall in the bright "GM" class, which the WM region
   below encloses).
2. Gaussian smoothing of the FLAIR inside the brain (normalised convolution, sigma
   ``smoothing_mm``). FLAIR noise is large (about 8 % of the WM signal per 1 mm voxel on
   the open-ms-data scan) while lesions are at least a few mm wide: smoothing by 1 mm
   shrinks the WM peak width from 10 % to 6 % of its mode.
3. FLAIR reference per class c in {GM, WM}: mode m_c and sigma s_c = FWHM / 2.3548 of the
   histogram peak (:func:`peak_stats`); z-scores z_c = (FLAIR - m_c) / s_c.
4. WM region: WM labels closed with a ball of ``closing_mm`` and hole-filled (encloses the
   T1-hypointense lesion cores that the T1w tissue step labels GM or CSF), minus the voxels
   within ``cortex_mm`` of the outside of the brain.
5. Seeds: WM-region voxels with z_GM > ``kappa`` and z_WM > ``kappa`` (3.5: a GM voxel of
   the smoothed FLAIR passes with probability about 2e-4 under the Gaussian peak model).
   The WM condition only matters when the FLAIR GM peak is not above the WM one (tissue
   labels that do not match the FLAIR, or a FLAIR with little GM/WM contrast): the GM
   condition alone then seeded a large part of the WM (33,130 voxels for 487 true ones on
   a synthetic subject whose FLAIR WM peak was 4 % above the GM one).
6. Growth: geodesic dilation of the seeds by ``grow_mm`` (in steps of the smallest voxel
   size, 6-connected) into WM-region voxels with z_WM > ``grow_z`` and at least
   ``grow_fraction`` of the way from the WM mode to the seed threshold (0.5: the
   half-partial-volume border of a lesion at the seed intensity; this floor matters when
   the WM peak is narrow, e.g. on denoised or synthetic images). With a T2w, seeds and
   growth voxels must also be T2w-hyperintense relative to the WM (z > ``t2w_z``).
7. Lesions: connected components (``connectivity``) of at least ``min_volume_mm3``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from bids_app.lesionseg_options import (
    LESION_OPTIONS,
    METHOD,
    check_options,
    describe_lesion_segmentation,
    option_defaults,
)
from bids_app.regions import CSF, GM, WM, check_zooms, lesion_labels
from bids_app.segmentation import segment_tissue

__all__ = [
    "LESION_OPTIONS",
    "check_options",
    "describe_lesion_segmentation",
    "option_defaults",
    "peak_stats",
    "segment_lesions",
    "wm_region",
]

logger = logging.getLogger(__name__)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def peak_stats(values: np.ndarray, *, bins: int = 256) -> tuple[float, float]:
    """Mode and FWHM-derived sigma of the main peak of an intensity distribution.

    The histogram (``bins`` bins over the 0.5th-99.5th percentiles) is smoothed with a
    Gaussian of 2 bins; the mode is its maximum and sigma = FWHM / (2 sqrt(2 ln 2)), the
    FWHM being measured between the half-maximum crossings on each side of the mode
    (linear interpolation). Tails (lesions, partial volume) change neither.

    Parameters
    ----------
    values : (N,) ndarray
        Intensities (non-finite ones are ignored), N >= 50.
    bins : int, optional
        Number of histogram bins.

    Returns
    -------
    mode, sigma : float
        In the units of ``values``; sigma > 0 (at least one bin width).

    Raises
    ------
    ValueError
        For fewer than 50 finite values or a constant distribution.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 50:
        raise ValueError(f"only {x.size} voxels in a tissue class: cannot estimate its peak")
    lo, hi = np.percentile(x, [0.5, 99.5])
    if not hi > lo:
        raise ValueError("constant intensities in a tissue class: cannot estimate its peak")
    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    hist = ndi.gaussian_filter1d(hist.astype(np.float64), 2.0, mode="constant")
    centres = 0.5 * (edges[1:] + edges[:-1])
    k = int(np.argmax(hist))
    half = 0.5 * hist[k]
    below = np.flatnonzero(hist[:k] < half)
    above = np.flatnonzero(hist[k:] < half)

    def cross(a: int, b: int) -> float:
        ha, hb = hist[a], hist[b]
        t = 0.0 if hb == ha else (half - ha) / (hb - ha)
        return float(centres[a] + np.clip(t, 0.0, 1.0) * (centres[b] - centres[a]))

    left = cross(below[-1], below[-1] + 1) if below.size else float(centres[0])
    right = cross(k + above[0] - 1, k + above[0]) if above.size else float(centres[-1])
    sigma = max((right - left) * _FWHM_TO_SIGMA, (hi - lo) / bins)
    return float(centres[k]), float(sigma)


def _tissue_labels(flair, brain, t1w, tissue, method, rng) -> tuple[np.ndarray, str]:
    if tissue is not None:
        return np.where(brain, np.asarray(tissue), 0).astype(np.uint8), "given"
    if t1w is not None:
        t1 = np.asarray(t1w, dtype=np.float64)
        labels, _ = segment_tissue(t1, brain & np.isfinite(t1), method=method, rng=rng)
        return labels, "T1w"
    labels, _ = segment_tissue(flair, brain, contrast="FLAIR", method=method, rng=rng)
    return labels, "FLAIR"


def _smooth(img: np.ndarray, mask: np.ndarray, sigma_mm: float, zooms: np.ndarray):
    """Gaussian smoothing inside ``mask`` by normalised convolution (no edge darkening)."""
    if sigma_mm <= 0:
        return img
    sigma = sigma_mm / zooms
    weight = ndi.gaussian_filter(mask.astype(np.float64), sigma)
    num = ndi.gaussian_filter(np.where(mask, img, 0.0), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, num / np.maximum(weight, 1e-6), img)


def _near(mask: np.ndarray, radius_mm: float, zooms: np.ndarray) -> np.ndarray:
    if radius_mm <= 0 or not mask.any():
        return mask
    return ndi.distance_transform_edt(~mask, sampling=zooms) <= radius_mm


def wm_region(wm: np.ndarray, closing_mm: float, zooms: Sequence[float]) -> np.ndarray:
    """Close the WM labels with a Euclidean ball and fill the holes.

    Parameters
    ----------
    wm : (X, Y, Z) bool ndarray
        White-matter labels.
    closing_mm : float
        Ball radius in mm (0: hole filling only).
    zooms : sequence of 3 float
        Voxel size in mm.

    Returns
    -------
    (X, Y, Z) bool ndarray
        Contains ``wm``.
    """
    z = check_zooms(zooms)
    wm = np.asarray(wm, dtype=bool)
    if closing_mm > 0 and wm.any():
        pad = int(np.ceil(closing_mm / z.min())) + 1
        grown = np.pad(_near(wm, closing_mm, z), pad)
        depth = ndi.distance_transform_edt(grown, sampling=z)
        wm = (depth > closing_mm)[pad:-pad, pad:-pad, pad:-pad] | wm
    return ndi.binary_fill_holes(wm)


def _check_inputs(flair, brain, t1w, t2w, tissue):
    img = np.asarray(flair, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"flair has shape {img.shape}: expected a 3-D image")
    arrays = {"brain": brain, "t1w": t1w, "t2w": t2w, "tissue": tissue}
    for name, arr in arrays.items():
        if arr is not None and np.shape(arr) != img.shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}: expected {img.shape} (flair)")
    mask = (np.asarray(brain) != 0) & np.isfinite(img)
    if mask.sum() < 100:
        raise ValueError(f"brain mask has {int(mask.sum())} finite FLAIR voxels: need >= 100")
    if tissue is not None:
        lab = np.asarray(tissue)
        if not np.all(np.isin(lab[mask], (0, GM, WM, CSF))):
            raise ValueError("tissue labels: expected 0, 1 (GM), 2 (WM) or 3 (CSF)")
    return img, mask


def _peaks(img: np.ndarray, labels: np.ndarray, name: str) -> dict[str, tuple[float, float]]:
    out = {}
    for cls, code in (("WM", WM), ("GM", GM)):
        try:
            out[cls] = peak_stats(img[labels == code])
        except ValueError as err:
            raise ValueError(f"{name} {cls} class: {err}") from None
    return out


def segment_lesions(
    flair: np.ndarray,
    brain: np.ndarray,
    zooms: Sequence[float],
    *,
    t1w: np.ndarray | None = None,
    t2w: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    **options,
) -> tuple[np.ndarray, dict]:
    """Segment FLAIR-hyperintense white-matter lesions without supervision.

    Parameters
    ----------
    flair : (X, Y, Z) ndarray
        FLAIR image (bias-corrected if possible), any positive scale.
    brain : (X, Y, Z) bool ndarray
        Brain mask (e.g. :func:`bids_app.segmentation.brain_mask`); non-finite FLAIR voxels
        are left out.
    zooms : sequence of 3 float
        Voxel size in mm.
    t1w, t2w : (X, Y, Z) ndarray, optional
        Co-registered T1w (used for the tissue labels when ``tissue`` is not given) and
        T2w (lesion voxels must be T2w-hyperintense relative to the WM).
    tissue : (X, Y, Z) int ndarray, optional
        Tissue labels (0, 1 GM, 2 WM, 3 CSF). Default: computed with ``tissue_method``
        from the T1w, else from the FLAIR.
    rng : numpy.random.Generator, optional
        Passed to ``segment_tissue`` (HMRF background values); default seed 0.
    **options
        Any of :data:`LESION_OPTIONS`; the module docstring gives the steps.

    Returns
    -------
    lesion : (X, Y, Z) bool ndarray
        Lesion mask.
    info : dict
        JSON-ready record for the mask sidecar: ``Method``, ``Description``
        (:func:`describe_lesion_segmentation`), ``Options`` (all of them), ``Contrasts``,
        ``TissueSource``, ``Thresholds`` (FLAIR peaks and the seed / growth intensities
        they give, in the units of ``flair`` after smoothing) and ``NumberOfLesions``.

    Raises
    ------
    ValueError
        For mismatched shapes, a brain mask with fewer than 100 voxels, invalid tissue
        labels, a WM or GM class too small for its peak, or an invalid option.
    """
    opts = check_options(options)
    z = check_zooms(zooms)
    img, mask = _check_inputs(flair, brain, t1w, t2w, tissue)
    rng = np.random.default_rng(0) if rng is None else rng
    # work in the bounding box of the brain (+ the closing radius): same result, faster
    pad = int(np.ceil(opts["closing_mm"] / z.min())) + 2
    box = tuple(
        slice(max(s.start - pad, 0), s.stop + pad)
        for s in ndi.find_objects(mask.astype(np.uint8))[0]
    )
    lesion = np.zeros(img.shape, bool)
    lesion[box], info = _segment(
        img[box],
        mask[box],
        z,
        None if t1w is None else np.asarray(t1w)[box],
        None if t2w is None else np.asarray(t2w)[box],
        None if tissue is None else np.asarray(tissue)[box],
        rng,
        opts,
    )
    info["Description"] = describe_lesion_segmentation(
        tissue_source=info["TissueSource"], contrasts=tuple(info["Contrasts"]), **options
    )
    return lesion, info


def _segment(img, mask, z, t1w, t2w, tissue, rng, opts) -> tuple[np.ndarray, dict]:
    """Steps 1-7 of the module docstring on checked, cropped arrays."""
    labels, source = _tissue_labels(img, mask, t1w, tissue, opts["tissue_method"], rng)
    labels = np.where(mask, labels, 0)
    img = _smooth(img, mask, opts["smoothing_mm"], z)
    peaks = _peaks(img, labels, "FLAIR")
    (m_wm, s_wm), (m_gm, s_gm) = peaks["WM"], peaks["GM"]
    logger.info("FLAIR peaks: WM %.4g (sigma %.3g), GM %.4g (sigma %.3g)", m_wm, s_wm, m_gm, s_gm)
    if m_gm <= m_wm:
        logger.warning(
            "FLAIR GM peak (%.4g) not above the WM peak (%.4g): the tissue labels do not "
            "match the FLAIR contrast, or the FLAIR has little GM/WM contrast; seeds must "
            "be hyperintense relative to the WM peak as well",
            m_gm,
            m_wm,
        )
    # hyperintense relative to both tissue peaks: the GM one (LGA) decides whenever the
    # FLAIR GM peak is above the WM one, as on real FLAIR (patient26: GM/WM 1.14)
    seed_min = max(m_gm + opts["kappa"] * s_gm, m_wm + opts["kappa"] * s_wm)
    grow_min = max(m_wm + opts["grow_z"] * s_wm, m_wm + opts["grow_fraction"] * (seed_min - m_wm))

    depth = ndi.distance_transform_edt(np.pad(ndi.binary_fill_holes(mask), 1), sampling=z)
    inside = mask & (depth[1:-1, 1:-1, 1:-1] > opts["cortex_mm"])
    region = wm_region(labels == WM, opts["closing_mm"], z) & inside
    seeds = region & (img > seed_min)
    domain = region & (img > grow_min)
    contrasts = ["FLAIR"] + (["T1w"] if t1w is not None else [])
    thresholds = {
        "FLAIR_WM_mode": m_wm,
        "FLAIR_WM_sigma": s_wm,
        "FLAIR_GM_mode": m_gm,
        "FLAIR_GM_sigma": s_gm,
        "FLAIR_seed_min": seed_min,
        "FLAIR_grow_min": grow_min,
    }
    if t2w is not None:
        t2 = _smooth(np.asarray(t2w, dtype=np.float64), mask, opts["smoothing_mm"], z)
        m2, s2 = _peaks(t2, labels, "T2w")["WM"]
        t2_min = m2 + opts["t2w_z"] * s2
        domain &= t2 > t2_min
        seeds &= domain
        contrasts.append("T2w")
        thresholds |= {"T2w_WM_mode": m2, "T2w_WM_sigma": s2, "T2w_min": t2_min}
    steps = round(float(opts["grow_mm"] / z.min()))
    lesion = seeds
    if steps > 0 and seeds.any():
        step = ndi.generate_binary_structure(3, 1)
        lesion = ndi.binary_dilation(seeds, step, iterations=steps, mask=domain) | seeds
    labelled = lesion_labels(
        lesion,
        zooms=z,
        connectivity=opts["connectivity"],
        min_volume_mm3=opts["min_volume_mm3"],
    )
    lesion = labelled > 0
    n_lesions = int(labelled.max())
    logger.info(
        "lesion segmentation: %d seed voxels, %d lesions, %d lesion voxels",
        int(seeds.sum()),
        n_lesions,
        int(lesion.sum()),
    )
    info = {
        "Method": METHOD,
        "EstimationReference": "Schmidt P et al., NeuroImage 2012;59:3774-3783 (LGA)",
        "Options": opts,
        "Contrasts": contrasts,
        "TissueSource": source,
        "Thresholds": {k: round(float(v), 6) for k, v in thresholds.items()},
        "NumberOfLesions": n_lesions,
    }
    return lesion, info
