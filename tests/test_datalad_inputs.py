"""DataLad / OpenNeuro datasets: annexed content, absent or present; no dataset_description.

A dataset cloned with DataLad (``datalad clone``, or an OpenNeuro dataset) holds every
annexed file as a relative symlink into ``.git/annex/objects/<xx>/<yy>/<key>/<key>``; until
``datalad get`` the target does not exist. Decisions (CONTRACT section 5):

- absent content of a selected subject (or of a derivative dataset given with
  ``--derivatives``) is found before any work, the validator included: exit 66, one error line
  naming the first files, their count and ``datalad get``;
- present annexed files (symlinks that resolve) are ordinary inputs: the maps are the same as
  from plain files;
- subjects that are not selected are not checked (a one-subject job on a partly fetched
  dataset runs);
- a BIDS_DIR without ``dataset_description.json`` is 64 with validation on, and runs with a
  warning under ``--skip-bids-validation``.

The runs use ``msqmri-synth --size tiny`` and ``--models b1 --registration none`` (a few
seconds each).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bids_app.bids.validate
from bids_app.bids.annex import MAX_SHOWN, missing_content
from bids_app.cli.run import main

FAST = ["--models", "b1", "--registration", "none", "--no-reports"]
B1 = "sub-01/fmap/sub-01_TB1map.nii.gz"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """``msqmri-synth --size tiny --subjects 2`` (read only: tests copy it)."""
    from bids_app.synth.cli import main as synth_main

    root = tmp_path_factory.mktemp("datalad") / "bids"
    assert (
        synth_main([str(root), "--size", "tiny", "--subjects", "2", "--seed", "3", "--series"])
        == 0
    )
    return root


@pytest.fixture
def dataset(synth, tmp_path) -> Path:
    return Path(shutil.copytree(synth, tmp_path / "bids", symlinks=True))


def annex(root: Path, rel: str, *, fetched: bool) -> Path:
    """Make ``root/rel`` a git-annex style relative symlink; drop its object if not fetched."""
    path = root / rel
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    key = f"MD5E-s{path.stat().st_size}--{digest}{''.join(path.suffixes)}"
    obj = root / ".git" / "annex" / "objects" / digest[:2] / digest[2:4] / key / key
    obj.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, obj)
    path.symlink_to(os.path.relpath(obj, path.parent))
    if not fetched:
        obj.unlink()
    assert path.is_symlink()
    assert path.exists() is fetched
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " ERROR: " in line]


def no_validator(monkeypatch):
    """Fail the test if the validator runs (the checks must come before it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the validator ran before the dataset checks")

    monkeypatch.setattr(bids_app.bids.validate, "validate_input", refuse)


def test_absent_content_exit_66_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    no_validator(monkeypatch)
    absent = [
        "sub-01/anat/sub-01_flip-1_VFA.nii.gz",
        "sub-01/anat/sub-01_flip-1_VFA.json",
        B1,
    ]
    for rel in absent:
        annex(dataset, rel, fetched=False)
    out = tmp_path / "out"
    assert main([str(dataset), str(out), "participant", *FAST]) == 66  # validation on
    (line,) = error_lines(capsys.readouterr().err)
    assert "content of 3 input files is absent" in line
    for rel in absent:
        assert rel in line
    assert "datalad get" in line
    assert line.endswith("datalad get sub-01) and run again")
    assert not list(out.glob("sub-*")), "no subject may be processed"


def test_many_absent_files_first_few_and_count(dataset, tmp_path, capsys):
    files = sorted(p.relative_to(dataset).as_posix() for p in (dataset / "sub-02").rglob("*.*"))
    assert len(files) > MAX_SHOWN + 2
    for rel in files:
        annex(dataset, rel, fetched=False)
    assert missing_content(dataset) == files
    out = tmp_path / "out"
    assert main([str(dataset), str(out), "participant", "--skip-bids-validation", *FAST]) == 66
    (line,) = error_lines(capsys.readouterr().err)
    assert f"content of {len(files)} input files" in line
    assert f"(and {len(files) - MAX_SHOWN} more)" in line
    shown = [rel for rel in files if rel in line]
    assert shown == files[:MAX_SHOWN]


def test_absent_derivative_content_exit_66(dataset, tmp_path, capsys):
    lesions = dataset / "derivatives" / "lesions"
    rel = "sub-01/anat/sub-01_label-lesion_mask.nii.gz"
    assert (lesions / rel).is_file()
    annex(lesions, rel, fetched=False)
    argv = [str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert main([*argv, *FAST, "--derivatives", f"lesions={lesions}"]) == 66
    (line,) = error_lines(capsys.readouterr().err)
    assert rel in line
    assert "datalad get" in line


def test_unselected_subject_is_not_checked(dataset, tmp_path):
    annex(dataset, "sub-02/anat/sub-02_FLAIR.nii.gz", fetched=False)
    argv = [str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert main([*argv, *FAST, "--participant-label", "01"]) == 0
    assert (tmp_path / "out" / B1).is_file()


def test_present_annexed_files_give_the_same_maps(synth, dataset, tmp_path):
    """Every input of sub-01 an annexed symlink with its content: the maps are identical."""
    for path in sorted((dataset / "sub-01").rglob("*.*")):
        annex(dataset, path.relative_to(dataset).as_posix(), fetched=True)
    assert missing_content(dataset) == []
    argv = ["participant", "--skip-bids-validation", "--participant-label", "01", *FAST]
    assert main([str(dataset), str(tmp_path / "annexed"), *argv]) == 0
    assert main([str(synth), str(tmp_path / "plain"), *argv]) == 0
    got = np.asarray(nib.load(tmp_path / "annexed" / B1).dataobj)
    want = np.asarray(nib.load(tmp_path / "plain" / B1).dataobj)
    assert np.count_nonzero(want) > 1000
    np.testing.assert_array_equal(got, want)


def test_no_description_exit_64_with_validation(dataset, tmp_path, capsys, monkeypatch):
    no_validator(monkeypatch)
    (dataset / "dataset_description.json").unlink()
    assert main([str(dataset), str(tmp_path / "out"), "participant", *FAST]) == 64
    (line,) = error_lines(capsys.readouterr().err)
    assert "no dataset_description.json" in line
    assert "--skip-bids-validation" in line


def test_no_description_runs_with_warning_when_validation_skipped(dataset, tmp_path, capsys):
    (dataset / "dataset_description.json").unlink()
    out = tmp_path / "out"
    argv = [str(dataset), str(out), "participant", "--skip-bids-validation"]
    assert main([*argv, *FAST, "--participant-label", "01"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert any("no dataset_description.json" in line for line in warnings), err
    assert (out / B1).is_file()
    assert (out / "dataset_description.json").is_file()


def test_inputs_linked_to_a_store_outside_the_dataset(dataset, tmp_path):
    """Raw files that are symlinks to a store outside the dataset (a shared data store, a
    CBRAIN cache) run, and the sidecars name them by their place inside the dataset."""
    store = tmp_path / "store"
    store.mkdir()
    for path in sorted((dataset / "sub-01").rglob("*.nii.gz")):
        target = store / path.name
        shutil.move(path, target)
        path.symlink_to(target)
    out = tmp_path / "out"
    argv = ["participant", "--skip-bids-validation", "--participant-label", "01", *FAST]
    assert main([str(dataset), str(out), *argv]) == 0
    side = (out / B1).with_name("sub-01_TB1map.json").read_text()
    assert "bids:raw:sub-01/" in side
    assert str(store) not in side
