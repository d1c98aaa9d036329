r"""Exact NODDI forward model (pure NumPy/SciPy).

The signal of NODDI [1]_ is

.. math::

    S/S_0 = (1 - v_{iso}) \left[v_{ic} A_{ic} + (1 - v_{ic}) A_{ec}\right]
            + v_{iso} e^{-b d_{iso}},

with

* :math:`A_{ic}`: sticks of diffusivity :math:`d_\parallel` whose orientations follow a
  Watson distribution :math:`f(n) \propto \exp(\kappa (\mu \cdot n)^2)`. Being the
  spherical convolution of two axially symmetric functions it depends only on ``b`` and on
  :math:`\cos\theta = g \cdot \mu`; it is evaluated exactly by the Funk-Hecke theorem as a
  Legendre series :math:`A_{ic} = \sum_{l\,even} (2l+1)\, w_l(\kappa)\, s_l(b d_\parallel)
  P_l(\cos\theta)`, where :math:`w_l = \langle P_l(\mu\cdot n)\rangle_{Watson}` and
  :math:`s_l(x) = \int_0^1 e^{-x u^2} P_l(u)\,du`, both computed by Gauss-Legendre quadrature;
* :math:`A_{ec}`: a Gaussian compartment whose tensor is the Watson average of a cylindrically
  symmetric tensor with :math:`d_\perp = d_\parallel (1 - v_{ic})` (tortuosity), i.e.
  :math:`d'_\parallel = d_\perp + (d_\parallel - d_\perp) c(\kappa)` and
  :math:`d'_\perp = d_\perp + (d_\parallel - d_\perp)(1 - c)/2` with
  :math:`c = \langle(\mu\cdot n)^2\rangle = 1/(2\sqrt\kappa F(\sqrt\kappa)) - 1/(2\kappa)`
  (:math:`F` Dawson's integral);
* the free-water compartment with :math:`d_{iso}`.

The orientation dispersion index is :math:`ODI = (2/\pi) \arctan(1/\kappa)`.

References
----------
.. [1] Zhang H, Schneider T, Wheeler-Kingshott CA, Alexander DC. NODDI: practical in vivo
   neurite orientation dispersion and density imaging of the human brain. NeuroImage
   2012;61:1000-1016.
"""

from __future__ import annotations

import numpy as np
from scipy.special import dawsn, eval_legendre, roots_legendre

#: Default diffusivities (mm^2/s) of NODDI [1]_ for in vivo brain.
D_PAR = 1.7e-3
D_ISO = 3.0e-3

#: Even Legendre degrees kept in the intra-cellular series (the terms decay factorially in
#: ``l`` for b d_par <= 10; the truncation error is < 1e-9 there, checked in the tests).
L_MAX = 64

_N_QUAD = 400


def odi_to_kappa(odi):
    """Watson concentration from the orientation dispersion index.

    Parameters
    ----------
    odi : array_like
        ODI in (0, 1], dimensionless.

    Returns
    -------
    numpy.ndarray
        kappa = 1 / tan(pi ODI / 2), same shape (0 for ODI = 1).
    """
    odi = np.asarray(odi, dtype=float)
    return 1.0 / np.tan(0.5 * np.pi * odi)


def kappa_to_odi(kappa):
    """Orientation dispersion index ``(2/pi) arctan(1/kappa)`` of Watson ``kappa``."""
    kappa = np.asarray(kappa, dtype=float)
    return (2.0 / np.pi) * np.arctan2(1.0, kappa)


def watson_mean_cos2(kappa):
    """``<(mu.n)^2>`` under a Watson distribution.

    Parameters
    ----------
    kappa : array_like
        Concentration (>= 0).

    Returns
    -------
    numpy.ndarray
        Values in [1/3, 1), same shape as ``kappa``.
    """
    k = np.asarray(kappa, dtype=float)
    small = k < 1e-3
    ks = np.where(small, 1.0, k)
    sq = np.sqrt(ks)
    big = 1.0 / (2.0 * sq * dawsn(sq)) - 1.0 / (2.0 * ks)
    series = 1.0 / 3.0 + 4.0 * k / 45.0
    return np.where(small, series, big)


def _quad01(n=_N_QUAD):
    u, w = roots_legendre(n)
    return 0.5 * (u + 1.0), 0.5 * w


def watson_legendre_moments(kappa, l_max=L_MAX):
    """Normalised Watson moments ``w_l = <P_l(mu.n)>`` for even ``l``.

    Parameters
    ----------
    kappa : array_like, shape (n_k,)
        Concentrations (>= 0; up to ~ 700).
    l_max : int
        Largest even degree.

    Returns
    -------
    numpy.ndarray, shape (n_k, l_max // 2 + 1)
        ``w_0 = 1``.
    """
    k = np.atleast_1d(np.asarray(kappa, dtype=float))
    u, w = _quad01()
    dens = np.exp(k[:, None] * (u[None, :] ** 2 - 1.0)) * w[None, :]
    legs = np.stack([eval_legendre(ell, u) for ell in range(0, l_max + 1, 2)])  # (n_l, n_u)
    return (dens @ legs.T) / dens.sum(axis=1, keepdims=True)


