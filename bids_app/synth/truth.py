"""Ground-truth derivatives of msqmri-synth: ``derivatives/truth``, ``lesions``, ``tissue``.

Per subject/session, on the subject grid: the parameter maps (``T1map`` s, ``R1map`` 1/s,
``T2map`` s, ``R2map`` 1/s, ``T2starmap`` s, ``R2starmap`` 1/s, ``M0map``, ``MTsat`` p.u.,
``MTRmap`` percent, ``TB1map`` fraction), the ``dseg`` (1 GM, 2 WM = NAWM, 3 CSF,
4 lesion), the lesion mask, one label per lesion (``desc-lesions_dseg`` + table); the
lesion mask again in ``derivatives/lesions`` (patients only) and the GM/WM/CSF
segmentation with lesions labelled WM in ``derivatives/tissue``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_app.synth import writer
from bids_app.synth.anatomy import Anatomy
from bids_app.synth.protocol import GAIN, mtr_truth

_TRUTH = (
    ("T1map", "T1", "s", "longitudinal relaxation time"),
    ("R1map", "1/T1", "1/s", "longitudinal relaxation rate"),
    ("T2map", "T2", "s", "transverse relaxation time (single compartment)"),
    ("R2map", "1/T2", "1/s", "transverse relaxation rate"),
    ("T2starmap", "T2star", "s", "effective transverse relaxation time"),
    ("R2starmap", "1/T2star", "1/s", "effective transverse relaxation rate"),
    (
        "M0map",
        "PD",
        "arbitrary",
        f"proton density; raw intensity = {GAIN:g} x M0 x signal equation",
    ),
    ("MTsat", "MTsat", "percent units", "Helms MT saturation per TR (100 x delta)"),
    ("MTRmap", "MTR", "percent", "noiseless MTR of the MTR protocol from the forward model"),
    ("TB1map", "B1", "fraction of nominal flip angle", "relative B1+ (whole grid)"),
)


def write_truth(
    root: Path,
    subject: str,
    session: str | None,
    *,
    patient: bool,
    anatomy: Anatomy,
    truth: dict[str, np.ndarray],
    ids: np.ndarray,
    rows: list[dict],
) -> None:
    """Write one subject/session's truth, lesion and tissue derivatives.

    Parameters
    ----------
    root : Path
        Raw dataset root (``derivatives/`` is written below it).
    subject : str
        Label without ``sub-``.
    session : str or None
        Label without ``ses-``; None for single-session datasets.
    patient : bool
        Patients also get ``derivatives/lesions``.
    anatomy : Anatomy
        Grid and tissue labels.
    truth : dict of (X, Y, Z) ndarray
        ``T1``, ``T2``, ``T2star``, ``PD``, ``MTsat``, ``B1`` from
        :func:`bids_app.synth.tissue.truth_maps`.
    ids : (X, Y, Z) int ndarray
        Lesion labels (0 = no lesion).
    rows : list of dict
        Lesion table rows (:func:`bids_app.synth.lesions.lesion_rows`).
    """
    prefix = writer.entity_prefix(subject, session)
    rel = f"sub-{subject}/" + (f"ses-{session}/" if session else "")
    affine = anatomy.affine
    ref = {"SpatialReference": f"bids:raw:{rel}anat/{prefix}_FLAIR.nii.gz"}
    deriv = root / "derivatives"
    anat = writer.subject_dir(deriv / "truth", subject, session) / "anat"
    brain = anatomy.brain
    mtr = np.zeros(anatomy.shape, dtype=np.float32)
    mtr[brain] = mtr_truth({key: value[brain] for key, value in truth.items()})
    truth = {**truth, "MTR": mtr}
    for suffix, key, units, text in _TRUTH:
        if key.startswith("1/"):
            src = truth[key[2:]]
            data = np.divide(1.0, src, out=np.zeros_like(src), where=src > 0)
        else:
            data = truth[key]
        outside = "" if key == "B1" else "; 0 outside the brain"
        writer.save_nifti(anat / f"{prefix}_{suffix}.nii.gz", data, affine, dtype=np.float32)
        meta = {"Units": units, "Description": f"Ground truth: {text}{outside}", **ref}
        writer.write_json(anat / f"{prefix}_{suffix}.json", meta)
    lesion = ids > 0
    dseg = anatomy.labels.copy()
    dseg[lesion] = 4
    writer.save_nifti(anat / f"{prefix}_dseg.nii.gz", dseg, affine, dtype=np.uint8)
    writer.write_dseg_tsv(anat / f"{prefix}_dseg.tsv", writer.DSEG_TRUTH)
    writer.write_json(
        anat / f"{prefix}_dseg.json",
        {"Description": "1 GM, 2 WM (normal-appearing), 3 CSF, 4 lesion", **ref},
    )
    _save_mask(anat / f"{prefix}_label-lesion_mask.nii.gz", lesion, affine, ref)
    writer.save_nifti(anat / f"{prefix}_desc-lesions_dseg.nii.gz", ids, affine, dtype=np.int16)
    columns = ["index", "name", "location", "course", "onset_session", "n_voxels", "volume_mm3"]
    columns += ["centroid_x", "centroid_y", "centroid_z", "T1", "T2", "PD", "MTsat"]
    writer.write_tsv(anat / f"{prefix}_desc-lesions_dseg.tsv", rows, columns)
    writer.write_json(
        anat / f"{prefix}_desc-lesions_dseg.json",
        {
            "Description": "One label per lesion (index stable across sessions); table columns: "
            "location by contact (ventricles, GM), course over sessions, truth means (T1 s, "
            "T2 s, PD, MTsat p.u.), centroid in world mm",
            **ref,
        },
    )
    # derivatives/lesions: patients only
    if patient:
        les_dir = writer.subject_dir(deriv / "lesions", subject, session) / "anat"
        _save_mask(les_dir / f"{prefix}_label-lesion_mask.nii.gz", lesion, affine, ref)
    # derivatives/tissue: GM/WM/CSF, lesions as WM
    tis_dir = writer.subject_dir(deriv / "tissue", subject, session) / "anat"
    writer.save_nifti(tis_dir / f"{prefix}_dseg.nii.gz", anatomy.labels, affine, dtype=np.uint8)
    writer.write_dseg_tsv(tis_dir / f"{prefix}_dseg.tsv", writer.DSEG_TISSUE)
    writer.write_json(
        tis_dir / f"{prefix}_dseg.json",
        {"Description": "True tissue classes; lesions are labelled WM", "Manual": False, **ref},
    )


def _save_mask(path: Path, mask: np.ndarray, affine: np.ndarray, ref: dict) -> None:
    writer.save_nifti(path, mask.astype(np.uint8), affine, dtype=np.uint8)
    meta = {
        "Type": "Lesion",
        "Description": "True lesion mask of the synthetic dataset (msqmri-synth)",
        "Manual": False,
        **ref,
    }
    writer.write_json(path.with_name(path.name.replace(".nii.gz", ".json")), meta)
