"""Motion inside a collection: register its separately acquired volumes before the fit.

The volumes of one collection that are *separate acquisitions* (the MT-off / MT-on pair of
``mtr``, the PDw / T1w / MTw images of ``mtsat``, the VFA flip angles, the IRT1 inversion
times, the three MPM contrasts) can differ by subject motion; a voxelwise fit of misaligned
volumes biases the maps at every edge (e.g. MTR in the spinal cord: 32.7 percent without,
31.9 with SCT's registration, tests/test_volume_registration.py). The model declares which
volumes are separate (:attr:`~bids_app.models.base.QMRIModel.separate_acquisitions`); echo
trains (MEGRE, MESE, the echoes of one MPM contrast), the two inversions of one MP2RAGE and
DWI (motion-corrected in :mod:`bids_app.models.diffusion.preproc`) are one acquisition and
are never registered here.

Each separate volume is registered to the *fixed* volume with
:func:`bids_app.registration.register` (dipy mutual information, Mattes et al. IEEE TMI
2003, rigid; the same pyramid code, options and failure criterion, the NMI peak sharpness,
as the registration to the reference image) and resampled once (trilinear) onto the grid.
The fixed volume is the model's :meth:`~bids_app.models.base.QMRIModel.registration_image`
(the first volume of the lead input by default: MT-off, PDw, the first flip angle or the
first echo of the PDw contrast; the longest inversion time for IRT1), so the maps stay on
the grid and in the alignment of the image registered to the reference. (SCT's MTR gold
standard moves MT-off onto MT-on instead; the estimated motion is the same rigid transform,
inverted.) The metric is computed over the field of view with signal, not the brain mask
(see :func:`align_volumes`). A failed registration keeps the header alignment, with a
warning; an accepted one that moves the head by less than :data:`MIN_MOTION_VOXELS` (RMS)
is recorded and not applied, so volumes acquired without motion are never interpolated.
On the SCT MT pair the estimate matches the mean of SCT's slice-wise gold-standard
translations to 0.02 mm; registering MT-off onto MT-on as SCT does moves the cord MTR
from 32.69 to 32.29 percent (gold standard 31.88; the rest is slice-to-slice motion a rigid
transform cannot follow). With MT-off fixed, as here, the same cord mask gives 30.43: the
cord-edge voxels are interpolated in the other image.

With slices thicker than :data:`THIN_SLAB_RATIO` times the in-plane voxel size (2-D
multi-slice slabs such as the SCT MT data, 0.84 x 0.84 x 17 mm, 5 slices) a full 3-D rigid
transform is ill-posed through the slab, and a tiny tilt moves the outer slices out of the
field of view; the transform is then restricted to in-plane translation and rotation about
the slice normal (:func:`bids_app.registration.in_plane`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from bids_app.registration import RegistrationOptions, register
from bids_app.stages.volume_motion import (
    METHOD,
    MIN_MOTION_VOXELS,
    THIN_SLAB_RATIO,
    VolumeRegistration,
    acquisition_groups,
    motion_voxels,
    volume_options,
)

logger = logging.getLogger(__name__)

__all__ = [
    "METHOD",
    "MIN_MOTION_VOXELS",
    "MODES",
    "THIN_SLAB_RATIO",
    "VolumeRegistration",
    "acquisition_groups",
    "align_run",
    "align_volumes",
    "motion_voxels",
    "resample_volume",
    "volume_options",
]

#: modes of ``--volume-registration``
MODES = ("rigid", "none")


def resample_volume(
    volume: np.ndarray,
    affine: np.ndarray,
    matrix: np.ndarray,
    *,
    phase: bool = False,
) -> np.ndarray:
    """``volume`` resampled through ``matrix`` on its own grid (trilinear, NaN outside).

    Parameters
    ----------
    volume : (X, Y, Z) ndarray
    affine : (4, 4) ndarray
        Voxel-to-world (mm).
    matrix : (4, 4) ndarray
        Fixed world -> moving world (mm).
    phase : bool
        Phase in rad: the unit phasor is interpolated (no jumps at the wraps).

    Returns
    -------
    (X, Y, Z) float32 ndarray
        Voxel-grid coefficients within 1e-9 of an integer are rounded, so an in-plane
        transform keeps every slice exactly in its plane.
    """
    vox = np.linalg.inv(affine) @ matrix @ affine
    vox = np.where(np.abs(vox - np.round(vox)) < 1e-9, np.round(vox), vox)

    def move(a: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(
            a, vox[:3, :3], offset=vox[:3, 3], order=1, mode="constant", cval=np.nan
        )

    volume = np.asarray(volume, dtype=np.float64)
    if phase:
        return np.arctan2(move(np.sin(volume)), move(np.cos(volume))).astype(np.float32)
    return move(volume).astype(np.float32)


def align_volumes(
    data: Mapping[str, np.ndarray],
    affine: np.ndarray,
    fixed: np.ndarray,
    groups: list[tuple[tuple[str, int], ...]],
    *,
    sources: Mapping[tuple[str, int], str],
    mask: np.ndarray | None = None,
    phase_inputs: tuple[str, ...] = (),
    options: RegistrationOptions | None = None,
) -> tuple[dict[str, np.ndarray], list[VolumeRegistration]]:
    """Register every acquisition to ``fixed`` and resample its volumes once.

    Parameters
    ----------
    data : mapping of str to (X, Y, Z, n) ndarray
        The run's inputs on one grid.
    affine : (4, 4) ndarray
        Their voxel-to-world affine (mm).
    fixed : (X, Y, Z) ndarray
        The fixed image (an acquisition whose first volume equals it is not registered).
    groups : list of tuple of (str, int)
        From :func:`acquisition_groups`.
    sources : mapping of (str, int) to str
        The file of each (input, volume), for the records.
    mask : (X, Y, Z) bool ndarray, optional
        Where the metric is computed; the positive signal of ``fixed`` if omitted, which
        :func:`align_run` uses: the head moves rigidly, and inside the brain alone a
        volume can lack contrast (a VFA flip angle near the Ernst angle: registration of
        the synthetic tiny flip-2 image failed with the brain mask, sharpness 0.002, and
        passed over the field of view, 0.21).
    phase_inputs : tuple of str
        Inputs holding phase (rad), resampled as unit phasors and never registered.
    options : RegistrationOptions, optional
        :func:`volume_options` of the grid if omitted.

    Returns
    -------
    data : dict of str to (X, Y, Z, n) ndarray
        Copies of the inputs with moved volumes replaced (unmoved inputs are the originals).
    records : list of VolumeRegistration
        One per registered acquisition, in order.
    """
    fixed = np.asarray(fixed, dtype=np.float32)
    options = options or volume_options(fixed.shape, affine)
    out = dict(data)
    records = []
    for group in groups:
        name, index = next(((n, i) for n, i in group if n not in phase_inputs), group[0])
        moving = np.asarray(data[name][..., index], dtype=np.float32)
        if np.array_equal(moving, fixed, equal_nan=True):
            continue
        reg = register(
            moving, affine, fixed, affine, mode="rigid", static_mask=mask, options=options
        )
        rec = VolumeRegistration(
            sources[(name, index)],
            tuple(group),
            reg,
            0.0 if reg.failed else motion_voxels(reg.matrix, fixed, affine),
        )
        logger.info(
            "volume registration of %s: %.3f mm, %.3f deg, NMI %.4f (headers %.4f)%s",
            Path(rec.source).name,
            reg.translation_mm,
            reg.rotation_deg,
            reg.metric,
            reg.metric_header,
            ", failed: header alignment kept"
            if reg.failed
            else ("" if rec.moved else f", below {MIN_MOTION_VOXELS} voxel: not applied"),
        )
        if rec.moved:
            for n, i in group:
                if out[n] is data[n]:
                    out[n] = np.array(data[n], dtype=np.float32, copy=True)
                out[n][..., i] = resample_volume(
                    data[n][..., i], affine, reg.matrix, phase=n in phase_inputs
                )
        records.append(rec)
    return out, records


def _sources(collections: Mapping[str, Any], counts: Mapping[str, int]) -> dict:
    """(input, volume) -> file: one file per volume, else ``file[index]`` (4-D series)."""
    out = {}
    for name, n in counts.items():
        paths = list(collections[name].paths)
        for i in range(n):
            out[(name, i)] = paths[i] if len(paths) == n else f"{paths[0]}[{i}]"
    return out


def align_run(
    cfg_mode: str,
    model: Any,
    collections: Mapping[str, Any],
    data: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    warnings: list[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """The volume registration of one model run (the hook of ``fit_run``).

    Parameters
    ----------
    cfg_mode : {'rigid', 'none'}
        ``--volume-registration``.
    model : QMRIModel
        Declares :attr:`~bids_app.models.base.QMRIModel.separate_acquisitions`, and the
        fixed image by :meth:`~bids_app.models.base.QMRIModel.registration_image`.
    collections : mapping of str to Collection
        The run's collections (file names for the records; ``query['part'] == 'phase'`` of
        the model's input specs marks phase inputs).
    data : mapping of str to (X, Y, Z, n) ndarray
    affine : (4, 4) ndarray
    warnings : list of str, optional
        Receives a message per failed registration (the subject report).

    Returns
    -------
    data : dict of str to (X, Y, Z, n) ndarray
        ``data`` itself (same arrays) unless a volume moved.
    record : dict or None
        The ``VolumeRegistration`` sidecar block; ``None`` for a model with one acquisition.

    Raises
    ------
    ValueError
        For an unknown ``cfg_mode``.
    """
    if cfg_mode not in MODES:
        raise ValueError(f"volume registration mode {cfg_mode!r}: expected one of {MODES}")
    counts = {name: arr.shape[-1] for name, arr in data.items()}
    groups = acquisition_groups(model.separate_acquisitions, counts)
    if not groups:
        return dict(data), None
    if cfg_mode == "none":
        return dict(data), {
            "Mode": "none",
            "Method": "image affines only (--volume-registration none)",
        }
    specs = {spec.name: spec for spec in model.inputs}
    phase = tuple(n for n in data if n in specs and specs[n].query.get("part") == "phase")
    sources = _sources(collections, counts)
    fixed = np.asarray(model.registration_image(data), dtype=np.float32)
    options = volume_options(fixed.shape, affine)
    out, records = align_volumes(
        data,
        affine,
        fixed,
        groups,
        sources=sources,
        mask=None,
        phase_inputs=phase,
        options=options,
    )
    fixed_source = next(
        (
            sources[(n, i)]
            for n, arr in data.items()
            for i in range(arr.shape[-1])
            if np.array_equal(arr[..., i], fixed, equal_nan=True)
        ),
        "the model's registration image",
    )
    for rec in records:
        if rec.registration.failed and warnings is not None:
            warnings.append(
                f"volume registration of {Path(rec.source).name} to "
                f"{Path(fixed_source).name} failed (NMI peak sharpness "
                f"{rec.registration.sharpness:.3f} < {options.fail_sharpness}): "
                "header alignment kept"
            )
    return out, {
        "Mode": "rigid",
        "Method": METHOD,
        "Reference": "Mattes D et al. IEEE Trans Med Imaging 2003;22:120-128",
        "FixedVolume": Path(fixed_source).name,
        "InPlaneOnly": options.in_plane_axis is not None,
        "Options": options.as_dict(),
        "Volumes": [rec.as_dict() for rec in records],
    }
