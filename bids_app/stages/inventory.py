"""What a subject/session holds, what each collection goes to, and why the rest is unused.

A new user must never wonder why an IRT1, a DWI or a phase image produced nothing: every
image of the subject is either taken by a model run, used as a structural image, or listed
with the reason it is not used (no model for it in this version, ``--models`` left its model
out, its entities or ``--bids-filter-file`` did not match, it could not be paired).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bids import BIDSLayout

from bids_app.bids.query import NIFTI, ModelRun
from bids_app.models.base import QMRIModel


def _label(entities: Mapping[str, Any]) -> str:
    text = f"{entities.get('datatype', '?')}/*_{entities.get('suffix', '?')}"
    for key in ("acquisition", "part", "run"):
        if entities.get(key) is not None:
            short = {"acquisition": "acq", "part": "part", "run": "run"}[key]
            text += f" {short}-{entities[key]}"
    return text


def _reason(entities: Mapping[str, Any], selected: set[str], registry) -> str:
    suffix = entities.get("suffix")
    takers = [
        name
        for name, model in registry.items()
        for spec in model.inputs
        if spec.query.get("suffix") == suffix
    ]
    if not takers:
        return f"no model for {suffix} images in this version"
    chosen = [n for n in takers if n in selected]
    if not chosen:
        return f"--models left out {', '.join(sorted(set(takers)))}"
    part = entities.get("part")
    if part is not None:
        return f"part-{part} images are not used by {', '.join(sorted(set(chosen)))}"
    return (
        f"not matched by {', '.join(sorted(set(chosen)))} (entities, --bids-filter-file, "
        "or no partner input)"
    )


def inventory(
    layout: BIDSLayout,
    subject: str,
    session: str | None,
    runs: Iterable[ModelRun],
    structural: Iterable[str],
    selected: Iterable[type[QMRIModel]],
    registry: Mapping[str, type[QMRIModel]],
) -> tuple[list[str], list[str]]:
    """Lines for the log and report: collections used, and collections not used with why.

    Returns
    -------
    used : list of str
        ``'anat/*_MEGRE (6 files) -> megre_r2star'``, ``'anat/*_FLAIR (1 file) -> reference'``.
    unused : list of str
        ``'anat/*_IRT1 (4 files): no model for IRT1 images in this version'``.
    """
    taken: dict[str, str] = {}
    for run in runs:
        for path in run.sources:
            taken.setdefault(path, run.model.name)
    for path in structural:
        taken.setdefault(path, "structural (reference, masks)")
    selected_names = {m.name for m in selected}
    groups: dict[tuple[str, str], list[str]] = {}
    for f in layout.get(subject=subject, extension=list(NIFTI)):
        ent = f.get_entities()
        if ent.get("session") != session:
            continue
        target = taken.get(f.path) or "\0" + _reason(ent, selected_names, registry)
        groups.setdefault((_label(ent), target), []).append(f.path)
    used, unused = [], []
    for (label, target), paths in sorted(groups.items()):
        count = f"{len(paths)} file{'s' if len(paths) > 1 else ''}"
        if target.startswith("\0"):
            unused.append(f"{label} ({count}, e.g. {Path(paths[0]).name}): {target[1:]}")
        else:
            used.append(f"{label} ({count}) -> {target}")
    return used, unused
