"""DCE-MRI cores against the OSIPI TF6.2 DCE-DSC-MRI CodeCollection reference data.

Data: ``../shared/data/osipi-dce-dsc/test/{SI_to_Conc,DCEmodels}/data`` (OSIPI/
DCE-DSC-MRI_CodeCollection @ 40984f7, Apache-2.0):

* ``SI2Conc_data.csv``: 5 real DCE signal curves (Edinburgh UCON substudy), reference
  concentrations; OSIPI tolerance 1e-5 abs + 1e-5 rel.
* ``dce_DRO_data_tofts.csv``: QIBA DCE DRO v1.42 Tofts curves (25, SNR 20 to "high").
* ``dce_DRO_data_extended_tofts.csv``: anthropomorphic DRO (Bosca & Jackson, PMB 2016), 15.
* ``patlak_sd_0.02_delay_{0,5}.csv``, ``2cxm_sd_0.001_delay_{0,5}.csv``: simulated by
  M. Thrippleton (noise sd 0.02 / 0.001 mM, arterial delay 0 or 5 s).

OSIPI tolerances: ve atol 0.05; Ktrans/PS atol 0.005 /min + rtol 0.1; vp atol 0.025;
Fp atol 5 ml/100ml/min + rtol 0.1; delay atol 1 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy.integrate import solve_ivp

from bids_app.models.perfusion._aif import georgiou_aif, georgiou_table, parker_aif
from bids_app.models.perfusion._dce_2cxm import fit_two_cxm
from bids_app.models.perfusion._dce_fit import fit_patlak, fit_tofts
from bids_app.models.perfusion._dce_physics import (
    exp_conv,
    shift_aif,
    signal_to_concentration,
    tofts_conc,
    two_cxm_conc,
)

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "osipi-dce-dsc"
DATA = ROOT / "test"
needs_osipi = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"OSIPI DCE reference data not found at {DATA}"
)
TOL = {  # (atol, rtol), OSIPI DCEmodels_data.py
    "ve": (0.05, 0.0),
    "ktrans": (0.005, 0.1),
    "ps": (0.005, 0.1),
    "vp": (0.025, 0.0),
    "fp": (5.0, 0.1),
    "delay": (1.0, 0.0),
}


def _arr(cell: str) -> np.ndarray:
    return np.array(cell.split(), dtype=float)


def load(name: str, conc: str = "C", aif: str = "ca") -> tuple[pd.DataFrame, ...]:
    df = pd.read_csv(DATA / "DCEmodels" / "data" / name)
    t = _arr(df["t"].iloc[0])
    ct = np.stack([_arr(x) for x in df[conc]])
    cp = np.stack([_arr(x) for x in df[aif]])
    return df, t, ct, cp


def failures(fit: np.ndarray, ref: np.ndarray, key: str) -> np.ndarray:
    atol, rtol = TOL[key]
    return np.flatnonzero(np.abs(fit - ref) > atol + rtol * np.abs(ref))


@needs_osipi
def test_signal_to_concentration_osipi():
    df = pd.read_csv(DATA / "SI_to_Conc" / "data" / "SI2Conc_data.csv", encoding="utf-8-sig")
    for _, row in df.iterrows():
        conc = signal_to_concentration(
            _arr(row["s"])[None],
            row["FA"],
            row["TR"],
            np.array([row["T1base"]]),
            row["r1"],
            int(row["numbaselinepts"]),
            baseline_start=1,  # the reference averages samples 1..n-1 (first dynamic dropped)
        )[0]
        assert_allclose(conc, _arr(row["conc"]), atol=1e-5, rtol=1e-5, err_msg=row["label"])


def test_signal_to_concentration_round_trip_and_errors():
    rng = np.random.default_rng(0)
    t10 = rng.uniform(0.5, 2.0, 20)
    conc = np.abs(rng.normal(0.0, 1.0, (20, 30)))
    conc[:, :4] = 0.0
    fa, tr, r1 = np.deg2rad(15.0), 0.004, 4.5
    e = np.exp(-tr * (1.0 / t10[:, None] + r1 * conc))
    sig = 1000.0 * np.sin(fa) * (1 - e) / (1 - np.cos(fa) * e)
    assert_allclose(signal_to_concentration(sig, 15.0, tr, t10, r1, 4), conc, atol=1e-10)
    with pytest.raises(ValueError, match="baseline"):
        signal_to_concentration(sig, 15.0, tr, t10, r1, 0)
    with pytest.raises(ValueError, match="n_vox"):
        signal_to_concentration(sig[0], 15.0, tr, t10, r1, 4)


def test_exp_conv_exact_for_piecewise_linear_input():
    t = np.array([0.0, 1.0, 2.5, 3.0, 6.0, 7.0])  # non-uniform on purpose
    cp = np.array([0.0, 2.0, 1.0, 3.0, 0.5, 0.0])
    k = np.array([0.0, 1e-5, 0.3, 2.0])
    fine = np.linspace(0, 7, 140001)
    cf = np.interp(fine, t, cp)
    for i, ti in enumerate(t):
        m = fine <= ti
        ref = [np.trapezoid(cf[m] * np.exp(-kk * (ti - fine[m])), fine[m]) for kk in k]
        assert_allclose(exp_conv(t, cp, k)[:, i], ref, rtol=1e-6, atol=1e-9)


def test_two_cxm_forward_matches_ode():
    t = np.arange(0, 200.0, 0.5)
    cp = parker_aif(t, delay_s=10.0, hematocrit=0.42)
    vp, ve, fp, ps = 0.05, 0.3, 30.0, 0.2
    fps, pss = fp / 6000.0, ps / 60.0

    def rhs(tt, x):
        ca = np.interp(tt, t, cp)
        return [(fps * (ca - x[0]) - pss * (x[0] - x[1])) / vp, pss * (x[0] - x[1]) / ve]

    sol = solve_ivp(rhs, (0, t[-1]), [0, 0], t_eval=t, max_step=0.1, rtol=1e-9, atol=1e-12)
    ref = vp * sol.y[0] + ve * sol.y[1]
    assert_allclose(two_cxm_conc(t, cp, vp, ve, fp, ps)[0], ref, atol=2e-4 * ref.max())


@needs_osipi
@pytest.mark.parametrize("refine", [False, True])
def test_tofts_qiba_dro(refine):
    df, t, ct, cp = load("dce_DRO_data_tofts.csv")
    fit = fit_tofts(t, ct, cp, extended=False, refine=refine)
    assert failures(fit["ve"], df["ve"].to_numpy(), "ve").size == 0
    assert failures(fit["ktrans"], df["Ktrans"].to_numpy(), "ktrans").size == 0
    assert np.all(fit["converged"])


@needs_osipi
@pytest.mark.parametrize("refine", [False, True])
def test_extended_tofts_dro(refine):
    df, t, ct, cp = load("dce_DRO_data_extended_tofts.csv")
    fit = fit_tofts(t, ct, cp, extended=True, refine=refine)
    for key, col in (("ve", "ve"), ("vp", "vp"), ("ktrans", "Ktrans")):
        assert failures(fit[key], df[col].to_numpy(), key).size == 0, key


def test_extended_tofts_fit_delay_synthetic():
    """Delay fitting on a simulated 5 s delay (Parker AIF, noise sd 0.005 mM, 2 s sampling)."""
    rng = np.random.default_rng(3)
    t = np.arange(0, 300.0, 2.0)
    cp = parker_aif(t, delay_s=20.0, hematocrit=0.42)
    n = 60
    kt, ve, vp = rng.uniform(0.05, 0.5, n), rng.uniform(0.1, 0.5, n), rng.uniform(0.01, 0.1, n)
    ct = tofts_conc(t, cp, kt, ve, vp, delay_s=5.0) + rng.normal(0, 0.005, (n, t.size))
    fixed = fit_tofts(t, ct, cp, extended=True)
    fit = fit_tofts(t, ct, cp, extended=True, fit_delay=True)
    assert failures(fit["delay"], np.full(n, 5.0), "delay").size == 0
    for key, ref in (("ktrans", kt), ("ve", ve), ("vp", vp)):
        assert failures(fit[key], ref, key).size == 0, key
    assert np.median(fit["sse"]) < 0.5 * np.median(fixed["sse"])  # delay 0 is a misfit


def test_fit_chunking_and_shared_aif_give_same_result():
    rng = np.random.default_rng(1)
    t = np.arange(0, 240.0, 4.0)
    cp = georgiou_aif(t, delay_s=10.0, hematocrit=0.42)
    ct = tofts_conc(t, cp, rng.uniform(0.05, 0.4, 25), rng.uniform(0.1, 0.6, 25), 0.03)
    ct += rng.normal(0, 0.01, ct.shape)
    a = fit_tofts(t, ct, cp)
    b = fit_tofts(t, ct, np.tile(cp, (25, 1)), chunk_size=7)
    for key in ("ktrans", "ve", "vp", "sse"):
        assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-9)
    bad = ct.copy()
    bad[3, 5] = np.nan
    c = fit_tofts(t, bad, cp)
    assert np.isnan(c["ktrans"][3])
    assert not c["converged"][3]
    keep = np.arange(25) != 3
    assert_allclose(c["ktrans"][keep], a["ktrans"][keep], rtol=1e-6, atol=1e-9)
    assert np.isnan(fit_two_cxm(t, bad[:4], cp)["fp"][3])
    assert np.isnan(fit_patlak(t, bad[:4], cp)["vp"][3])
    with pytest.raises(ValueError, match="need t"):
        fit_tofts(t, ct[:, :-1], cp)
    with pytest.raises(ValueError, match="increasing"):
        fit_patlak(t[::-1], ct, cp)


@needs_osipi
@pytest.mark.parametrize(("delay", "fit_delay"), [(0, False), (0, True), (5, True)])
def test_patlak(delay, fit_delay):
    df, t, ct, cp = load(f"patlak_sd_0.02_delay_{delay}.csv", "C_t", "cp_aif")
    fit = fit_patlak(t, ct, cp, fit_delay=fit_delay)
    assert failures(fit["vp"], df["vp"].to_numpy(), "vp").size == 0
    assert failures(fit["ktrans"], df["ps"].to_numpy(), "ps").size == 0
    assert failures(fit["delay"], df["arterial_delay"].to_numpy(), "delay").size == 0


@needs_osipi
def test_patlak_without_delay_fit_fails_on_delayed_data():
    """Guard that the delayed set really needs the delay (the test above is not vacuous)."""
    df, t, ct, cp = load("patlak_sd_0.02_delay_5.csv", "C_t", "cp_aif")
    fit = fit_patlak(t, ct, cp)
    assert failures(fit["vp"], df["vp"].to_numpy(), "vp").size > 0


@needs_osipi
def test_two_cxm_without_delay_fit_misfits_delayed_data():
    """The delayed set needs the delay; every voxel still gets finite, bounded values."""
    df, t, ct, cp = load("2cxm_sd_0.001_delay_5.csv", "C_t", "cp_aif")
    fit = fit_two_cxm(t, ct, cp)
    assert all(np.all(np.isfinite(fit[k])) for k in ("vp", "ve", "fp", "ps", "sse"))
    assert failures(fit["fp"], df["fp"].to_numpy(), "fp").size > 0
    assert np.all(fit["delay"] == 0.0)


#: Curves outside the OSIPI PS tolerance when the delay is fitted too (5 free parameters).
#: All are flow-limited (Fp 5 ml/100ml/min = 0.05 /min << PS 0.15 /min), where PS is poorly
#: determined; the fit's SSE is below the SSE at the true parameters, so the miss is
#: noise-limited, not an optimiser failure (checked below).
TWO_CXM_EXPECTED_FAIL = {(0, True): {"case_14"}, (5, True): {"case_8_delayed"}}


@needs_osipi
@pytest.mark.parametrize(("delay", "fit_delay"), [(0, False), (0, True), (5, True)])
def test_two_cxm(delay, fit_delay):
    df, t, ct, cp = load(f"2cxm_sd_0.001_delay_{delay}.csv", "C_t", "cp_aif")
    fit = fit_two_cxm(t, ct, cp, fit_delay=fit_delay)
    labels = df["label"].to_numpy()
    bad = set()
    for key in ("vp", "ve", "fp", "ps", "delay"):
        col = "arterial_delay" if key == "delay" else key
        bad |= set(labels[failures(fit[key], df[col].to_numpy(), key)])
    assert bad == TWO_CXM_EXPECTED_FAIL.get((delay, fit_delay), set())
    for label in bad:
        i = int(np.flatnonzero(labels == label)[0])
        r = df.iloc[i]
        true = two_cxm_conc(t, cp[i], r.vp, r.ve, r.fp, r.ps, r.arterial_delay)[0]
        assert fit["sse"][i] <= np.sum((true - ct[i]) ** 2)


def test_shift_aif_per_voxel_matches_scalar():
    t = np.arange(0, 60.0, 1.5)
    cp = parker_aif(t, 5.0)
    d = np.array([0.0, 2.0, 4.7])
    rows = shift_aif(t, cp, d)
    for i, di in enumerate(d):
        assert_allclose(rows[i], shift_aif(t, cp, di), atol=1e-12)
    assert_allclose(shift_aif(t, np.tile(cp, (3, 1)), d), rows, atol=1e-12)


def test_parker_aif_published_shape():
    t = np.arange(0, 600.0, 0.1)
    cb = parker_aif(t)
    # First-pass peak near T1 = 0.17046 min; at 5 min only the washout term remains.
    assert abs(t[np.argmax(cb)] / 60.0 - 0.17046) < 0.01
    assert_allclose(parker_aif(np.array([300.0]))[0], 1.050 * np.exp(-0.1685 * 5.0), rtol=1e-6)
    assert_allclose(parker_aif(t, hematocrit=0.42), cb / 0.58)
    assert np.all(parker_aif(np.array([-5.0, 0.0]), delay_s=1.0) == 0.0)
    with pytest.raises(ValueError, match="hematocrit"):
        parker_aif(t, hematocrit=1.0)


def test_georgiou_table_is_the_osipi_one():
    tt, cc = georgiou_table()
    assert tt.size == 3001
    assert tt[-1] == pytest.approx(300.0)
    src = ROOT / "src" / "original" / "PvH_NKI_NL" / "AIF" / "PopulationAIF_GeorgiouMRM2018.txt"
    if src.is_file():
        ref = np.loadtxt(src)
        assert_allclose(tt, ref[:, 0] * 60.0)
        assert_allclose(cc, ref[:, 1])
    assert_allclose(georgiou_aif(np.array([7.5, 1000.0])), [cc[np.argmax(cc)], cc[-1]])
