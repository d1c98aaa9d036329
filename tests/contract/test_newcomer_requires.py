"""A model that requires another model's output, written as a newcomer would (only this file).

``toy_r1`` declares that it needs the ``T1`` map of ``vfa_t1`` (required) and returns
``1/T1`` on the grid of its own input (the MESE echoes): the participant level must run
``vfa_t1`` first (even when only ``toy_r1`` is selected), resample its T1 onto the MESE grid,
and record where the T1 came from.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app.models.base import (
    InputSpec,
    MetaSpec,
    OutputSpec,
    QMRIModel,
    Requirement,
    registered,
)
from tests.contract.conftest import region_rows


class ToyR1(QMRIModel):
    """R1 = 1/T1 of vfa_t1, on the MESE grid."""

    name = "toy_r1"
    description = "toy R1 from vfa_t1 (tests)"
    inputs = (
        InputSpec(
            "mese",
            {"datatype": "anat", "suffix": "MESE"},
            metadata=(MetaSpec("EchoTime", "time", (1e-3, 1.0)),),
            stack_along=("EchoTime",),
            index_entities=("echo",),
        ),
    )
    outputs = (OutputSpec("R1", "R1map", "1/s", desc="toy", valid_range=(0.05, 20)),)
    requires = (Requirement("t1", model="vfa_t1", output="T1", required=True),)

    @classmethod
    def from_collections(cls, collections, **options):
        return cls(**options)

    @property
    def acquisition(self):
        return {}

    def _fit_voxels(self, signal, *, t1):
        return (1.0 / t1)[:, None]


@pytest.fixture
def toy():
    with registered(ToyR1) as cls:
        yield cls


def test_requirement_is_produced_first_resampled_and_recorded(toy, run_cli):
    code, out = run_cli("toy_r1")  # vfa_t1 is not selected: it is added as the producer
    assert code == 0
    anat = out / "sub-01" / "anat"
    t1 = np.asarray(nib.load(anat / "sub-01_T1map.nii.gz").dataobj)
    r1 = np.asarray(nib.load(anat / "sub-01_desc-toy_R1map.nii.gz").dataobj)
    ok = np.isfinite(t1) & np.isfinite(r1)
    assert ok.sum() > 1000
    np.testing.assert_allclose(r1[ok], 1 / t1[ok], rtol=1e-5)  # same grid here: exact
    side = json.loads((anat / "sub-01_desc-toy_R1map.json").read_text())
    record = side["Requires_t1"]
    assert record["Applied"] is True
    assert record["Source"] == "bids::sub-01/anat/sub-01_T1map.nii.gz"
    assert side["B1Correction"]["Applied"] is False  # the model itself does not use B1
    assert region_rows(out, "desc-toy_R1map").loc["NAWM", "mean"] > 0


def test_missing_required_product_skips_with_reason(toy, subject, run_cli, caplog):
    for f in (subject / "sub-01" / "anat").glob("*_VFA.*"):
        f.unlink()
    code, out = run_cli("toy_r1")
    assert code == 0
    assert not list((out / "sub-01" / "anat").glob("*desc-toy_R1map*"))
    assert "toy_r1: not fitted, missing t1" in caplog.text
