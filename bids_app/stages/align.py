"""Registration of each collection (and the T1w/T2w) to the subject's reference image.

The edge around :mod:`bids_app.registration` (pure arrays): which image is registered
(:meth:`~bids_app.models.base.QMRIModel.registration_image`), once per collection (cached by
the lead input's path), the ``*_from-<model>_to-<ref>_mode-image_xfm.txt`` file (ITK text,
:mod:`bids_app.xfm`), the ``Registration`` record of the sidecars, and the report warning
when a registration fails (the header alignment is then used, never a garbage transform).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from bids_app import io
from bids_app.bids.derivatives import bids_uri, build_name, subject_dir
from bids_app.registration import Registration, RegistrationOptions, identity, register
from bids_app.stages.context import Grid, SubjectContext
from bids_app.xfm import write_xfm

logger = logging.getLogger(__name__)

METHOD = (
    "dipy.align.affine_registration, mutual information (Mattes 2003), centre of mass / "
    "translation / rigid (/ affine), multi-resolution"
)


def reference_data(ctx: SubjectContext) -> np.ndarray:
    """The reference image's data (read once per subject)."""
    if ctx.reference_data is None:
        img = io.load_image(ctx.reference_path)
        ctx.reference_data = np.asarray(io.read_data(img, ctx.reference_path), np.float32)
    return ctx.reference_data


def registration_for(
    ctx: SubjectContext,
    key: str,
    moving: np.ndarray,
    affine: np.ndarray,
    *,
    registrable: bool = True,
) -> Registration:
    """The registration of ``moving`` (world ``affine``) to the reference, cached by ``key``.

    ``--registration none``, a subject without a reference image, the reference image
    itself, or an input that is not ``registrable`` (a B1+ map) give the header alignment
    (mode ``'none'``).
    """
    if key in ctx.registrations:
        return ctx.registrations[key]
    mode = ctx.cfg.registration
    if mode == "none" or ctx.grid is None or key == ctx.reference_path or not registrable:
        reg = identity()
    else:
        reg = register(
            np.asarray(moving, dtype=np.float32),
            affine,
            reference_data(ctx),
            ctx.grid.affine,
            mode=mode,
            static_mask=ctx.brain_mask,
            options=RegistrationOptions(),
        )
        logger.info(
            "%s: registered %s to %s (%s, NMI %.4f, headers %.4f, %.2f mm, %.2f deg)",
            ctx.label,
            Path(key).name,
            ctx.reference_name,
            mode,
            reg.metric,
            reg.metric_header,
            reg.translation_mm,
            reg.rotation_deg,
        )
        if reg.failed:
            ctx.warnings.append(
                f"registration of {Path(key).name} to the {ctx.reference_name} failed "
                f"(NMI peak sharpness {reg.sharpness:.3f} < "
                f"{RegistrationOptions().fail_sharpness}, NMI {reg.metric:.4f}): "
                "header alignment used"
            )
    if reg.mode != "none":
        ctx.registrations[key] = reg
    return reg


def registered_grid(grid: Grid, reg: Registration) -> Grid:
    """``grid`` carrying the registration (``None`` for the header alignment)."""
    return Grid(grid.shape, grid.affine, None if reg.mode == "none" else reg.matrix)


def xfm_entities(entities: dict[str, Any], model: str, reference: str) -> dict[str, Any]:
    """Entities of the transform file of a run: ``from-<model>_to-<ref>_mode-image``."""
    label = re.sub(r"[^a-zA-Z0-9]", "", model)
    return dict(entities, **{"from": label, "to": reference, "mode": "image"})


def write_transform(
    ctx: SubjectContext, entities: dict[str, Any], datatype: str, model: str, reg: Registration
) -> str | None:
    """Write the run's ``*_xfm.txt``; its ``bids:`` URI (``None`` for mode ``'none'``)."""
    if reg.mode == "none":
        return None
    ents = xfm_entities(entities, model, ctx.reference_name)
    path = subject_dir(ctx.cfg.output_dir, ents, datatype) / build_name(ents, "xfm", ".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_xfm(path, reg.matrix)
    return bids_uri("", path.relative_to(ctx.cfg.output_dir).as_posix())


def registration_record(ctx: SubjectContext, reg: Registration, uri: str | None) -> dict:
    """The ``Registration`` sidecar block."""
    if reg.mode == "none":
        reason = (
            "--registration none"
            if ctx.cfg.registration == "none"
            else "no reference image, the reference image itself, or an input without "
            "anatomy to register (B1+ map)"
        )
        return {"Mode": "none", "Method": f"image affines only ({reason})"}
    return {
        "Mode": reg.mode,
        "Method": METHOD,
        "Reference": bids_uri("raw", ctx.rel(ctx.reference_path)),
        "Metric": "normalised mutual information (Studholme 1999) over the brain mask",
        "MetricValue": round(reg.metric, 5),
        "MetricValueHeaders": round(reg.metric_header, 5),
        "PeakSharpness": round(reg.sharpness, 4),
        "Failed": reg.failed,
        "TranslationMM": round(reg.translation_mm, 3),
        "RotationDegrees": round(reg.rotation_deg, 3),
        "Options": RegistrationOptions().as_dict(),
        "Notes": list(reg.notes),
        "Transform": uri,
    }
