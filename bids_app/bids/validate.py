"""Optional input validation with ``bids-validator-deno`` (when installed).

The validator's JSON report (``--format json``) holds ``issues.issues``: one record per
problem and file, e.g. ``{"code": "SIDECAR_KEY_REQUIRED", "subCode": "PulseSequenceType",
"severity": "error", "location": "/sub-01/anat/sub-01_flip-1_VFA.nii.gz", "issueMessage":
"Field description: ..."}``. :func:`summarize_issues` folds these into one line per kind
(code and sub-code, e.g. the missing key), which is what the exit-16 message shows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bids_app.errors import ValidationFailedError

logger = logging.getLogger(__name__)

EXECUTABLE = "bids-validator-deno"

#: issue kinds written out in the exit-16 message (the rest are counted)
MAX_KINDS_SHOWN = 10


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def error_issues(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The error-severity issue records of a validator JSON report.

    Parameters
    ----------
    report : mapping
        The parsed ``--format json`` output: ``{"issues": {"issues": [...]}, ...}`` (a bare
        ``{"issues": [...]}`` is accepted too).

    Returns
    -------
    list of dict
        The records whose ``severity`` is ``error`` (warnings are ignored).
    """
    issues = report.get("issues", {})
    issues = issues.get("issues", []) if isinstance(issues, Mapping) else issues
    return [
        issue
        for issue in issues or []
        if isinstance(issue, Mapping) and str(issue.get("severity", "")).lower() == "error"
    ]


def _location(issue: Mapping[str, Any]) -> str:
    where = issue.get("location") or issue.get("affects") or ""
    if isinstance(where, list | tuple):
        where = ", ".join(map(str, where))
    return str(where)


