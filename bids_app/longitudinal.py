"""Longitudinal group results: lesions tracked across sessions and per-subject change rates.

Run at the group level, where every session of a subject is available (participant runs
may process one session each). For each subject with several sessions, consecutive
sessions (ordered by their ``acq_time``, else by label) are compared:

1. the later session's ``desc-lesions_dseg`` is brought onto the earlier session's grid:
   through a rigid registration of the later reference image (the ``SpatialReference`` of
   the dseg sidecar, in the raw dataset) to the earlier one (:func:`bids_app.registration.
   register`, dipy mutual information), or through the image affines alone
   (``--longitudinal-registration none``, or when a reference image is not found); nearest
   neighbour resampling (:func:`bids_app.io.resample`);
2. lesions are matched by overlap and labelled (:mod:`bids_app.lesion_match`);
3. each map's lesion mean (the per-lesion tables, volume-weighted over the lesions of a
   component) gives ``change_mean = mean_to - mean_from`` and the remyelination / repair
   measure ``recovery_fraction = change_mean / (nawm_from - mean_from)``: the fraction of the
   lesion's earlier deficit relative to the subject's NAWM that was recovered (1: back to
   NAWM, 0: no change; e.g. MTR recovery, cf. Brown et al., Brain 2014;137:1432-1443).

``group_desc-longitudinal_stats.tsv``: per subject x map x region (and the lesion count /
load rows), the first and last values, their difference and, when session dates exist,
the change per year: the least-squares slope of the value over the time in years.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_app import io
from bids_app._sessions import session_dates
from bids_app.bids.derivatives import write_table
from bids_app.group_options import GroupOptions
from bids_app.lesion_match import match_lesions

logger = logging.getLogger(__name__)

_ID = "ID of the tracked lesion within the subject: its label at the first session where "
CHANGE_COLUMNS = {
    "participant_id": "BIDS participant label (sub-<label>)",
    "lesion_id": _ID + "it appears, numbered after that session's labels for later lesions",
    "session_from": "earlier session (ses-<label>)",
    "session_to": "later session (ses-<label>)",
    "lesion_id_from": "label(s) in the earlier session's desc-lesions_dseg, '+'-joined; n/a",
    "lesion_id_to": "label(s) in the later session's desc-lesions_dseg, '+'-joined; n/a",
    "change": "new, enlarging, shrinking, stable or resolved (thresholds in the sidecar)",
    "volume_from_mm3": "volume at session_from (mm^3, on the earlier grid)",
    "volume_to_mm3": "volume at session_to (mm^3, resampled onto the earlier grid)",
    "volume_change_percent": "100 (volume_to - volume_from) / volume_from",
    "overlap_mm3": "volume labelled at both sessions (mm^3)",
    "days": "days between the sessions (acq_time); n/a without dates",
    "location": "location at session_to (else session_from), from the lesion tables",
    "map": "map name (n/a when no map exists: one row per lesion)",
    "units": "units of the map",
    "mean_from": "lesion mean of the map at session_from (volume-weighted over components)",
    "mean_to": "lesion mean of the map at session_to",
    "change_mean": "mean_to - mean_from (map units; percentage points for MTRmap/MWFmap)",
    "nawm_from": "the subject's NAWM mean of the map at session_from",
    "recovery_fraction": "change_mean / (nawm_from - mean_from): fraction of the deficit "
    "relative to NAWM recovered",
}
LONGITUDINAL_COLUMNS = {
    "participant_id": CHANGE_COLUMNS["participant_id"],
    "map": "map name; lesion_count / lesion_load for the lesion rows",
    "units": "units of the map",
    "region": "region (brain for the lesion rows)",
    "n_sessions": "sessions with a finite value",
    "session_first": "first session (ses-<label>)",
    "session_last": "last session",
    "years": "years between the first and last session (acq_time); n/a without dates",
    "value_first": "value at the first session",
    "value_last": "value at the last session",
    "change": "value_last - value_first",
    "change_per_year": "least-squares slope of the value over time (units per year); n/a "
    "without dates",
}


def _find(out: Path, sub: str, ses: str, pattern: str) -> Path | None:
    hits = sorted((out / f"sub-{sub}" / f"ses-{ses}" / "anat").glob(pattern))
    return hits[0] if hits else None


def _reference(bids_dir: Path, dseg: Path) -> Path | None:
    side = dseg.with_name(dseg.name.replace(".nii.gz", ".json"))
    try:
        uri = json.loads(side.read_text()).get("SpatialReference", "")
    except (OSError, ValueError):
        return None
    path = Path(bids_dir) / uri.removeprefix("bids:raw:") if uri.startswith("bids:raw:") else None
    return path if path is not None and path.is_file() else None


def _to_earlier_grid(bids_dir, out, sub, ses_a, ses_b, options):
    """Labels of both sessions on session a's grid, and a's voxel volume (mm^3)."""
    pa = _find(out, sub, ses_a, "*_desc-lesions_dseg.nii.gz")
    pb = _find(out, sub, ses_b, "*_desc-lesions_dseg.nii.gz")
    if pa is None or pb is None:
        return None
    ia, ib = nib.load(pa), nib.load(pb)
    a = np.asarray(ia.dataobj).astype(np.int32)
    b = np.asarray(ib.dataobj).astype(np.int32)
    matrix = np.eye(4)
    ra, rb = _reference(bids_dir, pa), _reference(bids_dir, pb)
    if options.longitudinal_registration == "rigid" and ra is not None and rb is not None:
        from bids_app.registration import register

        img_a, img_b = nib.load(ra), nib.load(rb)
        brain = _find(out, sub, ses_a, "*_desc-brain_mask.nii.gz")
        mask = np.asarray(nib.load(brain).dataobj) > 0 if brain is not None else None
        if mask is not None and mask.shape != img_a.shape[:3]:
            mask = None
        reg = register(
            np.asarray(img_b.dataobj, dtype=np.float32), img_b.affine,
            np.asarray(img_a.dataobj, dtype=np.float32), img_a.affine,
            mode="rigid", static_mask=mask,
        )  # fmt: skip
        matrix = reg.matrix
        logger.info(
            "sub-%s ses-%s -> ses-%s: rigid %.2f mm %.2f deg%s", sub, ses_b, ses_a,
            reg.translation_mm, reg.rotation_deg, " (failed: headers)" if reg.failed else "",
        )  # fmt: skip
    elif options.longitudinal_registration == "rigid":
        logger.warning("sub-%s: reference images not found; sessions aligned by affines", sub)
    b = io.resample(b, ib.affine, a.shape, ia.affine, order=0, cval=0, world=matrix)
    voxel = float(abs(np.linalg.det(ia.affine[:3, :3])))
    return a, np.rint(b).astype(np.int32), voxel


def _lesion_means(lesions: pd.DataFrame, pid: str, ses: str, ids: tuple[int, ...]):
    """Per map: volume-weighted mean over ``ids``, units, location (dicts)."""
    if lesions.empty or not ids:
        return {}, {}, None
    rows = lesions[
        (lesions["participant_id"] == pid)
        & (lesions["session_id"] == f"ses-{ses}")
        & lesions["lesion_id"].isin(ids)
    ]
    loc = rows["location"].dropna().iloc[0] if rows["location"].notna().any() else None
    means, units = {}, {}
    for m, g in rows.dropna(subset=["map"]).groupby("map"):
        w = g["volume_mm3"].to_numpy(float)
        v = g["mean"].to_numpy(float)
        ok = np.isfinite(v) & (w > 0)
        means[m] = float((w[ok] * v[ok]).sum() / w[ok].sum()) if ok.any() else np.nan
        units[m] = g["units"].iloc[0]
    return means, units, loc


def _nawm(regions: pd.DataFrame, pid: str, ses: str) -> dict:
    if regions.empty:
        return {}
    r = regions[
        (regions["participant_id"] == pid)
        & (regions["session_id"] == f"ses-{ses}")
        & (regions["region"] == "NAWM")
    ]
    return dict(zip(r["map"], r["mean"].astype(float)))


def _ordered(sessions: list[str], dates: dict) -> list[str]:
    if all(s in dates for s in sessions):
        return sorted(sessions, key=lambda s: (dates[s], s))
    return sorted(sessions)


def _join(ids) -> str | None:
    return "+".join(map(str, ids)) if ids else None


def subject_changes(
    bids_dir: Path,
    out: Path,
    subject: str,
    sessions: list[str],
    lesions: pd.DataFrame,
    regions: pd.DataFrame,
    options: GroupOptions,
    dates: dict | None = None,
) -> pd.DataFrame:
    """The lesion-change rows of one subject (consecutive session pairs).

    Parameters
    ----------
    bids_dir, out : Path
        Raw dataset and msqmri output directory.
    subject : str
        Label without ``sub-``.
    sessions : list of str
        Session labels (without ``ses-``), in time order.
    lesions, regions : pandas.DataFrame
        Concatenated per-lesion and region tables (``session_id`` as ``ses-<label>``).
    options : GroupOptions
    dates : dict, optional
        Session label -> Timestamp (:func:`bids_app._sessions.session_dates`).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CHANGE_COLUMNS`, one row per tracked lesion x pair x map.
    """
    dates = dates or {}
    pid = f"sub-{subject}"
    rows: list[dict] = []
    track: dict[int, int] = {}  # label at the earlier session -> tracked lesion id
    first = True
    for ses_a, ses_b in itertools.pairwise(sessions):
        grids = _to_earlier_grid(bids_dir, out, subject, ses_a, ses_b, options)
        if grids is None:
            logger.warning("%s: no desc-lesions_dseg for ses-%s or ses-%s", pid, ses_a, ses_b)
            first, track = True, {}
            continue
        a, b, voxel = grids
        if first:
            track = {int(i): int(i) for i in np.unique(a[a > 0])}
            first = False
        matches = match_lesions(
            a, b, change_fraction=options.change_fraction, change_voxels=options.change_voxels
        )
        days = (dates[ses_b] - dates[ses_a]).days if ses_a in dates and ses_b in dates else None
        nawm = _nawm(regions, pid, ses_a)
        next_id = max([*track.values(), 0]) + 1
        new_track: dict[int, int] = {}
        for m in matches:
            if m.ids_from:
                tid = min(track.get(i, i) for i in m.ids_from)
            else:
                tid, next_id = next_id, next_id + 1
            new_track.update(dict.fromkeys(m.ids_to, tid))
            mean_a, units_a, loc_a = _lesion_means(lesions, pid, ses_a, m.ids_from)
            mean_b, units_b, loc_b = _lesion_means(lesions, pid, ses_b, m.ids_to)
            base = {
                "participant_id": pid, "lesion_id": tid,
                "session_from": f"ses-{ses_a}", "session_to": f"ses-{ses_b}",
                "lesion_id_from": _join(m.ids_from), "lesion_id_to": _join(m.ids_to),
                "change": m.change,
                "volume_from_mm3": m.voxels_from * voxel, "volume_to_mm3": m.voxels_to * voxel,
                "volume_change_percent": (
                    100.0 * (m.voxels_to - m.voxels_from) / m.voxels_from
                    if m.voxels_from else np.nan
                ),
                "overlap_mm3": m.overlap * voxel, "days": days, "location": loc_b or loc_a,
            }  # fmt: skip
            maps = sorted(set(mean_a) | set(mean_b))
            if not maps:
                rows.append(base)
            for name in maps:
                x0, x1 = mean_a.get(name, np.nan), mean_b.get(name, np.nan)
                ref = nawm.get(name, np.nan)
                deficit = ref - x0
                rows.append({
                    **base, "map": name, "units": units_a.get(name, units_b.get(name)),
                    "mean_from": x0, "mean_to": x1, "change_mean": x1 - x0, "nawm_from": ref,
                    "recovery_fraction": (x1 - x0) / deficit if abs(deficit) > 0 else np.nan,
                })  # fmt: skip
        track = new_track
    return pd.DataFrame(rows, columns=list(CHANGE_COLUMNS))


def longitudinal_table(
    values: pd.DataFrame, dates: dict[str, dict[str, pd.Timestamp]]
) -> pd.DataFrame:
    """Per subject x map x region: first/last value, change and change per year.

    Parameters
    ----------
    values : pandas.DataFrame
        ``participant_id, session_id, map, units, region, mean`` rows (region tables and
        :func:`bids_app.group_stats.lesion_values`).
    dates : dict
        participant_id -> {session label -> Timestamp}.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LONGITUDINAL_COLUMNS`; subjects with fewer than 2 sessions are left
        out.
    """
    df = values.dropna(subset=["session_id"])
    rows = []
    for (pid, m, units, region), g in df.groupby(
        ["participant_id", "map", "units", "region"], sort=True
    ):
        g = g[np.isfinite(g["mean"].to_numpy(float))]
        if g["session_id"].nunique() < 2:
            continue
        when = dates.get(pid, {})
        labels = [s.removeprefix("ses-") for s in g["session_id"]]
        order = _ordered(labels, when)
        g = g.assign(_l=labels).set_index("_l").loc[order]
        y = g["mean"].to_numpy(float)
        years = slope = np.nan
        if all(s in when for s in order):
            t = np.array([(when[s] - when[order[0]]).total_seconds() for s in order])
            t = t / (365.25 * 86400.0)
            years = float(t[-1])
            if np.ptp(t) > 0:
                slope = float(np.polyfit(t, y, 1)[0])
        rows.append({
            "participant_id": pid, "map": m, "units": units, "region": region,
            "n_sessions": len(order), "session_first": f"ses-{order[0]}",
            "session_last": f"ses-{order[-1]}", "years": years, "value_first": y[0],
            "value_last": y[-1], "change": y[-1] - y[0], "change_per_year": slope,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(LONGITUDINAL_COLUMNS))


def run_longitudinal(
    bids_dir: Path,
    out: Path,
    regions: pd.DataFrame,
    lesions: pd.DataFrame,
    values: pd.DataFrame,
    options: GroupOptions,
) -> pd.DataFrame | None:
    """Write the lesion-change tables and ``group_desc-longitudinal_stats.tsv``.

    Subjects with one session are skipped; nothing is written when no subject has two.

    Parameters
    ----------
    bids_dir, out : Path
    regions, lesions : pandas.DataFrame
        Concatenated participant tables (may be empty).
    values : pandas.DataFrame
        Long values for :func:`longitudinal_table` (region means and lesion count/load).
    options : GroupOptions

    Returns
    -------
    pandas.DataFrame or None
        All subjects' lesion-change rows (also ``group_desc-lesionchanges_stats.tsv``).
    """
    keys = values[["participant_id", "session_id"]].dropna().drop_duplicates()
    per_sub = keys.groupby("participant_id")["session_id"].apply(list)
    per_sub = per_sub[per_sub.map(len) >= 2]
    if per_sub.empty:
        return None
    dates, frames = {}, []
    sidecar = dict(CHANGE_COLUMNS)
    sidecar["change"] += (
        f" (enlarging/shrinking: volume change > {options.change_fraction:g} of the earlier "
        f"volume and > {options.change_voxels:g} voxels)"
    )
    for pid, sessions in per_sub.items():
        sub = pid.removeprefix("sub-")
        dates[pid] = session_dates(bids_dir, sub)
        labels = _ordered([s.removeprefix("ses-") for s in sessions], dates[pid])
        changes = subject_changes(
            bids_dir, out, sub, labels, lesions, regions, options, dates[pid]
        )
        write_table(out / pid / f"{pid}_desc-lesionchanges_stats.tsv", changes, sidecar)
        frames.append(changes)
    allchanges = pd.concat(frames, ignore_index=True) if frames else None
    if allchanges is not None:
        write_table(out / "group_desc-lesionchanges_stats.tsv", allchanges, sidecar)
    table = longitudinal_table(values, dates)
    write_table(out / "group_desc-longitudinal_stats.tsv", table, LONGITUDINAL_COLUMNS)
    logger.info("longitudinal: %d subject(s) with several sessions", len(per_sub))
    return allchanges
