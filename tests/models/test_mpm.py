"""Ground-truth tests of the ``mpm`` model (multi-parameter mapping, Weiskopf et al. 2013).

The forward simulation here shares no code with the fit: the ideally spoiled FLASH steady
state with Helms' MT saturation (exact sin/cos of the actual angle B1 x nominal, full
exponentials), mono-exponential T2* decay of every echo, Rician noise. The RF-spoiling
correction is checked against an isochromat (Bloch) simulation of the RF-spoiled train, a
method independent of the extended phase graph the correction uses.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from bids_app.bids.layout import make_layout
from bids_app.bids.query import resolve_model
from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models.base import Collection, Volume
from bids_app.models.relaxometry._estatics import estatics_design, estatics_fit
from bids_app.models.relaxometry.mpm import MPMModel

logger = logging.getLogger(__name__)

BIDS_EXAMPLES = Path("/work/shared/bids-examples")
if not BIDS_EXAMPLES.is_dir():
    BIDS_EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "bids-examples"
QMRI_MPM = BIDS_EXAMPLES / "qmri_mpm"

TR = 0.025
TE = 0.0023 * np.arange(1, 9)
#: (flip deg, n echoes, MT) of the hMRI protocol of qmri_mpm, in data order
PROTOCOL = (("pdw", 6.0, 8, False), ("t1w", 21.0, 8, False), ("mtw", 6.0, 6, True))
#: SNR of the first PDw echo in WM (Rician sigma = that signal / SNR). With 22 echoes the
#: measured median |relative error| in WM at this SNR is R1 0.7 %, R2* 1.8 %, PD 0.5 %,
#: MTsat 1.6 % (test_noisy_wm_meets_the_acceptance_bounds); at SNR 50 R2* reaches 3.6 %.
SNR = 100.0


def forward(t1, r2s, m0, mtsat_pu, b1, rx=1.0):
    """Independent forward model: (n, 22) magnitudes, PDw, T1w then MTw echoes."""
    cols = []
    for _, flip, n, mt in PROTOCOL:
        a = np.deg2rad(flip) * b1
        e1 = np.exp(-TR / t1)
        x = 1.0 - (mtsat_pu / 100.0 if mt else 0.0)
        a0 = rx * m0 * np.sin(a) * x * (1 - e1) / (1 - x * e1 * np.cos(a))
        cols.append(a0[:, None] * np.exp(-np.outer(r2s, TE[:n])))
    return np.concatenate(cols, axis=1)


def _model(**options) -> MPMModel:
    return MPMModel.from_collections(MPMModel.example_collections(), **options)


def _wm(n, rng):
    """WM-like tissue: T1 0.85 s, R2* 20 1/s, M0 690, MTsat 1.6 p.u. (+-5 %), B1 0.8-1.2."""
    t1 = rng.normal(0.85, 0.04, n)
    r2s = rng.normal(20.0, 1.0, n)
    m0 = rng.normal(690.0, 30.0, n)
    mts = rng.normal(1.6, 0.08, n)
    return t1, r2s, m0, mts, rng.uniform(0.8, 1.2, n)


def test_noisy_wm_meets_the_acceptance_bounds():
    """Issue 22: median relative error in WM < 3 % (R1, R2*) and < 5 % (PD, MTsat)."""
    rng = np.random.default_rng(22)
    t1, r2s, m0, mts, b1 = _wm(20000, rng)
    clean = forward(t1, r2s, m0, mts, b1)
    ref = forward(np.array([0.85]), np.array([20.0]), np.array([690.0]), np.array([1.6]), 1.0)
    sigma = ref[0, 0] / SNR
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    fit = _model().fit(noisy, covariates={"b1": b1})
    truth = np.stack((1 / t1, r2s, m0, mts), axis=-1)
    err = np.nanmedian(np.abs(fit.params / truth - 1), axis=0)
    logger.info("mpm WM SNR %g: R1 %.2f %%, R2* %.2f %%, PD %.2f %%, MTsat %.2f %%",
                SNR, *(100 * err))  # fmt: skip
    assert np.all(np.isfinite(fit.params))
    assert err[0] < 0.03
    assert err[1] < 0.03
    assert err[2] < 0.05
    assert err[3] < 0.05
    # the bounds must be able to fail: nominal flip angles (no B1) break R1 and PD
    nob1 = np.nanmedian(np.abs(_model().fit(noisy).params / truth - 1), axis=0)
    assert nob1[0] > 0.05
    assert nob1[2] > 0.05


def test_noiseless_recovery_exact_and_weighted():
    rng = np.random.default_rng(1)
    t1, r2s, m0, mts, b1 = _wm(500, rng)
    signal = forward(t1, r2s, m0, mts, b1)
    truth = np.stack((1 / t1, r2s, m0, mts), axis=-1)
    for weighting in ("none", "signal"):
        fit = _model(r2star_weighting=weighting).fit(signal, covariates={"b1": b1})
        np.testing.assert_allclose(fit.params, truth, rtol=1e-8)


def test_estatics_shares_one_r2star_and_needs_two_echo_times():
    design = estatics_design([[0.002, 0.004, 0.006], [0.003], [0.002, 0.005]])
    s = np.exp(np.array([[5.0, 4.0, 3.0, 25.0]]) @ design.T)
    inter, r2s = estatics_fit(s, design)
    np.testing.assert_allclose(r2s, [25.0])
    np.testing.assert_allclose(inter, np.exp([[5.0, 4.0, 3.0]]))
    with pytest.raises(ValueError, match="two distinct echo times"):
        estatics_design([[0.002], [0.002]])
    bad = np.array([[1.0, -1.0, 1.0, 1.0, 1.0, 1.0]])
    assert np.all(np.isnan(estatics_fit(bad, design)[1]))


def test_receive_field_divides_pd_only():
    rng = np.random.default_rng(3)
    t1, r2s, m0, mts, b1 = _wm(200, rng)
    rx = rng.uniform(0.7, 1.3, 200)
    signal = forward(t1, r2s, m0, mts, b1, rx=rx)
    model = _model()
    with_rx = model.fit(signal, covariates={"b1": b1, "rx": rx}).params
    without = model.fit(signal, covariates={"b1": b1}).params
    np.testing.assert_allclose(with_rx[:, 2], m0, rtol=1e-8)
    np.testing.assert_allclose(without[:, 2], m0 * rx, rtol=1e-8)
    np.testing.assert_allclose(with_rx[:, [0, 1, 3]], without[:, [0, 1, 3]], rtol=1e-12)


def test_weiskopf_option_only_changes_mtsat():
    rng = np.random.default_rng(4)
    t1, r2s, m0, mts, b1 = _wm(100, rng)
    signal = forward(t1, r2s, m0, mts, b1)
    off = _model().fit(signal, covariates={"b1": b1}).params
    on = _model(mt_b1_correction="weiskopf2013").fit(signal, covariates={"b1": b1}).params
    np.testing.assert_allclose(on[:, :3], off[:, :3])
    np.testing.assert_allclose(on[:, 3], off[:, 3] / b1**2 * 0.6 / (1 - 0.4 * b1), rtol=1e-10)


def test_without_mtw_mtsat_is_nan():
    ex = dict(MPMModel.example_collections())
    del ex["mtw"]
    model = MPMModel.from_collections(ex)
    rng = np.random.default_rng(5)
    t1, r2s, m0, mts, b1 = _wm(50, rng)
    signal = forward(t1, r2s, m0, mts, b1)[:, :16]
    params = model.fit(signal, covariates={"b1": b1}).params
    np.testing.assert_allclose(params[:, 0], 1 / t1, rtol=1e-8)
    assert np.all(np.isnan(params[:, 3]))


# ----------------------------------------------------------------------- RF spoiling


def bloch_spoiled_flash(t1, t2, flip_deg, b1, tr, increment_deg, n_iso=360, n_pulses=600):
    """Isochromat simulation of RF-spoiled FLASH: steady-state |mean transverse M| (M0 = 1).

    ``n_iso`` spins dephased uniformly over 2 pi by the spoiler of each TR; RF about an axis
    at phase phi_n = increment n (n + 1) / 2; relaxation over TR. Vectorised over cases.
    """
    t1, b1 = np.atleast_1d(t1)[:, None], np.atleast_1d(b1)[:, None]
    theta = 2 * np.pi * np.arange(n_iso) / n_iso
    mx = np.zeros((t1.shape[0], n_iso))
    my = np.zeros_like(mx)
    mz = np.ones_like(mx)
    a = np.deg2rad(flip_deg) * b1
    e1, e2 = np.exp(-tr / t1), np.exp(-tr / t2)
    inc = np.deg2rad(increment_deg)
    for n in range(n_pulses):
        phi = inc * n * (n + 1) / 2
        c, s = np.cos(phi), np.sin(phi)
        # rotate into the RF frame, rotate about x by a, rotate back
        u, v = c * mx + s * my, -s * mx + c * my
        v, w = v * np.cos(a) + mz * np.sin(a), -v * np.sin(a) + mz * np.cos(a)
        mx, my, mz = c * u - s * v, s * u + c * v, w
        sig = np.abs(np.mean(mx + 1j * my, axis=1))
        mx, my, mz = mx * e2, my * e2, 1 + (mz - 1) * e1
        cs, sn = np.cos(theta), np.sin(theta)
        mx, my = cs * mx - sn * my, sn * mx + cs * my
    return sig


def test_bloch_reference_is_ernst_without_coherences():
    t1 = np.array([0.8, 1.5])
    s = bloch_spoiled_flash(t1, 1e-6, 21.0, np.ones(2), TR, 50.0, n_pulses=400)
    a, e1 = np.deg2rad(21.0), np.exp(-TR / t1)
    np.testing.assert_allclose(s, np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a)), rtol=1e-3)


def test_rf_spoiling_correction_against_a_bloch_simulation():
    """Preibisch & Deichmann 2009: the protocol's R1 bias is computed and removed."""
    t1 = np.array([0.85, 0.85, 0.85, 1.35, 1.35, 2.0])
    b1 = np.array([0.8, 1.0, 1.2, 0.9, 1.1, 1.0])
    t2 = 0.064
    pd = bloch_spoiled_flash(t1, t2, 6.0, b1, TR, 50.0)
    t1w = bloch_spoiled_flash(t1, t2, 21.0, b1, TR, 50.0)
    mt = pd * 0.98  # MTw is not corrected; any plausible value
    cols = [pd[:, None] * np.exp(-20 * TE), t1w[:, None] * np.exp(-20 * TE),
            mt[:, None] * np.exp(-20 * TE[:6])]  # fmt: skip
    signal = np.concatenate(cols, axis=1)
    ex = MPMModel.example_collections()
    inc = {"SpoilingRFPhaseIncrement": (50.0,) * 8}
    colls = {k: Collection(c.name, c.volumes, {**c.params, **inc}) for k, c in ex.items()}
    corrected = MPMModel.from_collections(colls, spoiling_t2=t2)
    assert corrected.fit_notes["RFSpoilingCorrection"]["Applied"] is True
    plain = MPMModel.from_collections(ex)
    assert plain.fit_notes["RFSpoilingCorrection"]["Applied"] is False
    r1_c = corrected.fit(signal, covariates={"b1": b1}).params[:, 0]
    r1_p = plain.fit(signal, covariates={"b1": b1}).params[:, 0]
    err_c, err_p = np.abs(r1_c * t1 - 1), np.abs(r1_p * t1 - 1)
    logger.info("RF spoiling 50 deg: |R1 error| %s %% uncorrected, %s %% corrected",
                np.round(100 * err_p, 2), np.round(100 * err_c, 3))  # fmt: skip
    assert err_p.max() > 0.015  # the bias exists for this protocol
    assert err_c.max() < 0.005  # and is removed to within the table's interpolation
    off = MPMModel.from_collections(colls, rf_spoiling_correction="none")
    assert off.fit_notes["RFSpoilingCorrection"]["Applied"] is False


