"""Independent forward simulators of the TB1EPI and TB1SRGE acquisitions (tests only).

Nothing here is shared with :mod:`bids_app.models.b1`:

* :func:`seste_isochromats` follows the full magnetisation vectors of ``n_iso``
  isochromats, uniformly dephased by each gradient interval, through the ``α - 2α - α``
  pulses (rotations about x), a crusher during the mixing time and T1 recovery of Mz; the
  echoes are the isochromat means at the echo times (only the echo pathway survives the
  average), so the closed-form ``STE/SE = cos θ exp(-TM/T1)`` is *not* assumed.
* :func:`sa2rage_signals` walks the SA2RAGE period pulse by pulse (every GRE pulse of both
  trains, exact exponential recovery) with the chain simulator of :mod:`mt_forward`.
"""

from __future__ import annotations

import numpy as np

from tests.models import mt_forward as fw


def _rot_x(m: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (..., n_iso, 3) vectors about x by ``angle`` (...,) radians."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    x, y, z = m[..., 0], m[..., 1], m[..., 2]
    return np.stack([x, y * c - z * s, y * s + z * c], axis=-1)


def _precess(m: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Rotate (..., n_iso, 3) vectors about z by ``phase`` (n_iso,) radians."""
    c, s = np.cos(phase), np.sin(phase)
    x, y, z = m[..., 0], m[..., 1], m[..., 2]
    return np.stack([x * c - y * s, x * s + y * c, z], axis=-1)


def seste_isochromats(b1, flip_deg, mixing_time, t1, *, m0=1.0, n_iso=64):
    """SE and STE magnitudes of the 3D-EPI B1 sequence (Jiru & Klose 2006).

    Parameters
    ----------
    b1 : (n,) array_like
        Relative transmit field.
    flip_deg : float
        Nominal α (degrees); the second pulse is 2α.
    mixing_time : float
        TM between the second and the third pulse (s), with T1 recovery of Mz.
    t1 : float or (n,) array_like
        T1 in s.
    m0 : float or (n,) array_like
        Equilibrium magnetisation.
    n_iso : int
        Isochromats per voxel (the crusher uses 17 cycles: must stay below ``n_iso - 3``).

    Returns
    -------
    se, ste : (n,) ndarray
    """
    b1 = np.atleast_1d(np.asarray(b1, dtype=float))
    theta = np.deg2rad(flip_deg) * b1
    phase = 2 * np.pi * np.arange(n_iso) / n_iso
    m = np.zeros((b1.size, n_iso, 3))
    m[..., 2] = 1.0
    m = _rot_x(m, theta)
    m = _precess(m, phase)
    m = _rot_x(m, 2 * theta)
    m = _precess(m, phase)
    se = np.abs((m[..., 0] + 1j * m[..., 1]).mean(axis=1))
    e1 = np.exp(-mixing_time / np.asarray(t1, dtype=float))
    m = _precess(m, 17 * phase)  # crusher: transverse pathways never refocus below
    m[..., 2] = m[..., 2] * np.reshape(e1, (-1, 1)) + np.reshape(1 - e1, (-1, 1))
    m = _rot_x(m, theta)
    m = _precess(m, phase)
    ste = np.abs((m[..., 0] + 1j * m[..., 1]).mean(axis=1))
    return np.asarray(m0) * se, np.asarray(m0) * ste


def sa2rage_signals(b1, t1, *, tr, delays, flips, tr_exc, n_before, n_after, m0=1.0):
    """Signed k-space-centre signals of SA2RAGE, pulse by pulse in the steady state.

    Saturation ``cos(B1 90°)``, then for each train ``n_before + n_after`` pulses spaced by
    ``tr_exc`` whose pulse ``n_before`` (0-based) sits at the delay after the saturation.

    Returns
    -------
    s1, s2 : (n,) ndarray
    """
    b1 = np.atleast_1d(np.asarray(b1, dtype=float))
    n = n_before + n_after
    events = [("rf", b1 * np.pi / 2)]
    t = 0.0
    centres = []
    for delay, flip in zip(delays, flips, strict=True):
        start = delay - n_before * tr_exc
        events.append(("relax", start - t))
        for k in range(n):
            if k == n_before:
                centres.append(sum(1 for e in events if e[0] == "rf"))
            events += [("rf", np.deg2rad(flip) * b1), ("relax", tr_exc)]
        t = start + n * tr_exc
    events.append(("relax", tr - t))
    signals = fw._steady_state(events, m0 * np.ones_like(b1), t1)
    return signals[centres[0]], signals[centres[1]]
