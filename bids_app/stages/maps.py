"""Fit every applicable model of a subject and write its maps (native and reference space).

One run goes through five steps, each knowing only what it needs: :func:`load_inputs` (files
to arrays on the lead input's grid), :func:`~bids_app.stages.products.covariates_for` (the
declared products of other models), :func:`fit_loaded` (the model's fit, voxelwise or whole
volume, and the shared post-processing), :func:`provenance` (what the sidecars say) and
:func:`write_outputs` (maps, rmse, records and products for later consumers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_app import __version__, io
from bids_app.bids.derivatives import (
    bids_uri,
    build_name,
    link_image,
    naming_entities,
    write_image,
)
from bids_app.bids.query import ModelRun
from bids_app.errors import MetadataError, NotApplicableError
from bids_app.models.base import QMRIFit, QMRIModel
from bids_app.stages import align, products, volume_align
from bids_app.stages.context import Grid, MapRecord, Product, SubjectContext

logger = logging.getLogger(__name__)


@dataclass
class LoadedInputs:
    """A run's images: one (X, Y, Z, n) array per input, on the lead input's grid."""

    data: dict[str, np.ndarray]
    grid: Grid
    paths: list[str]

    def stacked(self, names: tuple[str, ...]) -> np.ndarray:
        """The inputs of ``names`` joined on the measurement axis (voxelwise models)."""
        arrays = [self.data[n] for n in names]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=-1)


def _datatype(run: ModelRun, spec) -> str:
    return spec.datatype or run.model.inputs[0].query.get("datatype", "anat")


def source_uri(ctx: SubjectContext, path: str, run: ModelRun) -> str:
    """``bids:raw:<rel>`` for raw inputs, ``bids:<name>:<rel>`` for derivative inputs."""
    for coll in run.collections.values():
        for vol in coll.volumes:
            if vol.path == path and vol.dataset != "raw" and vol.root:
                return bids_uri(vol.dataset, io_relpath(path, vol.root))
    return bids_uri("raw", ctx.rel(path))


def io_relpath(path: str, root: str) -> str:
    """``path`` relative to a dataset ``root`` (POSIX)."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def table_key(entities: dict[str, Any], suffix: str) -> str:
    """The ``map`` column of the tables: the file name without subject, session, extension.

    ``'T1map'`` and ``'desc-MTS_T1map'`` for one acquisition; ``'acq-ax_T1map'`` keeps two
    acquisitions of one subject apart.
    """
    ents = {k: v for k, v in entities.items() if k not in ("subject", "session")}
    return build_name(ents, suffix, "")


def mask_on(ctx: SubjectContext, grid: Grid, first_volume: np.ndarray) -> np.ndarray:
    """The subject brain mask on a model grid (nearest), or a positive-signal mask."""
    if ctx.brain_mask is not None and ctx.grid is not None:
        return (
            io.resample(
                ctx.brain_mask.astype(np.uint8),
                ctx.grid.affine,
                grid.shape,
                grid.affine,
                order=0,
                world=ctx.grid.world_to(grid),
            )
            > 0
        )
    return np.isfinite(first_volume) & (first_volume > 0)


def load_inputs(run: ModelRun) -> LoadedInputs:
    """Read every input of a run; all inputs must share the lead input's grid.

    Raises
    ------
    MetadataError
        Unreadable images, or an input on another grid than the lead input (naming it).
    """
    data, affine, paths = {}, None, []
    for name, coll in run.collections.items():
        spec = next(s for s in run.model.inputs if s.name == name)
        arr, aff = io.load_volumes(coll.paths, series=spec.series)
        if affine is None:
            affine, shape = aff, arr.shape[:3]
        elif not io.same_grid(arr.shape, aff, shape, affine):
            raise MetadataError(
                coll.paths[0],
                "affine/shape",
                f"{arr.shape[:3]}",
                f"the grid of {paths[0]} (inputs of one {run.model.name} fit)",
            )
        data[name] = arr
        paths += coll.paths
    return LoadedInputs(data, Grid(tuple(shape), affine), paths)


def preprocessed(
    ctx: SubjectContext, model: QMRIModel, inputs: LoadedInputs, mask: np.ndarray
) -> tuple[QMRIModel, LoadedInputs, np.ndarray]:
    """The model's shared preprocessing (:meth:`QMRIModel.preprocess`), done once per key.

    Models of one subject with the same :meth:`~QMRIModel.preprocess_key` on the same files
    reuse the last result; only one result is kept (memory). A ``'mask'`` in the state
    replaces the fit mask.
    """
    key = model.preprocess_key()
    if key is None:
        return model, inputs, mask
    cache_key = (tuple(inputs.paths), key)
    if cache_key not in ctx.preprocessed:
        ctx.preprocessed.clear()
        ctx.preprocessed[cache_key] = model.preprocess(
            inputs.data, mask=mask, affine=inputs.grid.affine, pool=ctx.pool
        )
        logger.info("%s: %s preprocessed %s", ctx.label, model.name, inputs.paths[0])
    data, state = ctx.preprocessed[cache_key]
    if state.get("mask") is not None:
        mask = np.asarray(state["mask"], dtype=bool)
    return model.with_preprocessed(state), LoadedInputs(data, inputs.grid, inputs.paths), mask


