"""SA2RAGE B1 mapping (BIDS ``TB1SRGE``; Eggenschwiler et al. 2012) through a lookup table.

Each ``RepetitionTimePreparation`` TR starts with a non-selective saturation pulse of nominal
90°, which leaves ``cos(B1 · 90°)`` of the longitudinal magnetisation: the source of the B1
sensitivity. Two spoiled GRE trains (angles ``B1 α1``, ``B1 α2``, spacing
``RepetitionTimeExcitation``) are centred (k-space centre) at the delays ``TD1 < TD2`` after
it (the sidecar ``InversionTime``). Their signals follow from exact longitudinal recovery
between instantaneous pulses in the periodic steady state (the MP2RAGE signal of Marques et
al. 2010 with the inversion replaced by the saturation). The ratio ``S1 / S2`` cancels M0,
T2* and the receive field, depends weakly on T1 for a short TD1, and decreases
monotonically with B1; a lookup table of it over B1 at an assumed T1 (an option, recorded) is
inverted voxel by voxel.

The ratio changes sign where ``S1`` does (B1 slightly above 1, where the saturation is
exact): phase-sensitive (real-valued, signed) images give the whole range; magnitude
images fold B1 above that point back below it (a warning says so).

Readout lengths come from ``NumberShots``: ``[before, after]`` pulses around the centre, or
a single number ``N`` with ``PartialFourier`` ``f`` (default 1): ``before = round(N (f -
1/2))``, ``after = round(N / 2)`` (the MP2RAGE rule of the BIDS qMRI appendix).

References
----------
.. [1] Eggenschwiler F, Kober T, Magill AW, Gruetter R, Marques JP. SA2RAGE: a new
   sequence for fast B1+-mapping. Magn Reson Med 2012;67:1609-1619.
.. [2] Marques JP, Kober T, Krueger G, et al. MP2RAGE, a self bias-field corrected sequence
   for improved segmentation and T1-mapping at high field. NeuroImage 2010;49:1271-1281.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import B1_RANGE, Collection, sidecar_path

#: B1 grid of the lookup table
TABLE_B1 = np.arange(0.05, 2.5 + 1e-9, 0.0025)


def _train(a: np.ndarray, e: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``Mz -> A Mz + B`` of ``n`` times (pulse with cos ``a``, relax ``e``)."""
    step = a * e
    with np.errstate(all="ignore"):
        geo = np.where(np.isclose(step, 1.0), n, (1.0 - step**n) / (1.0 - step))
    return step**n, (1.0 - e) * geo


