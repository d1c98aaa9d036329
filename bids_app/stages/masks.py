"""Masks given with ``--derivatives`` (CONTRACT 2.2), read and put on the reference grid.

Brain masks (``desc-brain_mask``), lesion masks (``label-lesion``/``label-WMH``/
``desc-lesion``), ``_dseg`` label images with their ``.tsv`` and ``label-{GM,WM,CSF}``
probsegs. Masks on another grid than the reference are resampled through the affines
(world coordinates, nearest neighbour).

Bad input is refused with :class:`~bids_app.errors.MetadataError` (exit 65 for the
subject): a mask that shares the reference voxel grid but not its affine, that has the
reference affine on a smaller grid, or that falls outside its field of view; lesion mask
values that are neither binary, integer labels nor probabilities in [0, 1]; a ``_dseg``
with non-integer values or an unreadable ``.tsv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app import io, regions
from bids_app.bids.query import find_volumes
from bids_app.errors import MetadataError
from bids_app.stages.context import SubjectContext

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


def _read_mask(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A derivative mask, label or probability image and its affine (checked, 3-D)."""
    img = io.load_image(path)
    return io.read_data(img, path), img.affine


def _provided_on_grid(path: str, ctx: SubjectContext) -> np.ndarray:
    """A provided mask, label or probability image on the reference grid."""
    return _mask_on_grid(path, *_read_mask(path), ctx)


def _mask_on_grid(
    path: str, data: np.ndarray, affine: np.ndarray, ctx: SubjectContext
) -> np.ndarray:
    """Put a provided mask (``space-orig`` or no ``space``) on the reference grid.

    A mask on another grid is resampled through the affines (nearest neighbour). A mask with
    the voxel grid of the reference but another affine is refused: it is either voxel-aligned
    with a wrong header or in another space, and either way its regions would land in the
    wrong place. So is a mask whose non-zero voxels all fall outside the reference field of
    view.

    Raises
    ------
    MetadataError
        For the two cases above (exit 65).
    """
    grid = ctx.grid
    if io.same_grid(data.shape, affine, grid.shape, grid.affine):
        return data
    ref = Path(ctx.reference_path).name
    if np.allclose(affine, grid.affine, atol=io.AFFINE_ATOL) and any(
        a < b for a, b in zip(data.shape[:3], grid.shape[:3])
    ):
        raise MetadataError(
            path,
            "shape",
            f"{tuple(data.shape)}",
            f"the shape of the reference image {ref} {tuple(grid.shape)} or a larger grid: "
            "the mask has the reference affine but does not cover its field of view "
            "(cropped or from another image); fix the mask or its header",
        )
    if tuple(data.shape) == tuple(grid.shape):
        raise MetadataError(
            path,
            "affine",
            np.round(affine, 4).tolist(),
            f"the affine of the reference image {ref} ({np.round(grid.affine, 4).tolist()}), "
            "as the mask has its voxel grid; fix the mask header",
        )
    logger.info("resampling %s to the reference grid (nearest neighbour)", Path(path).name)
    out = io.resample(data, affine, grid.shape, grid.affine, order=0)
    nonzero = np.isfinite(data) & (data != 0)
    if nonzero.any() and not np.any(np.isfinite(out) & (out != 0)):
        raise MetadataError(
            path,
            "affine",
            np.round(affine, 4).tolist(),
            f"a mask in the space of the reference image {ref}: none of its non-zero voxels "
            "falls inside the reference field of view",
        )
    return out


def _binary_lesion_mask(path: str, data: np.ndarray) -> np.ndarray:
    """A provided lesion mask as 0/1 float32 (:func:`bids_app.regions.as_binary_mask` rules).

    Binary or integer-valued (multi-label) masks: non-zero is lesion; probabilistic masks
    (values in [0, 1], some not integers): lesion where p >= 0.5; NaN is not lesion.

    Raises
    ------
    MetadataError
        Non-integer values outside [0, 1] (exit 65).
    """
    try:
        binary = regions.as_binary_mask(data, name=path).astype(np.float32)
    except ValueError:
        finite = data[np.isfinite(data)]
        raise MetadataError(
            path,
            "values",
            f"{finite.min():g}..{finite.max():g}",
            "a binary or integer-label lesion mask (non-zero = lesion) or a probabilistic "
            "one in [0, 1] (lesion where p >= 0.5)",
        ) from None
    finite = data[np.isfinite(data)]
    if finite.size and np.any(finite != np.round(finite)):
        logger.warning(
            "%s: probabilistic lesion mask (values in [0, 1]): thresholded at p >= 0.5",
            path,
        )
    return binary


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
    try:
        table = pd.read_csv(tsv, sep="\t")
    except (ValueError, UnicodeDecodeError) as err:  # pandas ParserError is a ValueError
        raise MetadataError(str(tsv), "file", type(err).__name__, f"a TSV table ({err})") from None
    if not {"index", "name"} <= set(table.columns):
        raise MetadataError(str(tsv), "columns", list(table.columns), "'index' and 'name'")
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or not (index == index.round()).all():
        raise MetadataError(str(tsv), "index", table["index"].tolist(), "integer labels")
    return {
        int(i): DSEG_NAMES[str(n).strip().lower()]
        for i, n in zip(index, table["name"], strict=True)
        if str(n).strip().lower() in DSEG_NAMES
    }


