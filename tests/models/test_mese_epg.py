"""Ground truth of ``mese_t2`` with ``fit_method = "epg"`` (stimulated-echo-compensated T2).

The test signals come from an extended-phase-graph simulator written here, independently of
:mod:`bids_app.models._epg`: the complex (F+, F-, Z) state formulation with the general
rotation matrix of Weigel (J Magn Reson Imaging 2015;41:266-295), a 90° excitation about y and
refocusing pulses about x (CPMG), relaxation and a unit dephasing shift on both halves of
every echo interval. The model's kernel is a real, CPMG-only formulation (Hennig 1988), so the
agreement test below is a check of both. Magnitude data get Rician noise at a stated SNR
(``M0 / sigma`` of each real and imaginary channel).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models._epg import epg_cpmg_decay
from bids_app.models.base import Collection, Volume, example_collection
from bids_app.models.relaxometry import MESET2Model
from bids_app.models.relaxometry._epg_protocol import cpmg_echo_spacing

ESP, N_ECHO = 0.01, 32
TE = ESP * np.arange(1, N_ECHO + 1)
M0 = 1000.0
#: M0 / sigma: the first echo of WM has SNR ~ 80, a typical 3 T 32-echo CPMG protocol
SNR = 100.0


def weigel_cpmg(t2, angle, esp=ESP, n_echoes=N_ECHO, t1=1.0):
    """Complex EPG echo train, vectorised over voxels: (n,) T2 s, angle deg -> (n, n_echoes)."""
    t2 = np.atleast_1d(np.asarray(t2, dtype=float))
    a = np.deg2rad(np.broadcast_to(np.asarray(angle, dtype=float), t2.shape))
    n, k = t2.size, 2 * n_echoes + 2
    fp, fm, z = (np.zeros((n, k), complex) for _ in range(3))

    def rotate(fp, fm, z, alpha, phi):
        c2, s2 = (np.cos(alpha / 2) ** 2)[:, None], (np.sin(alpha / 2) ** 2)[:, None]
        s = np.sin(alpha)[:, None]
        e = np.exp(1j * phi)
        return (
            c2 * fp + e**2 * s2 * fm - 1j * e * s * z,
            np.conj(e) ** 2 * s2 * fp + c2 * fm + 1j * np.conj(e) * s * z,
            -0.5j * np.conj(e) * s * fp + 0.5j * e * s * fm + np.cos(alpha)[:, None] * z,
        )

    def relax_shift(fp, fm, z):
        e2, e1 = np.exp(-esp / 2 / t2)[:, None], np.exp(-esp / 2 / t1)
        fp, fm, z = fp * e2, fm * e2, z * e1
        z[:, 0] += 1 - e1
        fp = np.concatenate((np.zeros((n, 1)), fp[:, :-1]), axis=1)
        fm = np.concatenate((fm[:, 1:], np.zeros((n, 1))), axis=1)
        fp[:, 0] = np.conj(fm[:, 0])
        return fp, fm, z

    z[:, 0] = 1.0
    fp, fm, z = rotate(fp, fm, z, np.full(n, np.pi / 2), np.pi / 2)
    out = np.empty((n, n_echoes), complex)
    for e in range(n_echoes):
        fp, fm, z = relax_shift(fp, fm, z)
        fp, fm, z = rotate(fp, fm, z, a, 0.0)
        fp, fm, z = relax_shift(fp, fm, z)
        out[:, e] = fp[:, 0]
    return out


def rician(signal, rng, snr=SNR):
    sigma = M0 / snr
    return np.abs(
        signal + rng.normal(0, sigma, signal.shape) + 1j * rng.normal(0, sigma, signal.shape)
    )


def epg_model(**options) -> MESET2Model:
    coll = {"mese": example_collection("mese", EchoTime=tuple(TE))}
    return MESET2Model.from_collections(coll, fit_method="epg", **options)


def wm(n, angle, rng):
    """White matter: T2 70-80 ms, the given refocusing angle(s); noiseless magnitudes."""
    t2 = rng.uniform(0.07, 0.08, n)
    return t2, M0 * np.abs(weigel_cpmg(t2, angle))


def rel_err(est, truth):
    return np.abs(est / truth - 1)


# ------------------------------------------------------------------------ the simulator


@pytest.mark.parametrize("angle", [60.0, 120.0, 150.0, 180.0, 200.0])
@pytest.mark.parametrize("t2", [0.01, 0.075, 0.5])
def test_independent_epg_agrees_with_the_kernel(t2, angle):
    w = weigel_cpmg([t2], angle)[0]
    assert np.abs(w.imag).max() < 1e-12  # CPMG: the echoes lie on one axis
    kernel = epg_cpmg_decay([t2], ESP, N_ECHO, angle)[0, :, 0]
    np.testing.assert_allclose(np.abs(w), np.abs(kernel), rtol=1e-9, atol=1e-14)


def test_simulator_has_stimulated_echoes_and_reduces_to_exponential():
    np.testing.assert_allclose(np.abs(weigel_cpmg([0.08], 180.0)[0]), np.exp(-TE / 0.08))
    s = np.abs(weigel_cpmg([0.08], 150.0)[0])
    assert s[0] < np.exp(-ESP / 0.08)
    assert s[1] > s[0] * 0.9


# ------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("angle", [130.0, 140.0, 150.0, 160.0, 170.0, 180.0])
def test_wm_t2_with_imperfect_refocusing(angle):
    """Median relative T2 error in WM < 3 % at SNR 100, the angle within a few degrees.

    Measured (seed 22): median T2 error 0.8-1.2 %, M0 0.6-1.1 %, the median angle within 0.3°
    of the truth and the median absolute angle error 1.7-3.4° (180°: the decay is flat in the
    angle there and the angle cannot exceed 180°, so the median sits 1-2° below).
    """
    rng = np.random.default_rng(22)
    t2, clean = wm(2000, angle, rng)
    fit = epg_model().fit(rician(clean, rng)).params
    assert np.median(rel_err(fit[:, 0], t2)) < 0.03
    assert abs(np.median(fit[:, 3]) - angle) < (1.0 if angle < 180 else 5.0)
    assert np.median(np.abs(fit[:, 3] - angle)) < 5.0
    assert np.median(rel_err(fit[:, 2], M0)) < 0.03


@pytest.mark.parametrize("angle", [130.0, 150.0, 160.0])
def test_epg_beats_the_mono_exponential_fit_below_180(angle):
    """Issue acceptance: on the same data every mono-exponential variant is clearly worse.

    Measured (seed 5, SNR 100), median T2 error EPG / log-linear / non-linear / log-linear
    without the first echo: 130° 1.2 / 13.1 / 12.8 / 8.3 %, 150° 1.0 / 5.6 / 4.7 / 3.8 %,
    160° 0.9 / 3.3 / 2.3 / 2.6 %.
    """
    rng = np.random.default_rng(5)
    t2, clean = wm(2000, angle, rng)
    data = rician(clean, rng)
    epg = np.median(rel_err(epg_model().fit(data).params[:, 0], t2))
    assert epg < 0.03
    for options in ({}, {"fit_method": "nonlinear"}, {"drop_first_echo": True}):
        mono = np.median(rel_err(MESET2Model(TE, **options).fit(data).params[:, 0], t2))
        assert mono > 2 * epg, (options, mono, epg)
    default = np.median(rel_err(MESET2Model(TE).fit(data).params[:, 0], t2))
    assert default > 0.03  # the mono-exponential default fails the < 3 % acceptance


def test_noiseless_recovery_over_the_grid():
    """Noiseless truth from the independent simulator: only the grid interpolation is left.

    The quadratic interpolation on a ~10 % T2 grid and 5° angle grid biases T2 by < 0.3 %.
    """
    rng = np.random.default_rng(3)
    t2, angle = rng.uniform(0.02, 1.0, 1000), rng.uniform(95, 170, 1000)
    m0 = rng.uniform(500, 2000, 1000)
    fit = epg_model().fit(m0[:, None] * np.abs(weigel_cpmg(t2, angle))).params
    assert rel_err(fit[:, 0], t2).max() < 3e-3
    assert rel_err(fit[:, 2], m0).max() < 3e-3
    assert np.abs(fit[:, 3] - angle).max() < 1.0


def test_drop_first_echo_and_t1_option():
    rng = np.random.default_rng(8)
    t2, clean = wm(500, 150.0, rng)
    model = epg_model(drop_first_echo=True)
    assert model.fit_notes["EchoesFitted"] == N_ECHO - 1
    fit = model.fit(clean).params
    assert rel_err(fit[:, 0], t2).max() < 3e-3
    # a wrong T1 is a (small, stated) model error: T1 = 1 s data fitted with T1 = 3 s
    other = epg_model(t1=3.0)
    assert other.fit_notes["EPGT1"] == 3.0
    biased = other.fit(clean).params[:, 0]
    assert 0 < np.median(rel_err(biased, t2)) < 0.05


# ------------------------------------------------------------------------ B1 mode


def test_angle_from_the_b1_map():
    """``refocusing_angle = 'b1'``: angle = B1 x nominal, only T2 and M0 are fitted."""
    rng = np.random.default_rng(11)
    n = 2000
    b1 = rng.uniform(0.7, 1.0, n)
    t2 = rng.uniform(0.07, 0.08, n)
    data = rician(M0 * np.abs(weigel_cpmg(t2, 180.0 * b1)), rng)
    model = epg_model(refocusing_angle="b1")
    fit = model.fit(data, covariates={"b1": b1}).params
    np.testing.assert_allclose(fit[:, 3], 180.0 * b1, rtol=1e-12)
    given = np.median(rel_err(fit[:, 0], t2))
    fitted = np.median(rel_err(epg_model().fit(data).params[:, 0], t2))
    assert given < 0.03
    assert given < fitted
    assert "B1 x nominal 180" in model.fit_notes["RefocusingAngleSource"]
    # invalid B1 (NaN, outside 0.3-2) falls back to fitting the angle there
    bad = b1.copy()
    bad[:10] = np.nan
    bad[10:20] = 5.0
    fit = model.fit(data, covariates={"b1": bad}).params
    assert np.all(np.isfinite(fit[:20]))
    assert np.median(rel_err(fit[:20, 0], t2[:20])) < 0.05
    # without a B1 map the angle is fitted, and the sidecar says so
    model.fit(data[:5])
    assert model.fit_notes["RefocusingAngleSource"].startswith("fitted")


def _collection(te, **params):
    n = len(te)
    cols = {"EchoTime": tuple(te), **{k: tuple(v) for k, v in params.items()}}
    vols = tuple(
        Volume(f"sub-01_echo-{i + 1}_MESE.nii.gz", {}, {k: v[i] for k, v in cols.items()})
        for i in range(n)
    )
    return {"mese": Collection("mese", vols, cols, {})}


@pytest.mark.parametrize(
    ("params", "nominal", "source"),
    [
        ({}, 180.0, "default"),
        ({"RefocusingFlipAngle": [160.0] * N_ECHO}, 160.0, "RefocusingFlipAngle"),
        ({"FlipAngle": [150.0] * N_ECHO}, 150.0, "FlipAngle"),
        ({"FlipAngle": [90.0] * N_ECHO}, 180.0, "default"),  # the excitation, not used
    ],
)
def test_nominal_refocusing_angle_from_the_sidecars(params, nominal, source):
    model = MESET2Model.from_collections(
        _collection(TE, **params), fit_method="epg", refocusing_angle="b1"
    )
    assert model.acquisition["NominalRefocusingAngle"] == nominal
    assert model.acquisition["NominalRefocusingAngleSource"] == source
    b1 = np.full(3, 0.9)
    t2 = np.full(3, 0.075)
    data = M0 * np.abs(weigel_cpmg(t2, 0.9 * nominal))
    fit = model.fit(data, covariates={"b1": b1}).params
    np.testing.assert_allclose(fit[:, 3], 0.9 * nominal)
    np.testing.assert_allclose(fit[:, 0], t2, rtol=3e-3)


def test_disagreeing_refocusing_angles_raise():
    angles = [160.0] * (N_ECHO - 1) + [150.0]
    with pytest.raises(MetadataError, match="RefocusingFlipAngle"):
        MESET2Model.from_collections(_collection(TE, RefocusingFlipAngle=angles), fit_method="epg")


# ------------------------------------------------------------------------ bad input


def test_nan_zero_and_negative_voxels_give_nan():
    rng = np.random.default_rng(4)
    _t2, clean = wm(6, 150.0, rng)
    data = rician(clean, rng)
    data[0, 3] = np.nan
    data[1, :] = 0.0
    data[2, 5] = -1.0
    data[3, 0] = np.inf
    fit = epg_model().fit(data)
    assert np.all(np.isnan(fit.params[:4]))
    assert np.all(np.isfinite(fit.params[4:]))
    assert np.all(np.isnan(fit.rmse[:4]))
    assert np.all(np.isfinite(fit.rmse[4:]))


@pytest.mark.parametrize(
    "te",
    [
        [0.01, 0.02, 0.04, 0.05, 0.06],  # a missing echo
        [0.015, 0.025, 0.035, 0.045],  # uniform steps but TE1 != spacing
        [0.01, 0.02, 0.03, 0.041],
    ],
)
def test_non_uniform_echo_spacing_is_an_error_naming_echotime(te):
    with pytest.raises(MetadataError, match="EchoTime") as err:
        MESET2Model.from_collections(_collection(te), fit_method="epg")
    assert err.value.key == "EchoTime"
    assert err.value.path.endswith("_MESE.nii.gz")
    with pytest.raises(ValueError, match="EchoTime"):
        MESET2Model(te, fit_method="epg")
    MESET2Model.from_collections(_collection(te))  # the mono-exponential fit takes them


def test_too_few_echoes_and_bad_grid():
    with pytest.raises(ValueError, match="4 fitted echoes"):
        MESET2Model(TE[:3], fit_method="epg")
    with pytest.raises(ValueError, match="4 fitted echoes"):
        MESET2Model(TE[:4], fit_method="epg", drop_first_echo=True)
    with pytest.raises(ValueError, match="t2_min"):
        MESET2Model(TE, fit_method="epg", t2_min=0.1, t2_max=0.1)


def test_echo_order_and_spacing_helper():
    assert cpmg_echo_spacing([0.03, 0.01, 0.02, 0.04]) == pytest.approx(0.01)
    rng = np.random.default_rng(9)
    t2, clean = wm(50, 150.0, rng)
    perm = rng.permutation(N_ECHO)
    model = MESET2Model(TE[perm], fit_method="epg")
    fit = model.fit(clean[:, perm])
    np.testing.assert_allclose(fit.params[:, 0], t2, rtol=3e-3)
    assert np.all(fit.rmse < 1e-2 * M0)  # the prediction follows the data order too


# ------------------------------------------------------------------------ declarations


def test_outputs_options_and_provenance():
    model = epg_model()
    assert [o.key for o in model.outputs] == [
        "T2map",
        "R2map",
        "desc-MESE_M0map",
        "desc-MESErefocusing_FAmap",
    ]
    assert model.outputs[-1].units == "degree"
    assert [o.key for o in MESET2Model(TE).outputs] == [o.key for o in MESET2Model.outputs]
    assert MESET2Model.uses_b1
    assert REGISTRY["mese_t2"] is MESET2Model
    assert model.acquisition["EchoSpacing"] == pytest.approx(ESP)
    assert model.fit_notes["RefocusingAngleSource"].startswith("fitted")
    params, signal, cov = model.simulate(200, np.random.default_rng(0))
    fit = model.fit(signal, covariates=cov)
    np.testing.assert_allclose(fit.params[:, :3], params[:, :3], rtol=3e-3)
    np.testing.assert_allclose(fit.params[:, 3], params[:, 3], atol=1.5)
    maps = fit.maps()
    assert set(maps) == {"T2", "R2", "M0", "Angle"}
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(clone.fit(signal).params, fit.params)
    with pytest.raises(ValueError, match="refocusing_angle='B1'"):
        MESET2Model(TE, fit_method="epg", refocusing_angle="B1")


def test_official_qmri_mese_example_builds_the_epg_model():
    root = Path(__file__).resolve().parents[2].parent / "shared" / "bids-examples" / "qmri_mese"
    if not root.is_dir():
        pytest.skip("../shared/bids-examples not present")
    from bids_app.bids.layout import make_layout
    from bids_app.bids.query import resolve_model

    (run,) = resolve_model(make_layout(root), MESET2Model, "01", None)
    model = run.model.from_collections(run.collections, fit_method="epg")
    assert model.acquisition["EchoSpacing"] == pytest.approx(0.01)
    assert len(model.acquisition["EchoTime"]) == 32
    assert model.acquisition["NominalRefocusingAngleSource"] == "default"
