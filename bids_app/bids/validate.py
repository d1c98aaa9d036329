"""Optional input validation with ``bids-validator-deno`` (when installed)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bids_app.errors import ValidationFailedError

logger = logging.getLogger(__name__)

EXECUTABLE = "bids-validator-deno"


def validator_errors(dataset: Path, *, scratch: Path, timeout: float = 600) -> list[str] | None:
    """Run the validator; return error messages ([] if valid), or None if it is unavailable.

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
        logger.info("%s not installed: input validation skipped", EXECUTABLE)
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
        logger.warning(
            "%s gave no JSON report (exit %d): validation skipped; stderr: %s",
            EXECUTABLE,
            proc.returncode,
            proc.stderr.strip()[:500],
        )
        return None
    issues = report.get("issues", {})
    issues = issues.get("issues", []) if isinstance(issues, dict) else issues
    errors = []
    for issue in issues:
        if str(issue.get("severity", "")).lower() == "error":
            where = issue.get("location") or issue.get("affects") or ""
            errors.append(
                f"{issue.get('code', '?')}: {where} {issue.get('issueMessage', '')}".strip()
            )
    return errors


def validate_input(dataset: Path, *, scratch: Path) -> None:
    """Validate the input dataset.

    Raises
    ------
    ValidationFailedError
        If the validator reports errors (exit 16); the first ones are in the message.
    """
    errors = validator_errors(dataset, scratch=scratch)
    if errors:
        shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
        raise ValidationFailedError(
            f"{dataset}: BIDS validation failed with {len(errors)} error(s): {shown}. Fix the "
            "dataset or pass --skip-bids-validation"
        )
    if errors is not None:
        logger.info("%s: BIDS validation passed", dataset)
