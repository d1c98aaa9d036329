"""The ``asl_cbf`` model class: forward simulations with known truth, and BIDS datasets.

* Through the model class (``from_collections`` -> ``fit``): multi-delay pCASL at SNR 50 per
  delay (σ of each difference = GM peak ΔM / 50) must give a GM median |CBF error| < 5 % and
  |ATT error| < 0.1 s (issue 23); measured ~1.2 % and ~0.013 s, so a bias of a few percent
  fails. Noiseless single-delay (white paper) and PASL (QUIPSS II) data are exact, for every
  ``M0Type``.
* On disk through ``msqmri`` (``bids_app.cli.run.main``): a tiny ASL dataset gives the
  ``perf/*_cbf`` and ``*_att`` maps with the parameters in the sidecar; a missing M0
  ``RepetitionTimePreparation`` or a missing M0 image is exit 65 naming file and key (or, with
  ``m0_tr_fallback``, a recorded fallback); a dataset with only an M0 scan is exit 66.

References: Alsop et al. MRM 2015;73:102-116; Buxton et al. MRM 1998;40:383-396.
"""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
from numpy.testing import assert_allclose

from bids_app.cli.run import main
from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models.base import Collection, Volume
from bids_app.models.perfusion._asl_kinetic import gkm_signal

logger = logging.getLogger(__name__)
ASL = REGISTRY["asl_cbf"]
T1_TISSUE = 1.33  # the model's default tissue T1 of the M0 TR correction (s)
PCASL = {
    "ArterialSpinLabelingType": "PCASL",
    "LabelingDuration": 1.8,
    "BackgroundSuppression": False,
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
}


def _model(meta, types, m0_meta=None, n_m0=1, **options):
    """The model from in-memory collections (what the pipeline would pass)."""
    types = np.array(types)
    colls = {
        "asl": Collection("asl", (Volume("a_asl.nii.gz", {}, meta),), tables={"aslcontext": types})
    }
    if m0_meta is not None:
        colls["m0scan"] = Collection(
            "m0scan", (Volume("a_m0scan.nii.gz", {}, m0_meta),), n_measurements=(n_m0,)
        )
    return ASL.from_collections(colls, **options)


def _series(model, cbf, att, m0, control=300.0):
    """Control/label (and M0 where the series holds one) of the model's protocol, noiseless."""
    p = model.params
    types = np.array(p.volume_types)
    tau = p.labeling_duration or (p.bolus_duration,) * p.n_volumes
    dm = m0[:, None] * gkm_signal(
        cbf[:, None], att[:, None], np.array(p.post_labeling_delay), np.array(tau),
        labeling_type=p.labeling_type, labeling_efficiency=p.labeling_efficiency,
        t1_blood=p.t1_blood,
    )  # fmt: skip
    series = np.where(types == "label", control - dm, control + 0 * dm)
    series = np.where(types == "deltam", dm, series)
    tr = p.m0_repetition_time
    sat = 1.0 if tr is None else -np.expm1(-tr / T1_TISSUE)
    return np.where(types == "m0scan", (m0 * sat)[:, None], series), m0 * sat


# --------------------------------------------------------------- forward simulations


@pytest.mark.parametrize(
    ("tissue", "cbf0", "att0", "tol_cbf", "tol_att"),
    [("GM", 60.0, 1.2, 0.05, 0.1), ("WM", 20.0, 1.5, 0.12, 0.15)],
)
def test_multi_delay_snr50_through_the_model(tissue, cbf0, att0, tol_cbf, tol_att):
    """Six PLDs 0.25-2.5 s, one pair each; σ(ΔM) = GM peak ΔM / 50 for both tissues.

    GM bounds are the issue's; WM has a third of the GM signal (SNR ~17): measured ~4 %, 0.04 s.
    """
    model = ASL.from_collections(ASL.example_collections())
    rng = np.random.default_rng(23)
    n = 4000
    cbf = rng.normal(cbf0, 0.1 * cbf0, n)
    att = rng.uniform(att0 - 0.2, att0 + 0.2, n)
    m0 = np.full(n, 1000.0)
    series, m0_meas = _series(model, cbf, att, m0)
    grid = np.linspace(0.1, 3.0, 291)
    peak = 1000.0 * gkm_signal(60.0, 1.2, grid, 1.8, labeling_type="PCASL",
                               labeling_efficiency=0.85).max()  # fmt: skip
    sigma = peak / 50.0 / np.sqrt(2.0)  # per volume: the difference of two has peak/50
    noisy = series + rng.normal(0.0, sigma, series.shape)
    fit = model.fit(np.concatenate([noisy, m0_meas[:, None]], axis=1))
    cbf_err = np.median(np.abs(fit.params[:, 0] / cbf - 1))
    att_err = np.median(np.abs(fit.params[:, 1] - att))
    logger.info("%s SNR 50: median |dCBF| %.2f %%, |dATT| %.3f s", tissue, 100 * cbf_err, att_err)
    assert cbf_err < tol_cbf
    assert att_err < tol_att
    assert abs(np.median(fit.params[:, 0] / cbf) - 1) < 0.02  # no bias of the median


