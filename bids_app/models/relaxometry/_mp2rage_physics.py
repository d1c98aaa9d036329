"""MP2RAGE signal equations, the UNIT1 combination and the T1 lookup table (batched numpy).

The sequence (Marques et al. 2010, appendix): an inversion (efficiency ``eff``), then two
gradient-echo readout blocks of ``n_before + n_after`` excitations each (flip ``α_j``, spacing
``TR_j``), whose k-space centre excitation comes ``TI_j`` after the inversion, repeated
every ``TR_prep`` (``RepetitionTimePreparation``). Between events the longitudinal
magnetisation ``M`` (per unit M0) relaxes as ``M -> E M + (1 - E)`` with ``E = exp(-t/T1)``;
one excitation followed by a TR is ``M -> a M + (1 - E_TR)`` with ``a = E_TR cos(B1 α)``, so
``m`` of them are the affine map ``M -> a^m M + (1 - E_TR)(1 - a^m)/(1 - a)`` (real ``m``
allowed, as partial Fourier gives fractional counts). The cycle is the composition of these
affine maps; its fixed point is the steady state, and the signal of block ``j`` is
``sin(B1 α_j)`` times ``M`` just before its centre excitation (M0, receive field and T2*
decay are common factors and cancel in UNIT1).

``UNIT1 = Re(S1* S2) / (|S1|² + |S2|²)`` in [-0.5, 0.5]; with the robust combination of
O'Brien et al. (2014) ``(Re(S1* S2) - β) / (|S1|² + |S2|² + 2β)``.

The lookup table evaluates UNIT1 on a dense (B1, T1) grid, keeps for every B1 the monotone
(decreasing) branch of UNIT1(T1) that contains its maximum, and resamples its inverse as R1
on a regular UNIT1 grid, so that the T1 of any number of voxels is a bilinear interpolation
in (B1, UNIT1) (Marques & Gruetter 2013 for the B1 dimension).

References
----------
Marques JP, Kober T, Krueger G, et al. MP2RAGE, a self bias-field corrected sequence for
improved segmentation and T1-mapping at high field. NeuroImage 2010;49:1271-1281.
Marques JP, Gruetter R. New developments and applications of the MP2RAGE sequence: focusing
the contrast and high spatial resolution R1 mapping. PLoS One 2013;8:e69294.
O'Brien KR, Kober T, Hagmann P, et al. Robust T1-weighted structural brain imaging and
morphometry at 7T using MP2RAGE. PLoS One 2014;9:e99676.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: default inversion efficiency (adiabatic inversion, Marques et al. 2010)
INVERSION_EFFICIENCY = 0.96
#: T1 grid of the lookup table (s): log-spaced, covers tissue, blood and CSF at 1.5-7 T
T1_GRID = (0.05, 10.0, 4000)
#: B1 grid of the lookup table (fraction of nominal), step 0.01, 1.0 on the grid
B1_GRID = (0.3, 2.0, 171)
#: number of UNIT1 samples in [-0.5, 0.5] of the inverse table
N_UNIT1 = 4001


@dataclass(frozen=True)
class MP2RAGEProtocol:
    """The sequence parameters of one MP2RAGE acquisition (SI units, degrees).

    Attributes
    ----------
    inversion_times : (2,) tuple of float
        ``TI1 < TI2``, s, inversion to the k-space centre excitation of each block.
    flip_angles : (2,) tuple of float
        Nominal flip angle of each block, degrees.
    repetition_times : (2,) tuple of float
        ``RepetitionTimeExcitation`` of each block, s.
    repetition_time_preparation : float
        ``RepetitionTimePreparation``, s (inversion to inversion).
    n_before, n_after : (2,) tuple of float
        Excitations of each block before its k-space centre and from it on (the centre
        excitation included in ``n_after``).
    inversion_efficiency : float
        ``M -> -eff M`` at the inversion.
    """

    inversion_times: tuple[float, float]
    flip_angles: tuple[float, float]
    repetition_times: tuple[float, float]
    repetition_time_preparation: float
    n_before: tuple[float, float]
    n_after: tuple[float, float]
    inversion_efficiency: float = INVERSION_EFFICIENCY

    def timing_problem(self) -> tuple[str, str] | None:
        """``(key, what)`` if the blocks do not fit in the cycle, else ``None``.

        Block ``j`` spans ``[TI_j - n_before_j TR_j, TI_j + n_after_j TR_j]``; the first
        must start after the inversion, the second after the first ends, and the second
        must end before the next inversion.
        """
        ti, tr = self.inversion_times, self.repetition_times
        start1 = ti[0] - self.n_before[0] * tr[0]
        end1 = ti[0] + self.n_after[0] * tr[0]
        start2 = ti[1] - self.n_before[1] * tr[1]
        end2 = ti[1] + self.n_after[1] * tr[1]
        eps = 1e-9
        if start1 < -eps:
            return "InversionTime", (
                f"TI1 >= {self.n_before[0]:g} x {tr[0]:g} s (the excitations before the "
                f"k-space centre), got TI1 = {ti[0]:g} s"
            )
        if start2 < end1 - eps:
            return "InversionTime", (
                f"the second readout block (from {start2:g} s) to start after the first ends "
                f"({end1:g} s)"
            )
        if end2 > self.repetition_time_preparation + eps:
            return "RepetitionTimePreparation", (
                f"at least the end of the second readout block ({end2:g} s)"
            )
        return None


def _relax(t: float, r1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine map of free relaxation over ``t`` s: ``(E, 1 - E)``."""
    e = np.exp(-t * r1)
    return e, -np.expm1(-t * r1)


