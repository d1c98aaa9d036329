"""Region masks (lesion, NAWM, NAGM, perilesional rings) and per-region statistics.

Pure array code (DESIGN 2.1): label images and maps in, boolean masks and tidy
:class:`pandas.DataFrame` tables out. Every distance is Euclidean and in millimetres,
computed with :func:`scipy.ndimage.distance_transform_edt` and ``sampling=zooms``, so
anisotropic voxels are handled exactly. The per-lesion table is
:func:`bids_app.lesions.lesion_table`.

Tissue labels follow :mod:`bids_app.segmentation`: 0 background, 1 GM, 2 WM, 3 CSF.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import measure, segmentation

logger = logging.getLogger(__name__)

#: tissue label values (same as :data:`bids_app.segmentation.TISSUE_LABELS`)
GM, WM, CSF = 1, 2, 3

#: neighbourhood size -> ``skimage.measure.label`` connectivity (1, 2 or 3 steps)
CONNECTIVITIES = {6: 1, 18: 2, 26: 3}

#: columns of :func:`region_stats`, in order (CONTRACT 4.1 minus the BIDS identifiers)
STATS_COLUMNS = (
    "map",
    "region",
    "n_voxels",
    "volume_mm3",
    "mean",
    "median",
    "std",
    "p05",
    "p95",
    "n_invalid",
)


def check_zooms(zooms: Sequence[float], ndim: int = 3) -> np.ndarray:
    """Return ``zooms`` as a float array after checking it has ``ndim`` positive values."""
    z = np.asarray(zooms, dtype=np.float64).ravel()
    if z.size != ndim or not np.all(np.isfinite(z)) or np.any(z <= 0):
        raise ValueError(f"zooms={tuple(zooms)!r}: expected {ndim} positive voxel sizes in mm")
    return z


def as_binary_mask(mask: np.ndarray, *, name: str = "lesion_mask") -> np.ndarray:
    """Turn a lesion (or any) mask into a boolean array.

    Parameters
    ----------
    mask : (X, Y, Z) array_like
        Boolean; integer-valued (any dtype, e.g. a float32 NIfTI holding 0/1, or a
        label image with several lesion labels): non-zero means "in the mask";
        or probabilistic (values in [0, 1], some not integers): thresholded at
        ``>= 0.5``. Non-finite values (NaN from resampling outside the field of
        view) are outside the mask.
    name : str, optional
        Used in error messages.

    Returns
    -------
    (X, Y, Z) bool ndarray

    Raises
    ------
    ValueError
        If the values are not integers and not within [0, 1].

    Examples
    --------
    >>> as_binary_mask(np.array([0.0, 0.4, 0.5, 1.0])).tolist()
    [False, False, True, True]
    >>> as_binary_mask(np.array([0, 3, 7])).tolist()
    [False, True, True]
    """
    m = np.asarray(mask)
    if m.dtype == bool:
        return m.copy()
    if m.dtype.kind in "iu":
        return m != 0
    m = np.where(np.isfinite(m), m, 0.0)
    if np.all(m == np.round(m)):
        return m != 0
    if m.min() < 0 or m.max() > 1:
        raise ValueError(
            f"{name}: non-integer values outside [0, 1] (range {m.min():g}..{m.max():g}); "
            "expected a binary, integer-label or probabilistic mask"
        )
    return m >= 0.5


def lesion_labels(
    lesion_mask: np.ndarray,
    *,
    zooms: Sequence[float],
    connectivity: int = 26,
    min_volume_mm3: float = 0.0,
) -> np.ndarray:
    """Label each connected lesion with its own integer.

    Parameters
    ----------
    lesion_mask : (X, Y, Z) array_like
        Binary, probabilistic or integer-label lesion mask; see :func:`as_binary_mask`
        (an integer mask with several labels is read as "non-zero = lesion" and
        re-labelled by connectivity).
    zooms : sequence of 3 float
        Voxel size in mm.
    connectivity : {26, 18, 6}, optional
        Voxels are in the same lesion when they share a face (6), a face or an edge (18),
        or a face, an edge or a corner (26). The default 26 never splits touching voxels
        into two lesions, so thin lesions running obliquely to the voxel grid (e.g.
        Dawson's fingers) stay whole; it is also the foreground connectivity paired with a
        6-connected background in 3-D digital topology, and FSL ``cluster``'s default.
        SCT's ``sct_analyze_lesion`` uses 18 (``skimage.measure.label(connectivity=2)``):
        pass 18 to match it. 6 splits most and gives the highest counts.
    min_volume_mm3 : float, optional
        Components with a volume (voxel count x voxel volume) strictly below this are
        dropped (e.g. 3 mm^3 or 10 mm^3 for lesion-wise counts). Default 0: keep all.

    Returns
    -------
    (X, Y, Z) int32 ndarray
        0 outside lesions, lesions numbered 1..N in raster (C) order of their first
        voxel (smallest flat index), so the numbering is deterministic.

    Examples
    --------
    >>> m = np.zeros((5, 1, 1), bool); m[0] = m[3:] = True
    >>> lesion_labels(m, zooms=(1, 1, 1)).ravel().tolist()
    [1, 0, 0, 2, 2]
    >>> lesion_labels(m, zooms=(1, 1, 1), min_volume_mm3=2).ravel().tolist()
    [0, 0, 0, 1, 1]
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity={connectivity!r}: expected one of {list(CONNECTIVITIES)}")
    mask = as_binary_mask(lesion_mask)
    if mask.ndim != 3:
        raise ValueError(f"lesion_mask has shape {mask.shape}: expected a 3-D image")
    voxel_mm3 = float(np.prod(check_zooms(zooms)))
    labels = measure.label(mask, connectivity=CONNECTIVITIES[connectivity]).astype(np.int32)
    if min_volume_mm3 > 0 and labels.max() > 0:
        counts = np.bincount(labels.ravel())
        small = np.flatnonzero(counts * voxel_mm3 < min_volume_mm3)
        small = small[small > 0]
        if small.size:
            logger.info("dropping %d lesion(s) below %g mm^3", small.size, min_volume_mm3)
            labels[np.isin(labels, small)] = 0
            labels = segmentation.relabel_sequential(labels)[0].astype(np.int32)
    return labels


def _check_tissue(tissue: np.ndarray) -> np.ndarray:
    t = np.asarray(tissue)
    if t.ndim != 3:
        raise ValueError(f"tissue has shape {t.shape}: expected a 3-D label image")
    if t.dtype.kind == "f":
        t = np.where(np.isfinite(t), t, 0)
        if not np.all(t == np.round(t)):
            raise ValueError("tissue: non-integer labels; expected 0 bg, 1 GM, 2 WM, 3 CSF")
    t = t.astype(np.int16)
    bad = np.setdiff1d(np.unique(t), [0, GM, WM, CSF])
    if bad.size:
        raise ValueError(f"tissue: labels {bad.tolist()}; expected 0 bg, 1 GM, 2 WM, 3 CSF")
    return t


def lesion_distance(lesion: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    """Distance in mm from each voxel centre to the nearest lesion voxel centre.

    Parameters
    ----------
    lesion : (X, Y, Z) bool ndarray
    zooms : sequence of 3 float
        Voxel size in mm.

    Returns
    -------
    (X, Y, Z) float64 ndarray
        0 inside the lesion; ``inf`` everywhere when there is no lesion.
    """
    lesion = np.asarray(lesion, dtype=bool)
    if not lesion.any():
        return np.full(lesion.shape, np.inf)
    return ndi.distance_transform_edt(~lesion, sampling=check_zooms(zooms))


def build_regions(
    tissue: np.ndarray,
    lesion_mask: np.ndarray | None = None,
    *,
    zooms: Sequence[float],
    ring_radii_mm: Sequence[float] = (1.0, 2.0, 3.0),
    lesion_dilation_mm: float = 3.0,
    brain_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Build the region masks of CONTRACT 4.1 from a tissue label image and a lesion mask.

    Let ``d`` be the distance in mm from a voxel centre to the nearest lesion voxel
    centre (:func:`lesion_distance`; 0 in the lesion) and ``WMl``, ``GMl``, ``CSFl`` the
    voxels the tissue image labels 2, 1, 3. Then:

    ========================  ================================================================
    ``lesion``                lesion mask ∩ brain
    ``WM``                    ``WMl`` ∪ ``lesion`` (classifiers label lesion voxels GM, WM or
                              CSF; MS lesions are counted as white matter, as after lesion
                              filling, so WM volume includes them)
    ``GM``, ``CSF``           ``GMl`` − ``lesion``, ``CSFl`` − ``lesion`` (WM, GM, CSF are
                              disjoint and cover the labelled brain)
    ``NAWM``                  ``WMl`` with ``d > lesion_dilation_mm``
    ``NAGM``                  ``GMl`` with ``d > lesion_dilation_mm``
    ``perilesional_<r>mm``    ``WMl`` with ``r_prev < d <= r`` for consecutive radii of
                              ``ring_radii_mm`` (``r_prev`` = 0 for the first), i.e. bands
                              of distance from the lesion border, inside WM
    ========================  ================================================================

    Because distances are between voxel centres, a band can be empty: with 2 mm voxels
    the nearest non-lesion voxels are at d = 2 mm, so ``perilesional_1mm`` is empty. Such
    regions are returned empty (and reported with 0 voxels) rather than approximated.

    Parameters
    ----------
    tissue : (X, Y, Z) int ndarray
        0 background, 1 GM, 2 WM, 3 CSF.
    lesion_mask : (X, Y, Z) array_like or None, optional
        Lesion mask (see :func:`as_binary_mask`); None or empty gives empty lesion and
        ring regions and NAWM = WM.
    zooms : sequence of 3 float
        Voxel size in mm.
    ring_radii_mm : sequence of float, optional
        Increasing outer radii of the perilesional bands in mm. Default (1, 2, 3) gives
        ``perilesional_1mm``, ``perilesional_2mm``, ``perilesional_3mm``.
    lesion_dilation_mm : float, optional
        Lesions are dilated by this (a Euclidean ball, in mm) before being removed from WM
        and GM. The default 3 mm equals the outermost ring, so NAWM and the perilesional
        rings are disjoint: tissue next to lesions, where MTR and diffusion are known to be
        abnormal, does not count as normal-appearing.
    brain_mask : (X, Y, Z) bool ndarray, optional
        Brain mask; default ``tissue > 0``. Lesion voxels outside it are ignored.

    Returns
    -------
    dict of str to (X, Y, Z) bool ndarray
        Keys in the order ``lesion, WM, GM, CSF, NAWM, NAGM, perilesional_*``.

    Examples
    --------
    >>> tissue = np.full((7, 1, 1), 2); les = np.zeros((7, 1, 1), bool); les[0] = True
    >>> r = build_regions(tissue, les, zooms=(1, 1, 1))
    >>> [int(r[k].sum()) for k in ("lesion", "WM", "NAWM", "perilesional_1mm")]
    [1, 7, 3, 1]
    """
    t = _check_tissue(tissue)
    z = check_zooms(zooms)
    radii = np.asarray(ring_radii_mm, dtype=np.float64)
    if radii.ndim != 1 or np.any(radii <= 0) or np.any(np.diff(radii) <= 0):
        raise ValueError(f"ring_radii_mm={tuple(ring_radii_mm)!r}: expected increasing values > 0")
    if lesion_dilation_mm < 0:
        raise ValueError(f"lesion_dilation_mm={lesion_dilation_mm!r}: expected >= 0")
    brain = t > 0 if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    lesion = np.zeros(t.shape, bool) if lesion_mask is None else as_binary_mask(lesion_mask)
    for name, arr in (("lesion_mask", lesion), ("brain_mask", brain)):
        if arr.shape != t.shape:
            raise ValueError(f"{name} has shape {arr.shape}: expected {t.shape} (tissue)")
    lesion &= brain
    wm_label, gm_label = t == WM, t == GM
    d = lesion_distance(lesion, z)
    normal = d > lesion_dilation_mm
    regions = {
        "lesion": lesion,
        "WM": wm_label | lesion,
        "GM": gm_label & ~lesion,
        "CSF": (t == CSF) & ~lesion,
        "NAWM": wm_label & normal,
        "NAGM": gm_label & normal,
    }
    inner = 0.0
    for r in radii:
        regions[f"perilesional_{r:g}mm"] = wm_label & (d > inner) & (d <= r)
        inner = r
    return regions


def _finite_stats(values: np.ndarray) -> tuple[float, float, float, float, float]:
    """Mean, median, std (ddof=1), p05, p95 of the finite ``values`` (NaN when empty)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (np.nan,) * 5
    p05, median, p95 = np.percentile(v, [5.0, 50.0, 95.0])
    std = float(v.std(ddof=1)) if v.size > 1 else np.nan
    return float(v.mean()), float(median), std, float(p05), float(p95)


def region_stats(
    maps: Mapping[str, np.ndarray],
    regions: Mapping[str, np.ndarray],
    *,
    zooms: Sequence[float],
) -> pd.DataFrame:
    """Summarise each map in each region: one row per map x region.

    Parameters
    ----------
    maps : mapping of str to (X, Y, Z) ndarray
        Parameter maps (e.g. ``{'T1map': t1}``), all on the grid of the regions.
    regions : mapping of str to (X, Y, Z) bool ndarray
        Region masks, e.g. from :func:`build_regions`.
    zooms : sequence of 3 float
        Voxel size in mm (for ``volume_mm3``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`STATS_COLUMNS`, rows in map order then region order.
        ``n_voxels`` counts every voxel of the region and ``volume_mm3`` is
        ``n_voxels`` x voxel volume; ``n_invalid`` counts region voxels where the map is
        NaN or infinite. ``mean``, ``median``, ``std``, ``p05``, ``p95`` use only the
        finite voxels: ``std`` is the sample standard deviation (``ddof=1``, NaN with a
        single finite voxel), percentiles use NumPy's default linear interpolation.
        A region with no finite voxel (empty, or all NaN) has NaN statistics.

    Examples
    --------
    >>> m = np.array([1.0, 2.0, 3.0, np.nan]).reshape(4, 1, 1)
    >>> df = region_stats({"T1map": m}, {"all": np.ones((4, 1, 1), bool)}, zooms=(1, 1, 2))
    >>> df[["n_voxels", "volume_mm3", "mean", "std", "n_invalid"]].to_numpy().tolist()
    [[4.0, 8.0, 2.0, 1.0, 1.0]]
    """
    voxel_mm3 = float(np.prod(check_zooms(zooms)))
    shape = None
    index = {}
    for rname, mask in regions.items():
        mask = np.asarray(mask, dtype=bool)
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise ValueError(f"region {rname!r} has shape {mask.shape}: expected {shape}")
        index[rname] = np.flatnonzero(mask)
    rows = []
    for mname, data in maps.items():
        data = np.asarray(data)
        if shape is not None and data.shape != shape:
            raise ValueError(f"map {mname!r} has shape {data.shape}: expected {shape}")
        flat = data.reshape(-1)
        for rname, idx in index.items():
            values = flat[idx].astype(np.float64)
            n_invalid = int(np.count_nonzero(~np.isfinite(values)))
            rows.append(
                (mname, rname, idx.size, idx.size * voxel_mm3, *_finite_stats(values), n_invalid)
            )
    df = pd.DataFrame(rows, columns=list(STATS_COLUMNS))
    return df.astype(
        {
            "map": object,
            "region": object,
            "n_voxels": np.int64,
            "volume_mm3": np.float64,
            "n_invalid": np.int64,
        }
    )
