"""The (ln T2, refocusing angle) dictionary of the EPG T2 fit, computed once per protocol.

The decays of :func:`~bids_app.models._epg.epg_cpmg_decay` (Hennig 1988; Prasloski T et al.
Magn Reson Med 2012;67:1803-1814) on a grid regular in ``ln T2`` and in the angle, with one
guard node beyond each end of both axes, and what the fit of
:mod:`bids_app.models.relaxometry._epg_t2` needs precomputed: the matching matrix in the
principal subspace of the decays, and the Gram matrix of every node's 3 x 3 neighbourhood.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bids_app.models._epg import epg_cpmg_decay

__all__ = ["EPGDictionary", "epg_dictionary"]

#: energy of the unit decays the matching subspace may leave out (rms ~0.3 %)
_MATCH_ENERGY = 1e-5


@dataclass(frozen=True)
class EPGDictionary:
    """Decays on a (ln T2, angle) grid with one guard node beyond each end of both axes.

    Attributes
    ----------
    t2 : (n_t,) ndarray
        T2 nodes, s (geometric; nodes ``1 .. n_t - 2`` are searched).
    angles : (n_a,) ndarray
        Refocusing angles, degrees (regular; the searched ones lie in ``[angle_min, 180]``).
    atoms : (n_t, n_a, n_echoes) ndarray
        Echo magnitudes for unit M0, all echoes in echo order.
    fitted_atoms : (n_t * n_a, m) ndarray
        The same restricted to the ``m`` fitted echoes, one row per node (``i * n_a + j``).
    basis : (m, r) float32 ndarray
        Orthonormal basis of the principal subspace of the searched decays (``r <= m``, the
        energy left out below :data:`_MATCH_ENERGY`): the match runs in it.
    matched : (r, (n_t - 2) * (n_a - 2)) float32 ndarray
        Unit-norm fitted-echo decays of the searched nodes in that basis.
    grams : (n_t, n_a, 9, 9) ndarray
        Gram matrix of the fitted-echo decays of each node's 3 x 3 neighbourhood (zero on the
        guard nodes, which are never centres).
    search : (2, 2) int ndarray
        First and last searched node of each axis (rows: T2, angle).
    """

    t2: np.ndarray
    angles: np.ndarray
    atoms: np.ndarray
    fitted_atoms: np.ndarray
    basis: np.ndarray
    matched: np.ndarray
    grams: np.ndarray
    search: np.ndarray

    @property
    def log_step(self) -> float:
        """Step of the T2 grid in ``ln T2``."""
        return float(np.log(self.t2[1] / self.t2[0]))

    @property
    def angle_step(self) -> float:
        """Step of the angle grid, degrees."""
        return float(self.angles[1] - self.angles[0])


def epg_dictionary(
    echo_spacing: float,
    n_echoes: int,
    fitted: tuple[int, ...] | None = None,
    *,
    t2_range: tuple[float, float] = (0.005, 3.0),
    n_t2: int = 64,
    angle_min: float = 90.0,
    angle_step: float = 5.0,
    t1: float = 1.0,
) -> EPGDictionary:
    """The dictionary of a CPMG protocol (memoised: computed once per protocol).

    Parameters
    ----------
    echo_spacing : float
        Echo spacing, s (echo ``k`` at ``k * echo_spacing``).
    n_echoes : int
        Number of echoes of the train.
    fitted : tuple of int, optional
        Echo indices (0-based, in echo order) used in the fit; default all.
    t2_range : (2,) tuple of float
        Searched T2 range, s (a guard node lies beyond each end).
    n_t2 : int
        Searched T2 nodes, log-spaced.
    angle_min : float
        Lowest searched refocusing angle, degrees (< 180).
    angle_step : float
        Angle grid step, degrees; the grid ends at 180 (plus a guard node either side).
    t1 : float
        T1 of the EPG, s.

    Returns
    -------
    EPGDictionary
        Read-only arrays.

    Raises
    ------
    ValueError
        For an empty or inverted range, ``n_t2 < 3``, ``angle_step <= 0`` or an echo index
        outside the train.
    """
    fitted = tuple(range(int(n_echoes))) if fitted is None else tuple(int(i) for i in fitted)
    if not 0 < t2_range[0] < t2_range[1] or n_t2 < 3 or angle_step <= 0:
        raise ValueError("need 0 < t2_min < t2_max, n_t2 >= 3 and angle_step > 0")
    if not 0 < angle_min < 180:
        raise ValueError(f"angle_min must be in (0, 180) degrees, got {angle_min}")
    if not fitted or min(fitted) < 0 or max(fitted) >= n_echoes:
        raise ValueError(f"fitted echoes {fitted} outside a train of {n_echoes}")
    key = (float(echo_spacing), int(n_echoes), fitted, tuple(map(float, t2_range)))
    return _cached(*key, int(n_t2), float(angle_min), float(angle_step), float(t1))


@lru_cache(maxsize=8)
def _cached(esp, n_echoes, fitted, t2_range, n_t2, angle_min, angle_step, t1):
    """:func:`epg_dictionary` on hashable arguments."""
    lo, hi = np.log(t2_range)
    h = (hi - lo) / (n_t2 - 1)
    t2 = np.exp(lo + h * np.arange(-1, n_t2 + 1))
    n_steps = int(np.ceil((180.0 - angle_min) / angle_step - 1e-9))
    angles = 180.0 + angle_step * np.arange(-n_steps - 1, 2)
    # magnitude data: the real CPMG echo changes sign late in the train for short T2, α < 180°
    atoms = np.abs(epg_cpmg_decay(t2, esp, n_echoes, angles, t1=t1)).transpose(2, 0, 1)
    fit = np.ascontiguousarray(atoms[..., list(fitted)])
    n_t, n_a = fit.shape[:2]
    fitted_atoms = fit.reshape(n_t * n_a, -1)
    inner = fit[1:-1, 1:-1].reshape((n_t - 2) * (n_a - 2), -1)  # the searched nodes
    norms = np.linalg.norm(inner, axis=1, keepdims=True)
    unit = inner / norms
    _, sv, vt = np.linalg.svd(unit, full_matrices=False)
    left = 1.0 - np.cumsum(sv**2) / np.sum(sv**2)
    rank = min(int(np.searchsorted(-left, -_MATCH_ENERGY)) + 1, sv.size)
    basis = np.ascontiguousarray(vt[:rank].T, dtype=np.float32)
    matched = np.ascontiguousarray(vt[:rank] @ unit.T, dtype=np.float32)
    grams = np.zeros((n_t, n_a, 9, 9))
    for i in range(1, n_t - 1):
        for j in range(1, n_a - 1):
            nb = fit[i - 1 : i + 2, j - 1 : j + 2].reshape(9, -1)
            grams[i, j] = nb @ nb.T
    search = np.array([[1, n_t - 2], [1, n_a - 2]])  # n_a - 2 is the 180° node
    arrays = (t2, angles, atoms, fitted_atoms, basis, matched, grams, search)
    for a in arrays:
        a.flags.writeable = False
    return EPGDictionary(*arrays)
