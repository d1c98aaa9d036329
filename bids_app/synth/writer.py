"""File writing for msqmri-synth: NIfTI, JSON, TSV and the dataset-level files.

Deterministic: gzip streams carry ``mtime = 0`` and no file name, JSON keys keep their insertion
order and floats in TSVs are formatted with a fixed precision.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_app import __version__

BIDS_VERSION = "1.10.0"
GENERATED_BY = {
    "Name": "msqmri-synth",
    "Version": __version__,
    "Description": "Synthetic multiple-sclerosis qMRI dataset with known ground truth",
}


def save_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, *, dtype: Any, step: float | None = None
) -> None:
    """Write a NIfTI-1 image with scanner-space sform/qform (code 1) and mm units.

    Parameters
    ----------
    path : Path
        Target ``.nii.gz``; parent folders are created. Gzip level 1, ``mtime = 0``.
    data : (X, Y, Z) ndarray
        Voxel values.
    affine : (4, 4) ndarray
        Voxel-to-world affine (mm).
    dtype : numpy dtype
        On-disk type.
    step : float, optional
        With an integer ``dtype``: store ``round(data / step)`` and ``scl_slope = step``, as
        scanner exports do (readers get ``data`` back to within ``step / 2``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if step is not None:
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data / step), info.min, info.max).astype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if step is not None:
        img.header.set_slope_inter(step, 0.0)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Write a JSON file (2-space indent, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return str(value)


def write_tsv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write a tab-separated table with the given column order (floats to 6 digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_fmt(row[c]) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def entity_prefix(subject: str, session: str | None) -> str:
    """``sub-<s>[_ses-<t>]``."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def subject_dir(root: Path, subject: str, session: str | None) -> Path:
    """``root/sub-<s>[/ses-<t>]``."""
    out = root / f"sub-{subject}"
    return out / f"ses-{session}" if session else out


def raw_description() -> dict[str, Any]:
    """``dataset_description.json`` of the raw dataset."""
    return {
        "Name": "msqmri-synth: synthetic multiple sclerosis quantitative MRI",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["msqmri developers"],
        "GeneratedBy": [GENERATED_BY],
        "HowToAcknowledge": (
            "Anatomy from the OSIPI ASL DRO (asldro, MIT) based on the MNI ICBM 2009a "
            "nonlinear symmetric template (Fonov et al., NeuroImage 2011)."
        ),
    }


def derivative_description(name: str, description: str) -> dict[str, Any]:
    """``dataset_description.json`` of a derivative folder of the synthetic dataset."""
    return {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "License": "CC0",
        "GeneratedBy": [{**GENERATED_BY, "Description": description}],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": "../../"},
    }


PARTICIPANTS_JSON: dict[str, Any] = {
    "participant_id": {"Description": "Participant label"},
    "group": {
        "Description": "Diagnostic group",
        "Levels": {
            "patient": "synthetic multiple sclerosis patient",
            "control": "healthy control",
        },
    },
    "age": {"Description": "Age at the first session", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
}

DSEG_TRUTH = [(1, "GM"), (2, "WM"), (3, "CSF"), (4, "lesion")]
DSEG_TISSUE = [(1, "GM"), (2, "WM"), (3, "CSF")]


def write_dseg_tsv(path: Path, labels: Sequence[tuple[int, str]]) -> None:
    """Write a ``_dseg.tsv`` look-up table (``index``, ``name``)."""
    write_tsv(path, [{"index": i, "name": n} for i, n in labels], ["index", "name"])


def readme(*, size: str, voxel: float, snr: float, seed: int, sigma: Mapping[str, float]) -> str:
    """Text of the raw dataset's ``README.md``."""
    noise = "\n".join(f"| {k} | {v:.4g} |" for k, v in sigma.items())
    return f"""# msqmri-synth: synthetic MS quantitative MRI dataset

Written by `msqmri-synth` (msqmri {__version__}) with `--size {size}` ({voxel:g} mm
isotropic), `--seed {seed}`, `--snr {snr:g}`. Every subject shares the same grid and
affine; subjects differ by their lesions and by tissue-value variations of a few
percent. Odd-numbered subjects are patients, even-numbered ones controls.

## Anatomy
Tissue labels (GM, WM, CSF) of the OSIPI ASL digital reference object (asldro, MIT
licence), based on the MNI ICBM 2009a nonlinear symmetric template (Copyright (C)
1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University; see the licence shipped with msqmri). Patients carry 5-10 ellipsoid
white-matter lesions (periventricular, deep, juxtacortical).

## Acquisitions and signal equations
* `T1w` MPRAGE-like: `S = G M0 sin(B1 a) |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2*)`.
* `FLAIR`: `S = G M0 |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`, CSF nulled.
* `VFA`, `MTR`/`MTS` with MT off, `MEGRE`: Ernst equation
  `S = G M0 sin(B1 a)(1 - E1)/(1 - E1 cos(B1 a)) exp(-TE/T2*)`, E1 = exp(-TR/T1)
  (VFA, MTR, MTS: TE = 2 ms).
* MT on: Helms' model, a fraction `d = MTsat/100` of Mz saturated once per TR:
  `S = G M0 sin(B1 a)(1 - d)(1 - E1)/(1 - (1 - d) E1 cos(B1 a)) exp(-TE/T2*)`.
* `MESE`: `S = G M0 (1 - exp(-TR/T1)) exp(-TE/T2)` (mono-exponential, perfect refocusing).
* `fmap/*_TB1map`: the true relative B1+ on a grid with 2x coarser voxels, plus Gaussian
  noise (SD 0.01).

`G` = 1000, `a` the nominal flip angle; sequence parameters are in each sidecar. Images
are int16 with `scl_slope` = sigma / 8 of their collection (rounding adds 0.13 % to the
noise variance).

## Noise
Rician: Gaussian noise of SD `sigma` on the real and imaginary channels of the real
noiseless signal, then the magnitude. `sigma` is set per collection to (noiseless signal
of the collection's first volume in control-like WM, B1 = 1) / SNR:

| collection | sigma |
|---|---|
{noise}

## Derivatives
* `derivatives/truth/`: ground-truth maps (T1map, R1map, T2map, R2map, T2starmap,
  R2starmap, M0map, MTsat, MTRmap, TB1map), `dseg` (1 GM, 2 WM, 3 CSF, 4 lesion), lesion
  masks, per-lesion labels and tables, and `simulation.json` (all parameters).
* `derivatives/lesions/`: lesion masks of the patients, for `msqmri --derivatives`.
* `derivatives/tissue/`: GM/WM/CSF segmentations (lesions labelled WM, as a segmentation
  tool would).
"""