def fit_loaded(
    ctx: SubjectContext,
    run: ModelRun,
    model: QMRIModel,
    inputs: LoadedInputs,
    mask: np.ndarray,
    covariates: dict[str, np.ndarray],
) -> tuple[QMRIModel, QMRIFit, dict[str, np.ndarray]]:
    """The model's fit and the shared post-processing; returns the (prepared) model too."""
    cfg = ctx.cfg
    if model.kind == "voxelwise":
        data = inputs.stacked(run.stacked)
        model = model.prepare(data, mask, path=inputs.paths[0])
        fit = model.fit(
            data,
            mask=mask,
            covariates=covariates,
            chunk_size=cfg.chunk_size,
            nprocs=cfg.nprocs,
            **({"pool": ctx.pool} if ctx.pool is not None else {}),
        )
    else:
        fit = model.fit(inputs.data, mask=mask, affine=inputs.grid.affine, covariates=covariates)
    maps = model.spatial_postprocess(
        fit.maps(), zooms=inputs.grid.zooms, mask=mask, affine=inputs.grid.affine
    )
    return model, fit, maps


def provenance(
    ctx: SubjectContext, run: ModelRun, model: QMRIModel, requirements: dict[str, Any]
) -> dict[str, Any]:
    """The sidecar fields shared by every output of a run.

    Every sidecar states the B1 policy (CONTRACT 4), also for models without B1.
    """
    requirements = dict(requirements)
    requirements.setdefault(
        "B1Correction",
        {"Policy": ctx.cfg.b1_policy, "Applied": False, "Reason": "the model does not use B1"},
    )
    return {
        "Sources": [source_uri(ctx, p, run) for p in run.sources],
        # fits are restricted to a brain mask only when the subject has one
        "SkullStripped": ctx.brain_mask is not None,
        "EstimationAlgorithm": f"{run.model.name}: {run.model.description}",
        "EstimationReference": run.model.reference,
        "EstimationSoftwareName": "msqmri",
        "EstimationSoftwareVersion": __version__,
        "ModelOptions": model.options,
        "AcquisitionParameters": model.acquisition,
        "MetadataKeysUsed": {c.name: dict(c.sources) for c in run.collections.values()},
        **requirements,
        **({"FitNotes": dict(model.fit_notes)} if getattr(model, "fit_notes", None) else {}),
        "BrainMask": ctx.brain_mask_source or "positive signal of the first volume",
    }


def write_outputs(
    ctx: SubjectContext,
    run: ModelRun,
    fit: QMRIFit,
    maps: dict[str, np.ndarray],
    grid: Grid,
    mask: np.ndarray,
    common: dict[str, Any],
) -> None:
    """Write maps, sidecars and the rmse map; keep records and products."""
    cfg = ctx.cfg
    ents = naming_entities(run.entities)
    n_out = fit.n_out_of_range()
    targets = products.intended_for(run)
    for spec in fit.model.outputs:  # the instance's (options may add an output)
        side = {
            "Units": spec.units,
            **common,
            "ValidRange": list(spec.valid_range) if spec.valid_range else None,
            "NumberOfOutOfRangeVoxels": n_out.get(spec.name, 0),
            "NumberOfFittedVoxels": int(mask.sum()),
        }
        e = dict(ents, **spec.name_entities)
        datatype = _datatype(run, spec)
        data = maps[spec.name]
        path = write_image(cfg.output_dir, datatype, e, spec.suffix, data, grid.affine, side)
        ctx.maps.append(
            MapRecord(
                table_key(e, spec.suffix),
                spec.units,
                path,
                run.model.name,
                e,
                spec.suffix,
                datatype,
                side,
                data,
                grid,
            )
        )
        uri = bids_uri("", path.relative_to(cfg.output_dir).as_posix())
        products.add_product(ctx, Product(run.model.name, spec.name, data, grid, uri, targets))
    if fit.rmse is not None:
        first = fit.model.outputs[0]
        e = dict(ents, **first.entities, desc=f"{first.desc or ''}rmse")
        write_image(
            cfg.output_dir,
            _datatype(run, first),
            e,
            first.suffix,
            np.where(mask, fit.rmse, np.nan),
            grid.affine,
            {
                "Units": "arbitrary (signal units)",
                **common,
                "Description": "root-mean-square residual of the fit",
            },
        )


