"""Ground-truth tests of the relaxometry models (vfa_t1, megre_r2star, mese_t2).

Signals are simulated with the models' own forward equations (``predict``) for exactness
tests, and cross-checked against hand calculations, ``numpy.polyfit`` and
``scipy.optimize.least_squares`` so that a wrong shared equation cannot pass unnoticed.
"""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import least_squares

from bids_app.errors import MetadataError
from bids_app.models.base import REGISTRY, Collection, Volume
from bids_app.models.relaxometry import (
    MEGRER2starModel,
    MESET2Model,
    VFAT1Model,
    despot1_linear,
    despot1_nonlinear,
    monoexp_loglinear,
    monoexp_nonlinear,
    monoexp_signal,
    spgr_signal,
)

FLIPS = np.array([2.0, 5.0, 10.0, 15.0, 20.0])  # degrees
TR = 0.015  # s
TE_GRE = np.arange(1, 9) * 0.005  # 5..40 ms
TE_SE = np.arange(1, 11) * 0.010  # 10..100 ms
N_NOISY = 2000


@pytest.fixture
def rng():
    return np.random.default_rng(1847)


def rician(signal, sigma, rng):
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    noise = rng.normal(0, sigma, signal.shape) + 1j * rng.normal(0, sigma, signal.shape)
    return np.abs(signal + noise)


def vfa_truth(rng, n):
    t1 = rng.uniform(0.3, 4.0, n)
    return np.stack((t1, 1 / t1, rng.uniform(100, 5000, n)), axis=-1)


def monoexp_truth(model, rng, n):
    """Params in the model's output order: rate in 1/s, S0 in arbitrary units."""
    lo, hi = (5.0, 100.0) if isinstance(model, MEGRER2starModel) else (3.0, 30.0)
    rate, s0 = rng.uniform(lo, hi, n), rng.uniform(100, 5000, n)
    cols = {"rate": rate, "time": 1 / rate, "s0": s0}
    return np.stack([cols[c] for c in model._columns], axis=-1)


MONOEXP = [
    pytest.param(MEGRER2starModel, TE_GRE, id="megre"),
    pytest.param(MESET2Model, TE_SE, id="mese"),
]


def sse(signal, pred):
    return np.sum((signal - pred) ** 2, axis=-1)


# ------------------------------------------------------------------------------ VFA T1


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
@pytest.mark.parametrize("with_b1", [False, True])
def test_vfa_noiseless_exact(rng, method, with_b1):
    model = VFAT1Model(FLIPS, TR, fit_method=method)
    truth = vfa_truth(rng, 500)
    b1 = rng.uniform(0.7, 1.3, 500) if with_b1 else None
    fit = model.fit(model.predict(truth, b1=b1), covariates={"b1": b1} if with_b1 else None)
    assert_allclose(fit.params, truth, rtol=1e-6)


def test_vfa_noisy_rician(rng):
    model = VFAT1Model(FLIPS, TR)
    truth = vfa_truth(rng, N_NOISY)
    truth[:, 0] = rng.uniform(0.6, 2.0, N_NOISY)  # brain tissue and lesions
    truth[:, 1], truth[:, 2] = 1 / truth[:, 0], 1000.0
    clean = model.predict(truth)
    signal = rician(clean, clean.mean() / 100, rng)  # SNR 100 on the mean signal
    rel = {}
    for method in ("linear", "nonlinear"):
        params = VFAT1Model(FLIPS, TR, fit_method=method).fit(signal).params
        rel[method] = params[:, 0] / truth[:, 0] - 1
        # Per-voxel T1 spread at this SNR is about 2 % (measured 1.8-2.2 %), so the mean of
        # 2000 voxels has a standard error near 0.05 %; Rician bias is ~1/(2 SNR²) ≈ 0.005 %
        # and the linearisation's second-order bias is O(CV²) ≈ 0.05 %. Measured |mean| <
        # 0.1 %: 0.5 % is ~10 standard errors, yet catches any real bias.
        assert abs(rel[method].mean()) < 0.005
        assert abs(np.median(params[:, 2] / 1000 - 1)) < 0.005
        assert 0.01 < rel[method].std() < 0.03
    # the least-squares fit is the more precise of the two
    assert rel["nonlinear"].std() < rel["linear"].std()


