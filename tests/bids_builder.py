"""Write small BIDS datasets from a dict spec (niworkflows ``generate_bids_skeleton`` style).

``spec = {"sub-01": {"anat/sub-01_flip-1_VFA": ({"FlipAngle": 3, ...}, data_or_None)}}``
Images default to a small positive float32 volume; ``None`` sidecar writes no JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def write_dataset(
    root: Path,
    spec: dict,
    *,
    participants: list[dict] | None = None,
    description: dict | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    desc = description or {"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw"}
    (root / "dataset_description.json").write_text(json.dumps(desc))
    if participants:
        cols = list(participants[0])
        lines = ["\t".join(cols)] + ["\t".join(str(p[c]) for c in cols) for p in participants]
        (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    for sub, files in spec.items():
        for stem, (meta, data) in files.items():
            path = root / sub / f"{stem}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                data = np.full((6, 6, 6), 100.0, np.float32)
            nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), path)
            if meta is not None:
                (root / sub / f"{stem}.json").write_text(json.dumps(meta))
    return root


def vfa_spec(sub: str = "sub-01", flips=(3, 20), tr=0.015, **overrides) -> dict:
    """A two-flip VFA collection (+ T1w) for one subject."""
    files = {}
    for i, fa in enumerate(flips, start=1):
        meta = {"FlipAngle": fa, "RepetitionTimeExcitation": tr, **overrides}
        files[f"anat/{sub}_flip-{i}_VFA"] = (meta, None)
    return files