def stick_legendre_moments(x, l_max=L_MAX):
    """``s_l(x) = int_0^1 exp(-x u^2) P_l(u) du`` for even ``l``.

    Parameters
    ----------
    x : array_like, shape (n_x,)
        ``b d_par`` (dimensionless, >= 0).
    l_max : int
        Largest even degree.

    Returns
    -------
    numpy.ndarray, shape (n_x, l_max // 2 + 1)
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    u, w = _quad01()
    legs = np.stack([eval_legendre(ell, u) for ell in range(0, l_max + 1, 2)])
    return (np.exp(-x[:, None] * u[None, :] ** 2) * w[None, :]) @ legs.T


def even_legendre(x: np.ndarray, l_max: int):
    """Yield ``(l, P_l(x))`` for even ``l <= l_max`` by Bonnet's three-term recurrence.

    ``(n + 1) P_{n+1} = (2n + 1) x P_n - n P_{n-1}``: one pass of ``l_max`` steps, instead
    of evaluating each degree from scratch (``scipy.special.eval_legendre``).
    """
    prev, cur = np.ones_like(x), np.array(x, dtype=float, copy=True)
    yield 0, prev
    for n in range(1, l_max):
        prev, cur = cur, ((2 * n + 1) * x * cur - n * prev) / (n + 1)
        if (n + 1) % 2 == 0:
            yield n + 1, cur


def intra_signal(bvals, cos_theta, kappa, d_par=D_PAR, l_max=L_MAX):
    """Watson-dispersed stick signal ``A_ic``.

    Parameters
    ----------
    bvals : array_like, shape (n,)
        b-values (s/mm^2).
    cos_theta : array_like, shape (n,)
        Cosine of the angle between gradient and the Watson axis.
    kappa : array_like, shape (n_k,)
        Watson concentrations.
    d_par : float
        Stick diffusivity (mm^2/s).
    l_max : int
        Largest even Legendre degree.

    Returns
    -------
    numpy.ndarray, shape (n_k, n)
    """
    bvals = np.atleast_1d(np.asarray(bvals, dtype=float))
    cos_theta = np.clip(np.atleast_1d(np.asarray(cos_theta, dtype=float)), -1.0, 1.0)
    ub, inv = np.unique(bvals, return_inverse=True)
    s = stick_legendre_moments(ub * d_par, l_max)[inv]  # (n, n_l)
    wl = watson_legendre_moments(kappa, l_max)  # (n_k, n_l)
    ls = np.arange(0, l_max + 1, 2)
    pl = np.stack([eval_legendre(ell, cos_theta) for ell in ls], axis=-1)  # (n, n_l)
    return wl @ ((2 * ls + 1) * s * pl).T


def extra_signal(bvals, cos_theta, kappa, icvf, d_par=D_PAR):
    """Watson-averaged hindered (tortuosity) signal ``A_ec``.

    Parameters
    ----------
    bvals, cos_theta, kappa, icvf : array_like
        b-values (s/mm^2), cosines to the Watson axis, concentrations and intra-cellular
        fractions; all broadcast together elementwise.
    d_par : float
        Parallel diffusivity (mm^2/s).

    Returns
    -------
    numpy.ndarray
        The broadcast shape.
    """
    b = np.asarray(bvals, dtype=float)
    t = np.clip(np.asarray(cos_theta, dtype=float), -1.0, 1.0) ** 2
    c = watson_mean_cos2(kappa)
    dperp = d_par * (1.0 - np.asarray(icvf, dtype=float))
    dpar_e = dperp + (d_par - dperp) * c
    dperp_e = dperp + (d_par - dperp) * 0.5 * (1.0 - c)
    return np.exp(-b * (dperp_e + (dpar_e - dperp_e) * t))


def noddi_signal(bvals, bvecs, direction, icvf, odi, isovf, s0=1.0, d_par=D_PAR, d_iso=D_ISO):
    """NODDI signal of one or many voxels.

    Parameters
    ----------
    bvals : array_like, shape (n_meas,)
        b-values (s/mm^2).
    bvecs : array_like, shape (n_meas, 3)
        Unit gradient directions (any vector for b = 0).
    direction : array_like, shape (n_vox, 3) or (3,)
        Watson axes (normalised here).
    icvf, odi, isovf, s0 : array_like, shape (n_vox,) or scalar
        Intra-cellular fraction of the tissue, ODI (0, 1], free-water fraction, and S0.
    d_par, d_iso : float
        Diffusivities (mm^2/s).

    Returns
    -------
    numpy.ndarray, shape (n_vox, n_meas)

    Raises
    ------
    ValueError
        If ``bvals`` and ``bvecs`` lengths differ.
    """
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.shape != (bvals.size, 3):
        raise ValueError(f"bvecs must have shape ({bvals.size}, 3), got {bvecs.shape}")
    mu = np.atleast_2d(np.asarray(direction, dtype=float))
    mu = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    n_vox = mu.shape[0]
    icvf, odi, isovf, s0 = (
        np.broadcast_to(np.asarray(a, dtype=float), (n_vox,)) for a in (icvf, odi, isovf, s0)
    )
    kappa = odi_to_kappa(odi)
    cos = np.clip(mu @ bvecs.T, -1.0, 1.0)  # (n_vox, n_meas)
    ub, inv = np.unique(bvals, return_inverse=True)
    s = stick_legendre_moments(ub * d_par)[inv]  # (n_meas, n_l)
    wl = watson_legendre_moments(kappa)  # (n_vox, n_l)
    a_ic = np.zeros_like(cos)
    for j, (ell, p_ell) in enumerate(even_legendre(cos, L_MAX)):
        a_ic += (2 * ell + 1) * wl[:, j : j + 1] * s[None, :, j] * p_ell
    a_ec = extra_signal(bvals, cos, kappa[:, None], icvf[:, None], d_par)
    tissue = icvf[:, None] * a_ic + (1.0 - icvf[:, None]) * a_ec
    iso = np.exp(-bvals * d_iso)[None, :]
    return s0[:, None] * ((1.0 - isovf[:, None]) * tissue + isovf[:, None] * iso)
