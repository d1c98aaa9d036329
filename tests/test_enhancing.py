"""Gadolinium-enhancing lesions: the ce- T1w query, the per-lesion rule, synthetic truth, group.

The integration test runs ``msqmri-synth --series gd`` (tiny: 4 mm) through the participant
and group levels with the true lesion masks (``--derivatives lesions=``) and the built-in
lesion segmentation off, so that only the enhancement is measured: every lesion's
``enhancing`` label must equal the truth (the DCE series' every-third lesion) and its
``enhancement_ratio`` the noiseless ratio of the forward model. The real-data check runs the
rule on open-ms-data patient26 (a pre/post-gadolinium MPRAGE pair with a consensus lesion
mask; no enhancement truth exists: it must run and give finite ratios).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from bids import BIDSLayout

from bids_app.bids.query import find_structural
from bids_app.group import lesion_counts
from bids_app.lesion_enhancement import EnhancementOptions, enhancement_map, lesion_enhancement
from tests.bids_builder import write_dataset

logger = logging.getLogger(__name__)
PATIENT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open-ms-data"


# --- the query ----------------------------------------------------------------------------


def test_plain_t1w_excludes_contrast_enhanced_images(tmp_path):
    rng = np.random.default_rng(0)
    pre, post = rng.uniform(50, 100, (6, 6, 6)), rng.uniform(100, 200, (6, 6, 6))
    spec = {
        "sub-01": {
            "anat/sub-01_ce-Gd_T1w": ({}, post),
            "anat/sub-01_ce-gadolinium_T1w": ({}, post),
            "anat/sub-01_ce-ferumoxytol_T1w": ({}, post),
            "anat/sub-01_T1w": ({}, pre),
        }
    }
    root = write_dataset(tmp_path / "ds", spec)
    layout = BIDSLayout(root, validate=False)
    found = find_structural(layout, "01", None)
    assert Path(found["T1w"].path).name == "sub-01_T1w.nii.gz"
    # ce-gadolinium (the CONTRACT name) is preferred over ce-Gd; ferumoxytol is neither
    assert Path(found["ceT1w"].path).name == "sub-01_ce-gadolinium_T1w.nii.gz"
    assert set(found) == {"T1w", "ceT1w"}
    # the reference is the pre-contrast T1w (never the ce- image), even when it sorts last
    from bids_app.stages.anatomy import choose_reference

    cfg = SimpleNamespace(bids_filters={}, reference="auto")
    ctx = SimpleNamespace(layout=layout, subject="01", session=None, cfg=cfg, label="sub-01")
    choose_reference(ctx)
    assert (ctx.reference_name, Path(ctx.reference_path).name) == ("T1w", "sub-01_T1w.nii.gz")

    only_gd = write_dataset(tmp_path / "gd", {"sub-01": {"anat/sub-01_ce-GD_T1w": ({}, post)}})
    found = find_structural(BIDSLayout(only_gd, validate=False), "01", None)
    assert set(found) == {"ceT1w"}  # a post-contrast image alone is no reference


# --- the rule on arrays ---------------------------------------------------------------------


def _phantom():
    """NAWM background, lesion 1 (8 voxels, all x1.5), lesion 2 (10 voxels, 2 x1.5)."""
    labels = np.zeros((12, 12, 12), int)
    labels[2:4, 2:4, 2:4] = 1
    labels[7, 2:7, 2:4] = 2
    rng = np.random.default_rng(1)
    pre = rng.uniform(80, 120, labels.shape)
    gain = np.ones(labels.shape)
    gain[labels == 1] = 1.5
    gain[7, 2, 2:4] = 1.5  # 2 of lesion 2's 10 voxels
    post = 1.7 * pre * gain  # a global scale between the acquisitions cancels
    return labels, pre, post


def test_rule_recovers_known_ratios_and_thresholds():
    labels, pre, post = _phantom()
    nawm = labels == 0
    table, record = lesion_enhancement(labels, post, nawm, pre, zooms=(1, 1, 1))
    t = table.set_index("lesion_id")
    assert t.loc[1, "enhancement_ratio"] == pytest.approx(1.5, rel=1e-9)
    assert t.loc[2, "enhancement_ratio"] == pytest.approx(1.1, rel=1e-9)  # (2*1.5 + 8) / 10
    assert t.loc[2, "enhancing_fraction"] == pytest.approx(0.2)
    assert t["enhancing"].tolist() == [1.0, 0.0]  # 0.2 < min_fraction 0.25
    assert record["NAWMMedianRatio"] == pytest.approx(1.7)
    assert record["NumberOfEnhancingLesions"] == 1
    assert record["Options"] == EnhancementOptions().as_dict()
    # a lower fraction turns lesion 2 enhancing; a volume floor of 3 mm^3 keeps it off
    lax = EnhancementOptions(min_fraction=0.1, min_volume_mm3=0.0)
    assert lesion_enhancement(labels, post, nawm, pre, zooms=(1, 1, 1), options=lax)[0][
        "enhancing"
    ].tolist() == [1.0, 1.0]
    strict = EnhancementOptions(min_fraction=0.1, min_volume_mm3=3.0)
    assert lesion_enhancement(labels, post, nawm, pre, zooms=(1, 1, 1), options=strict)[0][
        "enhancing"
    ].tolist() == [1.0, 0.0]


def test_rule_without_pre_contrast_and_undefined_voxels():
    labels, pre, post = _phantom()
    nawm = labels == 0
    post_only = np.where(labels == 1, 300.0, 200.0)
    table, record = lesion_enhancement(labels, post_only, nawm, None, zooms=(1, 1, 1))
    assert table["enhancement_ratio"].tolist() == pytest.approx([1.5, 1.0])
    assert "no pre-contrast T1w" in record["Method"]
    assert record["NAWMMedianPost"] == pytest.approx(200.0)
    # pre-contrast signal below the floor (10 % of NAWM): no ratio, enhancing n/a
    low = np.where(labels == 1, 1.0, pre)
    e, _ = enhancement_map(post, nawm, low)
    assert np.isnan(e[labels == 1]).all()
    table, _ = lesion_enhancement(labels, post, nawm, low, zooms=(1, 1, 1))
    assert np.isnan(table.loc[0, ["enhancement_ratio", "enhancing"]].to_numpy(float)).all()
    with pytest.raises(ValueError, match="threshold"):
        EnhancementOptions(threshold=0.9)
    with pytest.raises(ValueError, match="shape"):
        lesion_enhancement(labels, post[:-1], nawm, pre, zooms=(1, 1, 1))
    with pytest.raises(ValueError, match="NAWM"):
        lesion_enhancement(labels, post, np.zeros_like(nawm), pre, zooms=(1, 1, 1))


def test_group_counts_enhancing_lesions():
    rows = [
        ("sub-01", 1, 1.0, "MTRmap"),
        ("sub-01", 1, 1.0, "T1map"),
        ("sub-01", 2, 0.0, "MTRmap"),
        ("sub-01", 3, 1.0, "MTRmap"),
        ("sub-02", 1, np.nan, "MTRmap"),
    ]
    lesions = pd.DataFrame(
        [
            {
                "participant_id": p,
                "session_id": None,
                "lesion_id": k,
                "enhancing": e,
                "volume_mm3": 10.0,
                "location": "deep_white_matter",
                "map": m,
            }
            for p, k, e, m in rows
        ]
    )
    roster = pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02", "sub-03", "sub-04"],
            "session_id": None,
            "map": None,
        }
    )
    counts = lesion_counts(roster, lesions, {("sub-01", "n/a"), ("sub-03", "n/a")})
    c = counts.set_index("participant_id")
    assert c.loc["sub-01", "n_enhancing"] == 2  # lesions 1 and 3, counted once
    assert np.isnan(c.loc["sub-02", "n_enhancing"])  # no ce- T1w: unknown
    assert c.loc["sub-03", "n_enhancing"] == 0  # ce- T1w, no lesion
    assert np.isnan(c.loc["sub-04", "n_enhancing"])  # neither
    assert c.loc["sub-01", "lesion_load_ml"] == pytest.approx(0.03)


# --- synthetic dataset through the app --------------------------------------------------------


@pytest.fixture(scope="module")
def gd_run(tmp_path_factory):
    from bids_app.cli.run import main
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("gd")
    ds, out = root / "ds", root / "out"
    # patients sub-01, sub-03 (post-contrast T1w) and sub-05 (its ce- T1w removed); the
    # control sub-02 (a ce- T1w, no lesion); sub-04 left out (--participant-label)
    assert synth([str(ds), "--subjects", "5", "--size", "tiny", "--series", "gd"]) == 0
    for f in (ds / "sub-05" / "anat").glob("sub-05_ce-gadolinium_T1w.*"):
        f.unlink()
    deriv = ds / "derivatives"
    # the control gets an empty provided lesion mask: true masks only, no segmentation
    mask = deriv / "lesions" / "sub-01" / "anat" / "sub-01_label-lesion_mask.nii.gz"
    img = nib.load(mask)
    empty = deriv / "lesions" / "sub-02" / "anat" / "sub-02_label-lesion_mask.nii.gz"
    empty.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), empty)
    code = main(
        [
            str(ds),
            str(out),
            "participant",
            "group",
            "--participant-label",
            "01",
            "02",
            "03",
            "05",
            "--models",
            "mtr",
            "--derivatives",
            f"lesions={deriv / 'lesions'}",
            f"tissue={deriv / 'tissue'}",
            "--registration",
            "none",
            "--skip-bids-validation",
            "--no-reports",
        ]
    )
    assert code == 0
    return ds, out


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def _expected_ratios(ds: Path, out: Path, sub: str, app: np.ndarray) -> dict[int, float]:
    """Noiseless enhancement ratio of each app lesion from the truth and the forward model."""
    from bids_app.synth.protocol import build_protocol

    truth = ds / "derivatives" / "truth" / sub / "anat"
    maps = {
        k: _load(truth / f"{sub}_{name}.nii.gz")
        for k, name in (
            ("T1", "T1map"),
            ("PD", "M0map"),
            ("T2star", "T2starmap"),
            ("B1", "TB1map"),
        )
    }
    post_t1 = _load(truth / f"{sub}_ce-gadolinium_T1map.nii.gz")
    brain = maps["T1"] > 0
    t1w = next(v for v in build_protocol() if v.collection == "T1w")
    inside = {k: v[brain] for k, v in maps.items()}
    ratio = np.full(brain.shape, np.nan)
    ratio[brain] = t1w.signal({**inside, "T1": post_t1[brain]}) / t1w.signal(inside)
    nawm = next((out / sub / "anat").glob("*_label-NAWM_mask.nii.gz"))
    ratio /= np.nanmedian(ratio[_load(nawm) > 0])
    return {int(k): float(np.nanmean(ratio[app == k])) for k in np.unique(app[app > 0])}


def _truth_side(ds: Path, sub: str) -> Path:
    return ds / "derivatives" / "truth" / sub / "anat" / f"{sub}_ce-gadolinium_T1map.json"


def _app_vs_truth(ds: Path, out: Path, sub: str) -> pd.DataFrame:
    table = pd.read_csv(out / sub / f"{sub}_desc-lesions_stats.tsv", sep="\t", na_values="n/a")
    one = table.drop_duplicates("lesion_id").set_index("lesion_id")
    app = _load(next((out / sub / "anat").glob("*_desc-lesions_dseg.nii.gz"))).astype(int)
    true_ids = _load(
        ds / "derivatives" / "truth" / sub / "anat" / f"{sub}_desc-lesions_dseg.nii.gz"
    ).astype(int)
    side = json.loads(
        (ds / "derivatives/truth" / sub / "anat" / f"{sub}_ce-gadolinium_T1map.json").read_text()
    )
    truth_enh = set(side["EnhancingLesions"])
    expected = _expected_ratios(ds, out, sub, app)
    rows = []
    for k in one.index:
        index = int(np.bincount(true_ids[app == k]).argmax())  # the true lesion it covers
        rows.append(
            {
                "lesion_id": k,
                "true_index": index,
                "truth": int(index in truth_enh),
                "enhancing": one.loc[k, "enhancing"],
                "ratio": one.loc[k, "enhancement_ratio"],
                "expected": expected[k],
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.integration
def test_synthetic_enhancing_lesions_match_the_truth(gd_run, capsys):
    ds, out = gd_run
    got = pd.concat([_app_vs_truth(ds, out, s).assign(sub=s) for s in ("sub-01", "sub-03")])
    tp = int(((got.enhancing == 1) & (got.truth == 1)).sum())
    fp = int(((got.enhancing == 1) & (got.truth == 0)).sum())
    fn = int(((got.enhancing == 0) & (got.truth == 1)).sum())
    tn = int(((got.enhancing == 0) & (got.truth == 0)).sum())
    with capsys.disabled():
        print(f"\nsub-01 + sub-03 enhancing lesions: TP {tp} FP {fp} FN {fn} TN {tn}")
        print(got.to_string(index=False, float_format="%.3f"))
    assert tp >= 1  # both kinds present
    assert tn >= 1
    assert got["enhancing"].tolist() == got["truth"].tolist()
    # ratios: the noiseless forward-model value within 5 % (noise at SNR 100, int16 storage)
    assert got["ratio"].to_numpy() == pytest.approx(got["expected"].to_numpy(), rel=0.05)
    assert (got.loc[got.truth == 1, "ratio"] > 2.0).all()
    assert got.loc[got.truth == 0, "ratio"].between(0.9, 1.2).all()
    record = json.loads(
        next((out / "sub-01" / "anat").glob("*_desc-lesions_dseg.json")).read_text()
    )
    enh = record["Enhancement"]
    assert enh["ContrastEnhancedImage"].endswith("sub-01_ce-gadolinium_T1w.nii.gz")
    assert enh["PreContrastImage"].endswith("sub-01_T1w.nii.gz")
    assert enh["Options"]["threshold"] == 1.2
    assert enh["NumberOfEnhancingLesions"] == int(got.loc[got["sub"] == "sub-01", "truth"].sum())


@pytest.mark.integration
def test_no_contrast_image_gives_na_and_group_counts(gd_run):
    ds, out = gd_run
    table = pd.read_csv(
        out / "sub-05" / "sub-05_desc-lesions_stats.tsv",
        sep="\t",
        na_values="n/a",
        keep_default_na=False,
    )
    assert len(table) > 0
    assert table[["enhancement_ratio", "enhancing_fraction", "enhancing"]].isna().all().all()
    record = json.loads(
        next((out / "sub-05" / "anat").glob("*_desc-lesions_dseg.json")).read_text()
    )
    assert "Enhancement" not in record
    counts = pd.read_csv(out / "group_desc-lesioncounts_stats.tsv", sep="\t", na_values="n/a")
    c = counts.set_index("participant_id")
    truth = {
        sub: len(json.loads(_truth_side(ds, sub).read_text())["EnhancingLesions"])
        for sub in ("sub-01", "sub-03")
    }
    assert c.loc["sub-01", "n_enhancing"] == truth["sub-01"]
    assert c.loc["sub-03", "n_enhancing"] == truth["sub-03"]
    assert c.loc["sub-02", "n_enhancing"] == 0  # control: a ce- T1w and no lesion
    assert np.isnan(c.loc["sub-05", "n_enhancing"])  # no ce- T1w: unknown
    assert c.loc["sub-01", "lesion_load_ml"] == pytest.approx(
        c.loc["sub-01", "lesion_volume_mm3"] / 1000
    )
    summary = pd.read_csv(out / "group_desc-summary_stats.tsv", sep="\t", na_values="n/a")
    row = summary[summary["map"] == "enhancing_lesion_count"].iloc[0]
    assert (row["n_subjects"], row["n_patients"], row["n_controls"]) == (3, 2, 1)
    assert row["mean_patients"] == pytest.approx((truth["sub-01"] + truth["sub-03"]) / 2)


# --- real data: open-ms-data patient26 -------------------------------------------------------


@pytest.mark.skipif(
    not (PATIENT / "patient26" / "T1POST.nii.gz").is_file(),
    reason="open-ms-data patient26 not available",
)
def test_real_patient_runs_with_finite_ratios(capsys):
    from bids_app import regions, segmentation

    d = PATIENT / "patient26"
    pre, post = _load(d / "T1.nii.gz"), _load(d / "T1POST.nii.gz")
    gold = _load(d / "GOLD_STANDARD_lesions.nii.gz") > 0
    brain = _load(d / "FLAIR.nii.gz") > 0  # skull-stripped
    tissue, _ = segmentation.segment_tissue(pre, brain, method="multiotsu", exclude=gold)
    labels = regions.lesion_labels(gold.astype(float), zooms=(1, 1, 1), connectivity=26)
    nawm = regions.build_regions(tissue, labels > 0, zooms=(1, 1, 1), brain_mask=brain)["NAWM"]
    table, record = lesion_enhancement(labels, post, nawm > 0, pre, zooms=(1, 1, 1))
    post_only, rec_post = lesion_enhancement(labels, post, nawm > 0, None, zooms=(1, 1, 1))
    with capsys.disabled():
        print(
            f"\npatient26: {len(table)} consensus lesions, "
            f"{record['NumberOfEnhancingLesions']} enhancing (pre/post ratio), "
            f"{rec_post['NumberOfEnhancingLesions']} (post only); NAWM fraction above "
            f"threshold {record['NAWMFractionAboveThreshold']:.4f}; ratio range "
            f"{table.enhancement_ratio.min():.3f}-{table.enhancement_ratio.max():.3f}; "
            f"enhanced fraction max {table.enhancing_fraction.max():.3f}"
        )
    assert len(table) == 19  # the data README's count (26-connectivity)
    assert np.isfinite(table[["enhancement_ratio", "enhancing_fraction", "enhancing"]]).all().all()
    assert np.isfinite(post_only["enhancement_ratio"]).all()
    assert table["enhancement_ratio"].between(0.5, 3.0).all()
    assert record["NAWMFractionAboveThreshold"] < 0.05


def test_lesion_table_repeats_the_enhancement_on_every_map_row():
    from bids_app.lesions import LESION_COLUMNS, lesion_table

    labels, pre, post = _phantom()
    enh, _ = lesion_enhancement(labels, post, labels == 0, pre, zooms=(1, 1, 1))
    maps = {"a": pre, "b": post}
    df = lesion_table(labels, maps, affine=np.eye(4), zooms=(1, 1, 1), enhancement=enh)
    assert tuple(df.columns) == LESION_COLUMNS
    assert df.groupby("lesion_id")["enhancing"].agg(list).to_dict() == {
        1: [1.0, 1.0],
        2: [0.0, 0.0],
    }
    assert df.loc[df.lesion_id == 1, "enhancement_ratio"].to_numpy() == pytest.approx(1.5)
    none = lesion_table(labels, maps, affine=np.eye(4), zooms=(1, 1, 1))
    assert none[["enhancement_ratio", "enhancing_fraction", "enhancing"]].isna().all().all()
