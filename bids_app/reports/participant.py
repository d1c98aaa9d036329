"""The participant report ``sub-<l>[_ses-<s>].html``: figures, tables, provenance, warnings.

Figures are written to ``sub-<l>/[ses-<s>/]figures/`` with NiPreps-style names
(``<entities>_desc-<what>_<suffix>.svg``) and embedded in the page.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from markupsafe import Markup

from bids_app import __version__
from bids_app.bids.derivatives import build_name, subject_dir
from bids_app.reports.figures import edges_figure, histogram_figure, mosaic_figure
from bids_app.reports.render import Figure, guarded, render_page, save_figure, table

logger = logging.getLogger(__name__)

#: regions whose histograms the report draws
HIST_REGIONS = ("lesion", "NAWM", "NAGM")
#: columns of the paramagnetic rim lesion candidates in the report
PRL_COLUMNS = (
    "lesion_id", "volume_mm3", "centroid_x", "centroid_y", "centroid_z", "location",
    "core_mean", "rim_mean", "rim_index",
)  # fmt: skip
#: per-lesion columns shown once per lesion (the rest is per map)
LESION_BASE = ("lesion_id", "volume_mm3", "location", "centroid_x", "centroid_y", "centroid_z")
#: B1 reasons that are not a warning
_B1_NOT_NEEDED = "the model does not use B1"


def _registrations(ctx) -> pd.DataFrame:
    """One row per registered image: mode, NMI reached and with the headers, motion."""
    rows = [
        {
            "image": Path(key).name,
            "mode": reg.mode,
            "NMI": reg.metric,
            "NMI_headers": reg.metric_header,
            "peak_sharpness": reg.sharpness,
            "translation_mm": reg.translation_mm,
            "rotation_deg": reg.rotation_deg,
            "failed": reg.failed,
        }
        for key, reg in ctx.registrations.items()
    ]
    return pd.DataFrame(rows)


def _rim_candidates(lesions: pd.DataFrame) -> Markup:
    """The QSM rim lesion candidates (``prl_candidate`` of the ``Chimap`` rows) as HTML."""
    if "prl_candidate" not in lesions or "map" not in lesions:
        return Markup("")
    chi = lesions[lesions["map"] == "Chimap"]
    if chi.empty:
        return Markup("")
    flagged = chi[pd.to_numeric(chi["prl_candidate"], errors="coerce") == 1]
    head = Markup("<h3>Paramagnetic rim lesion candidates (QSM)</h3>")
    if flagged.empty:
        return head + Markup("<p>No candidate among {} lesions.</p>").format(len(chi))
    cols = [c for c in PRL_COLUMNS if c in flagged]
    count = Markup("<p>{} of {} lesions.</p>").format(len(flagged), len(chi))
    return head + count + table(flagged[cols])


def lesion_table(lesions: pd.DataFrame) -> pd.DataFrame:
    """One row per lesion: volume, location, centroid, the lesion mean of every map.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Rows of a ``*_desc-lesions_stats.tsv`` (one per lesion x map).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LESION_BASE`, ``<map> [<units>]`` means, and ``prl_candidate`` when
        the table has a QSM rim score.
    """
    if lesions.empty or "lesion_id" not in lesions:
        return pd.DataFrame(columns=list(LESION_BASE))
    base = [c for c in LESION_BASE if c in lesions]
    wide = lesions[base].drop_duplicates("lesion_id").set_index("lesion_id")
    if {"map", "mean"} <= set(lesions.columns):
        label = lesions["map"].astype(str)
        if "units" in lesions:
            label = label + " [" + lesions["units"].astype(str) + "]"
        means = lesions.assign(_col=label).pivot_table(
            index="lesion_id", columns="_col", values="mean", aggfunc="first", sort=False
        )
        wide = wide.join(means)
    if "prl_candidate" in lesions and "map" in lesions:
        chi = lesions[lesions["map"] == "Chimap"].set_index("lesion_id")["prl_candidate"]
        if not chi.empty:
            wide["prl_candidate"] = chi
    return wide.reset_index()


def _read(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A NIfTI image's data (float) and its JSON sidecar ({} if none)."""
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    side = path.with_name(path.name.replace(".nii.gz", ".json"))
    return data, (json.loads(side.read_text()) if side.is_file() else {})


def _regions(unit: Path) -> dict[str, np.ndarray]:
    """The region masks the participant level wrote (``*_label-<region>_mask``)."""
    masks = {}
    for name in HIST_REGIONS:
        hits = sorted(unit.glob(f"*/*_label-{name}_mask.nii.gz"))
        if hits:
            masks[name] = _read(hits[0])[0] > 0.5
    return masks


def _b1_warnings(ctx) -> list[str]:
    """``B1 not applied`` lines from the maps' ``B1Correction`` sidecar records."""
    lines = {}
    for rec in ctx.maps:
        b1 = (getattr(rec, "sidecar", None) or {}).get("B1Correction")
        if isinstance(b1, dict) and not b1.get("Applied") and b1.get("Reason") != _B1_NOT_NEEDED:
            reason = b1.get("Reason", "no reason recorded")
            lines.setdefault(
                rec.model, f"{rec.model}: B1 not applied (policy {b1.get('Policy')}): {reason}"
            )
    return list(lines.values())


def _provenance(ctx) -> list[dict[str, str]]:
    """One row per map: model, units, inputs, options, acquisition parameters, B1."""
    rows = []
    for rec in ctx.maps:
        side = getattr(rec, "sidecar", None) or {}
        b1 = side.get("B1Correction", {})
        rows.append(
            {
                "map": rec.key,
                "units": rec.units,
                "model": getattr(rec, "model", ""),
                "method": side.get("EstimationAlgorithm", ""),
                "inputs": "\n".join(str(s) for s in side.get("Sources", [])),
                "options": json.dumps(side.get("ModelOptions", {}), default=str),
                "acquisition": json.dumps(side.get("AcquisitionParameters", {}), default=str),
                "B1": json.dumps(b1, default=str) if b1 else "n/a",
            }
        )
    return rows


def _desc(rec_entities: dict[str, Any], what: str) -> dict[str, Any]:
    old = re.sub(r"[^a-zA-Z0-9]", "", str(rec_entities.get("desc") or ""))
    return dict(rec_entities, desc=f"{old}{what}")


def _cmap(suffix: str) -> str:
    return "RdBu_r" if suffix == "Chimap" else "viridis"


def _map_figures(ctx, ents, figdir, out, problems) -> list[dict[str, Any]]:
    """Per map: a mosaic with lesion contours and a histogram by region."""
    lesion = ctx.lesion_mask > 0.5 if ctx.lesion_mask is not None else None
    unit = subject_dir(out, ents, "")
    regions = guarded(problems, "region masks", lambda: _regions(unit), {})
    sections = []
    for rec in ctx.maps:
        on_ref = rec.data_ref is not None
        data = rec.data_ref if on_ref else rec.native
        names = dict(getattr(rec, "entities", {}) or {}, **ents)
        suffix = getattr(rec, "suffix", "map") or "map"
        window = None
        if suffix == "Chimap":
            finite = np.abs(data[np.isfinite(data)])
            w = float(np.percentile(finite, 98)) if finite.size else 1.0
            window = (-w, w)
        figs = []
        mosaic = guarded(
            problems,
            f"{rec.key} mosaic",
            lambda rec=rec, data=data, on_ref=on_ref, window=window, names=names, suffix=suffix: (
                save_figure(
                    lambda: mosaic_figure(
                        data, units=rec.units, lesion=lesion if on_ref else None,
                        cmap=_cmap(suffix), window=window,
                    ),
                    figdir / build_name(_desc(names, "mosaic"), suffix, ".svg"),
                    f"{rec.key} [{rec.units}]",
                    "axial slices; red: lesion contours" if on_ref and lesion is not None
                    else "axial slices (native space)",
                    root=out,
                    tight=False,
                )
            ),
        )  # fmt: skip
        figs.append(mosaic)
        if on_ref and regions:
            figs.append(
                guarded(
                    problems,
                    f"{rec.key} histogram",
                    lambda rec=rec, data=data, names=names, suffix=suffix: save_figure(
                        lambda: histogram_figure(data, regions, units=rec.units),
                        figdir / build_name(_desc(names, "histogram"), suffix, ".svg"),
                        f"{rec.key} by region",
                        "voxel values in the lesions, NAWM and NAGM (normalised)",
                        root=out,
                    ),
                )
            )
        sections.append({"title": f"{rec.key} [{rec.units}]", "figures": [f for f in figs if f]})
    return sections


def _quality_figures(ents, figdir, out, problems) -> list[Figure]:
    """Mosaics of the fit-quality maps written next to the maps (rmse, residuals)."""
    unit = subject_dir(out, ents, "")
    found = sorted({*unit.glob("*/*desc-*rmse*.nii.gz"), *unit.glob("*/*desc-*residual*.nii.gz")})
    figs = []
    for path in found:
        stem = path.name.replace(".nii.gz", "")
        suffix = stem.rsplit("_", 1)[-1]

        def draw(path=path, stem=stem, suffix=suffix):
            data, side = _read(path)
            if data.ndim > 3:
                data = data[..., 0]
            units = str(side.get("Units", "arbitrary"))
            desc = re.search(r"desc-([a-zA-Z0-9]+)", stem).group(1)
            name = build_name(dict(ents, desc=f"{desc}mosaic"), suffix, ".svg")
            return save_figure(
                lambda: mosaic_figure(data, units=units, cmap="magma"),
                figdir / name,
                f"{stem} [{units}]",
                str(side.get("Description", "fit quality (native space)")),
                root=out,
                tight=False,
            )

        figs.append(guarded(problems, f"{stem} mosaic", draw))
    return [f for f in figs if f]


def _anatomy_figures(ctx, ents, figdir, out, problems) -> list[Figure]:
    """The reference image with the brain mask and lesions; registration edge overlays."""
    if getattr(ctx, "reference_path", None) is None or getattr(ctx, "grid", None) is None:
        return []
    from bids_app.stages.align import reference_data

    ref = guarded(problems, "reference image", lambda: reference_data(ctx))
    if ref is None:
        return []
    ref_name = str(ctx.reference_name)
    lesion = ctx.lesion_mask > 0.5 if ctx.lesion_mask is not None else None
    mask = ctx.brain_mask if ctx.brain_mask is not None else None
    figs = [
        guarded(
            problems,
            "brain mask figure",
            lambda: save_figure(
                lambda: mosaic_figure(ref, units="signal (a.u.)", lesion=lesion, mask=mask),
                figdir / build_name(dict(ents, desc="brain"), "mask", ".svg"),
                f"Reference {ref_name}: brain mask and lesions",
                "yellow: brain mask; red: lesions",
                root=out,
                tight=False,
            ),
        )
    ]
    seen = set()
    for rec in ctx.maps:
        model = getattr(rec, "model", "")
        if rec.data_ref is None or model in seen:
            continue
        seen.add(model)
        desc = re.sub(r"[^a-zA-Z0-9]", "", f"coreg{model}")
        figs.append(
            guarded(
                problems,
                f"{model} registration figure",
                lambda rec=rec, desc=desc: save_figure(
                    lambda: edges_figure(rec.data_ref, ref),
                    figdir / build_name(dict(ents, desc=desc), rec.suffix, ".svg"),
                    f"Registration: {rec.key} ({rec.model}) under the {ref_name} edges",
                    f"cyan: edges of the reference {ref_name}; grey: {rec.key} on its grid",
                    root=out,
                    tight=False,
                ),
            )
        )
    return [f for f in figs if f]


def _tables(ents, out, problems) -> dict[str, Any]:
    unit = subject_dir(out, ents, "")
    res: dict[str, Any] = {"regions": None, "lesions": None, "rims": "", "n_lesions": None}
    stats = unit / build_name(dict(ents, desc="regions"), "stats", ".tsv")
    if stats.is_file():
        df = pd.read_csv(stats, sep="\t", na_values="n/a", keep_default_na=False)
        res["regions"] = table(df)
    path = unit / build_name(dict(ents, desc="lesions"), "stats", ".tsv")
    if path.is_file():
        les = pd.read_csv(path, sep="\t", na_values="n/a")
        wide = lesion_table(les)
        res["n_lesions"] = len(wide)
        res["lesions"] = table(wide)
        res["rims"] = _rim_candidates(les)
    return res


def participant_report(ctx) -> Path:
    """Write ``sub-<l>[_ses-<s>].html`` and its figures; return the page's path.

    Parameters
    ----------
    ctx : bids_app.stages.context.SubjectContext
        The finished subject (maps, masks, registrations, warnings).

    Returns
    -------
    Path
        ``OUTPUT_DIR/sub-<l>[_ses-<s>].html``.
    """
    out = ctx.cfg.output_dir
    ents = {"subject": ctx.subject, "session": ctx.session}
    figdir = subject_dir(out, ents, "figures")
    problems: list[str] = []
    anatomy = _anatomy_figures(ctx, ents, figdir, out, problems)
    maps = _map_figures(ctx, ents, figdir, out, problems)
    quality = _quality_figures(ents, figdir, out, problems)
    tables = guarded(problems, "tables", lambda: _tables(ents, out, problems), {})
    registrations = table(_registrations(ctx)) if ctx.registrations else None
    name = f"sub-{ctx.subject}" + (f"_ses-{ctx.session}" if ctx.session else "")
    return render_page(
        "participant.html.j2",
        out / f"{name}.html",
        title=f"msqmri: {ctx.label}",
        version=__version__,
        sources={
            "reference image": ctx.reference_name,
            "brain mask": ctx.brain_mask_source,
            "tissue": ctx.tissue_source,
            "lesions": ctx.lesion_source,
        },
        warnings=[*ctx.warnings, *_b1_warnings(ctx)],
        skipped=list(ctx.skipped),
        problems=problems,
        anatomy=anatomy,
        registrations=registrations,
        maps=maps,
        quality=quality,
        provenance=_provenance(ctx),
        **{"regions": None, "lesions": None, "rims": "", "n_lesions": None, **(tables or {})},
    )
