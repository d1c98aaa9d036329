"""Group statistics against seeded table-level simulations and hand-checked examples."""

import logging
import time

import numpy as np
import pandas as pd
import pytest

from bids_app.cli.parser import parse_args
from bids_app.cli.run import build_config
from bids_app.errors import MetadataError
from bids_app.group import run_group
from bids_app.group_norms import zscores
from bids_app.group_options import GroupOptions
from bids_app.group_stats import cohens_d_ci, fdr_bh, summary_table
from bids_app.schema import LESION_COLUMNS, REGION_COLUMNS

logger = logging.getLogger(__name__)


def _long(values, maps=("MTRmap",), region="NAWM"):
    """Long region rows from {participant: value} (one map, one region, no session)."""
    return pd.DataFrame(
        [
            {
                "participant_id": p,
                "session_id": None,
                "map": m,
                "units": "percent",
                "region": region,
                "mean": v,
            }
            for m in maps
            for p, v in values.items()
        ]
    )


def _simulate(n_pat, n_con, d_true, rng, *, age_effect=0.0, age_shift=0.0):
    """participants.tsv and NAWM MTR means: controls N(31, 1), patients 31 + d_true."""
    rows, values = [], {}
    for k in range(n_pat + n_con):
        pat = k < n_pat
        age = rng.normal(40 + (age_shift if pat else 0.0), 8)
        sex = rng.choice(["F", "M"])
        pid = f"sub-{k:04d}"
        rows.append({"participant_id": pid, "group": "patient" if pat else "control",
                     "age": age, "sex": sex})  # fmt: skip
        values[pid] = 31.0 + (d_true if pat else 0.0) + age_effect * (age - 40) + rng.normal()
    return pd.DataFrame(rows), values


def test_cohens_d_matches_truth_for_large_groups():
    # 2000 + 2000 subjects: the SE of d is sqrt(2/2000 + d^2/8000) = 0.033, so 0.1 is 3 SE
    rng = np.random.default_rng(20240601)
    for d_true in (-0.8, -0.3, 0.0):
        part, values = _simulate(2000, 2000, d_true, rng)
        row = summary_table(_long(values), part, GroupOptions()).iloc[0]
        assert row["cohens_d"] == pytest.approx(d_true, abs=0.1)
        assert row["cohens_d_ci_low"] < d_true < row["cohens_d_ci_high"]
        logger.info("d_true %.2f: d %.3f [%.3f, %.3f]", d_true, row["cohens_d"],
                    row["cohens_d_ci_low"], row["cohens_d_ci_high"])  # fmt: skip
        if d_true != 0:
            assert row["welch_p"] < 1e-6
            assert row["mannwhitney_p"] < 1e-6


