"""``msqmri-synth --misalign``: every collection on its own grid, in its own head pose.

Between the collections of a session the subject moves and each sequence has its own
voxel size. Here every 3-D collection but the reference (FLAIR) gets

* its own grid: the voxel size of :data:`VOXEL_MM` (given for ``--size small`` and scaled
  by ``voxel size of --size / 2 mm``), axis-aligned in scanner coordinates, covering the
  reference field of view plus :data:`MARGIN_MM` on every side;
* its own rigid head pose ``P`` (a rotation of 1.5-3 degrees about a random axis through the
  brain centre, then a 2-4 mm shift in a random direction), drawn from the subject's seed
  (child 3 of the subject sequence, then the session, then the collection index).

``P`` maps reference world coordinates (mm, RAS+: the FLAIR's scanner coordinates, where
the truth maps live) to the collection's scanner world coordinates, the convention of the
registration matrices of :mod:`bids_app.registration` (and, in LPS form, of ITK). Voxel
``v`` of a collection therefore shows the head point ``P^-1 A v`` (``A`` its affine, the
one written in the header). The collection is simulated there from the *truth parameter
maps*, not from images: tissue parameters are resampled trilinearly with a normalised
brain weight (``sum w m / sum w`` over brain voxels, so that no parameter is blended with
the zeros outside the brain), the brain mask by nearest neighbour, and the B1+ field is
evaluated analytically at the head point (the field moves with the head: the B1+ map is
aligned with the reference by its header, as the participant level assumes). All volumes
of one collection share grid and pose (no motion within a collection). With the ``qsm``
series the MEGRE stays on the FLAIR grid (its phase images share the magnitude's grid); the
4-D series are not moved.

Rigid motion between scans and its correction by registration: Friston KJ, Ashburner J,
Frith CD, et al. Spatial registration and normalization of images. Hum Brain Mapp
1995;3:165-189.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_app.synth import writer
from bids_app.synth.anatomy import SIZES, grid_coordinates
from bids_app.synth.tissue import PARAMS, B1Field

#: the reference collection: never moved, on the subject grid
REFERENCE = "FLAIR"
#: voxel sizes (mm) at ``--size small`` (2 mm reference); scaled with ``--size``
VOXEL_MM: dict[str, tuple[float, float, float]] = {
    "T1w": (1.8, 1.8, 1.8),
    "VFA": (2.5, 2.5, 2.5),
    "MEGRE": (2.0, 2.0, 3.0),
    "MESE": (2.2, 2.2, 3.0),
    "MTR": (2.2, 2.2, 2.2),
    "MTS": (2.4, 2.4, 2.4),
}
ROTATION_DEG = (1.5, 3.0)
TRANSLATION_MM = (2.0, 4.0)
MARGIN_MM = 8.0
_POSE_CHILD = 3  # child of the subject's seed sequence (0-2 are demography, anatomy, noise)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class CollectionGrid:
    """One collection's grid, pose and truth.

    Attributes
    ----------
    collection : str
        E.g. ``'VFA'``.
    shape : tuple of 3 int
        Grid shape.
    affine : (4, 4) ndarray
        Voxel -> scanner world (mm), as written in the headers.
    pose : (4, 4) ndarray
        Reference world (mm) -> this collection's world (mm): the true registration.
    brain : (X, Y, Z) bool ndarray
        Brain voxels of the grid (nearest neighbour).
    maps : dict of (n,) float ndarray
        ``T1``, ``T2``, ``T2star``, ``PD``, ``MTsat``, ``B1`` at the ``n`` brain voxels.
    axis : (3,) ndarray
        Unit rotation axis.
    angle_deg : float
        Rotation angle (degrees) about ``axis`` through ``centre``.
    shift_mm : (3,) ndarray
        Translation applied after the rotation (mm).
    centre : (3,) ndarray
        Centre of rotation (mm, reference world).
    """

    collection: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    pose: np.ndarray
    brain: np.ndarray
    maps: dict[str, np.ndarray]
    axis: np.ndarray
    angle_deg: float
    shift_mm: np.ndarray
    centre: np.ndarray

    def record(self) -> dict:
        """JSON-ready description (matrices row-major, mm and degrees)."""
        lps = _LPS @ self.pose @ _LPS
        return {
            "Matrix": np.round(self.pose, 10).tolist(),
            "ITKParameters": [float(x) for x in (*lps[:3, :3].ravel(), *lps[:3, 3])],
            "ITKFixedParameters": [0.0, 0.0, 0.0],
            "RotationAxis": np.round(self.axis, 10).tolist(),
            "RotationDegrees": round(self.angle_deg, 6),
            "TranslationMM": np.round(self.shift_mm, 6).tolist(),
            "CentreOfRotationMM": np.round(self.centre, 6).tolist(),
            "VoxelSizeMM": np.round(np.sqrt((self.affine[:3, :3] ** 2).sum(0)), 6).tolist(),
            "Shape": list(self.shape),
            "Affine": np.round(self.affine, 6).tolist(),
        }


def rotation_matrix(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotation by ``angle_deg`` about the unit ``axis`` (Rodrigues' formula).

    Examples
    --------
    >>> np.round(rotation_matrix(np.array([0.0, 0.0, 1.0]), 90.0) @ [1.0, 0.0, 0.0], 6)
    array([0., 1., 0.])
    """
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    t = np.radians(angle_deg)
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def draw_pose(rng: np.random.Generator, centre: np.ndarray):
    """A random rigid pose: rotation about ``centre``, then a shift.

    Returns
    -------
    pose : (4, 4) ndarray
        ``x -> R (x - centre) + centre + shift`` (mm).
    axis : (3,) ndarray
    angle_deg : float
    shift : (3,) ndarray
    """
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = float(rng.uniform(*ROTATION_DEG))
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(*TRANSLATION_MM)
    rot = rotation_matrix(axis, angle)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre - rot @ centre + shift
    return pose, axis, angle, shift


