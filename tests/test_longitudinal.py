"""Longitudinal lesion tracking: matching rules, session dates, and a synthetic 3-session run."""

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app._sessions import session_dates
from bids_app.errors import MetadataError
from bids_app.group import run_group
from bids_app.lesion_match import classify_change, match_lesions
from bids_app.longitudinal import longitudinal_table
from bids_app.schema import LESION_COLUMNS

logger = logging.getLogger(__name__)


def _box(shape, *boxes):
    lab = np.zeros(shape, np.int16)
    for label, sl in boxes:
        lab[sl] = label
    return lab


def test_match_labels_every_change():
    s = (30, 10, 10)
    a = _box(s, (1, np.s_[0:2, 0:2, 0:2]), (2, np.s_[5:7, 0:2, 0:2]),
             (3, np.s_[10:12, 0:2, 0:2]), (4, np.s_[15:17, 0:2, 0:2]),
             (5, np.s_[20:22, 0:3, 0:3]), (6, np.s_[20:22, 5:8, 0:3]))  # fmt: skip
    b = _box(s, (7, np.s_[0:2, 0:2, 0:2]),  # 1 stable (8 voxels)
             (3, np.s_[5:8, 0:3, 0:2]),  # 2 enlarging: 8 -> 18 voxels
             (1, np.s_[10:11, 0:2, 0:2]),  # 3 shrinking: 8 -> 4 (-50 %, 4 voxels)
             # 4 resolved; 5 and 6 merge into one lesion of 2 x 3 x 8 = 48 > 18 + 18
             (2, np.s_[20:22, 0:8, 0:3]),
             (4, np.s_[25:27, 0:2, 0:2]))  # new  # fmt: skip
    matches = {(m.ids_from, m.ids_to): m for m in match_lesions(a, b)}
    assert matches[(1,), (7,)].change == "stable"
    assert matches[(2,), (3,)].change == "enlarging"
    assert matches[(3,), (1,)].change == "shrinking"
    assert matches[(4,), ()].change == "resolved"
    assert matches[(), (4,)].change == "new"
    merged = matches[(5, 6), (2,)]
    assert (merged.voxels_from, merged.voxels_to, merged.change) == (36, 48, "enlarging")
    # the 3-voxel rule: +50 % but only 2 voxels more is stable
    assert classify_change(4, 6, voxel=1.0) == "stable"
    assert classify_change(4, 6, voxel=1.0, change_voxels=1) == "enlarging"
    with pytest.raises(ValueError, match="one grid"):
        match_lesions(a, b[:-1])


def test_session_dates(tmp_path):
    sub = tmp_path / "sub-01"
    (sub / "ses-b").mkdir(parents=True)
    (sub / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-a\t2020-01-01T10:00:00\nses-c\tn/a\n"
    )
    (sub / "ses-b" / "sub-01_ses-b_scans.tsv").write_text(
        "filename\tacq_time\nanat/x_T1w.nii.gz\t2021-07-02T11:00:00\n"
        "anat/x_FLAIR.nii.gz\t2021-07-02T10:30:00\n"
    )
    dates = session_dates(tmp_path, "01")
    assert set(dates) == {"a", "b"}
    assert dates["b"] == pd.Timestamp("2021-07-02T10:30:00")
    (sub / "sub-01_sessions.tsv").write_text("session_id\tacq_time\nses-a\tyesterday\n")
    with pytest.raises(MetadataError, match="acq_time"):
        session_dates(tmp_path, "01")


def test_change_per_year_is_the_slope():
    values = pd.DataFrame(
        {"participant_id": "sub-01", "session_id": ["ses-1", "ses-2", "ses-3"],
         "map": "MTRmap", "units": "percent", "region": "NAWM", "mean": [30.0, 29.5, 29.0]}
    )  # fmt: skip
    t0 = pd.Timestamp("2020-01-01")
    dates = {"sub-01": {s: t0 + pd.Timedelta(days=365.25 * k) for k, s in enumerate("123")}}
    row = longitudinal_table(values, dates).iloc[0]
    assert row["change_per_year"] == pytest.approx(-0.5)
    assert row["years"] == pytest.approx(2.0)
    assert row["change"] == pytest.approx(-1.0)
    assert np.isnan(longitudinal_table(values, {}).iloc[0]["change_per_year"])


