"""Tests of :mod:`bids_app.lesionseg` (built-in FLAIR lesion segmentation).

Two truths: a synthetic FLAIR/T1w phantom built here (lesions of 1-20 mm placed by
construction) and the real MS scan ``open-ms-data/patient26`` with its multi-rater
consensus mask (skipped when ``../shared/data`` is absent).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from bids_app.lesionseg import (
    LESION_OPTIONS,
    check_options,
    describe_lesion_segmentation,
    peak_stats,
    segment_lesions,
)
from bids_app.regions import lesion_labels

logger = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PATIENT = DATA / "open-ms-data" / "patient26"

# FLAIR and T1w intensities relative to WM. FLAIR GM/WM 1.14 and the lesion median 1.35
# are those of patient26 (GM mode 92.5, WM mode 81.4, lesion median 110); lesions span
# 1.3-1.6 as MS lesions do. T1w: GM 0.8, CSF 0.45 of WM (patient26: 0.83, 0.45),
# lesions T1-hypointense (0.6-0.9).
FLAIR = {"WM": 1.0, "GM": 1.14, "CSF": 0.12}
T1W = {"WM": 1.0, "GM": 0.8, "CSF": 0.45}
TEXTURE = 0.04  # std of a smooth (2 mm) multiplicative tissue heterogeneity
FP_MAX, FP_VOXELS_MAX = 1, 100  # lesion-free phantom: measured 0 lesions (seeds 5, 7), 1 of 51 (6)
NOISE = 0.07  # Rician sigma / WM signal: SNR 14, patient26 has 8 % per voxel (SNR 12)


def _ellipsoid(shape, centre, radii):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1


def phantom(seed: int = 0, shape=(100, 116, 84), n_lesions: int = 24, flair: dict | None = None):
    """FLAIR, T1w, brain mask and true lesion mask of a 1 mm head-like phantom.

    A brain ellipsoid (semi-axes 48, 54, 40 mm): a 3 mm CSF shell, a 6 mm GM cortex (GM about
    40 % and CSF 20 % of the brain, as in adults), two deep-GM nuclei,
    two lateral ventricles, and 24 spherical lesions of diameters 1 to 20 mm (log-uniform)
    in the WM, at least 2 mm from GM/CSF and 3 mm from each other. Images are rendered at
    4x resolution and averaged to 1 mm (partial volume), then Rician noise is added.
    ``flair`` replaces the FLAIR tissue intensities (:data:`FLAIR`).
    """
    rng = np.random.default_rng(seed)
    c = np.array(shape) / 2.0
    brain = _ellipsoid(shape, c, (48, 56, 40))
    cortex = _ellipsoid(shape, c, (45, 53, 37))
    inner = _ellipsoid(shape, c, (39, 47, 31))
    vent = _ellipsoid(shape, c + np.array([-7, 0, 4]), (3, 18, 6)) | _ellipsoid(
        shape, c + np.array([7, 0, 4]), (3, 18, 6)
    )
    deep = _ellipsoid(shape, c + np.array([-13, -4, -3]), (5, 8, 6)) | _ellipsoid(
        shape, c + np.array([13, -4, -3]), (5, 8, 6)
    )
    labels = np.where(brain, 3, 0)
    labels[cortex] = 1
    labels[inner] = 2
    labels[deep] = 1
    labels[vent] = 3
    # lesions: centres in WM far enough from the other classes
    free = ndi.distance_transform_edt(labels == 2)
    diameters = np.exp(rng.uniform(np.log(1.0), np.log(20.0), size=n_lesions))
    diameters = np.sort(diameters)[::-1]
    truth_balls: list[tuple[np.ndarray, float]] = []
    candidates = np.argwhere(free > 2)
    for d in diameters:
        r = d / 2
        for _ in range(2000):
            p = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
            if free[tuple(np.round(p).astype(int))] < r + 2:
                continue
            if all(np.linalg.norm(p - q) > r + s + 3 for q, s in truth_balls):
                truth_balls.append((p, r))
                break
    # 4x supersampled partial-volume fraction of each lesion
    fine = 4
    offsets = (np.arange(fine) + 0.5) / fine - 0.5
    frac = np.zeros(shape)
    severity = np.zeros(shape)
    for p, r in truth_balls:
        lo = np.maximum(np.floor(p - r - 1).astype(int), 0)
        hi = np.minimum(np.ceil(p + r + 2).astype(int), shape)
        axes = [np.add.outer(np.arange(a, b), offsets).ravel() for a, b in zip(lo, hi)]
        xx, yy, zz = np.meshgrid(*axes, indexing="ij")
        inside = ((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) <= r * r
        n = [b - a for a, b in zip(lo, hi)]
        f = inside.reshape(n[0], fine, n[1], fine, n[2], fine).mean(axis=(1, 3, 5))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        frac[box] = np.maximum(frac[box], f)
        severity[box] = np.where(f > 0, rng.uniform(0.0, 1.0), severity[box])
    truth = frac >= 0.5
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    texture = 1 + TEXTURE * texture / texture[brain].std()
    images = {}
    for name, table, lesion_value in (
        ("FLAIR", FLAIR if flair is None else flair, 1.3 + 0.3 * severity),
        ("T1w", T1W, 0.9 - 0.3 * severity),
    ):
        base = np.zeros(shape)
        for cls, code in (("GM", 1), ("WM", 2), ("CSF", 3)):
            base[labels == code] = table[cls]
        base = ndi.gaussian_filter(base, 0.6)  # tissue partial volume at the class borders
        base *= texture  # smooth tissue heterogeneity (real WM is not uniform)
        img = (1 - frac) * base + frac * lesion_value
        noisy = np.hypot(img + rng.normal(0, NOISE, shape), rng.normal(0, NOISE, shape))
        images[name] = np.where(brain, noisy, 0.0)
    return images["FLAIR"], images["T1w"], brain, truth


def lesion_scores(found: np.ndarray, truth: np.ndarray, *, min_volume_mm3: float = 0.0):
    """Dice, volume ratio, lesion counts, detected and false-positive lesions (26-conn.)."""
    dice = 2 * np.sum(found & truth) / (found.sum() + truth.sum())
    t_lab = lesion_labels(truth, zooms=(1, 1, 1), min_volume_mm3=min_volume_mm3)
    f_lab = lesion_labels(found, zooms=(1, 1, 1))
    detected = np.unique(t_lab[found & (t_lab > 0)]).size
    matched = np.unique(f_lab[truth & (f_lab > 0)]).size
    return {
        "dice": float(dice),
        "volume_ratio": float(found.sum() / truth.sum()),
        "n_found": int(f_lab.max()),
        "n_truth": int(t_lab.max()),
        "detected": int(detected),
        "false_positive": int(f_lab.max() - matched),
    }


@pytest.fixture(scope="module")
def synthetic():
    return phantom(seed=3)


def test_synthetic_flair_t1w(synthetic):
    flair, t1w, brain, truth = synthetic
    found, info = segment_lesions(100 * flair, brain, (1.0, 1.0, 1.0), t1w=t1w)
    # truth count: lesions the method may report at all (>= its minimum volume, 10 mm3)
    s = lesion_scores(found, truth, min_volume_mm3=info["Options"]["min_volume_mm3"])
    logger.info("synthetic FLAIR+T1w: %s", s)
    # acceptance of issue 18 (Dice >= 0.7, count within 20 %)
    assert s["dice"] >= 0.7, s
    assert abs(s["n_found"] - s["n_truth"]) <= 0.2 * s["n_truth"], s
    assert abs(s["volume_ratio"] - 1) < 0.3, s
    assert info["Method"] == "msqmri-lga"
    assert info["NumberOfLesions"] == s["n_found"]
    assert info["Thresholds"]["FLAIR_seed_min"] > info["Thresholds"]["FLAIR_GM_mode"]


def test_synthetic_flair_only(synthetic):
    """Without T1w the tissue comes from the FLAIR; lesions are still found."""
    flair, _, brain, truth = synthetic
    found, info = segment_lesions(flair, brain, (1.0, 1.0, 1.0))
    s = lesion_scores(found, truth, min_volume_mm3=10.0)
    logger.info("synthetic FLAIR only: %s", s)
    assert info["TissueSource"] == "FLAIR"
    assert s["dice"] >= 0.6, s


@pytest.mark.parametrize("gm", [1.0, 0.96])
def test_flair_without_gm_wm_contrast(gm):
    """A FLAIR whose GM is not brighter than its WM (msqmri-synth's 2-D FLAIR: WM 1.3 %
    above GM on one subject) must not seed the WM: seeds are also WM-hyperintense.

    Before that rule, such a subject got 33,130 lesion voxels for 487 true ones. Measured
    here (seed 3): GM/WM 1.00 and 0.96 both Dice 0.80-0.81, volume ratio 1.46-1.49, all 14
    lesions found, 5 false positives: the growth floor, halfway to a lower seed threshold,
    lets lesions grow wider than on a FLAIR with GM/WM contrast (Dice 0.87, ratio 1.03)."""
    flair, t1w, brain, truth = phantom(seed=3, flair={"WM": 1.0, "GM": gm, "CSF": 0.12})
    found, info = segment_lesions(100 * flair, brain, (1.0, 1.0, 1.0), t1w=t1w)
    s = lesion_scores(found, truth, min_volume_mm3=info["Options"]["min_volume_mm3"])
    logger.info("FLAIR GM/WM %.2f: %s", gm, s)
    assert s["dice"] >= 0.7, s
    assert 0.7 < s["volume_ratio"] < 1.6, s
    assert s["detected"] >= 0.8 * s["n_truth"], s
    th = info["Thresholds"]
    assert th["FLAIR_seed_min"] >= th["FLAIR_WM_mode"] + 3.5 * th["FLAIR_WM_sigma"] - 1e-3


def test_no_lesion_no_false_positive():
    """A lesion-free phantom (same noise and texture): few, small false positives."""
    flair, t1w, brain, truth = phantom(seed=5, n_lesions=0)
    assert not truth.any()
    found, info = segment_lesions(flair, brain, (1.0, 1.0, 1.0), t1w=t1w)
    logger.info("lesion-free phantom: %d lesions, %d voxels", info["NumberOfLesions"], found.sum())
    assert info["NumberOfLesions"] <= FP_MAX
    assert found.sum() <= FP_VOXELS_MAX


def test_peak_stats_gaussian():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(100, 5, 20000), rng.normal(160, 10, 2000)])  # + a tail
    mode, sigma = peak_stats(x)
    # 20000 samples: mode and sigma within about 2 % (histogram bin 0.3, smoothing)
    assert mode == pytest.approx(100, abs=1.5)
    assert sigma == pytest.approx(5, rel=0.06)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"nonsense": 1}, "unknown lesion-segmentation option"),
        ({"kappa": float("nan")}, "kappa"),
        ({"kappa": "3"}, "expected a number"),
        ({"min_volume_mm3": -1}, "min_volume_mm3"),
        ({"connectivity": 8}, "connectivity"),
        ({"tissue_method": "fast"}, "tissue_method"),
        ({"smoothing_mm": True}, "expected a number"),
    ],
)
def test_options_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        check_options(options)
    with pytest.raises(ValueError, match=match):
        segment_lesions(np.ones((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), **options)


def test_options_defaults_and_description():
    opts = check_options({})
    assert set(opts) == set(LESION_OPTIONS)
    text = describe_lesion_segmentation(contrasts=("FLAIR", "T2w"), kappa=4)
    assert "z_GM>4" in text
    assert "T2w" in text
    assert "Schmidt" in text
    with pytest.raises(ValueError, match="tissue_source"):
        describe_lesion_segmentation(tissue_source="MRI")


def test_inputs_rejected():
    img = np.ones((10, 10, 10))
    with pytest.raises(ValueError, match="t1w has shape"):
        segment_lesions(img, img > 0, (1, 1, 1), t1w=np.ones((9, 10, 10)))
    with pytest.raises(ValueError, match="need >= 100"):
        segment_lesions(img, np.zeros((10, 10, 10), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="zooms"):
        segment_lesions(img, img > 0, (1, 0, 1))


@pytest.mark.skipif(not PATIENT.is_dir(), reason=f"real MS scan absent: {PATIENT}")
def test_patient26_consensus():
    """Real MS (structural only, default options) against the multi-rater consensus."""
    import nibabel as nib

    def load(name):
        return np.asarray(nib.load(PATIENT / f"{name}.nii.gz").dataobj, dtype=np.float64)

    flair, t1w, t2w = load("FLAIR"), load("T1"), load("T2")
    truth = load("GOLD_STANDARD_lesions") > 0.5
    brain = t1w != 0  # the images are skull-stripped
    # with or without the T2w the result is the same (measured); test with all three
    found, _ = segment_lesions(flair, brain, (1.0, 1.0, 1.0), t1w=t1w, t2w=t2w)
    s = lesion_scores(found, truth)
    logger.info("patient26 FLAIR+T1w+T2w: %s", s)
    # measured: Dice 0.665, volume ratio 1.07, 8/19 consensus lesions found (the 11 missed
    # include 9 of <= 16 voxels), 28 lesions, 18 false-positive lesions; the margins allow
    # for library-version changes, not for a different method
    assert s["dice"] >= 0.62, s
    assert abs(s["volume_ratio"] - 1) <= 0.2, s
    assert s["detected"] >= 7, s
    assert s["false_positive"] <= 25, s


def test_options_file_sets_and_validates_lesionseg(tmp_path):
    from bids_app.config import load_model_options
    from bids_app.errors import UsageError

    good = tmp_path / "good.toml"
    good.write_text("[lesionseg]\nkappa = 3.0\nenabled = true\n")
    assert load_model_options(good)["lesionseg"] == {"kappa": 3.0, "enabled": True}
    for text, match in [
        ("[lesionseg]\nkapa = 3.0\n", "lesionseg"),
        ("[lesionseg]\nenabled = 'no'\n", "enabled"),
        ("[lesionseg]\nconnectivity = 7\n", "lesionseg"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(UsageError, match=match):
            load_model_options(bad)
