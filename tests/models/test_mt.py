"""Ground-truth tests of the ``mtr`` and ``mtsat`` models.

MTsat is checked against :mod:`tests.models.mt_forward`, an exact steady-state simulator that
shares no formula with the fit (full exponential relaxation, exact sin/cos of the actual flip
angle, MT pre-pulse saturating a fraction δ of Mz just before each excitation).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from bids_app.errors import MetadataError
from bids_app.models.base import Collection, Volume, sidecar_path
from bids_app.models.mt import MTRModel, MTsatModel
from bids_app.models.mt._physics import (
    mtr,
    mtsat_small_angle,
    r1_a_small_angle,
    weiskopf2013_correction,
)
from tests.models import mt_forward as fw

BIDS_EXAMPLES = Path("/work/shared/bids-examples")
if not BIDS_EXAMPLES.is_dir():
    BIDS_EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "bids-examples"

# --- tolerances of the small-angle / short-TR approximation (Helms 2008) -------------------
# The closed form neglects terms of relative size R1*TR (0.007-0.05 here), (B1*alpha)^2
# (up to 0.18 for 24 deg) and delta (<= 0.02). Measured against the exact simulator for the
# tissues below, both protocols and B1 in {0.85, 1, 1.15} (see test_mtsat_bias_is_first_order
# for the O(eps) scaling): MTsat <= 4.0 % (WM at B1 0.85), T1 <= 2.0 % (GM at B1 1.15) and
# 3.4 % (CSF), M0 <= 1.8 % (CSF). The tolerances leave ~50 % margin on the worst case.
RTOL_MTSAT = 0.06
RTOL_T1 = 0.04
RTOL_M0 = 0.025

#: (T1 s, δ fraction): WM, GM, lesion, CSF at 3 T; M0 = 1000 everywhere
TISSUES = np.array([[0.85, 0.020], [1.4, 0.011], [1.2, 0.012], [4.0, 0.002]])
M0 = 1000.0
#: (flip angles deg, TRs s) in the order PDw, T1w, MTw
PROTOCOLS = {
    "qmri_mtsat": ((6.0, 20.0, 6.0), (0.028, 0.028, 0.028)),
    "mpm_unequal_tr": ((6.0, 21.0, 6.0), (0.0245, 0.0187, 0.0373)),
}
STATES = (False, False, True)


def collection(name, metas, *, paths=None, sources=None):
    """A checked Collection as bids.metadata would build it (SI units, degrees)."""
    paths = paths or [f"sub-01/anat/sub-01_vol-{i}_{name}.nii.gz" for i in range(len(metas))]
    keys = sorted({k for m in metas for k in m})
    params = {k: tuple(m[k] for m in metas) for k in keys}
    vols = tuple(Volume(p, {}, m) for p, m in zip(paths, metas, strict=True))
    return Collection(name, vols, params, dict(sources or {}))


def simulate_mts(flips, trs, t1, delta, *, b1=1.0, m0=M0):
    """(n, 3) exact signals for PDw, T1w, MTw."""
    return np.stack(
        [
            fw.spgr_mt(m0, t1, trs[i], flips[i], b1=b1, delta=delta if STATES[i] else 0.0)
            for i in range(3)
        ],
        axis=-1,
    )


# ----------------------------------------------------------------------------------- MTR
def test_mtr_exact_formula():
    rng = np.random.default_rng(20240611)
    data = rng.uniform(50, 1000, (4, 5, 6, 2))
    fit = MTRModel().fit(data)
    expected = 100 * (data[..., 0] - data[..., 1]) / data[..., 0]
    np.testing.assert_allclose(fit.params[..., 0], expected, rtol=1e-12)
    assert fit.rmse is None  # one map from two images: nothing to compare with


def test_mtr_volume_order_from_mtstate():
    model = MTRModel.from_collections(
        {"mtr": collection("MTR", [{"MTState": True}, {"MTState": False}])}
    )
    assert (model.i_off, model.i_on) == (1, 0)
    np.testing.assert_allclose(model.fit(np.array([60.0, 100.0])).params, [40.0])
    assert model.acquisition == {"MTState": [True, False]}


def test_mtr_edge_cases_and_mask():
    data = np.array([[0.0, 10.0], [-5.0, 1.0], [np.nan, 1.0], [100.0, 120.0], [100.0, -1.0]])
    fit = MTRModel().fit(data)
    out = fit.params[:, 0]
    assert np.isnan(out[:3]).all()
    np.testing.assert_allclose(out[3:], [-20.0, 101.0])
    maps, n_out = fit.maps(), fit.n_out_of_range()
    assert np.isnan(maps["MTR"][4])
    assert n_out["MTR"] == 1
    mask = np.array([True, True, True, False, True])
    assert np.isnan(MTRModel().fit(data, mask=mask).params[3, 0])
    assert MTRModel().fit(np.array([200.0, 150.0])).params.shape == (1,)
    np.testing.assert_allclose(mtr(200.0, 150.0), 25.0)


@pytest.mark.parametrize(
    "states", [(False, False), (True, True), (False, "maybe")], ids=["off-off", "on-on", "bad"]
)
def test_mtr_from_collections_rejects(states):
    coll = collection("MTR", [{"MTState": s} for s in states])
    with pytest.raises(MetadataError) as err:
        MTRModel.from_collections({"mtr": coll})
    assert err.value.key == "MTState"
    assert err.value.path == sidecar_path(coll.volumes[1].path)


# -------------------------------------------------------------------------------- MTsat
@pytest.mark.parametrize("b1", [0.85, 1.0, 1.15])
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("method", ["exact", "helms2008"])
def test_mtsat_recovers_truth_with_b1(protocol, b1, method):
    """'exact' inverts the steady state: recovery to 1e-6; 'helms2008' within its
    small-angle bias (tolerances above)."""
    flips, trs = PROTOCOLS[protocol]
    t1, delta = TISSUES.T
    data = simulate_mts(flips, trs, t1, delta, b1=b1)
    model = MTsatModel(flips, trs, STATES, fit_method=method)
    fit = model.fit(data, covariates={"b1": np.full(len(t1), b1)})
    mtsat, t1_fit, r1_fit, m0_fit, _ = fit.params.T
    exact = method == "exact"
    np.testing.assert_allclose(mtsat / 100, delta, rtol=1e-6 if exact else RTOL_MTSAT)
    np.testing.assert_allclose(t1_fit, t1, rtol=1e-6 if exact else RTOL_T1)
    np.testing.assert_allclose(r1_fit * t1_fit, 1.0, rtol=1e-12)
    np.testing.assert_allclose(m0_fit, M0, rtol=1e-6 if exact else RTOL_M0)
    if b1 == 1.0:  # no map given means B1 = 1
        np.testing.assert_allclose(model.fit(data).params, fit.params, rtol=1e-12)


def _buggy_mtsat(data, flips, trs, b1, variant):
    """MTsat with the flip-angle terms of the B1 correction dropped (test-only)."""
    a = np.deg2rad(flips)
    s_pd, s_t1, s_mt = data.T
    if variant == "alpha_mt_nominal":  # R1 and A corrected, MTsat terms with nominal α_MT
        r1, amp = r1_a_small_angle(s_pd, s_t1, b1 * a[0], b1 * a[1], trs[0], trs[1])
        return mtsat_small_angle(s_mt, amp, r1, a[2], trs[2])
    # all flips nominal, then only the empirical factor (qMRLab/SCT before 2023)
    r1, amp = r1_a_small_angle(s_pd, s_t1, a[0], a[1], trs[0], trs[1])
    return weiskopf2013_correction(mtsat_small_angle(s_mt, amp, r1, a[2], trs[2]), b1)


@pytest.mark.parametrize("variant", ["alpha_mt_nominal", "nominal_plus_empirical"])
@pytest.mark.parametrize("b1", [0.85, 1.15])
def test_buggy_b1_correction_is_wrong(b1, variant):
    flips, trs = PROTOCOLS["qmri_mtsat"]
    t1, delta = TISSUES.T
    data = simulate_mts(flips, trs, t1, delta, b1=b1)
    ours = MTsatModel(flips, trs, STATES).fit(data, covariates={"b1": np.full(len(t1), b1)})
    rel_ours = np.abs(ours.params[:, 0] / 100 / delta - 1)
    rel_bug = np.abs(_buggy_mtsat(data, flips, trs, b1, variant) / delta - 1)
    assert rel_ours.max() < RTOL_MTSAT
    # measured: 17-47 % (alpha_mt_nominal) and 13-30 % (nominal_plus_empirical)
    assert rel_bug.min() > 2 * RTOL_MTSAT


def test_mtsat_bias_is_first_order():
    """Scaling R1*TR, α^2 and δ down by 10 shrinks the relative bias ~10-fold (O(ε))."""
    flips, trs = np.array(PROTOCOLS["qmri_mtsat"][0]), np.array(PROTOCOLS["qmri_mtsat"][1])
    t1, delta = TISSUES[:3].T
    errors = []
    for k in (1.0, 10.0):
        fl, tr, d = flips / np.sqrt(k), trs / k, delta / k
        helms = {"fit_method": "helms2008"}
        p = MTsatModel(fl, tr, STATES, **helms).fit(simulate_mts(fl, tr, t1, d, b1=1.1)).params
        p_b1 = (
            MTsatModel(fl, tr, STATES, **helms)
            .fit(simulate_mts(fl, tr, t1, d, b1=1.1), covariates={"b1": np.full(3, 1.1)})
            .params
        )
        assert np.all(np.abs(p[:, 0] / 100 / d - 1) > 0.1)  # without B1 map: ~B1^-2 off
        errors.append(np.abs(np.r_[p_b1[:, 0] / 100 / d - 1, p_b1[:, 1] / t1 - 1]))
    assert np.all(errors[1] < errors[0] / 5)


def test_mtsat_noisy_bias():
    """Rician noise, SNR 100 in the PDw image, 2000 WM voxels.

    The noise-induced bias of a closed form is second order in the noise (delta method: at most
    about CV^2 of the estimate, CV ~ 5 % for MTsat here, i.e. ~0.25 %), so the mean over voxels
    must match the noiseless fit within 4 standard errors plus CV^2; the noiseless fit itself is
    within the approximation tolerance. Seed 7: |mean - noiseless| = 1.0, 2.3 and 2.6 standard
    errors for MTsat, T1 and M0.
    """
    rng = np.random.default_rng(7)
    flips, trs = PROTOCOLS["qmri_mtsat"]
    n, b1 = 2000, rng.uniform(0.85, 1.15, 2000)
    clean = simulate_mts(flips, trs, np.full(n, 0.85), np.full(n, 0.02), b1=b1)
    sigma = clean[:, 0].mean() / 100.0
    model = MTsatModel(flips, trs, STATES)
    ref = model.fit(clean, covariates={"b1": b1}).params
    noisy = model.fit(fw.rician(clean, sigma, rng), covariates={"b1": b1}).params
    for col in (0, 1, 3):
        diff = noisy[:, col] - ref[:, col]
        se = diff.std(ddof=1) / np.sqrt(n)
        cv2 = (diff.std(ddof=1) / ref[:, col].mean()) ** 2
        assert abs(diff.mean()) < 4 * se + cv2 * abs(ref[:, col].mean()), col
    assert abs(np.mean(noisy[:, 0]) / 2.0 - 1) < RTOL_MTSAT
    assert abs(np.mean(noisy[:, 1]) / 0.85 - 1) < RTOL_T1


def test_mtsat_edge_cases_give_nan():
    flips, trs = PROTOCOLS["qmri_mtsat"]
    good = simulate_mts(flips, trs, 1.0, 0.015)
    data = np.array(
        [
            good,
            [0.0, *good[1:]],
            [good[0], -1.0, good[2]],
            [good[0], good[1], np.nan],
            [good[0], good[0] * 20 / 6, good[2]],
            good,
        ]
    )
    b1 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    params = MTsatModel(flips, trs, STATES).fit(data, covariates={"b1": b1}).params
    assert np.isfinite(params[0]).all()
    assert np.isnan(params[1:, :4]).all()  # zero/negative/NaN signal, S/α equal, B1 = 0
    assert np.isnan(params[1, 4])
    assert np.isfinite(params[5, 4])
    one = MTsatModel(flips, trs, STATES).fit(good)
    assert one.params.shape == (5,)
    masked = MTsatModel(flips, trs, STATES).fit(data[:2], mask=np.array([False, True]))
    assert np.isnan(masked.params).all()


def test_mtsat_mtr_output_and_ranges():
    flips, trs = PROTOCOLS["qmri_mtsat"]
    data = simulate_mts(flips, trs, TISSUES[:, 0], TISSUES[:, 1])
    fit = MTsatModel(flips, trs, STATES).fit(data)
    np.testing.assert_allclose(fit.params[:, 4], mtr(data[:, 0], data[:, 2]), rtol=1e-12)
    maps = fit.maps()
    assert set(maps) == {"MTsat", "T1", "R1", "M0", "MTR"}
    assert all(np.isfinite(m).all() for m in maps.values())
    keys = ["MTsat", "desc-MTS_T1map", "desc-MTS_R1map", "desc-MTS_M0map", "desc-MTS_MTRmap"]
    assert [o.key for o in MTsatModel.outputs] == keys


def test_mtsat_mtr_nan_when_pdw_and_mtw_differ(caplog):
    with caplog.at_level(logging.WARNING):
        model = MTsatModel((5.0, 20.0, 7.0), (0.03,) * 3, STATES)
    assert "MTR is left NaN" in caplog.text
    data = simulate_mts((5.0, 20.0, 7.0), (0.03,) * 3, 1.0, 0.01)
    p = model.fit(data).params
    assert np.isnan(p[4])
    assert np.isfinite(p[:4]).all()
    np.testing.assert_allclose(p[0] / 100, 0.01, rtol=RTOL_MTSAT)


def test_weiskopf_option():
    """'weiskopf2013' returns δ at the nominal MT pulse for the saturation model it assumes."""
    flips, trs = PROTOCOLS["qmri_mtsat"]
    lam, b1 = 0.4, np.array([0.85, 1.0, 1.15])
    delta0 = 0.015
    delta_b1 = delta0 * b1**2 * (1 - lam * b1) / (1 - lam)  # δ implied by the empirical model
    data = simulate_mts(flips, trs, 1.0, delta_b1, b1=b1)
    default = MTsatModel(flips, trs, STATES).fit(data, covariates={"b1": b1}).params[:, 0]
    weis = MTsatModel(flips, trs, STATES, mt_b1_correction="weiskopf2013")
    out = weis.fit(data, covariates={"b1": b1}).params[:, 0]
    np.testing.assert_allclose(default / 100, delta_b1, rtol=RTOL_MTSAT)
    np.testing.assert_allclose(out / 100, delta0, rtol=RTOL_MTSAT)
    assert weis.options == {"mt_b1_correction": "weiskopf2013", "fit_method": "exact"}
    with pytest.raises(ValueError, match="valid"):
        MTsatModel(flips, trs, STATES, mt_b1_correction="hmri")


def _mts_collection(order=(0, 1, 2), sources=None):
    metas = [
        {"FlipAngle": 6.0, "MTState": False, "RepetitionTimeExcitation": 0.028},
        {"FlipAngle": 20.0, "MTState": False, "RepetitionTimeExcitation": 0.028},
        {"FlipAngle": 6.0, "MTState": True, "RepetitionTimeExcitation": 0.028},
    ]
    names = ["flip-1_mt-off", "flip-2_mt-off", "flip-1_mt-on"]
    return collection(
        "MTS",
        [metas[i] for i in order],
        paths=[f"sub-01/anat/sub-01_{names[i]}_MTS.nii.gz" for i in order],
        sources=sources,
    )


def test_mtsat_from_collections_any_order():
    flips, trs = PROTOCOLS["qmri_mtsat"]
    data = simulate_mts(flips, trs, TISSUES[:, 0], TISSUES[:, 1])
    ref = MTsatModel.from_collections({"mts": _mts_collection()}).fit(data).params
    order = (2, 1, 0)
    model = MTsatModel.from_collections(
        {"mts": _mts_collection(order, {"RepetitionTimeExcitation": "RepetitionTime"})}
    )
    assert model.roles == (2, 1, 0)
    np.testing.assert_allclose(model.fit(data[:, order]).params, ref, rtol=1e-12)
    acq = model.acquisition
    assert acq["VolumeRoles"] == ["MTw", "T1w", "PDw"]
    assert acq["RepetitionTime"] == [0.028] * 3
    assert acq["FlipAngle"] == [6.0, 20.0, 6.0]


@pytest.mark.parametrize(
    ("change", "key", "bad"),
    [
        ({1: {"MTState": True}}, "MTState", 2),  # two MT-on
        ({2: {"MTState": False}}, "MTState", 2),  # no MT-on
        ({1: {"FlipAngle": 6.0}}, "FlipAngle", 1),  # PDw and T1w flips equal
    ],
)
def test_mtsat_from_collections_rejects(change, key, bad):
    coll = _mts_collection()
    metas = [dict(v.metadata) for v in coll.volumes]
    for i, upd in change.items():
        metas[i].update(upd)
    bad_coll = collection("MTS", metas, paths=coll.paths)
    with pytest.raises(MetadataError) as err:
        MTsatModel.from_collections({"mts": bad_coll})
    assert err.value.key == key
    assert err.value.path == sidecar_path(coll.paths[bad])
    assert sidecar_path(coll.paths[bad]) in str(err.value)


def test_mtsat_with_real_qmri_mtsat_sidecars():
    """Protocol from bids-examples/qmri_mtsat (flips 6/6/20 deg, TR 28 ms)."""
    anat = BIDS_EXAMPLES / "qmri_mtsat" / "sub-01" / "anat"
    if not anat.is_dir():
        pytest.skip(f"bids-examples not found at {anat}")
    paths = sorted(anat.glob("*_MTS.json"))
    metas = [json.loads(p.read_text()) for p in paths]
    coll = collection("MTS", metas, paths=[str(p.with_suffix(".nii.gz")) for p in paths])
    model = MTsatModel.from_collections({"mts": coll})
    flips = [m["FlipAngle"] for m in metas]
    trs = [m["RepetitionTimeExcitation"] for m in metas]
    assert sorted(flips) == [6, 6, 20]
    assert set(trs) == {0.028}
    t1, delta = TISSUES.T
    b1 = np.array([0.9, 1.0, 1.1, 1.0])
    sims = [
        fw.spgr_mt(M0, t1, trs[i], flips[i], b1=b1, delta=delta * metas[i]["MTState"])
        for i in range(3)
    ]
    data = np.stack(sims, axis=-1)
    p = model.fit(data, covariates={"b1": b1}).params
    np.testing.assert_allclose(p[:, 0] / 100, delta, rtol=RTOL_MTSAT)
    np.testing.assert_allclose(p[:, 1], t1, rtol=RTOL_T1)


def test_stack_order_of_the_declared_input_gives_the_roles():
    """Volumes sorted by (MTState, FlipAngle), as the integrator stacks them, are PD, T1, MT."""
    spec = MTsatModel.inputs[0]
    assert spec.stack_along == ("MTState", "FlipAngle")
    metas = [dict(v.metadata) for v in _mts_collection((2, 1, 0)).volumes]
    ordered = sorted(metas, key=lambda m: tuple(m[k] for k in spec.stack_along))
    model = MTsatModel.from_collections({"mts": collection("MTS", ordered)})
    assert model.roles == (0, 1, 2)
    assert MTRModel.inputs[0].stack_along == ("MTState",)


@pytest.mark.parametrize(
    "model",
    [
        MTRModel(),
        MTsatModel((6.0, 20.0, 6.0), (0.028,) * 3, STATES, mt_b1_correction="weiskopf2013"),
    ],
    ids=["mtr", "mtsat"],
)
def test_models_pickle_and_run_in_workers(model):
    clone = pickle.loads(pickle.dumps(model))
    assert clone.options == model.options
    n_meas = 2 if model.name == "mtr" else 3
    flips, trs = PROTOCOLS["qmri_mtsat"]
    data = simulate_mts(flips, trs, np.full(40, 1.0), np.full(40, 0.01))[:, :n_meas]
    b1 = {"b1": np.full(40, 1.05)} if model.uses_b1 else {}
    serial = model.fit(data, covariates=b1).params
    parallel = model.fit(data, covariates=b1, nprocs=2, chunk_size=16).params
    np.testing.assert_array_equal(parallel, serial)
