"""Group level: tables from participant outputs only, participants.tsv join, Cohen's d."""

import numpy as np
import pandas as pd
import pytest

from bids_app.errors import NoInputsError
from bids_app.group import COUNT_COLUMNS, cohens_d, group_role, lesion_counts, run_group
from bids_app.schema import LESION_COLUMNS
from bids_app.stages.tables import REGION_COLUMNS


def _participant_table(out, sub, means):
    rows = [
        {
            "participant_id": sub,
            "session_id": None,
            "map": "T1map",
            "units": "s",
            "space": "FLAIR",
            "region": region,
            "n_voxels": 10,
            "volume_mm3": 80.0,
            "mean": m,
            "median": m,
            "std": 0.0,
            "p05": m,
            "p95": m,
            "n_invalid": 0,
        }
        for region, m in means.items()
    ]
    d = out / sub / "anat"
    d.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(REGION_COLUMNS)).to_csv(
        out / sub / f"{sub}_desc-regions_stats.tsv", sep="\t", index=False, na_rep="n/a"
    )


def test_group_tables_and_effect_size(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "participant_id\tgroup\tage\nsub-01\tpatient\t30\nsub-02\tpatient\t40\n"
        "sub-03\tcontrol\t35\nsub-04\tcontrol\t33\n"
    )
    out = tmp_path / "out"
    nawm = {"sub-01": 0.90, "sub-02": 0.92, "sub-03": 0.85, "sub-04": 0.86}
    for sub, v in nawm.items():
        _participant_table(out, sub, {"NAWM": v, "lesion": 1.3})
    assert run_group(bids, out, reports=True) == 0
    regions = pd.read_csv(out / "group_desc-regions_stats.tsv", sep="\t")
    assert list(regions.columns[: len(REGION_COLUMNS)]) == list(REGION_COLUMNS)
    assert {"group", "age"} <= set(regions.columns)
    assert regions["participant_id"].is_monotonic_increasing
    summary = pd.read_csv(out / "group_desc-summary_stats.tsv", sep="\t")
    row = summary[(summary["map"] == "T1map") & (summary["region"] == "NAWM")].iloc[0]
    assert row["n_patients"] == 2
    assert row["n_controls"] == 2
    assert row["mean_patients"] == pytest.approx(0.91)
    assert row["mean_controls"] == pytest.approx(0.855)
    pooled = np.sqrt((np.var([0.9, 0.92], ddof=1) + np.var([0.85, 0.86], ddof=1)) / 2)
    assert row["cohens_d"] == pytest.approx((0.91 - 0.855) / pooled)
    assert (out / "group.html").is_file()


def test_group_without_participant_outputs_is_66(tmp_path):
    with pytest.raises(NoInputsError):
        run_group(tmp_path, tmp_path / "empty")


def test_group_roles_and_d():
    assert group_role("Patient") == "patient"
    assert group_role("HC") == "control"
    assert group_role("sibling") is None
    assert np.isnan(cohens_d(np.array([1.0]), np.array([2.0, 3.0])))


def _lesion_rows(sub, lesions, maps):
    """Per-lesion table rows: lesions = [(id, volume, location, prl flag)], one row per map."""
    rows = []
    for lid, vol, loc, prl in lesions:
        for m in maps:
            chi = m == "Chimap"
            rows.append(
                {"participant_id": sub, "session_id": None, "lesion_id": lid,
                 "volume_mm3": vol, "centroid_x": 0.0, "centroid_y": 0.0, "centroid_z": 0.0,
                 "location": loc, "map": m, "units": "ppm" if chi else "s", "mean": 1.0,
                 "median": 1.0, "std": 0.0, "core_mean": 1.0, "rim_mean": 1.0,
                 "rim_index": 0.8 if chi and prl else 0.1 if chi else None,
                 "prl_candidate": float(prl) if chi else None}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=list(LESION_COLUMNS))


def test_group_lesion_counts_per_participant(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "participant_id\tgroup\nsub-01\tpatient\nsub-02\tpatient\nsub-03\tcontrol\n"
    )
    out = tmp_path / "out"
    for sub in ("sub-01", "sub-02", "sub-03"):
        _participant_table(out, sub, {"NAWM": 0.9})
    # sub-01 and sub-03 have a Chimap (region rows of a map named Chimap)
    for sub in ("sub-01", "sub-03"):
        reg = pd.read_csv(out / sub / f"{sub}_desc-regions_stats.tsv", sep="\t")
        reg.assign(map="Chimap", units="ppm").to_csv(
            out / sub / f"{sub}_desc-regions_stats.tsv", sep="\t", index=False, na_rep="n/a",
            mode="a", header=False,
        )  # fmt: skip
    tables = {
        "sub-01": _lesion_rows(
            "sub-01",
            [
                (1, 10.0, "periventricular", True),
                (2, 5.0, "infratentorial", False),
                (3, 2.5, "periventricular", True),
            ],
            ["Chimap", "T1map"],
        ),
        "sub-02": _lesion_rows("sub-02", [(1, 4.0, "juxtacortical", False)], ["T1map"]),
        "sub-03": _lesion_rows("sub-03", [], ["Chimap"]),  # header only: no lesion
    }
    for sub, t in tables.items():
        t.to_csv(out / sub / f"{sub}_desc-lesions_stats.tsv", sep="\t", index=False,
                 na_rep="n/a")  # fmt: skip
    assert run_group(bids, out, reports=False) == 0
    counts = pd.read_csv(out / "group_desc-lesioncounts_stats.tsv", sep="\t", na_values="n/a")
    assert list(counts.columns[: len(COUNT_COLUMNS)]) == list(COUNT_COLUMNS)
    assert "group" in counts.columns
    c = counts.set_index("participant_id")
    assert c["n_lesions"].tolist() == [3, 1, 0]
    assert c["lesion_volume_mm3"].tolist() == [17.5, 4.0, 0.0]
    assert c.loc["sub-01", "n_periventricular"] == 2
    assert c.loc["sub-01", "n_infratentorial"] == 1
    assert c.loc["sub-02", "n_juxtacortical"] == 1
    assert c.loc["sub-01", "n_prl_candidates"] == 2
    assert np.isnan(c.loc["sub-02", "n_prl_candidates"])  # no Chimap: unknown, not 0
    assert c.loc["sub-03", "n_prl_candidates"] == 0  # Chimap, no lesion
    direct = lesion_counts(
        pd.concat(
            [pd.read_csv(out / s / f"{s}_desc-regions_stats.tsv", sep="\t") for s in tables]
        ),
        pd.concat([t for t in tables.values() if not t.empty]),
    )
    assert direct["n_prl_candidates"].fillna(-1).tolist() == [2, -1, 0]