def test_vfa_nonlinear_is_least_squares(rng):
    truth = vfa_truth(rng, 300)
    clean = spgr_signal(truth[:, 2], truth[:, 1], FLIPS, TR)
    signal = rician(clean, clean.mean() / 30, rng)
    r1l, m0l = despot1_linear(signal, FLIPS, TR)
    r1n, m0n = despot1_nonlinear(signal, FLIPS, TR)
    lin = sse(signal, spgr_signal(m0l, r1l, FLIPS, TR))
    nonlin = sse(signal, spgr_signal(m0n, r1n, FLIPS, TR))
    assert np.all(nonlin <= lin * (1 + 1e-12))
    # same minimum as scipy's MINPACK Levenberg-Marquardt, one voxel at a time
    for i in range(10):
        res = least_squares(
            lambda p, s=signal[i]: spgr_signal([p[0]], [p[1]], FLIPS, TR)[0] - s,
            x0=[m0l[i], r1l[i]],
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        assert_allclose([m0n[i], r1n[i]], res.x, rtol=1e-6)


def test_despot1_two_angles_by_hand():
    # T1 = 1.2 s, M0 = 800, flips 3° and 17°, TR 10 ms; DESPOT1 line through two points:
    # E1 = (y2 - y1) / (x2 - x1) with y = S/sin α, x = S/tan α.
    t1, m0, tr, a = 1.2, 800.0, 0.010, np.deg2rad([3.0, 17.0])
    e1 = np.exp(-tr / t1)
    s = m0 * np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a))
    y, x = s / np.sin(a), s / np.tan(a)
    e1_hand = (y[1] - y[0]) / (x[1] - x[0])
    m0_hand = (y[0] - e1_hand * x[0]) / (1 - e1_hand)
    assert_allclose(e1_hand, e1, rtol=1e-12)
    for method in ("linear", "nonlinear"):
        params = VFAT1Model([3.0, 17.0], tr, fit_method=method).fit(s).params
        assert_allclose(params, [-tr / np.log(e1_hand), -np.log(e1_hand) / tr, m0_hand], rtol=1e-9)
        assert_allclose(params, [t1, 1 / t1, m0], rtol=1e-9)


def _nominal_fit_reference(signal, flips, tr, method):
    """Independent fit with nominal angles: polyfit for DESPOT1, scipy for the SPGR fit."""
    a = np.deg2rad(flips)
    slope, icpt = np.polyfit(signal / np.tan(a), signal / np.sin(a), 1)
    r1, m0 = -np.log(slope) / tr, icpt / (1 - slope)
    if method == "nonlinear":
        res = least_squares(
            lambda p: spgr_signal([p[0]], [p[1]], flips, tr)[0] - signal,
            x0=[m0, r1],
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        m0, r1 = res.x
    return r1, m0


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
@pytest.mark.parametrize("flips", [[3.0, 15.0], FLIPS.tolist()], ids=["2fa", "5fa"])
def test_vfa_ignoring_b1_bias(method, flips):
    # Small-angle limit (α ≪ 1, TR·R1 ≪ 1): S ≈ M0 α TR R1 / (TR R1 + α²/2). With the actual
    # flip b·α this equals (b M0) α TR (R1/b²) / (TR (R1/b²) + α²/2), so a fit with the
    # nominal α returns R1_app = R1/b² and M0_app = b M0, i.e. T1_app = b² T1. For b = 0.85:
    # R1 is over-estimated by 1/0.85² = 1.384 and T1 under-estimated by 0.85² = 0.7225.
    b, flips = 0.85, np.asarray(flips)
    t1 = np.array([0.8, 1.5, 3.0])
    model = VFAT1Model(flips, TR, fit_method=method)
    signal = spgr_signal(np.full(3, 1000.0), 1 / t1, flips, TR, b1=np.full(3, b))
    params = model.fit(signal).params
    for i in range(3):
        r1_ref, m0_ref = _nominal_fit_reference(signal[i], flips, TR, method)
        assert_allclose(params[i, 1:], [r1_ref, m0_ref], rtol=1e-7)
    # The finite angles (up to 20°) and TR/T1 leave the ratio within 0.25 % of the
    # small-angle value (measured 1.3848-1.3873); 0.5 % tolerance.
    assert_allclose(params[:, 1] * t1, 1 / b**2, rtol=0.005)
    assert_allclose(params[:, 0] / t1, b**2, rtol=0.005)
    assert_allclose(params[:, 2] / 1000.0, b, rtol=0.005)
    # with the B1 map the same signal gives the truth back
    fixed = model.fit(signal, covariates={"b1": np.full(3, b)}).params
    assert_allclose(fixed[:, 0], t1, rtol=1e-6)


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
def test_vfa_bad_voxels_give_nan_quietly(method):
    good = spgr_signal([1000.0], [1.0], FLIPS, TR)[0]
    signal = np.stack([good, good * 0, -good, good, good, good, good, good])
    signal[3, 2] = 0.0
    signal[4, 1] = np.nan
    b1 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, np.nan, 0.0, -1.0])  # B1 must be positive too
    solver = despot1_linear if method == "linear" else despot1_nonlinear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r1, m0 = solver(signal, FLIPS, TR, b1=b1)
        params = VFAT1Model(FLIPS, TR, fit_method=method)._fit_voxels(signal, b1=b1)
    assert_allclose(r1[0], 1.0, rtol=1e-9)
    assert np.all(np.isnan(r1[1:]))
    assert np.all(np.isnan(m0[1:]))
    assert np.all(np.isnan(params[1:]))


