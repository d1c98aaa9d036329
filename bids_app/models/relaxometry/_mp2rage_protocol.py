"""MP2RAGE sidecars to a checked :class:`MP2RAGEProtocol` and the roles of the volumes.

The ``inv`` collection holds the magnitude images of both inversions (and, for MP2RAGE-ME,
every echo of the second). Volumes are assigned to an inversion by their ``InversionTime``
(two distinct values), and the readout used for UNIT1 is the earliest echo of each. The
per-block keys ``FlipAngle``, ``RepetitionTimeExcitation`` and ``NumberShots`` are read from
that volume; ``RepetitionTimePreparation`` must be common. ``NumberShots`` is a single count
(with the slice partial Fourier fraction) or ``[before, after]`` (BIDS qMRI appendix), and
is read here because the generic metadata checks take numbers only. Every problem raises
:class:`~bids_app.errors.MetadataError` naming the sidecar and the key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.relaxometry._mp2rage_physics import MP2RAGEProtocol, shots_around_centre
from bids_app.models.specs import Collection, Volume, sidecar_path

logger = logging.getLogger(__name__)

#: plausible excitations per readout block (slices per slab)
NUMBER_SHOTS_RANGE = (8, 1024)


@dataclass(frozen=True)
class Roles:
    """Columns of the stacked signal: ``inv`` volumes first, then ``phase`` or ``unit1``.

    Attributes
    ----------
    mag : (2,) tuple of int
        Magnitude column of the readout of inversion 1 and 2.
    phase : (2,) tuple of int or None
        Phase columns (complex UNIT1), or ``None``.
    unit1 : int or None
        Column of a given UNIT1 image, or ``None``.
    n_columns : int
    """

    mag: tuple[int, int]
    phase: tuple[int, int] | None
    unit1: int | None
    n_columns: int


def _readouts(coll: Collection) -> tuple[int, int]:
    """Indices (in ``coll``) of the earliest-echo volume of the shorter and longer TI."""
    ti = coll.values("InversionTime")
    te = coll.params.get("EchoTime", (None,) * len(ti))
    distinct = []
    for value in ti:
        if not any(math.isclose(value, d, rel_tol=1e-3) for d in distinct):
            distinct.append(float(value))
    if len(distinct) != 2:
        raise MetadataError(
            sidecar_path(coll.volumes[0].path),
            coll.sources.get("InversionTime", "InversionTime"),
            sorted(distinct),
            "exactly two distinct values in one MP2RAGE collection (inv-1 and inv-2)",
        )
    out = []
    for target in sorted(distinct):
        group = [i for i, v in enumerate(ti) if math.isclose(v, target, rel_tol=1e-3)]
        if len(group) > 1:
            times = [te[i] for i in group]
            if any(t is None for t in times) or len(set(times)) < len(times):
                bad = next(i for i in group if te[i] is None or times.count(te[i]) > 1)
                raise MetadataError(
                    sidecar_path(coll.volumes[bad].path),
                    "EchoTime",
                    te[bad],
                    f"distinct echo times for the {len(group)} images with InversionTime "
                    f"{target:g} s (MP2RAGE-ME echoes)",
                )
        out.append(min(group, key=lambda i: te[i] or 0.0))
    i1, i2 = out
    lab1, lab2 = (coll.volumes[i].entities.get("inv") for i in (i1, i2))
    if lab1 is not None and lab2 is not None and int(lab1) > int(lab2):
        raise MetadataError(
            sidecar_path(coll.volumes[i1].path),
            "InversionTime",
            float(ti[i1]),
            f"inv-{lab1} to have a longer InversionTime than inv-{lab2} ({ti[i2]:g} s)",
        )
    return i1, i2


def _match_phase(inv: Collection, readouts: tuple[int, int], phase: Collection) -> tuple[int, int]:
    """Indices in ``phase`` of the phase images of the two readouts (same TI and TE)."""
    ti_p = phase.values("InversionTime")
    te_p = phase.params.get("EchoTime", (None,) * len(ti_p))
    out = []
    for i in readouts:
        ti = float(inv.params["InversionTime"][i])
        te = inv.params["EchoTime"][i] if "EchoTime" in inv.params else None
        hits = [
            j
            for j in range(len(ti_p))
            if math.isclose(ti_p[j], ti, rel_tol=1e-3)
            and (te is None or te_p[j] is None or math.isclose(te_p[j], te, rel_tol=1e-3))
        ]
        if not hits:
            raise MetadataError(
                sidecar_path(phase.volumes[0].path),
                "InversionTime",
                sorted({float(v) for v in ti_p}),
                f"a part-phase image for {inv.volumes[i].path} (InversionTime {ti:g} s)",
            )
        out.append(min(hits, key=lambda j: te_p[j] or 0.0))
    return out[0], out[1]


def _number_shots(vol: Volume) -> float | list[float]:
    path, raw = sidecar_path(vol.path), vol.metadata.get("NumberShots")
    if raw is None:
        raise MetadataError(path, "NumberShots", None, "the key to be present (MP2RAGE)")
    lo, hi = NUMBER_SHOTS_RANGE
    if isinstance(raw, list):
        ok = len(raw) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in raw
        )
        if not ok or raw[0] < 0 or raw[1] < 1 or not lo <= raw[0] + raw[1] <= hi:
            raise MetadataError(
                path, "NumberShots", raw, f"[before, after] with before + after in [{lo}, {hi}]"
            )
        return [float(raw[0]), float(raw[1])]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not lo <= raw <= hi:
        raise MetadataError(
            path, "NumberShots", raw, f"a number of excitations per block in [{lo}, {hi}]"
        )
    return float(raw)


def _partial_fourier(vol: Volume, override: float) -> tuple[float | None, str]:
    """Slice partial Fourier fraction and where it came from."""
    if override:
        return override, "option slice_partial_fourier"
    meta, path = vol.metadata, sidecar_path(vol.path)
    key = None
    if meta.get("SlicePartialFourier") is not None:
        key = "SlicePartialFourier"
    elif meta.get("PartialFourier") is not None:
        direction = str(meta.get("PartialFourierDirection", "")).lower()
        slice_dir = str(meta.get("SliceEncodingDirection", "")).lower()
        if direction and (direction == slice_dir or direction in ("slice", "partition")):
            key = "PartialFourier"
    if key is None:
        return None, "absent from the sidecars: full sampling assumed (slice_partial_fourier)"
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 < value <= 1:
        raise MetadataError(path, key, value, "a fraction in (0.5, 1]")
    return float(value), key


def protocol_from_collections(
    collections: Mapping[str, Collection],
    *,
    inversion_efficiency: float,
    slice_partial_fourier: float = 0.0,
) -> tuple[MP2RAGEProtocol, Roles, dict[str, Any]]:
    """The checked protocol, the signal column roles and the acquisition record.

    Parameters
    ----------
    collections : mapping
        ``inv`` (required), ``unit1`` or ``phase`` (optional; ``unit1`` wins, as in
        the model's input alternatives).
    inversion_efficiency : float
    slice_partial_fourier : float
        Fraction overriding the sidecars (0: read ``SlicePartialFourier``, or
        ``PartialFourier`` when its direction is the slice direction).

    Returns
    -------
    protocol : MP2RAGEProtocol
    roles : Roles
    record : dict
        What was used, for :attr:`MP2RAGEModel.acquisition`.

    Raises
    ------
    MetadataError
        Missing or implausible keys, not two inversion times, duplicated echoes, a missing
        phase image, or readout blocks that do not fit in the cycle (naming file and key).
    """
    inv = collections["inv"]
    i1, i2 = _readouts(inv)
    vols = (inv.volumes[i1], inv.volumes[i2])
    tr_prep = inv.common("RepetitionTimePreparation")
    shots, pf, pf_source = [], [], []
    for vol in vols:
        n = _number_shots(vol)
        frac, source = _partial_fourier(vol, slice_partial_fourier)
        if frac is None and not isinstance(n, list):
            logger.warning("mp2rage: %s: slice partial Fourier %s", vol.path, source)
        shots.append(shots_around_centre(n, None if isinstance(n, list) else frac))
        pf.append(frac)
        pf_source.append(source if not isinstance(n, list) else "NumberShots [before, after]")
    protocol = MP2RAGEProtocol(
        inversion_times=tuple(float(inv.params["InversionTime"][i]) for i in (i1, i2)),
        flip_angles=tuple(float(inv.params["FlipAngle"][i]) for i in (i1, i2)),
        repetition_times=tuple(float(inv.params["RepetitionTimeExcitation"][i]) for i in (i1, i2)),
        repetition_time_preparation=tr_prep,
        n_before=tuple(s[0] for s in shots),
        n_after=tuple(s[1] for s in shots),
        inversion_efficiency=float(inversion_efficiency),
    )
    problem = protocol.timing_problem()
    if problem is not None:
        key, what = problem
        vol = vols[0] if key == "InversionTime" else vols[1]
        value = protocol.inversion_times[0] if key == "InversionTime" else tr_prep
        raise MetadataError(sidecar_path(vol.path), key, value, what)
    n_inv = len(inv.volumes)
    phase = unit1 = None
    if "unit1" in collections:
        unit1, n_cols = n_inv, n_inv + 1
    elif "phase" in collections:
        j1, j2 = _match_phase(inv, (i1, i2), collections["phase"])
        phase, n_cols = (n_inv + j1, n_inv + j2), n_inv + len(collections["phase"].volumes)
    else:
        n_cols = n_inv
    roles = Roles((i1, i2), phase, unit1, n_cols)
    record = {
        "InversionTime": list(protocol.inversion_times),
        "FlipAngle": list(protocol.flip_angles),
        "RepetitionTimeExcitation": list(protocol.repetition_times),
        "RepetitionTimePreparation": tr_prep,
        "NumberShots": [v.metadata.get("NumberShots") for v in vols],
        "ShotsBeforeAfterKSpaceCentre": [list(s) for s in shots],
        "SlicePartialFourier": pf,
        "SlicePartialFourierSource": pf_source,
        "InversionEfficiency": protocol.inversion_efficiency,
        "UNIT1Source": "given UNIT1 image"
        if unit1 is not None
        else ("computed from complex inv-1/inv-2" if phase else "none"),
    }
    if "EchoTime" in inv.params:
        record["EchoTime"] = [inv.params["EchoTime"][i] for i in (i1, i2)]
    return protocol, roles, record


def infer_phase_scale(values: np.ndarray) -> float | None:
    """Factor to radians of phase values: 1 (radians), π/4096 (Siemens integers), else π/max.

    Returns ``None`` when no value is finite.
    """
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    top = float(v.max())
    if top <= np.pi * 1.001:
        return 1.0
    if top <= 4096.5:
        return np.pi / 4096.0
    return np.pi / top


def infer_unit1_scale(values: np.ndarray) -> tuple[float, float] | None:
    """``(scale, offset)`` with ``UNIT1 = scale x + offset`` from the value range.

    [-0.5, 0.5] as is; [0, 1] shifted; [0, 4095] the Siemens integers ``(U + 0.5) 4095``.
    ``None`` when the range fits none of them (or no value is finite).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    if lo >= -0.505 and hi <= 0.505:
        return 1.0, 0.0
    if lo >= 0 and hi <= 1.01:
        return 1.0, -0.5
    if lo >= 0 and hi <= 4096:
        return 1.0 / 4095.0, -0.5
    return None
