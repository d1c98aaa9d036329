"""The ``fit_method = "epg"`` side of the ``mese_t2`` model: options, metadata, protocol.

:class:`~bids_app.models.relaxometry.mese.MESET2Model` keeps its mono-exponential fits;
with ``fit_method = "epg"`` it delegates to an :class:`EPGT2Protocol` built here, which holds
what the EPG fit of :mod:`bids_app.models.relaxometry._epg_t2` needs: the echo spacing of a
uniform CPMG train, the echoes fitted (in echo order), the nominal refocusing angle and
where it came from, and the dictionary settings. The dictionary itself is memoised by
:func:`~bids_app.models.relaxometry._epg_t2.epg_dictionary`, not stored, so a pickled model
stays small.

References: Lebel RM, Wilman AH. Magn Reson Med 2010;64:1005-1014 (stimulated-echo
compensated T2); Prasloski T et al. Magn Reson Med 2012;67:1803-1814 (EPG).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import Collection, MetaSpec, Option, OutputSpec, valid_b1
from bids_app.models.relaxometry._epg_t2 import epg_dictionary, epg_t2_fit, epg_t2_signal

__all__ = [
    "ANGLE_OUTPUT",
    "EPG_OPTIONS",
    "REFOCUSING_METADATA",
    "EPGT2Protocol",
    "check_cpmg_collection",
    "cpmg_echo_spacing",
    "nominal_refocusing_angle",
]

#: the fitted (or B1-derived) refocusing angle map added to the outputs by the EPG fit
ANGLE_OUTPUT = OutputSpec("Angle", "FAmap", "degree", desc="MESErefocusing", valid_range=(1, 180))

#: optional sidecar keys giving the nominal refocusing angle (degrees)
REFOCUSING_METADATA = (
    MetaSpec("RefocusingFlipAngle", "angle", (30.0, 200.0), required=False),
    MetaSpec("FlipAngle", "angle", (0.1, 360.0), required=False),
)

#: options read only with ``fit_method = "epg"``
EPG_OPTIONS: Mapping[str, Option] = {
    "refocusing_angle": Option(
        "fit", str, ("fit", "b1"), doc="epg: fit per voxel, or B1 x nominal where a B1 map exists"
    ),
    "t1": Option(1.0, float, range=(0.1, 10.0), unit="s", doc="epg: T1 of the EPG decay"),
    "angle_min": Option(
        90.0,
        float,
        range=(30.0, 170.0),
        unit="degree",
        doc="epg: lowest angle searched; B1-derived angles are clipped to it",
    ),
    "angle_step": Option(5.0, float, range=(0.5, 20.0), unit="degree", doc="epg: angle grid"),
    "t2_min": Option(0.005, float, range=(0.001, 0.1), unit="s", doc="epg: T2 grid start"),
    "t2_max": Option(3.0, float, range=(0.1, 10.0), unit="s", doc="epg: T2 grid end"),
    "n_t2": Option(64, int, range=(8, 400), doc="epg: log-spaced T2 grid nodes"),
}

#: at least this many fitted echoes for three parameters and a residual
MIN_EPG_ECHOES = 4

_CPMG = "uniformly spaced echoes EchoTime = k * TE1 (k = 1..n, a CPMG train) for fit_method='epg'"


def cpmg_echo_spacing(echo_time: np.ndarray) -> float:
    """The echo spacing of a CPMG train, s.

    Parameters
    ----------
    echo_time : (m,) array_like
        Echo times, s, in any order.

    Returns
    -------
    float
        ``TE1``, when the sorted echo times are ``k * TE1`` (k = 1..m, relative tolerance
        1e-3).

    Raises
    ------
    ValueError
        If they are not.
    """
    ts = np.sort(np.asarray(echo_time, dtype=np.float64).ravel())
    if not (ts.size and ts[0] > 0 and np.allclose(ts, ts[0] * np.arange(1, ts.size + 1), 1e-3)):
        raise ValueError(f"EchoTime={ts.tolist()}: expected {_CPMG}")
    return float(ts[0])


def check_cpmg_collection(coll: Collection) -> None:
    """Raise MetadataError naming the file and ``EchoTime`` unless the train is CPMG.

    Parameters
    ----------
    coll : Collection
        The ``mese`` collection.

    Raises
    ------
    MetadataError
        Non-uniform echo spacing (or a first echo not at the spacing).
    """
    te = coll.values("EchoTime")
    try:
        cpmg_echo_spacing(te)
    except ValueError:
        ts = np.sort(te)
        steps = np.diff(np.concatenate(([0.0], ts)))
        k = int(np.argmax(~np.isclose(steps, ts[0], rtol=1e-3))) if ts.size > 1 else 0
        vol = coll.volumes[int(np.argsort(te)[k])] if coll.volumes else None
        raise MetadataError(
            vol.path if vol is not None else None,
            coll.sources.get("EchoTime", "EchoTime"),
            [float(v) for v in te],
            _CPMG,
        ) from None


def nominal_refocusing_angle(coll: Collection) -> tuple[float, str]:
    """The nominal refocusing angle of a MESE collection and the key it came from.

    ``RefocusingFlipAngle`` if the sidecars give it; else ``FlipAngle`` when it is above 90°
    (the refocusing angle, as Siemens spin-echo sidecars report it; 90° or less is the
    excitation and is ignored); else 180°.

    Parameters
    ----------
    coll : Collection

    Returns
    -------
    angle : float
        Degrees.
    source : str
        The sidecar key, or ``'default'``.

    Raises
    ------
    MetadataError
        If the echoes disagree on the angle.
    """
    for key in ("RefocusingFlipAngle", "FlipAngle"):
        vals = [v for v in coll.params.get(key, ()) if v is not None]
        if not vals or (key == "FlipAngle" and float(vals[0]) <= 90.0):
            continue
        if not np.allclose(vals, vals[0], rtol=1e-3):
            vol = coll.volumes[0] if coll.volumes else None
            raise MetadataError(
                vol.path if vol is not None else None,
                coll.sources.get(key, key),
                [float(v) for v in vals],
                f"one {key} for every echo of the collection {coll.name!r}",
            )
        return float(vals[0]), coll.sources.get(key, key)
    return 180.0, "default"


class EPGT2Protocol:
    """Everything the EPG T2 fit of one MESE protocol needs (small and picklable).

    Parameters
    ----------
    echo_time : (m,) array_like
        Echo times, s, in data order (a CPMG train).
    fitted : (k,) array_like of int
        Data-order indices of the echoes fitted (all, or all but the earliest).
    options : mapping
        The model options (:data:`EPG_OPTIONS` keys are read).
    nominal_angle : float
        Nominal refocusing angle, degrees (used with ``refocusing_angle = 'b1'``).
    nominal_source : str
        Where ``nominal_angle`` came from (a sidecar key or ``'default'``).

    Raises
    ------
    ValueError
        Non-uniform echo times, fewer than :data:`MIN_EPG_ECHOES` fitted echoes, or
        ``t2_min >= t2_max``.
    """

    def __init__(
        self,
        echo_time: np.ndarray,
        fitted: np.ndarray,
        options: Mapping[str, Any],
        nominal_angle: float = 180.0,
        nominal_source: str = "default",
    ):
        te = np.asarray(echo_time, dtype=np.float64).ravel()
        self.echo_spacing = cpmg_echo_spacing(te)
        self.rank = np.argsort(np.argsort(te, kind="stable"), kind="stable")  # echo number - 1
        fitted = np.asarray(fitted, dtype=int)
        #: data columns of the fitted echoes, in echo order
        self.columns = fitted[np.argsort(self.rank[fitted])]
        if self.columns.size < MIN_EPG_ECHOES:
            raise ValueError(f"mese_t2: fit_method='epg' needs >= {MIN_EPG_ECHOES} fitted echoes")
        if options["t2_min"] >= options["t2_max"]:
            raise ValueError("mese_t2: t2_min must be below t2_max")
        if not 30.0 <= nominal_angle <= 200.0:
            raise ValueError(f"mese_t2: nominal refocusing angle {nominal_angle} not in 30-200")
        self.n_echoes = te.size
        self.use_b1 = options["refocusing_angle"] == "b1"
        self.nominal_angle, self.nominal_source = float(nominal_angle), nominal_source
        self.settings = {
            "t2_range": (float(options["t2_min"]), float(options["t2_max"])),
            "n_t2": int(options["n_t2"]),
            "angle_min": float(options["angle_min"]),
            "angle_step": float(options["angle_step"]),
            "t1": float(options["t1"]),
        }

    @property
    def dictionary(self):
        """The memoised :class:`~bids_app.models.relaxometry._epg_t2.EPGDictionary`."""
        fitted = tuple(int(k) for k in self.rank[self.columns])
        return epg_dictionary(self.echo_spacing, self.n_echoes, fitted, **self.settings)

    def angles_from_b1(self, b1: np.ndarray | None, n: int) -> np.ndarray | None:
        """Refocusing angles ``B1 x nominal`` (NaN where B1 is invalid), or None to fit."""
        if not self.use_b1 or b1 is None:
            return None
        return (valid_b1(np.asarray(b1, dtype=np.float64).reshape(-1)) * self.nominal_angle)[:n]

    def fit(
        self, signal: np.ndarray, b1: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """T2 (s), M0 and the refocusing angle (degrees) of (n, m) data-order signals."""
        signal = np.atleast_2d(np.asarray(signal, dtype=np.float64))
        angle = self.angles_from_b1(b1, signal.shape[0])
        return epg_t2_fit(signal[:, self.columns], self.dictionary, angle)

    def predict(self, t2: np.ndarray, m0: np.ndarray, angle: np.ndarray) -> np.ndarray:
        """Magnitudes (n, m) of every echo, data order, at (T2 s, M0, angle degrees)."""
        return epg_t2_signal(t2, m0, angle, self.dictionary)[:, self.rank]

    def record(self, b1_given: bool | None = None) -> dict[str, Any]:
        """What the sidecars say about the EPG fit (``FitNotes``).

        Parameters
        ----------
        b1_given : bool or None
            Whether a B1 map reached the fit (``None``: not known yet).
        """
        lo = self.dictionary.angles[self.dictionary.search[1][0]]
        if self.use_b1 and b1_given is not False:
            source = (
                f"B1 x nominal {self.nominal_angle:g} deg ({self.nominal_source}); fitted "
                "where the B1 map is invalid"
            )
            if b1_given is None:
                source += " or absent"
        else:
            source = f"fitted per voxel ({lo:g}-180 deg)"
        return {
            "T2Method": "EPG dictionary match + Gauss-Newton refinement (Lebel & Wilman 2010)",
            "RefocusingAngleSource": source,
            "EPGT1": self.settings["t1"],
            "EchoSpacing": self.echo_spacing,
            "EchoesFitted": int(self.columns.size),
        }

    def acquisition(self) -> dict[str, Any]:
        """Acquisition entries of the sidecars (s, degrees)."""
        return {
            "EchoSpacing": self.echo_spacing,
            "NominalRefocusingAngle": self.nominal_angle,
            "NominalRefocusingAngleSource": self.nominal_source,
        }
