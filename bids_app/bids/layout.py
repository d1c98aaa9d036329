"""One pybids ``BIDSLayout`` per dataset, built the NiPreps way (no validation in pybids)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from bids import BIDSLayout, BIDSLayoutIndexer

from bids_app.bids.annex import check_annexed_content
from bids_app.errors import MetadataError, NoInputsError, SelectionError, UsageError

logger = logging.getLogger(__name__)

#: folders never indexed in the raw dataset
_IGNORE = ("code", "stimuli", "sourcedata", "models", "derivatives", "logs")
#: the same, public (the CLI checks annexed content in the same folders)
IGNORED_FOLDERS = _IGNORE
#: attribute of a layout holding the JSON files left out of it (see :func:`invalid_sidecars`)
_INVALID_ATTR = "msqmri_invalid_sidecars"


def _subject_ignore(labels: Sequence[str] | None) -> list[re.Pattern]:
    if not labels:
        return []
    alt = "|".join(re.escape(lab) for lab in labels)
    return [re.compile(rf"^/sub-(?!(?:{alt})(?:/|$))")]


def _json_problem(path: Path) -> str | None:
    """Why a JSON file cannot be used (None if it is a readable JSON object)."""
    if path.is_symlink() and not path.exists():
        return "a broken symlink (un-fetched DataLad/git-annex content? run 'datalad get')"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
        return f"invalid JSON ({err})"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    return None


def check_json_files(root: Path, *, skip: Sequence[str] = _IGNORE) -> dict[str, str]:
    """Parse every JSON file below ``root``; return the unusable ones with the reason.

    Parameters
    ----------
    root : Path
        Dataset root.
    skip : sequence of str
        Top-level folders not checked (not indexed either).

    Returns
    -------
    dict of str to str
        Path of each unusable JSON file inside a ``sub-<label>`` folder -> what is wrong.

    Raises
    ------
    MetadataError
        For the first unusable JSON file outside the ``sub-<label>`` folders
        (``dataset_description.json``, top-level sidecars shared by every subject): the
        whole dataset depends on it (exit 65).
    """
    bad: dict[str, str] = {}
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).parts
        if rel and (rel[0] in skip or rel[0].startswith(".")):  # .git, .datalad
            continue
        problem = _json_problem(path)
        if problem is None:
            continue
        if not rel[0].startswith("sub-") or len(rel) == 1:
            raise MetadataError(str(path), "JSON", problem, "a readable JSON object")
        bad[str(path)] = problem
    return bad


def invalid_sidecars(layout: BIDSLayout) -> dict[str, str]:
    """Unusable JSON files left out of ``layout`` by :func:`make_layout` (path -> reason)."""
    return dict(getattr(layout, _INVALID_ATTR, {}))


def make_layout(
    bids_dir: Path,
    *,
    participant_label: Sequence[str] | None = None,
    derivative: bool = False,
    require_description: bool = True,
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
    require_description : bool
        Whether a missing ``dataset_description.json`` is an error (True: validation on);
        when False the raw dataset is indexed anyway, with a warning
        (``--skip-bids-validation``). Derivative datasets always need it.

    Raises
    ------
    UsageError
        If ``dataset_description.json`` is missing (and required).
    AnnexContentError
        If files of the selected subjects are un-fetched git-annex/DataLad symlinks (exit
        66), before anything else is read (:func:`~bids_app.bids.annex.check_annexed_content`).
    MetadataError
        If a JSON file outside the subject folders is unusable. Unusable JSON files inside a
        subject folder are left out of the index instead (pybids cannot index them) and
        recorded for :func:`invalid_sidecars`, so that only the images they describe fail,
        with exit 65 for that subject alone.
    """
    bids_dir = Path(bids_dir)
    desc = bids_dir / "dataset_description.json"
    skip = _IGNORE if not derivative else ()
    check_annexed_content(bids_dir, participant_label=participant_label, skip=skip)
    if not desc.is_file():
        if require_description or derivative:
            raise UsageError(
                f"{bids_dir}: no dataset_description.json; expected the root of a BIDS dataset"
                + ("" if derivative else " (or pass --skip-bids-validation)")
            )
        logger.warning(
            "%s: no dataset_description.json (not a valid BIDS dataset); indexed anyway "
            "because of --skip-bids-validation",
            bids_dir,
        )
    ignore: list = [re.compile(rf"^/{d}(/|$)") for d in skip]
    ignore.append(re.compile(r"/\.[^/]+(/|$)"))  # .git (annexed objects), .datalad
    ignore += _subject_ignore(participant_label)
    bad = check_json_files(bids_dir, skip=skip)
    if participant_label:
        bad = {p: r for p, r in bad.items() if _subject_of(bids_dir, p) in participant_label}
    for path, reason in bad.items():
        rel = Path(path).relative_to(bids_dir).as_posix()
        ignore.append(re.compile(rf"^/{re.escape(rel)}$"))
        logger.warning(
            "%s: %s; not indexed, the images it describes fail with exit 65", path, reason
        )
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=True)
    config = [bids_config(), "derivatives"] if derivative else [bids_config()]
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
    setattr(layout, _INVALID_ATTR, bad)
    return layout


def bids_config() -> dict:
    """The ``bids`` configuration of pybids, with the ``datatype`` entity anchored to the subject.

    pybids (to 0.22 at least) matches its entity patterns against the absolute path, so a
    dataset below any folder named like a datatype (``/data/perf/ds``, ``/project/anat/ds``)
    gets that folder as the datatype of every file (bids-standard/pybids#1270, fixed by
    PR #1273). Here the datatype is the folder right after ``sub-<label>[/ses-<label>]``,
    the last such match in the path, as the BIDS specification defines it.

    Returns
    -------
    dict
        A configuration for ``BIDSLayout(config=...)``, named ``bids`` like the original.
    """
    from bids.config import get_option

    data = json.loads(Path(get_option("config_paths")["bids"]).read_text())
    for entity in data["entities"]:
        if entity["name"] == "datatype":
            folders = re.search(r"\((.*?)\)", entity["pattern"]).group(1)
            entity["pattern"] = (
                r"^.*[/\\]sub-[a-zA-Z0-9+]+(?:[/\\]+ses-[a-zA-Z0-9+]+)?[/\\]+"
                rf"({folders})[/\\]+"
            )
    return data


def _subject_of(root: Path, path: str) -> str:
    return Path(path).relative_to(root).parts[0][len("sub-") :]


def select_subjects(
    layout: BIDSLayout,
    participant_label: Sequence[str] | None,
    session_label: Sequence[str] | None,
) -> list[tuple[str, str | None]]:
    """The (subject, session) units of work, sorted.

    Raises
    ------
    SelectionError
        If a participant label is not in the dataset, or the labels select nothing (exit 18),
        naming the labels not found and those available.
    NoInputsError
        If the dataset has no subject at all (exit 66).
    """
    subjects = sorted(layout.get_subjects())
    # the layout indexes only the selected subjects: list the others from the folders
    folders = sorted(p.name[len("sub-") :] for p in Path(layout.root).glob("sub-*") if p.is_dir())
    if not subjects and not folders:
        raise NoInputsError(f"{layout.root}: no sub-<label> folder; expected BIDS subjects")
    if participant_label:
        missing = sorted(set(participant_label) - set(subjects))
        if missing:
            raise SelectionError(
                f"participant label(s) {missing} not found in {layout.root}; available: "
                f"{sorted(set(folders) | set(subjects))}"
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
            f"{list(participant_label or [])} and session label {list(session_label or [])}; "
            f"sessions of the selected subjects: {sorted(layout.get_sessions()) or 'none'}"
        )
    return units
