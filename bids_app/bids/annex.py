"""Detect input files whose content is absent (un-fetched DataLad / git-annex files).

A DataLad (git-annex) dataset cloned without ``datalad get`` holds every annexed file as a
symlink into ``.git/annex/objects/...`` whose target does not exist yet. pybids indexes such
files happily and nibabel fails much later on the first image read, so :func:`missing_content`
walks the files of the selected subjects once, before any work, and
:func:`check_annexed_content` stops the run with exit 66 (CONTRACT section 5) naming them.
Present annexed files (symlinks that resolve) are ordinary files to every reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bids_app.errors import MissingContentError

#: files named in the message (the rest are counted)
MAX_SHOWN = 5
#: folders of a dataset that are never inputs
_NEVER = (".git", ".datalad")


def missing_content(
    root: Path, *, participant_label: Sequence[str] | None = None, skip: Sequence[str] = ()
) -> list[str]:
    """Files below ``root`` that are symlinks whose target does not exist.

    Parameters
    ----------
    root : Path
        Dataset root.
    participant_label : sequence of str, optional
        Only these ``sub-<label>`` folders are walked (labels without ``sub-``); every
        subject when empty. Files outside the subject folders are always checked.
    skip : sequence of str
        Top-level folders not checked (those the layout does not index either).

    Returns
    -------
    list of str
        Paths relative to ``root`` (posix), sorted.
    """
    root = Path(root)
    wanted = {f"sub-{lab}" for lab in participant_label or ()}
    missing: list[str] = []
    for top in sorted(os.scandir(root), key=lambda e: e.name):
        name = top.name
        if name in _NEVER or name in skip:
            continue
        if top.is_symlink() and not os.path.exists(top.path):
            missing.append(name)
            continue
        if not top.is_dir(follow_symlinks=False):
            continue
        if wanted and name.startswith("sub-") and name not in wanted:
            continue
        for folder, dirs, files in os.walk(top.path):
            dirs[:] = [d for d in dirs if d not in _NEVER]
            for entry in files + dirs:  # a broken symlink to a folder is listed in dirs too
                path = os.path.join(folder, entry)
                if os.path.islink(path) and not os.path.exists(path):
                    missing.append(Path(path).relative_to(root).as_posix())
    return sorted(missing)


def missing_content_message(root: Path, missing: Sequence[str]) -> str:
    """The exit-66 message: how many files, the first :data:`MAX_SHOWN`, what to do.

    Examples
    --------
    >>> missing_content_message(Path("/ds"), ["sub-01/anat/a.nii.gz", "sub-01/anat/b.json"])
    ... # doctest: +NORMALIZE_WHITESPACE
    "/ds: the content of 2 input files is absent (broken symlinks, e.g. un-fetched
    DataLad/git-annex files): sub-01/anat/a.nii.gz, sub-01/anat/b.json; fetch them with
    'datalad get' in the dataset (e.g. cd /ds && datalad get sub-01) and run again"
    """
    shown = ", ".join(missing[:MAX_SHOWN])
    more = f" (and {len(missing) - MAX_SHOWN} more)" if len(missing) > MAX_SHOWN else ""
    subjects = sorted({m.split("/", 1)[0] for m in missing if m.startswith("sub-")})
    example = " ".join(subjects[:3]) or " ".join(missing[:2])
    noun = "file" if len(missing) == 1 else "files"
    return (
        f"{root}: the content of {len(missing)} input {noun} is absent (broken symlinks, "
        f"e.g. un-fetched DataLad/git-annex files): {shown}{more}; fetch them with "
        f"'datalad get' in the dataset (e.g. cd {root} && datalad get {example}) and run again"
    )


def check_annexed_content(
    root: Path, *, participant_label: Sequence[str] | None = None, skip: Sequence[str] = ()
) -> None:
    """Raise if any input file of the selected subjects has no content.

    Parameters
    ----------
    root, participant_label, skip
        As in :func:`missing_content`.

    Raises
    ------
    MissingContentError
        Exit 66, with :func:`missing_content_message`.
    """
    missing = missing_content(root, participant_label=participant_label, skip=skip)
    if missing:
        raise MissingContentError(missing_content_message(root, missing))
