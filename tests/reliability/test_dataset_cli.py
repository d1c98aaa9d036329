"""Dataset- and command-line-level failures map to the CONTRACT section 5 exit codes.

Decisions: a BIDS_DIR without ``dataset_description.json`` is not a BIDS dataset, a usage
error (64, as a missing BIDS_DIR). Labels that are not in the dataset stop the run before
anything is computed (18), even when other labels exist, as in fMRIPrep: a typo must not
cost hours. A dataset with no subject folder, or with none of the inputs of the selected
models and no FLAIR/T1w/T2w, gives 66; a structural-only dataset still gets its masks (0).
A misspelt input or entity name in ``--bids-filter-file`` is a usage error (64), not a
filter that silently selects nothing. OUTPUT_DIR or WORK_DIR inside BIDS_DIR (other than
``BIDS_DIR/derivatives/<name>``) is refused (64); one that cannot be created or written
gives 73. In every case stderr has one error line and no traceback, and BIDS_DIR is left
untouched. One subject's failure never costs another subject its outputs, nor a subject its
previous outputs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from bids_app.bids.derivatives import build_name
from bids_app.bids.validate import EXECUTABLE
from bids_app.cli.run import main
from bids_app.models import REGISTRY

VALIDATOR = shutil.which(EXECUTABLE) or shutil.which(
    EXECUTABLE, path=str(Path(sys.executable).parent)
)


def test_missing_dataset_description_exit_64(dataset, msqmri):
    (dataset / "dataset_description.json").unlink()
    res = msqmri(dataset, validate=True)  # without validation it runs, with a warning
    assert res.code == 64
    res.one_error(str(dataset), "no dataset_description.json")


@pytest.mark.parametrize(
    ("subjects", "extra", "fragments"),
    [
        pytest.param(("99",), (), ("['99'] not found", "available: ['01', '02']"), id="unknown"),
        pytest.param(("01", "99"), (), ("['99'] not found",), id="one-unknown"),
        pytest.param(("01",), ("--session-label", "a"), ("session label ['a']",), id="session"),
    ],
)
def test_labels_selecting_nothing_exit_18(dataset, msqmri, digest, subjects, extra, fragments):
    before = digest(dataset)
    res = msqmri(dataset, *extra, subjects=subjects)
    assert res.code == 18
    res.one_error(*fragments)
    assert not list(res.out.glob("sub-*"))
    assert digest(dataset) == before


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["--no-such-option"], "unrecognized arguments", id="unknown-option"),
        pytest.param(["--models", "vfa_t1", "t2_magic"], "t2_magic", id="unknown-model"),
        pytest.param(["--nprocs", "0"], "positive integer", id="nprocs"),
        pytest.param(["-w", "{bids}/work"], "WORK_DIR", id="work-inside-bids"),
        pytest.param(["--config", "{tmp}/missing.toml"], "missing.toml", id="config-missing"),
        pytest.param(["--config", "{tmp}/bad.toml"], "unknown model 'nope'", id="config-model"),
        pytest.param(["--bids-filter-file", "{tmp}/typo.json"], "vfaa", id="filter-input"),
        pytest.param(["--bids-filter-file", "{tmp}/entity.json"], "acqusition", id="filter-key"),
    ],
)
def test_usage_errors_exit_64(dataset, tmp_path, capsys, digest, argv, fragment):
    _write(tmp_path / "bad.toml", "[nope]\nfit_method = 'x'\n")
    _write(tmp_path / "typo.json", json.dumps({"vfaa": {"acquisition": "3D"}}))
    _write(tmp_path / "entity.json", json.dumps({"vfa": {"acqusition": "3D"}}))
    before = digest(dataset)
    argv = [a.format(bids=dataset, tmp=tmp_path) for a in argv]
    assert main([str(dataset), str(tmp_path / "out"), "participant", *argv]) == 64
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert fragment in err.splitlines()[0]
    assert digest(dataset) == before


@pytest.mark.parametrize(
    "out", ["{bids}", "{bids}/out", "{bids}/derivatives/msqmri/nested", "{bids}/sub-01"]
)
def test_output_inside_input_refused_64(dataset, tmp_path, capsys, digest, out):
    before = digest(dataset)
    assert main([str(dataset), out.format(bids=dataset), "participant"]) == 64
    err = capsys.readouterr().err
    assert "is inside BIDS_DIR" in err.splitlines()[0]
    assert "Traceback" not in err
    assert digest(dataset) == before


def test_output_in_bids_derivatives_allowed(dataset, msqmri):
    """``BIDS_DIR/derivatives/<name>`` is the one place inside BIDS_DIR an output may go."""
    out = dataset / "derivatives" / "msqmri"
    res = msqmri(dataset, models=("mtr",), out=out)
    assert res.code == 0, res.err
    assert (out / "sub-01" / "anat" / "sub-01_MTRmap.nii.gz").is_file()
    assert sorted(p.name for p in (dataset / "derivatives").iterdir()) == [
        "lesions",
        "msqmri",
        "tissue",
        "truth",
    ]


@pytest.mark.parametrize(
    ("out", "extra", "fragment"),
    [
        pytest.param("{blocker}/out", (), "output directory", id="output-parent-is-a-file"),
        pytest.param("{blocker}", (), "output directory", id="output-is-a-file"),
        pytest.param("{tmp}/out", ("-w", "{blocker}/work"), "work directory", id="work-dir"),
    ],
)
def test_unwritable_output_or_work_dir_exit_73(dataset, msqmri, tmp_path, out, extra, fragment):
    """Tests run as root, so a regular file stands where a directory should be."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    fill = {"blocker": blocker, "tmp": tmp_path}
    res = msqmri(
        dataset, *[e.format(**fill) for e in extra], out=Path(out.format(**fill)), models=("mtr",)
    )
    assert res.code == 73
    res.one_error(str(blocker), fragment, "cannot be created or written")


