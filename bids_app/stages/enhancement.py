"""The ``enhancing`` lesion columns of one subject/session from its post-gadolinium T1w.

The ``ceT1w`` image (:data:`bids_app.bids.query.STRUCTURAL`: a T1w with a gadolinium
``ce-`` label) and the pre-contrast ``T1w`` are registered to the reference image and
resampled onto its grid like the other structural images
(:func:`bids_app.stages.anatomy._load_on_grid`: transform files
``*_from-ceT1w_to-<ref>_mode-image_xfm.txt`` and ``*_from-T1w_...``); the per-lesion
numbers come from :func:`bids_app.lesion_enhancement.lesion_enhancement`. Without a
``ceT1w`` the columns are n/a.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app import io
from bids_app.bids.derivatives import bids_uri
from bids_app.lesion_enhancement import EnhancementOptions, lesion_enhancement
from bids_app.stages.anatomy import _load_on_grid
from bids_app.stages.context import SubjectContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enhancement:
    """Per-lesion enhancement (``table``, None without a ceT1w) and its sidecar record."""

    table: pd.DataFrame | None = None
    record: dict = field(default_factory=dict)


def _on_grid(ctx: SubjectContext, name: str) -> np.ndarray:
    path = ctx.structural[name].path
    if path == ctx.reference_path:
        return io.read_data(io.load_image(path), path)
    return _load_on_grid(path, ctx, name)


def subject_enhancement(
    ctx: SubjectContext,
    labels: np.ndarray,
    nawm: np.ndarray,
    options: EnhancementOptions | None = None,
) -> Enhancement:
    """Enhancement of every lesion of ``labels`` (reference grid) for one subject/session.

    Parameters
    ----------
    ctx : SubjectContext
        With ``structural`` (``ceT1w``, ``T1w``), ``grid`` and the reference image.
    labels : (X, Y, Z) int ndarray
        Lesion labels on the reference grid.
    nawm : (X, Y, Z) bool ndarray
        Normal-appearing white matter on the reference grid.
    options : EnhancementOptions, optional

    Returns
    -------
    Enhancement
        ``table`` None (and an empty record) without a ceT1w image; the record names the
        post- and pre-contrast images (``bids:raw:`` URIs) and the method. A subject whose
        NAWM gives no reference (no NAWM voxel) keeps n/a columns, with the reason in the
        record and a warning.
    """
    ce = ctx.structural.get("ceT1w")
    if ce is None:
        return Enhancement()
    post = _on_grid(ctx, "ceT1w")
    pre = _on_grid(ctx, "T1w") if "T1w" in ctx.structural else None
    record = {
        "ContrastEnhancedImage": bids_uri("raw", ctx.rel(ce.path)),
        "PreContrastImage": (
            bids_uri("raw", ctx.rel(ctx.structural["T1w"].path)) if pre is not None else None
        ),
        "Registration": f"--registration {ctx.cfg.registration}, to the {ctx.reference_name}",
    }
    try:
        table, info = lesion_enhancement(
            labels, post, nawm, pre, zooms=ctx.grid.zooms, options=options
        )
    except ValueError as err:
        logger.warning("%s: no lesion enhancement: %s", ctx.label, err)
        ctx.warnings.append(f"lesion enhancement not computed: {err}")
        return Enhancement(None, {**record, "Method": f"not computed: {err}"})
    logger.info(
        "%s: %d of %d lesion(s) enhancing on %s",
        ctx.label,
        info["NumberOfEnhancingLesions"],
        len(table),
        Path(ce.path).name,
    )
    return Enhancement(table, {**record, **info})


def column_descriptions(enh: Enhancement, columns: dict[str, str]) -> dict[str, str]:
    """The lesion table's column dictionary with this subject's enhancement method added."""
    if not enh.record:
        return columns
    what = (
        f" [{enh.record.get('Method')}; post-contrast {enh.record.get('ContrastEnhancedImage')}"
        f", pre-contrast {enh.record.get('PreContrastImage') or 'none'}]"
    )
    return {k: v + what if k == "enhancing" else v for k, v in columns.items()}