@dataclass(frozen=True)
class SA2RAGEProtocol:
    """Sequence parameters of a SA2RAGE pair (times in s, angles in degrees).

    Attributes
    ----------
    tr : float
        ``RepetitionTimePreparation`` (saturation to saturation).
    delays : (2,) tuple of float
        TD1, TD2: saturation to the k-space centre of each train (``InversionTime``).
    flip_angles : (2,) tuple of float
        α1, α2.
    tr_excitation : float
        Spacing of the GRE pulses.
    n_before, n_after : int
        Pulses before the centre, and from the centre on (centre included).
    """

    tr: float
    delays: tuple[float, float]
    flip_angles: tuple[float, float]
    tr_excitation: float
    n_before: int
    n_after: int

    def signals(self, b1: np.ndarray, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Steady-state centre-of-k-space signals ``S1, S2`` (M0 = 1) for each B1.

        Parameters
        ----------
        b1 : (m,) array_like
        t1 : float
            T1 in s.

        Returns
        -------
        s1, s2 : (m,) ndarray
            Signed signals.
        """
        b1 = np.asarray(b1, dtype=np.float64)
        td1, td2 = self.delays
        n = self.n_before + self.n_after
        d1 = td1 - self.n_before * self.tr_excitation
        d2 = td2 - td1 - n * self.tr_excitation
        d3 = self.tr - td2 - self.n_after * self.tr_excitation
        e_exc = np.exp(-self.tr_excitation / t1)
        sat = np.cos(b1 * np.pi / 2)
        a1, a2 = (np.deg2rad(f) * b1 for f in self.flip_angles)

        def relax(a, b, d):
            e = np.exp(-d / t1)
            return a * e, b * e + (1.0 - e)

        def then(a, b, ta, tb):  # apply the map (ta, tb) after (a, b)
            return ta * a, ta * b + tb

        # one period, starting just before the saturation pulse
        a, b = sat, np.zeros_like(b1)
        a, b = relax(a, b, d1)
        a, b = then(a, b, *_train(np.cos(a1), e_exc, n))
        a, b = relax(a, b, d2)
        a, b = then(a, b, *_train(np.cos(a2), e_exc, n))
        a, b = relax(a, b, d3)
        mz = b / (1.0 - a)
        # walk to the two centres
        mz = mz * sat
        mz = mz * np.exp(-d1 / t1) + (1.0 - np.exp(-d1 / t1))
        ta, tb = _train(np.cos(a1), e_exc, self.n_before)
        mz = ta * mz + tb
        s1 = np.sin(a1) * mz
        ta, tb = _train(np.cos(a1), e_exc, self.n_after)
        mz = ta * mz + tb
        mz = mz * np.exp(-d2 / t1) + (1.0 - np.exp(-d2 / t1))
        ta, tb = _train(np.cos(a2), e_exc, self.n_before)
        s2 = np.sin(a2) * (ta * mz + tb)
        return s1, s2

    def table(self, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """The monotonic branch of the ratio around B1 = 1: ``(ratio increasing, b1)``.

        Returns
        -------
        ratio, b1 : (m,) ndarray
            ``ratio`` increasing (for :func:`numpy.interp`), ``b1`` the matching values.
        """
        s1, s2 = self.signals(TABLE_B1, t1)
        r = s1 / s2
        d = np.diff(r)
        centre = int(np.argmin(np.abs(TABLE_B1 - 1.0)))
        sign = np.sign(d[min(centre, d.size - 1)])
        lo = centre
        while lo > 0 and np.sign(d[lo - 1]) == sign:
            lo -= 1
        hi = centre
        while hi < d.size and np.sign(d[hi]) == sign:
            hi += 1
        r, b = r[lo : hi + 1], TABLE_B1[lo : hi + 1]
        return (r, b) if sign > 0 else (r[::-1], b[::-1])

    def b1(self, signal: np.ndarray, t1: float) -> np.ndarray:
        """(n_vox, 2) signals (TD1, TD2 order) -> (n_vox,) relative B1 (NaN off the table)."""
        r_tab, b_tab = self.table(t1)
        with np.errstate(all="ignore"):
            ratio = signal[:, 0] / signal[:, 1]
        ok = np.isfinite(ratio) & (signal[:, 1] != 0)
        ok &= (ratio >= r_tab[0]) & (ratio <= r_tab[-1])
        return np.where(ok, np.interp(np.where(ok, ratio, r_tab[0]), r_tab, b_tab), np.nan)

    def fold(self, t1: float) -> float:
        """The B1 where S1 changes sign: magnitude images fold above it."""
        s1, _ = self.signals(TABLE_B1, t1)
        change = np.flatnonzero(np.diff(np.sign(s1)) != 0)
        return float(TABLE_B1[change[0] + 1]) if change.size else float(B1_RANGE[1])

    def acquisition(self, t1: float) -> dict[str, Any]:
        """What the sidecars record."""
        return {
            "RepetitionTimePreparation": self.tr,
            "InversionTime": list(self.delays),
            "FlipAngle": list(self.flip_angles),
            "RepetitionTimeExcitation": self.tr_excitation,
            "NumberShots": [self.n_before, self.n_after],
            "AssumedT1": t1,
            "B1Conversion": (
                "lookup of S1/S2 (shorter InversionTime first) in the SA2RAGE steady-state "
                "signal ratio over B1 at the assumed T1, saturation cos(B1 90 deg) "
                "(Eggenschwiler et al. 2012)"
            ),
        }


def _shots(meta: dict[str, Any], path: str) -> tuple[int, int]:
    raw = meta.get("NumberShots")
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        vals = raw
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        pf = meta.get("PartialFourier", 1.0)
        if isinstance(pf, bool) or not isinstance(pf, (int, float)) or not 0.5 <= pf <= 1.0:
            raise MetadataError(path, "PartialFourier", pf, "a fraction in [0.5, 1]")
        vals = [round(raw * (pf - 0.5)), max(1, round(raw / 2))]
    else:
        vals = None
    ok = vals is not None and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
        for v in vals
    )
    if not ok or vals[0] < 0 or vals[1] < 1 or sum(vals) > 4096:
        expected = "a number of shots >= 1, or [before, after] shots around the k-space centre"
        raise MetadataError(path, "NumberShots", raw, expected)
    return int(vals[0]), int(vals[1])


def sa2rage_protocol(coll: Collection) -> SA2RAGEProtocol:
    """Read a TB1SRGE pair (ordered by ``InversionTime``) into a protocol.

    Raises
    ------
    MetadataError
        Missing/invalid ``NumberShots``, parameters that differ between the two files, equal
        delays, or a timing that does not fit in the TR (naming the file and key).
    """
    vols = coll.volumes
    paths = [sidecar_path(v.path) for v in vols]
    tr = coll.common("RepetitionTimePreparation")
    tr_exc = coll.common("RepetitionTimeExcitation")
    shots = [_shots(v.metadata, p) for v, p in zip(vols, paths, strict=True)]
    if shots[0] != shots[1]:
        raise MetadataError(paths[1], "NumberShots", shots[1], f"the same as {paths[0]}")
    td = tuple(float(t) for t in coll.values("InversionTime"))
    flips = tuple(float(f) for f in coll.values("FlipAngle"))
    n_before, n_after = shots[0]
    proto = SA2RAGEProtocol(tr, td, flips, tr_exc, n_before, n_after)
    n = n_before + n_after
    checks = (
        (0, "InversionTime", td[0], td[0] - n_before * tr_exc, "TD1 >= NumberShots before x TR"),
        (
            1,
            "InversionTime",
            td[1],
            td[1] - td[0] - n * tr_exc,
            "the second train after the first",
        ),
        (1, "RepetitionTimePreparation", tr, tr - td[1] - n_after * tr_exc, "both trains in TR"),
    )
    for i, key, value, margin, what in checks:
        if margin < 0:
            raise MetadataError(
                paths[i],
                key,
                value,
                f"a timing with {what} (RepetitionTime"
                f"Excitation {tr_exc:g} s, NumberShots {[n_before, n_after]})",
            )
    return proto
