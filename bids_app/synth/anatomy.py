"""Synthetic anatomy: the shipped 1 mm tissue labels and their coarser versions.

The labels come from the OSIPI ASL digital reference object (asldro 2.2.0,
``hrgt_icbm_2009a_nls_3t``), itself derived from the MNI ICBM 2009a nonlinear symmetric
template; provenance and licences are in ``bids_app/data/anatomy/README.md``.
Everything else (ventricles, coarser grids) is computed here at run time.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

#: Label values of the shipped dseg (and of every tissue dseg written by msqmri-synth).
GM, WM, CSF = 1, 2, 3
#: Voxel size (mm, isotropic) of each ``--size``.
SIZES: dict[str, int] = {"tiny": 4, "small": 2, "brain": 1}
ANATOMY_FILE = "tissue_1mm_dseg.nii.gz"
_VENTRICLE = 4  # internal label used only while resampling


@dataclass(frozen=True)
class Anatomy:
    """Tissue labels on one grid.

    Parameters
    ----------
    labels : (X, Y, Z) uint8 ndarray
        0 background, 1 GM, 2 WM, 3 CSF (ventricles included).
    ventricles : (X, Y, Z) bool ndarray
        Ventricular CSF (CSF not connected to the outer brain surface).
    affine : (4, 4) ndarray
        Voxel-to-world (mm) affine.
    """

    labels: np.ndarray
    ventricles: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(int(n) for n in self.labels.shape)

    @property
    def voxel_size(self) -> float:
        """Isotropic voxel size in mm."""
        return float(np.sqrt((self.affine[:3, 0] ** 2).sum()))

    @cached_property
    def brain(self) -> np.ndarray:
        """(X, Y, Z) bool ndarray: GM, WM or CSF."""
        return self.labels > 0

    @property
    def n_brain(self) -> int:
        """Number of brain voxels."""
        return int(self.brain.sum())

    def world_coordinates(self) -> np.ndarray:
        """World coordinates (mm) of every voxel centre, shape (X, Y, Z, 3)."""
        return grid_coordinates(self.shape, self.affine)


def grid_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates of the voxel centres of a grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape.
    affine : (4, 4) ndarray
        Voxel-to-world affine (mm).

    Returns
    -------
    (X, Y, Z, 3) float64 ndarray
        Coordinates in mm.

    Examples
    --------
    >>> grid_coordinates((2, 1, 1), np.diag([2.0, 2.0, 2.0, 1.0]))[:, 0, 0]
    array([[0., 0., 0.],
           [2., 0., 0.]])
    """
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return apply_linear(ijk, affine[:3, :3]) + affine[:3, 3]


