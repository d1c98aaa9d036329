"""A 4-D series model with companion tables, written as a newcomer would (only this file).

``toy_adc`` fits the apparent diffusion coefficient of ``S = S0 exp(-b ADC)`` by
least squares on ``log S`` over every volume of ``dwi/*_dwi`` with its ``.bval``/``.bvec``
(Stejskal & Tanner 1965), and names its output the BEP016 way.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app.models.base import (
    Companion,
    InputSpec,
    OutputSpec,
    QMRIModel,
    registered,
)
from tests.contract.conftest import region_rows, save

ADC_TRUE = 0.8e-3  # mm²/s
BVALS = np.array([0, 1000, 1000, 1000, 2000, 2000, 0])


class ToyADC(QMRIModel):
    """Trace ADC from a multi-b series (log-linear least squares)."""

    name = "toy_adc"
    description = "toy ADC (tests)"
    reference = "Stejskal EO, Tanner JE. J Chem Phys 1965;42:288-292"
    inputs = (
        InputSpec(
            "dwi",
            {"datatype": "dwi", "suffix": "dwi"},
            series=True,
            companions=(
                Companion("bval", "dwi", ".bval", "bval"),
                Companion("bvec", "dwi", ".bvec", "bvec"),
            ),
        ),
    )
    outputs = (
        OutputSpec(
            "ADC",
            "dwimap",
            "mm^2/s",
            valid_range=(0, 0.01),
            entities={"model": "toyadc", "param": "adc"},
            datatype="dwi",
        ),
    )

    def __init__(self, bvals, **options):
        super().__init__(**options)
        self.bvals = np.asarray(bvals, float)

    @classmethod
    def from_collections(cls, collections, **options):
        return cls(collections["dwi"].tables["bval"], **options)

    @property
    def acquisition(self):
        return {"bval": self.bvals.tolist()}

    def _fit_voxels(self, signal):
        design = np.stack([np.ones_like(self.bvals), -self.bvals], axis=1)
        with np.errstate(all="ignore"):
            coef = np.linalg.pinv(design) @ np.log(signal).T
        return coef[1][:, None]


@pytest.fixture
def toy():
    with registered(ToyADC) as cls:
        yield cls


def _write_dwi(subject, reference, bvals=BVALS, n_vols=None):
    _, affine, brain = reference
    s0 = np.where(brain, 1000.0, 0.0)
    data = s0[..., None] * np.exp(-np.asarray(bvals)[None, None, None, :] * ADC_TRUE)
    if n_vols is not None:
        data = data[..., :n_vols]
    d = subject / "sub-01" / "dwi"
    save(d / "sub-01_dwi.nii.gz", data, affine)
    (d / "sub-01_dwi.bval").write_text(" ".join(str(b) for b in bvals) + "\n")
    vec = np.zeros((3, len(bvals)))
    vec[0, np.asarray(bvals) > 0] = 1.0
    (d / "sub-01_dwi.bvec").write_text("\n".join(" ".join(map(str, r)) for r in vec) + "\n")
    (d / "sub-01_dwi.json").write_text(json.dumps({"RepetitionTime": 3.0}))


def test_series_model_runs_to_maps_sidecars_and_tables(toy, subject, reference, run_cli):
    _write_dwi(subject, reference)
    code, out = run_cli("toy_adc")
    assert code == 0
    path = out / "sub-01" / "dwi" / "sub-01_model-toyadc_param-adc_dwimap.nii.gz"
    adc = np.asarray(nib.load(path).dataobj)
    inside = np.isfinite(adc)
    assert inside.sum() > 1000
    np.testing.assert_allclose(adc[inside], ADC_TRUE, rtol=1e-4)  # noiseless, exact model
    side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert side["Units"] == "mm^2/s"
    assert side["AcquisitionParameters"]["bval"] == BVALS.tolist()
    assert side["Sources"] == ["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"]
    rows = region_rows(out, "model-toyadc_param-adc_dwimap")
    assert rows.loc["NAWM", "mean"] == pytest.approx(ADC_TRUE, rel=1e-4)
    assert rows.loc["lesion", "n_voxels"] > 0


def test_series_companion_mismatch_is_exit_65(toy, subject, reference, run_cli, caplog):
    _write_dwi(subject, reference, n_vols=6)  # 7 b-values for 6 volumes
    code, _ = run_cli("toy_adc")
    assert code == 65
    assert "sub-01_dwi.bval" in caplog.text


class ToyADCPreproc(ToyADC):
    """The same model on preprocessed DWI from a ``--derivatives`` dataset, used as is."""

    name = "toy_adc_preproc"
    inputs = (
        InputSpec(
            "dwi",
            {"datatype": "dwi", "suffix": "dwi", "desc": "preproc"},
            series=True,
            companions=ToyADC.inputs[0].companions,
            from_derivatives=True,
        ),
    )


def test_series_input_from_derivatives(subject, reference, run_cli, tmp_path):
    prep = tmp_path / "qsiprep"
    prep.mkdir()
    (prep / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "preprocessed",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "qsiprep"}],
            }
        )
    )
    _write_dwi(prep, reference)
    d = prep / "sub-01" / "dwi"
    for f in list(d.iterdir()):
        f.rename(f.with_name(f.name.replace("sub-01_dwi", "sub-01_desc-preproc_dwi")))
    with registered(ToyADCPreproc):
        code, out = run_cli("toy_adc_preproc", extra=("--derivatives", f"qsiprep={prep}"))
    assert code == 0
    path = out / "sub-01" / "dwi" / "sub-01_model-toyadc_param-adc_dwimap.nii.gz"
    adc = np.asarray(nib.load(path).dataobj)
    np.testing.assert_allclose(adc[np.isfinite(adc)], ADC_TRUE, rtol=1e-4)
    side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert side["Sources"] == ["bids:qsiprep:sub-01/dwi/sub-01_desc-preproc_dwi.nii.gz"]
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert links["qsiprep"] == prep.resolve().as_uri()
