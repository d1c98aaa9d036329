"""The table schema: column names and descriptions of every TSV msqmri writes (CONTRACT 4.1).

One place for the participant tables (:mod:`bids_app.stages.tables`), the lesion core
(:mod:`bids_app.lesions`), the group level (:mod:`bids_app.group`) and the reports.
"""

from __future__ import annotations

REGION_COLUMNS = {
    "participant_id": "BIDS participant label (sub-<label>)",
    "session_id": "BIDS session label (ses-<label>), n/a without sessions",
    "map": (
        "map name: its file name without sub-/ses-/extension (the BIDS suffix, with the "
        "model-/param-/desc-/acq-/run- entities where the suffix alone is ambiguous)"
    ),
    "units": "units of the map (CONTRACT section 4)",
    "space": "space of the maps and masks the statistics were computed in",
    "region": (
        "lesion, NAWM, NAGM, WM, GM, CSF, perilesional_<k>mm; also brain (the brain mask) "
        "for subjects without a structural image"
    ),
    "n_voxels": "voxels in the region",
    "volume_mm3": "region volume in mm^3",
    "mean": "mean of the finite map values in the region",
    "median": "median of the finite map values",
    "std": "standard deviation of the finite map values",
    "p05": "5th percentile",
    "p95": "95th percentile",
    "n_invalid": "region voxels where the map is not finite (outside the fit or valid range)",
}
LESION_COLUMNS = {
    "participant_id": REGION_COLUMNS["participant_id"],
    "session_id": REGION_COLUMNS["session_id"],
    "lesion_id": "integer label of the lesion in the desc-lesions_dseg image",
    "volume_mm3": "lesion volume in mm^3",
    "centroid_x": "lesion centroid, world x (mm, scanner RAS)",
    "centroid_y": "lesion centroid, world y (mm)",
    "centroid_z": "lesion centroid, world z (mm)",
    "location": "periventricular, juxtacortical, infratentorial or deep_white_matter",
    "enhancement_ratio": (
        "with a post-gadolinium (ce-) T1w: mean over the lesion of the voxel ratio post/pre-"
        "contrast T1w divided by its NAWM median (without a pre-contrast T1w: post-contrast "
        "T1w / its NAWM median); n/a without a ce- T1w"
    ),
    "enhancing_fraction": "fraction of the lesion's voxels whose enhancement ratio > 1.2",
    "enhancing": (
        "1 for a gadolinium-enhancing lesion (>= 25 % of its voxels and >= 3 mm^3 with an "
        "enhancement ratio > 1.2, defaults of bids_app.lesion_enhancement), else 0; n/a "
        "without a ce- T1w"
    ),
    "map": REGION_COLUMNS["map"],
    "units": REGION_COLUMNS["units"],
    "mean": "mean of the map in the lesion",
    "median": "median of the map in the lesion",
    "std": "standard deviation of the map in the lesion",
    "core_mean": "mean in the lesion core (farther than the rim width from the border)",
    "rim_mean": "mean in the lesion rim (within the rim width of the border)",
    "rim_index": (
        "Chimap rows: fraction of the 2 mm border shell whose chi exceeds the NAWM and core "
        "means by > 0.02 ppm (paramagnetic rim score); n/a for other maps"
    ),
    "prl_candidate": (
        "Chimap rows: 1 for a paramagnetic rim lesion candidate (rim_index >= 0.5, >= 5 "
        "shell voxels), else 0; n/a for other maps"
    ),
}

#: columns of :func:`bids_app.lesions.lesion_table`: the lesion table without identifiers/units
LESION_TABLE_COLUMNS = tuple(
    c for c in LESION_COLUMNS if c not in ("participant_id", "session_id", "units")
)

#: ``group`` values of participants.tsv read as patients / controls (lower case)
PATIENT_LABELS = {"patient", "patients", "ms", "pwms", "case", "cis", "rrms", "spms", "ppms"}
CONTROL_LABELS = {"control", "controls", "hc", "healthy", "healthy_control", "ctrl"}


def group_role(value) -> str | None:
    """'patient', 'control' or None for a ``group`` value of participants.tsv."""
    v = str(value).strip().lower()
    return "patient" if v in PATIENT_LABELS else "control" if v in CONTROL_LABELS else None
