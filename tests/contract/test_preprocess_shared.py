"""Shared preprocessing: models with one ``preprocess_key`` preprocess the same files once.

Two toy trace-ADC models stand in for DTI and NODDI: their ``preprocess`` scales the signal
(as denoising would change it) and hands a state to ``with_preprocessed``; the participant
level must call it once for both, and both fits must see the preprocessed data.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_app.models.base import registered
from tests.contract.test_newcomer_series import ADC_TRUE, ToyADC, _write_dwi

SCALE = 2.0


def _toy(name: str, calls: list[str]):
    class Shared(ToyADC):
        def preprocess_key(self):
            return ("toy-preproc", 1)

        def preprocess(self, data, *, mask, affine, pool=None):
            calls.append(self.name)
            return {k: v * SCALE for k, v in data.items()}, {"scale": SCALE, "mask": mask}

        def with_preprocessed(self, state):
            self.fit_notes["PreprocessScale"] = state["scale"]
            return self

        def _fit_voxels(self, signal):
            assert np.nanmax(signal) > 1000.0  # the scaled data, not the raw
            return super()._fit_voxels(signal)

    Shared.name = name
    return Shared


@pytest.fixture
def calls():
    log: list[str] = []
    with registered(_toy("toy_pre_a", log)), registered(_toy("toy_pre_b", log)):
        yield log


def test_two_models_share_one_preprocessing(calls, subject, reference, run_cli):
    _write_dwi(subject, reference)
    code, out = run_cli("toy_pre_a", "toy_pre_b")
    assert code == 0
    assert calls == ["toy_pre_a"]  # once, by the first model of the key
    path = out / "sub-01" / "dwi" / "sub-01_model-toyadc_param-adc_dwimap.nii.gz"
    adc = np.asarray(nib.load(path).dataobj)
    inside = np.isfinite(adc)
    assert inside.sum() > 1000
    np.testing.assert_allclose(adc[inside], ADC_TRUE, rtol=1e-4)  # scaling leaves ADC
