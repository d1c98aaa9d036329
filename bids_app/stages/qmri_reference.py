"""Reference grid, brain mask and tissue classes of a subject without a structural image.

A subject/session with no FLAIR, T1w or T2w (``--reference auto``) takes its reference image
from one of its qMRI collections, so that its fits are restricted to a brain mask and it gets
a region table like every other subject:

1. **Collection.** Among the raw-dataset collections of the selected models that carry
   anatomy (registrable: no B1+ or receive-field maps), the one of the finest voxels
   (smallest voxel volume, to 2 significant digits) is used; ties go by brain contrast, in
   the order of :data:`PREFERENCE` (MP2RAGE second inversion, VFA, MEGRE, MT-weighted,
   MPM, IR, multi-echo spin echo, DWI, perfusion).
2. **Image.** VFA and MT collections use their volume of highest mean signal (for MT:
   among the MT-off volumes only), i.e. the proton-density-weighted image of most SNR;
   every other model its own registration image
   (:meth:`~bids_app.models.base.QMRIModel.registration_image`: the first echo of a
   MEGRE/MESE, the mean b=0 of a DWI, the second-inversion magnitude of an MP2RAGE, the
   longest-TI image of an IR series, the mean M0 of an ASL series).
3. **Brain mask.** :func:`bids_app.stages.anatomy.computed_brain` on that image; every
   collection (the chosen one too, from the volume its fit is aligned to) is registered to
   it as to a structural reference (:mod:`~bids_app.stages.align`), and every fit is
   restricted to the mask.
4. **Tissue.** After the fits, when the subject has an R1 (or T1) map, GM, WM and CSF are
   segmented on R1 = 1/T1 on the reference grid, with the T1-weighted class order
   (CSF < GM < WM: R1 ranks the tissues as a T1w image does; :func:`segmentation.segment_tissue`).
   Without one, the tissue classes are left empty and only the ``brain`` region has values.
   No lesions are segmented (that needs a FLAIR): the lesion regions are empty.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bids_app import io, segmentation
from bids_app.bids.query import ModelRun
from bids_app.errors import MetadataError, NotApplicableError
from bids_app.stages import anatomy, maps
from bids_app.stages.context import Grid, SubjectContext

logger = logging.getLogger(__name__)

#: models whose collection can give the reference image, best brain contrast first, with
#: the image used (collections of equal voxel size are chosen in this order)
PREFERENCE = {
    "mp2rage": "the second-inversion magnitude",
    "vfa_t1": "the flip angle of highest mean signal",
    "megre_r2star": "the first echo",
    "qsm": "the first magnitude echo",
    "mtsat": "the MT-off volume of highest mean signal",
    "mtr": "the MT-off volume",
    "mpm": "the first PDw echo",
    "irt1": "the longest-TI magnitude",
    "mp2rageme_r2star": "the first second-inversion echo",
    "mese_t2": "the first echo",
    "mwf": "the first echo",
    "dti": "the mean b=0 image",
    "dki": "the mean b=0 image",
    "fwdti": "the mean b=0 image",
    "noddi": "the mean b=0 image",
    "asl_cbf": "the mean M0 image",
    "dce": "the first volume",
    "dsc": "the first volume",
}
#: models whose reference image is their brightest volume (MT: MT-off volumes only)
_BRIGHTEST = {"vfa_t1", "mtsat", "mtr"}
_MT_OFF = {"mtsat", "mtr"}
#: maps that give the tissue classes (R1 directly, T1 inverted), in order of preference
TISSUE_MAPS = ("R1map", "T1map")


def _voxel_mm3(path: str) -> float:
    """The voxel volume of an image header, to 2 significant digits (mm^3)."""
    zooms = io.load_image(path).header.get_zooms()[:3]
    vol = float(np.prod(zooms))
    return float(f"{vol:.2g}") if vol > 0 else np.inf


def candidates(runs: list[ModelRun]) -> list[ModelRun]:
    """The runs that can give the reference image, in the order they are tried.

    Returns
    -------
    list of ModelRun
        Runs of :data:`PREFERENCE` models whose lead collection is in the raw dataset,
        sorted by voxel volume (finest first), then by :data:`PREFERENCE` order.
    """
    order = list(PREFERENCE)
    keyed = []
    for i, run in enumerate(runs):
        lead = next(iter(run.collections.values()))
        if run.model.name not in PREFERENCE or not run.model.registrable:
            continue
        if any(v.dataset != "raw" for v in lead.volumes):
            continue
        keyed.append((_voxel_mm3(lead.paths[0]), order.index(run.model.name), i, run))
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:3])]


def _mt_off(value) -> bool:
    return str(value).strip().lower() in ("false", "0", "off")


def _file_of(coll, index: int) -> str:
    """The file holding measurement ``index`` of a collection (4-D files count theirs)."""
    counts = list(coll.n_measurements) or [1] * len(coll.volumes)
    edges = np.cumsum(counts)
    return coll.paths[min(int(np.searchsorted(edges, index, side="right")), len(coll.paths) - 1)]


def reference_image(
    run: ModelRun, model, data: dict[str, np.ndarray]
) -> tuple[np.ndarray, str, str]:
    """The 3-D reference image of a run, the file it comes from and what it is.

    Parameters
    ----------
    run : ModelRun
    model : QMRIModel
        The model built from ``run`` (for its registration image).
    data : dict of str to (X, Y, Z, n) ndarray
        The run's loaded inputs, lead input first.

    Returns
    -------
    image : (X, Y, Z) float32 ndarray
    path : str
        The file of the image (the lead file for images computed from several volumes).
    description : str
        E.g. ``'the flip angle of highest mean signal (volume 2 of 3)'``.
    """
    name = run.model.name
    lead_name, lead = next(iter(run.collections.items()))
    what = PREFERENCE[name]
    if name in _BRIGHTEST:
        arr = data[lead_name]
        allowed = np.arange(arr.shape[-1])
        if name in _MT_OFF and len(lead.volumes) == arr.shape[-1]:
            states = lead.params.get("MTState") or [v.entities.get("mt") for v in lead.volumes]
            off = [i for i, s in enumerate(states) if _mt_off(s)]
            allowed = np.asarray(off or allowed)
        flat = arr.reshape(-1, arr.shape[-1])
        ok = np.isfinite(flat)
        means = np.where(ok, flat, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1)
        index = int(allowed[np.argmax(means[allowed])])
        path = _file_of(lead, index)
        return (
            arr[..., index].astype(np.float32),
            path,
            f"{what} (volume {index + 1} of {arr.shape[-1]})",
        )
    return np.asarray(model.registration_image(data), np.float32), lead.paths[0], what


def choose(ctx: SubjectContext, runs: list[ModelRun]) -> bool:
    """Set the reference image, grid and brain mask of ``ctx`` from a qMRI collection.

    Used only with ``--reference auto`` when the subject has no structural image. Every
    collection, the chosen one too, is then registered to the image as to a structural
    reference: a collection whose fit is aligned to another of its volumes (the first
    flip angle of a VFA, :mod:`bids_app.stages.volume_align`) gets the transform from that
    volume to the reference image (identity without motion).

    A brain extraction that fails on a candidate's image (an error, or an empty mask) is
    logged and shown in the report, and the next candidate is tried: the subject is never
    failed for it, its maps then stay native and unmasked (``SkullStripped: false``).

    Returns
    -------
    bool
        True if a reference was set, False when no run can give one (maps stay native,
        as before).

    Raises
    ------
    MetadataError
        The chosen image has no signal (all zero or non-finite, exit 65).
    """
    if ctx.grid is not None or ctx.cfg.reference != "auto":
        return False
    for run in candidates(runs):
        options = dict(ctx.cfg.model_options.get(run.model.name, {}))
        try:
            model = run.model.from_collections(run.collections, **options)
        except NotApplicableError:
            continue
        inputs = maps.load_inputs(run)
        image, path, what = reference_image(run, model, inputs.data)
        io.require_signal(image, path)
        ctx.reference_name = Path(path).name.split("_")[-1].split(".")[0]
        ctx.reference_path = path
        ctx.reference_data = image
        ctx.grid = Grid(tuple(image.shape[:3]), inputs.grid.affine)
        try:
            brain = anatomy.computed_brain(ctx, image)
            if not brain.data.any():
                raise MetadataError(path, "brain mask", "0 voxels", "a brain in the image")
        except MetadataError as err:
            _reset(ctx)
            reason = f"no brain mask from {Path(path).name} ({what}): {err}"
            logger.warning("%s: %s", ctx.label, reason)
            ctx.warnings.append(reason)
            continue
        ctx.brain_mask = np.asarray(brain.data, dtype=bool)
        ctx.brain_mask_source = (
            f"{brain.source}; reference image: {what} of the {run.model.name} collection "
            f"(no FLAIR/T1w/T2w image)"
        )
        ctx.lesion_source = "none: no FLAIR for a lesion segmentation (no structural image)"
        logger.info(
            "%s: no structural image: reference image %s of the %s collection (%s), "
            "brain mask %d voxels",
            ctx.label,
            Path(path).name,
            run.model.name,
            what,
            int(ctx.brain_mask.sum()),
        )
        return True
    return False


def _reset(ctx: SubjectContext) -> None:
    ctx.reference_name = ctx.reference_path = ctx.reference_data = ctx.grid = None


def tissue_from_maps(ctx: SubjectContext) -> None:
    """Tissue classes on the reference grid from the subject's R1 (or 1/T1) map.

    Sets ``ctx.tissue`` (0 outside the brain) and ``ctx.tissue_source``; without an R1 or
    T1 map the classes are all 0 (empty tissue regions) and the source says why.

    A segmentation that fails on the map is logged and shown in the report; the tissue
    regions are then empty (the subject is not failed for it).
    """
    records = [r for r in ctx.maps if r.data_ref is not None and r.suffix in TISSUE_MAPS]
    records.sort(key=lambda r: TISSUE_MAPS.index(r.suffix))
    ctx.tissue = np.zeros(ctx.grid.shape, np.uint8)
    if not records:
        ctx.tissue_source = "none: no structural image and no R1/T1 map to segment"
        logger.info("%s: no R1/T1 map: tissue regions are empty", ctx.label)
        return
    rec = records[0]
    r1 = rec.data_ref if rec.suffix == "R1map" else 1.0 / rec.data_ref
    r1 = np.where(np.isfinite(r1) & (r1 > 0), r1, np.nan).astype(np.float32)
    brain = ctx.brain_mask & np.isfinite(r1)
    try:
        tissue, method = segmentation.segment_tissue(
            np.nan_to_num(r1, nan=0.0), brain, contrast="T1w"
        )
    except ValueError as err:
        reason = f"no tissue classes from {rec.path.name}: {err}"
        logger.warning("%s: %s", ctx.label, reason)
        ctx.warnings.append(reason)
        ctx.tissue_source = f"none: the segmentation of {rec.path.name} failed ({err})"
        return
    ctx.tissue = np.where(ctx.brain_mask, tissue, 0).astype(np.uint8)
    how = "R1 map" if rec.suffix == "R1map" else "R1 = 1/T1 of the T1 map"
    ctx.tissue_source = (
        f"computed on {rec.path.name} ({how}, on the reference grid; T1w class order "
        f"CSF < GM < WM): {method}"
    )
