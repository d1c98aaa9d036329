"""The synthetic DCE series (:mod:`bids_app.synth.dce_series`): forward model and recovery."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app.models import get_model
from bids_app.models.base import Collection, Volume
from bids_app.models.perfusion._aif import parker_aif
from bids_app.models.perfusion._dce_physics import tofts_conc
from bids_app.synth import dce_series
from bids_app.synth.dataset import make_plan, write_dataset


def test_forward_agrees_with_the_fitting_codes_tofts():
    """Two independent extended Tofts integrations agree: the writer's 0.05 s recursion and
    the fit's exact convolution of the AIF sampled every 5 s (linear in between). The
    first-pass peak of the AIF is narrower than 5 s, so they differ by up to 3 % of the peak
    there and by under 0.5 % of it after the first pass (t > 90 s)."""
    t = dce_series.times()
    kt = np.array([0.0, 0.05, 0.15, 0.25])
    ve = np.array([np.nan, 0.3, 0.2, 0.4])
    vp = np.array([0.04, 0.02, 0.03, 0.01])
    ours = dce_series.tofts_curves(kt, ve, vp, t)
    cp = parker_aif(t, delay_s=dce_series.INJECTION_S, hematocrit=dce_series.HEMATOCRIT)
    ref = tofts_conc(t, cp, kt, np.nan_to_num(ve, nan=1.0), vp)
    assert np.abs(ours - ref).max() < 0.03 * ref.max()
    assert np.abs(ours - ref)[:, t > 90].max() < 0.005 * ref.max()
    assert np.all(ours[:, t < dce_series.INJECTION_S] == 0.0)


@pytest.fixture(scope="module")
def dce_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dce") / "ds"
    write_dataset(make_plan(subjects=3, size="tiny", seed=0, series=("dce",)), root)
    return root


def test_dataset_ignores_the_unofficial_suffix(dce_dataset):
    assert "*_dce.*" in (dce_dataset / ".bidsignore").read_text()


def test_dce_model_recovers_the_truth(dce_dataset):
    """The dce model, given the true pre-contrast T1, recovers the truth of sub-03 (the patient
    with enhancing lesions at the tiny grid): Ktrans of leaky voxels within 10 % (median;
    SNR 100 at the WM baseline, the B1 error of the nominal flip angle included) and vp of
    GM within 10 %; intact barrier gives a Ktrans below 0.01 /min in 95 % of GM voxels."""
    sub = dce_dataset / "sub-03"
    truth = dce_dataset / "derivatives" / "truth" / "sub-03"
    img = nib.load(sub / "perf" / "sub-03_dce.nii.gz")
    meta = json.loads((sub / "perf" / "sub-03_dce.json").read_text())
    vol = Volume(str(sub / "perf" / "sub-03_dce.nii.gz"), {}, meta)
    params = {k: (meta[k],) for k in ("FlipAngle", "RepetitionTimeExcitation")}
    coll = Collection("dce", (vol,), params, {}, {}, (img.shape[-1],))
    model = get_model("dce").from_collections({"dce": coll})
    t1 = nib.load(truth / "anat" / "sub-03_T1map.nii.gz").get_fdata()
    dseg = np.asarray(nib.load(truth / "anat" / "sub-03_dseg.nii.gz").dataobj)
    mask = dseg > 0
    fit = model.fit({"dce": img.get_fdata()}, mask=mask, affine=img.affine,
                    covariates={"t1": t1}).maps()  # fmt: skip
    kt_true = nib.load(truth / "perf" / "sub-03_desc-dce_ktrans.nii.gz").get_fdata()
    vp_true = nib.load(truth / "perf" / "sub-03_desc-dce_vp.nii.gz").get_fdata()
    leaky = kt_true > 0
    assert leaky.sum() >= 20
    rel = (fit["Ktrans"][leaky] - kt_true[leaky]) / kt_true[leaky]
    assert abs(np.nanmedian(rel)) < 0.10
    gm = (dseg == 1) & ~leaky
    assert abs(np.nanmedian(fit["vp"][gm]) / 0.04 - 1) < 0.10
    assert np.nanpercentile(fit["Ktrans"][gm], 95) < 0.01
    assert np.allclose(vp_true[gm], 0.04)
