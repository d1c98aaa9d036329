"""MP-PCA denoising across echoes before the ``mwf`` fit (option ``denoise``).

Veraart J et al. NeuroImage 2016;142:394-406 (MP-PCA); Does MD et al. Magn Reson Med
2019;81:3503-3514 (PCA denoising of multi-exponential relaxometry).

The synthetic image is the hand-built scene of tests/models/test_mwf_synth.py (WM, GM strips,
CSF and a 4x3x2-voxel lesion block, B1+ 0.8-1.2 along x, Rician noise), denoised through the
model's preprocess hooks as the participant level does. Measured at SNR 100 (984 WM voxels):

=========  ===================  ============  ============  ==================  ===========
denoise    median |MWF error|   mean signed   SD of error   NAWM - lesion vs    median
           in WM (points)       error (WM)    (WM)          truth (points)      |angle err|
=========  ===================  ============  ============  ==================  ===========
none       3.00                 -1.29         4.22          +0.03               2.5 deg
mppca      1.30                 -1.29         0.97          -1.72               1.83 deg
=========  ===================  ============  ============  ==================  ===========

(default patch radius 2, stride 2; stride 1 gives the same to 0.05 point. SNR 200: none 1.75 /
mean -1.47, mppca 0.82 / mean -0.79, lesion contrast -0.66 vs -1.53.)
Denoising lowers the per-voxel error four-fold without moving the WM bias, but shrinks the
contrast of small lesions (the patch's few retained components are those of the surrounding
NAWM), which is why ``none`` stays the default.
"""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from bids_app.models import REGISTRY
from bids_app.models._mppca import mppca
from bids_app.models.mwf._denoise import denoise_mese
from bids_app.stages.context import Grid
from bids_app.stages.maps import LoadedInputs, preprocessed
from bids_app.synth import mwf_series
from bids_app.synth.mwf import simulate_voxels
from bids_app.synth.scene import LESION, WM
from tests.models.test_mwf_synth import _scene, _truth
from tests.synth_scenes import raw_root

TE = 0.01 * np.arange(1, 33)


def _model(**options):
    return REGISTRY["mwf"](TE, **options)


