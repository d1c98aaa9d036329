"""Tests for bids_app.segmentation: brain mask and GM/WM/CSF classification on phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from bids_app.segmentation import (
    CLASS_ORDER,
    brain_mask,
    describe_brain_mask,
    describe_tissue_segmentation,
    segment_tissue,
)

GM, WM, CSF = 1, 2, 3
# relative intensities of CSF, GM, WM per contrast (the order is what matters)
INTENSITY = {
    "T1w": {CSF: 0.25, GM: 0.6, WM: 0.9},
    "FLAIR": {CSF: 0.1, GM: 0.7, WM: 0.5},
    "T2w": {CSF: 1.0, GM: 0.6, WM: 0.4},
}


def dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def rician(signal, sigma, rng):
    return np.hypot(
        signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape)
    )


def head_phantom(shape=(40, 50, 40)):
    """Ellipsoidal brain: outer CSF, GM ribbon, WM, two ventricles. Returns tissue labels."""
    idx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    semi = np.array(shape) * 0.42
    rho = np.sqrt((((idx - c[:, None, None, None]) / semi[:, None, None, None]) ** 2).sum(0))
    tissue = np.zeros(shape, np.uint8)
    tissue[rho <= 1.0] = CSF
    tissue[rho <= 0.92] = GM
    tissue[rho <= 0.72] = WM
    for side in (-1, 1):
        off = idx - (c + np.array([side * shape[0] * 0.1, 0, 0]))[:, None, None, None]
        vent = (off[0] / 2.5) ** 2 + (off[1] / (shape[1] * 0.18)) ** 2 + (off[2] / 3.0) ** 2 <= 1
        tissue[vent] = CSF
    return tissue


@pytest.fixture(scope="module")
def phantom():
    return head_phantom()


def simulate(tissue, contrast, snr, rng):
    values = INTENSITY[contrast]
    signal = np.zeros(tissue.shape)
    for k, v in values.items():
        signal[tissue == k] = v
    return rician(signal, max(values.values()) / snr, rng)


@pytest.mark.parametrize("method", ["hmrf", "multiotsu"])
@pytest.mark.parametrize("contrast", ["T1w", "FLAIR", "T2w"])
def test_segment_tissue_accuracy(phantom, contrast, method):
    rng = np.random.default_rng(2024)
    image = simulate(phantom, contrast, snr=20, rng=rng)
    brain = phantom > 0
    labels, description = segment_tissue(image, brain, contrast=contrast, method=method)
    assert description == describe_tissue_segmentation(method=method, contrast=contrast)
    assert labels.dtype == np.uint8
    assert not labels[~brain].any()
    for k in (GM, WM, CSF):
        # SNR 20 on the brightest class: classes are >= 5 sigma apart, so > 95 % Dice
        assert dice(labels == k, phantom == k) > 0.95, (contrast, method, k)


@pytest.mark.parametrize(
    ("contrast", "values", "sigma"),
    [
        # intensities of the msqmri-synth T1w and FLAIR: CSF near the background, GM much
        # closer to CSF (T1w) or to WM (FLAIR) than evenly spaced classes would be
        ("T1w", {CSF: 5.0, GM: 16.0, WM: 41.0}, 1.0),
        ("FLAIR", {CSF: 3.0, GM: 170.0, WM: 155.0}, 2.8),
    ],
)
def test_hmrf_uneven_class_spacing(phantom, contrast, values, sigma):
    """dipy's uniform HMRF start would put CSF in the background class without the re-map."""
    signal = np.select([phantom == k for k in values], list(values.values()))
    image = rician(signal, sigma, np.random.default_rng(12))
    labels, _ = segment_tissue(image, phantom > 0, contrast=contrast)
    for k in (GM, WM, CSF):
        assert dice(labels == k, phantom == k) > 0.95, k


def test_segment_tissue_deterministic(phantom):
    rng = np.random.default_rng(3)
    image = simulate(phantom, "T1w", snr=10, rng=rng)
    brain = phantom > 0
    a, _ = segment_tissue(image, brain)
    b, _ = segment_tissue(image, brain)
    c, _ = segment_tissue(image, brain, rng=np.random.default_rng(0))
    assert_array_equal(a, b)
    assert_array_equal(a, c)


def test_lesion_exclusion(phantom):
    rng = np.random.default_rng(5)
    signal = np.select([phantom == k for k in (CSF, GM, WM)], [0.25, 0.6, 0.9])
    lesion = np.zeros(phantom.shape, bool)
    lesion[18:22, 15:19, 12:15] = True
    lesion[16:19, 30:36, 24:28] = True
    assert (phantom[lesion] == WM).all()
    signal[lesion] = 0.45  # T1-hypointense: between CSF and GM
    image = rician(signal, 0.9 / 20, rng)
    brain = phantom > 0
    plain, _ = segment_tissue(image, brain)
    assert np.mean(plain[lesion] == WM) < 0.2  # without exclusion lesions become GM/CSF
    filled, description = segment_tissue(image, brain, exclude=lesion)
    assert description == describe_tissue_segmentation(lesion_filling=True)
    assert (filled[lesion] == WM).all()
    for k in (GM, WM, CSF):
        assert dice(filled == k, phantom == k) > 0.95
    fast, _ = segment_tissue(image, brain, exclude=lesion, method="multiotsu")
    assert (fast[lesion] == WM).all()


