"""Population arterial input functions for DCE-MRI.

* :func:`parker_aif`, the functional form of Parker et al., MRM 2006 (two Gaussians plus a
  sigmoid-modulated exponential, fitted to a population of whole-blood AIFs);
* :func:`georgiou_aif`, the population AIF of Georgiou et al., MRM 2018, interpolated from
  the table distributed by the OSIPI DCE-DSC-MRI CodeCollection (Apache-2.0), shipped as
  ``bids_app/data/aif_georgiou2018.txt`` with its attribution.

Times are in s; concentrations in mM. Both curves are given as *blood* concentration; pass
``hematocrit`` to get the plasma AIF ``Cb / (1 - Hct)`` used by the DCE models.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

#: Parker et al. (MRM 2006, table 1) population-average parameters (time in min, mM).
PARKER_PARAMS = {
    "a1": 0.809,  # mmol min
    "a2": 0.330,  # mmol min
    "t1": 0.17046,  # min
    "t2": 0.365,  # min
    "sigma1": 0.0563,  # min
    "sigma2": 0.132,  # min
    "alpha": 1.050,  # mmol
    "beta": 0.1685,  # /min
    "s": 38.078,  # /min
    "tau": 0.483,  # min
}

_GEORGIOU_FILE = "aif_georgiou2018.txt"


def _to_plasma(cb: np.ndarray, hematocrit: float) -> np.ndarray:
    if not 0.0 <= hematocrit < 1.0:
        raise ValueError("hematocrit must be in [0, 1)")
    return cb / (1.0 - hematocrit)


def parker_aif(t_s: np.ndarray, delay_s: float = 0.0, hematocrit: float = 0.0) -> np.ndarray:
    """Parker population AIF (Parker et al., Magn Reson Med 2006).

    ``Cb(t) = sum_n A_n / (sigma_n sqrt(2 pi)) exp(-(t - T_n)^2 / (2 sigma_n^2))
    + alpha exp(-beta t) / (1 + exp(-s (t - tau)))`` with ``t`` in minutes from bolus
    injection and the published parameters :data:`PARKER_PARAMS`.

    Parameters
    ----------
    t_s : (n_t,) ndarray
        Times in s.
    delay_s : float, optional
        Injection time in s (the curve is 0 before it).
    hematocrit : float, optional
        Returns ``Cb / (1 - hematocrit)`` (0 gives whole blood, e.g. 0.42 for plasma).

    Returns
    -------
    (n_t,) ndarray
        Concentration in mM.

    Raises
    ------
    ValueError
        If ``hematocrit`` is outside [0, 1).
    """
    p = PARKER_PARAMS
    tm = (np.asarray(t_s, dtype=float) - delay_s) / 60.0
    g = sum(
        a / (sd * np.sqrt(2.0 * np.pi)) * np.exp(-((tm - mu) ** 2) / (2.0 * sd**2))
        for a, mu, sd in (
            (p["a1"], p["t1"], p["sigma1"]),
            (p["a2"], p["t2"], p["sigma2"]),
        )
    )
    tail = p["alpha"] * np.exp(-p["beta"] * tm) / (1.0 + np.exp(-p["s"] * (tm - p["tau"])))
    return _to_plasma(np.where(tm >= 0, g + tail, 0.0), hematocrit)


def georgiou_table() -> tuple[np.ndarray, np.ndarray]:
    """The packaged Georgiou et al. (MRM 2018) population AIF table.

    Returns
    -------
    t_s : (3001,) ndarray
        Times in s (0-300 s, 0.1 s steps).
    conc : (3001,) ndarray
        Concentration in mM, as tabulated.
    """
    text = resources.files("bids_app").joinpath("data", _GEORGIOU_FILE).read_text()
    table = np.loadtxt(text.splitlines(), comments="#")
    return table[:, 0] * 60.0, table[:, 1]


def georgiou_aif(t_s: np.ndarray, delay_s: float = 0.0, hematocrit: float = 0.0) -> np.ndarray:
    """Georgiou population AIF, linearly interpolated from :func:`georgiou_table`.

    Parameters
    ----------
    t_s : (n_t,) ndarray
        Times in s.
    delay_s : float, optional
        Shift in s (0 before the table start).
    hematocrit : float, optional
        Returns ``C / (1 - hematocrit)``.

    Returns
    -------
    (n_t,) ndarray
        Concentration in mM; the last tabulated value is held after 300 s.

    Raises
    ------
    ValueError
        If ``hematocrit`` is outside [0, 1).
    """
    tt, cc = georgiou_table()
    t = np.asarray(t_s, dtype=float) - delay_s
    return _to_plasma(np.interp(t, tt, cc, left=0.0, right=cc[-1]), hematocrit)
