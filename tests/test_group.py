"""Group level: tables from participant outputs only, participants.tsv join, Cohen's d."""

import numpy as np
import pandas as pd
import pytest

from bids_app.errors import NoInputsError
from bids_app.group import cohens_d, group_role, run_group
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