@dataclass(frozen=True)
class Mask:
    """A mask, label or tissue image on the reference grid and where it came from."""

    data: np.ndarray
    source: str
    path: str | None = None


def provided_brain(ctx: SubjectContext) -> Mask | None:
    """The first ``*_desc-brain_mask`` of the ``--derivatives`` datasets, on the grid."""
    brain = _derivative_files(ctx, {"suffix": "mask", "desc": "brain"})
    if not brain:
        return None
    name, vol = brain[0]
    data = _provided_on_grid(vol.path, ctx) > 0.5
    return Mask(data, f"provided: bids:{name}:{Path(vol.path).name}", vol.path)


def provided_lesion(ctx: SubjectContext) -> Mask | None:
    """A ``label-lesion``/``label-WMH``/``desc-lesion`` mask, binarised, on the grid."""
    lesion = _derivative_files(
        ctx, {"suffix": "mask", "label": ["lesion", "WMH"]}
    ) or _derivative_files(ctx, {"suffix": "mask", "desc": "lesion"})
    if not lesion:
        return None
    name, vol = lesion[0]
    data, affine = _read_mask(vol.path)
    binary = _binary_lesion_mask(vol.path, data)
    on_grid = _mask_on_grid(vol.path, binary, affine, ctx)
    return Mask(on_grid, f"provided: bids:{name}:{Path(vol.path).name}", vol.path)


def from_dsegs(ctx: SubjectContext) -> tuple[Mask | None, Mask | None]:
    """Lesion and tissue from the first ``_dseg`` images that hold them (``.tsv`` names)."""
    lesion = tissue_mask = None
    for name, vol in _derivative_files(ctx, {"suffix": "dseg"}):
        codes = _dseg_codes(vol.path)
        data, affine = _read_mask(vol.path)
        finite = data[np.isfinite(data)]
        if not np.all(finite == np.round(finite)):
            raise MetadataError(
                vol.path, "values", "non-integer", "integer labels listed in the _dseg.tsv"
            )
        labels = np.nan_to_num(_mask_on_grid(vol.path, data, affine, ctx)).astype(np.int32)
        tissue = np.zeros(ctx.grid.shape, np.uint8)
        for idx, code in codes.items():
            tissue[labels == idx] = code
        source = f"provided: bids:{name}:{Path(vol.path).name}"
        if lesion is None and (tissue == 4).any():
            lesion = Mask((tissue == 4).astype(np.float32), f"{source} (lesion label)", vol.path)
        if tissue_mask is None and np.isin(tissue, (1, 2)).any():
            tissue[tissue == 4] = 2
            tissue_mask = Mask(tissue, source, vol.path)
    return lesion, tissue_mask


def provided_probseg(ctx: SubjectContext) -> Mask | None:
    """Tissue from ``label-{GM,WM,CSF}_probseg`` (argmax where the maximum is >= 0.5)."""
    probs = {
        lab: _derivative_files(ctx, {"suffix": "probseg", "label": lab})
        for lab in ("GM", "WM", "CSF")
    }
    if not (probs["GM"] and probs["WM"]):
        given = [lab for lab, found in probs.items() if found]
        if given:
            logger.warning(
                "%s: label-%s probseg given without %s: not used (WM and GM are needed); "
                "tissue is segmented instead",
                ctx.label,
                "/".join(given),
                " and ".join(lab for lab in ("GM", "WM") if not probs[lab]),
            )
        return None
    maps = [_provided_on_grid(probs[k][0][1].path, ctx) for k in ("GM", "WM")]
    note = ""
    if probs["CSF"]:
        maps.append(_provided_on_grid(probs["CSF"][0][1].path, ctx))
    else:
        # CSF as the rest of the brain mask (CONTRACT 2.2): 1 - GM - WM inside the brain
        rest = 1.0 - np.nan_to_num(maps[0]) - np.nan_to_num(maps[1])
        brain = ctx.brain_mask if ctx.brain_mask is not None else np.ones(rest.shape, bool)
        maps.append(np.where(brain, np.clip(rest, 0.0, 1.0), 0.0))
        note = "; no CSF probseg: CSF = brain mask minus GM and WM"
        logger.warning("%s: no label-CSF probseg: CSF is the rest of the brain mask", ctx.label)
    stack = np.nan_to_num(np.stack(maps, axis=-1))
    tissue = (np.argmax(stack, axis=-1) + 1).astype(np.uint8)
    tissue[stack.max(axis=-1) < 0.5] = 0
    return Mask(tissue, f"provided: {probs['WM'][0][0]} probseg (argmax, p >= 0.5){note}")
