"""Truth of the lesion changes of a multi-session synthetic dataset (``--sessions K > 1``).

Written only when there are several sessions, so single-session datasets are unchanged:

``sub-<l>/sub-<l>_sessions.tsv``
    ``session_id`` and ``acq_time``: session ``t`` (0-based) is exactly ``t`` x 365 days
    after a baseline of 2020-01-06 09:00 plus one week per subject index;
``derivatives/truth/sub-<l>/sub-<l>_desc-lesionchanges_stats.tsv``
    one row per true lesion x consecutive session pair: its designed ``course``, the
    ``change`` label, the true voxel counts and volumes at both sessions and the true
    lesion means of MTR (percent) and MTsat (p.u.) with their differences.

The ``change`` label is computed here, independently of the app, from the true voxel
counts with the app's documented default rule (:mod:`bids_app.lesion_match`): absent
before = ``new``, absent after = ``resolved``, else ``enlarging`` / ``shrinking`` when the
count changes by more than 25 % and more than 3 voxels, else ``stable``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from bids_app.synth import writer
from bids_app.synth.protocol import mtr_truth

CHANGE_FRACTION = 0.25
CHANGE_VOXELS = 3
BASELINE = datetime(2020, 1, 6, 9, 0, 0)
COLUMNS = (
    "index", "name", "course", "session_from", "session_to", "change", "n_voxels_from",
    "n_voxels_to", "volume_from_mm3", "volume_to_mm3", "MTR_from", "MTR_to", "MTR_change",
    "MTsat_from", "MTsat_to", "MTsat_change",
)  # fmt: skip


def session_record(ids: np.ndarray, truth: dict[str, np.ndarray]) -> dict[int, tuple]:
    """Per lesion index: (voxels, mean true MTR in percent, mean true MTsat in p.u.).

    Parameters
    ----------
    ids : (X, Y, Z) int ndarray
        Lesion labels of one session (0 elsewhere).
    truth : dict of (X, Y, Z) ndarray
        The session's truth maps (:func:`bids_app.synth.tissue.truth_maps`).
    """
    out = {}
    for index in np.unique(ids[ids > 0]).tolist():
        mask = ids == index
        mtr = mtr_truth({k: v[mask] for k, v in truth.items()})
        out[int(index)] = (int(mask.sum()), float(mtr.mean()), float(truth["MTsat"][mask].mean()))
    return out


def change_label(n0: int, n1: int) -> str:
    """The change label of a lesion going from ``n0`` to ``n1`` voxels (module docstring)."""
    if n0 == 0:
        return "new"
    if n1 == 0:
        return "resolved"
    delta = n1 - n0
    if abs(delta) > CHANGE_FRACTION * n0 and abs(delta) > CHANGE_VOXELS:
        return "enlarging" if delta > 0 else "shrinking"
    return "stable"


def write_changes(
    root: Path,
    subject: str,
    index: int,
    sessions: tuple[str, ...],
    lesions: list,
    history: list[dict[int, tuple]],
    voxel_mm3: float,
) -> None:
    """Write the sessions table and the lesion-change truth of one subject.

    Parameters
    ----------
    root : Path
        Raw dataset root.
    subject : str
        Label without ``sub-``.
    index : int
        0-based subject index (shifts the baseline date by one week per subject).
    sessions : tuple of str
        Session labels.
    lesions : list of bids_app.synth.lesions.Lesion
        The subject's lesions (empty for controls).
    history : list of dict
        :func:`session_record` of each session, in order.
    voxel_mm3 : float
        Voxel volume.
    """
    base = BASELINE + timedelta(days=7 * index)
    rows = [
        {"session_id": f"ses-{s}", "acq_time": (base + timedelta(days=365 * t)).isoformat()}
        for t, s in enumerate(sessions)
    ]
    sub = root / f"sub-{subject}"
    writer.write_tsv(sub / f"sub-{subject}_sessions.tsv", rows, ("session_id", "acq_time"))
    out = []
    nan = (0, float("nan"), float("nan"))
    for t in range(1, len(sessions)):
        before, after = history[t - 1], history[t]
        for les in lesions:
            if les.index not in before and les.index not in after:
                continue
            n0, mtr0, sat0 = before.get(les.index, nan)
            n1, mtr1, sat1 = after.get(les.index, nan)
            out.append({
                "index": les.index, "name": f"lesion-{les.index:02d}", "course": les.course,
                "session_from": f"ses-{sessions[t - 1]}", "session_to": f"ses-{sessions[t]}",
                "change": change_label(n0, n1), "n_voxels_from": n0, "n_voxels_to": n1,
                "volume_from_mm3": n0 * voxel_mm3, "volume_to_mm3": n1 * voxel_mm3,
                "MTR_from": mtr0, "MTR_to": mtr1, "MTR_change": mtr1 - mtr0,
                "MTsat_from": sat0, "MTsat_to": sat1, "MTsat_change": sat1 - sat0,
            })  # fmt: skip
    out = [{k: None if v != v else v for k, v in row.items()} for row in out]  # NaN: n/a
    truth = root / "derivatives" / "truth" / f"sub-{subject}"
    writer.write_tsv(truth / f"sub-{subject}_desc-lesionchanges_stats.tsv", out, COLUMNS)
    writer.write_json(
        truth / f"sub-{subject}_desc-lesionchanges_stats.json",
        {
            "Description": "True lesion changes between consecutive sessions (index = label "
            "of derivatives/truth desc-lesions_dseg); change: 25 % and 3 voxels rule on the "
            "true voxel counts; MTR in percent, MTsat in p.u. (true lesion means)",
        },
    )
