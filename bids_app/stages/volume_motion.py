"""Records and rules of the registration of a collection's separate acquisitions.

For :mod:`bids_app.stages.volume_align`: the pyramid options for a grid, the head
displacement below which a transform is not applied, and the acquisition units of a
model's inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.registration import Registration, RegistrationOptions

#: slices thicker than this many in-plane voxels: in-plane motion only
THIN_SLAB_RATIO = 3.0
#: pyramid levels in in-plane voxel sizes, coarse to fine, and their iterations. The finest
#: level is the native grid: motion between two volumes is typically 0.5-2 voxels and the
#: MTR of a cord edge voxel changes by several percent per 0.2 voxel (measured on the SCT
#: data: a (4, 2, 1) voxel pyramid stopped 0.3 voxel short of the (2, 1) one there).
PYRAMID_VOXELS = (2.0, 1.0)
LEVEL_ITERATIONS = (100, 100)
#: the finest level is coarsened until it has at most this many voxels (dense MI cost:
#: the 2 mm synthetic head, 0.6 M voxels, takes about 10 s per volume on one core; a 1 mm
#: brain of 11.5 M voxels is registered on a 2.3 mm grid)
MAX_FINEST_VOXELS = 1_000_000
#: an accepted transform whose root-mean-square displacement of the head (the voxels
#: brighter than the fixed image's mean) is below this many voxels is recorded but not
#: applied: within the precision of the estimate, resampling would blur more than it
#: corrects (the aligned synthetic tiny VFA flip-2 image "moved" 0.33 mm / 0.33 degrees;
#: the SCT MT-on moved 1.2 voxels, the synthetic test motion about 1 voxel at 4 mm)
MIN_MOTION_VOXELS = 0.25
METHOD = (
    "dipy.align.affine_registration, mutual information (Mattes 2003), translation -> rigid, "
    "each separate acquisition to the fixed volume, resampled once (trilinear)"
)


@dataclass(frozen=True)
class VolumeRegistration:
    """The registration of one separately acquired volume (or input) to the fixed volume.

    Attributes
    ----------
    source : str
        The moving file (the first file of the input in ``'input'`` mode).
    volumes : tuple of (str, int)
        The (input name, volume index) pairs moved with this transform.
    registration : Registration
        Its ``matrix`` maps fixed world (mm) to moving world (mm).
    motion_voxels : float
        Root-mean-square displacement of the head, in (smallest) voxels
        (:func:`motion_voxels`).
    """

    source: str
    volumes: tuple[tuple[str, int], ...]
    registration: Registration
    motion_voxels: float = 0.0

    @property
    def moved(self) -> bool:
        """Whether the volumes are resampled: accepted, moving :data:`MIN_MOTION_VOXELS`."""
        return not self.registration.failed and self.motion_voxels >= MIN_MOTION_VOXELS

    def as_dict(self) -> dict[str, Any]:
        """The sidecar entry (translation mm, rotation degrees, metric, accepted)."""
        reg = self.registration
        return {
            "Source": Path(self.source).name,
            "Volumes": [f"{name}[{i}]" for name, i in self.volumes],
            "TranslationMM": round(reg.translation_mm, 3),
            "RotationDegrees": round(reg.rotation_deg, 3),
            "MetricValue": round(reg.metric, 5),
            "MetricValueHeaders": round(reg.metric_header, 5),
            "PeakSharpness": round(reg.sharpness, 4),
            "RMSDisplacementVoxels": round(self.motion_voxels, 3),
            "Accepted": not reg.failed,
            "Resampled": self.moved,
            "Transform": np.round(reg.matrix, 6).tolist(),
            "Notes": list(reg.notes),
        }


def volume_options(shape: tuple[int, ...], affine: np.ndarray) -> RegistrationOptions:
    """Registration options for the volumes of one grid.

    Parameters
    ----------
    shape : (3,) tuple of int
    affine : (4, 4) ndarray
        Voxel-to-world (mm).

    Returns
    -------
    RegistrationOptions
        Pyramid of :data:`PYRAMID_VOXELS` times the finest voxel size (or the size that
        keeps the finest level within :data:`MAX_FINEST_VOXELS`); ``in_plane_axis``
        set to the slice axis when it is thicker than :data:`THIN_SLAB_RATIO` times the
        in-plane voxels.
    """
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    axis = int(np.argmax(zooms))
    others = np.delete(zooms, axis)
    thin = bool(zooms[axis] > THIN_SLAB_RATIO * others.max())
    finest = float(others.min() if thin else zooms.min())
    extent = np.asarray(shape[:3], dtype=np.float64) * zooms  # mm
    n_dims = 2 if thin else 3
    kept = extent[axis] / zooms[axis] if thin else 1.0  # thin: the slices stay
    cells = np.prod(np.delete(extent, axis) if thin else extent) / finest**n_dims * kept
    finest *= max(1.0, (cells / MAX_FINEST_VOXELS) ** (1.0 / n_dims))
    return RegistrationOptions(
        voxel_mm=tuple(float(v * finest) for v in PYRAMID_VOXELS),
        level_iters=LEVEL_ITERATIONS,
        in_plane_axis=axis if thin else None,
    )


def motion_voxels(matrix: np.ndarray, fixed: np.ndarray, affine: np.ndarray) -> float:
    """Root-mean-square displacement of the head under ``matrix``, in voxels.

    Parameters
    ----------
    matrix : (4, 4) ndarray
        World -> world (mm).
    fixed : (X, Y, Z) ndarray
        The fixed image; its voxels brighter than its (finite) mean are the head.
    affine : (4, 4) ndarray
        Voxel-to-world (mm).

    Returns
    -------
    float
        In units of the smallest voxel size; 0 for an image without such voxels.
    """
    values = np.where(np.isfinite(fixed), fixed, 0.0)
    idx = np.argwhere(values > values.mean())
    if not len(idx):
        return 0.0
    idx = idx[:: max(1, len(idx) // 20000)]
    pts = affine @ np.c_[idx, np.ones(len(idx))].T
    shift = np.linalg.norm(((matrix - np.eye(4)) @ pts)[:3], axis=0)
    return float(np.sqrt(np.mean(shift**2)) / np.sqrt((affine[:3, :3] ** 2).sum(0)).min())


def acquisition_groups(unit: str, counts: Mapping[str, int]) -> list[tuple[tuple[str, int], ...]]:
    """The separately acquired units of a run's inputs.

    Parameters
    ----------
    unit : {'volume', 'input', 'none'}
        The model's :attr:`~bids_app.models.base.QMRIModel.separate_acquisitions`.
    counts : mapping of str to int
        Volumes per input, lead input first.

    Returns
    -------
    list of tuple of (str, int)
        One entry per acquisition, its (input, volume) pairs; the first pair is the one
        registered. ``'volume'``: volume ``i`` of every input is acquisition ``i`` (e.g. a
        phase image moves with the magnitude of its inversion time), registered on the lead
        input; ``'input'``: each input is one acquisition.

    Raises
    ------
    ValueError
        An unknown ``unit``, or ``'volume'`` inputs with different numbers of volumes.
    """
    names = list(counts)
    if unit == "none" or not names:
        return []
    if unit == "input":
        return [tuple((name, i) for i in range(counts[name])) for name in names]
    if unit != "volume":
        raise ValueError(f"separate_acquisitions {unit!r}: expected 'volume', 'input' or 'none'")
    n = counts[names[0]]
    if any(counts[name] != n for name in names):
        raise ValueError(f"'volume' acquisitions need equal volume counts, got {dict(counts)}")
    return [tuple((name, i) for name in names) for i in range(n)]
