"""``msqmri-sbatch``: write (and optionally submit) SLURM scripts for a whole dataset.

Usage::

    msqmri-sbatch BIDS_DIR OUTPUT_DIR [-o SCRIPT_DIR] [--runtime {apptainer,podman,none}]
                  [--image IMAGE] [--cpus-per-task N] [--mem-gb G] [--time T]
                  [--partition P] [--account A] [--max-parallel K] [--submit]
                  [-- MSQMRI_OPTIONS...]

Three files are written to ``SCRIPT_DIR``:

- ``participant.sbatch``: a job array, one task per participant (the labels are written into
  the script: ``participants.tsv`` order, else the ``sub-*`` folders), each running ``msqmri
  BIDS_DIR OUTPUT_DIR participant --participant-label <label>`` with ``--nprocs`` = the task's
  CPUs, ``--omp-nthreads 1``, ``--mem-gb`` 80 % of the job's memory and a private work
  directory on the node's scratch (``$SLURM_TMPDIR``, else ``$TMPDIR``, else ``/tmp``);
- ``group.sbatch``: ``msqmri BIDS_DIR OUTPUT_DIR group`` (one CPU);
- ``submit.sh``: submits the array, then the group job with ``--dependency=afterok:<array>``
  (it runs only when every participant task exited 0).

Options after ``--`` go to every msqmri run (participant and group).

The runtime is ``apptainer run --cleanenv --containall`` of a SIF or ``docker://`` image,
``podman run --read-only`` as the calling user, or ``none`` (the ``msqmri`` of this Python
environment, for a cluster with a shared software tree). Several tasks write to one
OUTPUT_DIR at the same time, which msqmri supports (README "Reliability").
"""

from __future__ import annotations

import argparse
import csv
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from bids_app import __version__
from bids_app.cli.parser import _existing_dir, _label, _Parser, _positive_float, _positive_int
from bids_app.errors import MsqmriError, UsageError

logger = logging.getLogger(__name__)

RUNTIMES = ("apptainer", "podman", "none")
DEFAULT_IMAGE = {"apptainer": f"docker://msqmri/msqmri:{__version__}"}
DEFAULT_IMAGE["podman"] = f"docker.io/msqmri/msqmri:{__version__}"
#: fraction of the job's memory given to msqmri's --mem-gb (headroom for Python and I/O)
MEM_FRACTION = 0.8
SCRATCH = '"${SLURM_TMPDIR:-${TMPDIR:-/tmp}}"'


def build_parser() -> argparse.ArgumentParser:
    """Build the ``msqmri-sbatch`` argument parser."""
    p = _Parser(
        prog="msqmri-sbatch",
        description="Write SLURM sbatch scripts running msqmri on every participant of a "
        "BIDS dataset as a job array, with the group level as a dependent job.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("bids_dir", type=_existing_dir, help="the input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="msqmri's OUTPUT_DIR (shared by the tasks)")
    p.add_argument(
        "-o", "--script-dir", type=Path, default=Path("msqmri-slurm"), help="where to write"
    )
    p.add_argument(
        "--participant-label",
        nargs="+",
        type=_label("sub-"),
        metavar="L",
        help="participants (default: participants.tsv, else the sub-* folders)",
    )
    p.add_argument("--runtime", choices=RUNTIMES, default="apptainer", help="how to run msqmri")
    p.add_argument(
        "--image",
        help="container image: a .sif file or docker:// reference (apptainer), an image name "
        f"(podman); default {DEFAULT_IMAGE}",
    )
    p.add_argument("--cpus-per-task", type=_positive_int, default=1, metavar="N")
    p.add_argument("--mem-gb", type=_positive_float, default=8.0, metavar="G")
    p.add_argument("--time", default="04:00:00", help="wall time per participant task")
    p.add_argument("--group-time", default="01:00:00", help="wall time of the group job")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument(
        "--max-parallel", type=_positive_int, metavar="K", help="at most K tasks at once"
    )
    p.add_argument("--job-name", default="msqmri")
    p.add_argument("--submit", action="store_true", help="run submit.sh after writing")
    p.epilog = "Options after '--' are passed to every msqmri run, e.g. -- --models b1"
    return p