def fit_run(ctx: SubjectContext, run: ModelRun) -> bool:
    """Fit one model run and write its outputs; ``False`` if a required product is missing."""
    options = dict(ctx.cfg.model_options.get(run.model.name, {}))
    try:
        model: QMRIModel = run.model.from_collections(run.collections, **options)
    except NotApplicableError as exc:
        reason = f"{run.model.name}: not applicable ({exc})"
        logger.warning("%s: %s", ctx.label, reason)
        ctx.skipped.append(reason)
        return False
    inputs = load_inputs(run)
    reg = align.registration_for(
        ctx,
        inputs.paths[0],
        model.registration_image(inputs.data),
        inputs.grid.affine,
        registrable=model.registrable,
    )
    inputs.grid = grid = align.registered_grid(inputs.grid, reg)
    first = next(iter(inputs.data.values()))[..., 0]
    mask = mask_on(ctx, grid, first)
    if not mask.any():
        raise MetadataError(
            inputs.paths[0],
            "affine",
            np.round(grid.affine, 3).tolist(),
            f"an image overlapping the brain mask of the reference image {ctx.reference_path}",
        )
    covariates, requirements, missing = products.covariates_for(ctx, run, grid, model)
    if missing:
        reason = f"{run.model.name}: not fitted, missing {', '.join(missing)}"
        logger.warning("%s: %s", ctx.label, reason)
        ctx.skipped.append(reason)
        return False
    aligned, volume_reg = volume_align.align_run(
        ctx.cfg.volume_registration,
        model,
        run.collections,
        inputs.data,
        inputs.grid.affine,
        warnings=ctx.warnings,
    )
    inputs = LoadedInputs(aligned, inputs.grid, inputs.paths)
    model, inputs, mask = preprocessed(ctx, model, inputs, mask)
    model, fit, maps = fit_loaded(ctx, run, model, inputs, mask, covariates)
    common = provenance(ctx, run, model, requirements)
    ents = naming_entities(run.entities)
    uri = align.write_transform(
        ctx, ents, _datatype(run, run.model.outputs[0]), run.model.name, reg
    )
    common["Registration"] = align.registration_record(ctx, reg, uri)
    if volume_reg is not None:
        common["VolumeRegistration"] = volume_reg
    write_outputs(ctx, run, fit, maps, grid, mask, common)
    logger.info(
        "%s: %s fitted %d voxels -> %s",
        ctx.label,
        run.model.name,
        int(mask.sum()),
        ", ".join(s.key for s in model.outputs),
    )
    return True


def to_reference(ctx: SubjectContext) -> None:
    """Resample every map to the reference grid and write the ``space-<ref>`` copies.

    The native array of a record is released once its reference copy exists (memory). A map
    already on the reference grid whose copy would be voxel-identical gets the native file
    hard-linked under the ``space-<ref>`` name (no second compression; a copy where the
    filesystem has no hard links).
    """
    if ctx.grid is None:
        return
    for rec in ctx.maps:
        grid = rec.native_grid
        world = grid.world_to(ctx.grid)
        same = world is None and io.same_grid(
            grid.shape, grid.affine, ctx.grid.shape, ctx.grid.affine
        )
        ref = io.resample(
            rec.native, grid.affine, ctx.grid.shape, ctx.grid.affine, order=1, world=world
        )
        if ctx.brain_mask is not None:
            ref = np.where(ctx.brain_mask, ref, np.nan).astype(np.float32)
        rec.data_ref = ref
        # a map already on the reference grid, NaN outside its brain mask: the same bytes
        identical = (
            same
            and np.array_equal(grid.affine, ctx.grid.affine)
            and rec.path.is_file()
            and np.array_equal(ref, rec.native, equal_nan=True)
        )
        side = dict(rec.sidecar)
        side.update(
            {
                "Sources": [bids_uri("", rec.path.relative_to(ctx.cfg.output_dir))],
                "SpatialReference": bids_uri("raw", ctx.rel(ctx.reference_path)),
                "Resampling": "none (same grid)"
                if same
                else "trilinear, once, through the image affines"
                + (" and the registration (Registration.Transform)" if world is not None else ""),
            }
        )
        ents = dict(rec.entities, space=ctx.reference_name)
        if identical:
            link_image(ctx.cfg.output_dir, rec.datatype, ents, rec.suffix, rec.path, side)
        else:
            write_image(
                ctx.cfg.output_dir, rec.datatype, ents, rec.suffix, ref, ctx.grid.affine, side
            )
