"""Session dates of a subject from ``sessions.tsv`` or ``scans.tsv`` (``acq_time``).

BIDS: ``sub-<l>/sub-<l>_sessions.tsv`` has a ``session_id`` and optionally an ``acq_time``
column; else ``sub-<l>/ses-<s>/sub-<l>_ses-<s>_scans.tsv`` has ``filename`` and
``acq_time`` per scan (the earliest is the session's date). ``acq_time`` is an ISO 8601
date-time (``YYYY-MM-DDThh:mm:ss``, dates may be shifted for anonymisation).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bids_app.errors import MetadataError


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, na_values="n/a", keep_default_na=False)


def _parse(path: Path, values: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    bad = values.notna() & parsed.isna()
    if bad.any():
        raise MetadataError(
            path, "acq_time", values[bad].iloc[0], "an ISO 8601 date-time (YYYY-MM-DDThh:mm:ss)"
        )
    return parsed


def session_dates(bids_dir: Path, subject: str) -> dict[str, pd.Timestamp]:
    """Date-time of each session of ``subject`` (label without ``sub-``) that has one.

    Parameters
    ----------
    bids_dir : Path
        Raw BIDS dataset.
    subject : str

    Returns
    -------
    dict
        Session label (without ``ses-``) to :class:`pandas.Timestamp`; sessions without a
        date are absent.

    Raises
    ------
    bids_app.errors.MetadataError
        An ``acq_time`` that is not an ISO 8601 date-time.
    """
    sub = Path(bids_dir) / f"sub-{subject}"
    out: dict[str, pd.Timestamp] = {}
    table = sub / f"sub-{subject}_sessions.tsv"
    if table.is_file():
        df = _read(table)
        if {"session_id", "acq_time"} <= set(df.columns):
            times = _parse(table, df["acq_time"])
            for ses, t in zip(df["session_id"], times):
                if pd.notna(t):
                    out[str(ses).removeprefix("ses-")] = t
    for ses_dir in sorted(sub.glob("ses-*")):
        label = ses_dir.name.removeprefix("ses-")
        scans = ses_dir / f"sub-{subject}_ses-{label}_scans.tsv"
        if label in out or not scans.is_file():
            continue
        df = _read(scans)
        if "acq_time" in df.columns:
            times = _parse(scans, df["acq_time"]).dropna()
            if len(times):
                out[label] = times.min()
    return out