def _first_line(text: Any, limit: int = 160) -> str:
    line = next((s.strip() for s in str(text or "").splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summarize_issues(issues: Iterable[Mapping[str, Any]]) -> list[str]:
    """One readable line per issue kind (code and sub-code), sorted by code.

    Parameters
    ----------
    issues : iterable of mapping
        Validator issue records (see :func:`error_issues`).

    Returns
    -------
    list of str
        ``<code>: <key> (<n> files, e.g. <first file>)`` when the issue names a key (the
        validator's ``subCode``, e.g. a missing sidecar field), ``<code>: <file>`` (``and <k>
        more files``) when it names only files, else ``<code>: <first line of the message>``.
        Files are shown as the validator gives them (relative to the dataset root), the
        example being the first in sorted order.

    Examples
    --------
    >>> summarize_issues([
    ...     {"code": "SIDECAR_KEY_REQUIRED", "subCode": "PulseSequenceType",
    ...      "location": "/sub-1/anat/sub-1_flip-2_VFA.nii.gz"},
    ...     {"code": "SIDECAR_KEY_REQUIRED", "subCode": "PulseSequenceType",
    ...      "location": "/sub-1/anat/sub-1_flip-1_VFA.nii.gz"},
    ...     {"code": "NOT_INCLUDED", "location": "/sub-01/anat/notes.txt"},
    ... ])  # doctest: +NORMALIZE_WHITESPACE
    ['NOT_INCLUDED: /sub-01/anat/notes.txt',
     'SIDECAR_KEY_REQUIRED: PulseSequenceType (2 files, e.g. /sub-1/anat/sub-1_flip-1_VFA.nii.gz)']
    """
    kinds: dict[tuple[str, str], dict[str, Any]] = {}
    for issue in issues:
        code = str(issue.get("code") or "UNKNOWN")
        key = str(issue.get("subCode") or "")
        kind = kinds.setdefault((code, key), {"files": set(), "message": ""})
        where = _location(issue)
        if where:
            kind["files"].add(where)
        if not kind["message"]:
            kind["message"] = _first_line(issue.get("issueMessage"))
    lines = []
    for (code, key), kind in sorted(kinds.items()):
        files = sorted(kind["files"])
        if key and files:
            lines.append(f"{code}: {key} ({_plural(len(files), 'file')}, e.g. {files[0]})")
        elif key:
            lines.append(f"{code}: {key}")
        elif files:
            more = f" (and {_plural(len(files) - 1, 'more file')})" if len(files) > 1 else ""
            lines.append(f"{code}: {files[0]}{more}")
        else:
            lines.append(f"{code}: {kind['message']}" if kind["message"] else code)
    return lines


def failure_message(dataset: Path | str, issues: list[Mapping[str, Any]]) -> str:
    """The exit-16 message: a header, then one line per issue kind.

    The first kind shares the header line (the one that the log prefixes with ``ERROR:``),
    so that a single problem reads as a single line; further kinds follow, indented.

    Parameters
    ----------
    dataset : Path or str
        Dataset root, named at the start of the message.
    issues : list of mapping
        The error records (:func:`error_issues`), at least one.
    """
    lines = summarize_issues(issues)
    shown = lines[:MAX_KINDS_SHOWN]
    if len(lines) > len(shown):
        shown.append(
            f"(+{_plural(len(lines) - len(shown), 'more kind')}: run {EXECUTABLE} {dataset})"
        )
    head = (
        f"{dataset}: BIDS validation failed with {_plural(len(issues), 'error')} of "
        f"{_plural(len(lines), 'kind')} (fix the dataset or pass --skip-bids-validation): "
    )
    return head + "\n  ".join(shown)


def validator_report(
    dataset: Path, *, scratch: Path, timeout: float = 600
) -> dict[str, Any] | None:
    """Run the validator and return its parsed JSON report, or None if it is unavailable.

    Parameters
    ----------
    dataset : Path
        Dataset root.
    scratch : Path
        Writable directory for the validator's HOME/cache (the input stays untouched).
    timeout : float
        Seconds before giving up (logged, treated as unavailable).
    """
    # also look beside the running interpreter (a venv whose bin/ is not on PATH)
    exe = shutil.which(EXECUTABLE) or shutil.which(
        EXECUTABLE, path=str(Path(sys.executable).parent)
    )
    if exe is None:
        logger.warning(
            "%s is not installed: the input was NOT checked against the BIDS specification "
            "(required files and sidecar keys, file names, JSON types), so an invalid dataset "
            "runs; install it with 'pip install bids-validator-deno' (the container image has "
            "it), or pass --skip-bids-validation to skip validation knowingly",
            EXECUTABLE,
        )
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        HOME=str(scratch),
        DENO_DIR=str(scratch / "deno"),
        XDG_CACHE_HOME=str(scratch / "cache"),
        NO_COLOR="1",
    )
    try:
        proc = subprocess.run(
            [exe, str(dataset), "--format", "json", "--ignoreWarnings"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.warning("%s could not run (%s): input validation skipped", EXECUTABLE, err)
        return None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        logger.warning(
            "%s gave no JSON report (exit %d): validation skipped; stderr: %s",
            EXECUTABLE,
            proc.returncode,
            proc.stderr.strip()[:500],
        )
        return None
    return report


def validator_errors(dataset: Path, *, scratch: Path, timeout: float = 600) -> list[str] | None:
    """Run the validator; return one line per error kind ([] if valid), or None if unavailable.

    Parameters
    ----------
    dataset : Path
        Dataset root.
    scratch : Path
        Writable directory for the validator's HOME/cache (the input stays untouched).
    timeout : float
        Seconds before giving up (logged, treated as unavailable).

    Returns
    -------
    list of str or None
        :func:`summarize_issues` of the error records.
    """
    report = validator_report(dataset, scratch=scratch, timeout=timeout)
    return None if report is None else summarize_issues(error_issues(report))


def validate_input(dataset: Path, *, scratch: Path) -> None:
    """Validate the input dataset.

    Raises
    ------
    ValidationFailedError
        If the validator reports errors (exit 16); the message has one line per kind
        (:func:`failure_message`).
    """
    report = validator_report(dataset, scratch=scratch)
    if report is None:
        return
    issues = error_issues(report)
    if issues:
        raise ValidationFailedError(failure_message(dataset, issues))
    logger.info("%s: BIDS validation passed", dataset)
