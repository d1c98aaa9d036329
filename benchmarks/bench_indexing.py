"""pybids indexing time of a one-participant job against the size of the dataset.

Usage: ``python benchmarks/bench_indexing.py [--subjects 1000] [--repeat 7] [--no-full]``

Writes skeleton datasets (every subject a typical MS research protocol of tiny files: T1w,
FLAIR, two VFA flips, four MEGRE echoes, MT on/off, a multi-shell DWI with bval/bvec, a
TB1map; a top-level inherited ``MEGRE.json``; optionally a ``derivatives/lesions`` dataset
with one lesion mask per subject) and times what the participant level does before any fit:
:func:`~bids_app.bids.layout.make_layout` and
:func:`~bids_app.bids.layout.make_derivative_layouts` (as ``run_participants`` calls them)
for ``--participant-label 0001`` on a 1-subject and an N-subject dataset, with and without
the lesion derivative. Prints both times (best and median of ``--repeat``, the two cases
interleaved) and their ratios (issue 25 target: <= 1.1x), then the time to index all N
subjects (a job without ``--participant-label``). It never asserts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.bids.layout import make_derivative_layouts, make_layout

#: a 1-voxel NIfTI, gzipped once and written as bytes (pybids never reads images)
_NII = gzip.compress(nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)).to_bytes())


def _subject_files(sub: str) -> dict[str, dict | None]:
    """Relative path (no extension) -> sidecar (None: no JSON) of one skeleton subject."""
    files: dict[str, dict | None] = {
        f"anat/{sub}_T1w": {"RepetitionTime": 2.3},
        f"anat/{sub}_FLAIR": {"RepetitionTime": 5.0},
    }
    for i, fa in enumerate((3, 20), start=1):
        files[f"anat/{sub}_flip-{i}_VFA"] = {"FlipAngle": fa, "RepetitionTimeExcitation": 0.015}
    for e in range(1, 5):
        files[f"anat/{sub}_echo-{e}_part-mag_MEGRE"] = {"EchoTime": 0.005 * e}
    files[f"anat/{sub}_mt-on_MTS"] = {"MTState": True, "FlipAngle": 6}
    files[f"anat/{sub}_mt-off_MTS"] = {"MTState": False, "FlipAngle": 6}
    files[f"fmap/{sub}_TB1map"] = {"Units": "percent"}
    files[f"dwi/{sub}_dwi"] = {"PhaseEncodingDirection": "j"}
    return files


def write_skeleton(root: Path, n_subjects: int, *, lesions: bool) -> Path:
    """A raw dataset of ``n_subjects`` skeleton subjects (``sub-0001``...), optional lesions.

    Returns
    -------
    Path
        ``root`` (the lesion derivative, if any, is ``root/derivatives/lesions``).
    """
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "skeleton", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 3, "FlipAngle": 15}))
    labels = [f"{k:04d}" for k in range(1, n_subjects + 1)]
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{lab}\n" for lab in labels)
    )
    deriv = root / "derivatives" / "lesions"
    if lesions:
        deriv.mkdir(parents=True)
        (deriv / "dataset_description.json").write_text(
            json.dumps(
                {"Name": "lesions", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
                 "GeneratedBy": [{"Name": "manual"}]}
            )
        )  # fmt: skip
    for lab in labels:
        sub = f"sub-{lab}"
        for stem, meta in _subject_files(sub).items():
            path = root / sub / f"{stem}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_NII)
            if meta is not None:
                path.with_name(path.name[: -len(".nii.gz")] + ".json").write_text(json.dumps(meta))
        (root / sub / "dwi" / f"{sub}_dwi.bval").write_text("0 1000 2000\n")
        (root / sub / "dwi" / f"{sub}_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
        if lesions:
            mask = deriv / sub / "anat" / f"{sub}_space-orig_label-lesion_mask.nii.gz"
            mask.parent.mkdir(parents=True)
            mask.write_bytes(_NII)
            mask.with_name(mask.name.replace(".nii.gz", ".json")).write_text("{}")
    return root


def _index(root: Path, labels, lesions: bool) -> tuple[float, int]:
    """Seconds to build the layouts of one job, and the number of images they hold."""
    derivatives = {"lesions": root / "derivatives" / "lesions"} if lesions else {}
    t0 = time.perf_counter()
    raw = make_layout(root, participant_label=labels)
    deriv = make_derivative_layouts(derivatives, participant_label=labels)
    elapsed = time.perf_counter() - t0
    n = len(raw.get(extension=".nii.gz"))
    return elapsed, n + sum(len(d.get(extension=".nii.gz")) for d in deriv.values())


def _compare(small: Path, big: Path, lesions: bool, repeat: int) -> dict[str, tuple]:
    """Interleaved timings (small, big, small, big...): a busy machine slows both alike."""
    times: dict[str, list[float]] = {"small": [], "big": []}
    images = {}
    for _ in range(repeat):
        for key, root in (("small", small), ("big", big)):
            t, images[key] = _index(root, ["0001"], lesions)
            times[key].append(t)
    return {k: (min(v), statistics.median(v), images[k]) for k, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--subjects", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=7, help="timings per case")
    p.add_argument("--no-full", action="store_true", help="skip indexing all subjects")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        small = {les: write_skeleton(Path(tmp) / f"one_{les}", 1, lesions=les) for les in (0, 1)}
        big = {
            les: write_skeleton(Path(tmp) / f"many_{les}", args.subjects, lesions=les)
            for les in (0, 1)
        }
        nfiles = sum(len(files) for _, _, files in os.walk(big[1]))
        print(
            f"skeletons written in {time.perf_counter() - t0:.1f} s "
            f"({args.subjects} subjects with lesions: {nfiles} files)"
        )
        print(f"one-participant job (--participant-label 0001), {args.repeat} runs each:")
        for les in (0, 1):
            res = _compare(small[les], big[les], bool(les), args.repeat)
            (t1, m1, n1), (tn, mn, nn) = res["small"], res["big"]
            name = "raw + lesion derivative" if les else "raw only"
            print(
                f"  {name:24s} 1 subject {t1:.3f} s (median {m1:.3f}, {n1} images)  "
                f"{args.subjects} subjects {tn:.3f} s (median {mn:.3f}, {nn} images)  "
                f"ratio {tn / t1:.2f}x best, {mn / m1:.2f}x median (target <= 1.1x)"
            )
        if not args.no_full:
            for les in (0, 1):
                ta, na = _index(big[les], None, bool(les))
                name = "raw + lesion derivative" if les else "raw only"
                print(
                    f"all {args.subjects} subjects ({name}, no --participant-label): "
                    f"{ta:.1f} s ({na} images)"
                )


if __name__ == "__main__":
    main()