def test_segment_tissue_validates(phantom):
    image = simulate(phantom, "T1w", snr=20, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"contrast='T1'.*T1w"):
        segment_tissue(image, phantom > 0, contrast="T1")
    with pytest.raises(ValueError, match="method='fast'"):
        segment_tissue(image, phantom > 0, method="fast")
    with pytest.raises(ValueError, match="shape"):
        segment_tissue(image, (phantom > 0)[:-1])
    with pytest.raises(ValueError, match="constant"):
        segment_tissue(np.ones(phantom.shape), phantom > 0)


@pytest.mark.parametrize("contrast", ["T1w", "T2w"])
def test_brain_mask_blob_with_background_noise(phantom, contrast):
    rng = np.random.default_rng(8)
    image = simulate(phantom, contrast, snr=20, rng=rng)  # Rician noise in the background too
    mask, description = brain_mask(image, zooms=(4, 4, 4))
    assert mask.dtype == bool
    assert description == describe_brain_mask()
    assert dice(mask, phantom > 0) > 0.95


def test_brain_mask_median_otsu(phantom):
    """dipy's median_otsu thresholds linearly: fine on T2w, loses the outer CSF on T1w."""
    rng = np.random.default_rng(8)
    t2w = simulate(phantom, "T2w", snr=20, rng=rng)
    mask, description = brain_mask(t2w, zooms=(4, 4, 4), method="median_otsu")
    assert dice(mask, phantom > 0) > 0.95
    assert description == describe_brain_mask(method="median_otsu")
    t1w = simulate(phantom, "T1w", snr=20, rng=rng)
    mask, _ = brain_mask(t1w, zooms=(4, 4, 4), method="median_otsu")
    assert dice(mask, phantom > 0) < 0.9


def test_brain_mask_nan_background_anisotropic(phantom):
    rng = np.random.default_rng(9)
    t1map = np.where(phantom > 0, simulate(phantom, "T1w", snr=30, rng=rng), np.nan)
    mask, _ = brain_mask(t1map, zooms=(2.0, 2.0, 3.0))
    assert dice(mask, phantom > 0) > 0.95


def test_brain_mask_detaches_thin_bridges_to_a_scalp_shell():
    """A bright 'scalp' shell joined to the brain by thin bridges is removed by the opening."""
    shape = (48, 56, 48)
    tissue = np.pad(head_phantom((36, 44, 36)), 6)
    idx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    rho = np.sqrt((((idx - c[:, None, None, None]) / (c[:, None, None, None] - 1)) ** 2).sum(0))
    signal = np.select([tissue == k for k in (CSF, GM, WM)], [0.25, 0.6, 0.9])
    scalp = (rho > 0.88) & (rho <= 1.0)  # about 3 voxels (6 mm) thick
    signal[scalp] = 1.0
    bridge = np.zeros(shape, bool)
    bridge[22:25, 26:29, :] = True  # a 6 mm x 6 mm bar through brain and scalp
    signal[bridge & (signal == 0)] = 0.8
    image = rician(signal, 0.05, np.random.default_rng(10))
    plain, _ = brain_mask(image, zooms=(2, 2, 2), opening_mm=0)
    mask, _ = brain_mask(image, zooms=(2, 2, 2))
    assert dice(mask, tissue > 0) > 0.95
    assert not (mask & scalp).any()
    assert (plain & scalp).any()  # without the opening the bridges keep the scalp


def test_brain_mask_validates():
    with pytest.raises(ValueError, match="method='bet'"):
        brain_mask(np.ones((4, 4, 4)), zooms=(1, 1, 1), method="bet")
    with pytest.raises(ValueError, match="finite"):
        brain_mask(np.full((4, 4, 4), np.nan), zooms=(1, 1, 1))


def test_method_descriptions():
    assert "TissueClassifierHMRF" in describe_tissue_segmentation()
    assert "beta=0.6" in describe_tissue_segmentation()
    assert "filled" in describe_tissue_segmentation(lesion_filling=True)
    assert "multiotsu" in describe_tissue_segmentation(method="multiotsu", contrast="FLAIR")
    assert "FLAIR" in describe_tissue_segmentation(contrast="FLAIR")
    assert "4 mm" in describe_brain_mask()
    assert "median_otsu" in describe_brain_mask(method="median_otsu")
    assert set(CLASS_ORDER) == {"T1w", "FLAIR", "T2w", "PDw"}