def test_vfa_mask_and_single_voxel(rng):
    model = VFAT1Model(FLIPS, TR)
    truth = vfa_truth(rng, 24).reshape(2, 3, 4, 3)
    data = model.predict(truth.reshape(-1, 3)).reshape(2, 3, 4, -1)
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[1, :, 1:3] = True
    fit = model.fit(data, mask=mask, covariates={"b1": np.ones((2, 3, 4))})
    assert np.all(np.isnan(fit.params[~mask]))
    assert_allclose(fit.params[mask], truth[mask], rtol=1e-6)
    assert np.nanmax(fit.rmse) < 1e-9
    one = model.fit(data[0, 0, 0])
    assert one.params.shape == (3,)
    assert_allclose(one.params, truth[0, 0, 0], rtol=1e-6)


def _collection(name, key, values, extra=None, path="sub-01/anat/sub-01_{}-{}_X.nii.gz"):
    params = {key: tuple(values), **(extra or {})}
    vols = tuple(
        Volume(path.format(key, i + 1), {"suffix": name}, {key: v}) for i, v in enumerate(values)
    )
    return Collection(name, vols, params, {k: k for k in params})


def test_vfa_from_collections():
    coll = _collection("vfa", "FlipAngle", [3.0, 15.0], {"RepetitionTimeExcitation": (0.02,) * 2})
    model = VFAT1Model.from_collections({"vfa": coll}, fit_method="nonlinear")
    assert model.acquisition == {"FlipAngle": [3.0, 15.0], "RepetitionTimeExcitation": 0.02}
    assert model.options == {"fit_method": "nonlinear"}
    assert VFAT1Model.from_collections({"vfa": coll}).options == {"fit_method": "linear"}


def test_vfa_from_collections_needs_two_flips():
    coll = _collection("vfa", "FlipAngle", [5.0, 5.0], {"RepetitionTimeExcitation": (0.02,) * 2})
    with pytest.raises(MetadataError, match="FlipAngle") as err:
        VFAT1Model.from_collections({"vfa": coll})
    assert err.value.path == coll.volumes[0].path
    assert err.value.exit_code == 65


def test_vfa_from_collections_inconsistent_tr():
    coll = _collection("vfa", "FlipAngle", [3.0, 15.0], {"RepetitionTimeExcitation": (0.02, 0.03)})
    with pytest.raises(MetadataError, match="RepetitionTimeExcitation"):
        VFAT1Model.from_collections({"vfa": coll})


def test_vfa_bad_acquisition_rejected():
    with pytest.raises(ValueError, match="distinct FlipAngle"):
        VFAT1Model([10.0], TR)
    with pytest.raises(ValueError, match="repetition_time"):
        VFAT1Model(FLIPS, 0.0)


# ------------------------------------------------------------------------------ mono-exponential


@pytest.mark.parametrize(("cls", "te"), MONOEXP)
@pytest.mark.parametrize("method", ["loglinear", "nonlinear"])
def test_monoexp_noiseless_exact(rng, cls, te, method):
    model = cls(te, fit_method=method)
    truth = monoexp_truth(model, rng, 500)
    fit = model.fit(model.predict(truth))
    assert_allclose(fit.params, truth, rtol=1e-6)
    assert np.nanmax(fit.rmse / truth[:, 2]) < 1e-9