def collection_affine(
    shape: tuple[int, ...], affine: np.ndarray, voxel_mm: tuple[float, ...]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned grid of ``voxel_mm`` over the field of view of ``(shape, affine)``.

    The reference grid's axis directions are kept; the field of view grows by
    :data:`MARGIN_MM` on every side and the centres coincide.

    Returns
    -------
    shape : tuple of 3 int
    affine : (4, 4) ndarray
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    directions = affine[:3, :3] / zooms
    extent = np.asarray(shape[:3]) * zooms + 2 * MARGIN_MM
    vox = np.asarray(voxel_mm, dtype=float)
    new_shape = tuple(int(n) for n in np.ceil(extent / vox - 1e-9))
    centre = affine[:3, :3] @ ((np.asarray(shape[:3]) - 1) / 2.0) + affine[:3, 3]
    new = np.eye(4)
    new[:3, :3] = directions * vox
    new[:3, 3] = centre - new[:3, :3] @ ((np.asarray(new_shape) - 1) / 2.0)
    return new_shape, new


def collection_grids(
    size: str,
    collections: tuple[str, ...],
    shape: tuple[int, int, int],
    affine: np.ndarray,
    brain: np.ndarray,
    truth: Mapping[str, np.ndarray],
    b1: B1Field,
    seed: np.random.SeedSequence,
    centre: np.ndarray,
    *,
    skip: tuple[str, ...] = (),
) -> dict[str, CollectionGrid]:
    """The grid, pose and resampled truth of every moved collection of one session.

    Parameters
    ----------
    size : {'tiny', 'small', 'brain'}
        Scales :data:`VOXEL_MM` by ``SIZES[size] / 2``.
    collections : tuple of str
        Collections of the protocol, in writing order (the index seeds the pose).
    shape, affine
        The subject (reference) grid of the truth maps.
    brain : (X, Y, Z) bool ndarray
        Brain voxels on the subject grid.
    truth : dict of (X, Y, Z) ndarray
        :func:`bids_app.synth.tissue.truth_maps` (0 outside the brain).
    b1 : B1Field
        The subject's B1+ field (evaluated at the head points).
    seed : numpy.random.SeedSequence
        The subject's sequence for this session (see the module docstring).
    centre : (3,) ndarray
        Centre of rotation (mm): the brain centre.
    skip : tuple of str
        Collections kept on the reference grid (besides :data:`REFERENCE`).

    Returns
    -------
    dict
        Collection -> :class:`CollectionGrid`; collections without a :data:`VOXEL_MM`
        entry, the reference and ``skip`` are left out (they are written as before).
    """
    scale = SIZES[size] / 2.0
    weight = brain.astype(np.float64)
    out = {}
    for index, name in enumerate(collections):
        if name == REFERENCE or name in skip or name not in VOXEL_MM:
            continue
        child = np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, index))
        rng = np.random.default_rng(child)
        pose, axis, angle, shift = draw_pose(rng, centre)
        vox = tuple(v * scale for v in VOXEL_MM[name])
        new_shape, new_affine = collection_affine(shape, affine, vox)
        # collection voxel -> head point (reference world) -> subject voxel
        head = np.linalg.inv(pose) @ new_affine
        vox2vox = np.linalg.inv(affine) @ head
        mask = _sample(brain.astype(np.uint8), vox2vox, new_shape, 0) > 0
        norm = _sample(weight, vox2vox, new_shape, 1)[mask]
        maps = {
            p: _sample(np.where(brain, truth[p], 0.0).astype(np.float64), vox2vox, new_shape, 1)[
                mask
            ]
            / norm
            for p in PARAMS
        }
        points = grid_coordinates(new_shape, head)[mask]
        maps["B1"] = b1(points)
        out[name] = CollectionGrid(
            name, new_shape, new_affine, pose, mask, maps, axis, angle, shift, centre
        )
    return out