def test_single_delay_included_m0_is_exact_and_att_nan():
    meta = {**PCASL, "PostLabelingDelay": 1.8, "M0Type": "Included",
            "RepetitionTimePreparation": 4.0}  # fmt: skip
    model = _model(meta, ["m0scan", *["control", "label"] * 3])
    assert model.n_m0 == 0
    rng = np.random.default_rng(1)
    cbf, att, m0 = rng.uniform(10, 90, 50), rng.uniform(0.5, 1.8, 50), rng.uniform(500, 2e3, 50)
    series, _ = _series(model, cbf, att, m0)
    fit = model.fit(series)
    assert_allclose(fit.params[:, 0], cbf, rtol=1e-9)  # ATT <= PLD: the white paper is exact
    assert np.all(np.isnan(fit.params[:, 1]))
    assert model.fit_notes["ATT"].startswith("not estimable")
    acq = model.acquisition
    assert acq["M0RepetitionTimePreparation"] == 4.0
    assert acq["Quantification"].startswith("single-delay")


def test_estimate_absent_and_user_m0():
    meta = {**PCASL, "PostLabelingDelay": 2.0, "M0Type": "Estimate", "M0Estimate": 800.0}
    types = ["control", "label"] * 2
    model = _model(meta, types)
    cbf = np.array([30.0, 70.0])
    series, _ = _series(model, cbf, np.array([1.0, 1.5]), np.full(2, 800.0))
    assert_allclose(model.fit(series).params[:, 0], cbf, rtol=1e-9)
    absent = {**meta, "M0Type": "Absent"}
    with pytest.raises(MetadataError, match="M0Type"):
        _model(absent, types)
    user = _model(absent, types, m0_value=800.0)
    assert_allclose(user.fit(series).params[:, 0], cbf, rtol=1e-9)
    assert any("user M0" in n for n in user.acquisition["ParameterNotes"])


def test_pasl_quipss2_and_sidecar_efficiency():
    meta = {"ArterialSpinLabelingType": "PASL", "PostLabelingDelay": 2.0, "M0Type": "Separate",
            "BolusCutOffFlag": True, "BolusCutOffTechnique": "QUIPSSII",
            "BolusCutOffDelayTime": 0.7, "BackgroundSuppression": True,
            "BackgroundSuppressionNumberPulses": 2, "LabelingEfficiency": 0.95}  # fmt: skip
    model = _model(meta, ["label", "control"] * 2, {"RepetitionTimePreparation": 5.0})
    assert model.acquisition["LabelingEfficiencySource"] == "sidecar"
    assert model.acquisition["BolusDuration"] == 0.7
    cbf, m0 = np.array([25.0, 55.0]), np.array([900.0, 1200.0])
    series, m0_meas = _series(model, cbf, np.array([0.8, 1.2]), m0)  # ATT + TI1 <= TI
    fit = model.fit(np.concatenate([series, m0_meas[:, None]], axis=1))
    assert_allclose(fit.params[:, 0], cbf, rtol=1e-9)
    # background-suppression correction: alpha x 0.95^2, so CBF is 1/0.9025 higher
    bs = _model(meta, ["label", "control"] * 2, {"RepetitionTimePreparation": 5.0},
                bs_efficiency=0.95)  # fmt: skip
    assert bs.acquisition["LabelingEfficiency"] == pytest.approx(0.95 * 0.95**2)
    more = bs.fit(np.concatenate([series, m0_meas[:, None]], axis=1)).params[:, 0]
    assert_allclose(more, cbf / 0.95**2, rtol=1e-9)


