"""``msqmri-sbatch``: the SLURM scripts it writes (text, shell syntax, one real task run).

The scripts are also run on a real single-node SLURM by ``.ci/slurm_test.sh`` (a two-task
array and the dependent group job).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app.cli.sbatch import main, participant_labels
from tests.bids_builder import vfa_spec, write_dataset


@pytest.fixture
def ds(tmp_path) -> Path:
    spec = {f"sub-{lab}": vfa_spec(f"sub-{lab}") for lab in ("03", "01", "02")}
    return write_dataset(tmp_path / "my data", spec)


def _write(ds: Path, tmp_path: Path, *options: str) -> dict[str, str]:
    scripts = tmp_path / "scripts"
    assert main([str(ds), str(tmp_path / "out"), "-o", str(scripts), *options]) == 0
    return {p.name: p.read_text() for p in scripts.iterdir()}


def _sbatch(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(.*)$", text, flags=re.M))


def test_labels_from_participants_tsv_order_and_folders(ds):
    assert participant_labels(ds) == ["01", "02", "03"]  # the folders, sorted
    rows = ["participant_id\tage", "sub-03\t30", "sub-99\t40", "sub-01\t20"]
    (ds / "participants.tsv").write_text("\n".join(rows) + "\n")
    assert participant_labels(ds) == ["03", "01"]  # table order, sub-99 has no folder


def test_participant_array_text(ds, tmp_path):
    texts = _write(
        ds,
        tmp_path,
        "--runtime",
        "none",
        "--cpus-per-task",
        "4",
        "--mem-gb",
        "10",
        "--time",
        "02:30:00",
        "--partition",
        "short",
        "--account",
        "lab",
        "--max-parallel",
        "2",
        "--",
        "--models",
        "vfa_t1",
        "b1",
        "--skip-bids-validation",
    )
    text = texts["participant.sbatch"]
    assert _sbatch(text) == {
        "job-name": "msqmri-participant",
        "array": "0-2%2",
        "output": f"{tmp_path}/out/logs/slurm/%x_%A_%a.log",
        "nodes": "1",
        "ntasks": "1",
        "cpus-per-task": "4",
        "mem": "10240M",
        "time": "02:30:00",
        "partition": "short",
        "account": "lab",
    }
    assert "LABELS=(01 02 03)\n" in text
    (command,) = [line for line in text.splitlines() if " -m bids_app " in line]
    words = shlex.split(command.replace('"$label"', "LABEL").replace('"$work"', "WORK"))
    assert words[:5] == [sys.executable, "-m", "bids_app", str(ds), str(tmp_path / "out")]
    args = words[5:]
    assert args[:3] == ["participant", "--participant-label", "LABEL"]
    assert args[args.index("--nprocs") + 1] == "4"
    assert args[args.index("--omp-nthreads") + 1] == "1"
    assert float(args[args.index("--mem-gb") + 1]) == pytest.approx(8.0)  # 80 % of 10 GB
    assert args[args.index("--models") + 1 : args.index("--models") + 3] == ["vfa_t1", "b1"]
    assert "--skip-bids-validation" in args
    assert args[-2:] == ["-w", "WORK"]


def test_group_job_depends_on_the_whole_array(ds, tmp_path):
    texts = _write(ds, tmp_path, "--runtime", "none", "--group-time", "00:20:00")
    group = _sbatch(texts["group.sbatch"])
    assert group["cpus-per-task"] == "1"
    assert group["time"] == "00:20:00"
    assert "array" not in group
    assert " group -w " in texts["group.sbatch"]
    submit = texts["submit.sh"]
    first, second = [line for line in submit.splitlines() if "sbatch --parsable" in line]
    assert "participant.sbatch" in first
    assert "--dependency=afterok:$array" in second
    assert "group.sbatch" in second


@pytest.mark.parametrize(
    ("runtime", "image", "fragments"),
    [
        (
            "apptainer",
            "msqmri.sif",
            ["apptainer run --cleanenv --containall", ":/data:ro", "/msqmri.sif /data /out"],
        ),
        ("apptainer", None, ["docker://msqmri/msqmri:"]),
        (
            "podman",
            "localhost/msqmri:ci",
            ["podman run --rm --read-only", "--network=none", ":/data:ro", "/data /out"],
        ),
    ],
)
def test_container_runtimes(ds, tmp_path, runtime, image, fragments):
    options = ["--runtime", runtime] + (["--image", image] if image else [])
    text = _write(ds, tmp_path, *options)["participant.sbatch"]
    (command,) = [line for line in text.splitlines() if line.startswith(runtime)]
    for fragment in fragments:
        assert fragment in command
    assert f"{shlex.quote(f'{ds}:/data:ro')}" in command  # quoted: the path has a space
    assert command.endswith("-w /work")


@pytest.mark.parametrize("runtime", ["apptainer", "podman", "none"])
def test_scripts_are_valid_bash(ds, tmp_path, runtime):
    _write(ds, tmp_path, "--runtime", runtime)
    for path in (tmp_path / "scripts").iterdir():
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, (path.name, proc.stderr)
        assert os.access(path, os.X_OK)


def test_usage_errors_exit_64(ds, tmp_path):
    out = str(tmp_path / "out")
    assert main([str(ds), out, "--runtime", "docker"]) == 64
    assert main([str(ds), out, "--mem", "16000"]) == 64  # no abbreviation of --mem-gb
    assert main([str(tmp_path / "absent"), out]) == 64
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), out]) == 64  # no sub-* folder


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_one_array_task_runs_its_participant(tmp_path):
    """Task 1 of the array, as SLURM would start it, processes the second label only."""
    from bids_app.synth.cli import main as synth

    bids = tmp_path / "my bids"
    assert synth([str(bids), "--size", "tiny", "--subjects", "2", "--seed", "4", "--series"]) == 0
    out = tmp_path / "out"
    scripts = tmp_path / "scripts"
    argv = [str(bids), str(out), "-o", str(scripts), "--runtime", "none", "--"]
    argv += ["--models", "b1", "--registration", "none", "--no-reports", "--skip-bids-validation"]
    assert main(argv) == 0
    scratch = tmp_path / "node-scratch"
    scratch.mkdir()
    env = dict(
        os.environ, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="7", SLURM_TMPDIR=str(scratch)
    )
    proc = subprocess.run(
        ["bash", str(scripts / "participant.sbatch")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "sub-02" / "fmap" / "sub-02_TB1map.nii.gz").is_file()
    assert not (out / "sub-01").exists()
    assert list(scratch.iterdir()) == []  # the task's work directory is removed