# ----------------------------------------------------------------------- metadata


@pytest.mark.skipif(not QMRI_MPM.is_dir(), reason="bids-examples not available")
def test_qmri_mpm_sidecars_parse_into_si_values():
    (run,) = resolve_model(make_layout(QMRI_MPM), REGISTRY["mpm"], "01", None)
    assert set(run.collections) == {"pdw", "t1w", "mtw"}
    model = run.model.from_collections(run.collections)
    acq = model.acquisition
    assert acq["Contrasts"] == ["PDw", "T1w", "MTw"]
    np.testing.assert_allclose(acq["EchoTime"]["PDw"], 0.0023 * np.arange(1, 9), rtol=1e-9)
    np.testing.assert_allclose(acq["EchoTime"]["MTw"], 0.0023 * np.arange(1, 7), rtol=1e-9)
    assert acq["FlipAngle"] == {"PDw": 6.0, "T1w": 21.0, "MTw": 6.0}
    assert acq["RepetitionTimeExcitation"] == {"PDw": 0.025, "T1w": 0.025, "MTw": 0.025}
    assert acq["SpoilingRFPhaseIncrement"] is None
    assert model.fit_notes["RFSpoilingCorrection"]["Applied"] is False
    assert Path(run.collections["mtw"].paths[0]).name.startswith("sub-01_acq-MTw_echo-1_")