def _sample(data: np.ndarray, vox2vox: np.ndarray, shape: tuple[int, ...], order: int):
    """``data`` at the subject voxels ``vox2vox @ v`` of the grid ``shape`` (0 outside)."""
    return ndimage.affine_transform(
        data,
        vox2vox[:3, :3],
        offset=vox2vox[:3, 3],
        output_shape=shape,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )


def pose_seed(subject_seed: np.random.SeedSequence, session_index: int) -> np.random.SeedSequence:
    """Child ``_POSE_CHILD`` of the subject's sequence, then child ``session_index``."""
    child = (*subject_seed.spawn_key, _POSE_CHILD, session_index)
    return np.random.SeedSequence(subject_seed.entropy, spawn_key=child)


def write_record(
    root: Path,
    subject: str,
    session: str | None,
    grids: Mapping[str, CollectionGrid],
    kept: tuple[str, ...] = (),
) -> Path:
    """Write ``derivatives/truth/sub-X[/ses-Y]/anat/<prefix>_desc-collections_xfm.json``.

    Returns
    -------
    Path
        The sidecar written.
    """
    prefix = writer.entity_prefix(subject, session)
    rel = f"sub-{subject}/" + (f"ses-{session}/" if session else "")
    anat = writer.subject_dir(root / "derivatives" / "truth", subject, session) / "anat"
    path = anat / f"{prefix}_desc-collections_xfm.json"
    meta = {
        "Description": "True rigid head pose and grid of every collection (msqmri-synth "
        "--misalign); the reference collection is not moved",
        "Reference": f"bids:raw:{rel}anat/{prefix}_{REFERENCE}.nii.gz",
        "Convention": (
            "Matrix: 4x4, row-major, maps reference (FLAIR) world coordinates (mm, RAS+) to "
            "the collection's world coordinates (mm, RAS+), i.e. the registration matrix "
            "'from-<collection>_to-FLAIR' of the participant level; collection voxel v shows "
            "the head point inv(Matrix) @ Affine @ v. ITKParameters/ITKFixedParameters: the "
            "same transform as an ITK AffineTransform_double_3_3 (LPS, fixed = reference)"
        ),
        "Method": (
            "truth parameter maps resampled trilinearly with a normalised brain weight, "
            "brain mask nearest neighbour, B1+ evaluated at the head points; signal "
            "simulated on the collection grid"
        ),
        "RotationRangeDegrees": list(ROTATION_DEG),
        "TranslationRangeMM": list(TRANSLATION_MM),
        "MarginMM": MARGIN_MM,
        "NotMoved": [REFERENCE, *kept],
        "Collections": {name: grid.record() for name, grid in grids.items()},
    }
    writer.write_json(path, meta)
    return path


def simulation_record(size: str) -> dict:
    """The ``Misalignment`` block of ``derivatives/truth/simulation.json``."""
    scale = SIZES[size] / 2.0
    return {
        "Reference": REFERENCE,
        "VoxelSizeMM": {k: [round(v * scale, 6) for v in vox] for k, vox in VOXEL_MM.items()},
        "RotationRangeDegrees": list(ROTATION_DEG),
        "TranslationRangeMM": list(TRANSLATION_MM),
        "Transforms": "derivatives/truth/sub-*/[ses-*/]anat/*_desc-collections_xfm.json",
    }