@pytest.mark.parametrize(("cls", "te"), MONOEXP)
@pytest.mark.parametrize("method", ["loglinear", "nonlinear"])
def test_monoexp_noisy_rician(rng, cls, te, method):
    model = cls(te, fit_method=method)
    rate_col = model._columns.index("rate")
    truth = monoexp_truth(model, rng, N_NOISY)
    lo, hi = (10.0, 50.0) if cls is MEGRER2starModel else (1 / 0.15, 1 / 0.05)
    rate = rng.uniform(lo, hi, N_NOISY)  # WM/GM/lesion R2* and T2 = 50-150 ms
    truth[:, rate_col], truth[:, 1 - rate_col], truth[:, 2] = rate, 1 / rate, 1000.0
    signal = rician(model.predict(truth), 1000.0 / 100, rng)  # SNR 100 at TE = 0
    params = model.fit(signal).params
    rel = params[:, rate_col] / rate - 1
    # Per-voxel rate spread is about 2 % (measured 1.8-2.4 %), so the mean of 2000 voxels
    # has a standard error near 0.05 %. The last echoes have SNR ≥ 13, where the Rician
    # noise floor biases a sample by σ²/(2S²) ≤ 0.3 %; S²-weighting makes those echoes count
    # little. Measured |mean| ≤ 0.25 %: 0.5 % leaves ~5 standard errors of margin.
    assert abs(rel.mean()) < 0.005
    assert abs(np.median(params[:, 2] / 1000 - 1)) < 0.005
    assert 0.01 < rel.std() < 0.03


