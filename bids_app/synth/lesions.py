"""Synthetic MS lesions: placement in white matter, evolution over sessions, rasterisation.

A lesion is an ellipsoid (world mm) that replaces only the white-matter voxels it covers.
Its location class is read from the rasterised mask with the rule used in the truth
tables: ``periventricular`` if it touches the ventricles (26-neighbourhood),
``juxtacortical`` if it touches GM (our labels do not separate cortex from deep GM),
``deep_white_matter`` otherwise. Placement retries until the intended class is met
(and falls back to any class after many tries, which only happens on the 4 mm grid).
Every lesion is at least one voxel away from the others and from extraventricular CSF
and background, so lesions are separate connected components.

Over sessions (``--sessions K``): one new lesion appears at each follow-up session, the
baseline lesion with the largest radii shrinks (radii x0.8 per session) and another one
partly remyelinates (severity x0.6 per session: T1, T2, PD move back towards NAWM, MTsat
rises), cf. Granziera et al., Brain 2021;144:1296-1311; another one enlarges (radii x0.6 at
baseline, full size from the first follow-up on, the size its placement was checked at) and
another one resolves (absent at the last session). The truth of every change is written by
:mod:`bids_app.synth.changes`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from bids_app.synth.anatomy import CSF, GM, WM, Anatomy, apply_linear

logger = logging.getLogger(__name__)

MAX_RADIUS = 8.0  # mm
MIN_VOXELS = 3  # smallest lesion (voxels of the grid) at onset
SHRINK = 0.8
RECOVERY = 0.6
ENLARGE_FROM = 0.6  # radii of an enlarging lesion at its onset, relative to its full size
_BALL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Lesion:
    """One lesion and its time course.

    Parameters
    ----------
    index : int
        Label in the per-lesion dseg (1-based, stable across sessions).
    center : (3,) ndarray
        World coordinates (mm).
    radii : (3,) ndarray
        Semi-axes (mm) at onset.
    rotation : (3, 3) ndarray
        Rotation from world to ellipsoid axes.
    severity : float
        1 = the subject's nominal lesion values at the lesion's core-to-rim average.
    target : str
        Intended location class.
    onset : int
        First session index (0-based) where the lesion exists.
    course : str
        ``stable``, ``new``, ``shrinking``, ``remyelinating``, ``enlarging`` or
        ``resolving``.
    offset : int or None
        First session index where a ``resolving`` lesion is absent.
    """

    index: int
    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    severity: float
    target: str
    onset: int = 0
    course: str = "stable"
    offset: int | None = None

    def present_at(self, session: int) -> bool:
        """Whether the lesion exists at a session (0-based)."""
        return self.onset <= session and (self.offset is None or session < self.offset)

    def radii_at(self, session: int, min_radius: float) -> np.ndarray:
        """Semi-axes (mm) at a session (0-based)."""
        if self.course == "enlarging":
            return self.radii * ENLARGE_FROM if session == self.onset else self.radii
        if self.course != "shrinking":
            return self.radii
        return np.maximum(self.radii * SHRINK ** (session - self.onset), min_radius)

    def severity_at(self, session: int) -> float:
        """Severity at a session (0-based)."""
        if self.course != "remyelinating":
            return self.severity
        return self.severity * RECOVERY ** (session - self.onset)


@dataclass(frozen=True)
class PlacementMaps:
    """Distance maps (mm) used to propose lesion centres, for one anatomy."""

    wm_index: np.ndarray  # (n, 3) voxel indices of WM
    dist_ventricle: np.ndarray  # (n,)
    dist_gm: np.ndarray  # (n,)
    dist_outside: np.ndarray  # (n,) to extraventricular CSF or background
    forbidden: np.ndarray  # (X, Y, Z) bool: extraventricular CSF or background

    @classmethod
    def from_anatomy(cls, anatomy: Anatomy) -> PlacementMaps:
        """Compute the distance maps (three Euclidean distance transforms)."""
        labels, vox = anatomy.labels, anatomy.voxel_size
        forbidden = (labels == 0) | ((labels == CSF) & ~anatomy.ventricles)
        wm = labels == WM
        idx = np.argwhere(wm)

        def dist(mask):
            return (ndi.distance_transform_edt(~mask) * vox)[wm]

        return cls(idx, dist(anatomy.ventricles), dist(labels == GM), dist(forbidden), forbidden)


def min_radius(voxel_size: float) -> float:
    """Smallest semi-axis (mm): 2 mm, and at least 1.5 voxels."""
    return max(2.0, 1.5 * voxel_size)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (QR of a Gaussian matrix), shape (3, 3)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rasterize(
    anatomy: Anatomy, center: np.ndarray, radii: np.ndarray, rotation: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Voxels of an ellipsoid that are WM, in a box with a 2-voxel margin.

    Returns
    -------
    box : tuple of 3 slices
        Box in the grid.
    mask : bool ndarray
        Lesion voxels inside ``box``.
    rho2 : ndarray
        Squared normalised ellipsoid radius (0 centre, 1 border) inside ``box``.
    """
    inv = np.linalg.inv(anatomy.affine)
    c_vox = inv[:3, :3] @ center + inv[:3, 3]
    half = radii.max() / anatomy.voxel_size + 2
    lo = np.maximum(np.floor(c_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_vox + half).astype(int) + 1, anatomy.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ijk = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1)
    xyz = apply_linear(ijk, anatomy.affine[:3, :3]) + anatomy.affine[:3, 3]
    rho2 = (apply_linear(xyz - center, rotation.T) / radii) ** 2
    rho2 = rho2.sum(axis=-1)
    mask = (rho2 <= 1.0) & (anatomy.labels[box] == WM)
    return box, mask, rho2