def test_no_subject_folder_exit_66(dataset, msqmri):
    for sub in ("sub-01", "sub-02"):
        shutil.rmtree(dataset / sub)
    res = msqmri(dataset, subjects=())
    assert res.code == 66
    res.one_error("no sub-<label> folder")


def test_no_usable_input_exit_66(dataset, msqmri):
    """Only PDw images: no input of any model and no FLAIR/T1w/T2w to segment."""
    for sub in ("sub-01", "sub-02"):
        anat = dataset / sub / "anat"
        t1w = (anat / f"{sub}_T1w.nii.gz").read_bytes()
        shutil.rmtree(anat)
        shutil.rmtree(dataset / sub / "fmap")
        anat.mkdir()
        (anat / f"{sub}_PDw.nii.gz").write_bytes(t1w)
    res = msqmri(dataset, subjects=(), models=())
    assert res.code == 66
    res.one_error("no selected subject has inputs")


def test_structural_only_dataset_gets_masks(dataset, msqmri):
    """CONTRACT 5: a structural-only dataset is not 66; it gets masks and region tables."""
    anat = dataset / "sub-01" / "anat"
    for path in anat.iterdir():
        if not path.name.startswith(("sub-01_FLAIR.", "sub-01_T1w.")):
            path.unlink()
    shutil.rmtree(dataset / "sub-01" / "fmap")
    res = msqmri(dataset, models=())
    assert res.code == 0, res.err
    out = res.out / "sub-01" / "anat"
    assert (out / "sub-01_space-FLAIR_label-WM_mask.nii.gz").is_file()
    assert not list(out.glob("*map.nii.gz"))


@pytest.mark.skipif(VALIDATOR is None, reason=f"{EXECUTABLE} not installed")
def test_bids_validation_failure_exit_16_unless_skipped(dataset, msqmri):
    (dataset / "sub-01" / "anat" / "notes.txt").write_text("not a BIDS file")
    res = msqmri(dataset, models=("mtr",), validate=True)
    assert res.code == 16
    res.one_error("BIDS validation failed", "notes.txt", "--skip-bids-validation")
    assert not list(res.out.glob("sub-*"))
    res = msqmri(dataset, models=("mtr",), validate=False)
    assert res.code == 0, res.err


#: models with inputs in the synthetic dataset
SYNTH_MODELS = ("b1", "vfa_t1", "megre_r2star", "mese_t2", "mtr", "mtsat")


def test_broken_subject_does_not_touch_the_other(dataset, msqmri, edit_json):
    """Only sub-01 is broken (EchoTime in ms): the run exits with sub-01's 65, and sub-02
    has every map of every model (native and reference space) and its region table."""
    edit_json(dataset / "sub-01/anat/sub-01_echo-3_part-mag_MEGRE.json", EchoTime=12.0)
    res = msqmri(dataset, subjects=(), models=(), lesions=True)
    assert res.code == 65
    res.one_error("sub-01:", "sub-01_echo-3_part-mag_MEGRE.json", "EchoTime=12.0", "milliseconds")
    # nothing of sub-01 but its report and its failure record (bids_app.failures)
    left = sorted(p.relative_to(res.out).as_posix() for p in res.out.rglob("sub-01*"))
    assert set(left) <= {"sub-01.html", "logs/failed/sub-01.json"}, left
    assert "logs/failed/sub-01.json" in left
    sub = res.out / "sub-02"
    keys = []
    for name in SYNTH_MODELS:
        model = REGISTRY[name]
        datatype = model.inputs[0].query.get("datatype", "anat")
        for spec in model.outputs:
            keys.append(spec.key)
            for space in (None, "FLAIR"):
                ents = {"subject": "02", "space": space, "desc": spec.desc}
                assert (sub / datatype / build_name(ents, spec.suffix)).is_file(), spec.key
    table = pd.read_csv(sub / "sub-02_desc-regions_stats.tsv", sep="\t")
    assert set(keys) <= set(table["map"])
    wm = table[table["region"] == "WM"].set_index("map")
    assert wm.loc[list(keys), "mean"].notna().all()


def test_failed_rerun_keeps_previous_outputs(dataset, msqmri, edit_json, clean_run, digest):
    """Outputs of an earlier good run survive a ``--overwrite`` rerun on broken input."""
    out = dataset.parent / "out"
    shutil.copytree(clean_run, out)
    before = digest(out / "sub-01")
    edit_json(dataset / "sub-01/anat/sub-01_flip-1_VFA.json", RepetitionTimeExcitation=15)
    res = msqmri(dataset, "--overwrite", out=out)
    assert res.code == 65
    res.one_error("sub-01_flip-1_VFA.json", "RepetitionTimeExcitation=15")
    assert digest(out / "sub-01") == before


def test_filter_selecting_nothing_exit_18(dataset, msqmri, tmp_path):
    """A well-formed filter that matches no file is a selection error, not a silent skip."""
    spec = _write(tmp_path / "filter.json", json.dumps({"vfa": {"acquisition": "sagittal"}}))
    res = msqmri(dataset, "--bids-filter-file", str(spec))
    assert res.code == 18
    res.one_error("vfa", "selects no file")
    assert not list(res.out.glob("sub-*"))


def test_filter_selecting_files_runs(dataset, msqmri, tmp_path):
    spec = _write(tmp_path / "filter.json", json.dumps({"flair": {"subject": "01"}}))
    res = msqmri(dataset, "--bids-filter-file", str(spec))
    assert res.code == 0
    assert (res.out / "sub-01" / "anat" / "sub-01_T1map.nii.gz").is_file()