def test_lesion_only_changes_from_images(tmp_path):
    """No maps, no region tables: the group level still tracks the lesions."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    s = (12, 6, 6)
    labels = {
        "1": _box(s, (1, np.s_[0:2, 0:2, 0:2]), (2, np.s_[5:7, 0:2, 0:2])),
        "2": _box(s, (1, np.s_[0:2, 0:2, 0:2]), (2, np.s_[9:11, 0:2, 0:2])),
    }
    for ses, lab in labels.items():
        anat = out / "sub-01" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2, 2, 1])),
                 anat / f"sub-01_ses-{ses}_space-FLAIR_desc-lesions_dseg.nii.gz")  # fmt: skip
        rows = [{"participant_id": "sub-01", "session_id": f"ses-{ses}", "lesion_id": k,
                 "volume_mm3": 64.0, "location": "deep_white_matter"} for k in (1, 2)]  # fmt: skip
        pd.DataFrame(rows, columns=list(LESION_COLUMNS)).to_csv(
            out / "sub-01" / f"ses-{ses}" / f"sub-01_ses-{ses}_desc-lesions_stats.tsv",
            sep="\t", index=False, na_rep="n/a",
        )  # fmt: skip
    assert run_group(bids, out, reports=False) == 0
    ch = pd.read_csv(out / "sub-01" / "sub-01_desc-lesionchanges_stats.tsv", sep="\t")
    assert sorted(ch["change"]) == ["new", "resolved", "stable"]
    assert ch["map"].isna().all()
    assert (out / "group_desc-lesionchanges_stats.tsv").is_file()
    lon = pd.read_csv(out / "group_desc-longitudinal_stats.tsv", sep="\t")
    count = lon[lon["map"] == "lesion_count"].iloc[0]
    assert (count["value_first"], count["value_last"]) == (2, 2)


# --- a synthetic 3-session patient through participant (MTR only) and group -------------


@pytest.fixture(scope="module")
def longitudinal_run(tmp_path_factory):
    from bids_app.cli.run import main
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("longitudinal")
    ds, out = root / "ds", root / "out"
    assert synth([str(ds), "--subjects", "1", "--sessions", "3", "--seed", "3", "--series"]) == 0
    deriv = ds / "derivatives"
    code = main([str(ds), str(out), "participant", "group", "--models", "mtr",
                 "--derivatives", f"lesions={deriv / 'lesions'}", f"tissue={deriv / 'tissue'}",
                 "--skip-bids-validation", "--no-reports"])  # fmt: skip
    assert code == 0
    return ds, out


def _truth_of_app_labels(ds, out, ses):
    """App lesion label -> true lesion index (majority of the true labels it covers)."""
    app = next((out / "sub-01" / f"ses-{ses}" / "anat").glob("*_desc-lesions_dseg.nii.gz"))
    truth = (
        ds / f"derivatives/truth/sub-01/ses-{ses}/anat/sub-01_ses-{ses}_desc-lesions_dseg.nii.gz"
    )
    a = np.asarray(nib.load(app).dataobj).astype(int)
    t = np.asarray(nib.load(truth).dataobj).astype(int)
    return {int(k): int(np.bincount(t[a == k]).argmax()) for k in np.unique(a[a > 0])}


@pytest.mark.integration
def test_every_synthetic_lesion_change_is_labelled(longitudinal_run):
    ds, out = longitudinal_run
    truth = pd.read_csv(ds / "derivatives/truth/sub-01/sub-01_desc-lesionchanges_stats.tsv",
                        sep="\t", na_values="n/a")  # fmt: skip
    ids = {"lesion_id_from": str, "lesion_id_to": str}
    app = pd.read_csv(out / "sub-01" / "sub-01_desc-lesionchanges_stats.tsv", sep="\t",
                      na_values="n/a", dtype=ids)  # fmt: skip
    assert {"new", "enlarging", "shrinking", "stable", "resolved"} <= set(truth["change"])
    maps = {s: _truth_of_app_labels(ds, out, s) for s in ("01", "02", "03")}
    found = {}
    for row in app.drop_duplicates(["session_from", "session_to", "lesion_id_from",
                                    "lesion_id_to"]).itertuples():  # fmt: skip
        ids, ses = (row.lesion_id_to, row.session_to[4:])
        if pd.isna(ids):
            ids, ses = row.lesion_id_from, row.session_from[4:]
        index = {maps[ses][int(i)] for i in ids.split("+")}
        assert len(index) == 1  # no merged true lesions
        found[(index.pop(), row.session_from, row.session_to)] = row
    for t in truth.itertuples():
        got = found[(t.index, t.session_from, t.session_to)]
        assert got.change == t.change, (t.name, t.course, t.session_from)
    assert len(found) == len(truth)


@pytest.mark.integration
def test_mtr_recovery_of_remyelinating_lesions(longitudinal_run, capsys):
    ds, out = longitudinal_run
    truth = pd.read_csv(ds / "derivatives/truth/sub-01/sub-01_desc-lesionchanges_stats.tsv",
                        sep="\t", na_values="n/a")  # fmt: skip
    app = pd.read_csv(out / "group_desc-lesionchanges_stats.tsv", sep="\t", na_values="n/a",
                      dtype={"lesion_id_from": str, "lesion_id_to": str})  # fmt: skip
    app = app[app["map"] == "MTRmap"]
    remy = truth[truth["course"] == "remyelinating"]
    assert len(remy) == 2
    assert (remy["MTR_change"] > 1.0).all()
    for t in remy.itertuples():
        ses = t.session_to[4:]
        label = next(k for k, v in _truth_of_app_labels(ds, out, ses).items() if v == t.index)
        row = app[(app["session_to"] == t.session_to) & (app["lesion_id_to"] == str(label))]
        (got,) = row["change_mean"].to_numpy()
        with capsys.disabled():
            print(f"\n{t.name} {t.session_from}->{t.session_to}: MTR change {got:.3f} pp, "
                  f"truth {t.MTR_change:.3f} pp")  # fmt: skip
        assert got == pytest.approx(t.MTR_change, abs=1.0)  # acceptance: 1 percentage point
        assert row["recovery_fraction"].iloc[0] > 0
    lon = pd.read_csv(out / "group_desc-longitudinal_stats.tsv", sep="\t", na_values="n/a")
    nawm = lon[(lon["map"] == "MTRmap") & (lon["region"] == "NAWM")].iloc[0]
    assert nawm["years"] == pytest.approx(2.0, abs=0.01)
    assert abs(nawm["change_per_year"]) < 0.2  # the synthetic NAWM does not change
