"""One pybids ``BIDSLayout`` per dataset, built the NiPreps way (no validation in pybids)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from bids import BIDSLayout, BIDSLayoutIndexer

from bids_app.bids.annex import check_annexed_content
from bids_app.errors import MetadataError, NoInputsError, SelectionError, UsageError

try:  # pybids' own folder check, reused by _SelectionIndexer (absent: the plain indexer)
    from bids.layout.index import _validate_path
except ImportError:  # pragma: no cover - another pybids layout
    _validate_path = None

logger = logging.getLogger(__name__)
#: list the root of a participant-selected layout without the other subjects' folders
_PRUNE_ROOT = True

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


def _json_files(root: Path, skip: Sequence[str], participant_label: Sequence[str] | None):
    """The JSON files below ``root`` that the layout indexes, sorted.

    No hidden file or folder, no ``skip`` folder, and only the ``sub-<label>`` folders of
    ``participant_label`` (all when empty); other subjects' folders are never walked.
    """
    wanted = {f"sub-{lab}" for lab in participant_label or ()}
    found: list[Path] = []
    for top in os.scandir(root):
        name = top.name
        if name.startswith(".") or name in skip:  # .git (annexed objects), .datalad
            continue
        if not top.is_dir():
            if name.endswith(".json"):
                found.append(Path(top.path))
            continue
        if wanted and name.startswith("sub-") and name not in wanted:
            continue  # another subject: never opened (issue 25: indexing cost of big datasets)
        for folder, dirs, files in os.walk(top.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [Path(folder, f) for f in files if f.endswith(".json") and f[0] != "."]
    return sorted(found)


def check_json_files(
    root: Path, *, skip: Sequence[str] = _IGNORE, participant_label: Sequence[str] | None = None
) -> dict[str, str]:
    """Parse every JSON file below ``root`` that is indexed; return the unusable ones.

    Parameters
    ----------
    root : Path
        Dataset root.
    skip : sequence of str
        Top-level folders not checked (not indexed either); hidden files and folders
        (``.git``, ``.datalad``) are never checked.
    participant_label : sequence of str, optional
        Only these ``sub-<label>`` folders are read (labels without ``sub-``), the files and
        other folders outside the subject folders always; every subject when empty.

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
    for path in _json_files(Path(root), skip, participant_label):
        rel = path.relative_to(root).parts
        problem = _json_problem(path)
        if problem is None:
            continue
        if not rel[0].startswith("sub-") or len(rel) == 1:
            raise MetadataError(str(path), "JSON", problem, "a readable JSON object")
        bad[str(path)] = problem
    return bad


class _SelectionIndexer(BIDSLayoutIndexer):
    """A ``BIDSLayoutIndexer`` that does not even look at the unselected subjects' folders.

    pybids checks every folder of the root against the ignore patterns, about 0.1 ms each
    with its universal paths: 0.1-0.2 s per layout on a 1000-subject dataset, which is most
    of what a one-subject job would pay for the other subjects (issue 25). This indexer lists
    the root itself and hands pybids only the root's files and the folders that are not
    another subject's; below them, and for the files, pybids indexes as usual (same ignore
    patterns, same entities). A root with its own ``layout_config.json`` is indexed by pybids
    alone. The same files and metadata as the plain indexer, by test
    (``tests/test_layout_scale.py``).
    """

    def __init__(self, *, subjects: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self._wanted = {f"sub-{s}" for s in subjects}

    def _index_dir(self, path, config, force=None):
        root = Path(self._layout._root.path)
        if Path(path.path) != root or (root / self.config_filename).exists():
            return super()._index_dir(path, config, force)
        entities: dict = {}
        for c in config:
            entities.update(c.entities)
        files, tags = [], []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            is_dir = entry.is_dir() and not entry.name.endswith(".zarr")  # pybids: a file
            if is_dir and entry.name.startswith("sub-") and entry.name not in self._wanted:
                continue  # before any pybids path is made: that is the cost saved
            child = path / entry.name
            if is_dir:
                sub_force = _validate_path(
                    child,
                    incl_patt=self._include_patterns,
                    excl_patt=self._exclude_patterns,
                    root=self._layout._root,
                )
                if sub_force is not False:
                    more_files, more_tags = super()._index_dir(child, config, force=sub_force)
                    files += more_files
                    tags += more_tags
            elif force or self._validate_file(child):
                bf, file_tags = self._index_file(child, entities)
                files.append(bf)
                tags += file_tags
        return files, tags


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
    bad = check_json_files(bids_dir, skip=skip, participant_label=participant_label)
    for path, reason in bad.items():
        rel = Path(path).relative_to(bids_dir).as_posix()
        ignore.append(re.compile(rf"^/{re.escape(rel)}$"))
        logger.warning(
            "%s: %s; not indexed, the images it describes fail with exit 65", path, reason
        )
    kwargs = {"validate": False, "ignore": ignore, "index_metadata": True}
    if participant_label and _PRUNE_ROOT and _validate_path is not None:
        indexer = _SelectionIndexer(subjects=participant_label, **kwargs)
    else:
        indexer = BIDSLayoutIndexer(**kwargs)
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


def make_derivative_layouts(
    derivatives: Mapping[str, Path] | None, *, participant_label: Sequence[str] | None = None
) -> dict[str, BIDSLayout]:
    """One layout per ``--derivatives`` dataset, filtered by participant like the raw one.

    With a participant selection, only the selected ``sub-<label>`` folders of every
    derivative dataset are walked and parsed (plus its top-level files), so that a
    one-subject job costs the same on a 1000-subject dataset as on a 1-subject one
    (issue 25); without one, every subject is indexed.

    Parameters
    ----------
    derivatives : mapping of str to Path, optional
        ``--derivatives`` dataset roots by name.
    participant_label : sequence of str, optional
        As in :func:`make_layout`.

    Returns
    -------
    dict of str to BIDSLayout
        Same keys as ``derivatives``.

    Raises
    ------
    UsageError, AnnexContentError, MetadataError
        As :func:`make_layout`, for any derivative dataset.
    """
    return {
        name: make_layout(path, derivative=True, participant_label=participant_label)
        for name, path in (derivatives or {}).items()
    }


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

    def folders() -> list[str]:
        # the layout indexes only the selected subjects: list the others from the folders
        # (only for a message: a 1000-subject dataset costs a one-subject job nothing)
        root = Path(layout.root)
        return sorted(p.name[len("sub-") :] for p in root.glob("sub-*") if p.is_dir())

    if not subjects and not folders():
        raise NoInputsError(f"{layout.root}: no sub-<label> folder; expected BIDS subjects")
    if participant_label:
        missing = sorted(set(participant_label) - set(subjects))
        if missing:
            raise SelectionError(
                f"participant label(s) {missing} not found in {layout.root}; available: "
                f"{sorted(set(folders()) | set(subjects))}"
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
