"""Group figures: patients vs controls per map x region, effect sizes, lesion load, sessions.

Box plots (median, quartiles, whiskers at 1.5 IQR; Tukey 1977) with every subject drawn as a
point (seeded jitter, so reports are reproducible), a forest plot of Cohen's d with its 95 %
confidence interval (the ``cohens_d_ci_*`` columns of ``group_desc-summary_stats.tsv``), and
per-subject trajectories across sessions. matplotlib, no ``pyplot``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bids_app.reports.render import COLOURS, new_figure

#: role order and names in the legends
ROLES = (("patient", "patients"), ("control", "controls"), (None, "other"))


def _role_values(df: pd.DataFrame, column: str) -> list[tuple[str | None, str, np.ndarray]]:
    out = []
    for role, name in ROLES:
        sel = df["_role"].isna() if role is None else df["_role"] == role
        v = pd.to_numeric(df.loc[sel, column], errors="coerce").to_numpy(float)
        v = v[np.isfinite(v)]
        if v.size:
            out.append((role, name, v))
    return out


def _boxes(ax, groups, rng: np.random.Generator) -> None:
    """Box plus jittered points, one per (role, name, values) group."""
    for i, (role, _, v) in enumerate(groups):
        ax.boxplot(
            [v], positions=[i], widths=0.5, showfliers=False, patch_artist=False,
            medianprops={"color": COLOURS[role]}, boxprops={"color": COLOURS[role]},
            whiskerprops={"color": COLOURS[role]}, capprops={"color": COLOURS[role]},
        )  # fmt: skip
        x = i + rng.uniform(-0.15, 0.15, v.size)
        ax.scatter(x, v, s=9, color=COLOURS[role], alpha=0.75, linewidths=0, zorder=3)
    ax.set_xticks(range(len(groups)), [f"{n}\n(n={v.size})" for _, n, v in groups])
    ax.set_xlim(-0.6, max(len(groups), 1) - 0.4)
    ax.spines[["top", "right"]].set_visible(False)


def region_figure(df: pd.DataFrame, *, title: str, units: str, regions: Sequence[str]):
    """Subject means of one map: a panel per region, patients vs controls (box + points).

    Parameters
    ----------
    df : pandas.DataFrame
        Rows of one map (``region``, ``mean``, ``_role`` columns; one row per subject x
        session x region).
    title, units : str
        Map name and its units (the y-axis label).
    regions : sequence of str
        Panels, left to right.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rng = np.random.default_rng(0)
    fig = new_figure(2.0 * len(regions) + 0.4, 2.3)
    axes = np.atleast_1d(fig.subplots(1, len(regions)))
    for ax, region in zip(axes, regions):
        groups = _role_values(df[df["region"] == region], "mean")
        if groups:
            _boxes(ax, groups, rng)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
            ax.set_xticks([])
        ax.set_title(region, fontsize=8)
    axes[0].set_ylabel(units)
    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.subplots_adjust(wspace=0.45, top=0.82)
    return fig


def forest_figure(summary: pd.DataFrame, max_rows: int = 80):
    """Cohen's d (patients minus controls) with its 95 % CI per map x region (x session).

    Parameters
    ----------
    summary : pandas.DataFrame
        ``group_desc-summary_stats.tsv`` rows; rows without a finite ``cohens_d`` are left
        out, and at most ``max_rows`` rows (the largest ``|d|``) are drawn.
    max_rows : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    df = summary.copy()
    for c in ("cohens_d", "cohens_d_ci_low", "cohens_d_ci_high"):
        df[c] = pd.to_numeric(df.get(c), errors="coerce")
    df = df[np.isfinite(df["cohens_d"])]
    if len(df) > max_rows:
        df = df.loc[df["cohens_d"].abs().sort_values(ascending=False).index[:max_rows]]
    df = df.sort_values(["map", "region"], kind="stable")
    ses = df["session_id"].fillna("n/a").astype(str) if "session_id" in df else None
    labels = df["map"].astype(str) + " " + df["region"].astype(str)
    if ses is not None and (ses != "n/a").any():
        labels = labels + " " + ses
    fig = new_figure(4.6, 0.6 + 0.17 * max(len(df), 1))
    ax = fig.subplots()
    y = np.arange(len(df))[::-1]
    d = df["cohens_d"].to_numpy(float)
    lo = df["cohens_d_ci_low"].to_numpy(float)
    hi = df["cohens_d_ci_high"].to_numpy(float)
    err = np.vstack([np.nan_to_num(d - lo), np.nan_to_num(hi - d)])
    ax.errorbar(d, y, xerr=err, fmt="o", ms=3, color="#333", ecolor="#888", capsize=2)
    ax.axvline(0, color="#c0392b", lw=0.8)
    ax.set_yticks(y, labels.tolist(), fontsize=6)
    ax.set_xlabel("Cohen's d, patients - controls (95 % CI)")
    ax.set_ylim(-1, max(len(df), 1))
    ax.spines[["top", "right"]].set_visible(False)
    if df.empty:
        ax.text(0.5, 0.5, "no effect size (needs patients and controls)", ha="center",
                transform=ax.transAxes)  # fmt: skip
    return fig


def lesion_load_figure(counts: pd.DataFrame):
    """Lesion count and lesion load (mm^3) per subject and session, by group.

    Parameters
    ----------
    counts : pandas.DataFrame
        ``group_desc-lesioncounts_stats.tsv`` rows with a ``_role`` column.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rng = np.random.default_rng(1)
    fig = new_figure(4.6, 2.3)
    axes = fig.subplots(1, 2)
    for ax, column, label in (
        (axes[0], "n_lesions", "lesions"),
        (axes[1], "lesion_volume_mm3", "lesion load (mm³)"),
    ):
        groups = _role_values(counts, column) if column in counts else []
        if groups:
            _boxes(ax, groups, rng)
        ax.set_ylabel(label)
    fig.subplots_adjust(wspace=0.5)
    return fig


def trajectory_figure(df: pd.DataFrame, *, title: str, units: str, regions: Sequence[str]):
    """Per-subject region means across sessions (a line per subject, coloured by group).

    Parameters
    ----------
    df : pandas.DataFrame
        Rows of one map with ``participant_id``, ``session_id``, ``region``, ``mean``,
        ``_role``; sessions are placed in sorted label order.
    title, units : str
    regions : sequence of str
        Panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    sessions = sorted(df["session_id"].dropna().astype(str).unique())
    pos = {s: i for i, s in enumerate(sessions)}
    fig = new_figure(2.2 * len(regions) + 0.4, 2.2)
    axes = np.atleast_1d(fig.subplots(1, len(regions)))
    for ax, region in zip(axes, regions):
        sub = df[(df["region"] == region) & df["session_id"].notna()]
        for (_, role), g in sub.groupby(["participant_id", "_role"], dropna=False, sort=True):
            g = g.sort_values("session_id")
            x = g["session_id"].astype(str).map(pos).to_numpy()
            ax.plot(x, g["mean"].to_numpy(float), "-o", ms=3, lw=1,
                    color=COLOURS.get(role if isinstance(role, str) else None))  # fmt: skip
        ax.set_xticks(range(len(sessions)), sessions, fontsize=6)
        ax.set_title(region, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel(units)
    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.subplots_adjust(wspace=0.45, top=0.8)
    return fig
