"""Region and lesion masks in the reference space, and the per-region / per-lesion tables."""

from __future__ import annotations

import logging

import numpy as np

from bids_app import lesions, regions
from bids_app.bids.derivatives import bids_uri, build_name, subject_dir, write_image, write_table
from bids_app.io import save_text
from bids_app.schema import LESION_COLUMNS, REGION_COLUMNS
from bids_app.stages.context import SubjectContext
from bids_app.stages.enhancement import column_descriptions, subject_enhancement

logger = logging.getLogger(__name__)


def write_masks(
    ctx: SubjectContext,
    region_masks: dict[str, np.ndarray],
    labels: np.ndarray,
    dseg_extra: dict | None = None,
) -> None:
    """Write the brain, tissue and region masks and the lesion label image.

    ``dseg_extra`` goes into the lesion ``dseg`` sidecar (the ``Enhancement`` record).
    """
    out, grid = ctx.cfg.output_dir, ctx.grid
    ents = {"subject": ctx.subject, "session": ctx.session, "space": ctx.reference_name}
    ref_uri = bids_uri("raw", ctx.rel(ctx.reference_path))
    side = {
        "SpatialReference": ref_uri,
        "Type": "Brain",
        "Sources": [ref_uri],
        "Method": ctx.brain_mask_source,
    }
    write_image(
        out,
        "anat",
        dict(ents, desc="brain"),
        "mask",
        ctx.brain_mask,
        grid.affine,
        side,
        dtype=np.uint8,
    )
    for name in ("lesion", "NAWM", "NAGM", "WM", "GM", "CSF"):
        method = ctx.lesion_source if name == "lesion" else ctx.tissue_source
        write_image(
            out,
            "anat",
            dict(ents, label=name),
            "mask",
            region_masks[name],
            grid.affine,
            {"SpatialReference": ref_uri, "Method": method, "Sources": [ref_uri]},
            dtype=np.uint8,
        )
    path = write_image(
        out,
        "anat",
        dict(ents, desc="lesions"),
        "dseg",
        labels,
        grid.affine,
        {
            "SpatialReference": ref_uri,
            "Method": ctx.lesion_source,
            "Description": "one integer per connected lesion",
            **(dseg_extra or {}),
        },
        dtype=np.int16,
    )
    ids = [int(i) for i in np.unique(labels) if i > 0]
    tsv = "index\tname\n" + "".join(f"{i}\tlesion_{i}\n" for i in ids)
    save_text(path.with_name(path.name.replace(".nii.gz", ".tsv")), tsv)


def summarise(ctx: SubjectContext, *, brain_region: bool = False) -> None:
    """Build the regions, write the masks and both tables of one subject/session.

    ``brain_region`` adds a ``brain`` region (the whole brain mask) before the others: the
    rows of subjects whose tissue classes may be empty (no structural image,
    :mod:`bids_app.stages.qmri_reference`).
    """
    grid = ctx.grid
    lesion = ctx.lesion_mask if ctx.lesion_mask is not None else np.zeros(grid.shape)
    # the [lesionseg] connectivity option labels provided masks the same way (default 26)
    connectivity = int(ctx.cfg.model_options.get("lesionseg", {}).get("connectivity", 26))
    labels = regions.lesion_labels(lesion, zooms=grid.zooms, connectivity=connectivity)
    labels = np.where(ctx.brain_mask, labels, 0)
    region_masks = regions.build_regions(
        ctx.tissue, labels > 0, zooms=grid.zooms, brain_mask=ctx.brain_mask
    )
    if brain_region:
        region_masks = {"brain": np.asarray(ctx.brain_mask, bool), **region_masks}
    enh = subject_enhancement(ctx, labels, region_masks["NAWM"] > 0)  # n/a without a ceT1w
    write_masks(ctx, region_masks, labels, {"Enhancement": enh.record} if enh.record else None)

    maps = {rec.key: rec.data_ref for rec in ctx.maps if rec.data_ref is not None}
    units = {rec.key: rec.units for rec in ctx.maps}
    ids = {
        "participant_id": f"sub-{ctx.subject}",
        "session_id": f"ses-{ctx.session}" if ctx.session else None,
    }
    stats = regions.region_stats(maps, region_masks, zooms=grid.zooms)
    stats.insert(0, "participant_id", ids["participant_id"])
    stats.insert(1, "session_id", ids["session_id"])
    stats.insert(3, "units", stats["map"].map(units))
    stats.insert(4, "space", ctx.reference_name)
    stats = stats[list(REGION_COLUMNS)]

    chi = [rec.key for rec in ctx.maps if rec.suffix == "Chimap" and rec.key in maps]
    les = lesions.lesion_table(
        labels,
        maps,
        affine=grid.affine,
        zooms=grid.zooms,
        tissue=ctx.tissue,
        chi_maps=chi,
        nawm=region_masks["NAWM"] > 0,
        enhancement=enh.table,
    )
    les.insert(0, "participant_id", ids["participant_id"])
    les.insert(1, "session_id", ids["session_id"])
    les["units"] = les["map"].map(units)
    les = les[list(LESION_COLUMNS)]

    ents = {"subject": ctx.subject, "session": ctx.session}
    base = subject_dir(ctx.cfg.output_dir, ents, "")
    write_table(
        base / build_name(dict(ents, desc="regions"), "stats", ".tsv"), stats, REGION_COLUMNS
    )
    write_table(
        base / build_name(dict(ents, desc="lesions"), "stats", ".tsv"),
        les,
        column_descriptions(enh, LESION_COLUMNS),
    )
    logger.info("%s: %d lesion(s), %d region rows", ctx.label, int(labels.max()), len(stats))
