"""Reference image, brain mask, tissue classes and lesion masks of one subject/session.

Masks come from ``--derivatives`` when present (CONTRACT 2.2, read by
:mod:`bids_app.stages.masks`), else they are computed (:mod:`bids_app.segmentation`,
:mod:`bids_app.lesionseg`).

Bad input is refused with :class:`~bids_app.errors.MetadataError` (exit 65 for the subject):
an all-zero or all-NaN reference image, an empty brain mask, and the bad provided masks
listed in :mod:`bids_app.stages.masks`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bids_app import brain_extraction, io, lesionseg, segmentation
from bids_app.bids.query import find_structural
from bids_app.errors import MetadataError
from bids_app.stages import align
from bids_app.stages.context import Grid, SubjectContext
from bids_app.stages.masks import (
    Mask,
    from_dsegs,
    provided_brain,
    provided_lesion,
    provided_probseg,
)

logger = logging.getLogger(__name__)

_NEEDS_CONTRAST = (
    "a structural image with brain contrast, or brain mask / tissue derivatives given with "
    "--derivatives"
)


def choose_reference(ctx: SubjectContext) -> None:
    """Pick the reference image (``--reference``; auto: FLAIR, T1w, T2w) and its grid."""
    ctx.structural = find_structural(ctx.layout, ctx.subject, ctx.session, ctx.cfg.bids_filters)
    order = ("FLAIR", "T1w", "T2w") if ctx.cfg.reference == "auto" else (ctx.cfg.reference,)
    for name in order:
        if name in ctx.structural:
            vol = ctx.structural[name]
            img = io.load_image(vol.path)
            # a 4-D, corrupt or empty reference fails here, clearly
            io.require_signal(io.read_data(img, vol.path), vol.path)
            ctx.reference_name, ctx.reference_path = name, vol.path
            ctx.grid = Grid(tuple(img.shape[:3]), img.affine)
            logger.info("%s: reference image %s", ctx.label, Path(vol.path).name)
            return
    if ctx.cfg.reference != "auto":
        logger.warning(
            "%s: no %s image; maps stay in their native space", ctx.label, ctx.cfg.reference
        )


def _load_on_grid(path: str, ctx: SubjectContext, name: str) -> np.ndarray:
    """A structural image (not a mask) on the reference grid, registered to it.

    The registration (``--registration``, :mod:`bids_app.stages.align`) is estimated once
    per image and written as ``*_from-<name>_to-<ref>_mode-image_xfm.txt``; the image is
    resampled once (trilinear, 0 outside its field of view).
    """
    img = io.load_image(path)
    data = io.read_data(img, path)
    io.require_signal(data, path)
    grid = ctx.grid
    reg = align.registration_for(ctx, path, data, img.affine)
    ents = {"subject": ctx.subject, "session": ctx.session}
    align.write_transform(ctx, ents, "anat", name, reg)
    world = None if reg.mode == "none" or np.allclose(reg.matrix, np.eye(4)) else reg.matrix
    if world is None and io.same_grid(data.shape, img.affine, grid.shape, grid.affine):
        return data
    logger.info("resampling %s to the reference grid (trilinear)", Path(path).name)
    return io.resample(data, img.affine, grid.shape, grid.affine, order=1, cval=0.0, world=world)


def computed_brain(ctx: SubjectContext, ref_data: np.ndarray) -> Mask:
    """A brain mask computed on the reference image (:func:`brain_extraction.extract_brain`).

    Options come from the ``[brainmask]`` table of the options file (keys of
    :data:`bids_app.brain_extraction.BRAINMASK_OPTIONS`; default ``method = "auto"``:
    whole-head extraction unless the image looks skull-stripped).
    """
    opts = dict(ctx.cfg.model_options.get("brainmask", {}))
    try:
        data, method = brain_extraction.extract_brain(
            ref_data, zooms=ctx.grid.zooms, affine=ctx.grid.affine, **opts
        )
    except ValueError as err:
        raise MetadataError(ctx.reference_path, "data", str(err), _NEEDS_CONTRAST) from None
    name = Path(ctx.reference_path).name
    return Mask(data, f"computed on {name}: {method}", ctx.reference_path)


def computed_lesion(ctx: SubjectContext, ref_data: np.ndarray, tissue: Mask | None) -> Mask | None:
    """Lesions segmented from the FLAIR (T1w, T2w when present): :mod:`bids_app.lesionseg`.

    Used only when no lesion mask is provided (provided masks take precedence, CONTRACT
    2.2). Options come from the ``[lesionseg]`` table of the options file (keys of
    :data:`bids_app.lesionseg.LESION_OPTIONS`, plus ``enabled = false`` to turn the step
    off); a provided tissue segmentation is used as the tissue labels. Returns None (with
    a logged reason) without a FLAIR or when turned off.
    """
    opts = dict(ctx.cfg.model_options.get("lesionseg", {}))
    if not opts.pop("enabled", True):
        logger.info("%s: built-in lesion segmentation turned off ([lesionseg])", ctx.label)
        return None
    if "FLAIR" not in ctx.structural:
        logger.info("%s: no lesion mask and no FLAIR: lesion regions are empty", ctx.label)
        return None
    paths = {
        name: ctx.structural[name].path
        for name in ("FLAIR", "T1w", "T2w")
        if name in ctx.structural
    }
    images = {
        name: ref_data if path == ctx.reference_path else _load_on_grid(path, ctx, name)
        for name, path in paths.items()
    }
    try:
        mask, info = lesionseg.segment_lesions(
            images["FLAIR"],
            ctx.brain_mask,
            ctx.grid.zooms,
            t1w=images.get("T1w"),
            t2w=images.get("T2w"),
            tissue=None if tissue is None else tissue.data,
            **opts,
        )
    except ValueError as err:
        raise MetadataError(paths["FLAIR"], "data", str(err), _NEEDS_CONTRAST) from None
    names = ", ".join(Path(p).name for p in paths.values())
    thresholds = ", ".join(f"{k}={v:.4g}" for k, v in info["Thresholds"].items())
    source = (
        f"computed on {names}: {info['Description']}; options {info['Options']}; "
        f"thresholds {thresholds}; {info['NumberOfLesions']} lesions"
    )
    logger.info("%s: %d lesions segmented from the FLAIR", ctx.label, info["NumberOfLesions"])
    return Mask(mask.astype(np.float32), source, paths["FLAIR"])


def computed_tissue(
    ctx: SubjectContext, ref_data: np.ndarray, brain: np.ndarray, lesion: np.ndarray | None
) -> Mask:
    """Tissue classes computed on the T1w (else the reference), lesions excluded."""
    seg_name = "T1w" if "T1w" in ctx.structural else ctx.reference_name
    seg_path = ctx.structural[seg_name].path
    if seg_path != ctx.reference_path:
        seg_img = _load_on_grid(seg_path, ctx, seg_name)
    else:
        seg_img = ref_data
    exclude = lesion > 0.5 if lesion is not None else None
    try:
        tissue, method = segmentation.segment_tissue(
            seg_img, brain, contrast=seg_name, exclude=exclude
        )
    except ValueError as err:
        raise MetadataError(seg_path, "data", str(err), _NEEDS_CONTRAST) from None
    return Mask(tissue, f"computed on {Path(seg_path).name}: {method}", seg_path)


def find_masks(ctx: SubjectContext) -> None:
    """Brain mask, tissue classes and lesion mask on the reference grid (provided first).

    The steps, each with a typed result (:class:`Mask`): brain (provided, else computed),
    lesion (a provided mask, else a dseg lesion label, else none yet), tissue (a dseg, else
    probsegs, else computed with the lesions excluded). A provided lesion mask may be binary,
    integer multi-label (non-zero is lesion) or probabilistic in [0, 1] (lesion where
    p >= 0.5); it is stored binary (0/1 float32).

    Raises
    ------
    MetadataError
        Bad reference image or provided mask (see the module docstring), exit 65.
    """
    ref_data = io.read_data(io.load_image(ctx.reference_path), ctx.reference_path)
    brain = provided_brain(ctx) or computed_brain(ctx, ref_data)
    if not brain.data.any():
        raise MetadataError(brain.path, "brain mask", "0 voxels", _NEEDS_CONTRAST)
    ctx.brain_mask, ctx.brain_mask_source = brain.data, brain.source

    lesion = provided_lesion(ctx)
    dseg_lesion, tissue = from_dsegs(ctx)
    lesion = lesion or dseg_lesion
    tissue = tissue or provided_probseg(ctx)
    if lesion is not None:
        ctx.lesion_mask = np.asarray(lesion.data, dtype=np.float32)
        ctx.lesion_source = lesion.source
    else:
        computed = computed_lesion(ctx, ref_data, tissue)
        if computed is not None:
            ctx.lesion_mask, ctx.lesion_source = computed.data, computed.source
        else:
            ctx.lesion_source = "none: no lesion mask provided and no lesion segmentation"
    if tissue is None:
        tissue = computed_tissue(ctx, ref_data, ctx.brain_mask, ctx.lesion_mask)
    ctx.tissue = np.where(ctx.brain_mask, tissue.data, 0).astype(np.uint8)
    ctx.tissue_source = tissue.source
