"""Reference image, brain mask, tissue classes and lesion masks of one subject/session.

Masks come from ``--derivatives`` when present (CONTRACT 2.2), else they are computed
(:mod:`bids_app.segmentation`). Masks on another grid than the reference are resampled
through the affines (world coordinates, nearest neighbour).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app import io, segmentation
from bids_app.bids.query import find_structural, find_volumes
from bids_app.errors import MetadataError
from bids_app.stages.context import Grid, SubjectContext

logger = logging.getLogger(__name__)

#: dseg label names understood, lower case -> tissue code (1 GM, 2 WM, 3 CSF, 4 lesion)
DSEG_NAMES = {
    "gm": 1,
    "grey matter": 1,
    "gray matter": 1,
    "cgm": 1,
    "greymatter": 1,
    "wm": 2,
    "white matter": 2,
    "whitematter": 2,
    "csf": 3,
    "cerebrospinal fluid": 3,
    "lesion": 4,
    "lesions": 4,
    "wmh": 4,
    "ms lesion": 4,
}
ORIG_SPACES = (None, "orig")


def choose_reference(ctx: SubjectContext) -> None:
    """Pick the reference image (``--reference``; auto: FLAIR, T1w, T2w) and its grid."""
    ctx.structural = find_structural(ctx.layout, ctx.subject, ctx.session, ctx.cfg.bids_filters)
    order = ("FLAIR", "T1w", "T2w") if ctx.cfg.reference == "auto" else (ctx.cfg.reference,)
    for name in order:
        if name in ctx.structural:
            vol = ctx.structural[name]
            img = io.load_image(vol.path)
            io.read_data(img, vol.path)  # a 4-D or corrupt reference fails here, clearly
            ctx.reference_name, ctx.reference_path = name, vol.path
            ctx.grid = Grid(tuple(img.shape[:3]), img.affine)
            logger.info("%s: reference image %s", ctx.label, Path(vol.path).name)
            return
    if ctx.cfg.reference != "auto":
        logger.warning(
            "%s: no %s image; maps stay in their native space", ctx.label, ctx.cfg.reference
        )


def _load_on_grid(path: str, grid: Grid) -> np.ndarray:
    img = io.load_image(path)
    data = io.read_data(img, path)
    if not io.same_grid(data.shape, img.affine, grid.shape, grid.affine):
        logger.info("resampling %s to the reference grid (nearest neighbour)", Path(path).name)
        data = io.resample(data, img.affine, grid.shape, grid.affine, order=0)
    return data


def _derivative_files(ctx: SubjectContext, query: dict) -> list:
    out = []
    for name, layout in ctx.derivative_layouts.items():
        for vol in find_volumes(layout, ctx.subject, ctx.session, query):
            if (
                vol.entities.get("space") in ORIG_SPACES
                or vol.entities.get("space") == ctx.reference_name
            ):
                out.append((name, vol))
    return out


def _dseg_codes(path: str) -> dict[int, int]:
    tsv = Path(path.replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))
    if not tsv.is_file():
        raise MetadataError(
            str(tsv),
            "file",
            "missing",
            "a _dseg.tsv with 'index' and 'name' columns beside the dseg",
        )
    table = pd.read_csv(tsv, sep="\t")
    if not {"index", "name"} <= set(table.columns):
        raise MetadataError(str(tsv), "columns", list(table.columns), "'index' and 'name'")
    return {
        int(i): DSEG_NAMES[str(n).strip().lower()]
        for i, n in zip(table["index"], table["name"], strict=True)
        if str(n).strip().lower() in DSEG_NAMES
    }


def find_masks(ctx: SubjectContext) -> None:
    """Brain mask, tissue classes and lesion mask on the reference grid (provided first)."""
    grid = ctx.grid
    ref_data = io.read_data(io.load_image(ctx.reference_path), ctx.reference_path)

    brain = _derivative_files(ctx, {"suffix": "mask", "desc": "brain"})
    if brain:
        name, vol = brain[0]
        ctx.brain_mask = _load_on_grid(vol.path, grid) > 0.5
        ctx.brain_mask_source = f"provided: bids:{name}:{Path(vol.path).name}"
    else:
        ctx.brain_mask, method = segmentation.brain_mask(ref_data, zooms=grid.zooms)
        ctx.brain_mask_source = f"computed on {Path(ctx.reference_path).name}: {method}"

    lesion = _derivative_files(
        ctx, {"suffix": "mask", "label": ["lesion", "WMH"]}
    ) or _derivative_files(ctx, {"suffix": "mask", "desc": "lesion"})
    dsegs = _derivative_files(ctx, {"suffix": "dseg"})
    if lesion:
        name, vol = lesion[0]
        ctx.lesion_mask = _load_on_grid(vol.path, grid)
        ctx.lesion_source = f"provided: bids:{name}:{Path(vol.path).name}"
    for name, vol in dsegs:
        codes = _dseg_codes(vol.path)
        labels = _load_on_grid(vol.path, grid).astype(np.int32)
        tissue = np.zeros(grid.shape, np.uint8)
        for idx, code in codes.items():
            tissue[labels == idx] = code
        if ctx.lesion_mask is None and (tissue == 4).any():
            ctx.lesion_mask = (tissue == 4).astype(np.float32)
            ctx.lesion_source = f"provided: bids:{name}:{Path(vol.path).name} (lesion label)"
        if ctx.tissue is None and np.isin(tissue, (1, 2)).any():
            tissue[tissue == 4] = 2
            ctx.tissue = tissue
            ctx.tissue_source = f"provided: bids:{name}:{Path(vol.path).name}"
    if ctx.tissue is None:
        probs = {
            lab: _derivative_files(ctx, {"suffix": "probseg", "label": lab})
            for lab in ("GM", "WM", "CSF")
        }
        if all(probs.values()):
            stack = np.stack(
                [_load_on_grid(probs[k][0][1].path, grid) for k in ("GM", "WM", "CSF")], axis=-1
            )
            tissue = (np.argmax(stack, axis=-1) + 1).astype(np.uint8)
            tissue[stack.max(axis=-1) < 0.5] = 0
            ctx.tissue = tissue
            ctx.tissue_source = f"provided: {probs['WM'][0][0]} probseg (argmax, p >= 0.5)"

    if ctx.lesion_mask is not None:
        ctx.lesion_mask = np.asarray(ctx.lesion_mask, dtype=np.float32)
    else:
        ctx.lesion_source = (
            "none: no lesion mask provided (built-in lesion segmentation is not available yet)"
        )
        logger.info("%s: no lesion mask in --derivatives; lesion regions are empty", ctx.label)

    if ctx.tissue is None:
        seg_name = "T1w" if "T1w" in ctx.structural else ctx.reference_name
        seg_path = ctx.structural[seg_name].path
        seg_img = _load_on_grid(seg_path, grid) if seg_path != ctx.reference_path else ref_data
        exclude = ctx.lesion_mask > 0.5 if ctx.lesion_mask is not None else None
        ctx.tissue, method = segmentation.segment_tissue(
            seg_img, ctx.brain_mask, contrast=seg_name, exclude=exclude
        )
        ctx.tissue_source = f"computed on {Path(seg_path).name}: {method}"
    ctx.tissue = np.where(ctx.brain_mask, ctx.tissue, 0).astype(np.uint8)
