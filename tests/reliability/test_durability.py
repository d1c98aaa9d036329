"""Isolation and durability of the participant level (CONTRACT 5; DESIGN 2.4).

* One subject's failure leaves the others' outputs complete; the exit code is the highest of
  the subjects' codes; the input dataset is never modified.
* A run killed (SIGKILL) at any moment leaves no published subject folder that is incomplete
  (a ``sub-*`` folder holds exactly the files of an uninterrupted run, or does not exist), and
  a rerun without ``--overwrite`` keeps what was published, removes what the killed run left
  in staging and ends with the same files as an uninterrupted run.
* Reruns are byte-identical. Only ``logs/run-<time>-<id>/`` differs between runs (documented
  in :mod:`tests.reliability._durability_helpers`).
* Participant jobs started together on one output directory (two subjects, and the same
  subject twice) all succeed and leave a complete output that the group level reads.

The dataset is ``msqmri-synth --size tiny --subjects 2 --seed 1`` (a full run: 2 subjects,
every model, reports); it and the uninterrupted reference run are made once per session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from bids_app.errors import OutputError
from bids_app.staging import STAGING, remove_stale_stages
from bids_app.staging import close_stage as _close_stage
from bids_app.staging import open_stage as _open_stage
from bids_app.staging import publish as _publish
from tests.conftest import tree_digest
from tests.reliability._durability_helpers import (
    PROCESS_TIMEOUT,
    build_once,
    differences,
    kill,
    run_app,
    snapshot,
    staged_table_exists,
    start_app,
    stderr_of,
    subject_folders,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def bids(tmp_path_factory) -> Path:
    """The tiny two-subject dataset (read only; tests copy it before changing it)."""
    from bids_app.synth.cli import main as synth

    def build(root: Path) -> dict:
        assert (
            synth([str(root), "--size", "tiny", "--subjects", "2", "--seed", "1", "--series"]) == 0
        )
        return {}

    root, _ = build_once(tmp_path_factory, "durability-bids", build)
    return root


@pytest.fixture(scope="session")
def reference(bids, tmp_path_factory) -> dict:
    """An uninterrupted run: snapshots after the participant level and after the group."""

    def build(out: Path) -> dict:
        before = tree_digest(bids)
        assert run_app(bids, out, "participant") == 0
        participant = snapshot(out)
        assert run_app(bids, out, "group") == 0
        assert tree_digest(bids) == before
        return {"participant": participant, "full": snapshot(out)}

    out, info = build_once(tmp_path_factory, "durability-reference", build)
    return {"out": out, **info}


def _only(files: dict[str, str], prefix: str) -> dict[str, str]:
    return {k: v for k, v in files.items() if k.startswith(prefix)}


def _group_participants(out: Path) -> list[str]:
    table = pd.read_csv(out / "group_desc-regions_stats.tsv", sep="\t")
    return sorted(table["participant_id"].unique())


# ----------------------------------------------------------------------------- isolation


def test_failed_subject_keeps_the_others_complete(bids, reference, tmp_path):
    broken = Path(shutil.copytree(bids, tmp_path / "bids"))
    sidecar = broken / "sub-02" / "anat" / "sub-02_flip-1_VFA.json"
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTimeExcitation"] = 15  # milliseconds where BIDS wants seconds
    sidecar.write_text(json.dumps(meta, indent=2))
    before = tree_digest(broken)
    out = tmp_path / "out"

    code = run_app(broken, out, "participant", "group")

    assert code == 65  # max(0 for sub-01, 65 for sub-02, 0 for the group level)
    assert tree_digest(broken) == before
    assert [p.name for p in subject_folders(out)] == ["sub-01"]
    assert not (out / "sub-02.html").exists()
    found, expected = _only(snapshot(out), "sub-01"), _only(reference["participant"], "sub-01")
    assert found == expected, differences(found, expected)
    assert _group_participants(out) == ["sub-01"]
    (log,) = (out / "logs").glob("run-*/msqmri.log")
    lines = log.read_text().splitlines()
    failure = [line for line in lines if " ERROR bids_app.participant" in line]
    assert len(failure) == 1
    # the group level names the failure too, and nothing else is an error
    (group,) = [line for line in lines if " ERROR " in line and line not in failure]
    assert "sub-02" in group
    assert "bids_app.group" in group
    assert "sub-02" in failure[0]
    assert "sub-02_flip-1_VFA.json" in failure[0]
    assert "RepetitionTimeExcitation" in failure[0]
    assert not (out / STAGING).exists()


# ----------------------------------------------------------------------------- determinism


def test_overwrite_rerun_is_byte_identical(bids, reference, tmp_path):
    out = Path(shutil.copytree(reference["out"], tmp_path / "out"))
    first_inode = (out / "sub-01").stat().st_ino
    before = tree_digest(bids)

    assert run_app(bids, out, "participant", "group", "--overwrite") == 0

    assert (out / "sub-01").stat().st_ino != first_inode  # recomputed, not skipped
    found = snapshot(out)
    assert found == reference["full"], differences(found, reference["full"])
    assert len(list((out / "logs").glob("run-*"))) == 3  # the only difference: one per run
    assert tree_digest(bids) == before


def test_outputs_name_no_run_specific_location(reference):
    """No sidecar, table or report holds a staging, work or output path (or a run id)."""
    out = reference["out"]
    forbidden = [STAGING.encode(), b".msqmri-work", str(out).encode(), b"logs/run-"]
    for rel in reference["full"]:
        text = (out / rel).read_bytes()
        if rel.endswith(".nii.gz"):
            continue  # gzip bytes; images hold no text besides the header
        leaked = [f.decode() for f in forbidden if f in text]
        assert not leaked, f"{rel} holds {leaked}"


# ----------------------------------------------------------------------------- killed runs


def _after(seconds: float):
    start = time.monotonic()
    return lambda out: time.monotonic() - start > seconds


#: name -> (factory of a condition on OUTPUT_DIR, whether the condition is an event that must
#: happen while the run is alive). Time-based moments only vary where the kill lands.
KILL_POINTS = {
    "after-0.5s": (lambda: _after(0.5), False),
    "after-3s": (lambda: _after(3.0), False),
    "staging-appears": (lambda: lambda out: (out / STAGING).exists(), True),
    "subject-staged-not-published": (lambda: staged_table_exists, True),
    "first-subject-published": (lambda: lambda out: (out / "sub-01").is_dir(), True),
}


@pytest.mark.parametrize("moment", list(KILL_POINTS))
def test_killed_run_leaves_nothing_trusted_and_rerun_completes(bids, reference, tmp_path, moment):
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    before = tree_digest(bids)
    make_condition, is_event = KILL_POINTS[moment]
    condition = make_condition()
    proc = start_app(bids, out, log, "participant")

    alive = wait_for(proc, lambda: condition(out))
    code = kill(proc)

    if is_event:
        assert alive, f"the run ended before '{moment}':\n{stderr_of(log)}"
    if alive:
        assert code == -signal.SIGKILL
    # a published subject folder is complete: exactly the files of the uninterrupted run
    left = snapshot(out)
    for folder in subject_folders(out):
        found = _only(left, folder.name + "/")
        expected = _only(reference["participant"], folder.name + "/")
        assert found == expected, differences(found, expected)
    published = {p.name: p.stat().st_ino for p in subject_folders(out)}
    if moment == "first-subject-published":
        assert "sub-01" in published
        assert "sub-02" not in published

    assert run_app(bids, out, "participant") == 0  # no --overwrite

    for name, inode in published.items():
        assert (out / name).stat().st_ino == inode, f"{name} was recomputed, not trusted"
    found = snapshot(out)
    # io's temporary files sit beside their target; only those of OUTPUT_DIR itself (the
    # dataset description, written in about a millisecond) can outlive a kill: tolerated
    found = {k: v for k, v in found.items() if not (k.startswith(".") and ".tmp" in k)}
    assert found == reference["participant"], differences(found, reference["participant"])
    assert tree_digest(bids) == before


# ----------------------------------------------------------------------------- parallel jobs


def test_parallel_participant_jobs_share_one_output(bids, reference, tmp_path):
    """Three jobs started together: sub-01, sub-02, and sub-01 once more."""
    out = tmp_path / "out"
    before = tree_digest(bids)
    labels = ("01", "02", "01")
    logs = [tmp_path / f"job{i}.txt" for i in range(len(labels))]
    procs = [
        start_app(bids, out, log, "participant", "--participant-label", label)
        for log, label in zip(logs, labels, strict=True)
    ]
    codes = [p.wait(PROCESS_TIMEOUT) for p in procs]
    assert codes == [0, 0, 0], "\n".join(stderr_of(log) for log in logs)

    assert run_app(bids, out, "group") == 0

    assert _group_participants(out) == ["sub-01", "sub-02"]
    found = snapshot(out)  # the group tables hold each row once: equal to the reference
    assert found == reference["full"], differences(found, reference["full"])
    assert not (out / STAGING).exists()
    assert tree_digest(bids) == before


# ----------------------------------------------------------------------------- building blocks


def test_publish_moves_a_copy_already_in_place_out_of_the_way(tmp_path):
    out = tmp_path / "out"
    (out / "sub-01" / "ses-a").mkdir(parents=True)
    (out / "sub-01" / "ses-a" / "old.txt").write_text("from a concurrent or older run")
    (out / "sub-01" / "ses-b").mkdir()
    (out / "sub-01" / "ses-b" / "kept.txt").write_text("another session")
    stage, fd = _open_stage(out, "sub-01_ses-a")
    (stage / "sub-01" / "ses-a").mkdir(parents=True)
    (stage / "sub-01" / "ses-a" / "new.txt").write_text("this run")

    _publish(stage, out, "01", "a")

    assert [p.name for p in (out / "sub-01" / "ses-a").iterdir()] == ["new.txt"]
    assert (out / "sub-01" / "ses-b" / "kept.txt").is_file()
    _close_stage(stage, fd)
    assert list((out / STAGING).iterdir()) == []  # the replaced copy went with the stage


def test_stale_staging_is_removed_and_live_staging_kept(tmp_path):
    live, live_fd = _open_stage(tmp_path, "sub-01")
    (live / "sub-01").mkdir()
    dead, dead_fd = _open_stage(tmp_path, "sub-02")
    (dead / "sub-02").mkdir()
    os.close(dead_fd)  # what SIGKILL does: the kernel drops the lock, the folder stays
    legacy = tmp_path / STAGING / "sub-03-0123456789ab"  # no lock file (older msqmri)
    legacy.mkdir()

    removed = remove_stale_stages(tmp_path)

    assert sorted(removed) == sorted([dead.name, legacy.name])
    assert (live / "sub-01").is_dir()
    assert not dead.exists()
    assert not dead.with_name(dead.name + ".lock").exists()
    assert not legacy.exists()
    _close_stage(live, live_fd)
    assert list((tmp_path / STAGING).iterdir()) == []


def test_publish_refuses_a_staging_folder_removed_by_another_process(tmp_path):
    """Never a silent success without outputs (e.g. NFS whose locks are host-local)."""
    stage, fd = _open_stage(tmp_path, "sub-01")
    shutil.rmtree(stage)
    with pytest.raises(OutputError, match="removed by another process"):
        _publish(stage, tmp_path, "01", None)
    _close_stage(stage, fd)
    assert not (tmp_path / "sub-01").exists()
