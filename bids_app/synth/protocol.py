"""The synthetic acquisition protocol: file names, sidecar metadata and signal equations.

Every acquired image is ``GAIN * (sequence factor from signals.py)`` evaluated on the
truth maps, then Rician noise. The signal equations per collection are:

* T1w (MPRAGE-like, 3D IR-GRE): ``M0 sin(B1 a) |1 - 2 exp(-TI/T1) + exp(-TR/T1)|
  exp(-TE/T2*)``, TI 0.9 s, TR 2.3 s, TE 3 ms, a 9 deg (readout train ignored).
* FLAIR (IR spin echo): ``M0 |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``, TR 9 s,
  TE 0.1 s, TI nulling the nominal CSF T1 of 4 s.
* VFA, MTR (MT off), MTS (MT off): Ernst equation with TE 2 ms.
* MTR/MTS MT on: Helms' steady state with a saturated fraction MTsat/100 per TR.
* MEGRE: Ernst equation, a 15 deg, TR 40 ms, TE 4 + 5 k ms (k = 0..5).
* MESE: ``M0 (1 - exp(-TR/T1)) exp(-TE/T2)``, TR 3 s, TE 10 k ms (k = 1..16).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bids_app import __version__
from bids_app.synth import signals
from bids_app.synth.tissue import NOMINAL, nominal_wm

#: Raw intensity per unit M0 (a receiver gain shared by every collection).
GAIN = 1000.0
#: Echo time (s) of the single-echo spoiled gradient-echo collections (VFA, MTR, MTS).
SPGR_TE = 0.002
COMMON_METADATA: dict[str, Any] = {
    "MagneticFieldStrength": 3,
    "Manufacturer": "msqmri-synth",
    "ManufacturersModelName": "forward signal model",
    "SoftwareVersions": __version__,
}
MT_PULSE: dict[str, Any] = {
    "MTOffsetFrequency": 2200,
    "MTPulseBandwidth": 300,
    "MTNumberOfPulses": 1,
    "MTPulseShape": "GAUSSIAN",
    "MTPulseDuration": 0.012,
}
FLAIR_TR = 9.0
FLAIR_TI = round(signals.flair_null_ti(NOMINAL["CSF"]["T1"], tr=FLAIR_TR), 3)

Maps = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Volume:
    """One acquired image.

    Parameters
    ----------
    collection : str
        Collection name (the noise level is set per collection), e.g. ``'VFA'``.
    datatype : str
        BIDS datatype folder, ``'anat'``.
    entities : tuple of (str, str)
        Entities after ``sub``/``ses``, in BIDS order, e.g. ``(('flip', '1'),)``.
    suffix : str
        BIDS suffix.
    metadata : dict
        Sequence-specific sidecar fields (seconds, degrees).
    signal : callable
        ``signal(maps) -> ndarray``: the noiseless intensity from the truth maps
        (``T1``, ``T2``, ``T2star``, ``PD``, ``MTsat`` in p.u., ``B1``).
    """

    collection: str
    datatype: str
    entities: tuple[tuple[str, str], ...]
    suffix: str
    metadata: dict[str, Any] = field(hash=False)
    signal: Callable[[Maps], np.ndarray] = field(hash=False, repr=False)

    def filename(self, subject: str, session: str | None, extension: str = ".nii.gz") -> str:
        """BIDS file name, e.g. ``sub-01_ses-01_flip-1_VFA.nii.gz``."""
        parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
        parts += [f"{k}-{v}" for k, v in self.entities]
        return "_".join([*parts, self.suffix]) + extension


def _spgr(flip: float, tr: float, te: float, mt: bool = False) -> Callable[[Maps], np.ndarray]:
    def signal(m: Maps) -> np.ndarray:
        delta = m["MTsat"] / 100.0 if mt else 0.0
        return GAIN * signals.spgr_mt(
            m["PD"], m["T1"], m["T2star"], m["B1"], delta, flip_angle=flip, tr=tr, te=te
        )

    return signal


def _mese(tr: float, te: float) -> Callable[[Maps], np.ndarray]:
    return lambda m: GAIN * signals.mese(m["PD"], m["T1"], m["T2"], tr=tr, te=te)


def _t1w(m: Maps) -> np.ndarray:
    readout = np.sin(np.deg2rad(9.0) * m["B1"])
    return (
        GAIN
        * readout
        * signals.inversion_recovery(m["PD"], m["T1"], m["T2star"], ti=0.9, tr=2.3, te=0.003)
    )


def _flair(m: Maps) -> np.ndarray:
    return GAIN * signals.inversion_recovery(
        m["PD"], m["T1"], m["T2"], ti=FLAIR_TI, tr=FLAIR_TR, te=0.1
    )


def _gre_meta(flip: float, tr: float, te: float, mt: bool | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"PulseSequenceType": "SPGR", "MRAcquisitionType": "3D"}
    meta |= {"FlipAngle": flip, "EchoTime": te}
    meta |= {"RepetitionTime": tr, "RepetitionTimeExcitation": tr}
    if mt is not None:
        meta["MTState"] = mt
        if mt:
            meta |= MT_PULSE
    return meta


def build_protocol() -> tuple[Volume, ...]:
    """All acquired anatomical images, in writing order.

    The first volume of each collection comes first: it sets the collection's noise level.

    Returns
    -------
    tuple of Volume
    """
    vols = [
        Volume(
            "T1w",
            "anat",
            (),
            "T1w",
            {
                "PulseSequenceType": "MPRAGE",
                "MRAcquisitionType": "3D",
                "RepetitionTime": 2.3,
                "InversionTime": 0.9,
                "EchoTime": 0.003,
                "FlipAngle": 9,
            },
            _t1w,
        ),
        Volume(
            "FLAIR",
            "anat",
            (),
            "FLAIR",
            {
                "PulseSequenceType": "Inversion recovery spin echo",
                "MRAcquisitionType": "3D",
                "RepetitionTime": FLAIR_TR,
                "InversionTime": FLAIR_TI,
                "EchoTime": 0.1,
                "FlipAngle": 90,
            },
            _flair,
        ),
    ]
    for i, flip in enumerate((3, 8, 18), start=1):
        meta = _gre_meta(flip, 0.015, SPGR_TE)
        vols.append(
            Volume("VFA", "anat", (("flip", str(i)),), "VFA", meta, _spgr(flip, 0.015, SPGR_TE))
        )
    for k in range(6):
        te = round(0.004 + 0.005 * k, 6)
        meta = _gre_meta(15, 0.04, te)
        vols.append(
            Volume(
                "MEGRE",
                "anat",
                (("echo", str(k + 1)), ("part", "mag")),
                "MEGRE",
                meta,
                _spgr(15, 0.04, te),
            )
        )
    for k in range(1, 17):
        te = round(0.010 * k, 6)
        meta = {"PulseSequenceType": "Multi-echo spin echo", "MRAcquisitionType": "2D"}
        meta |= {"EchoTime": te}
        meta |= {"RepetitionTime": 3.0, "FlipAngle": 90}
        vols.append(Volume("MESE", "anat", (("echo", str(k)),), "MESE", meta, _mese(3.0, te)))
    for state, mt in (("off", False), ("on", True)):
        meta = _gre_meta(6, 0.028, SPGR_TE, mt)
        vols.append(
            Volume("MTR", "anat", (("mt", state),), "MTR", meta, _spgr(6, 0.028, SPGR_TE, mt))
        )
    for flip_idx, state, flip, tr in (
        ("1", "off", 6, 0.028),
        ("1", "on", 6, 0.028),
        ("2", "off", 20, 0.018),
    ):
        mt = state == "on"
        meta = _gre_meta(flip, tr, SPGR_TE, mt)
        ents = (("flip", flip_idx), ("mt", state))
        vols.append(Volume("MTS", "anat", ents, "MTS", meta, _spgr(flip, tr, SPGR_TE, mt)))
    return tuple(vols)


def noise_sigma(volumes: tuple[Volume, ...], snr: float) -> dict[str, float]:
    """Gaussian standard deviation per collection.

    ``sigma = (noiseless signal of the collection's first volume in control-like WM with
    B1 = 1) / snr``, the same for every volume of the collection and every subject.

    Examples
    --------
    >>> sig = noise_sigma(build_protocol(), 100.0)
    >>> sorted(sig)
    ['FLAIR', 'MEGRE', 'MESE', 'MTR', 'MTS', 'T1w', 'VFA']
    """
    wm = {k: np.float64(v) for k, v in nominal_wm().items()}
    sigma: dict[str, float] = {}
    for vol in volumes:
        if vol.collection not in sigma:
            sigma[vol.collection] = float(vol.signal(wm)) / snr
    return sigma


def mtr_truth(maps: Maps) -> np.ndarray:
    """Noiseless MTR (percent) of the MTR protocol, from the forward model."""
    off = _spgr(6, 0.028, SPGR_TE, False)(maps)
    on = _spgr(6, 0.028, SPGR_TE, True)(maps)
    return signals.mtr_percent(off, on)
