"""Per-lesion table: volume, world centroid, location and map statistics (core and rim).

Pure array code (DESIGN 2.1). Lesions come as an integer label image (e.g. from
:func:`bids_app.regions.lesion_labels`); geometry and NaN-aware intensity statistics use
:func:`skimage.measure.regionprops_table` with ``spacing=zooms``, so volumes are in mm^3.
Centroids are converted to world (scanner RAS+) millimetres with the image affine.

Location rules (first match wins, in this order):

``infratentorial``
    at least ``infratentorial_min_fraction`` (default 0.5) of the lesion's voxels lie in the
    posterior fossa (cerebellum or brainstem) of a proportional ICBM-2009a-like frame fitted
    to the brain mask (tissue > 0 or lesion) in world coordinates: the geometric rule of
    :mod:`bids_app.lesion_location` (needs the image affine; validated there);
``periventricular``
    some lesion voxel centre lies within ``periventricular_mm`` (default 3 mm) of a
    ventricle voxel centre (:func:`ventricle_mask`);
``juxtacortical``
    some lesion voxel has a GM voxel among its 26 neighbours ("touching the cortex,
    within one voxel"; tissue-label GM, so deep GM also counts);
``deep_white_matter``
    everything else.

The lesions themselves are the connected components of
:func:`bids_app.regions.lesion_labels` (``connectivity`` 6, 18 or 26); the pipeline passes
the ``connectivity`` of the ``[lesionseg]`` options table (default 26) to it, for
provided masks too. On a Chimap (QSM) the rim columns come from
:mod:`bids_app.lesion_rims`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from scipy import ndimage as ndi
from skimage import measure

from bids_app.lesion_enhancement import ENHANCEMENT_COLUMNS
from bids_app.lesion_location import infratentorial_fraction
from bids_app.lesion_rims import fill_rim_columns
from bids_app.regions import CSF, GM, check_zooms
from bids_app.schema import LESION_TABLE_COLUMNS

logger = logging.getLogger(__name__)

LESION_COLUMNS = LESION_TABLE_COLUMNS  # columns of :func:`lesion_table`, in order
_MAP_STATS = ("mean", "median", "std", "core_mean", "rim_mean")
_RIM_STATS = ("rim_index", "prl_candidate")  # Chimap rows only (:mod:`bids_app.lesion_rims`)

#: location names (CONTRACT 4.1)
LOCATIONS = ("periventricular", "juxtacortical", "infratentorial", "deep_white_matter")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"lesion labels have shape {lab.shape}: expected a 3-D image")
    if lab.dtype.kind == "f":
        lab = np.where(np.isfinite(lab), lab, 0)
        if not np.all(lab == np.round(lab)):
            raise ValueError("lesion labels: non-integer values; expected one integer per lesion")
    elif lab.dtype == bool or lab.dtype.kind not in "iu":
        raise ValueError(f"lesion labels have dtype {lab.dtype}: expected integer labels")
    if lab.size and lab.min() < 0:
        raise ValueError("lesion labels: negative values; expected 0 = background, > 0 = lesion")
    return lab.astype(np.int32)


def brain_depth(brain: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    """Distance in mm from each brain voxel centre to the nearest non-brain voxel centre.

    Parameters
    ----------
    brain : (X, Y, Z) bool ndarray
        Brain mask (holes are filled first). The image border counts as outside the brain.
    zooms : sequence of 3 float
        Voxel size in mm.

    Returns
    -------
    (X, Y, Z) float64 ndarray
        0 outside the brain.
    """
    filled = np.pad(ndi.binary_fill_holes(np.asarray(brain, dtype=bool)), 1)
    depth = ndi.distance_transform_edt(filled, sampling=check_zooms(zooms))
    return depth[1:-1, 1:-1, 1:-1]


def ventricle_mask(
    tissue: np.ndarray,
    *,
    zooms: Sequence[float],
    lesion_mask: np.ndarray | None = None,
    depth_mm: float = 20.0,
) -> np.ndarray:
    """Approximate the ventricles as the CSF lying deeper than ``depth_mm`` inside the brain.

    Without an atlas, ventricles are the CSF-labelled voxels (lesion voxels excluded: T1
    black holes are often labelled CSF) whose distance to the outside of the brain
    (:func:`brain_depth`; brain = tissue > 0 or lesion, holes filled) exceeds
    ``depth_mm``. Unlike "CSF components that do not touch the brain surface", this does
    not depend on topology: a one-voxel CSF bridge from a ventricle to the sulci (common in
    3-class segmentations) does not remove the ventricle. On the ICBM-2009a-based tissue
    map of the OSIPI ASL-DRO (1 mm), the lateral ventricles have a mean depth of 37 mm and
    99 % of their voxels are deeper than 20 mm, while the cortical sulci and most of the
    Sylvian fissure are shallower; the deep cisterns and the third ventricle (midline) are
    kept. Temporal-horn tips shallower than ``depth_mm`` are missed.

    Parameters
    ----------
    tissue : (X, Y, Z) int ndarray
        0 background, 1 GM, 2 WM, 3 CSF.
    zooms : sequence of 3 float
        Voxel size in mm.
    lesion_mask : (X, Y, Z) bool ndarray, optional
        Lesion voxels (any non-zero value), excluded from the CSF.
    depth_mm : float, optional
        Minimum depth in mm. Default 20 mm (adult brain).

    Returns
    -------
    (X, Y, Z) bool ndarray
    """
    tissue = np.asarray(tissue)
    lesion = np.zeros(tissue.shape, bool) if lesion_mask is None else np.asarray(lesion_mask) != 0
    depth = brain_depth((tissue > 0) | lesion, zooms)
    return (tissue == CSF) & ~lesion & (depth > depth_mm)


def lesion_locations(
    labels: np.ndarray,
    tissue: np.ndarray,
    *,
    zooms: Sequence[float],
    periventricular_mm: float = 3.0,
    ventricle_depth_mm: float = 20.0,
    affine: np.ndarray | None = None,
    infratentorial_min_fraction: float = 0.5,
) -> dict[int, str]:
    """Classify each lesion as infratentorial, periventricular, juxtacortical or deep WM.

    Parameters
    ----------
    labels : (X, Y, Z) int ndarray
        0 background, one positive integer per lesion.
    tissue : (X, Y, Z) int ndarray
        0 background, 1 GM, 2 WM, 3 CSF.
    zooms : sequence of 3 float
        Voxel size in mm.
    periventricular_mm : float, optional
        Maximum distance in mm between lesion and ventricle voxel centres.
    ventricle_depth_mm : float, optional
        See :func:`ventricle_mask`.
    affine : (4, 4) ndarray, optional
        Voxel -> world (mm) affine of the grid, for the infratentorial rule; None: no lesion
        is infratentorial.
    infratentorial_min_fraction : float, optional
        Fraction of a lesion's voxels in the posterior fossa that makes it infratentorial.

    Returns
    -------
    dict of int to str
        Lesion label -> one of :data:`LOCATIONS` (rules in the module docstring).

    Raises
    ------
    ValueError
        ``tissue`` and ``labels`` have different shapes, or ``labels`` are not integers.
    """
    labels = _check_labels(labels)
    tissue = np.asarray(tissue)
    if tissue.shape != labels.shape:
        raise ValueError(f"tissue has shape {tissue.shape}: expected {labels.shape} (labels)")
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return {}
    z = check_zooms(zooms)
    in_lesion = labels > 0
    vent = ventricle_mask(tissue, zooms=z, lesion_mask=in_lesion, depth_mm=ventricle_depth_mm)
    if vent.any():
        dist = ndi.distance_transform_edt(~vent, sampling=z)
        near_vent = ndi.minimum(dist, labels=labels, index=ids) <= periventricular_mm
    else:
        logger.info("no CSF deeper than %g mm: no periventricular lesion", ventricle_depth_mm)
        near_vent = np.zeros(ids.size, bool)
    gm = (tissue == GM) & ~in_lesion
    near_gm = ndi.binary_dilation(gm, structure=ndi.generate_binary_structure(3, 3))
    touches_gm = ndi.maximum(near_gm.astype(np.uint8), labels=labels, index=ids) > 0
    infra = np.zeros(ids.size, bool)
    if affine is not None:
        frac = infratentorial_fraction(labels, (tissue > 0) | in_lesion, np.asarray(affine))
        if frac is not None:
            infra = np.array([frac[i] >= infratentorial_min_fraction for i in ids.tolist()])
    location = np.where(
        near_vent, "periventricular", np.where(touches_gm, "juxtacortical", "deep_white_matter")
    )
    location = np.where(infra, "infratentorial", location)
    return dict(zip(ids.tolist(), location.tolist()))


def _finite(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    values = image[mask]
    return values[np.isfinite(values)]


def _nan_mean(mask: np.ndarray, image: np.ndarray) -> float:
    v = _finite(mask, image)
    return float(v.mean()) if v.size else np.nan


def _nan_median(mask: np.ndarray, image: np.ndarray) -> float:
    v = _finite(mask, image)
    return float(np.median(v)) if v.size else np.nan


def _nan_std(mask: np.ndarray, image: np.ndarray) -> float:
    v = _finite(mask, image)
    return float(v.std(ddof=1)) if v.size > 1 else np.nan


def _core_rim_properties(zooms: np.ndarray, rim_width_mm: float):
    """Return ``regionprops`` extra properties: NaN-aware means of the lesion core and rim."""
    cache: dict[tuple, np.ndarray] = {}

    def inner_depth(mask: np.ndarray) -> np.ndarray:
        key = (mask.shape, mask.tobytes())
        if key not in cache:
            depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=zooms)
            cache[key] = depth[1:-1, 1:-1, 1:-1]
        return cache[key]

    def core_mean(mask: np.ndarray, image: np.ndarray) -> float:
        return _nan_mean(mask & (inner_depth(mask) > rim_width_mm), image)

    def rim_mean(mask: np.ndarray, image: np.ndarray) -> float:
        return _nan_mean(mask & (inner_depth(mask) <= rim_width_mm), image)

    return core_mean, rim_mean


def lesion_table(
    labels: np.ndarray,
    maps: Mapping[str, np.ndarray] | None = None,
    *,
    affine: np.ndarray,
    zooms: Sequence[float],
    tissue: np.ndarray | None = None,
    rim_width_mm: float = 1.0,
    periventricular_mm: float = 3.0,
    ventricle_depth_mm: float = 20.0,
    chi_maps: Collection[str] = (),
    nawm: np.ndarray | None = None,
    rim_options: Mapping[str, Any] | None = None,
    enhancement: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Describe each lesion and summarise each map inside it: one row per lesion x map.

    Parameters
    ----------
    labels : (X, Y, Z) int ndarray
        0 background, one positive integer per lesion (e.g. :func:`regions.lesion_labels`,
        or a lesion ``dseg`` resampled with nearest neighbour).
    maps : mapping of str to (X, Y, Z) ndarray, optional
        Parameter maps on the grid of ``labels``. None or empty gives one row per lesion
        with ``map`` None and NaN statistics (structural-only datasets still get a table).
    affine : (4, 4) array_like
        Voxel -> world (mm) affine of the label image.
    zooms : sequence of 3 float
        Voxel size in mm (must agree with ``affine``; passed to ``regionprops``).
    tissue : (X, Y, Z) int ndarray, optional
        0 background, 1 GM, 2 WM, 3 CSF, for ``location`` (see the module docstring and
        :func:`lesion_locations`); None gives ``location`` None.
    rim_width_mm : float, optional
        Lesion voxels whose centre is at most this far (mm) from the nearest non-lesion voxel
        centre form the rim, the others the core (distance transform inside each lesion).
        With 1 mm voxels the default 1 mm makes the rim the one-voxel shell of
        face-exposed voxels. Small or thin lesions have an empty core: ``core_mean`` NaN.
    periventricular_mm, ventricle_depth_mm : float, optional
        See :func:`lesion_locations`.
    chi_maps : collection of str, optional
        Names in ``maps`` that are susceptibility maps (ppm, QSM ``Chimap``): their rows get
        ``core_mean``, ``rim_mean``, ``rim_index`` and ``prl_candidate`` from the paramagnetic
        rim metrics (:func:`bids_app.lesion_rims.fill_rim_columns`); ``rim_index`` and
        ``prl_candidate`` are NaN on every other row.
    nawm : (X, Y, Z) bool ndarray, optional
        Normal-appearing white matter, the reference of the rim threshold (needed with
        ``chi_maps``).
    rim_options : mapping, optional
        ``rim_mm``, ``threshold_ppm``, ``min_fraction``, ``min_rim_voxels`` of
        :func:`bids_app.models.qsm.rim.rim_metrics`.
    enhancement : pandas.DataFrame, optional
        ``lesion_id`` and the :data:`bids_app.lesion_enhancement.ENHANCEMENT_COLUMNS` (from
        :func:`bids_app.lesion_enhancement.lesion_enhancement`), repeated on every map row
        of a lesion; None (no post-contrast T1w) leaves them NaN.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LESION_COLUMNS`; rows sorted by ``lesion_id`` then map (in the
        order of ``maps``). ``volume_mm3`` = voxel count x voxel volume; ``centroid_*``
        = world coordinates (mm) of the mean voxel position. ``mean``, ``median``,
        ``std`` (``ddof=1``), ``core_mean`` and ``rim_mean`` ignore NaN/inf voxels and
        are NaN when no finite voxel is left.

    Examples
    --------
    >>> lab = np.zeros((4, 4, 4), int); lab[1:3, 1:3, 1:3] = 1
    >>> aff = np.diag([1.0, 1.0, 2.0, 1.0])
    >>> df = lesion_table(lab, {"T1map": np.ones((4, 4, 4))}, affine=aff, zooms=(1, 1, 2))
    >>> df.loc[0, ["volume_mm3", "centroid_x", "centroid_z", "mean", "rim_mean"]].tolist()
    [16.0, 1.5, 3.0, 1.0, 1.0]
    """
    labels = _check_labels(labels)
    z = check_zooms(zooms)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine has shape {affine.shape}: expected (4, 4)")
    maps = dict(maps or {})
    for name, data in maps.items():
        if np.shape(data) != labels.shape:
            raise ValueError(f"map {name!r} has shape {np.shape(data)}: expected {labels.shape}")

    geo = measure.regionprops_table(labels, properties=("label", "area", "centroid"), spacing=z)
    ids = geo["label"].astype(np.int64)
    centroid_vox = np.column_stack([geo[f"centroid-{i}"] for i in range(3)]) / z
    world = apply_affine(affine, centroid_vox) if ids.size else np.empty((0, 3))
    if tissue is None or ids.size == 0:
        location = [None] * ids.size
    else:
        where = lesion_locations(
            labels,
            tissue,
            zooms=z,
            periventricular_mm=periventricular_mm,
            ventricle_depth_mm=ventricle_depth_mm,
            affine=affine,
        )
        location = [where[i] for i in ids.tolist()]
    base = pd.DataFrame(
        {
            "lesion_id": ids,
            "volume_mm3": geo["area"].astype(np.float64),
            "centroid_x": world[:, 0],
            "centroid_y": world[:, 1],
            "centroid_z": world[:, 2],
            "location": pd.Series(location, dtype=object),
        }
    )
    base = base.assign(**dict.fromkeys(ENHANCEMENT_COLUMNS, np.nan))
    if enhancement is not None and len(base):
        enh = enhancement.set_index("lesion_id").reindex(base["lesion_id"])
        for col in ENHANCEMENT_COLUMNS:
            base[col] = enh[col].to_numpy(dtype=float)
    if not maps:
        out = base.assign(map=None, **dict.fromkeys(_MAP_STATS + _RIM_STATS, np.nan))
        return out.astype({"map": object})[list(LESION_COLUMNS)]

    extra = (_nan_mean, _nan_median, _nan_std, *_core_rim_properties(z, rim_width_mm))
    names = dict(zip([f.__name__ for f in extra], _MAP_STATS))
    tables = []
    for name, data in maps.items():
        stats = measure.regionprops_table(
            labels,
            intensity_image=np.asarray(data, dtype=np.float64),
            properties=("label",),
            extra_properties=extra,
            spacing=z,
        )
        stats = pd.DataFrame(stats).rename(columns={"label": "lesion_id", **names})
        stats["lesion_id"] = stats["lesion_id"].astype(np.int64)
        tables.append(base.merge(stats.assign(map=name), on="lesion_id", how="left"))
    out = pd.concat(tables, ignore_index=True)
    out = out.sort_values("lesion_id", kind="stable", ignore_index=True)
    out = fill_rim_columns(out, maps, labels, nawm, z, chi_maps, **dict(rim_options or {}))
    return out[list(LESION_COLUMNS)]
