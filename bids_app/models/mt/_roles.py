"""Roles of the volumes of MT and B1 collections (MT off/on, PDw/T1w/MTw, AFI and DAM pairs).

Role errors carry the index of the volume at fault so that the caller can name its sidecar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.specs import Collection, sidecar_path


class _RoleError(ValueError):
    """A volume of a collection cannot play the role the model needs."""

    def __init__(self, index: int, key: str, value: Any, expected: str):
        self.index, self.key, self.value, self.expected = index, key, value, expected
        super().__init__(f"volume {index}: {key}={value!r}: expected {expected}")

    def to_metadata_error(self, coll: Collection) -> MetadataError:
        """Return the same error naming the sidecar of the volume at fault."""
        path = (
            sidecar_path(coll.volumes[self.index].path) if self.index < len(coll.volumes) else None
        )
        return MetadataError(path, coll.sources.get(self.key, self.key), self.value, self.expected)


def _as_bool(value: Any, index: int) -> bool:
    """Interpret a sidecar ``MTState`` value; raise :class:`_RoleError` if not boolean."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise _RoleError(index, "MTState", value, "a boolean (true or false)")


def _mt_states(coll: Collection) -> list[bool]:
    try:
        return [_as_bool(v, i) for i, v in enumerate(coll.params["MTState"])]
    except _RoleError as err:
        raise err.to_metadata_error(coll) from None


def mtr_roles(mt_states: Sequence[bool]) -> tuple[int, int]:
    """Return the indices (MT off, MT on) of an MTR pair.

    Raises
    ------
    ValueError
        Unless exactly one state is false and one is true.
    """
    states = [_as_bool(v, i) for i, v in enumerate(mt_states)]
    off = [i for i, s in enumerate(states) if not s]
    on = [i for i, s in enumerate(states) if s]
    if len(off) != 1 or len(on) != 1:
        bad = (on[1:] or off[1:] or [0])[0]
        raise _RoleError(
            bad,
            "MTState",
            states[bad] if states else None,
            "exactly one MT-off (false) and one MT-on (true) volume",
        )
    return off[0], on[0]


def mts_roles(mt_states: Sequence[bool], flip_angles: Sequence[float]) -> tuple[int, int, int]:
    """Return the indices (PDw, T1w, MTw) of an MTS triplet.

    PDw and T1w are the MT-off volumes with the lower and higher flip angle, MTw the MT-on one.

    Raises
    ------
    ValueError
        Unless there are two MT-off volumes with distinct flip angles and one MT-on volume.
    """
    states = [_as_bool(v, i) for i, v in enumerate(mt_states)]
    flips = np.asarray(flip_angles, dtype=float)
    off = [i for i, s in enumerate(states) if not s]
    on = [i for i, s in enumerate(states) if s]
    if len(on) != 1:
        bad = on[1] if len(on) > 1 else off[-1]
        raise _RoleError(
            bad,
            "MTState",
            states[bad],
            "exactly one MT-on volume (true) and two MT-off volumes (false)",
        )
    if len(off) != 2:
        bad = off[-1] if off else on[0]
        raise _RoleError(
            bad, "MTState", states[bad], "exactly two MT-off volumes (PDw low flip, T1w high flip)"
        )
    f0, f1 = flips[off]
    if np.isclose(f0, f1, rtol=1e-3, atol=0):
        raise _RoleError(
            off[1],
            "FlipAngle",
            float(f1),
            f"a flip angle different from the other MT-off volume ({f0:g} deg)",
        )
    i_pd, i_t1 = (off[0], off[1]) if f0 < f1 else (off[1], off[0])
    return i_pd, i_t1, on[0]
