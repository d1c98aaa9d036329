"""A non-brain head shell around the synthetic brain (``msqmri-synth --head``).

The shell is built geometrically from the brain mask, on a grid padded around the
brain (:func:`pad_anatomy`), with per-subject smooth thickness variation
(:func:`make_head`). From the brain outwards, by distance (mm) from the brain's closed
hull: outer CSF (1-3 mm; sulcal gaps inside the hull are CSF too), skull inner table
(1.2-2.2 mm), diploe (fatty marrow, 1.5-5 mm), outer table (1.2-2.2 mm), then the scalp
soft tissue: muscle (1-2 mm, up to 10 mm more over the temporal fossae),
subcutaneous fat (2-6 mm) and skin (1.5-2.5 mm), the last two as depths from the
head's outer surface. Below the brain a neck (an elliptic cylinder under the brainstem)
and a face (an ellipsoid below the frontal lobes) continue the head to the bottom of
the grid: muscle under fat and skin, a spinal cord (WM values, 5 mm radius) in a CSF
sheath (2.5 mm) and a vertebral ring of cortical bone and marrow, two eyes (vitreous,
12 mm radius) in orbital fat. The brainstem is thus not the lowest tissue.

Every head voxel gets T1, T2, T2*, PD and MTsat from :data:`HEAD_TISSUES` (each
subject scales every value by ``1 + e``, ``e ~ N(0, 0.05)`` clipped to +-0.1) and is
imaged with the same signal equations as the brain (``Volume.signal`` of
:mod:`bids_app.synth.protocol`): cortical bone is near zero in every contrast (T2*
0.4 ms), fat and marrow are bright on T1w, fat is fairly bright on FLAIR and on
late MESE echoes, vitreous is dark on T1w and FLAIR and bright on T2-weighted echoes.

Axes: the anatomy grid is RAS-aligned (x right, y anterior, z superior; true for the
shipped ICBM labels).

References
----------
.. [1] Gold GE, Han E, Stainsby J, et al. Musculoskeletal MRI at 3.0 T: relaxation
   times and image contrast. AJR 2004;183:343-351 (T1, T2 of marrow, subcutaneous fat
   and muscle at 3 T).
.. [2] Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2 relaxation and magnetization
   transfer in tissue at 3T. Magn Reson Med 2005;54:507-512 (muscle MT).
.. [3] Du J, Carl M, Bydder M, et al. Qualitative and quantitative ultrashort echo time
   (UTE) imaging of cortical bone. J Magn Reson 2010;207:304-311 (bone T2* < 0.5 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from bids_app.synth import writer
from bids_app.synth.anatomy import Anatomy
from bids_app.synth.tissue import PARAMS, SmoothField, SubjectTissue

#: Head tissues at 3 T: T1 (s), T2 (s), T2* (s), PD, MTsat (p.u.). Marrow, fat and
#: muscle T1/T2 from Gold et al. [1]_; bone T2* from Du et al. [3]_; vitreous taken
#: close to CSF (99 % water); skin, T2* and MTsat values are illustrative.
HEAD_TISSUES: dict[str, dict[str, float]] = {
    "bone": {"T1": 0.25, "T2": 0.0005, "T2star": 0.0004, "PD": 0.05, "MTsat": 0.0},
    "marrow": {"T1": 0.365, "T2": 0.049, "T2star": 0.012, "PD": 0.85, "MTsat": 0.1},
    "muscle": {"T1": 1.42, "T2": 0.032, "T2star": 0.025, "PD": 0.75, "MTsat": 1.3},
    "fat": {"T1": 0.371, "T2": 0.133, "T2star": 0.035, "PD": 0.9, "MTsat": 0.1},
    "skin": {"T1": 1.05, "T2": 0.040, "T2star": 0.025, "PD": 0.7, "MTsat": 1.5},
    "vitreous": {"T1": 4.2, "T2": 1.2, "T2star": 0.5, "PD": 1.0, "MTsat": 0.0},
}
#: Labels of the head dseg written to the truth (0 background, brain voxels 1).
HEAD_LABELS: dict[str, int] = {
    "brain": 1,
    "CSF": 2,
    "bone": 3,
    "marrow": 4,
    "muscle": 5,
    "fat": 6,
    "skin": 7,
    "vitreous": 8,
    "cord": 9,
}
#: Grid padding (mm) around the brain: (-x, +x), (-y, +y), (-z, +z).
PAD_MM = ((24, 24), (20, 24), (44, 20))
VALUE_SD = 0.05


@dataclass(frozen=True)
class Head:
    """One subject's head shell.

    Attributes
    ----------
    labels : (X, Y, Z) uint8 ndarray
        :data:`HEAD_LABELS` (1 = brain, 0 = air).
    mask : (X, Y, Z) bool ndarray
        Non-brain head voxels (labels >= 2).
    values : dict
        ``values[tissue][param]`` of this subject (tissues of :data:`HEAD_LABELS`).
    """

    labels: np.ndarray
    mask: np.ndarray
    values: dict[str, dict[str, float]]

    def params(self, b1: np.ndarray) -> dict[str, np.ndarray]:
        """Tissue parameters of the head voxels for ``Volume.signal``.

        Parameters
        ----------
        b1 : (X, Y, Z) ndarray
            Relative B1+ on the grid.

        Returns
        -------
        dict of (N,) float64 ndarray
            ``T1``, ``T2``, ``T2star``, ``PD``, ``MTsat``, ``B1`` of the N head voxels.
        """
        lab = self.labels[self.mask]
        out = {}
        for p in PARAMS:
            lut = np.zeros(max(HEAD_LABELS.values()) + 1)
            for name, k in HEAD_LABELS.items():
                if name != "brain":
                    lut[k] = self.values[name][p]
            out[p] = lut[lab]
        out["B1"] = np.asarray(b1, dtype=np.float64)[self.mask]
        return out


def pad_anatomy(anatomy: Anatomy) -> Anatomy:
    """The anatomy on a grid padded by :data:`PAD_MM` (room for the head).

    Returns
    -------
    Anatomy
        Same labels, zero-padded, with the shifted affine.
    """
    vox = anatomy.voxel_size
    pad = [(int(np.ceil(lo / vox)), int(np.ceil(hi / vox))) for lo, hi in PAD_MM]
    affine = anatomy.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([lo for lo, _ in pad], dtype=float)
    return Anatomy(np.pad(anatomy.labels, pad), np.pad(anatomy.ventricles, pad), affine)


def _unit_field(rng: np.random.Generator, lo: float = 60.0, hi: float = 150.0) -> SmoothField:
    """A smooth field with values in [0, 1] (``SmoothField`` of amplitude 1, halved)."""
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(lo, hi, 3)
    return SmoothField(
        2 * np.pi * directions / wavelengths[:, None], rng.uniform(0, 2 * np.pi, 3), 1.0
    )


def _ball_close(mask: np.ndarray, radius_mm: float, vox: float) -> np.ndarray:
    grown = ndi.distance_transform_edt(~mask, sampling=vox) <= radius_mm
    return ndi.distance_transform_edt(grown, sampling=vox) > radius_mm


def _subject_values(rng: np.random.Generator, tissue: SubjectTissue) -> dict:
    values = {}
    for name, nominal in HEAD_TISSUES.items():
        eps = np.clip(rng.normal(0.0, VALUE_SD, len(PARAMS)), -2 * VALUE_SD, 2 * VALUE_SD)
        values[name] = {p: nominal[p] * (1.0 + e) for p, e in zip(PARAMS, eps)}
    values["CSF"] = dict(tissue.values["CSF"])
    values["cord"] = dict(tissue.values["WM"])
    return values


def make_head(anatomy: Anatomy, tissue: SubjectTissue, rng: np.random.Generator) -> Head:
    """Build one subject's head shell around ``anatomy.brain``.

    Parameters
    ----------
    anatomy : Anatomy
        Padded anatomy (:func:`pad_anatomy`), RAS-aligned grid.
    tissue : SubjectTissue
        The subject's brain values (CSF and WM are reused for the CSF layers and cord).
    rng : numpy.random.Generator
        The subject's head generator (thickness fields, tissue values).

    Returns
    -------
    Head
    """
    vox = anatomy.voxel_size
    brain = anatomy.brain
    xyz = anatomy.world_coordinates()
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    idx = np.argwhere(brain)
    lo = anatomy.affine[:3, :3] @ idx.min(axis=0) + anatomy.affine[:3, 3]
    hi = anatomy.affine[:3, :3] @ idx.max(axis=0) + anatomy.affine[:3, 3]
    centre, semi = (lo + hi) / 2, (hi - lo) / 2
    u = [_unit_field(rng)(xyz) for _ in range(7)]
    hull = ndi.binary_fill_holes(_ball_close(brain, 4.0, vox))
    d_out = ndi.distance_transform_edt(~hull, sampling=vox)
    csf_out = 1.0 + 2.0 * u[0]
    inner = csf_out + 1.2 + u[1]
    diploe = inner + 1.5 + 3.5 * u[2]
    cranium = diploe + 1.2 + u[3]
    temporal = np.exp(-(((z - centre[2] + 0.25 * semi[2]) / (0.3 * semi[2])) ** 2))
    temporal *= np.clip((np.abs(x - centre[0]) / semi[0] - 0.5) * 2, 0, 1)
    muscle = 1.0 + u[4] + 10.0 * temporal
    fat, skin = 2.0 + 4.0 * u[5], 1.5 + u[6]
    # neck under the brainstem and face below the frontal lobes
    bottom = idx[:, 2] <= idx[:, 2].min() + 1
    stem = anatomy.affine[:3, :3] @ idx[bottom].mean(axis=0) + anatomy.affine[:3, 3]
    r_neck = np.hypot((x - centre[0]) / 50.0, (y - stem[1] + 5.0) / 55.0)
    neck = (r_neck <= 1.0) & (z <= centre[2])
    face_c = np.array([centre[0], hi[1] - 40.0, lo[2] + 0.25 * semi[2]])
    face = (((xyz - face_c) / np.array([58.0, 45.0, 50.0])) ** 2).sum(axis=-1) <= 1.0
    outer = (d_out <= cranium + muscle + fat + skin) | neck | face
    outer = ndi.binary_fill_holes(_ball_close(outer, 6.0, vox)) & ~brain
    depth = ndi.distance_transform_edt(np.pad(outer, 1), sampling=vox)[1:-1, 1:-1, 1:-1]
    labels = np.zeros(anatomy.shape, dtype=np.uint8)
    h = HEAD_LABELS
    labels[outer] = h["muscle"]
    labels[outer & (depth <= skin + fat)] = h["fat"]
    labels[outer & (depth <= skin)] = h["skin"]
    # vertebral ring, cord and its CSF sheath below the brainstem
    r_cord = np.hypot(x - stem[0], y - stem[1])
    below = z < stem[2] + vox
    ring = below & (r_cord <= 14.0) & outer
    labels[ring] = h["marrow"]
    labels[ring & ((r_cord <= 9.5) | (r_cord >= 12.5))] = h["bone"]
    # cranium layers by distance from the brain hull
    labels[d_out <= cranium] = h["bone"]
    labels[d_out <= diploe] = h["marrow"]
    labels[d_out <= inner] = h["bone"]
    labels[d_out <= csf_out] = h["CSF"]
    labels[below & (r_cord <= 7.5)] = h["CSF"]
    labels[below & (r_cord <= 5.0)] = h["cord"]
    # eyes: lowered (1 mm steps) until 14 mm clear of the cranium, in orbital fat
    clear = ndi.distance_transform_edt(d_out > cranium + 1.0, sampling=vox)
    inverse = np.linalg.inv(anatomy.affine)
    for side in (-1.0, 1.0):
        c = np.array([centre[0] + side * 32.0, hi[1] - 18.0, lo[2] + 0.6 * semi[2]])
        for _ in range(40):
            ijk = np.rint(inverse[:3, :3] @ c + inverse[:3, 3]).astype(int)
            ijk = np.clip(ijk, 0, np.array(anatomy.shape) - 1)
            if clear[tuple(ijk)] > 14.0:
                break
            c[2] -= 1.0
        r_eye = np.linalg.norm(xyz - c, axis=-1)
        labels[(r_eye <= 17.0) & (labels != h["CSF"]) & (labels != h["cord"])] = h["fat"]
        labels[r_eye <= 12.0] = h["vitreous"]
    labels[brain] = h["brain"]
    return Head(labels, labels >= 2, _subject_values(rng, tissue))


def write_head_truth(
    root, subject: str, session: str | None, anatomy: Anatomy, head: Head
) -> None:
    """Write the true brain mask and the head labels to ``derivatives/truth``.

    Files: ``<prefix>_desc-brain_mask.nii.gz`` (1 = GM, WM or CSF of the anatomy) and
    ``<prefix>_desc-head_dseg.nii.gz`` (:data:`HEAD_LABELS`), with sidecars.
    """
    prefix = writer.entity_prefix(subject, session)
    rel = f"sub-{subject}/" + (f"ses-{session}/" if session else "")
    ref = {"SpatialReference": f"bids:raw:{rel}anat/{prefix}_FLAIR.nii.gz"}
    anat = writer.subject_dir(root / "derivatives" / "truth", subject, session) / "anat"
    mask = anat / f"{prefix}_desc-brain_mask.nii.gz"
    writer.save_nifti(mask, anatomy.brain.astype(np.uint8), anatomy.affine, dtype=np.uint8)
    meta = {"Type": "Brain", "Description": "True brain mask (GM, WM, CSF labels)", **ref}
    writer.write_json(mask.with_name(f"{prefix}_desc-brain_mask.json"), meta)
    dseg = anat / f"{prefix}_desc-head_dseg.nii.gz"
    writer.save_nifti(dseg, head.labels, anatomy.affine, dtype=np.uint8)
    writer.write_dseg_tsv(
        anat / f"{prefix}_desc-head_dseg.tsv", [(k, n) for n, k in HEAD_LABELS.items()]
    )
    writer.write_json(
        anat / f"{prefix}_desc-head_dseg.json",
        {"Description": "Head tissues of msqmri-synth --head (1 = brain)", **ref},
    )
