"""Ordinary least squares for covariate adjustment of the group statistics (numpy, scipy).

``y = X beta + e`` with an intercept, numeric covariates as they are (centred) and the
other covariates (e.g. ``sex``) as indicator columns of all but their first level; beta by
:func:`numpy.linalg.lstsq`, standard errors from ``s^2 (X'X)^-1`` with ``s^2`` the residual
mean square on ``n - p`` degrees of freedom, two-sided t-test p values (e.g. Weisberg,
*Applied Linear Regression*, 4th ed., 2014, chapters 3 and 6).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from bids_app.errors import MetadataError

_NAN_EFFECT = {
    "n_adjusted": 0,
    "adjusted_difference": np.nan,
    "adjusted_d": np.nan,
    "adjusted_p": np.nan,
}


def covariate_matrix(df: pd.DataFrame, covariates: list[str]) -> np.ndarray:
    """Covariate columns of the design matrix, without the intercept.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject with the ``covariates`` columns.
    covariates : list of str
        Column names; a column whose non-missing values are all numbers is numeric.

    Returns
    -------
    (n, k) float64 ndarray
        Numeric covariates centred; categorical ones as 0/1 indicators of all but the
        first (sorted) level; NaN in the rows where a covariate is missing.

    Raises
    ------
    bids_app.errors.MetadataError
        A covariate that is not a column of participants.tsv.
    """
    cols = []
    for name in covariates:
        if name not in df.columns:
            raise MetadataError("participants.tsv", name, None, "a column named by --covariates")
        raw = df[name]
        num = pd.to_numeric(raw, errors="coerce")
        if num.notna().sum() == raw.notna().sum():
            x = num.to_numpy(float)
            cols.append(x - np.nanmean(x) if np.isfinite(x).any() else x)
            continue
        levels = sorted(raw.dropna().astype(str).unique())
        for level in levels[1:]:
            ind = (raw.astype(str) == level).to_numpy(float)
            ind[raw.isna().to_numpy()] = np.nan
            cols.append(ind)
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


def ols(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Least-squares fit of ``y`` on ``x`` (which holds the intercept column).

    Parameters
    ----------
    y : (n,) ndarray
    x : (n, p) ndarray

    Returns
    -------
    beta : (p,) ndarray
    se : (p,) ndarray
        Standard errors (NaN when ``x`` is rank deficient or ``n <= p``).
    s : float
        Residual SD, ``sqrt(RSS / (n - p))``.
    dof : int
        ``n - p``.
    """
    n, p = x.shape
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    dof = n - p
    if rank < p or dof < 1:
        return beta, np.full(p, np.nan), float("nan"), dof
    resid = y - x @ beta
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(x.T @ x)
    return beta, np.sqrt(np.diag(cov)), float(np.sqrt(s2)), dof


def adjusted_effect(g: pd.DataFrame, value: str, covariates: list[str]) -> dict:
    """Patient-control difference adjusted for covariates: ``value ~ 1 + patient + covs``.

    Parameters
    ----------
    g : pandas.DataFrame
        One row per subject: ``value``, ``_role`` ('patient' / 'control' / None) and the
        covariate columns.
    value : str
    covariates : list of str

    Returns
    -------
    dict
        ``n_adjusted, adjusted_difference, adjusted_d, adjusted_p`` (NaN when the model
        cannot be fitted: fewer subjects than parameters + 1, or one group absent).
    """
    g = g[g["_role"].isin(["patient", "control"])]
    y = g[value].to_numpy(float)
    cov = covariate_matrix(g, covariates)
    patient = (g["_role"] == "patient").to_numpy(float)
    x = np.column_stack([np.ones(len(g)), patient, cov])
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    y, x = y[ok], x[ok]
    if x.shape[0] <= x.shape[1] or len(np.unique(x[:, 1])) < 2:
        return dict(_NAN_EFFECT, n_adjusted=int(ok.sum()))
    beta, se, s, dof = ols(y, x)
    if not np.isfinite(se[1]) or se[1] == 0:
        return dict(_NAN_EFFECT, n_adjusted=int(ok.sum()))
    t = beta[1] / se[1]
    return {
        "n_adjusted": int(ok.sum()),
        "adjusted_difference": float(beta[1]),
        "adjusted_d": float(beta[1] / s) if s > 0 else np.nan,
        "adjusted_p": float(2 * stats.t.sf(abs(t), dof)),
    }