def test_metadata_errors_name_file_and_key():
    meta = {**PCASL, "PostLabelingDelay": 1.8, "M0Type": "Separate"}
    types = ["control", "label"]
    with pytest.raises(MetadataError, match="M0Type"):
        _model(meta, types)  # Separate without an m0scan image
    with pytest.raises(MetadataError, match="RepetitionTimePreparation") as err:
        _model(meta, types, {})
    assert "a_m0scan.json" in str(err.value)
    fallback = _model(meta, types, {}, m0_tr_fallback=True)
    assert fallback.acquisition["M0RepetitionTimePreparation"] is None
    assert any("no saturation-recovery" in n for n in fallback.acquisition["ParameterNotes"])
    with pytest.raises(MetadataError, match="PostLabelingDelay"):
        _model({**meta, "PostLabelingDelay": [1.0, 1.5]}, types, {"RepetitionTimePreparation": 6})
    with pytest.raises(MetadataError, match="LabelingDuration"):
        _model({k: v for k, v in meta.items() if k != "LabelingDuration"}, types,
               {"RepetitionTimePreparation": 6.0})  # fmt: skip


def test_2d_slice_timing_in_the_volume_fit():
    """Each slice's PLD is PLD + its slice time: exact; a wrong SliceTiming length is 65."""
    n_z = 4
    meta = {**PCASL, "MRAcquisitionType": "2D", "PostLabelingDelay": 1.5, "M0Type": "Separate",
            "SliceTiming": [0.0, 0.05, 0.1, 0.15]}  # fmt: skip
    model = _model(meta, ["control", "label"], {"RepetitionTimePreparation": 6.0})
    cbf, m0 = 50.0, 1000.0
    pld = 1.5 + 0.05 * np.arange(n_z)
    dm = m0 * gkm_signal(cbf, 1.0, pld, 1.8, labeling_type="PCASL", labeling_efficiency=0.85)
    asl = np.broadcast_to(np.stack([300 + 0 * dm, 300 - dm], -1), (3, 3, n_z, 2))
    m0_img = np.full((3, 3, n_z, 1), m0 * -np.expm1(-6.0 / T1_TISSUE))
    fit = model.fit({"asl": asl, "m0scan": m0_img})
    assert_allclose(fit.params[..., 0], cbf, rtol=1e-6)
    with pytest.raises(MetadataError, match="SliceTiming"):
        model.fit({"asl": asl[:, :, :3], "m0scan": m0_img[:, :, :3]})


# --------------------------------------------------------------- BIDS datasets on disk

SHAPE = (8, 8, 6)
PLDS = (0.5, 1.0, 1.5, 2.0, 2.5)
CBF_TRUE, ATT_TRUE, M0_TRUE = 60.0, 1.2, 1000.0


