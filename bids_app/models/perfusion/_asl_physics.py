"""ASL array cores: series splitting, M0, slice-dependent delays, single-delay CBF.

Pure NumPy on arrays whose last axis is the volume axis; no file I/O. The metadata come
checked from :func:`bids_app.models.perfusion._asl_params.read_asl_params`; the multi-delay
kinetic model and its fit are in :mod:`bids_app.models.perfusion._asl_kinetic`.

CBF is in ml/100 g/min throughout; times are in s; M0 is the tissue equilibrium
magnetisation in the units of the ASL images.

References
----------
.. [1] Alsop DC, Detre JA, Golay X, et al. Recommended implementation of arterial spin-labeled
   perfusion MRI for clinical applications. Magn Reson Med 2015;73:102-116 (eq. 1 PCASL/CASL,
   eq. 2 PASL with QUIPSS II; TR correction of M0 for TR < 5 s).
.. [2] BIDS specification, "Arterial Spin Labeling": aslcontext volume types and
   ``SliceTiming``/``SliceEncodingDirection``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: Grey-matter T1 at 3 T (s) for the M0 TR correction: Lu H et al., J Magn Reson Imaging
#: 2005;22:13-22 (1.33 s; also the GM T1 of the OSIPI ASL-DRO).
DEFAULT_T1_TISSUE = 1.33
#: 6000 converts ml/g/s to ml/100 g/min.
ML_G_S_TO_ML_100G_MIN = 6000.0


@dataclass(frozen=True)
class AslSeries:
    """Volumes of an ASL series sorted by role; volume axis last.

    Attributes
    ----------
    deltam : ndarray, shape (..., n_diff)
        Control - label per pair (i-th control minus i-th label) followed by the given
        ``deltam`` volumes, in series order within each kind.
    deltam_index : ndarray of int, shape (n_diff,)
        Index in the series of the volume whose timing applies (the control of a pair).
    m0 : ndarray, shape (..., n_m0) or None
        The ``m0scan`` volumes.
    m0_index : ndarray of int, shape (n_m0,)
    cbf : ndarray, shape (..., n_cbf) or None
        Scanner CBF volumes (``cbf``), passed through.
    norf_index : ndarray of int, shape (n_norf,)
        ``noRF`` volumes (noise/dummy, not used for CBF).
    """

    deltam: np.ndarray
    deltam_index: np.ndarray
    m0: np.ndarray | None
    m0_index: np.ndarray
    cbf: np.ndarray | None
    norf_index: np.ndarray


def split_asl_series(
    data: np.ndarray, volume_types: Sequence[str], delays: Sequence[float] | None = None
) -> AslSeries:
    """Split a series by aslcontext volume type and subtract control and label.

    Parameters
    ----------
    data : ndarray, shape (..., n_volumes)
    volume_types : sequence of str, length n_volumes
        ``control``, ``label``, ``m0scan``, ``deltam``, ``cbf`` or ``noRF``.
    delays : sequence of float, optional
        PLD per volume (s); if given, the two volumes of each pair must share their PLD.

    Returns
    -------
    AslSeries

    Raises
    ------
    ValueError
        Lengths differ, unknown volume type, unequal control/label counts, pair PLDs differ,
        or no control/label/deltam volume.
    """
    data = np.asarray(data, dtype=np.float64)
    types = [str(v).strip() for v in volume_types]
    if data.shape[-1] != len(types):
        raise ValueError(f"{data.shape[-1]} volumes but {len(types)} volume types")
    known = {"control", "label", "m0scan", "deltam", "cbf", "noRF"}
    if unknown := set(types) - known:
        raise ValueError(f"unknown aslcontext volume types {sorted(unknown)}")
    idx = {k: np.flatnonzero(np.array(types) == k) for k in known}
    ctrl, lab = idx["control"], idx["label"]
    if ctrl.size != lab.size:
        raise ValueError(f"{ctrl.size} control but {lab.size} label volumes")
    if delays is not None:
        d = np.asarray(delays, dtype=np.float64)
        if ctrl.size and not np.allclose(d[ctrl], d[lab]):
            raise ValueError("control and label volumes of a pair have different PLDs")
    pairs = data[..., ctrl] - data[..., lab]
    deltam = np.concatenate([pairs, data[..., idx["deltam"]]], axis=-1)
    order = np.concatenate([ctrl, idx["deltam"]])
    if order.size == 0:
        raise ValueError("no control/label pair and no deltam volume")
    m0 = data[..., idx["m0scan"]] if idx["m0scan"].size else None
    cbf = data[..., idx["cbf"]] if idx["cbf"].size else None
    return AslSeries(deltam, order, m0, idx["m0scan"], cbf, idx["noRF"])


def mean_by_delay(
    deltam: np.ndarray, delays: Sequence[float], durations: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Average difference volumes that share a timing (PLD, and labelling duration if given).

    Parameters
    ----------
    deltam : ndarray, shape (..., n_diff)
    delays : sequence of float, length n_diff
        PLD (s) of each difference volume.
    durations : sequence of float, optional, length n_diff
        Labelling duration (s) of each difference volume.

    Returns
    -------
    unique_delays : ndarray, shape (n_t,)
        Sorted by PLD.
    unique_durations : ndarray, shape (n_t,) or None
    mean : ndarray, shape (..., n_t)
    counts : ndarray of int, shape (n_t,)
        Number of averaged volumes per timing (use as fit weights).
    """
    deltam = np.asarray(deltam, dtype=np.float64)
    d = np.asarray(delays, dtype=np.float64)
    tau = np.zeros_like(d) if durations is None else np.asarray(durations, dtype=np.float64)
    if d.shape != (deltam.shape[-1],) or tau.shape != d.shape:
        raise ValueError("one delay (and duration) per difference volume is needed")
    keys, inverse, counts = np.unique(
        np.round(np.stack([d, tau], axis=1), 9), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    onehot = (inverse[:, None] == np.arange(keys.shape[0])[None, :]).astype(np.float64)
    mean = (deltam @ onehot) / counts
    return keys[:, 0], None if durations is None else keys[:, 1], mean, counts


def m0_saturation_correction(
    m0: np.ndarray,
    repetition_time: float | None,
    t1_tissue: float | np.ndarray = DEFAULT_T1_TISSUE,
) -> np.ndarray:
    """Equilibrium M0 from a saturation-recovery M0 image: ``M0 / (1 - exp(-TR / T1))``.

    Parameters
    ----------
    m0 : ndarray, shape (...)
        Measured M0 image (already averaged over M0 volumes).
    repetition_time : float or None
        ``RepetitionTimePreparation`` of the M0 image (s). ``None`` returns ``m0`` unchanged
        (the recorded no-correction fallback of the parameter reader).
    t1_tissue : float or ndarray broadcastable to ``m0``
        Tissue T1 (s); default grey matter at 3 T.

    Returns
    -------
    ndarray, shape (...)

    Raises
    ------
    ValueError
        TR or T1 not positive.
    """
    m0 = np.asarray(m0, dtype=np.float64)
    if repetition_time is None:
        return m0.copy()
    t1 = np.asarray(t1_tissue, dtype=np.float64)
    if repetition_time <= 0 or np.any(t1 <= 0):
        raise ValueError("TR and tissue T1 must be > 0 s for the M0 TR correction")
    return m0 / -np.expm1(-repetition_time / t1)


def slice_delay_offsets(
    n_slices: int, slice_timing: Sequence[float] | None, axis: int = 2, reverse: bool = False
) -> np.ndarray:
    """Per-slice delay added to the PLD of a 2-D readout, shaped to broadcast on a 3-D grid.

    Parameters
    ----------
    n_slices : int
        Size of the image along the slice axis.
    slice_timing : sequence of float or None
        BIDS ``SliceTiming`` (s); ``None`` gives zero offsets (3-D readout).
    axis : int
        Slice axis (0, 1 or 2).
    reverse : bool
        Negative ``SliceEncodingDirection``: the first timing belongs to the last slice.

    Returns
    -------
    ndarray, shape (n_slices, 1, 1), (1, n_slices, 1) or (1, 1, n_slices)
        Offsets in s from the first acquired slice (the BIDS PLD refers to the first slice
        of a 2-D readout), ``>= 0``.

    Raises
    ------
    ValueError
        The number of slice times differs from ``n_slices``.
    """
    shape = [1, 1, 1]
    shape[axis] = n_slices
    if slice_timing is None:
        return np.zeros(shape)
    t = np.asarray(slice_timing, dtype=np.float64)
    if t.shape != (n_slices,):
        raise ValueError(f"{t.size} SliceTiming entries for {n_slices} slices")
    if reverse:
        t = t[::-1]
    return (t - t.min()).reshape(shape)


def cbf_single_delay(
    deltam: np.ndarray,
    m0: np.ndarray | float,
    delay: np.ndarray | float,
    *,
    labeling_type: str,
    labeling_efficiency: float,
    labeling_duration: float | None = None,
    bolus_duration: float | None = None,
    t1_blood: float = 1.65,
    partition_coefficient: float = 0.9,
) -> np.ndarray:
    """White-paper single-delay CBF (ml/100 g/min), Alsop et al. 2015 [1].

    PCASL/CASL: ``6000 λ ΔM exp(PLD/T1b) / (2 α T1b M0 (1 - exp(-τ/T1b)))``;
    PASL (QUIPSS II/Q2TIPS): ``6000 λ ΔM exp(TI/T1b) / (2 α TI1 M0)``. Both assume that
    all labelled blood has arrived (ATT <= PLD, resp. ATT + TI1 <= TI).

    Parameters
    ----------
    deltam : ndarray, shape (...)
        Mean control - label difference.
    m0 : ndarray broadcastable to ``deltam``, or float
        Equilibrium tissue M0 (TR-corrected), same units as ``deltam``.
    delay : ndarray broadcastable to ``deltam``, or float
        PLD (PCASL/CASL) or TI (PASL) in s, slice-dependent for 2-D readouts.
    labeling_type : {'PCASL', 'CASL', 'PASL'}
    labeling_efficiency : float
        α in (0, 1].
    labeling_duration : float, optional
        τ (s), required for PCASL/CASL.
    bolus_duration : float, optional
        TI1 (s), required for PASL.
    t1_blood : float
        Arterial blood T1 (s).
    partition_coefficient : float
        λ (ml/g).

    Returns
    -------
    ndarray
        CBF in ml/100 g/min; NaN where M0 is not positive and finite (never a zero map).

    Raises
    ------
    ValueError
        Unknown labelling type or missing τ/TI1.
    """
    dm = np.asarray(deltam, dtype=np.float64)
    m0 = np.asarray(m0, dtype=np.float64)
    delay = np.asarray(delay, dtype=np.float64)
    scale = ML_G_S_TO_ML_100G_MIN * partition_coefficient * np.exp(delay / t1_blood)
    if labeling_type in ("PCASL", "CASL"):
        if labeling_duration is None or labeling_duration <= 0:
            raise ValueError(f"{labeling_type} CBF needs a labelling duration > 0 s")
        denom = 2.0 * labeling_efficiency * t1_blood * -np.expm1(-labeling_duration / t1_blood)
    elif labeling_type == "PASL":
        if bolus_duration is None or bolus_duration <= 0:
            raise ValueError("PASL CBF needs a bolus duration TI1 > 0 s (QUIPSS II)")
        denom = 2.0 * labeling_efficiency * bolus_duration
    else:
        raise ValueError(f"unknown labelling type {labeling_type!r}")
    good = np.isfinite(m0) & (m0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cbf = scale * dm / (denom * np.where(good, m0, np.nan))
    return cbf
