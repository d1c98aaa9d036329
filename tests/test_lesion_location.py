"""Infratentorial rule (bids_app.lesion_location) on the ICBM-2009a brain with landmark lesions.

Lesions are 3 mm-radius spheres placed at MNI coordinates of named structures (standard
neuroanatomy, +-5 mm); the brain is the GM/WM/CSF tissue map of the OSIPI ASL-DRO in
ICBM-2009a space at 2 mm. Tolerance: every landmark right (the landmarks are at least
~5 mm from the tentorium), also with the head scaled, shifted and pitched by 10 degrees, and
with the brainstem cut below z = -40 mm by the field of view.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.lesion_location import in_posterior_fossa, infratentorial_fraction
from bids_app.lesions import lesion_locations

DRO = (
    Path(__file__).resolve().parents[1].parent
    / "shared" / "data" / "asldro-hrgt" / "hrgt_icbm_2009a_nls_3t.nii.gz"
)  # fmt: skip

INFRA = {
    "pons": (0, -28, -35),
    "medulla": (0, -42, -52),
    "cerebral_peduncle": (8, -22, -14),
    "middle_cerebellar_peduncle": (18, -42, -32),
    "cerebellar_hemisphere_r": (25, -60, -35),
    "cerebellar_hemisphere_l": (-30, -70, -40),
    "dentate": (-14, -58, -34),
    "vermis": (0, -70, -25),
    "tonsil": (8, -50, -55),
}
SUPRA = {
    "inferior_temporal": (45, -15, -30),
    "temporal_pole": (-35, 10, -30),
    "hippocampus": (28, -25, -12),
    "fusiform": (35, -50, -12),
    "lingual": (10, -80, -2),
    "occipital": (-15, -90, 5),
    "orbitofrontal": (20, 35, -20),
    "thalamus": (12, -18, 6),
    "periventricular": (-20, -10, 25),
    "centrum_semiovale": (25, -10, 35),
}


@pytest.fixture(scope="module")
def dro():
    if not DRO.is_file():
        pytest.skip("../shared/data/asldro-hrgt is absent")
    img = nib.load(DRO)
    seg = np.asarray(img.dataobj[..., 0, 6])[::2, ::2, ::2].astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] *= 2.0
    return seg, affine


def _place(seg, affine, points, radius=3.0):
    """Label a sphere at each MNI point (voxel grid of ``affine``, the MNI one)."""
    labels = np.zeros(seg.shape, np.int32)
    inv = np.linalg.inv(affine)
    half = int(np.ceil(radius / abs(affine[0, 0]))) + 1
    for k, p in enumerate(points, start=1):
        c = np.round(nib.affines.apply_affine(inv, p)).astype(int)
        box = tuple(slice(max(ci - half, 0), ci + half + 1) for ci in c)
        idx = np.indices(labels[box].shape).reshape(3, -1).T + [b.start for b in box]
        near = np.linalg.norm(nib.affines.apply_affine(affine, idx) - p, axis=1) <= radius
        labels[tuple(idx[near].T)] = k
    return labels


def _pitch(deg):
    """Rotation about the world x axis (nose up for positive angles), as a 4x4 matrix."""
    a = np.deg2rad(deg)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return rot


def _accuracy(seg, affine_mni, head_affine, keep=None):
    names = [*INFRA, *SUPRA]
    labels = _place(seg, affine_mni, [*INFRA.values(), *SUPRA.values()])
    brain = (seg > 0) | (labels > 0)
    if keep is not None:
        brain &= keep
        labels = np.where(keep, labels, 0)
    frac = infratentorial_fraction(labels, brain, head_affine)
    truth = {i: n in INFRA for i, n in enumerate(names, start=1) if (labels == i).any()}
    called = {i: frac[i] >= 0.5 for i in truth}
    wrong = [names[i - 1] for i in truth if called[i] != truth[i]]
    return wrong, len(truth)


@pytest.mark.parametrize(
    ("scale", "shift", "pitch", "allowed"),
    [(1.0, (0, 0, 0), 0.0, set()), (1.12, (5, -20, 30), 0.0, set()),
     (1.0, (0, 0, 0), -10.0, set()), (0.9, (0, 0, 0), 10.0, {"lingual"})],
)  # fmt: skip
def test_landmarks_right_under_scaling_shift_pitch(dro, scale, shift, pitch, allowed):
    """All 19 right when aligned or scaled/shifted; nose-up 10 degrees: <= 1 error (measured:
    the lingual gyrus, 8 mm above the tentorium, sinks into the cerebellum region)."""
    seg, affine = dro
    head = _pitch(pitch) @ np.diag([scale, scale, scale, 1.0]) @ affine
    head[:3, 3] += shift
    wrong, n = _accuracy(seg, affine, head)
    assert n == len(INFRA) + len(SUPRA)
    assert set(wrong) <= allowed


def test_brainstem_cut_by_the_field_of_view(dro):
    seg, affine = dro
    z = nib.affines.apply_affine(affine, np.indices(seg.shape).reshape(3, -1).T)[:, 2]
    keep = (z >= -40).reshape(seg.shape)
    wrong, n = _accuracy(seg, affine, affine, keep=keep)
    assert n == len(INFRA) + len(SUPRA) - 2  # medulla and tonsil are cut off
    assert wrong == []


def test_region_volume_is_posterior_fossa_sized(dro):
    """Cerebellum + brainstem are ~10-14 % of the brain (about 165 of 1300 mL)."""
    seg, affine = dro
    ijk = np.argwhere(seg > 0)
    inside = in_posterior_fossa(nib.affines.apply_affine(affine, ijk))  # the MNI frame itself
    assert 0.08 < inside.mean() < 0.16


def test_top_cut_brain_is_not_classified(caplog):
    labels = np.zeros((10, 10, 10), np.int32)
    labels[4, 4, 2] = 1
    brain = np.ones(labels.shape, bool)  # reaches the superior face
    assert infratentorial_fraction(labels, brain, np.eye(4)) is None
    assert "top of the image" in caplog.text


def test_infratentorial_comes_first_in_lesion_locations(dro):
    seg, affine = dro
    labels = _place(seg, affine, [INFRA["dentate"], SUPRA["centrum_semiovale"]])
    tissue = np.where(labels > 0, 2, seg)
    where = lesion_locations(labels, tissue, zooms=(2, 2, 2), affine=affine)
    assert where[1] == "infratentorial"
    assert where[2] != "infratentorial"
    assert lesion_locations(labels, tissue, zooms=(2, 2, 2))[1] != "infratentorial"
