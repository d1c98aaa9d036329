"""Records and geometry of :mod:`bids_app.registration`: options, results, in-plane rigid.

Conventions as in :mod:`bids_app.registration`: every 4x4 ``matrix`` maps *reference* world
coordinates (mm, RAS+) to *moving* world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: registration modes of ``--registration``
MODES = ("rigid", "affine", "none")
#: a registration whose NMI peak sharpness (:attr:`Registration.sharpness`) is below this is
#: reported as failed. The NMI itself depends on the contrasts (real T1w -> FLAIR 1.06,
#: synthetic MT-off -> FLAIR 1.03) and cannot be thresholded; the sharpness can (measured in
#: tests/test_registration.py: real T1w -> FLAIR (patient26) 0.68, also after a 20 mm
#: shift; synthetic MT-off, VFA, MEGRE, T1w -> FLAIR 0.33-0.45; a smooth B1 map 0.05 (no
#: anatomy to register: it moved 9 mm); noise 0.00).
SHARPNESS_FAIL_THRESHOLD = 0.15


@dataclass(frozen=True)
class RegistrationOptions:
    """Options of :func:`register` (recorded in the sidecars).

    The pyramid is built here, coarse to fine: at each level both images are smoothed
    (Gaussian, sigma = half the level's voxel size) and resampled onto isotropic grids of
    ``voxel_mm`` (never finer than the image itself), and dipy optimises the dense MI there
    for ``level_iters`` iterations. (dipy's own pyramid smooths without shrinking the dense
    sampling grid, which costs seconds per metric evaluation on a 1 mm brain.) ``nbins`` is
    the MI histogram size; every voxel of the level is used, so reruns are identical.
    ``in_plane_axis`` (a voxel axis of the reference, e.g. 2 for a slab of thick axial
    slices) restricts the transform to a rotation about that axis and translations
    perpendicular to it (about the slab centre; see :func:`in_plane`): after every pyramid
    level dipy's rigid estimate is projected onto that set, and the sharpness probes shift
    the reference in-plane only (a through-plane shift of a thin slab barely changes the
    metric).
    """

    voxel_mm: tuple[float, ...] = (8.0, 4.0, 3.0)
    level_iters: tuple[int, ...] = (100, 100, 50)
    nbins: int = 32
    probe_mm: float = 6.0
    fail_sharpness: float = SHARPNESS_FAIL_THRESHOLD
    in_plane_axis: int | None = None

    def __post_init__(self):
        if len(self.voxel_mm) != len(self.level_iters) or not self.voxel_mm:
            raise ValueError("voxel_mm and level_iters need one entry per pyramid level")
        if any(v <= 0 for v in self.voxel_mm) or any(i < 1 for i in self.level_iters):
            raise ValueError("pyramid voxel sizes must be > 0 and iterations >= 1")
        if self.in_plane_axis not in (None, 0, 1, 2):
            raise ValueError(f"in_plane_axis {self.in_plane_axis!r}: expected None, 0, 1 or 2")

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "PyramidVoxelSizeMM": list(self.voxel_mm),
            "LevelIterations": list(self.level_iters),
            "HistogramBins": self.nbins,
            "SamplingProportion": 1.0,
            "SharpnessProbeMM": self.probe_mm,
            "SharpnessFailThreshold": self.fail_sharpness,
            **({"InPlaneAxis": self.in_plane_axis} if self.in_plane_axis is not None else {}),
        }


@dataclass(frozen=True)
class Registration:
    """The result of :func:`register`.

    Attributes
    ----------
    matrix : (4, 4) ndarray
        Reference world (mm) -> moving world (mm).
    mode : str
        ``'rigid'``, ``'affine'`` or ``'none'`` (header alignment only).
    metric : float
        NMI of the reference and the moving image resampled through ``matrix``.
    metric_header : float
        NMI with the header alignment alone (identity ``matrix``).
    failed : bool
        ``sharpness < options.fail_sharpness``.
    notes : list of str
        What was done (initialisation, fallbacks).
    sharpness : float
        ``(NMI - max NMI shifted by probe_mm) / (NMI - 1)``, in [0, 1]: how clearly the
        result is the peak of the metric (see :data:`SHARPNESS_FAIL_THRESHOLD`).
    """

    matrix: np.ndarray
    mode: str
    metric: float
    metric_header: float
    failed: bool
    notes: list[str] = field(default_factory=list)
    sharpness: float = float("nan")

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the matrix's closest rotation, in degrees."""
        u, _, vt = np.linalg.svd(self.matrix[:3, :3])
        r = u @ vt
        return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))

    @property
    def translation_mm(self) -> float:
        """Length of the translation part, in mm."""
        return float(np.linalg.norm(self.matrix[:3, 3]))


def identity() -> Registration:
    """The header-only alignment (``--registration none``)."""
    return Registration(np.eye(4), "none", float("nan"), float("nan"), False, ["header only"])


def in_plane(
    matrix: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], axis: int
) -> np.ndarray:
    """The in-plane rigid transform closest to ``matrix`` for a slab (``shape``, ``affine``).

    Parameters
    ----------
    matrix : (4, 4) ndarray
        World (mm) -> world (mm).
    affine : (4, 4) ndarray
        Voxel-to-world of the slab; its voxel ``axis`` is the slice normal ``n``.
    shape : (3,) tuple of int
    axis : int

    Returns
    -------
    (4, 4) ndarray
        ``p -> R_n (p - c) + c + t``, with ``c`` the slab centre (world mm), ``R_n`` the
        rotation about ``n`` by the mean in-plane turn of two in-plane unit vectors under
        the rotation closest to ``matrix[:3, :3]``, and ``t`` the displacement of ``c``
        under ``matrix`` without its component along ``n``. A transform of this form keeps
        every slice in its plane, so no slice of a thin slab is lost to the resampling.
    """
    n = affine[:3, axis] / np.linalg.norm(affine[:3, axis])
    u = affine[:3, (axis + 1) % 3]
    u = u - (u @ n) * n
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    svd_u, _, svd_vt = np.linalg.svd(matrix[:3, :3])
    rot = svd_u @ svd_vt
    turn = [np.arctan2(rot @ a @ b, rot @ a @ a) for a, b in ((u, v), (v, -u))]
    theta = float(np.mean(turn))
    k = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    r_n = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)
    centre = affine[:3, :3] @ ((np.asarray(shape[:3], dtype=np.float64) - 1) / 2) + affine[:3, 3]
    shift = matrix[:3, :3] @ centre + matrix[:3, 3] - centre
    shift -= (shift @ n) * n
    out = np.eye(4)
    out[:3, :3] = r_n
    out[:3, 3] = centre + shift - r_n @ centre
    return out
