"""Time of the registrations and of the built-in lesion segmentation (issue 18: <= 60 s added).

Writes ``msqmri-synth --size SIZE --subjects 1 --misalign --series`` (no 4-D series) to a
temporary folder, then times, with the participant level's defaults:

* the brain mask on the FLAIR (:func:`bids_app.segmentation.brain_mask`);
* the rigid registration (:func:`bids_app.registration.register`) of the first volume of
  every moved collection (T1w, VFA, MEGRE, MESE, MTR, MTS) to the FLAIR, each on its own
  grid and pose, and its error against the true pose (max displacement over the brain, mm;
  rotation, degrees);
* the T1w resampled onto the FLAIR grid through its registration, and the lesion
  segmentation (:func:`bids_app.lesionseg.segment_lesions`, FLAIR + T1w).

Prints one line per step (wall and process CPU seconds: on a loaded machine the CPU time is
the better figure) and the totals; run e.g.
``python benchmarks/bench_registration.py --size brain`` (1 mm; ``small`` = 2 mm).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app import io, lesionseg, segmentation
from bids_app.registration import register
from bids_app.synth.cli import main as synth

logger = logging.getLogger("bench_registration")
FIRST = {
    "T1w": "T1w",
    "VFA": "flip-1_VFA",
    "MEGRE": "echo-1_part-mag_MEGRE",
    "MESE": "echo-1_MESE",
    "MTR": "mt-off_MTR",
    "MTS": "flip-1_mt-off_MTS",
}


def _errors(matrix: np.ndarray, truth: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    diff = matrix - truth
    shift = float(np.linalg.norm(points @ diff[:3, :3].T + diff[:3, 3], axis=1).max())
    r = matrix[:3, :3] @ np.linalg.inv(truth[:3, :3])
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    return shift, angle


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="brain", choices=("tiny", "small", "brain"))
    p.add_argument("--seed", default="5")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dipy").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        t = time.perf_counter()
        opts = ["--size", args.size, "--subjects", "1", "--seed", args.seed]
        synth([str(bids), *opts, "--misalign", "--series"])
        logger.info(
            "msqmri-synth --size %s --misalign: %.1f s", args.size, time.perf_counter() - t
        )
        anat = bids / "sub-01" / "anat"
        truth = bids / "derivatives" / "truth" / "sub-01" / "anat"
        poses = json.loads((truth / "sub-01_desc-collections_xfm.json").read_text())
        flair, flair_aff = _load(anat / "sub-01_FLAIR.nii.gz")
        zooms = tuple(float(z) for z in np.sqrt((flair_aff[:3, :3] ** 2).sum(0)))
        logger.info("FLAIR grid %s, %s mm; cpus %s", flair.shape, zooms, os.cpu_count())

        t = time.perf_counter()
        brain, _ = segmentation.brain_mask(flair, zooms=zooms)
        t_mask = time.perf_counter() - t
        logger.info("brain mask: %.1f s", t_mask)
        idx = np.argwhere(brain)
        points = (flair_aff @ np.c_[idx, np.ones(len(idx))].T)[:3].T

        total, total_cpu, regs = 0.0, 0.0, {}
        for coll, name in FIRST.items():
            moving, affine = _load(anat / f"sub-01_{name}.nii.gz")
            t, cpu = time.perf_counter(), time.process_time()
            reg = register(moving, affine, flair, flair_aff, static_mask=brain)
            lap, cpu = time.perf_counter() - t, time.process_time() - cpu
            total += lap
            total_cpu += cpu
            regs[coll] = reg
            shift, angle = _errors(
                reg.matrix, np.asarray(poses["Collections"][coll]["Matrix"]), points
            )
            logger.info(
                "register %-5s %s: %5.1f s, CPU %5.1f s (max error %.2f mm, %.2f deg; "
                "sharpness %.2f)",
                coll,
                "x".join(map(str, moving.shape)),
                lap,
                cpu,
                shift,
                angle,
                reg.sharpness,
            )

        t = time.perf_counter()
        t1w, t1w_aff = _load(anat / "sub-01_T1w.nii.gz")
        t1w_ref = io.resample(
            t1w, t1w_aff, flair.shape, flair_aff, order=1, cval=0.0, world=regs["T1w"].matrix
        )
        t_resample = time.perf_counter() - t
        t = time.perf_counter()
        lesions, _ = lesionseg.segment_lesions(flair, brain, zooms, t1w=t1w_ref)
        t_seg = time.perf_counter() - t
        true_lesions = nib.load(truth / "sub-01_label-lesion_mask.nii.gz").dataobj
        logger.info(
            "T1w onto the FLAIR grid: %.1f s; lesion segmentation: %.1f s (%d voxels, %d true)",
            t_resample,
            t_seg,
            int(np.count_nonzero(lesions)),
            int(np.count_nonzero(np.asarray(true_lesions))),
        )
        added = total + t_mask + t_resample + t_seg
        logger.info(
            "total: registrations %.1f s (CPU %.1f s, %d collections) + brain mask %.1f s + "
            "lesions %.1f s = %.1f s (issue 18 target: <= 60 s added on 2 cores); load %s",
            total,
            total_cpu,
            len(regs),
            t_mask,
            t_resample + t_seg,
            added,
            " ".join(f"{x:.2f}" for x in os.getloadavg()),
        )


if __name__ == "__main__":
    main()
