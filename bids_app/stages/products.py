"""Products one model hands to another: one record per product, one resampling function.

A model declares what it consumes (:class:`~bids_app.models.specs.Requirement`: B1 from
``b1``, T1 from ``vfa_t1``, the lesion labels from the anatomy stage); the producer's maps are
kept here once, and :func:`covariates_for` puts the right one on the consumer's grid and
returns the provenance record its sidecars carry. Nothing in here knows a model by name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bids_app import io
from bids_app.bids.query import ModelRun
from bids_app.models.base import QMRIModel
from bids_app.models.specs import Requirement
from bids_app.stages.context import Grid, Product, SubjectContext

logger = logging.getLogger(__name__)

#: producer name of the subject's masks (brain, tissue, lesion) on the reference grid
ANATOMY = "anatomy"
_RESAMPLING = {0: "nearest neighbour through the affines", 1: "trilinear through the affines"}
_REGISTERED = " and the registrations to the reference image"


def intended_for(run: ModelRun) -> frozenset[str]:
    """File names listed in the ``IntendedFor`` of a run's inputs."""
    names = set()
    for coll in run.collections.values():
        for vol in coll.volumes:
            items = vol.metadata.get("IntendedFor") or []
            for item in [items] if isinstance(items, str) else items:
                names.add(Path(str(item).split(":")[-1]).name)
    return frozenset(names)


def add_product(ctx: SubjectContext, product: Product) -> None:
    """Keep one product for the consumers that come later."""
    ctx.products.setdefault((product.model, product.output), []).append(product)


def policy_value(ctx: SubjectContext, req: Requirement) -> str:
    """The run's policy for a requirement (``--b1`` for B1), ``'auto'`` if it has none."""
    if req.policy == "b1":
        return ctx.cfg.b1_policy
    return "auto"


def choose(ctx: SubjectContext, req: Requirement, run: ModelRun) -> Product | None:
    """The product a run consumes: the one ``IntendedFor`` its files, else the only one.

    With several candidates and none intended for the run, the first is used and a warning
    names it.
    """
    candidates = ctx.products.get((req.model, req.output), [])
    if not candidates:
        return None
    names = {Path(p).name for p in run.sources}
    for prod in candidates:
        if names & prod.intended_for:
            return prod
    if len(candidates) > 1:
        logger.warning(
            "%s: %d %s maps and none IntendedFor %s; using %s",
            ctx.label,
            len(candidates),
            req.output,
            sorted(names),
            Path(candidates[0].uri.split(":")[-1]).name,
        )
    return candidates[0]


def on_grid(product: Product, grid: Grid, order: int) -> np.ndarray:
    """A product resampled onto a consumer's grid (registrations and affines)."""
    return io.resample(
        product.data,
        product.grid.affine,
        grid.shape,
        grid.affine,
        order=order,
        world=product.grid.world_to(grid),
    )


def covariates_for(
    ctx: SubjectContext, run: ModelRun, grid: Grid, model: QMRIModel | None = None
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], list[str]]:
    """The declared products of a run's model on its grid.

    With ``model`` (the run's configured instance), only its
    :meth:`~bids_app.models.base.QMRIModel.active_requirements`; the others get no record,
    so the sidecars say the model does not use them.

    Returns
    -------
    covariates : dict
        Requirement name -> (X, Y, Z) array on ``grid``.
    provenance : dict
        Sidecar key -> ``{Policy, Applied, Source, Resampling}`` or ``{..., Reason}``.
    missing : list of str
        Required products that are absent (the run is not fitted), with the reason.
    """
    covariates, provenance, missing = {}, {}, []
    reqs = run.model.requires if model is None else model.active_requirements()
    for req in reqs:
        policy = policy_value(ctx, req)
        record: dict[str, Any] = {"Policy": policy, "Applied": False}
        prod = None if policy == "none" else choose(ctx, req, run)
        if prod is not None:
            covariates[req.name] = on_grid(prod, grid, req.order)
            how = _RESAMPLING[req.order]
            if prod.grid.world_to(grid) is not None:
                how += _REGISTERED
            record.update(Applied=True, Source=prod.uri, Resampling=how)
        else:
            reason = (
                f"--{req.policy} none"
                if policy == "none"
                else f"no {req.output} map from {req.model} for this subject"
            )
            record["Reason"] = reason
            if req.required:
                missing.append(f"{req.name} ({reason})")
            else:
                logger.warning(
                    "%s: %s without %s correction (%s)",
                    ctx.label,
                    run.model.name,
                    req.output,
                    reason,
                )
        provenance[req.record_key] = record
    return covariates, provenance, missing


def add_anatomy_products(ctx: SubjectContext) -> None:
    """Offer the subject's masks (reference grid) as products of :data:`ANATOMY`."""
    if ctx.grid is None:
        return
    for output, data, source in (
        ("brain", ctx.brain_mask, ctx.brain_mask_source),
        ("tissue", ctx.tissue, ctx.tissue_source),
        ("lesion", ctx.lesion_mask, ctx.lesion_source),
    ):
        if data is not None:
            arr = np.asarray(data, dtype=np.float32)
            add_product(ctx, Product(ANATOMY, output, arr, ctx.grid, source, frozenset()))
