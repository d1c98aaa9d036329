"""MTR of real spinal-cord data against the Spinal Cord Toolbox ground truth.

Data: ``sct-testing-data/mt`` (spinalcordtoolbox/sct_testing_data @ af4c7e8, MIT licence):
``mt0_reg_slicereg_goldstandard`` (MT off, registered to MT on), ``mt1`` (MT on) and
``mtr.nii.gz`` = 100 (mt0_reg - mt1) / mt0_reg as written by ``sct_compute_mtr`` (float32,
nothing clipped; 633 non-finite voxels where mt0_reg = 0). SCT's own test requires equality on
the finite voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bids_app.models.mt import MTRModel

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MT_DIR = DATA / "sct-testing-data" / "mt"

pytestmark = pytest.mark.skipif(
    not MT_DIR.is_dir(), reason=f"reference data not found at {MT_DIR} (see ../shared/data)"
)


@pytest.fixture(scope="module")
def sct():
    nib = pytest.importorskip("nibabel")
    off = nib.load(MT_DIR / "mt0_reg_slicereg_goldstandard.nii.gz").get_fdata()
    on = nib.load(MT_DIR / "mt1.nii.gz").get_fdata()
    ref = nib.load(MT_DIR / "mtr.nii.gz").get_fdata(dtype=np.float32)
    cord = nib.load(MT_DIR / "mt1_seg.nii.gz").get_fdata() > 0.5
    fit = MTRModel().fit(np.stack([off, on], axis=-1))
    return fit, ref, cord


def test_sct_mtr_matches_reference(sct):
    fit, ref, _ = sct
    ours = fit.params[..., 0]
    finite = np.isfinite(ref)
    # SCT writes -inf/NaN where MT-off is 0; we write NaN at exactly those voxels
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    # We compute in float64, SCT in float32: the only difference is float32 rounding, i.e.
    # half an ulp, which is 6.1e-5 at the largest |MTR| of 1655 (background). atol = 1e-4
    # covers one ulp there; measured max |difference| = 6.1e-5.
    np.testing.assert_allclose(ours.astype(np.float32)[finite], ref[finite], rtol=1e-6, atol=1e-4)


def test_sct_mtr_cord_mean_and_range(sct):
    fit, ref, cord = sct
    mtr_map = fit.maps()["MTR"]
    assert cord.sum() == 520
    assert np.isfinite(mtr_map[cord]).all()  # no cord voxel leaves the physical range
    # mean MTR in the SCT cord mask computed when the data were collected: 31.88
    np.testing.assert_allclose(np.mean(mtr_map[cord]), 31.88, atol=0.005)
    np.testing.assert_allclose(np.mean(mtr_map[cord]), np.mean(ref[cord]), rtol=1e-6)
    # background voxels with |MTR| > 100 are NaN in the map and counted
    n_out = int((np.abs(ref[np.isfinite(ref)]) > 100).sum())
    assert fit.n_out_of_range()["MTR"] == n_out