def apply_linear(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``points @ matrix.T`` for (..., 3) points, via einsum.

    OpenBLAS is slow on tall (N, 3) @ (3, 3) products (threading overhead); einsum is
    ~10x faster here and deterministic.

    Examples
    --------
    >>> apply_linear(np.array([[1.0, 2.0, 3.0]]), np.diag([2.0, 1.0, 0.0]))
    array([[2., 2., 0.]])
    """
    return np.einsum("...j,ij->...i", points, matrix)


def load_labels_1mm() -> tuple[np.ndarray, np.ndarray]:
    """Load the shipped 1 mm labels through :mod:`importlib.resources`.

    Returns
    -------
    labels : (X, Y, Z) uint8 ndarray
        0 background, 1 GM, 2 WM, 3 CSF.
    affine : (4, 4) ndarray
        Voxel-to-world affine (mm, ICBM 2009a space).
    """
    resource = files("bids_app") / "data" / "anatomy" / ANATOMY_FILE
    img = nib.Nifti1Image.from_bytes(gzip.decompress(resource.read_bytes()))
    return np.asarray(img.dataobj, dtype=np.uint8), img.affine.copy()


def find_ventricles(labels: np.ndarray, *, min_voxels: int = 500) -> np.ndarray:
    """Ventricular CSF: CSF components that do not touch the outside of the brain.

    Parameters
    ----------
    labels : (X, Y, Z) int ndarray
        Tissue labels (3 = CSF), 1 mm grid.
    min_voxels : int
        Smallest component kept (isolated sulcal pockets are smaller).

    Returns
    -------
    (X, Y, Z) bool ndarray
        On the ICBM 2009a labels this keeps the two lateral ventricles (about 8.6 mL each).
    """
    outside, _ = ndi.label(labels == 0)
    outside = outside == outside[0, 0, 0]
    csf_lab, n = ndi.label(labels == CSF)
    touching = np.unique(csf_lab[ndi.binary_dilation(outside) & (csf_lab > 0)])
    sizes = np.bincount(csf_lab.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    keep[touching] = False
    return keep[csf_lab]


def majority_downsample(labels: np.ndarray, factor: int, n_labels: int) -> np.ndarray:
    """Downsample a label volume by an integer factor with a majority vote per block.

    Parameters
    ----------
    labels : (X, Y, Z) int ndarray
        Shape divisible by ``factor``.
    factor : int
        Block size in voxels.
    n_labels : int
        Labels are ``0 .. n_labels - 1``. Ties go to the lowest label.

    Returns
    -------
    (X // factor, Y // factor, Z // factor) uint8 ndarray

    Examples
    --------
    >>> majority_downsample(np.array([[[1, 1], [2, 0]], [[1, 0], [0, 0]]]), 2, 3)
    array([[[0]]], dtype=uint8)
    """
    if factor == 1:
        return labels.astype(np.uint8)
    x, y, z = (n // factor for n in labels.shape)
    blocks = labels.reshape(x, factor, y, factor, z, factor)
    counts = np.stack([(blocks == k).sum(axis=(1, 3, 5)) for k in range(n_labels)])
    return counts.argmax(axis=0).astype(np.uint8)


def downsample_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of a grid whose voxels are ``factor`` blocks of the input grid's voxels.

    Examples
    --------
    >>> downsample_affine(np.eye(4), 2)[:3, 3]
    array([0.5, 0.5, 0.5])
    """
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return affine @ scale


def make_anatomy(size: str = "tiny") -> Anatomy:
    """Build the anatomy for one ``--size``.

    The ventricles are found on the 1 mm labels, carried as a fifth label through the
    majority vote, then folded back into CSF.

    Parameters
    ----------
    size : {'tiny', 'small', 'brain'}
        4, 2 or 1 mm isotropic voxels.

    Returns
    -------
    Anatomy
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    factor = SIZES[size]
    labels, affine = load_labels_1mm()
    work = labels.copy()
    work[find_ventricles(labels)] = _VENTRICLE
    pad = [(0, (-n) % factor) for n in work.shape]
    work = np.pad(work, pad)
    coarse = majority_downsample(work, factor, _VENTRICLE + 1)
    ventricles = coarse == _VENTRICLE
    coarse[ventricles] = CSF
    return Anatomy(coarse, ventricles, downsample_affine(affine, factor))


def build_anatomy_file(source: Path, target: Path, *, margin: int = 4, multiple: int = 4) -> None:
    """Extract the shipped labels from the asldro ground truth (run once by a developer).

    Takes volume 6 (``seg_label``) of ``hrgt_icbm_2009a_nls_3t.nii.gz``, crops it to the
    bounding box of the labels plus ``margin`` voxels (zero-padded where the box leaves the
    source grid), rounds the shape up to a multiple of ``multiple`` so that every ``--size``
    is an exact block downsampling, and writes it as uint8 with the shifted affine (sform
    and qform code 4, MNI space; gzip level 9, ``mtime = 0``).

    Parameters
    ----------
    source : Path
        The asldro HRGT NIfTI (shape 197x233x189x1x7).
    target : Path
        Output ``.nii.gz``.
    margin : int
        Voxels kept around the labels.
    multiple : int
        The output shape is a multiple of this.
    """
    src = nib.load(source)
    seg = np.rint(np.asarray(src.dataobj[..., 0, 6])).astype(np.uint8)
    idx = np.argwhere(seg > 0)
    start = idx.min(axis=0) - margin
    extent = idx.max(axis=0) + 1 + margin - start
    extent = -(-extent // multiple) * multiple
    padded = np.pad(seg, [(margin, margin + multiple)] * 3)
    sl = tuple(slice(s + margin, s + margin + e) for s, e in zip(start, extent))
    out = padded[sl]
    affine = src.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ start
    img = nib.Nifti1Image(out, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    img.header["descrip"] = b"asldro hrgt icbm2009a seg: 1 GM 2 WM 3 CSF"
    Path(target).write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))
    logger.info("wrote %s, shape %s, origin voxel %s", target, out.shape, start)
