"""The ``dce`` model class: simulated DCE volumes with known truth, and a BIDS dataset.

Forward model: the extended Tofts, Patlak or 2CXM concentration of the package physics on a
Parker AIF (plasma, Hct 0.42) injected at 30 s (+ a per-region delay), the SPGR equation
with the T10 map and r1 = 4.5 /s/mM, and Gaussian noise of σ = 0.5 % of the baseline
signal (a typical 3-D SPGR SNR of ~200 per volume, 80 volumes every 4 s).

Tolerances: noise-free data are fitted to 1e-6 (Murase start and LM refinement converge);
at the stated noise the region medians of Ktrans, ve and vp are checked to 10 % in the
enhancing lesion and vp to 10 % in the normal tissue (Ktrans there is ~0 and checked
absolutely, < 0.005 /min).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from numpy.testing import assert_allclose

from bids_app.cli.run import main
from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models.base import Collection, Volume
from bids_app.models.perfusion._aif import parker_aif
from bids_app.models.perfusion._dce_physics import patlak_conc, tofts_conc, two_cxm_conc

DCE = REGISTRY["dce"]
FA, TR, R1, HCT = 15.0, 0.004, 4.5, 0.42
TIMES = 4.0 * np.arange(80)
SHAPE = (8, 8, 4)
NORMAL = {"ktrans": 0.002, "ve": 0.2, "vp": 0.03, "delay": 2.0}
LESION = {"ktrans": 0.1, "ve": 0.3, "vp": 0.05, "delay": 4.0}


def _model(times=TIMES, **options):
    meta = {"FlipAngle": FA, "RepetitionTimeExcitation": TR, "VolumeTiming": list(times)}
    vol = Volume("x_dce.nii.gz", {}, meta)
    params = {"FlipAngle": (FA,), "RepetitionTimeExcitation": (TR,)}
    coll = Collection("dce", (vol,), params, {}, {}, (len(times),))
    return DCE.from_collections({"dce": coll}, **options)


def _spgr(conc, t10, m0=1000.0):
    r1 = 1.0 / t10[..., None] + R1 * conc
    e, a = np.exp(-TR * r1), np.deg2rad(FA)
    return m0 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)


def _phantom(rng, noise=0.005):
    """Signal (X, Y, Z, n_t), T10 map and labels (1 normal tissue, 2 enhancing lesion)."""
    labels = np.ones(SHAPE, int)
    labels[2:5, 2:5, 1:3] = 2
    t10 = np.where(labels == 2, 1.4, 1.0)
    conc = np.zeros((*SHAPE, TIMES.size))
    for lab, p in ((1, NORMAL), (2, LESION)):
        cp = parker_aif(TIMES, delay_s=30.0 + p["delay"], hematocrit=HCT)
        n = int((labels == lab).sum())
        conc[labels == lab] = tofts_conc(TIMES, cp, np.full(n, p["ktrans"]), p["ve"], p["vp"])
    sig = _spgr(conc, t10)
    sig = sig + rng.normal(0.0, noise * sig[..., :1], sig.shape)
    return sig, t10, labels


def test_noise_free_extended_tofts_is_exact():
    sig, t10, labels = _phantom(np.random.default_rng(0), noise=0.0)
    model = _model()
    fit = model.fit({"dce": sig}, covariates={"t1": t10})
    for lab, p in ((1, NORMAL), (2, LESION)):
        got = fit.params[labels == lab]
        assert_allclose(got, np.tile([p["ktrans"], p["ve"], p["vp"]], (len(got), 1)), rtol=1e-6)
    assert model.fit_notes["AIF"]["Type"].startswith("population (parker)")
    assert model.fit_notes["ConvergedFraction"] == 1.0


def test_noisy_lesion_and_tissue_medians():
    sig, t10, labels = _phantom(np.random.default_rng(1))
    fit = _model().fit({"dce": sig}, covariates={"t1": t10})
    ktrans, ve, vp = (fit.params[..., i] for i in range(3))
    les, norm = labels == 2, labels == 1
    assert np.median(ktrans[les]) == pytest.approx(LESION["ktrans"], rel=0.1)
    assert np.median(ve[les]) == pytest.approx(LESION["ve"], rel=0.1)
    assert np.median(vp[les]) == pytest.approx(LESION["vp"], rel=0.1)
    assert np.median(vp[norm]) == pytest.approx(NORMAL["vp"], rel=0.1)
    assert abs(np.median(ktrans[norm]) - NORMAL["ktrans"]) < 0.005


def test_t1_matters():
    """A wrong pre-contrast T1 (1.0 s instead of 1.4 s in the lesion) biases Ktrans."""
    sig, _, labels = _phantom(np.random.default_rng(2), noise=0.0)
    fit = _model().fit({"dce": sig}, covariates={"t1": np.ones(SHAPE)})
    assert abs(np.median(fit.params[labels == 2, 0]) / LESION["ktrans"] - 1) > 0.2


@pytest.mark.parametrize("kind", ["patlak", "2cxm", "tofts"])
def test_other_models_on_their_own_data(kind):
    rng = np.random.default_rng(3)
    n = 40
    cp = parker_aif(TIMES, delay_s=33.0, hematocrit=HCT)
    if kind == "patlak":
        truth = np.stack([rng.uniform(0.005, 0.05, n), np.full(n, np.nan),
                          rng.uniform(0.01, 0.08, n)], 1)  # fmt: skip
        conc = patlak_conc(TIMES, cp, truth[:, 0], truth[:, 2])
    elif kind == "tofts":
        truth = np.stack([rng.uniform(0.02, 0.2, n), rng.uniform(0.1, 0.5, n),
                          np.full(n, np.nan)], 1)  # fmt: skip
        conc = tofts_conc(TIMES, cp, truth[:, 0], truth[:, 1])
    else:
        vp, ve = rng.uniform(0.02, 0.08, n), rng.uniform(0.1, 0.4, n)
        fp, ps = rng.uniform(20, 80, n), rng.uniform(0.02, 0.2, n)
        conc = two_cxm_conc(TIMES, cp, vp, ve, fp, ps)
        truth = np.stack([fp / 100 * ps / (fp / 100 + ps), ve, vp], 1)
    t10 = np.full(n, 1.2)
    fit = _model(kinetic_model=kind).fit(_spgr(conc, t10), covariates={"t1": t10})
    defined = np.isfinite(truth)
    assert np.all(np.isnan(fit.params[~defined]))
    assert_allclose(fit.params[defined], truth[defined], rtol=1e-5)


def test_measured_aif_finds_the_artery():
    sig, t10, labels = _phantom(np.random.default_rng(4), noise=0.0)
    artery = np.zeros(SHAPE, bool)
    artery[6:8, 6:8, 2] = True
    cb = parker_aif(TIMES, delay_s=30.0, hematocrit=0.0)  # blood in the artery
    sig[artery] = _spgr(cb[None, :], np.full(int(artery.sum()), 1.6))
    t10 = np.where(artery, 1.6, t10)
    model = _model(aif="measured", n_aif_voxels=3)
    fit = model.fit({"dce": sig}, covariates={"t1": t10})
    aif = model.fit_notes["AIF"]
    assert aif["NumberOfVoxels"] == 3
    assert all(artery[tuple(ijk)] for ijk in aif["VoxelIndices"])
    assert np.all(np.isnan(fit.params[tuple(np.array(aif["VoxelIndices"]).T)]))
    # a measured AIF sampled every 4 s is shifted by interpolation: 10 % on Ktrans
    assert np.median(fit.params[labels == 2, 0]) == pytest.approx(LESION["ktrans"], rel=0.1)


def test_timing_metadata_errors():
    meta = {"FlipAngle": FA, "RepetitionTimeExcitation": TR, "RepetitionTime": 0.004}
    params = {"FlipAngle": (FA,), "RepetitionTimeExcitation": (TR,)}
    coll = Collection("dce", (Volume("x_dce.nii.gz", {}, meta),), params, {}, {}, (80,))
    with pytest.raises(MetadataError, match="RepetitionTimeExcitation") as err:
        DCE.from_collections({"dce": coll})
    assert "x_dce.json" in str(err.value)
    ok = Collection("dce", (Volume("x_dce.nii.gz", {}, {**meta, "RepetitionTime": 4.0}),),
                    coll.params, {}, {}, (80,))  # fmt: skip
    assert_allclose(DCE.from_collections({"dce": ok}).times, TIMES)
    short = {**meta, "VolumeTiming": list(TIMES[:10])}
    bad = Collection("dce", (Volume("x_dce.nii.gz", {}, short),), coll.params, {}, {}, (80,))
    with pytest.raises(MetadataError, match="VolumeTiming"):
        DCE.from_collections({"dce": bad})


def test_cli_runs_vfa_t1_first_and_records_it(tmp_path):
    """Only ``dce`` is selected: ``vfa_t1`` runs first and its T1 map feeds the fit."""
    sig, t10, labels = _phantom(np.random.default_rng(5), noise=0.0)
    root = tmp_path / "bids"
    sub = root / "sub-01"
    (sub / "perf").mkdir(parents=True)
    (sub / "anat").mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "dce", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    aff = np.eye(4)
    nib.save(nib.Nifti1Image(sig.astype(np.float32), aff), sub / "perf" / "sub-01_dce.nii.gz")
    (sub / "perf" / "sub-01_dce.json").write_text(json.dumps(
        {"FlipAngle": FA, "RepetitionTimeExcitation": TR, "RepetitionTime": 4.0}))  # fmt: skip
    for i, fa in enumerate((3.0, 20.0), start=1):
        vfa = _spgr(np.zeros((*SHAPE, 1)), t10, m0=3000.0)[..., 0]
        a, e = np.deg2rad(fa), np.exp(-0.015 / t10)
        vfa = 3000.0 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)
        stem = sub / "anat" / f"sub-01_flip-{i}_VFA"
        nib.save(nib.Nifti1Image(vfa.astype(np.float32), aff), f"{stem}.nii.gz")
        stem.with_suffix(".json").write_text(
            json.dumps({"FlipAngle": fa, "RepetitionTimeExcitation": 0.015})
        )
    out = tmp_path / "out"
    argv = [str(root), str(out), "participant", "--skip-bids-validation", "--no-reports"]
    assert main([*argv, "--models", "dce"]) == 0
    perf = out / "sub-01" / "perf"
    for suffix in ("ktrans", "ve", "vp"):
        assert (perf / f"sub-01_desc-dce_{suffix}.nii.gz").exists()
    side = json.loads((perf / "sub-01_desc-dce_ktrans.json").read_text())
    assert side["Units"] == "1/min"
    assert side["T10Source"]["Applied"] is True
    assert side["T10Source"]["Source"] == "bids::sub-01/anat/sub-01_T1map.nii.gz"
    ktrans = np.asarray(nib.load(perf / "sub-01_desc-dce_ktrans.nii.gz").dataobj)
    assert np.median(ktrans[labels == 2]) == pytest.approx(LESION["ktrans"], rel=1e-3)