def _write(root, *, asl=True, m0_meta=None, **overrides):
    """A one-subject pCASL multi-delay dataset (separate M0, TR 6 s), noiseless."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "asl test", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    perf = root / "sub-01" / "perf"
    perf.mkdir(parents=True, exist_ok=True)
    brain = np.zeros(SHAPE, bool)
    brain[1:7, 1:7, 1:5] = True
    m0 = np.where(brain, M0_TRUE, 1e-3)
    dm = m0[..., None] * gkm_signal(np.where(brain, CBF_TRUE, 0.0)[..., None], ATT_TRUE,
                                    np.array(PLDS), 1.8, labeling_type="PCASL",
                                    labeling_efficiency=0.85)  # fmt: skip
    control = 0.3 * m0[..., None] + 0 * dm
    data = np.stack([control, control - dm], -1).reshape(*SHAPE, -1)
    if asl:
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), perf / "sub-01_asl.nii.gz")
        (perf / "sub-01_aslcontext.tsv").write_text(
            "volume_type\n" + "control\nlabel\n" * len(PLDS)
        )
        meta = {**PCASL, "PostLabelingDelay": [p for p in PLDS for _ in (0, 1)],
                "M0Type": "Separate", "RepetitionTimePreparation": 4.5, **overrides}  # fmt: skip
        (perf / "sub-01_asl.json").write_text(json.dumps(meta))
    sat = -np.expm1(-6.0 / T1_TISSUE)
    nib.save(nib.Nifti1Image((m0 * sat).astype(np.float32), np.eye(4)),
             perf / "sub-01_m0scan.nii.gz")  # fmt: skip
    m0_meta = {"RepetitionTimePreparation": 6.0} if m0_meta is None else m0_meta
    (perf / "sub-01_m0scan.json").write_text(json.dumps(m0_meta))
    return root, brain


def _run(root, out, *extra):
    argv = [str(root), str(out), "participant", "--skip-bids-validation", "--no-reports"]
    return main([*argv, "--models", "asl_cbf", *extra])


def _load(path):
    side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    return np.asarray(nib.load(path).dataobj), side


def test_cli_writes_cbf_att_and_parameters(tmp_path):
    root, brain = _write(tmp_path / "bids")
    assert _run(root, tmp_path / "out") == 0
    perf = tmp_path / "out" / "sub-01" / "perf"
    cbf, side = _load(perf / "sub-01_cbf.nii.gz")
    att, att_side = _load(perf / "sub-01_att.nii.gz")
    assert_allclose(cbf[brain], CBF_TRUE, rtol=1e-4)  # noiseless, float32 images
    assert_allclose(att[brain], ATT_TRUE, atol=1e-4)
    assert (side["Units"], att_side["Units"]) == ("mL/100g/min", "s")
    acq = side["AcquisitionParameters"]
    assert acq["ArterialSpinLabelingType"] == "PCASL"
    assert acq["PostLabelingDelay"] == list(PLDS)
    assert acq["LabelingDuration"] == [1.8]
    assert acq["LabelingEfficiency"] == 0.85
    assert acq["LabelingEfficiencySource"] == "white-paper default"
    assert (acq["BloodT1"], acq["M0RepetitionTimePreparation"]) == (1.65, 6.0)
    assert side["FitNotes"]["DifferenceVolumesPerDelay"] == [1] * len(PLDS)
    assert side["Sources"] == ["bids:raw:sub-01/perf/sub-01_asl.nii.gz",
                               "bids:raw:sub-01/perf/sub-01_m0scan.nii.gz"]  # fmt: skip
    assert (perf / "sub-01_desc-rmse_cbf.nii.gz").exists()


def test_cli_missing_m0_tr_is_65_or_recorded_fallback(tmp_path, caplog):
    root, brain = _write(tmp_path / "bids", m0_meta={})
    assert _run(root, tmp_path / "out") == 65
    assert "sub-01_m0scan.json" in caplog.text
    assert "RepetitionTimePreparation" in caplog.text
    config = tmp_path / "asl.toml"
    config.write_text("[asl_cbf]\nm0_tr_fallback = true\n")
    assert _run(root, tmp_path / "out2", "--config", str(config)) == 0
    cbf, side = _load(tmp_path / "out2" / "sub-01" / "perf" / "sub-01_cbf.nii.gz")
    notes = side["AcquisitionParameters"]["ParameterNotes"]
    assert any("no saturation-recovery correction" in n for n in notes)
    sat = -np.expm1(-6.0 / T1_TISSUE)  # M0 taken as relaxed: CBF 1/sat too high, never zero
    assert_allclose(cbf[brain], CBF_TRUE / sat, rtol=1e-4)


def test_cli_missing_m0_image_is_65(tmp_path, caplog):
    root, _ = _write(tmp_path / "bids")
    for f in (root / "sub-01" / "perf").glob("sub-01_m0scan.*"):
        f.unlink()
    assert _run(root, tmp_path / "out") == 65
    assert "sub-01_asl.json" in caplog.text
    assert "M0Type" in caplog.text


def test_cli_m0_scan_without_asl_series_is_66(tmp_path):
    root, _ = _write(tmp_path / "bids", asl=False)
    assert _run(root, tmp_path / "out") == 66
