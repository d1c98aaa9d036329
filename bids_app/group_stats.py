"""Group statistics: patients vs controls per map x region, effect sizes, tests and FDR.

For every map x region x session of the concatenated region tables (the subject region
means), patients are compared with controls (``participants.tsv`` group column, see
:class:`bids_app.group_options.GroupOptions`):

- means and SDs (ddof=1) per group;
- Cohen's d with the pooled SD (Cohen 1988) and its confidence interval from the large
  sample normal approximation of Hedges & Olkin (1985, *Statistical Methods for
  Meta-Analysis*, eq. 5.14): ``var(d) = (n1 + n2) / (n1 n2) + d^2 / (2 (n1 + n2))``;
- Welch's unequal-variance t test and the two-sided Mann-Whitney U test
  (:func:`scipy.stats.ttest_ind`, :func:`scipy.stats.mannwhitneyu`);
- with ``covariates`` (e.g. age, sex), the patient-control difference adjusted by ordinary
  least squares ``mean ~ 1 + patient + covariates`` (:mod:`bids_app._ols`), its t-test p
  value and the adjusted d = coefficient / residual SD;
- Benjamini-Hochberg false-discovery-rate q values (Benjamini & Hochberg, J R Stat Soc B
  1995;57:289-300) of each p-value column, the family being every row of the table.

Lesion count and lesion load (total volume) per participant add two rows (``map``
``lesion_count`` / ``lesion_load``, region ``brain``), so lesion-only studies get a summary
too; with post-contrast T1w images, the count of enhancing lesions a third
(``enhancing_lesion_count``). Per-patient z-scores and ComBat live in
:mod:`bids_app.group_norms`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import stats

from bids_app._ols import adjusted_effect
from bids_app.group_options import GroupOptions
from bids_app.schema import REGION_COLUMNS

logger = logging.getLogger(__name__)

#: columns of ``group_desc-summary_stats.tsv``
SUMMARY_COLUMNS = {
    "map": REGION_COLUMNS["map"]
    + "; lesion_count / lesion_load (/ enhancing_lesion_count) for the lesion rows",
    "units": REGION_COLUMNS["units"],
    "region": REGION_COLUMNS["region"] + "; brain for the lesion rows",
    "session_id": REGION_COLUMNS["session_id"],
    "n_subjects": "subjects with a finite region mean",
    "mean": "mean over subjects of the subject region means",
    "std": "standard deviation over subjects (ddof=1)",
    "n_patients": "patients with a finite region mean",
    "mean_patients": "mean over patients",
    "std_patients": "SD over patients (ddof=1)",
    "n_controls": "controls with a finite region mean",
    "mean_controls": "mean over controls",
    "std_controls": "SD over controls (ddof=1)",
    "cohens_d": "Cohen's d, patients minus controls, pooled SD (Cohen 1988)",
    "cohens_d_ci_low": (
        "lower bound of the 95 % confidence interval of cohens_d (normal approximation of "
        "Hedges & Olkin 1985: var = (n1+n2)/(n1 n2) + d^2/(2(n1+n2)))"
    ),
    "cohens_d_ci_high": "upper bound of the 95 % confidence interval of cohens_d",
    "welch_t": "Welch's t statistic, patients minus controls",
    "welch_df": "Welch-Satterthwaite degrees of freedom",
    "welch_p": "two-sided p value of Welch's t test",
    "welch_q": "Benjamini-Hochberg FDR-adjusted welch_p (family: every row of this table)",
    "mannwhitney_u": "Mann-Whitney U statistic of the patients",
    "mannwhitney_p": "two-sided p value of the Mann-Whitney U test (scipy, method auto)",
    "mannwhitney_q": "Benjamini-Hochberg FDR-adjusted mannwhitney_p (every row)",
    "covariates": "covariates adjusted for (participants.tsv columns, '+'-joined); n/a: none",
    "n_adjusted": "subjects in the adjusted model (finite mean, group and covariates)",
    "adjusted_difference": (
        "patients minus controls adjusted for the covariates: OLS coefficient of the "
        "patient indicator in mean ~ 1 + patient + covariates (map units)"
    ),
    "adjusted_d": "adjusted_difference / residual SD of the OLS model",
    "adjusted_p": "two-sided t-test p value of adjusted_difference",
    "adjusted_q": "Benjamini-Hochberg FDR-adjusted adjusted_p (every row)",
    "harmonization": "none, or combat (region means harmonised across sites first)",
}

_Q_OF = {"welch_p": "welch_q", "mannwhitney_p": "mannwhitney_q", "adjusted_p": "adjusted_q"}
Z95 = float(stats.norm.ppf(0.975))


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d of ``a`` minus ``b`` with the pooled SD (NaN when undefined).

    Parameters
    ----------
    a, b : (n,) ndarray
        Samples (non-finite values dropped).

    Returns
    -------
    float

    Examples
    --------
    >>> round(cohens_d(np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0])), 3)
    1.0
    """
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return float("nan")
    pooled = np.sqrt(
        ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    )
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def cohens_d_ci(d: float, n1: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation confidence interval of Cohen's d (Hedges & Olkin 1985, 5.14).

    Parameters
    ----------
    d : float
        Effect size.
    n1, n2 : int
        Group sizes.
    z : float
        Standard normal quantile (1.96 for 95 %).

    Returns
    -------
    (low, high) : tuple of float
        NaN when ``d`` is NaN or a group is empty.

    Examples
    --------
    >>> low, high = cohens_d_ci(0.5, 50, 50)
    >>> round(low, 3), round(high, 3)
    (0.102, 0.898)
    """
    if not np.isfinite(d) or n1 < 1 or n2 < 1:
        return float("nan"), float("nan")
    se = np.sqrt((n1 + n2) / (n1 * n2) + d**2 / (2.0 * (n1 + n2)))
    return float(d - z * se), float(d + z * se)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (q values); NaNs stay NaN, not counted.

    Parameters
    ----------
    p : (n,) array_like
        p values in [0, 1] or NaN.

    Returns
    -------
    (n,) float64 ndarray
        ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the m finite p values in
        ascending order (:func:`scipy.stats.false_discovery_control`, ``method='bh'``).

    Examples
    --------
    >>> fdr_bh([0.01, 0.04, np.nan, 0.03]).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    """
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def _describe(x: np.ndarray) -> tuple[int, float, float]:
    x = x[np.isfinite(x)]
    return (
        int(x.size),
        float(x.mean()) if x.size else np.nan,
        float(x.std(ddof=1)) if x.size > 1 else np.nan,
    )


def compare(pat: np.ndarray, con: np.ndarray) -> dict[str, float]:
    """Cohen's d with its CI, Welch's t test and the Mann-Whitney U test of two samples.

    Parameters
    ----------
    pat, con : (n,) ndarray
        Patient and control values (non-finite values dropped).

    Returns
    -------
    dict
        Keys ``cohens_d, cohens_d_ci_low, cohens_d_ci_high, welch_t, welch_df, welch_p,
        mannwhitney_u, mannwhitney_p`` (NaN when a group has fewer than 2 values).
    """
    pat, con = pat[np.isfinite(pat)], con[np.isfinite(con)]
    d = cohens_d(pat, con)
    low, high = cohens_d_ci(d, pat.size, con.size)
    keys = ("welch_t", "welch_df", "welch_p", "mannwhitney_u", "mannwhitney_p")
    out = dict.fromkeys(keys, np.nan)
    out.update(cohens_d=d, cohens_d_ci_low=low, cohens_d_ci_high=high)
    if pat.size >= 2 and con.size >= 2:
        if np.ptp(np.r_[pat, con]) > 0:
            t = stats.ttest_ind(pat, con, equal_var=False)
            out.update(welch_t=float(t.statistic), welch_df=float(t.df), welch_p=float(t.pvalue))
        u = stats.mannwhitneyu(pat, con, alternative="two-sided")
        out.update(mannwhitney_u=float(u.statistic), mannwhitney_p=float(u.pvalue))
    return out


def summary_table(
    values: pd.DataFrame,
    participants: pd.DataFrame | None,
    options: GroupOptions,
    *,
    value: str = "mean",
    harmonization: str = "none",
) -> pd.DataFrame:
    """One row per map x units x region x session: all subjects, patients vs controls.

    Parameters
    ----------
    values : pandas.DataFrame
        Columns ``participant_id, session_id, map, units, region`` and ``value`` (one value
        per subject and row key, e.g. the concatenated region tables).
    participants : pandas.DataFrame or None
        ``participants.tsv`` (group column and covariates), joined on ``participant_id``.
    options : GroupOptions
    value : str
        Column of ``values`` summarised.
    harmonization : str
        Written to the ``harmonization`` column.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SUMMARY_COLUMNS`; q values adjusted across all rows.

    Raises
    ------
    bids_app.errors.MetadataError
        A covariate missing from ``participants.tsv``.
    """
    df = values.copy()
    df["session_id"] = df["session_id"].replace("", None).fillna("n/a")
    drop = [c for c in (participants.columns if participants is not None else []) if c in df]
    drop = [c for c in drop if c != "participant_id"]
    if participants is not None:
        df = df.drop(columns=drop).merge(participants, on="participant_id", how="left")
    if options.group_column in df.columns:
        df["_role"] = df[options.group_column].map(options.role)
    else:
        df["_role"] = None
    covs = list(options.covariates)
    rows = []
    for (m, units, region, ses), g in df.groupby(
        ["map", "units", "region", "session_id"], sort=True, dropna=False
    ):
        vals = g[value].to_numpy(float)
        pat = g.loc[g["_role"] == "patient", value].to_numpy(float)
        con = g.loc[g["_role"] == "control", value].to_numpy(float)
        n, mu, sd = _describe(vals)
        n_p, mu_p, sd_p = _describe(pat)
        n_c, mu_c, sd_c = _describe(con)
        row = {
            "map": m, "units": units, "region": region,
            "session_id": None if ses == "n/a" else ses,
            "n_subjects": n, "mean": mu, "std": sd,
            "n_patients": n_p, "mean_patients": mu_p, "std_patients": sd_p,
            "n_controls": n_c, "mean_controls": mu_c, "std_controls": sd_c,
            **compare(pat, con),
            "covariates": "+".join(covs) if covs else None,
            "harmonization": harmonization,
        }  # fmt: skip
        if covs:
            row.update(adjusted_effect(g, value, covs))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for p_col, q_col in _Q_OF.items():
        out[q_col] = fdr_bh(out[p_col].to_numpy(float))
    return out


def lesion_values(counts: pd.DataFrame) -> pd.DataFrame:
    """Lesion count and load per participant/session in the long form of :func:`summary_table`.

    Parameters
    ----------
    counts : pandas.DataFrame
        ``group_desc-lesioncounts_stats.tsv`` rows (``n_lesions``, ``lesion_volume_mm3``,
        ``n_enhancing``: an ``enhancing_lesion_count`` row when some subject has a
        post-contrast T1w).

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id, session_id, map, units, region, mean``.
    """
    keys = counts[["participant_id", "session_id"]]
    rows = [("lesion_count", "count", "n_lesions"), ("lesion_load", "mm^3", "lesion_volume_mm3")]
    if "n_enhancing" in counts and np.isfinite(counts["n_enhancing"].to_numpy(float)).any():
        rows.append(("enhancing_lesion_count", "count", "n_enhancing"))
    parts = [
        keys.assign(map=name, units=units, region="brain", mean=counts[col].astype(float))
        for name, units, col in rows
    ]
    return pd.concat(parts, ignore_index=True)