@pytest.mark.parametrize(
    "options",
    [{"denoise": "pca"}, {"denoise": 1}, {"denoise_patch_radius": 0}, {"denoise_stride": 4}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError, match=r"mwf: .*denoise"):
        _model(**options)


def test_default_is_none_and_the_key_follows_the_options():
    model = _model()
    assert model.options["denoise"] == "none"
    assert model.preprocess_key() is None  # no preprocessing at all
    assert model.fit_notes["Denoising"] == "none"
    a = _model(denoise="mppca")
    b = _model(denoise="mppca", denoise_patch_radius=3)
    assert a.preprocess_key() is not None
    assert a.preprocess_key() != b.preprocess_key()
    # asked for but not preprocessed (a direct fit): the notes must not claim denoising
    assert "not applied" in a.fit_notes["Denoising"]


@pytest.fixture(scope="module")
def snr100(tmp_path_factory):
    root = tmp_path_factory.mktemp("mwf_denoise_100")
    raw_root(root, "mwf")
    scene = _scene(root, 100.0)
    mwf_series.write_mese_mwf(scene)
    anat = scene.root / "sub-01" / "anat"
    echoes = [anat / f"sub-01_acq-mwf_echo-{k}_MESE.nii.gz" for k in range(1, TE.size + 1)]
    series = np.stack([np.asarray(nib.load(p).dataobj, np.float32) for p in echoes], -1)
    fits = {}
    for method in ("none", "mppca"):
        model = _model(denoise=method)
        data = {"mese": series}
        if model.preprocess_key() is not None:
            data, state = model.preprocess(data, mask=scene.brain, affine=np.eye(4))
            model = model.with_preprocessed(state)
        fits[method] = (model, model.fit(data["mese"], mask=scene.brain).maps())
    return scene, series, fits


def test_fit_notes_record_the_denoising(snr100):
    _, _, fits = snr100
    notes = fits["mppca"][0].fit_notes["Denoising"]
    assert notes["Method"].startswith("MP-PCA")
    assert notes["PatchRadius"] == [2, 2, 2]
    assert notes["PatchStride"] == 2
    assert notes["VoxelsLeftAsAcquired"] == 0
    # the MP noise estimate against the writer's noise SD per channel: magnitude data, whose
    # noise SD falls from sigma (high SNR) to 0.655 sigma (the Rician floor of the late
    # echoes of WM), so the mean over echoes lies between (measured 0.89 sigma here, 0.98
    # on the 2 mm msqmri-synth brain, more GM and CSF)
    sigma = mwf_series.reference_sigma(100.0)
    assert 0.8 * sigma <= notes["NoiseSigma"]["Median"] <= 1.05 * sigma
    assert 1.0 <= notes["ComponentsKept"]["Median"] <= 6.0  # a few T2 pools at a smooth angle
    assert fits["none"][0].fit_notes["Denoising"] == "none"


def test_mppca_lowers_the_wm_error_without_moving_the_bias(snr100):
    scene, _, fits = snr100
    truth = _truth(scene, "MWFmap")
    angle_truth = _truth(scene, "desc-refocusing_FAmap")
    wm = scene.dseg == WM
    err = {k: maps["MWF"][wm] - truth[wm] for k, (_, maps) in fits.items()}
    med = {k: np.median(np.abs(e)) for k, e in err.items()}
    assert med["mppca"] < 0.6 * med["none"]  # measured 1.30 vs 3.00
    assert med["mppca"] <= 2.0  # the target at SNR 100
    assert np.std(err["mppca"]) < 0.5 * np.std(err["none"])  # measured 0.97 vs 4.22
    # bias: the denoising leaves the mean signed error of the fit (measured -1.29 vs -1.29)
    assert abs(np.mean(err["mppca"]) - np.mean(err["none"])) <= 0.5
    assert abs(np.mean(err["mppca"])) <= 2.0
    angle_err = fits["mppca"][1]["Angle"][wm] - angle_truth[wm]
    assert np.median(np.abs(angle_err)) <= 3.0  # measured 1.83 deg (none: 2.5)


def test_lesion_contrast_is_shrunk_by_a_bounded_amount(snr100):
    """The known cost: a 24-voxel lesion is pulled towards the NAWM around it."""
    scene, _, fits = snr100
    truth = _truth(scene, "MWFmap")
    wm, les = scene.dseg == WM, scene.dseg == LESION
    true_contrast = truth[wm].mean() - truth[les].mean()  # 7.4 points
    for method, bound in (("none", 1.0), ("mppca", 2.5)):  # measured +0.03, -1.72
        maps = fits[method][1]
        contrast = np.nanmean(maps["MWF"][wm]) - np.nanmean(maps["MWF"][les])
        assert contrast == pytest.approx(true_contrast, abs=bound), method
    lesion_err = fits["mppca"][1]["MWF"][les] - truth[les]
    assert abs(np.mean(lesion_err)) <= 2.5  # measured +0.44 (none: -1.32)


def test_nan_and_zero_voxels_are_left_as_acquired():
    rng = np.random.default_rng(21)
    shape = (8, 8, 6)
    signal, _ = simulate_voxels(int(np.prod(shape)), rng, tissue="WM", snr=100.0)
    series = signal.reshape(*shape, TE.size).astype(np.float32)
    series[2, 3, 3, 5] = np.nan
    series[4, 4, 2] = 0.0
    series[5, 1, 4, 0] = np.inf
    mask = np.ones(shape, bool)
    model = _model(denoise="mppca")
    data, state = model.preprocess({"mese": series}, mask=mask, affine=np.eye(4))
    out = data["mese"]
    bad = np.zeros(shape, bool)
    bad[2, 3, 3] = bad[4, 4, 2] = bad[5, 1, 4] = True
    np.testing.assert_array_equal(out[bad], series[bad])  # NaN and inf kept, zeros kept
    assert np.all(np.isfinite(out[~bad]))
    assert np.all(out[~bad] >= 0)
    assert not np.allclose(out[~bad], series[~bad])  # the others were denoised
    assert state["notes"]["VoxelsLeftAsAcquired"] == 3
    maps = model.with_preprocessed(state).fit(out, mask=mask).maps()
    assert np.all(np.isnan(maps["MWF"][bad]))
    assert np.all(np.isfinite(maps["MWF"][~bad]))


def test_outside_the_dilated_mask_is_untouched_and_thin_slabs_shrink_the_patch():
    rng = np.random.default_rng(5)
    shape = (12, 10, 3)
    signal, _ = simulate_voxels(int(np.prod(shape)), rng, tissue="GM", snr=50.0)
    series = signal.reshape(*shape, TE.size).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:5, 2:5, :] = True
    out, notes = denoise_mese(series, mask, patch_radius=2)
    assert notes["PatchRadius"] == [2, 2, 1]  # 3 slices: radius 1 along z
    far = np.ones(shape, bool)
    far[:8, :8, :] = False  # beyond the mask dilated by 2 voxels
    np.testing.assert_array_equal(out[far], series[far])
    assert not np.allclose(out[mask], series[mask])
    none, notes_none = denoise_mese(series, mask, method="none")
    np.testing.assert_array_equal(none, series)
    assert notes_none == {"Method": "none"}
    with pytest.raises(ValueError, match="unknown MESE denoising"):
        denoise_mese(series, mask, method="gauss")


