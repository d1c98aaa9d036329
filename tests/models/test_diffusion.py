"""Diffusion models (dti, dki, fwdti, noddi) and the DWI preprocessing, against truth.

* ``dti`` and ``dki`` are wrappers: on the real patches of ``../shared/data/dipy-small-dwi``
  they must equal dipy's own fit with the same options to float32 precision.
* Synthetic truth at SNR 50 (Rician, sigma = median S0 / 50), b = 0/1000/2000 s/mm², 30
  directions per shell (:mod:`bids_app.synth.dwi`): acceptance FA < 0.03 and MD < 3 %
  (median absolute error in WM), ICVF and ODI < 0.05.
* Motion correction of a known 2 degree rotation, b-vectors rotated with it.
* Gradient-table checks name the file at fault.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.bids.companions import check_gradients, read_bval, read_bvec
from bids_app.errors import MetadataError
from bids_app.models.base import REGISTRY
from bids_app.models.diffusion import preproc
from bids_app.models.diffusion._inputs import B0_THRESHOLD, example_dwi
from bids_app.models.diffusion.noddi import NODDI
from bids_app.synth import dwi as sd

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dipy-small-dwi"
NO_PREPROC = {"denoise": "none", "gibbs": False, "motion": "none", "brain_mask": "given"}


def _load(name):
    if not (DATA / f"{name}.bval").is_file():
        pytest.skip(f"reference data absent: {DATA} (see ../shared/data/README.md)")
    img = next(p for p in (DATA / f"{name}.nii.gz", DATA / f"{name}.nii") if p.is_file())
    data = np.asarray(nib.load(img).dataobj, dtype=np.float64)
    bvals = np.loadtxt(DATA / f"{name}.bval")
    bvecs = np.loadtxt(DATA / f"{name}.bvec")
    bvecs = bvecs if bvecs.shape == (bvals.size, 3) else bvecs.T  # small_64D: one row each
    return data, bvals, np.nan_to_num(bvecs)  # small_64D: NaN b-vector of its b=0


def _dipy_gtab(bvals, bvecs):
    from dipy.core.gradients import gradient_table

    bvecs = np.where(bvals[:, None] > B0_THRESHOLD, bvecs, 0.0)
    return gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD, atol=0.05)


def _fit(name, data, bvals, bvecs, mask, **options):
    model = REGISTRY[name](bvals, bvecs, **{**NO_PREPROC, **options})
    return model.fit(data, mask=mask).maps()


# ------------------------------------------------------------ wrappers equal dipy's fit


@pytest.mark.parametrize("method", ["WLS", "NLLS"])
def test_dti_equals_dipy_on_real_patch(method):
    from dipy.reconst.dti import TensorModel

    data, bvals, bvecs = _load("small_64D")
    mask = data[..., 0] > 0
    maps = _fit("dti", data, bvals, bvecs, mask, fit_method=method)
    ref = TensorModel(_dipy_gtab(bvals, bvecs), fit_method=method, return_S0_hat=True).fit(
        data, mask=mask
    )
    for key, want in [("FA", ref.fa), ("MD", ref.md), ("AD", ref.ad), ("RD", ref.rd)]:
        got = maps[key][mask]
        assert np.isfinite(got).mean() > 0.95, key
        ok = np.isfinite(got)
        np.testing.assert_allclose(got[ok], want[mask][ok].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(maps["S0"][mask], ref.S0_hat[mask].astype(np.float32), rtol=1e-6)


def test_dki_equals_dipy_on_real_multib_patch():
    from dipy.reconst.dki import DiffusionKurtosisModel

    data, bvals, bvecs = _load("small_101D")
    keep = bvals <= 3000  # DKI's validity range, as the data README suggests
    data, bvals, bvecs = data[..., keep], bvals[keep], bvecs[keep]
    mask = data[..., 0] > 0
    maps = _fit("dki", data, bvals, bvecs, mask)
    ref = DiffusionKurtosisModel(_dipy_gtab(bvals, bvecs)).fit(data, mask=mask)
    for key, want in [("MK", ref.mk()), ("AK", ref.ak()), ("RK", ref.rk()), ("KFA", ref.kfa)]:
        got, want = maps[key][mask], want[mask].astype(np.float32)
        ok = np.isfinite(got)
        assert ok.mean() > 0.9, key
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------- synthetic truth

SNR = 50.0


@pytest.fixture(scope="module")
def protocol():
    return sd.multishell_protocol((1000, 2000), 30, 6, np.random.default_rng(1))


def test_dti_synthetic_truth_snr50(protocol):
    bvals, bvecs = protocol
    ph = sd.phantom((20, 20, 8), np.random.default_rng(2))
    # the DTI truth of a voxel is its mean tensor D = sum f_i D_i (one Gaussian compartment)
    mean_t = np.einsum("vc,vcij->vij", ph["fractions"], ph["tensors"])[:, None]
    data, _ = sd.simulate_dwi(
        ph["mask"], ph["s0"], np.ones((mean_t.shape[0], 1)), mean_t, bvals, bvecs,
        snr=SNR, rng=np.random.default_rng(3),
    )  # fmt: skip
    maps = _fit("dti", data, bvals, bvecs, ph["mask"])
    truth = sd.tensor_metrics(np.linalg.eigvalsh(mean_t[:, 0]))
    wm = ph["labels"][ph["mask"]] == 3
    fa_err = np.median(np.abs(maps["FA"][ph["mask"]][wm] - truth["FA"][wm]))
    md_rel = np.median(np.abs(maps["MD"][ph["mask"]][wm] / truth["MD"][wm] - 1))
    logging.getLogger(__name__).info("DTI SNR50: FA err %.4f, MD rel err %.4f", fa_err, md_rel)
    assert fa_err < 0.03, fa_err  # acceptance of issue 19
    assert md_rel < 0.03, md_rel


def test_noddi_model_path_snr50(protocol):
    from bids_app.models.diffusion._noddi_forward import noddi_signal

    bvals, bvecs = protocol
    rng = np.random.default_rng(4)
    n = 400
    mu = rng.standard_normal((n, 3))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    icvf, odi, iso = rng.uniform(0.4, 0.8, n), rng.uniform(0.05, 0.4, n), rng.uniform(0, 0.2, n)
    sig = noddi_signal(bvals, np.where(bvals[:, None] > 0, bvecs, 0), mu, icvf, odi, iso, 1000.0)
    noisy = sd.add_rician(sig, 1000.0 / SNR, rng)
    model = NODDI(bvals, bvecs, **NO_PREPROC)
    maps = model.fit(noisy).maps()
    err_icvf = np.median(np.abs(maps["ICVF"] - icvf))
    err_odi = np.median(np.abs(maps["ODI"] - odi))
    assert err_icvf < 0.05, err_icvf  # acceptance of issue 19
    assert err_odi < 0.05, err_odi
    assert np.median(np.abs(maps["ISOVF"] - iso)) < 0.05


def test_fwdti_and_dki_need_two_shells():
    bvals = np.r_[0, np.full(12, 1000.0)]
    bvecs = np.r_[[[0, 0, 0]], sd._directions(12, np.random.default_rng(0))]
    for name in ("dki", "fwdti"):
        with pytest.raises(MetadataError, match="2 distinct non-zero b-value shells"):
            REGISTRY[name](bvals, bvecs, source="sub-01_dwi.bval")


# ------------------------------------------------------------------ preprocessing


def test_motion_correction_recovers_rotation_and_rotates_bvecs():
    rng = np.random.default_rng(0)
    shape = (32, 32, 20)
    ph = sd.phantom(shape, rng, texture=0.4, texture_scale=1.0)
    bvals, bvecs = sd.multishell_protocol((1000,), 8, 2, rng)
    moved = int(np.flatnonzero(bvals > 0)[3])
    rot = sd.rotation_matrix(2.0, (1, 1, 1))
    data, _ = sd.simulate_dwi(
        ph["mask"], ph["s0"], ph["fractions"], ph["tensors"], bvals, bvecs,
        snr=SNR, rng=rng, rotations={moved: rot},
    )  # fmt: skip
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS: FSL b-vectors are in voxel axes
    affine[:3, 3] = (30, -40, -10)
    _, new_vecs, xfms = preproc.motion_correct(data, bvals, bvecs, affine)
    q = preproc.bvec_rotation(xfms[moved], affine)
    # the corrected b-vector is the gradient in the head frame, R' g
    residual = preproc.rotation_angle(q @ rot)
    assert residual < 0.5, residual  # issue target 0.3 deg; dipy MI reaches ~0.2-0.4 here
    assert preproc.rotation_angle(q) == pytest.approx(2.0, abs=0.5)
    np.testing.assert_allclose(new_vecs[moved], q @ bvecs[moved])
    angle_to_truth = np.degrees(
        np.arccos(np.clip(new_vecs[moved] @ (rot.T @ bvecs[moved]), -1, 1))
    )
    assert angle_to_truth < 0.5
    assert not np.allclose(new_vecs[moved], bvecs[moved], atol=1e-3)  # rotated
    b0 = bvals <= B0_THRESHOLD
    np.testing.assert_array_equal(new_vecs[b0], bvecs[b0])


def test_registration_grid_factors():
    from bids_app.models.diffusion._motion import registration_factors

    one_mm = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert registration_factors((156, 192, 164), one_mm, 4.0) == (4, 4, 4)
    assert registration_factors((156, 192, 164), one_mm, 0.0) == (1, 1, 1)
    # anisotropic 2 x 2 x 3 mm, 60 slices: each axis keeps 32 voxels at least
    aniso = np.diag([2.0, 2.0, 3.0, 1.0])
    assert registration_factors((96, 96, 60), aniso, 4.0) == (2, 2, 1)
    assert registration_factors((32, 32, 20), np.diag([2.0, 2.0, 2.0, 1.0]), 4.0) == (1, 1, 1)


def test_motion_correction_on_a_coarse_grid_and_in_parallel():
    """A 1 mm series registered on 2 mm blocks (32 x 32 x 20): the known rotation is found,
    and the executor path gives the serial result exactly.

    This smooth phantom is hard for mutual information: 0.475 degree residual on the blocks,
    0.365 on the native grid (18 s). The issue's 0.3 degree is measured on the synthetic
    brain (benchmarks/bench_dwi_motion.py: 0.13-0.19 degree on 4 mm blocks).
    """
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    ph = sd.phantom((64, 64, 40), rng, texture=0.4, texture_scale=2.0)
    bvals, bvecs = sd.multishell_protocol((1000,), 6, 2, rng)
    moved = int(np.flatnonzero(bvals > 0)[2])
    rot = sd.rotation_matrix(2.0, (0, 1, 1))
    data, _ = sd.simulate_dwi(
        ph["mask"], ph["s0"], ph["fractions"], ph["tensors"], bvals, bvecs,
        snr=SNR, rng=rng, rotations={moved: rot},
    )  # fmt: skip
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    out, vecs, xfms = preproc.motion_correct(data, bvals, bvecs, affine, grid_mm=2.0)
    q = preproc.bvec_rotation(xfms[moved], affine)
    assert preproc.rotation_angle(q @ rot) < 0.55
    assert preproc.rotation_angle(q) == pytest.approx(2.0, abs=0.55)
    with ThreadPoolExecutor(2) as pool:
        out2, vecs2, xfms2 = preproc.motion_correct(
            data, bvals, bvecs, affine, grid_mm=2.0, executor=pool
        )
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(vecs2, vecs)
    np.testing.assert_array_equal(np.array(xfms2), np.array(xfms))


def test_preprocessing_shared_hooks_and_notes():
    ph = sd.phantom((12, 12, 6), np.random.default_rng(5))
    bvals, bvecs = sd.multishell_protocol((1000, 2000), 12, 3, np.random.default_rng(7))
    data, _ = sd.simulate_dwi(
        ph["mask"], ph["s0"], ph["fractions"], ph["tensors"], bvals, bvecs,
        snr=30.0, rng=np.random.default_rng(6),
    )  # fmt: skip
    opts = {"denoise": "mppca", "denoise_stride": 1, "gibbs": True, "motion": "none"}
    dti = REGISTRY["dti"](bvals, bvecs, **opts)
    dki = REGISTRY["dki"](bvals, bvecs, **opts)
    assert dti.preprocess_key() == dki.preprocess_key() is not None
    assert REGISTRY["dti"](bvals, bvecs, preprocessed=True).preprocess_key() is None
    out, state = dti.preprocess({"dwi": data}, mask=ph["mask"], affine=np.eye(4))
    assert out["dwi"].shape == data.shape
    # MP-PCA noise estimate: Rician sigma = median S0 / 30
    assert state["sigma"] == pytest.approx(np.median(ph["s0"]) / 30.0, rel=0.3)
    assert state["mask"].sum() > 0.5 * ph["mask"].sum()
    notes = state["notes"]
    assert notes["Denoising"]["Method"] == "mppca"
    assert notes["MotionCorrection"] == "none"
    assert "eddy" in notes["NotDone"]
    fitted = dki.with_preprocessed(state)
    assert fitted.fit_notes["Preprocessing"]["GibbsRemoval"] != "none"
    assert "Preprocessing" not in dki.fit_notes  # the original is not changed
    maps = fitted.fit(out["dwi"], mask=state["mask"]).maps()
    assert np.isfinite(maps["MK"][state["mask"]]).mean() > 0.8


# ---------------------------------------------------------------- gradient checks


def _table(path, rows):
    path.write_text("\n".join(" ".join(f"{v:g}" for v in r) for r in np.atleast_2d(rows)) + "\n")
    return path


def test_gradient_table_errors_name_the_file(tmp_path):
    bvals, bvecs = example_dwi()["dwi"].tables["bval"], example_dwi()["dwi"].tables["bvec"]
    n = bvals.size
    bval = _table(tmp_path / "sub-01_dwi.bval", bvals[None])
    bvec = _table(tmp_path / "sub-01_dwi.bvec", bvecs.T)
    np.testing.assert_allclose(read_bval(bval, n), bvals)
    with pytest.raises(MetadataError, match=r"sub-01_dwi\.bval.*one row of 65"):
        read_bval(bval, n + 2)  # count mismatch with the image
    with pytest.raises(MetadataError, match=r"sub-01_dwi\.bvec"):
        read_bvec(bvec, n - 1)
    bad = bvecs.copy()
    bad[np.flatnonzero(bvals > 0)[0]] *= 1.3  # not unit norm
    with pytest.raises(MetadataError, match=r"sub-01_dwi.bvec.*\|bvec\| = 1.300"):
        check_gradients(bvals, bad, str(bvec))
    with pytest.raises(MetadataError, match=r"sub-01_dwi\.bval.*no b=0"):
        check_gradients(
            np.where(bvals > 0, bvals, 1000.0),
            bvecs + (bvals[:, None] == 0) * [1, 0, 0],
            str(bval),
        )