def _train(m: float, tr: float, flip: np.ndarray, r1: np.ndarray):
    """Affine map ``(a^m, (1 - E)(1 - a^m)/(1 - a))`` of ``m`` excitations with spacing ``tr``."""
    e = np.exp(-tr * r1)
    one_minus_e = -np.expm1(-tr * r1)
    cos = np.cos(flip)
    one_minus_a = one_minus_e + e * 2.0 * np.sin(flip / 2.0) ** 2  # 1 - E cos, stably
    log_a = -tr * r1 + np.log(cos)
    a_m = np.exp(m * log_a)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = one_minus_e * -np.expm1(m * log_a) / one_minus_a
    return a_m, b


def _then(first, second):
    """Composition ``second ∘ first`` of affine maps given as ``(a, b)``."""
    a1, b1 = first
    a2, b2 = second
    return a2 * a1, a2 * b1 + b2


def mp2rage_signals(
    t1: np.ndarray, protocol: MP2RAGEProtocol, b1: np.ndarray | float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state signals of the two MP2RAGE readouts per unit M0 (signed, real).

    Parameters
    ----------
    t1 : array_like
        T1 in s (any shape, broadcast with ``b1``).
    protocol : MP2RAGEProtocol
    b1 : array_like or float
        Relative B1+ scaling both readout flip angles (the adiabatic inversion is not
        scaled, Marques & Gruetter 2013).

    Returns
    -------
    s1, s2 : ndarray
        Broadcast shape of ``t1`` and ``b1``; NaN where ``B1 α >= 90°`` or T1 <= 0.

    Examples
    --------
    >>> p = MP2RAGEProtocol((0.7, 2.5), (4.0, 5.0), (0.007, 0.007), 5.0, (80, 80), (88, 88))
    >>> s1, s2 = mp2rage_signals(np.array([0.8, 4.0]), p)
    >>> bool(s1[0] > 0 > s1[1]) and bool(np.all(s2 > 0))
    True
    """
    t1, b1 = np.broadcast_arrays(np.asarray(t1, float), np.asarray(b1, float))
    with np.errstate(all="ignore"):
        r1 = np.where(t1 > 0, 1.0 / t1, np.nan)
        flips = [np.deg2rad(f) * b1 for f in protocol.flip_angles]
        flips = [np.where((f > 0) & (f < np.pi / 2), f, np.nan) for f in flips]
        ti, tr = protocol.inversion_times, protocol.repetition_times
        nb, na = protocol.n_before, protocol.n_after
        inversion = (np.full_like(r1, -protocol.inversion_efficiency), np.zeros_like(r1))
        ta = ti[0] - nb[0] * tr[0]
        tb = (ti[1] - nb[1] * tr[1]) - (ti[0] + na[0] * tr[0])
        tc = protocol.repetition_time_preparation - (ti[1] + na[1] * tr[1])
        to_centre1 = _then(_then(inversion, _relax(ta, r1)), _train(nb[0], tr[0], flips[0], r1))
        centre1_to_centre2 = _then(
            _then(_train(na[0], tr[0], flips[0], r1), _relax(tb, r1)),
            _train(nb[1], tr[1], flips[1], r1),
        )
        centre2_to_end = _then(_train(na[1], tr[1], flips[1], r1), _relax(tc, r1))
        cycle = _then(_then(to_centre1, centre1_to_centre2), centre2_to_end)
        m_ss = cycle[1] / (1.0 - cycle[0])
        m1 = to_centre1[0] * m_ss + to_centre1[1]
        m2 = centre1_to_centre2[0] * m1 + centre1_to_centre2[1]
        return np.sin(flips[0]) * m1, np.sin(flips[1]) * m2


def unit1_combination(s1: np.ndarray, s2: np.ndarray, beta: float = 0.0) -> np.ndarray:
    """UNIT1 ``(Re(S1* S2) - β) / (|S1|² + |S2|² + 2β)`` of real or complex signals.

    Parameters
    ----------
    s1, s2 : array_like
        Signals of the first and second inversion (same shape; real signed or complex).
    beta : float
        O'Brien et al. (2014) regularisation in signal units squared (0: the plain
        combination of Marques et al. 2010).

    Returns
    -------
    ndarray
        In [-0.5, 0.5] (plain combination); NaN where both signals are 0 or non-finite.
    """
    s1, s2 = np.asarray(s1), np.asarray(s2)
    with np.errstate(all="ignore"):
        num = np.real(np.conj(s1) * s2) - beta
        den = np.abs(s1) ** 2 + np.abs(s2) ** 2 + 2.0 * beta
        out = num / den
    return np.where(np.isfinite(out), out, np.nan)


class UNIT1LookupTable:
    """T1 from UNIT1 (and B1) by bilinear interpolation of R1 on a (B1, UNIT1) grid.

    Parameters
    ----------
    protocol : MP2RAGEProtocol
    t1_grid : (3,) tuple
        ``(min s, max s, n)`` of the log-spaced T1 samples of the forward table.
    b1_grid : (3,) tuple
        ``(min, max, n)`` of the linear B1 grid.
    n_unit1 : int
        Samples of the inverse table in [-0.5, 0.5].

    Attributes
    ----------
    r1 : (n_b1, n_unit1) ndarray
        R1 (1/s) on the monotone branch of each B1 row, NaN outside it.
    t1_range : (n_b1, 2) ndarray
        T1 range (s) of each row's monotone branch.
    """

    def __init__(
        self,
        protocol: MP2RAGEProtocol,
        *,
        t1_grid: tuple[float, float, int] = T1_GRID,
        b1_grid: tuple[float, float, int] = B1_GRID,
        n_unit1: int = N_UNIT1,
    ):
        self.protocol = protocol
        t1 = np.geomspace(t1_grid[0], t1_grid[1], int(t1_grid[2]))
        self.b1 = np.linspace(b1_grid[0], b1_grid[1], int(b1_grid[2]))
        self.unit1 = np.linspace(-0.5, 0.5, int(n_unit1))
        s1, s2 = mp2rage_signals(t1[None, :], protocol, self.b1[:, None])
        uni = unit1_combination(s1, s2)
        self.r1 = np.full((self.b1.size, self.unit1.size), np.nan)
        self.t1_range = np.full((self.b1.size, 2), np.nan)
        for i, row in enumerate(uni):  # one row per B1 value (~170), not per voxel
            branch = _monotone_branch(row)
            if branch is None:
                continue
            lo, hi = branch
            u, r = row[lo:hi][::-1], 1.0 / t1[lo:hi][::-1]  # increasing UNIT1
            self.r1[i] = np.interp(self.unit1, u, r, left=np.nan, right=np.nan)
            self.t1_range[i] = t1[lo], t1[hi - 1]

    def r1_of(self, unit1: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        """R1 (1/s) for each voxel's UNIT1 (and B1; nominal if ``None``).

        Parameters
        ----------
        unit1 : (n,) array_like
        b1 : (n,) array_like or None

        Returns
        -------
        (n,) ndarray
            NaN where UNIT1 or B1 is non-finite, B1 is outside the table, or UNIT1 lies
            off the monotone branch.
        """
        u = np.asarray(unit1, dtype=float).ravel()
        b = np.ones_like(u) if b1 is None else np.asarray(b1, dtype=float).ravel()
        du = self.unit1[1] - self.unit1[0]
        db = self.b1[1] - self.b1[0]
        with np.errstate(invalid="ignore"):
            fu = (u - self.unit1[0]) / du
            fb = (b - self.b1[0]) / db
            ok = np.isfinite(fu) & np.isfinite(fb)
            ok &= (fu >= 0) & (fu <= self.unit1.size - 1) & (fb >= 0) & (fb <= self.b1.size - 1)
        fu, fb = np.where(ok, fu, 0.0), np.where(ok, fb, 0.0)
        iu = np.minimum(fu.astype(np.intp), self.unit1.size - 2)
        ib = np.minimum(fb.astype(np.intp), self.b1.size - 2)
        wu, wb = fu - iu, fb - ib
        t = self.r1
        out = (1 - wb) * ((1 - wu) * t[ib, iu] + wu * t[ib, iu + 1]) + wb * (
            (1 - wu) * t[ib + 1, iu] + wu * t[ib + 1, iu + 1]
        )
        return np.where(ok, out, np.nan)


def _monotone_branch(row: np.ndarray) -> tuple[int, int] | None:
    """``[lo, hi)`` of the strictly decreasing run of ``row`` starting at its maximum."""
    finite = np.isfinite(row)
    if finite.sum() < 3:
        return None
    lo = int(np.nanargmax(np.where(finite, row, -np.inf)))
    step = np.diff(row[lo:])
    bad = np.flatnonzero(~(step < 0))
    hi = lo + 1 + (int(bad[0]) if bad.size else step.size)
    return (lo, hi) if hi - lo >= 3 else None


def shots_around_centre(
    number_shots: float | list[float], partial_fourier: float | None
) -> tuple[float, float]:
    """``(before, after)`` excitations around the k-space centre (BIDS qMRI appendix).

    Parameters
    ----------
    number_shots : float or (2,) list
        A single count (``SlicesPerSlab``) or ``[before, after]``.
    partial_fourier : float or None
        Slice partial Fourier fraction in (0.5, 1]; ``None`` for a count given as a pair
        (or full sampling, 1).

    Returns
    -------
    before, after : float
        ``before = N (PF - 0.5)``, ``after = N / 2`` for a single count ``N``.
    """
    if isinstance(number_shots, (list, tuple)):
        return float(number_shots[0]), float(number_shots[1])
    pf = 1.0 if partial_fourier is None else float(partial_fourier)
    n = float(number_shots)
    return n * (pf - 0.5), n / 2.0