def participant_labels(bids_dir: Path) -> list[str]:
    """Participants of a dataset: ``participants.tsv`` order, restricted to existing folders.

    Parameters
    ----------
    bids_dir : Path
        Dataset root.

    Returns
    -------
    list of str
        Labels without ``sub-``; the ``sub-*`` folders (sorted) when there is no
        ``participants.tsv``. Listed participants without a folder are left out (warned).

    Raises
    ------
    UsageError
        If the dataset has no participant folder (64).
    """
    folders = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if not folders:
        raise UsageError(f"{bids_dir}: no sub-<label> folder; expected a BIDS dataset")
    table = bids_dir / "participants.tsv"
    if not table.is_file():
        return folders
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    listed = [r["participant_id"].removeprefix("sub-") for r in rows if r.get("participant_id")]
    absent = [lab for lab in listed if lab not in folders]
    if absent:
        logger.warning("%s lists participants without a folder: %s", table, absent)
    labels = [lab for lab in dict.fromkeys(listed) if lab in folders]
    return labels or folders


def _q(value) -> str:
    return shlex.quote(str(value))


def _header(ns, name: str, time: str, log_dir: Path, array: str | None = None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    if array:
        lines += [f"#SBATCH --array={array}", f"#SBATCH --output={log_dir}/%x_%A_%a.log"]
    else:
        lines += [f"#SBATCH --output={log_dir}/%x_%j.log"]
    lines += [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={ns.cpus_per_task if array else 1}",
        f"#SBATCH --mem={round(ns.mem_gb * 1024)}M",
        f"#SBATCH --time={time}",
    ]
    lines += [f"#SBATCH --partition={ns.partition}"] if ns.partition else []
    lines += [f"#SBATCH --account={ns.account}"] if ns.account else []
    return [*lines, "set -euo pipefail"]


def msqmri_command(ns, level_args: str, work: str) -> str:
    """The shell command running msqmri under ``ns.runtime`` (paths quoted).

    Parameters
    ----------
    ns : argparse.Namespace
        Parsed ``msqmri-sbatch`` options (``bids_dir``, ``output_dir`` absolute).
    level_args : str
        Shell words after ``BIDS_DIR OUTPUT_DIR`` (analysis level, labels, options).
    work : str
        Shell expression of the work directory on the host.
    """
    bids, out = ns.bids_dir, ns.output_dir
    if ns.runtime == "none":
        return f"{_q(sys.executable)} -m bids_app {_q(bids)} {_q(out)} {level_args} -w {work}"
    image = ns.image or DEFAULT_IMAGE[ns.runtime]
    binds = {"apptainer": "-B", "podman": "-v"}[ns.runtime]
    mounts = f"{binds} {_q(f'{bids}:/data:ro')} {binds} {_q(f'{out}:/out')} {binds} {work}:/work"
    if ns.runtime == "apptainer":
        run = "apptainer run --cleanenv --containall"
    else:
        # rootless podman maps the caller to the same uid inside only with keep-id
        run = (
            'podman run --rm --read-only --tmpfs /tmp --user "$(id -u):$(id -g)" '
            '$([ "$(id -u)" -ne 0 ] && echo --userns=keep-id) --network=none'
        )
    return f"{run} {mounts} {_q(image)} /data /out {level_args} -w /work"


def participant_script(ns, labels: list[str]) -> str:
    """Text of ``participant.sbatch``: one array task per label."""
    array = f"0-{len(labels) - 1}" + (f"%{ns.max_parallel}" if ns.max_parallel else "")
    log_dir = ns.output_dir / "logs" / "slurm"
    mem = round(ns.mem_gb * MEM_FRACTION, 2)
    extra = " ".join(_q(a) for a in ns.msqmri_args)
    level = (
        f'participant --participant-label "$label" --nprocs {ns.cpus_per_task} '
        f"--omp-nthreads 1 --mem-gb {mem:g}" + (f" {extra}" if extra else "")
    )
    lines = _header(ns, f"{ns.job_name}-participant", ns.time, log_dir, array)
    lines += [
        f"# msqmri {__version__}: {len(labels)} participant(s) of {ns.bids_dir}",
        "LABELS=(" + " ".join(_q(lab) for lab in labels) + ")",
        "label=${LABELS[$SLURM_ARRAY_TASK_ID]}",
        f'work={SCRATCH}/msqmri-"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"',
        'mkdir -p "$work"',
        "trap 'rm -rf \"$work\"' EXIT",
        'echo "msqmri participant sub-$label on $(hostname) (task $SLURM_ARRAY_TASK_ID)"',
        msqmri_command(ns, level, '"$work"'),
        "",
    ]
    return "\n".join(lines)


def group_script(ns) -> str:
    """Text of ``group.sbatch``: the group level once the participants are done."""
    log_dir = ns.output_dir / "logs" / "slurm"
    lines = _header(ns, f"{ns.job_name}-group", ns.group_time, log_dir)
    extra = "".join(f" {_q(a)}" for a in ns.msqmri_args)
    lines += [
        f'work={SCRATCH}/msqmri-"${{SLURM_JOB_ID}}"',
        'mkdir -p "$work"',
        "trap 'rm -rf \"$work\"' EXIT",
        msqmri_command(ns, "group" + extra, '"$work"'),
        "",
    ]
    return "\n".join(lines)


def submit_script(ns) -> str:
    """Text of ``submit.sh``: the array, then the group job ``--dependency=afterok``."""
    here = ns.script_dir
    return "\n".join(
        [
            "#!/bin/bash",
            "# Submit the participant array, then the group level once every task exited 0.",
            "set -euo pipefail",
            f"mkdir -p {_q(ns.output_dir / 'logs' / 'slurm')}",
            f"array=$(sbatch --parsable {_q(here / 'participant.sbatch')})",
            "array=${array%%;*}",
            "group=$(sbatch --parsable --dependency=afterok:$array --kill-on-invalid-dep=yes "
            f"{_q(here / 'group.sbatch')})",
            'echo "participant array: $array"',
            'echo "group job: ${group%%;*}"',
            "",
        ]
    )


def write_scripts(ns) -> dict[str, Path]:
    """Write the three scripts to ``ns.script_dir``; return them by name."""
    labels = list(ns.participant_label or participant_labels(ns.bids_dir))
    ns.script_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "participant.sbatch": participant_script(ns, labels),
        "group.sbatch": group_script(ns),
        "submit.sh": submit_script(ns),
    }
    paths = {}
    for name, text in texts.items():
        path = ns.script_dir / name
        path.write_text(text)
        path.chmod(0o755)
        paths[name] = path
    logger.info("wrote %s (%d participant task(s))", ns.script_dir, len(labels))
    return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; make the paths absolute (the jobs run elsewhere).

    Raises
    ------
    UsageError
        For any usage error (exit 64).
    """
    cut = argv.index("--") if "--" in argv else len(argv)
    ns = build_parser().parse_args(argv[:cut])
    ns.msqmri_args = argv[cut + 1 :]
    ns.output_dir = ns.output_dir.expanduser().resolve()
    ns.script_dir = ns.script_dir.expanduser().resolve()
    if ns.runtime == "apptainer" and ns.image and ns.image.endswith(".sif"):
        ns.image = str(Path(ns.image).expanduser().resolve())
    return ns


def main(argv: list[str] | None = None) -> int:
    """Write the scripts (and submit them with ``--submit``); return an exit code."""
    logging.basicConfig(level=logging.INFO, format="msqmri-sbatch %(levelname)s: %(message)s")
    try:
        ns = parse_args(sys.argv[1:] if argv is None else list(argv))
        paths = write_scripts(ns)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except MsqmriError as err:
        logger.error("%s", err)
        return err.exit_code
    if ns.submit:
        return subprocess.run(["bash", str(paths["submit.sh"])], check=False).returncode
    sys.stdout.write(f"submit with: bash {paths['submit.sh']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