def classify(anatomy: Anatomy, box: tuple[slice, ...], mask: np.ndarray) -> str:
    """Location class of a rasterised lesion (see module docstring)."""
    ring = ndi.binary_dilation(mask, _BALL) & ~mask
    if (ring & anatomy.ventricles[box]).any():
        return "periventricular"
    if (ring & (anatomy.labels[box] == GM)).any():
        return "juxtacortical"
    return "deep_white_matter"


def _propose(maps: PlacementMaps, target: str, radii: np.ndarray, vox: float, relax: float):
    r_min, r_max = radii.min(), radii.max()
    ok = maps.dist_outside > r_max + vox * relax
    if target == "periventricular":
        ok &= maps.dist_ventricle <= r_min
    elif target == "juxtacortical":
        ok &= (maps.dist_gm <= 0.7 * r_min) & (maps.dist_ventricle > r_max + 2 * vox)
    else:
        ok &= (maps.dist_ventricle > r_max + vox) & (maps.dist_gm > r_min * relax)
    return np.flatnonzero(ok)


def place_lesions(
    anatomy: Anatomy,
    maps: PlacementMaps,
    rng: np.random.Generator,
    *,
    n_sessions: int = 1,
    max_tries: int = 400,
) -> list[Lesion]:
    """Place a patient's lesions (5-10 at baseline, one new per follow-up session).

    Parameters
    ----------
    anatomy : Anatomy
        Grid and labels.
    maps : PlacementMaps
        Distance maps of ``anatomy``.
    rng : numpy.random.Generator
        The subject's generator.
    n_sessions : int
        Number of sessions.
    max_tries : int
        Proposals per lesion.

    Returns
    -------
    list of Lesion
        Sorted by index; every lesion has at least ``MIN_VOXELS`` voxels at onset on
        ``anatomy``'s grid (shrinking stops at ``min_radius``, so it stays non-empty).
    """
    vox = anatomy.voxel_size
    r_lo = min_radius(vox)
    n_base = int(rng.integers(5, 11))
    rest = ["periventricular", "deep_white_matter"] * n_base
    targets = [(t, 0) for t in ["juxtacortical", *rest[: n_base - 1]]]
    targets += [(rest[s], s) for s in range(1, n_sessions)]
    occupied = np.zeros(anatomy.shape, dtype=bool)
    lesions: list[Lesion] = []
    for target, onset in targets:
        for attempt in range(max_tries):
            strict = attempt < max_tries // 2
            radius = rng.uniform(2.0, MAX_RADIUS)
            radii = np.clip(radius * np.r_[1.0, rng.uniform(0.6, 1.0, 2)], r_lo, MAX_RADIUS)
            candidates = _propose(maps, target, radii, vox, 1.0 if strict else 0.5)
            if candidates.size == 0:
                continue
            ijk = maps.wm_index[rng.choice(candidates)] + rng.uniform(-0.5, 0.5, 3)
            center = anatomy.affine[:3, :3] @ ijk + anatomy.affine[:3, 3]
            rotation = random_rotation(rng)
            box, mask, _ = rasterize(anatomy, center, radii, rotation)
            if mask.sum() < MIN_VOXELS:
                continue
            grown = ndi.binary_dilation(mask, _BALL)
            if (grown & (maps.forbidden[box] | occupied[box])).any():
                continue
            if strict and classify(anatomy, box, mask) != target:
                continue
            severity = float(rng.uniform(1.1, 1.3) if onset else rng.uniform(0.7, 1.3))
            course = "new" if onset else "stable"
            lesions.append(
                Lesion(len(lesions) + 1, center, radii, rotation, severity, target, onset, course)
            )
            occupied[box] |= mask
            break
        else:
            logger.warning("could not place a %s lesion on the %g mm grid", target, vox)
    if not lesions:
        raise RuntimeError(f"no lesion could be placed on the {vox:g} mm grid")
    if n_sessions > 1:
        lesions = _assign_courses(lesions, rng, anatomy, n_sessions)
    return lesions