def test_ci_and_welch_by_hand():
    low, high = cohens_d_ci(1.0, 10, 10)
    se = np.sqrt(20 / 100 + 1 / 40)  # Hedges & Olkin: (n1+n2)/(n1 n2) + d^2/(2(n1+n2))
    assert (low, high) == pytest.approx((1 - 1.959964 * se, 1 + 1.959964 * se), rel=1e-6)
    pat, con = [1.0, 2.0, 4.0, 7.0], [0.0, 1.0, 1.0, 2.0, 1.5]
    values = {f"sub-p{i}": v for i, v in enumerate(pat)} | {
        f"sub-c{i}": v for i, v in enumerate(con)
    }
    part = pd.DataFrame(
        {"participant_id": list(values), "group": ["patient"] * 4 + ["control"] * 5}
    )
    row = summary_table(_long(values), part, GroupOptions()).iloc[0]
    va, vb = np.var(pat, ddof=1) / 4, np.var(con, ddof=1) / 5
    assert row["welch_t"] == pytest.approx((np.mean(pat) - np.mean(con)) / np.sqrt(va + vb))
    assert row["welch_df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 4))


def test_fdr_hand_checked_example():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> m p / i = 0.02, 0.02, 0.04, 0.04 (already monotone)
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    q = fdr_bh(p)
    assert q[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert np.isnan(q[4])
    # step-up: 0.04 at rank 2 of 3 would be 0.06, but the rank-3 value 0.045 caps it
    assert fdr_bh([0.045, 0.04, 0.001]) == pytest.approx([0.045, 0.045, 0.003])


def test_fdr_family_is_the_whole_table():
    rng = np.random.default_rng(3)
    part, values = _simulate(30, 30, -0.5, rng)
    maps = ("MTRmap", "T1map", "MTsat")
    long = _long(values, maps)
    long["mean"] = long["mean"] + rng.normal(0, 1, len(long))
    table = summary_table(long, part, GroupOptions())
    p = table["welch_p"].to_numpy()
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    expected = np.empty_like(p)
    expected[order] = np.minimum.accumulate(ranked[::-1])[::-1]
    assert table["welch_q"].to_numpy() == pytest.approx(np.minimum(expected, 1))


def test_covariate_adjustment_removes_an_age_confound():
    # patients 15 years older, value falls 0.1 per year, no true group effect
    rng = np.random.default_rng(11)
    part, values = _simulate(400, 400, 0.0, rng, age_effect=-0.1, age_shift=15.0)
    opts = GroupOptions(covariates=("age", "sex"))
    row = summary_table(_long(values), part, opts).iloc[0]
    assert row["cohens_d"] < -0.8  # confounded: 1.5 units / sqrt(1 + 0.64) SD
    # SE of the adjusted difference ~ sqrt(2/400) / sqrt(1 - r^2) ~ 0.08: 0.25 is 3 SE
    assert row["adjusted_difference"] == pytest.approx(0.0, abs=0.25)
    assert row["covariates"] == "age+sex"
    assert row["n_adjusted"] == 800
    part2, values2 = _simulate(400, 400, -1.0, rng, age_effect=-0.1, age_shift=15.0)
    row2 = summary_table(_long(values2), part2, opts).iloc[0]
    assert row2["adjusted_difference"] == pytest.approx(-1.0, abs=0.25)
    assert row2["adjusted_d"] == pytest.approx(-1.0, abs=0.25)  # residual SD 1
    assert row2["adjusted_p"] < 1e-10
    with pytest.raises(MetadataError, match="height"):
        summary_table(_long(values), part, GroupOptions(covariates=("height",)))


def test_zscores_by_hand():
    con = [1.0, 2.0, 3.0, 4.0, 5.0]
    sd = np.std(con, ddof=1)
    values = {f"sub-c{i}": v for i, v in enumerate(con)} | {"sub-p0": 3.0 + 2 * sd}
    part = pd.DataFrame({"participant_id": list(values), "group": ["HV"] * 5 + ["RRMS"]})
    long = _long(values).merge(part, on="participant_id")
    opts = GroupOptions(patient_labels=("rrms",), control_labels=("hv",))
    z = zscores(long, opts).set_index("participant_id")
    assert z.loc["sub-p0", "z"] == pytest.approx(2.0)
    assert z.loc["sub-p0", "group"] == "patient"
    others = [2.0, 3.0, 4.0, 5.0]  # control sub-c0 against the other four
    assert z.loc["sub-c0", "z"] == pytest.approx((1 - np.mean(others)) / np.std(others, ddof=1))
    assert z.loc["sub-c0", "n_controls"] == 4


def _write_tables(out, part, rng, *, maps, regions, site_offset=None):
    """One region table per participant (table-level simulation)."""
    for row in part.itertuples():
        pat = row.group == "patient"
        rows = []
        for m in maps:
            for r in regions:
                v = 31.0 - (0.8 if pat and r == "NAWM" else 0.0) + rng.normal()
                v += site_offset.get(row.site, 0.0) if site_offset else 0.0
                rows.append({"participant_id": row.participant_id, "session_id": None,
                             "map": m, "units": "percent", "space": "FLAIR", "region": r,
                             "n_voxels": 100, "volume_mm3": 800.0, "mean": v, "median": v,
                             "std": 1.0, "p05": v - 2, "p95": v + 2, "n_invalid": 0})  # fmt: skip
        d = out / row.participant_id
        d.mkdir(parents=True)
        pd.DataFrame(rows, columns=list(REGION_COLUMNS)).to_csv(
            d / f"{row.participant_id}_desc-regions_stats.tsv", sep="\t", index=False, na_rep="n/a"
        )


def _participants(n, rng):
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{k:03d}" for k in range(n)],
            "group": ["patient" if k % 2 == 0 else "control" for k in range(n)],
            "age": rng.integers(20, 60, n),
            "sex": rng.choice(["F", "M"], n),
            "site": rng.choice(["A", "B"], n),
        }
    )