@pytest.mark.skipif(not QMRI_MPM.is_dir(), reason="bids-examples not available")
@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("sub-01_acq-T1w_echo-3_flip-2_mt-off_MPM.json", "EchoTime", 6.9),
        ("sub-01_acq-PDw_echo-2_flip-1_mt-off_MPM.json", "RepetitionTimeExcitation", 25),
    ],
)
def test_unit_slip_in_ms_is_a_metadata_error(tmp_path, name, key, value):
    root = tmp_path / "qmri_mpm"
    shutil.copytree(QMRI_MPM, root, ignore=shutil.ignore_patterns("derivatives"))
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    side = root / "sub-01" / "anat" / name
    meta = json.loads(side.read_text())
    meta[key] = value
    side.write_text(json.dumps(meta))
    with pytest.raises(MetadataError) as err:
        resolve_model(make_layout(root), REGISTRY["mpm"], "01", None)
    msg = str(err.value)
    assert name in msg
    assert key in msg
    assert "milliseconds" in msg


def _coll(name, metas):
    vols = tuple(Volume(f"sub-01/anat/sub-01_{name}_echo-{i}_MPM.nii.gz", {}, m)
                 for i, m in enumerate(metas))  # fmt: skip
    keys = sorted({k for m in metas for k in m})
    return Collection(name, vols, {k: tuple(m.get(k) for m in metas) for k in keys}, {})