def _assign_courses(
    lesions: list[Lesion], rng: np.random.Generator, anatomy: Anatomy, n_sessions: int
) -> list[Lesion]:
    base = [les for les in lesions if les.onset == 0]
    shrinking = max(base, key=lambda les: les.radii.min())
    others = [les for les in base if les is not shrinking]
    out = {les.index: les for les in lesions}
    out[shrinking.index] = replace(shrinking, course="shrinking")
    if others:
        remy = others[int(rng.integers(len(others)))]
        out[remy.index] = replace(remy, course="remyelinating")
        others = [les for les in others if les is not remy]
    # enlarging: the largest remaining lesion still >= MIN_VOXELS at its baseline size
    for les in sorted(others, key=lambda les: -float(np.prod(les.radii))):
        _, mask, _ = rasterize(anatomy, les.center, les.radii * ENLARGE_FROM, les.rotation)
        if mask.sum() >= MIN_VOXELS:
            out[les.index] = replace(les, course="enlarging")
            others = [o for o in others if o is not les]
            break
    if len(others) > 1:  # resolving: the smallest remaining one, absent at the last session
        res = min(others, key=lambda les: float(np.prod(les.radii)))
        out[res.index] = replace(res, course="resolving", offset=n_sessions - 1)
    return [out[k] for k in sorted(out)]


def render_lesions(
    anatomy: Anatomy, lesions: list[Lesion], session: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion labels and local severity at one session.

    The local severity falls from 1.15x the lesion's severity at the core to 0.85x at the
    border (``1.15 - 0.3 rho^2``), so cores are more abnormal than rims.

    Parameters
    ----------
    anatomy : Anatomy
        Grid and labels.
    lesions : list of Lesion
        The subject's lesions.
    session : int
        Session index (0-based).

    Returns
    -------
    ids : (X, Y, Z) int16 ndarray
        Lesion index per voxel, 0 elsewhere.
    severity : (X, Y, Z) float32 ndarray
        Local severity, 0 outside lesions.
    """
    ids = np.zeros(anatomy.shape, dtype=np.int16)
    severity = np.zeros(anatomy.shape, dtype=np.float32)
    r_lo = min_radius(anatomy.voxel_size)
    for les in lesions:
        if not les.present_at(session):
            continue
        box, mask, rho2 = rasterize(anatomy, les.center, les.radii_at(session, r_lo), les.rotation)
        ids[box][mask] = les.index
        severity[box][mask] = les.severity_at(session) * (1.15 - 0.3 * rho2[mask])
    return ids, severity


def lesion_rows(
    anatomy: Anatomy, lesions: list[Lesion], session: int, ids: np.ndarray, maps: dict
) -> list[dict]:
    """One truth-table row per lesion present at ``session``.

    Columns: ``index, name, location, course, onset_session, n_voxels, volume_mm3,
    centroid_x, centroid_y, centroid_z`` (mm, world) and the mean truth ``T1`` (s),
    ``T2`` (s), ``PD``, ``MTsat`` (p.u.) over the lesion.
    """
    rows = []
    vox3 = anatomy.voxel_size**3
    for les in lesions:
        mask = ids == les.index
        if not les.present_at(session) or not mask.any():
            continue
        box = ndi.find_objects(mask.astype(np.int8))[0]
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        ijk = np.argwhere(mask).mean(axis=0)
        xyz = anatomy.affine[:3, :3] @ ijk + anatomy.affine[:3, 3]
        row = {
            "index": les.index,
            "name": f"lesion-{les.index:02d}",
            "location": classify(anatomy, box, mask[box]),
            "course": les.course,
            "onset_session": les.onset + 1,
            "n_voxels": int(mask.sum()),
            "volume_mm3": float(mask.sum() * vox3),
            "centroid_x": float(xyz[0]),
            "centroid_y": float(xyz[1]),
            "centroid_z": float(xyz[2]),
        }
        row.update({p: float(maps[p][mask].mean()) for p in ("T1", "T2", "PD", "MTsat")})
        rows.append(row)
    return rows
