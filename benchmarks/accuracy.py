"""Accuracy of a whole run against the synthetic truth (prints the acceptance figures).

Writes ``msqmri-synth --size SIZE`` to a temporary folder, runs participant + group with the
lesion derivatives, then prints, per subject and map, the median signed and absolute relative
error in true WM (MTR: percentage points), and the region-table lesion/NAWM means against
the truth means over the truth regions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_app.cli.run import main as msqmri
from bids_app.synth.cli import main as synth

MAPS = [
    ("T1map", "T1map"),
    ("R2starmap", "R2starmap"),
    ("T2map", "T2map"),
    ("MTsat", "MTsat"),
    ("MTRmap", "MTRmap"),
    ("desc-MTS_T1map", "T1map"),
]


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=float)


def report(bids: Path, out: Path) -> None:
    """Print the per-voxel and region-mean accuracy of ``out`` against ``bids`` truth."""
    table = pd.read_csv(out / "group_desc-regions_stats.tsv", sep="\t")
    subs = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
    print(
        f"{'subject':8s} {'map':16s} {'median rel':>11s} {'median |rel|':>13s} "
        f"{'lesion ours/truth':>19s} {'NAWM ours/truth':>17s}"
    )
    for sub in subs:
        truth = bids / "derivatives" / "truth" / sub / "anat"
        dseg = _load(truth / f"{sub}_dseg.nii.gz")
        for key, tname in MAPS:
            fit = _load(out / sub / "anat" / f"{sub}_space-FLAIR_{key}.nii.gz")
            ref = _load(truth / f"{sub}_{tname}.nii.gz")
            wm = (dseg == 2) & np.isfinite(fit)
            err = fit[wm] - ref[wm] if tname == "MTRmap" else (fit[wm] - ref[wm]) / ref[wm]
            unit = "pp" if tname == "MTRmap" else "%"
            scale = 1 if tname == "MTRmap" else 100
            cells = []
            for region, label in (("lesion", 4), ("NAWM", 2)):
                mask = dseg == label
                row = table[
                    (table["participant_id"] == sub)
                    & (table["region"] == region)
                    & (table["map"] == key)
                ]
                if not mask.any() or row.empty:
                    cells.append("n/a")
                    continue
                ours, true = row["mean"].item(), ref[mask].mean()
                cells.append(f"{(ours / true - 1) * 100:+.2f}%")
            print(
                f"{sub:8s} {key:16s} {np.median(err) * scale:+10.2f}{unit} "
                f"{np.median(np.abs(err)) * scale:12.2f}{unit} {cells[0]:>19s} "
                f"{cells[1]:>17s}"
            )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="small", choices=("tiny", "small", "brain"))
    p.add_argument("--subjects", type=int, default=3)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bids, out = Path(tmp) / "bids", Path(tmp) / "out"
        synth(
            [
                str(bids),
                "--size",
                args.size,
                "--subjects",
                str(args.subjects),
                "--seed",
                str(args.seed),
            ]
        )
        t = time.perf_counter()
        code = msqmri(
            [
                str(bids),
                str(out),
                "participant",
                "group",
                "--skip-bids-validation",
                "--derivatives",
                f"lesions={bids / 'derivatives' / 'lesions'}",
            ]
        )
        print(
            f"msqmri exit {code} in {time.perf_counter() - t:.1f} s "
            f"({args.subjects} subjects, size {args.size})"
        )
        report(bids, out)


if __name__ == "__main__":
    main()
