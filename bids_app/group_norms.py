"""Per-subject z-scores against the controls, and optional ComBat harmonisation of sites.

z-scores (``group_desc-zscores_stats.tsv``): for every map x region of
``GroupOptions.zscore_regions`` (default NAWM and NAGM) x session, each subject's region mean
is compared with the controls of the same session, ``z = (x - mean_c) / sd_c`` (ddof=1); a
control is compared with the other controls (leave one out), so controls' z-scores are not
shrunk towards 0. With covariates, ``z_adjusted`` is the residual of the controls' OLS
model ``x ~ 1 + covariates`` divided by its residual SD (normative modelling; Marquand et
al., Mol Psychiatry 2019;24:1415-1424), again leaving a control out of its own reference.

ComBat (``--harmonize combat``): the region means of each map x session are harmonised
across ``GroupOptions.site_column`` with the empirical Bayes location/scale model of
Johnson, Li & Rabinovic (Biostatistics 2007;8:118-127), as adapted to imaging by Fortin et
al. (NeuroImage 2018;167:104-120), through the maintained ``neuroCombat`` package (an
optional dependency: ``pip install neuroCombat``), preserving the group and the
covariates. The harmonised means are written next to the raw ones (``mean_harmonized``).
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pandas as pd

from bids_app._ols import covariate_matrix, ols
from bids_app.errors import MetadataError, UsageError
from bids_app.group_options import GroupOptions
from bids_app.schema import REGION_COLUMNS

logger = logging.getLogger(__name__)

#: columns of ``group_desc-zscores_stats.tsv``
ZSCORE_COLUMNS = {
    "participant_id": REGION_COLUMNS["participant_id"],
    "session_id": REGION_COLUMNS["session_id"],
    "group": "patient, control or n/a (from the participants.tsv group column)",
    "map": REGION_COLUMNS["map"],
    "units": REGION_COLUMNS["units"],
    "region": REGION_COLUMNS["region"],
    "value": "the subject's region mean (harmonised when --harmonize combat)",
    "n_controls": "controls in the reference (the subject itself left out)",
    "control_mean": "mean of the reference controls",
    "control_std": "SD of the reference controls (ddof=1)",
    "z": "(value - control_mean) / control_std",
    "z_adjusted": (
        "residual of the controls' OLS model value ~ 1 + covariates over its residual SD; "
        "n/a without --covariates"
    ),
}


def _loo_z(x: np.ndarray, is_control: np.ndarray) -> tuple[np.ndarray, ...]:
    """Z-score of every ``x`` against the finite control values, leaving a control out."""
    c = x[is_control & np.isfinite(x)]
    n, s, q = c.size, c.sum(), (c**2).sum()
    own = is_control & np.isfinite(x)
    k = np.where(own, n - 1, n).astype(float)
    xs = np.where(own, x, 0.0)
    mean = np.divide(s - xs, k, out=np.full(x.shape, np.nan), where=k > 0)
    var = np.divide(q - xs**2 - k * mean**2, k - 1, out=np.full(x.shape, np.nan), where=k > 1)
    sd = np.sqrt(np.clip(var, 0, None))
    z = np.divide(x - mean, sd, out=np.full(x.shape, np.nan), where=sd > 0)
    return k.astype(int), mean, sd, z


def _adjusted_z(g: pd.DataFrame, value: str, is_control: np.ndarray, covs: list[str]):
    y = g[value].to_numpy(float)
    x = np.column_stack([np.ones(len(g)), covariate_matrix(g, covs)])
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    ref = np.flatnonzero(ok & is_control)
    z = np.full(len(g), np.nan)

    def fit(rows):
        if rows.size <= x.shape[1] + 1:
            return None
        beta, _, s, _ = ols(y[rows], x[rows])
        return (beta, s) if np.isfinite(s) and s > 0 else None

    full = fit(ref)
    for i in np.flatnonzero(ok):
        model = fit(ref[ref != i]) if is_control[i] else full
        if model is not None:
            z[i] = (y[i] - x[i] @ model[0]) / model[1]
    return z


def zscores(values: pd.DataFrame, options: GroupOptions, *, value: str = "mean") -> pd.DataFrame:
    """Per-subject z-scores of the :attr:`GroupOptions.zscore_regions` against controls.

    Parameters
    ----------
    values : pandas.DataFrame
        Region rows joined with participants.tsv (``participant_id, session_id, map, units,
        region``, ``value``, the group column and the covariates).
    options : GroupOptions
    value : str
        Column holding the subject's region mean.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ZSCORE_COLUMNS`; empty without a group column or without controls.
    """
    if options.group_column not in values.columns:
        return pd.DataFrame(columns=list(ZSCORE_COLUMNS))
    df = values[values["region"].isin(options.zscore_regions)].copy()
    df["session_id"] = df["session_id"].fillna("n/a")
    df["group"] = df[options.group_column].map(options.role)
    covs = list(options.covariates)
    parts = []
    for _, g in df.groupby(["map", "units", "region", "session_id"], sort=True):
        g = g.sort_values("participant_id")
        is_control = (g["group"] == "control").to_numpy()
        if not is_control.any():
            continue
        x = g[value].to_numpy(float)
        n, mean, sd, z = _loo_z(x, is_control)
        adj = _adjusted_z(g, value, is_control, covs) if covs else np.full(len(g), np.nan)
        parts.append(
            g[["participant_id", "session_id", "group", "map", "units", "region"]].assign(
                value=x, n_controls=n, control_mean=mean, control_std=sd, z=z, z_adjusted=adj
            )
        )
    if not parts:
        return pd.DataFrame(columns=list(ZSCORE_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    out["session_id"] = out["session_id"].replace("n/a", None)
    return out[list(ZSCORE_COLUMNS)]


def combat_harmonize(
    values: pd.DataFrame, options: GroupOptions, *, value: str = "mean"
) -> pd.Series:
    """ComBat-harmonised region means across sites (``neuroCombat``), aligned to ``values``.

    Parameters
    ----------
    values : pandas.DataFrame
        Region rows joined with participants.tsv (site, group and covariate columns).
    options : GroupOptions
    value : str

    Returns
    -------
    pandas.Series
        Harmonised values (index of ``values``); NaN for subjects of a site with fewer
        than 2 subjects in a map x session block, or with a missing site / covariate.

    Raises
    ------
    bids_app.errors.UsageError
        ``neuroCombat`` is not installed.
    bids_app.errors.MetadataError
        participants.tsv has no ``site_column``.
    """
    try:
        from neuroCombat import neuroCombat
    except ImportError:
        raise UsageError(
            "--harmonize combat needs the neuroCombat package (pip install neuroCombat)"
        ) from None
    site = options.site_column
    if site not in values.columns:
        raise MetadataError("participants.tsv", site, None, "a site column for ComBat")
    keep = [options.group_column] if options.group_column in values.columns else []
    covs = keep + list(options.covariates)
    out = pd.Series(np.nan, index=values.index, dtype=float)
    ses = values["session_id"].fillna("n/a")
    for (m, s), g in values.groupby([values["map"], ses], sort=True):
        wide = g.pivot_table(index="participant_id", columns="region", values=value)
        meta = g.drop_duplicates("participant_id").set_index("participant_id")
        meta = meta.loc[wide.index, [site, *covs]].dropna()
        wide = wide.loc[meta.index].dropna(axis=1, how="any")
        wide = wide.loc[:, wide.std(axis=0) > 0]
        sizes = meta[site].map(meta[site].value_counts())
        ok = sizes >= 2
        if ok.sum() < 3 or meta.loc[ok, site].nunique() < 2 or wide.shape[1] == 0:
            logger.warning("ComBat: %s %s: fewer than 2 sites of >= 2 subjects; skipped", m, s)
            continue
        wide, meta = wide.loc[ok], meta.loc[ok].reset_index(drop=True)
        cat = [c for c in covs if pd.to_numeric(meta[c], errors="coerce").isna().any()]
        cont = [c for c in covs if c not in cat]
        with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its steps
            res = neuroCombat(
                dat=wide.to_numpy(float).T,
                covars=meta.astype(dict.fromkeys(cat, str)),
                batch_col=site,
                categorical_cols=cat or None,
                continuous_cols=cont or None,
            )
        harm = pd.DataFrame(res["data"].T, index=wide.index, columns=wide.columns)
        long = harm.stack().rename("h").reset_index()
        idx = g.reset_index().merge(long, on=["participant_id", "region"], how="inner")
        out.loc[idx["index"].to_numpy()] = idx["h"].to_numpy()
    return out
