"""Independent forward simulator for the MT and B1 tests (physics, not the fit formulas).

Longitudinal magnetisation is followed through one repetition of the sequence as a chain of
affine maps ``Mz -> a Mz + b`` (instantaneous pulses, exact exponential recovery, perfect
spoiling of transverse magnetisation). The steady state is the fixed point of the composed
map, ``b / (1 - a)``. There is no small-angle or short-TR approximation anywhere, and nothing
here is shared with :mod:`bids_app.models`.

Events
------
``("sat", delta)``
    MT pre-pulse: an instantaneous saturation of a fraction ``delta`` of the free-water
    longitudinal magnetisation (Helms et al. 2008).
``("rf", theta)``
    Excitation by the actual flip angle ``theta`` (rad); the signal is ``m0 sin(theta) Mz``
    just before the pulse (receive scaling folded into ``m0``).
``("relax", t)``
    Recovery towards ``m0`` for ``t`` seconds with ``T1``.
"""

from __future__ import annotations

import numpy as np


def _steady_state(events, m0, t1):
    """Return the signals of every ``rf`` event in the periodic steady state."""
    m0 = np.asarray(m0, dtype=float)
    t1 = np.asarray(t1, dtype=float)
    # compose the affine map of one period, starting just before the first event
    a, b = np.ones(np.broadcast(m0, t1).shape), np.zeros(np.broadcast(m0, t1).shape)
    for kind, raw in events:
        value = np.asarray(raw, dtype=float)
        if kind == "sat":
            a, b = a * (1.0 - value), b * (1.0 - value)
        elif kind == "rf":
            a, b = a * np.cos(value), b * np.cos(value)
        elif kind == "relax":
            e = np.exp(-value / t1)
            a, b = a * e, b * e + m0 * (1.0 - e)
        else:
            raise ValueError(kind)
    mz = b / (1.0 - a)  # magnetisation at the start of the period
    signals = []
    for kind, raw in events:  # walk once more through the period, reading the signals
        value = np.asarray(raw, dtype=float)
        if kind == "sat":
            mz = mz * (1.0 - value)
        elif kind == "rf":
            signals.append(np.sin(value) * mz)
            mz = mz * np.cos(value)
        else:
            e = np.exp(-value / t1)
            mz = mz * e + m0 * (1.0 - e)
    return signals


def spgr_mt(m0, t1, tr, flip_deg, *, b1=1.0, delta=0.0):
    """Steady-state spoiled gradient-echo signal with an optional MT pre-pulse.

    Parameters
    ----------
    m0 : array_like
        Equilibrium magnetisation times receive sensitivity (signal units).
    t1 : array_like
        T1 in s.
    tr : float
        Repetition time in s (the MT pulse and the excitation are instantaneous).
    flip_deg : float
        Nominal flip angle in degrees; the spins see ``b1 * flip_deg``.
    b1 : array_like
        Relative transmit field.
    delta : array_like
        Fraction of Mz saturated by the MT pulse just before each excitation (0: MT off).
    """
    theta = np.deg2rad(flip_deg) * np.asarray(b1, dtype=float)
    events = [("sat", delta), ("rf", theta), ("relax", tr)]
    return _steady_state(events, m0, t1)[0]


def afi(m0, t1, tr1, tr2, flip_deg, *, b1=1.0):
    """Signals (S1, S2) of actual flip-angle imaging: pulse, TR1, pulse, TR2 (Yarnykh 2007).

    Ideal spoiling: transverse magnetisation is destroyed before every pulse.
    """
    theta = np.deg2rad(flip_deg) * np.asarray(b1, dtype=float)
    events = [("rf", theta), ("relax", tr1), ("rf", theta), ("relax", tr2)]
    s1, s2 = _steady_state(events, m0, t1)
    return s1, s2


def gre_long_tr(m0, flip_deg, *, b1=1.0):
    """Fully relaxed gradient-echo signal (TR >> T1): ``m0 sin(b1 flip)``."""
    return np.asarray(m0, dtype=float) * np.sin(np.deg2rad(flip_deg) * np.asarray(b1))


def rician(signal, sigma, rng):
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    signal = np.asarray(signal, dtype=float)
    re = signal + rng.normal(0.0, sigma, signal.shape)
    im = rng.normal(0.0, sigma, signal.shape)
    return np.hypot(re, im)
