"""The ``dsc`` model class: a simulated DSC volume with known truth, and a BIDS dataset.

Forward model (written here, independently of the model's ``simulate``): gamma-variate AIF
in a small "artery" block, tissue ``ΔR2* = (ρ/k_H) CBF dt (AIF ⊛ r)`` with an exponential
residue delayed by whole samples, ``S = S0 exp(-TE ΔR2*)`` and Gaussian noise of
σ = S0 / 200 (baseline SNR 200, tissue peak signal drop ~10-25 %).

Tolerances: oSVD underestimates CBF of a sharp residue (noise-free ~6-14 % at 1 s sampling;
at SNR 200 the oscillation limit raises the threshold to 5 % and GM CBF is measured -20 %,
WM -14 %; Wu et al. 2003), so CBF is checked to 25 %, MTT = CBV/CBF to 30 %, the GM/WM CBF
ratio (similar bias in both) to 10 %, and CBV (an area ratio, unbiased) to 5 % against
CBF x the MTT of the sampled residue. The smoothed residue peaks 1-2 samples late, so Tmax
is checked to lie between the delay and the delay + 2 s.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app.cli.run import main
from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models.base import Collection, Volume
from bids_app.models.perfusion.dsc import auto_baseline

DSC = REGISTRY["dsc"]
TE, DT, N_T = 0.03, 1.0, 70
K_H, RHO = 0.55 / 0.75, 1.04
SHAPE = (10, 10, 4)
GM = {"cbf": 60.0, "mtt": 4.0, "delay": 1.0}
WM = {"cbf": 25.0, "mtt": 6.0, "delay": 2.0}


def _aif(t):
    x = np.clip(t - 8.0, 0.0, None)
    return 80.0 * (x / 4.5) ** 3 * np.exp(3.0 - x / 1.5)  # peak 80 /s at t = 12.5 s


def _tissue(t, cbf, mtt, delay):
    """ΔR2* (1/s) of tissue with flow ``cbf`` (mL/100g/min), residue ``exp(-t/mtt)``."""
    r = np.exp(-np.clip(t - delay, 0, None) / mtt) * (t >= delay)
    return RHO / K_H * cbf / 6000.0 * DT * np.convolve(_aif(t), r)[: t.size]


def _sampled_mtt(tau):
    """dt Σ_k exp(-k dt / τ): the MTT of the residue sampled at whole samples (s)."""
    return DT / -np.expm1(-DT / tau)


def _phantom(rng, snr=200.0, leak_k2=0.0):
    """(X, Y, Z, N_T) signal, labels (1 GM, 2 WM, 3 artery, 4 leaky WM)."""
    t = np.arange(N_T) * DT
    labels = np.zeros(SHAPE, int)
    labels[:, :5] = 1
    labels[:, 5:] = 2
    labels[4:6, 4:6, 1:3] = 3  # 8 arterial voxels
    labels[7:9, 7:9, :] = 4  # leaky WM block
    dr2 = np.zeros((*SHAPE, N_T))
    dr2[labels == 1] = _tissue(t, **GM)
    dr2[labels == 2] = _tissue(t, **WM)
    dr2[labels == 3] = _aif(t)
    ref = _tissue(t, **WM)
    iref = np.concatenate([[0.0], np.cumsum(0.5 * (ref[1:] + ref[:-1]) * DT)])
    dr2[labels == 4] = ref - leak_k2 * iref  # T1-dominated leakage lowers ΔR2*
    s0 = 1000.0
    sig = s0 * np.exp(-TE * dr2)
    sig += rng.normal(0.0, s0 / snr, sig.shape)
    return sig, labels


def _model(**options):
    vol = Volume("x_dsc.nii.gz", {}, {"EchoTime": TE, "RepetitionTime": DT})
    coll = Collection("dsc", (vol,), {"EchoTime": (TE,), "RepetitionTime": (DT,)}, {}, {},
                      (N_T,))  # fmt: skip
    return DSC.from_collections({"dsc": coll}, **options)


def test_volume_fit_finds_the_artery_and_recovers_perfusion():
    sig, labels = _phantom(np.random.default_rng(3))
    model = _model()
    fit = model.fit({"dsc": sig}, mask=np.ones(SHAPE, bool))
    cbf, cbv, mtt, tmax = (fit.params[..., i] for i in range(4))
    aif = model.fit_notes["AIF"]
    assert aif["NumberOfVoxels"] == 5
    assert all(labels[tuple(ijk)] == 3 for ijk in aif["VoxelIndices"])
    assert np.all(np.isnan(cbf[tuple(np.array(aif["VoxelIndices"]).T)]))  # arteries: NaN
    gm, wm = labels == 1, labels == 2
    assert np.median(cbf[gm]) == pytest.approx(GM["cbf"], rel=0.25)  # measured -20 %
    assert np.median(cbf[wm]) == pytest.approx(WM["cbf"], rel=0.25)  # measured -14 %
    for tissue, region in ((GM, gm), (WM, wm)):
        mtt_true = _sampled_mtt(tissue["mtt"])
        assert np.median(cbv[region]) == pytest.approx(tissue["cbf"] * mtt_true / 60, rel=0.05)
        assert np.median(mtt[region]) == pytest.approx(mtt_true, rel=0.3)  # 1 / CBF bias
        late = np.median(tmax[region]) - tissue["delay"]
        assert 0 <= late <= 2 * DT  # the smoothed residue peaks 1-2 samples late
    assert np.median(tmax[wm]) > np.median(tmax[gm])
    ratio = np.median(cbf[gm]) / np.median(cbf[wm])
    assert ratio == pytest.approx(GM["cbf"] / WM["cbf"], rel=0.1)
    assert model.fit_notes["BaselineVolumes"] == 9  # t = 0-8 s: the AIF rises after 8 s
    assert "LeakageCorrection" not in model.fit_notes  # off by default


def test_leakage_correction_reduces_the_cbv_loss_of_leaky_tissue():
    """T1 leakage (K2 = 0.01 /s) lowers the uncorrected CBV; BSW recovers part of it.

    Measured: leaky block -44 % uncorrected, -21 % with BSW. BSW's reference is the mean
    tissue curve (GM and WM); the WM curve has another shape, so the correction is partial
    and it biases non-leaky WM too (-22 % here): why it is off by default.
    """
    sig, labels = _phantom(np.random.default_rng(4), leak_k2=0.01)
    leaky, wm = labels == 4, labels == 2
    truth = WM["cbf"] * _sampled_mtt(WM["mtt"]) / 60
    plain = _model().fit({"dsc": sig}).params[..., 1]
    model = _model(leakage_correction=True)
    fixed = model.fit({"dsc": sig}).params[..., 1]
    err_plain = np.median(plain[leaky]) / truth - 1
    err_fixed = np.median(fixed[leaky]) / truth - 1
    assert err_plain < -0.35
    assert abs(err_fixed) < 0.6 * abs(err_plain)
    assert abs(np.median(plain[wm]) / truth - 1) < 0.05  # no leakage, no correction: exact
    assert model.fit_notes["LeakageCorrection"]["K2Percentile95"] > 0


def test_auto_baseline_and_no_bolus():
    s = np.full(40, 500.0)
    s[12:20] = 300.0
    assert auto_baseline(s) == 11
    flat = _model().fit(np.full((4, N_T), 100.0))
    assert np.all(np.isnan(flat.params))


def test_timing_metadata():
    vol = Volume(
        "x_dsc.nii.gz", {}, {"EchoTime": TE, "VolumeTiming": [1.5 * k for k in range(20)]}
    )
    coll = Collection("dsc", (vol,), {"EchoTime": (TE,), "RepetitionTime": (None,)}, {}, {}, (20,))
    assert DSC.from_collections({"dsc": coll}).dt == pytest.approx(1.5)
    uneven = Volume("x_dsc.nii.gz", {}, {"VolumeTiming": [0, 1, 3, *range(4, 21)]})
    with pytest.raises(MetadataError, match="VolumeTiming"):
        DSC.from_collections({"dsc": Collection("dsc", (uneven,), coll.params, {}, {}, (20,))})
    bare = Volume("x_dsc.nii.gz", {}, {"EchoTime": TE})
    with pytest.raises(MetadataError, match="RepetitionTime") as err:
        DSC.from_collections({"dsc": Collection("dsc", (bare,), coll.params, {}, {}, (20,))})
    assert "x_dsc.json" in str(err.value)


def test_cli_dsc_outputs_and_filter(tmp_path):
    sig, labels = _phantom(np.random.default_rng(5))
    root = tmp_path / "bids"
    perf = root / "sub-01" / "perf"
    perf.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "dsc", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    for acq, data in (("gre", sig), ("other", sig[..., :30])):
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)),
                 perf / f"sub-01_acq-{acq}_dsc.nii.gz")  # fmt: skip
        meta = {"EchoTime": TE, "RepetitionTime": DT if acq == "gre" else 15.0}
        (perf / f"sub-01_acq-{acq}_dsc.json").write_text(json.dumps(meta))
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"dsc": {"acquisition": "gre"}}))
    out = tmp_path / "out"
    argv = [str(root), str(out), "participant", "--skip-bids-validation", "--no-reports"]
    assert main([*argv, "--models", "dsc", "--bids-filter-file", str(filt)]) == 0
    folder = out / "sub-01" / "perf"
    for suffix in ("cbf", "cbv", "mtt", "tmax"):
        assert (folder / f"sub-01_acq-gre_desc-dsc_{suffix}.nii.gz").exists()
    assert not list(folder.glob("*acq-other*"))  # RepetitionTime 15 s (out of range): filtered
    side = json.loads((folder / "sub-01_acq-gre_desc-dsc_cbf.json").read_text())
    assert side["Units"] == "mL/100g/min"
    assert side["AcquisitionParameters"] == {
        "EchoTime": TE,
        "SamplingInterval": DT,
        "NumberOfVolumes": N_T,
    }
    assert side["FitNotes"]["AIF"]["NumberOfVoxels"] == 5
    cbf = np.asarray(nib.load(folder / "sub-01_acq-gre_desc-dsc_cbf.nii.gz").dataobj)
    assert np.nanmedian(cbf[labels == 1]) == pytest.approx(GM["cbf"], rel=0.2)
    # without the filter, the other acquisition's RepetitionTime (15 s) is exit 65 (in a new
    # output folder: a rerun into ``out`` skips sub-01, whose outputs are complete)
    fresh = [str(root), str(tmp_path / "out2"), *argv[2:]]
    assert main([*fresh, "--models", "dsc", "-w", str(tmp_path / "w")]) == 65
