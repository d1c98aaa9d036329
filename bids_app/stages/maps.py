"""Fit every applicable model of a subject and write its maps (native and reference space)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bids_app import __version__, io
from bids_app.bids.derivatives import bids_uri, naming_entities, write_image
from bids_app.bids.query import ModelRun
from bids_app.errors import MetadataError
from bids_app.models.base import QMRIModel
from bids_app.stages.context import Grid, MapRecord, SubjectContext

logger = logging.getLogger(__name__)


def _datatype(run: ModelRun) -> str:
    return run.model.inputs[0].query.get("datatype", "anat")


def _mask_on(ctx: SubjectContext, grid: Grid, first_volume: np.ndarray) -> np.ndarray:
    """The subject brain mask on a model grid (nearest), or a positive-signal mask."""
    if ctx.brain_mask is not None and ctx.grid is not None:
        return (
            io.resample(
                ctx.brain_mask.astype(np.uint8), ctx.grid.affine, grid.shape, grid.affine, order=0
            )
            > 0
        )
    return np.isfinite(first_volume) & (first_volume > 0)


def _choose_b1(ctx: SubjectContext, run: ModelRun) -> dict[str, Any] | None:
    if not ctx.b1:
        return None
    names = {Path(p).name for p in run.sources}
    for b1 in ctx.b1:
        if names & b1["intended_for"]:
            return b1
    if len(ctx.b1) > 1:
        logger.warning(
            "%s: %d B1 maps and none IntendedFor %s; using %s",
            ctx.label,
            len(ctx.b1),
            sorted(names),
            ctx.b1[0]["path"].name,
        )
    return ctx.b1[0]


def fit_run(ctx: SubjectContext, run: ModelRun) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fit one model run, write native-space maps, an rmse map and sidecars."""
    cfg = ctx.cfg
    options = dict(cfg.model_options.get(run.model.name, {}))
    model: QMRIModel = run.model.from_collections(run.collections, **options)
    paths = [p for name in run.stacked for p in run.collections[name].paths]
    data, affine = io.load_volumes(paths)
    grid = Grid(tuple(data.shape[:3]), affine)
    mask = _mask_on(ctx, grid, data[..., 0])
    if not mask.any():
        raise MetadataError(
            paths[0],
            "affine",
            np.round(affine, 3).tolist(),
            f"an image overlapping the brain mask of the reference image {ctx.reference_path}",
        )
    model = model.prepare(data, mask, path=paths[0])

    covariates, b1_info = {}, {"Policy": cfg.b1_policy, "Applied": False}
    if run.model.uses_b1:
        b1 = _choose_b1(ctx, run) if cfg.b1_policy == "auto" else None
        if b1 is not None:
            covariates["b1"] = io.resample(
                b1["data"], b1["affine"], grid.shape, grid.affine, order=1
            )
            b1_info.update(
                Applied=True,
                Source=bids_uri("", b1["rel"]),
                Resampling="trilinear through the affines",
            )
        else:
            reason = "--b1 none" if cfg.b1_policy == "none" else "no B1 map for this subject"
            b1_info["Reason"] = reason
            logger.warning("%s: %s without B1 correction (%s)", ctx.label, run.model.name, reason)
    fit = model.fit(
        data, mask=mask, covariates=covariates, chunk_size=cfg.chunk_size, nprocs=cfg.nprocs
    )
    maps = fit.maps()
    maps = model.spatial_postprocess(maps, zooms=grid.zooms, mask=mask)
    n_out = fit.n_out_of_range()

    ents = naming_entities(run.entities)
    datatype = _datatype(run)
    sources = [bids_uri("raw", ctx.rel(p)) for p in run.sources]
    common = {
        "Sources": sources,
        "SkullStripped": True,
        "EstimationAlgorithm": f"{run.model.name}: {run.model.description}",
        "EstimationReference": run.model.reference,
        "EstimationSoftwareName": "msqmri",
        "EstimationSoftwareVersion": __version__,
        "ModelOptions": model.options,
        "AcquisitionParameters": model.acquisition,
        "MetadataKeysUsed": {c.name: dict(c.sources) for c in run.collections.values()},
        "B1Correction": b1_info,
        "BrainMask": ctx.brain_mask_source or "positive signal of the first volume",
    }
    for spec in run.model.outputs:
        side = {
            "Units": spec.units,
            **common,
            "ValidRange": list(spec.valid_range) if spec.valid_range else None,
            "NumberOfOutOfRangeVoxels": n_out.get(spec.name, 0),
            "NumberOfFittedVoxels": int(mask.sum()),
        }
        e = dict(ents, desc=spec.desc) if spec.desc else ents
        path = write_image(cfg.output_dir, datatype, e, spec.suffix, maps[spec.name], affine, side)
        ctx.maps.append(
            MapRecord(
                spec.key,
                spec.units,
                path,
                run.model.name,
                e,
                spec.suffix,
                datatype,
                side,
                maps[spec.name],
                grid,
            )
        )
    if fit.rmse is not None:
        first = run.model.outputs[0]
        e = dict(ents, desc=f"{first.desc or ''}rmse")
        write_image(
            cfg.output_dir,
            datatype,
            e,
            first.suffix,
            np.where(mask, fit.rmse, np.nan),
            affine,
            {
                "Units": "arbitrary (signal units)",
                **common,
                "Description": "root-mean-square residual of the fit",
            },
        )
    logger.info(
        "%s: %s fitted %d voxels -> %s",
        ctx.label,
        run.model.name,
        int(mask.sum()),
        ", ".join(s.key for s in run.model.outputs),
    )
    return maps, affine


def fit_b1(ctx: SubjectContext, run: ModelRun) -> None:
    """Fit a B1 run, write it, and keep it for the consumers."""
    maps, affine = fit_run(ctx, run)
    rec = ctx.maps[-1]
    intended = set()
    for coll in run.collections.values():
        for vol in coll.volumes:
            for item in vol.metadata.get("IntendedFor", []) or []:
                intended.add(Path(str(item).split(":")[-1]).name)
    ctx.b1.append(
        {
            "data": next(iter(maps.values())),
            "affine": affine,
            "path": rec.path,
            "rel": rec.path.relative_to(ctx.cfg.output_dir).as_posix(),
            "intended_for": intended,
        }
    )


def to_reference(ctx: SubjectContext) -> None:
    """Resample every map to the reference grid and write the ``space-<ref>`` copies."""
    if ctx.grid is None:
        return
    for rec in ctx.maps:
        grid = rec.native_grid
        same = io.same_grid(grid.shape, grid.affine, ctx.grid.shape, ctx.grid.affine)
        ref = io.resample(rec.native, grid.affine, ctx.grid.shape, ctx.grid.affine, order=1)
        if ctx.brain_mask is not None:
            ref = np.where(ctx.brain_mask, ref, np.nan).astype(np.float32)
        rec.data_ref = ref
        side = dict(rec.sidecar)
        side.update(
            {
                "Sources": [bids_uri("", rec.path.relative_to(ctx.cfg.output_dir))],
                "SpatialReference": bids_uri("raw", ctx.rel(ctx.reference_path)),
                "Resampling": "none (same grid)"
                if same
                else "trilinear through the image affines (no registration estimated)",
            }
        )
        write_image(
            ctx.cfg.output_dir,
            rec.datatype,
            dict(rec.entities, space=ctx.reference_name),
            rec.suffix,
            ref,
            ctx.grid.affine,
            side,
        )
