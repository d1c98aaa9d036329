"""Per-subject state shared between the participant stages."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bids import BIDSLayout

from bids_app.config import RunConfig


@dataclass
class Grid:
    """A voxel grid: shape, voxel-to-world affine (mm) and its registration.

    ``xfm`` maps the subject reference image's world (mm) to this grid's world (the
    registration of :mod:`bids_app.registration`); ``None`` for the reference grid itself
    and for images aligned by their headers only.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    xfm: np.ndarray | None = None

    def world_to(self, target: Grid) -> np.ndarray | None:
        """The ``target`` world -> this grid's world matrix (``None``: the headers agree)."""
        if self.xfm is None and target.xfm is None:
            return None
        src = np.eye(4) if self.xfm is None else self.xfm
        dst = np.eye(4) if target.xfm is None else target.xfm
        return src @ np.linalg.inv(dst)

    @property
    def zooms(self) -> tuple[float, ...]:
        """Voxel sizes in mm."""
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


@dataclass
class MapRecord:
    """A written map: where it is, what it is, its data natively and on the reference grid."""

    key: str  # 'T1map' or 'desc-MTS_T1map'
    units: str
    path: Path  # native-space file
    model: str
    entities: dict[str, Any]  # naming entities of the native file
    suffix: str
    datatype: str
    sidecar: dict[str, Any]
    native: np.ndarray  # float32 on ``native_grid``
    native_grid: Grid
    data_ref: np.ndarray | None = None  # on the reference grid, float32


@dataclass(frozen=True)
class Product:
    """A map one model (or the anatomy stage) offers to the models that consume it.

    ``uri`` is its ``bids:`` URI (or mask source), ``intended_for`` the file names its inputs'
    ``IntendedFor`` lists.
    """

    model: str
    output: str
    data: np.ndarray
    grid: Grid
    uri: str
    intended_for: frozenset[str] = frozenset()


@dataclass
class SubjectContext:
    """What the stages of one subject/session share."""

    cfg: RunConfig
    layout: BIDSLayout
    derivative_layouts: dict[str, BIDSLayout]
    subject: str
    session: str | None
    entities: dict[str, Any] = field(default_factory=dict)
    reference_name: str | None = None  # 'FLAIR' / 'T1w' / 'T2w'
    reference_path: str | None = None
    grid: Grid | None = None  # reference grid
    structural: dict[str, Any] = field(default_factory=dict)  # name -> Volume
    brain_mask: np.ndarray | None = None  # on the reference grid
    brain_mask_source: str = ""
    tissue: np.ndarray | None = None  # 0 bg, 1 GM, 2 WM, 3 CSF (reference grid)
    tissue_source: str = ""
    lesion_mask: np.ndarray | None = None
    lesion_source: str = ""
    #: (producer, output) -> products, in the order they were made
    products: dict[tuple[str, str], list[Product]] = field(default_factory=dict)
    maps: list[MapRecord] = field(default_factory=list)
    #: worker pool shared by every voxelwise fit of the run (None: a pool per fit or none)
    pool: Any = None
    skipped: list[str] = field(default_factory=list)
    #: lead input path -> Registration of its collection to the reference image
    registrations: dict[str, Any] = field(default_factory=dict)
    #: the reference image's data (for the registrations), read once
    reference_data: np.ndarray | None = None
    #: problems the report shows (failed registrations, ...)
    warnings: list[str] = field(default_factory=list)
    #: ((input paths), preprocess key) -> (data, state) of the last shared preprocessing
    preprocessed: dict[tuple, tuple[dict[str, np.ndarray], dict[str, Any]]] = field(
        default_factory=dict
    )

    @property
    def label(self) -> str:
        """``sub-01`` or ``sub-01_ses-a`` for messages."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def rel(self, path: str | Path) -> str:
        """Path relative to the raw dataset root (for ``bids:raw:`` URIs).

        Symbolic links are not followed first: a raw file that is a link to a place outside
        the dataset (an annex, a shared store) keeps its path inside the dataset.
        """
        absolute = Path(os.path.abspath(path))
        for root in (Path(os.path.abspath(self.cfg.bids_dir)), self.cfg.bids_dir.resolve()):
            if absolute.is_relative_to(root):
                return absolute.relative_to(root).as_posix()
        return Path(path).resolve().relative_to(self.cfg.bids_dir.resolve()).as_posix()