def test_the_participant_driver_applies_the_hooks():
    """:func:`bids_app.stages.maps.preprocessed` runs the denoising and keeps the mask."""
    rng = np.random.default_rng(8)
    shape = (8, 8, 5)
    signal, _ = simulate_voxels(int(np.prod(shape)), rng, tissue="WM", snr=100.0)
    series = signal.reshape(*shape, TE.size).astype(np.float32)
    mask = np.ones(shape, bool)
    mask[0] = False
    ctx = SimpleNamespace(preprocessed={}, label="sub-01", pool=None)
    inputs = LoadedInputs({"mese": series}, Grid(shape, np.eye(4)), ["echo-1.nii.gz"])
    model, loaded, fit_mask = preprocessed(ctx, _model(denoise="mppca"), inputs, mask)
    assert fit_mask is mask
    assert model.fit_notes["Denoising"]["Method"].startswith("MP-PCA")
    assert not np.allclose(loaded.data["mese"][mask], series[mask])
    plain, same, _ = preprocessed(ctx, _model(), inputs, mask)
    assert same is inputs
    assert plain.fit_notes["Denoising"] == "none"


def test_mppca_components_map_counts_the_signal_rank():
    """A rank-2 series (two decays, random amplitudes) plus noise: 2 components, sigma."""
    rng = np.random.default_rng(3)
    shape, sigma = (10, 10, 10), 2.0
    basis = np.stack([np.exp(-TE / 0.02), np.exp(-TE / 0.08)])  # (2, n)
    amp = rng.uniform(200, 1000, (*shape, 2))
    series = amp @ basis + rng.normal(0, sigma, (*shape, TE.size))
    out, sig, comp = mppca(series, patch_radius=2, return_components=True)
    assert out.shape == series.shape
    assert sig.shape == comp.shape == shape
    assert np.median(comp) == pytest.approx(2.0, abs=0.25)
    assert np.median(sig) == pytest.approx(sigma, rel=0.1)
    only = mppca(series, patch_radius=2, return_sigma=False)
    np.testing.assert_array_equal(only, out)
    from bids_app.models.diffusion import _mppca as old_path

    assert old_path.mppca is mppca  # the DWI path re-exports the shared implementation
