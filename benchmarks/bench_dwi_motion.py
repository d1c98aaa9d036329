"""DWI motion correction: accuracy on known motions and time, per registration grid.

Takes a ``msqmri-synth`` DWI (``--dwi``; default: writes ``--size brain --series dwi``),
moves a few DW volumes by known rigid motions (2 degrees about varied axes, 1 mm), and runs
:func:`bids_app.models.diffusion._motion.motion_correct` on every volume with the
registration grids of ``--grids`` (mm; 0 is the native grid), serially or on ``--nprocs``
spawned workers. With ``--also-2mm`` the series block-averaged to 2 mm is run too. Prints the
residual rotation of each moved volume (degrees), the spurious rotation of the others and
the wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import affine_transform
from skimage.transform import downscale_local_mean

from bids_app.models.diffusion._motion import (
    _orthonormal,
    _rotation,
    motion_correct,
    rotation_angle,
)
from bids_app.synth.cli import main as synth
from bids_app.synth.dwi import rotation_matrix

MOTIONS = (((1, 0, 0), 2.0, (1.0, 0.0, 0.0)), ((0, 1, 1), 2.0, (0.0, -1.0, 0.5)),
           ((1, 1, 1), 1.5, (0.5, 0.5, 0.0)))  # fmt: skip


def _move(vol: np.ndarray, rot: np.ndarray, shift_vox: np.ndarray) -> np.ndarray:
    """Rotate ``vol`` about its centre by ``rot`` (voxel axes) and shift it."""
    c = (np.asarray(vol.shape) - 1) / 2.0
    return affine_transform(vol, rot, offset=c - rot @ c + shift_vox, order=1)


def run(data, bvals, bvecs, affine, grids, nprocs, label):
    dw = np.flatnonzero(bvals > 50)
    moved = [int(dw[k]) for k in (3, len(dw) // 2, len(dw) - 2)]
    data = np.array(data, np.float32)
    truth = {}
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    for k, (axis, deg, shift) in zip(moved, MOTIONS, strict=True):
        rot = rotation_matrix(deg, axis)
        data[..., k] = _move(data[..., k], rot, np.asarray(shift) / zooms)
        truth[k] = rot
    executor = ProcessPoolExecutor(nprocs, mp_context=get_context("spawn")) if nprocs > 1 else None
    try:
        for grid in grids:
            t = time.perf_counter()
            _, _, xfms = motion_correct(data, bvals, bvecs, affine, grid_mm=grid,
                                        executor=executor)  # fmt: skip
            dt = time.perf_counter() - t
            # the volume shows the content at R o: the transform is R^-1 in voxel axes
            m = _orthonormal(affine)
            res = [rotation_angle(np.linalg.inv(m) @ _rotation(xfms[k][:3, :3]) @ m @ truth[k])
                   for k in moved]  # fmt: skip
            rest = [rotation_angle(x[:3, :3]) for i, x in enumerate(xfms) if i not in truth]
            print(f"{label} grid {grid:g} mm, {data.shape[-1]} volumes, --nprocs {nprocs}: "
                  f"{dt:6.1f} s; residual rotation of the moved volumes "
                  f"{', '.join(f'{r:.3f}' for r in res)} deg; spurious rotation of the "
                  f"others median {np.median(rest):.3f}, max {np.max(rest):.3f} deg")  # fmt: skip
    finally:
        if executor is not None:
            executor.shutdown()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dwi", type=Path, help="a *_dwi.nii.gz with .bval/.bvec beside it")
    p.add_argument("--grids", type=float, nargs="+", default=[4.0, 0.0])
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--also-2mm", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.dwi
        if path is None:
            synth([tmp, "--size", "brain", "--subjects", "1", "--series", "dwi"])
            path = next(Path(tmp).rglob("*_dwi.nii.gz"))
        img = nib.load(path)
        stem = str(path).removesuffix(".nii.gz")
        bvals = np.loadtxt(stem + ".bval")
        bvecs = np.loadtxt(stem + ".bvec").T
        data = np.asarray(img.dataobj, np.float32)
        run(data, bvals, bvecs, img.affine, args.grids, args.nprocs, f"{path.name}")
        if args.also_2mm:
            half = downscale_local_mean(data, (2, 2, 2, 1)).astype(np.float32)
            aff = img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
            run(half, bvals, bvecs, aff, args.grids, args.nprocs, "2 mm block average")


if __name__ == "__main__":
    main()