def _metas(flip, mt, n=3, **extra):
    return [{"EchoTime": 0.0023 * (k + 1), "FlipAngle": flip, "RepetitionTimeExcitation": TR,
             "MTState": mt, **extra} for k in range(n)]  # fmt: skip


def test_metadata_errors_name_file_and_key():
    good = {"pdw": _coll("pdw", _metas(6, False)), "t1w": _coll("t1w", _metas(21, False))}
    MPMModel.from_collections(good)
    wrong_state = dict(good, mtw=_coll("mtw", _metas(6, False)))
    with pytest.raises(MetadataError, match=r"sub-01_mtw_echo-0_MPM\.json.*MTState"):
        MPMModel.from_collections(wrong_state)
    swapped = {"pdw": _coll("pdw", _metas(21, False)), "t1w": _coll("t1w", _metas(6, False))}
    with pytest.raises(MetadataError, match=r"t1w.*FlipAngle"):
        MPMModel.from_collections(swapped)
    mixed = _metas(6, False)
    mixed[1]["FlipAngle"] = 8
    with pytest.raises(MetadataError, match=r"echo-1.*FlipAngle"):
        MPMModel.from_collections(dict(good, pdw=_coll("pdw", mixed)))
    half = dict(good, pdw=_coll("pdw", _metas(6, False, SpoilingRFPhaseIncrement=50.0)))
    with pytest.raises(MetadataError, match="SpoilingRFPhaseIncrement"):
        MPMModel.from_collections(half)
    both = {k: _coll(k, _metas(f, False, SpoilingRFPhaseIncrement=117.0))
            for k, f in (("pdw", 6), ("t1w", 21))}  # fmt: skip
    model = MPMModel.from_collections(both)
    rec = model.fit_notes["RFSpoilingCorrection"]
    assert rec["Applied"]
    assert rec["SpoilingRFPhaseIncrement"] == 117.0


@pytest.mark.skipif(not QMRI_MPM.is_dir(), reason="bids-examples not available")
def test_qmri_mpm_rb1cor_pair_is_found_for_the_pdw_contrast():
    from bids_app.stages.products import intended_for

    (run,) = resolve_model(make_layout(QMRI_MPM), REGISTRY["rb1cor"], "01", None)
    head, body = (Path(run.collections[k].paths[0]).name for k in ("head", "body"))
    assert head == "sub-01_acq-headPDw_RB1COR.nii"
    assert body == "sub-01_acq-bodyPDw_RB1COR.nii"
    assert "sub-01_acq-PDw_echo-1_flip-1_mt-off_MPM.nii" in intended_for(run)
    assert REGISTRY["mpm"].requires[1].model == "rb1cor"