def test_200_participants_through_the_group_level(tmp_path, capsys):
    rng = np.random.default_rng(200)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    part = _participants(200, rng)
    part.to_csv(bids / "participants.tsv", sep="\t", index=False)
    maps = ("MTRmap", "T1map", "R2starmap", "MTsat", "MWFmap", "Chimap")
    regions = ("lesion", "NAWM", "NAGM", "WM", "GM", "CSF", "perilesional_1mm")
    _write_tables(out, part, rng, maps=maps, regions=regions)
    start = time.perf_counter()
    assert run_group(bids, out, reports=False, options={"covariates": ["age", "sex"]}) == 0
    took = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\n200 participants x {len(maps)} maps x {len(regions)} regions: group {took:.1f} s"
        )
    summary = pd.read_csv(out / "group_desc-summary_stats.tsv", sep="\t", na_values="n/a")
    assert len(summary) == len(maps) * len(regions) + 2  # + lesion_count, lesion_load
    nawm = summary[summary["region"] == "NAWM"]
    # d = -0.8 with 100 + 100 subjects: SE 0.15
    assert nawm["cohens_d"].to_numpy() == pytest.approx(-0.8, abs=0.45)
    assert (nawm["welch_q"] < 0.05).all()
    z = pd.read_csv(out / "group_desc-zscores_stats.tsv", sep="\t", na_values="n/a")
    assert len(z) == 200 * len(maps) * 2
    assert z["z_adjusted"].notna().all()
    patients = z[(z["group"] == "patient") & (z["region"] == "NAWM")]
    assert patients["z"].mean() == pytest.approx(-0.8, abs=0.2)


def test_combat_removes_a_site_offset(tmp_path):
    pytest.importorskip("neuroCombat", reason="neuroCombat not installed (optional)")
    rng = np.random.default_rng(5)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    part = _participants(120, rng)
    part.to_csv(bids / "participants.tsv", sep="\t", index=False)
    _write_tables(out, part, rng, maps=("MTRmap",), regions=("NAWM", "NAGM", "WM", "GM"),
                  site_offset={"B": 3.0})  # fmt: skip
    assert run_group(bids, out, reports=False, options={"harmonize": "combat"}) == 0
    reg = pd.read_csv(out / "group_desc-regions_stats.tsv", sep="\t")
    gm = reg[reg["region"] == "GM"]
    raw = gm.groupby("site")["mean"].mean()
    harm = gm.groupby("site")["mean_harmonized"].mean()
    assert raw["B"] - raw["A"] == pytest.approx(3.0, abs=0.5)
    assert harm["B"] - harm["A"] == pytest.approx(0.0, abs=0.2)
    summary = pd.read_csv(out / "group_desc-summary_stats.tsv", sep="\t")
    row = summary[(summary["region"] == "NAWM") & (summary["map"] == "MTRmap")].iloc[0]
    assert row["harmonization"] == "combat"
    assert row["cohens_d"] == pytest.approx(-0.8, abs=0.45)  # group effect preserved


def test_lesion_only_study(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "participant_id\tgroup\nsub-01\tpatient\nsub-02\tpatient\nsub-03\tcontrol\n"
    )
    for sub, n in (("sub-01", 3), ("sub-02", 1), ("sub-03", 0)):
        rows = [{"participant_id": sub, "session_id": None, "lesion_id": k + 1,
                 "volume_mm3": 10.0 * (k + 1), "location": "periventricular"}
                for k in range(n)]  # fmt: skip
        (out / sub).mkdir(parents=True)
        pd.DataFrame(rows, columns=list(LESION_COLUMNS)).to_csv(
            out / sub / f"{sub}_desc-lesions_stats.tsv", sep="\t", index=False, na_rep="n/a"
        )
    assert run_group(bids, out, reports=True) == 0
    counts = pd.read_csv(out / "group_desc-lesioncounts_stats.tsv", sep="\t")
    assert counts["n_lesions"].tolist() == [3, 1, 0]
    summary = pd.read_csv(out / "group_desc-summary_stats.tsv", sep="\t")
    load = summary[summary["map"] == "lesion_load"].iloc[0]
    assert load["mean_patients"] == pytest.approx((60.0 + 10.0) / 2)
    assert load["n_controls"] == 1


def test_cli_options_reach_the_config(tmp_path):
    (tmp_path / "bids").mkdir()
    ns = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "group",
                     "--covariates", "age", "sex", "--group-column", "dx",
                     "--patient-labels", "RRMS", "--lesion-change-fraction", "0.5"])  # fmt: skip
    opts = GroupOptions.from_mapping(build_config(ns).group_options)
    assert opts.covariates == ("age", "sex")
    assert opts.group_column == "dx"
    assert opts.role("rrms") == "patient"
    assert opts.change_fraction == 0.5
    assert "[group_options]" in build_config(ns).to_toml()
