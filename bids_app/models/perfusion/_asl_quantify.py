"""One call from an ASL series and its checked parameters to CBF (and ATT) maps.

Glue for a model class: :func:`quantify_asl` chains the pure cores of
:mod:`bids_app.models.perfusion._asl_physics` (subtraction, M0, slice timing, white-paper
single-delay CBF) and :mod:`bids_app.models.perfusion._asl_kinetic` (multi-delay Buxton fit).
No file I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bids_app.models.perfusion._asl_kinetic import fit_multi_delay
from bids_app.models.perfusion._asl_params import AslParams
from bids_app.models.perfusion._asl_physics import (
    DEFAULT_T1_TISSUE,
    cbf_single_delay,
    m0_saturation_correction,
    mean_by_delay,
    slice_delay_offsets,
    split_asl_series,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AslMaps:
    """Quantified ASL maps on the image grid (spatial shape ``S`` = data.shape[:3]).

    Attributes
    ----------
    cbf : ndarray, shape S
        CBF (ml/100 g/min); NaN outside the mask or where M0 <= 0.
    att : ndarray, shape S, or None
        Arterial transit time (s), multi-delay series only.
    m0 : ndarray, shape S
        Equilibrium tissue M0 used (TR-corrected, or the constant estimate).
    deltam : ndarray, shape S + (n_timings,)
        Mean control - label difference per timing.
    delays : ndarray, shape (n_timings,)
        PLD (PCASL/CASL) or TI (PASL) of each timing (s), first slice of a 2-D readout.
    counts : ndarray of int, shape (n_timings,)
        Difference volumes averaged per timing.
    notes : tuple of str
        The parameter notes plus those of the quantification.
    """

    cbf: np.ndarray
    att: np.ndarray | None
    m0: np.ndarray
    deltam: np.ndarray
    delays: np.ndarray
    counts: np.ndarray
    notes: tuple[str, ...]


def quantify_asl(
    data: np.ndarray,
    params: AslParams,
    *,
    m0_image: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    t1_tissue: float | np.ndarray = DEFAULT_T1_TISSUE,
    t1_app: float | None = None,
    att_grid: np.ndarray | None = None,
    n_iterations: int = 6,
) -> AslMaps:
    """CBF (single delay) or CBF + ATT (several delays) from a 4-D ASL series.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, n_volumes)
        The ASL series in aslcontext order.
    params : AslParams
        From :func:`~bids_app.models.perfusion._asl_params.read_asl_params`.
    m0_image : ndarray, shape (X, Y, Z) or (X, Y, Z, n), optional
        The separate M0 image (``M0Type = 'Separate'``), on the ASL grid.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to quantify; default all voxels with a positive finite M0.
    t1_tissue : float or ndarray, shape (X, Y, Z)
        Tissue T1 (s) of the M0 TR correction.
    t1_app : float, optional
        Apparent tissue T1 of the multi-delay model (``None``: blood T1, white paper).
    att_grid : ndarray, optional
        ATT grid of the multi-delay fit (s).
    n_iterations : int
        Levenberg-Marquardt steps of the multi-delay fit.

    Returns
    -------
    AslMaps

    Raises
    ------
    ValueError
        Shapes disagree, or ``M0Type = 'Separate'`` without ``m0_image``.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 4 or data.shape[-1] != params.n_volumes:
        raise ValueError(f"data {data.shape}: expected (X, Y, Z, {params.n_volumes})")
    shape, notes = data.shape[:3], list(params.notes)
    series = split_asl_series(data, params.volume_types, params.post_labeling_delay)
    pld = np.asarray(params.post_labeling_delay)[series.deltam_index]
    if params.labeling_type == "PASL":
        tau = None
    else:
        tau = np.asarray(params.labeling_duration)[series.deltam_index]
    delays, taus, mean, counts = mean_by_delay(series.deltam, pld, tau)

    if params.m0_type in ("Estimate", "Absent"):
        m0 = np.full(shape, float(params.m0_estimate))
    else:
        if params.m0_type == "Included":
            raw = series.m0
        elif m0_image is None:
            raise ValueError("M0Type 'Separate' needs the M0 image")
        else:
            raw = np.asarray(m0_image, dtype=np.float64)
        raw = raw.mean(axis=-1) if raw.ndim == 4 else raw
        if raw.shape != shape:
            raise ValueError(f"M0 image {raw.shape} is not on the ASL grid {shape}")
        m0 = m0_saturation_correction(raw, params.m0_repetition_time, t1_tissue)
    m0 = np.where(np.isfinite(m0) & (m0 > 0), m0, np.nan)
    use = np.isfinite(m0) if mask is None else np.asarray(mask, bool) & np.isfinite(m0)
    offsets = np.broadcast_to(
        slice_delay_offsets(
            shape[params.slice_axis], params.slice_timing, params.slice_axis, params.slice_reversed
        ),
        shape,
    )
    duration = params.bolus_duration if taus is None else taus
    kind, alpha = params.labeling_type, params.labeling_efficiency
    common = {"t1_blood": params.t1_blood, "partition_coefficient": params.partition_coefficient}
    cbf = np.full(shape, np.nan)
    att = None
    if delays.size == 1:
        one = cbf_single_delay(
            mean[..., 0],
            m0,
            delays[0] + offsets,
            labeling_type=kind,
            labeling_efficiency=alpha,
            labeling_duration=None if taus is None else float(taus[0]),
            bolus_duration=params.bolus_duration,
            **common,
        )
        cbf[use] = one[use]
    else:
        att = np.full(shape, np.nan)
        fit = fit_multi_delay(
            mean[use] / m0[use][:, None],
            delays[None, :] + offsets[use][:, None],
            duration,
            labeling_type=kind,
            labeling_efficiency=alpha,
            t1_app=t1_app,
            weights=counts,
            att_grid=att_grid,
            n_iterations=n_iterations,
            **common,
        )
        cbf[use], att[use] = fit.cbf, fit.att
        notes.append(f"multi-delay Buxton fit over {delays.size} timings, {use.sum()} voxels")
    return AslMaps(cbf, att, m0, mean, delays, counts, tuple(notes))
