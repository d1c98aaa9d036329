"""One pybids ``BIDSLayout`` per dataset, built the NiPreps way (no validation in pybids)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from bids import BIDSLayout, BIDSLayoutIndexer

from bids_app.errors import MetadataError, SelectionError, UsageError

logger = logging.getLogger(__name__)

#: folders never indexed in the raw dataset
_IGNORE = ("code", "stimuli", "sourcedata", "models", "derivatives", "logs")


def _subject_ignore(labels: Sequence[str] | None) -> list[re.Pattern]:
    if not labels:
        return []
    alt = "|".join(re.escape(lab) for lab in labels)
    return [re.compile(rf"^/sub-(?!(?:{alt})(?:/|$))")]


def check_json_files(root: Path) -> None:
    """Parse every JSON sidecar below ``root`` so that a broken one is named clearly.

    Raises
    ------
    MetadataError
        For the first file that is not valid JSON (exit 65).
    """
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).parts
        if rel and rel[0] in _IGNORE:
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MetadataError(
                str(path), "JSON", f"line {getattr(err, 'lineno', '?')}", f"valid JSON ({err})"
            ) from None


def make_layout(
    bids_dir: Path, *, participant_label: Sequence[str] | None = None, derivative: bool = False
) -> BIDSLayout:
    """Index a BIDS dataset (raw, or one derivative dataset) without validation.

    Parameters
    ----------
    bids_dir : Path
        Dataset root.
    participant_label : sequence of str, optional
        Subjects to index; others are ignored at indexing time.
    derivative : bool
        Index ``bids_dir`` as a derivative dataset (derivative entities such as ``desc``,
        ``label``, ``space``).

    Raises
    ------
    UsageError
        If ``dataset_description.json`` is missing.
    MetadataError
        If a sidecar is not valid JSON.
    """
    bids_dir = Path(bids_dir)
    desc = bids_dir / "dataset_description.json"
    if not desc.is_file():
        raise UsageError(
            f"{bids_dir}: no dataset_description.json; expected the root of a BIDS dataset"
        )
    check_json_files(bids_dir)
    ignore: list = [re.compile(rf"^/{d}(/|$)") for d in _IGNORE] if not derivative else []
    ignore += _subject_ignore(participant_label)
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=True)
    config = ["bids", "derivatives"] if derivative else ["bids"]
    try:
        layout = BIDSLayout(
            bids_dir,
            validate=False,
            derivatives=False,
            indexer=indexer,
            config=config,
            is_derivative=derivative,
        )
    except ValueError as err:
        raise UsageError(f"{bids_dir}: cannot index as a BIDS dataset ({err})") from None
    return layout


def select_subjects(
    layout: BIDSLayout,
    participant_label: Sequence[str] | None,
    session_label: Sequence[str] | None,
) -> list[tuple[str, str | None]]:
    """The (subject, session) units of work, sorted.

    Raises
    ------
    SelectionError
        If the labels select nothing (exit 18), naming the labels not found.
    """
    subjects = sorted(layout.get_subjects())
    if participant_label:
        missing = sorted(set(participant_label) - set(subjects))
        if missing:
            raise SelectionError(
                f"participant label(s) {missing} not found in {layout.root}; available: {subjects}"
            )
        subjects = [s for s in subjects if s in participant_label]
    units: list[tuple[str, str | None]] = []
    for sub in subjects:
        sessions = sorted(layout.get_sessions(subject=sub))
        if session_label:
            sessions = [s for s in sessions if s in session_label]
            units += [(sub, s) for s in sessions]
        else:
            units += [(sub, s) for s in sessions] or [(sub, None)]
    if not units:
        raise SelectionError(
            f"no subject/session selected in {layout.root} by participant label "
            f"{list(participant_label or [])} and session label {list(session_label or [])}"
        )
    return units