@pytest.mark.parametrize("te", [TE_GRE, TE_SE], ids=["gre", "se"])
def test_monoexp_nonlinear_is_least_squares(rng, te):
    s0, rate = rng.uniform(500, 1500, 200), rng.uniform(5, 40, 200)
    signal = rician(monoexp_signal(s0, rate, te), 30.0, rng)
    rl, sl = monoexp_loglinear(signal, te)
    rn, sn = monoexp_nonlinear(signal, te)
    assert np.all(
        sse(signal, monoexp_signal(sn, rn, te))
        <= sse(signal, monoexp_signal(sl, rl, te)) * (1 + 1e-12)
    )
    for i in range(10):
        res = least_squares(
            lambda p, s=signal[i]: p[0] * np.exp(-p[1] * te) - s,
            x0=[sl[i], rl[i]],
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        assert_allclose([sn[i], rn[i]], res.x, rtol=1e-6)


@pytest.mark.parametrize("method", ["loglinear", "nonlinear"])
def test_t2_from_two_echo_log_ratio(method):
    # two echoes: T2 = (TE2 - TE1) / ln(S1 / S2), S0 = S1 exp(TE1 / T2), whatever the weights
    te, s = np.array([0.02, 0.08]), np.array([612.0, 233.0])
    t2 = (te[1] - te[0]) / np.log(s[0] / s[1])
    params = MESET2Model(te, fit_method=method).fit(s).params
    assert_allclose(params, [t2, 1 / t2, s[0] * np.exp(te[0] / t2)], rtol=1e-9)
    r2s = MEGRER2starModel(te, fit_method=method).fit(s).params
    assert_allclose(r2s, [1 / t2, t2, s[0] * np.exp(te[0] / t2)], rtol=1e-9)


@pytest.mark.parametrize("method", ["loglinear", "nonlinear"])
def test_mese_drop_first_echo(method):
    te = np.array([0.03, 0.01, 0.02, 0.04, 0.05])  # unsorted: "first" means the earliest TE
    clean = monoexp_signal([1000.0], [12.5], te)
    corrupt = clean.copy()
    corrupt[0, 1] *= 0.8  # the 10 ms echo lacks the stimulated-echo contribution
    keep = MESET2Model(te, fit_method=method)
    drop = MESET2Model(te, fit_method=method, drop_first_echo=True)
    assert drop.acquisition["EchoTimeFitted"] == [0.03, 0.02, 0.04, 0.05]
    assert keep.acquisition["EchoTimeFitted"] == te.tolist()
    assert_allclose(drop.fit(corrupt).params[0], [0.08, 12.5, 1000.0], rtol=1e-9)
    biased = keep.fit(corrupt).params[0]
    assert biased[0] > 0.085  # a low first echo flattens the decay: T2 over-estimated
    # a non-positive value in the dropped echo does not matter; in a fitted one it does
    corrupt[0, 1] = 0.0
    assert np.isfinite(drop.fit(corrupt).params).all()
    assert np.isnan(keep.fit(corrupt).params).all()


def test_mese_drop_first_echo_needs_three_echoes():
    with pytest.raises(ValueError, match="at least 3 distinct EchoTime"):
        MESET2Model([0.01, 0.02], drop_first_echo=True)
    coll = _collection("mese", "EchoTime", [0.01, 0.02])
    with pytest.raises(MetadataError, match="EchoTime"):
        MESET2Model.from_collections({"mese": coll}, drop_first_echo=True)
    assert MESET2Model.from_collections({"mese": coll}).echo_time.tolist() == [0.01, 0.02]


@pytest.mark.parametrize(("cls", "te"), MONOEXP)
@pytest.mark.parametrize("method", ["loglinear", "nonlinear"])
def test_monoexp_bad_voxels_give_nan_quietly(cls, te, method):
    good = monoexp_signal([1000.0], [20.0], te)[0]
    signal = np.stack([good, good * 0, -good, good])
    signal[3, -1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params = cls(te, fit_method=method)._fit_voxels(signal)
    assert np.all(np.isfinite(params[0]))
    assert np.all(np.isnan(params[1:]))


@pytest.mark.parametrize(("cls", "te"), MONOEXP)
def test_monoexp_from_collections_and_mask(rng, cls, te):
    name = cls.inputs[0].name
    model = cls.from_collections({name: _collection(name, "EchoTime", te)})
    assert_allclose(model.acquisition["EchoTime"], te)
    truth = monoexp_truth(model, rng, 12)
    data = model.predict(truth).reshape(3, 4, -1)
    mask = np.arange(12).reshape(3, 4) % 3 == 0
    fit = model.fit(data, mask=mask)
    assert np.all(np.isnan(fit.params[~mask]))
    assert_allclose(fit.params[mask], truth.reshape(3, 4, 3)[mask], rtol=1e-6)
    assert_allclose(model.fit(data[0, 0]).params, truth[0], rtol=1e-6)
    with pytest.raises(MetadataError, match="EchoTime"):
        cls.from_collections({name: _collection(name, "EchoTime", [0.01])})


# ------------------------------------------------------------------------------ shared


@pytest.mark.parametrize(
    ("cls", "args", "valid"),
    [
        (VFAT1Model, (FLIPS, TR), "['linear', 'nonlinear']"),
        (MEGRER2starModel, (TE_GRE,), "['loglinear', 'nonlinear']"),
        (MESET2Model, (TE_SE,), "['loglinear', 'nonlinear', 'epg']"),
    ],
)
def test_unknown_fit_method_lists_valid_names(cls, args, valid):
    with pytest.raises(ValueError, match=r"fit_method='lsq'.*valid: " + re.escape(valid)):
        cls(*args, fit_method="lsq")


def test_other_option_errors():
    with pytest.raises(ValueError, match="drop_first_echo"):
        MESET2Model(TE_SE, drop_first_echo="yes")
    with pytest.raises(ValueError, match="unknown option 'drop_first_echo'"):
        MEGRER2starModel(TE_GRE, drop_first_echo=True)
    # options are checked before the metadata
    coll = _collection("mese", "EchoTime", [0.01, 0.02])
    with pytest.raises(ValueError, match="drop_first_echo='yes'"):
        MESET2Model.from_collections({"mese": coll}, drop_first_echo="yes")


def test_registry_and_outputs():
    assert REGISTRY["vfa_t1"] is VFAT1Model
    assert REGISTRY["megre_r2star"] is MEGRER2starModel
    assert REGISTRY["mese_t2"] is MESET2Model
    keys = {
        c.name: [o.key for o in c.outputs] for c in (VFAT1Model, MEGRER2starModel, MESET2Model)
    }
    assert keys == {
        "vfa_t1": ["T1map", "R1map", "M0map"],
        "megre_r2star": ["R2starmap", "T2starmap", "S0map"],
        "mese_t2": ["T2map", "R2map", "desc-MESE_M0map"],
    }
    assert VFAT1Model.uses_b1
    assert MESET2Model.uses_b1  # the angle of fit_method='epg' may come from B1
    assert not MEGRER2starModel.uses_b1
    for cls in (VFAT1Model, MEGRER2starModel, MESET2Model):
        assert cls.description
        assert cls.reference
        assert all(o.units for o in cls.outputs)


@pytest.mark.parametrize(
    ("model", "n_meas"),
    [
        (VFAT1Model(FLIPS, TR, fit_method="nonlinear"), FLIPS.size),
        (MESET2Model(TE_SE, drop_first_echo=True), TE_SE.size),
    ],
    ids=["vfa", "mese"],
)
def test_models_pickle(rng, model, n_meas):
    clone = pickle.loads(pickle.dumps(model))
    signal = rng.uniform(100, 1000, (5, n_meas))
    assert clone.options == model.options
    assert_allclose(clone.fit(signal).params, model.fit(signal).params, equal_nan=True)
