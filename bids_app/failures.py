"""Per-participant failure records: what the group level tells the user about failed subjects.

The participant level writes ``OUTPUT_DIR/logs/failed/sub-<l>[_ses-<s>].json`` when a
subject/session fails (its outputs are not published, :mod:`bids_app.staging`) and removes
it when the subject/session later succeeds, or is skipped for having no inputs. The group
level reads them, so that its exit code and message name the failure instead of saying that
the participant level was not run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from bids_app.errors import MsqmriError, OutputError
from bids_app.io import save_text

logger = logging.getLogger(__name__)

#: folder of the records, inside ``OUTPUT_DIR`` (``logs/`` is in ``.bidsignore``)
FAILED_DIR = Path("logs") / "failed"


class ParticipantsFailedError(MsqmriError):
    """Participants failed at the participant level; ``exit_code`` is their highest code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = int(exit_code)


def _record_path(out: Path, subject: str, session: str | None) -> Path:
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return Path(out) / FAILED_DIR / f"{label}.json"


def record_failure(
    out: Path, subject: str, session: str | None, exit_code: int, error: BaseException
) -> None:
    """Write the failure record of one subject/session (never raises: logged instead)."""
    record = {
        "participant_id": f"sub-{subject}",
        "session_id": f"ses-{session}" if session else None,
        "exit_code": int(exit_code),
        "error": type(error).__name__,
        "message": str(error) or repr(error),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        save_text(_record_path(out, subject, session), json.dumps(record, indent=2) + "\n")
    except OutputError as err:
        logger.warning("cannot write the failure record of sub-%s: %s", subject, err)


def clear_failure(out: Path, subject: str, session: str | None) -> None:
    """Remove the failure record of a subject/session that now succeeded (if any)."""
    with contextlib.suppress(OSError):
        _record_path(out, subject, session).unlink()


def read_failures(out: Path) -> list[dict]:
    """The failure records of ``out``, sorted by participant and session.

    Unreadable records are logged and left out.
    """
    records = []
    for path in sorted((Path(out) / FAILED_DIR).glob("sub-*.json")):
        try:
            rec = json.loads(path.read_text())
            rec["exit_code"] = int(rec["exit_code"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("%s: unreadable failure record (%s); ignored", path, err)
            continue
        records.append(rec)
    return records


def _label(rec: dict) -> str:
    label = rec.get("participant_id", "sub-?")
    return label + (f"_{rec['session_id']}" if rec.get("session_id") else "")


def group_message(records: list[dict], published: set[tuple[str, str | None]]) -> str:
    """What the group level says about failed participants it aggregated around.

    Parameters
    ----------
    records : list of dict
        :func:`read_failures`.
    published : set of (participant_id, session_id)
        The participants/sessions that have tables (an earlier run's, for a failed one).
    """
    old = [
        _label(r) for r in records if (r.get("participant_id"), r.get("session_id")) in published
    ]
    text = f"group level: the participant level failed for {describe(records)}"
    if old:
        return text + f"; the group tables hold the tables of an earlier run for {', '.join(old)}"
    return text + "; the group tables leave them out"


def describe(records: list[dict]) -> str:
    """``'sub-02 (exit 65: <message>); ...'`` for messages."""
    parts = []
    for rec in records:
        parts.append(f"{_label(rec)} (exit {rec['exit_code']}: {rec.get('message', '')})")
    return "; ".join(parts)


def maps_only_hint(out: Path) -> str:
    """Why a participant output has no tables: maps without a reference, or no run at all."""
    subjects = sorted({p.relative_to(out).parts[0] for p in Path(out).glob("sub-*/**/*.nii.gz")})
    if not subjects:
        return "run the participant level first"
    return (
        f"the participant outputs of {', '.join(subjects)} hold maps only (no structural "
        "image and no qMRI image with anatomy to take a reference image and brain mask from, "
        "e.g. a B1+ map alone)"
    )
