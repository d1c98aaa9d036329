"""Checked readers of single ASL sidecar values for the ASL parameter reader.

Numbers, flags, per-volume lists, T1 of blood and the M0 repetition time, for
:func:`~bids_app.models.perfusion._asl_params.read_asl_params`.

Each reader raises :class:`~bids_app.errors.MetadataError` (exit 65) naming the sidecar and
key, and appends any default it applies to the caller's ``notes`` list.

References
----------
.. [1] Alsop DC, Detre JA, Golay X, et al. Recommended implementation of arterial spin-labeled
   perfusion MRI for clinical applications. Magn Reson Med 2015;73:102-116 (Table 1: T1 of
   blood 1.65 s at 3 T and 1.35 s at 1.5 T).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bids_app.errors import MetadataError

logger = logging.getLogger("bids_app.models.perfusion._asl_params")

#: White-paper blood T1 (s) by field strength (T) [1].
DEFAULT_T1_BLOOD = {1.5: 1.35, 3.0: 1.65}
#: Largest plausible time in s; larger values are taken as milliseconds given by mistake.
_MAX_TIME_S = 20.0


def _bad(path: Any, key: str, value: Any, expected: str) -> MetadataError:
    return MetadataError(path, key, value, expected)


def _number(value: Any, path: Any, key: str, lo: float, hi: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, key, value, what)
    out = float(value)
    if not (math.isfinite(out) and lo <= out <= hi):
        raise _bad(path, key, value, what)
    return out


def _per_volume(
    meta: Mapping, key: str, n: int, path: Any, lo: float, hi: float, what: str
) -> tuple[float, ...]:
    """A scalar or an ``n``-list of numbers in ``[lo, hi]``, as an ``n``-tuple."""
    value = meta[key]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise _bad(path, key, f"list of {len(value)}", f"a number or {n} values (volumes)")
        return tuple(_number(v, path, key, lo, hi, what) for v in value)
    return (_number(value, path, key, lo, hi, what),) * n


def _flag(meta: Mapping, key: str, path: Any, required: bool = False) -> bool | None:
    if key not in meta:
        if required:
            raise _bad(path, key, None, "true or false (required)")
        return None
    if not isinstance(meta[key], bool):
        raise _bad(path, key, meta[key], "true or false")
    return meta[key]


def _t1_blood(meta: Mapping, path: Any, user: float | None, notes: list[str]) -> float:
    if user is not None:
        return _number(user, None, "t1_blood", 0.1, 5.0, "a blood T1 in s")
    b0 = meta.get("MagneticFieldStrength")
    if b0 is None:
        notes.append("MagneticFieldStrength missing: 3 T assumed for the blood T1 (1.65 s)")
        return DEFAULT_T1_BLOOD[3.0]
    b0 = _number(b0, path, "MagneticFieldStrength", 0.0, 20.0, "a field strength in T")
    for field, t1 in DEFAULT_T1_BLOOD.items():
        if abs(b0 - field) < 0.1 * field:
            notes.append(f"T1 blood {t1} s: white-paper value at {field} T (Alsop 2015)")
            return t1
    raise _bad(path, "MagneticFieldStrength", b0, "1.5 or 3 T, or a user-given blood T1")


def _m0_repetition_time(
    meta: Mapping,
    types: Sequence[str],
    m0_meta: Mapping | None,
    path: Any,
    m0_path: Any,
    allow_missing_tr: bool,
    notes: list[str],
) -> float | None:
    """TR of the M0 volumes (s), for the saturation-recovery correction."""
    key = "RepetitionTimePreparation"
    m0_type = meta["M0Type"]
    if m0_type == "Included":
        source, where, n = meta, path, len(types)
        pick = [i for i, t in enumerate(types) if t == "m0scan"]
    else:
        source, where, n, pick = (m0_meta or {}), m0_path, 1, [0]
    value = source.get(key)
    bad = value is None or (not isinstance(value, (list, tuple)) and value == 0)
    if isinstance(value, (list, tuple)) and m0_type == "Separate":
        bad = bad or len(value) == 0 or any(v == 0 for v in value)
    if not bad and m0_type == "Included":
        tr = _per_volume(source, key, n, where, 0.0, 1e3, "TR in s")
        tr = tuple(tr[i] for i in pick)
        bad = any(t == 0 for t in tr)
    if bad:
        if allow_missing_tr:
            notes.append(
                f"{key} of the M0 image missing or zero: no saturation-recovery "
                "correction, M0 taken as fully relaxed (CBF is overestimated if TR < 5 T1)"
            )
            return None
        if m0_type == "Separate" and m0_meta is None:
            raise _bad(m0_path, key, None, "the M0 sidecar (M0Type 'Separate') with TR in s")
        raise _bad(where, key, value, "TR of the M0 image in s (> 0) for the TR correction")
    if m0_type == "Separate":
        if isinstance(value, (list, tuple)):
            tr = tuple(_number(v, where, key, 0.0, 1e3, "TR in s") for v in value)
        else:
            tr = (_number(value, where, key, 0.0, 1e3, "TR in s"),)
    if max(tr) - min(tr) > 1e-6:
        raise _bad(where, key, list(tr), "the same TR for every M0 volume")
    return tr[0]
