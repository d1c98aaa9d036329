"""Exception types of msqmri, each carrying its CONTRACT exit code (section 5).

The classes subclass built-in exceptions (nibabel's ``AffineError(ValueError)`` habit) so that
callers catching ``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations


class MsqmriError(Exception):
    """Base class of every error msqmri reports to the user; ``exit_code`` is CONTRACT 5.

    The message is always one line (line breaks of wrapped library messages become spaces),
    so that every error is a single line on stderr and in the log.
    """

    exit_code = 1

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class UsageError(MsqmriError, ValueError):
    """Command-line usage error (exit 64)."""

    exit_code = 64


class ValidationFailedError(MsqmriError):
    """The input dataset failed BIDS validation (exit 16)."""

    exit_code = 16


class SelectionError(MsqmriError, LookupError):
    """Participant/session labels or filters selected nothing (exit 18)."""

    exit_code = 18


class MetadataError(MsqmriError, ValueError):
    """Metadata or image present but wrong (exit 65).

    Parameters
    ----------
    path : str or Path or None
        The file at fault (sidecar or image).
    key : str
        The metadata key (or image property such as ``'shape'``) at fault.
    value : object
        The value found.
    expected : str
        What was expected, in words (unit, range, type).
    """

    exit_code = 65

    def __init__(self, path, key: str, value, expected: str):
        self.path, self.key, self.value, self.expected = path, key, value, expected
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{key}={value!r}: expected {expected}")


class NotApplicableError(MetadataError):
    """Valid input that one model cannot use (e.g. a 4-echo MESE for ``mwf``).

    Raised by a model's ``from_collections``; the participant level skips that model run with
    the reason (logged, in the report) and goes on with the subject's other models, since
    another model (``mese_t2``) may fit the same collection. Outside a run it is exit 65.
    """


class NoInputsError(MsqmriError, LookupError):
    """The dataset holds no input any selected model needs (exit 66)."""

    exit_code = 66


class MissingContentError(MsqmriError, FileNotFoundError):
    """Input files whose content is absent: un-fetched DataLad/git-annex symlinks (exit 66)."""

    exit_code = 66


class OutputError(MsqmriError, OSError):
    """The output or work directory cannot be created or written (exit 73)."""

    exit_code = 73
