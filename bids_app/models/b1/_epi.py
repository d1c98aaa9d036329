"""3D-EPI spin-echo / stimulated-echo B1 mapping (BIDS ``TB1EPI``; Jiru & Klose, Lutti et al.).

At each nominal angle ``α`` (the sidecar ``FlipAngle``) the pulses ``α - 2α - α`` give a spin
echo (``echo-1``, pulses 1-2) and a stimulated echo (``echo-2``, pulses 1-2-3, stored
longitudinally for the ``MixingTime`` TM between pulses 2 and 3). With the actual angle
``θ = B1 α`` and the usual echo amplitudes (Hahn 1950)::

    SE  ∝ sin θ sin²(2θ / 2)                  = sin³θ
    STE ∝ ½ sin θ sin 2θ sin θ exp(-TM / T1)  = sin³θ cos θ exp(-TM / T1)

with the same transverse time (T2, T2* and receive cancel), so

    cos θ = exp(TM / T1) STE / SE                               (Lutti et al. 2010)

with an assumed T1 (an option, recorded). Magnitude images give ``|cos θ|``: θ and
``180° - θ`` are both candidates. As in Lutti et al. (2010), at each voxel the ``K`` nominal
angles with the largest SE (the best conditioned, ``K = min(5, ceil(n/2))``) each give two
candidates ``θ/α`` and ``(180° - θ)/α``; the ``K`` sorted candidates with the smallest
standard deviation are the consistent set and B1 is their mean. Batched over voxels.

References
----------
.. [1] Jiru F, Klose U. Fast 3D radiofrequency field mapping using echo-planar imaging.
   Magn Reson Med 2006;56:1375-1379.
.. [2] Lutti A, Hutton C, Finsterbusch J, Helms G, Weiskopf N. Optimization and validation
   of methods for mapping of the radiofrequency transmit field at 3T. Magn Reson Med
   2010;64:229-238.
.. [3] Lutti A, Stadler J, Josephs O, et al. Robust and fast whole brain mapping of the RF
   transmit field B1 at 7T. PLoS One 2012;7:e32379.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import Collection, sidecar_path

#: at most this many nominal angles are combined per voxel (Lutti et al. 2010)
MAX_ANGLES = 5


def n_angles_kept(n_flips: int) -> int:
    """How many nominal angles are combined: ``min(5, ceil(n / 2))``, at least 1."""
    return max(1, min(MAX_ANGLES, (n_flips + 1) // 2))


def epi_b1(
    se: np.ndarray,
    ste: np.ndarray,
    flips_deg: Sequence[float],
    mixing_time: float,
    t1: float,
    *,
    n_keep: int | None = None,
) -> np.ndarray:
    """Relative B1 from SE/STE pairs at several nominal angles.

    Parameters
    ----------
    se, ste : (n_vox, n_flips) array_like
        Spin-echo and stimulated-echo signals, one column per nominal angle.
    flips_deg : (n_flips,) sequence of float
        Nominal angles α in degrees (the STE pulse; the SE refocusing pulse is 2α).
    mixing_time : float
        TM in s.
    t1 : float
        Assumed T1 in s (longitudinal decay of the stored STE during TM).
    n_keep : int, optional
        Angles combined per voxel (default :func:`n_angles_kept`).

    Returns
    -------
    (n_vox,) ndarray
        The mean of the most consistent candidates; NaN where no angle has ``SE > 0``.

    Examples
    --------
    >>> th = np.deg2rad(0.9 * np.array([60.0, 90.0, 120.0]))
    >>> se, ste = np.abs(np.sin(th) ** 3), np.abs(np.sin(th) ** 3 * np.cos(th))
    >>> round(float(epi_b1(se[None], ste[None], [60, 90, 120], 0.03, 1e9)[0]), 9)
    0.9
    """
    se = np.atleast_2d(np.asarray(se, dtype=np.float64))
    ste = np.atleast_2d(np.asarray(ste, dtype=np.float64))
    flips = np.asarray(flips_deg, dtype=np.float64)
    n_vox, n_flips = se.shape
    k = n_angles_kept(n_flips) if n_keep is None else int(n_keep)
    good = np.isfinite(se) & np.isfinite(ste) & (se > 0)
    with np.errstate(all="ignore"):
        cos_t = np.clip(np.exp(mixing_time / t1) * ste / se, -1.0, 1.0)
    theta = np.degrees(np.arccos(cos_t))
    # the k angles with the largest SE (invalid ones last)
    rank = np.argsort(np.where(good, -se, np.inf), axis=1, kind="stable")[:, :k]
    rows = np.arange(n_vox)[:, None]
    th, al, ok = theta[rows, rank], flips[rank], good[rows, rank]
    cand = np.concatenate([th / al, (180.0 - th) / al], axis=1)
    cand = np.where(np.concatenate([ok, ok], axis=1), cand, np.nan)
    n_ok = ok.sum(axis=1)
    cand.sort(axis=1)  # NaN last
    # windows of k consecutive sorted candidates: mean and variance from cumulative sums
    filled = np.nan_to_num(cand)
    c1 = np.concatenate([np.zeros((n_vox, 1)), np.cumsum(filled, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((n_vox, 1)), np.cumsum(filled**2, axis=1)], axis=1)
    starts = np.arange(k + 1)
    mean = (c1[:, starts + k] - c1[:, starts]) / k
    var = (c2[:, starts + k] - c2[:, starts]) / k - mean**2
    complete = starts[None, :] + k <= 2 * n_ok[:, None]  # windows without NaN only
    var = np.where(complete, var, np.inf)
    best = np.argmin(var, axis=1)
    out = mean[np.arange(n_vox), best]
    # voxels with fewer valid angles than k: the mean over the consistent half of what exists
    few = (n_ok > 0) & (n_ok < k)
    if few.any():
        sub = epi_b1(se[few], ste[few], flips, mixing_time, t1, n_keep=1)
        out[few] = sub
    return np.where(n_ok > 0, out, np.nan)


@dataclass(frozen=True)
class EPIProtocol:
    """SE/STE columns per nominal angle and the mixing time.

    Attributes
    ----------
    se_index, ste_index : tuple of int
        Columns of the SE (``echo-1``, shorter ``EchoTime``) and STE images per angle.
    flip_angles : tuple of float
        Nominal angles in degrees, one per pair.
    mixing_time : float
        TM in s.
    total_readout_time : float or None
        ``TotalReadoutTime`` in s (recorded; no distortion correction is done).
    """

    se_index: tuple[int, ...]
    ste_index: tuple[int, ...]
    flip_angles: tuple[float, ...]
    mixing_time: float
    total_readout_time: float | None = None

    @classmethod
    def from_collection(cls, coll: Collection) -> EPIProtocol:
        """Pair the volumes by ``FlipAngle``; the shorter ``EchoTime`` is the SE.

        Raises
        ------
        MetadataError
            A nominal angle without exactly two echoes, two echoes with the same
            ``EchoTime``, an ``echo`` entity contradicting the echo times (``echo-1`` must
            be the SE, BIDS qMRI appendix), or ``MixingTime`` differing between files.
        """
        flips, tes = coll.values("FlipAngle"), coll.values("EchoTime")
        groups: dict[float, list[int]] = {}
        for i, f in enumerate(flips):
            groups.setdefault(round(float(f), 3), []).append(i)
        se, ste, angles = [], [], []
        for angle, idx in sorted(groups.items()):
            path = sidecar_path(coll.volumes[idx[0]].path)
            if len(idx) != 2:
                msg = f"two TB1EPI images (SE echo-1, STE echo-2) at {angle:g} deg, not {len(idx)}"
                raise MetadataError(path, "FlipAngle", angle, msg)
            i, j = sorted(idx, key=lambda n: tes[n])
            if np.isclose(tes[i], tes[j], rtol=1e-3, atol=0):
                path = sidecar_path(coll.volumes[j].path)
                msg = "an EchoTime longer than the SE's (the STE is echo-2)"
                raise MetadataError(path, "EchoTime", float(tes[j]), msg)
            for n, label in ((i, "1"), (j, "2")):
                echo = coll.volumes[n].entities.get("echo")
                if echo is not None and str(echo) != label:
                    msg = f"echo-{label}: echo-1 is the SE (shorter EchoTime), echo-2 the STE"
                    raise MetadataError(sidecar_path(coll.volumes[n].path), "echo", echo, msg)
            se.append(i)
            ste.append(j)
            angles.append(float(flips[i]))
        trt = coll.params.get("TotalReadoutTime")
        trt = None if trt is None or trt[se[0]] is None else float(trt[se[0]])
        return cls(tuple(se), tuple(ste), tuple(angles), coll.common("MixingTime"), trt)

    def b1(self, signal: np.ndarray, t1: float) -> np.ndarray:
        """(n_vox, n_meas) stacked signal -> (n_vox,) relative B1."""
        se = np.abs(signal[:, list(self.se_index)])
        ste = np.abs(signal[:, list(self.ste_index)])
        return epi_b1(se, ste, self.flip_angles, self.mixing_time, t1)

    def acquisition(self, t1: float) -> dict[str, Any]:
        """What the sidecars record."""
        return {
            "FlipAngle": list(self.flip_angles),
            "MixingTime": self.mixing_time,
            "TotalReadoutTime": self.total_readout_time,
            "AssumedT1": t1,
            "B1Conversion": (
                "cos(B1 FlipAngle) = exp(MixingTime/T1) STE/SE (Lutti et al. 2010); the "
                f"{n_angles_kept(len(self.flip_angles))} angles of largest SE per voxel, the "
                "most consistent of the candidates theta/alpha and (180-theta)/alpha averaged"
            ),
        }
