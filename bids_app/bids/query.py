"""Resolve a model's declared inputs for one subject/session into checked collections.

Queries are data (``InputSpec.query``); this module runs them with pybids, reads metadata with
``BIDSLayout.get_metadata`` (inheritance included), groups files into collections (all
entities except the model's ``index_entities`` identify a collection) and checks every value
through :mod:`bids_app.bids.metadata`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids import BIDSLayout

from bids_app.bids.layout import invalid_sidecars
from bids_app.bids.metadata import build_collection
from bids_app.errors import MetadataError
from bids_app.models.base import Collection, InputSpec, QMRIModel, Volume

logger = logging.getLogger(__name__)

NIFTI = (".nii", ".nii.gz")
#: entities that never identify a collection
_NON_IDENTIFYING = {"suffix", "extension", "datatype"}
#: ``ce-<label>`` values read as a gadolinium-based contrast agent (any case of the element,
#: its symbol and the generic agent names; ``ce-gadolinium`` is the CONTRACT name); other
#: ``ce-`` labels (e.g. ferumoxytol) are neither the post-contrast nor the plain T1w
_GADOLINIUM_NAMES = (
    "gadolinium", "Gd", "gad", "gado", "gadobutrol", "gadoterate", "gadopentetate",
    "gadoteridol", "gadodiamide", "gadobenate", "gadoxetate", "gadopiclenol", "GdDTPA",
    "GdDOTA", "GdBOPTA",
)  # fmt: skip
GADOLINIUM_LABELS = tuple(
    dict.fromkeys(v for b in _GADOLINIUM_NAMES for v in (b, b.lower(), b.upper(), b.capitalize()))
)
#: structural images used as reference / for segmentation, by CONTRACT name
#: (magnitude only: a ``part-phase`` T1w of a QSM protocol is not a structural image);
#: ``T1w`` is the pre-contrast T1w (no ``ce-`` entity), ``ceT1w`` the post-gadolinium T1w
#: (never the reference: :func:`bids_app.stages.anatomy.choose_reference` picks among FLAIR,
#: T1w, T2w), used for the ``enhancing`` lesion columns (:mod:`bids_app.lesion_enhancement`)
STRUCTURAL = {
    "FLAIR": {"datatype": "anat", "suffix": "FLAIR", "part": ["mag", None]},
    "T1w": {"datatype": "anat", "suffix": "T1w", "ceagent": None, "part": ["mag", None]},
    "T2w": {"datatype": "anat", "suffix": "T2w", "part": ["mag", None]},
    "ceT1w": {
        "datatype": "anat",
        "suffix": "T1w",
        "ceagent": list(GADOLINIUM_LABELS),
        "part": ["mag", None],
    },
}


@dataclass(frozen=True)
class ModelRun:
    """One fit to run: a model with the collections of one acquisition set."""

    model: type[QMRIModel]
    collections: Mapping[str, Collection]
    entities: Mapping[str, Any] = field(default_factory=dict)
    #: the input set used (stacked on the last axis in this order)
    stacked: tuple[str, ...] = ()

    @property
    def sources(self) -> list[str]:
        """All input image paths, in stacking order."""
        return [p for c in self.collections.values() for p in c.paths]


def _matches(entities: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    for key, want in filters.items():
        have = entities.get(key)
        wants = want if isinstance(want, (list, tuple)) else [want]
        if have not in wants and not (have is not None and str(have) in map(str, wants)):
            return False
    return True


def find_volumes(
    layout: BIDSLayout,
    subject: str,
    session: str | None,
    query: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    dataset: str = "raw",
) -> list[Volume]:
    """NIfTI files of one subject/session matching ``query`` (+ ``extra`` filters).

    ``suffix`` and ``datatype`` are passed to pybids; every other key is matched in Python
    so that ``None`` means "entity absent" and lists mean "any of".

    Raises
    ------
    MetadataError
        If a matching image is described by a sidecar that is not a readable JSON object
        (see :func:`bids_app.bids.layout.invalid_sidecars`).
    """
    base = {k: query[k] for k in ("suffix", "datatype") if k in query}
    rest = {k: v for k, v in query.items() if k not in base and k != "extension"}
    rest.update(extra or {})
    kw: dict[str, Any] = {"subject": subject, "extension": list(NIFTI), **base}
    files = layout.get(**kw)
    invalid = invalid_sidecars(layout)
    out = []
    for f in sorted(files, key=lambda f: f.path):
        ent = f.get_entities()
        if ent.get("session") != session:
            continue
        if not _matches(ent, rest):
            continue
        for sidecar, reason in invalid.items():
            if sidecar_applies(sidecar, f.path):
                raise MetadataError(sidecar, "JSON", reason, f"a readable JSON object ({f.path})")
        meta = dict(layout.get_metadata(f.path))
        out.append(Volume(f.path, dict(ent), meta, dataset=dataset, root=str(layout.root)))
    return out


def _name_parts(name: str) -> tuple[set[str], str]:
    for ext in (".nii.gz", ".nii", ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    *pairs, suffix = name.split("_")
    return set(pairs), suffix


def sidecar_applies(sidecar: str | Path, image: str | Path) -> bool:
    """Whether a JSON sidecar describes an image under the BIDS inheritance principle.

    It does when it sits in the image's folder or a parent folder, has the same suffix, and
    its entities are a subset of the image's.

    Examples
    --------
    >>> sidecar_applies('/d/sub-01/sub-01_VFA.json', '/d/sub-01/anat/sub-01_flip-1_VFA.nii.gz')
    True
    >>> sidecar_applies('/d/sub-01/anat/sub-01_flip-2_VFA.json',
    ...                 '/d/sub-01/anat/sub-01_flip-1_VFA.nii.gz')
    False
    """
    sidecar, image = Path(sidecar), Path(image)
    if sidecar.parent not in image.parents:
        return False
    side_ents, side_suffix = _name_parts(sidecar.name)
    image_ents, image_suffix = _name_parts(image.name)
    return side_suffix == image_suffix and side_ents <= image_ents


def _identity(vol: Volume, index_entities: tuple[str, ...]) -> tuple:
    skip = _NON_IDENTIFYING | set(index_entities)
    return tuple(sorted((k, str(v)) for k, v in vol.entities.items() if k not in skip))


def shared_entities(volumes: list[Volume]) -> dict[str, Any]:
    """Entities with one value across ``volumes`` (NiPreps DerivativesDataSink rule)."""
    if not volumes:
        return {}
    first = dict(volumes[0].entities)
    return {
        k: v
        for k, v in first.items()
        if k not in _NON_IDENTIFYING and all(x.entities.get(k) == v for x in volumes[1:])
    }


def pairing_key(vol: Volume, spec: InputSpec) -> tuple:
    """The entities that pair a file with the lead input's collection.

    Every identifying entity except the ones the input's own query fixes (``part``,
    ``mt``...) and its index entities: ``acq``, ``run``, ``rec``, ``dir``... Files of a second
    input belong to the lead collection whose pairing key they share.
    """
    skip = _NON_IDENTIFYING | set(spec.index_entities) | set(spec.query)
    return tuple(sorted((k, str(v)) for k, v in vol.entities.items() if k not in skip))


def _find_input(
    layouts: InputLayouts, subject: str, session: str | None, spec: InputSpec, extra
) -> list[Volume]:
    """Files of one input: the derivatives first when the input allows it, then raw."""
    if spec.from_derivatives:
        for name, layout in layouts.derivatives.items():
            vols = [
                v
                for v in find_volumes(layout, subject, session, spec.query, extra, dataset=name)
                if v.entities.get("space") in (None, "orig")
            ]
            if vols:
                return vols
    return find_volumes(layouts.raw, subject, session, spec.query, extra)


@dataclass(frozen=True)
class InputLayouts:
    """The raw layout and the ``--derivatives`` layouts inputs may come from."""

    raw: BIDSLayout
    derivatives: Mapping[str, BIDSLayout] = field(default_factory=dict)


def resolve_model(
    layout: BIDSLayout | InputLayouts,
    model: type[QMRIModel],
    subject: str,
    session: str | None,
    filters: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    unused: list[str] | None = None,
) -> list[ModelRun]:
    """All fits of ``model`` for one subject/session (one per lead collection), possibly none.

    The lead input (first of the input set) is grouped into collections by its identifying
    entities; every other input contributes only the files that share the lead collection's
    :func:`pairing_key` (so ``acq-sag`` magnitudes are paired with ``acq-sag`` phases).

    Parameters
    ----------
    unused : list of str, optional
        Receives one line per lead collection that could not be paired (the reason).

    Raises
    ------
    MetadataError
        From the metadata checks of a collection that exists but is wrong.
    """
    layouts = layout if isinstance(layout, InputLayouts) else InputLayouts(layout)
    filters = filters or {}
    specs = {s.name: s for s in model.inputs}
    for names in model.input_sets():
        found = {
            n: _find_input(layouts, subject, session, specs[n], filters.get(n)) for n in names
        }
        if not all(found.values()):
            continue
        lead = specs[names[0]]
        groups: dict[tuple, list[Volume]] = {}
        for vol in found[names[0]]:
            groups.setdefault(_identity(vol, lead.index_entities), []).append(vol)
        # optional extras of this set: not the inputs of the other alternative sets (a
        # TB1map run must not load, nor share a grid with, the subject's TB1TFL)
        other_sets = {n for ns in model.input_sets() if ns != names for n in ns}
        optional = [s for s in model.inputs if s.optional and s.name not in {*names, *other_sets}]
        extra_found = {
            s.name: _find_input(layouts, subject, session, s, filters.get(s.name))
            for s in optional
        }
        runs = []
        for vols in groups.values():
            key = pairing_key(vols[0], lead)
            colls = {names[0]: build_collection(lead, vols, _layout_of(layouts, vols))}
            missing = []
            for n in (*names[1:], *extra_found):
                pool = found.get(n) or extra_found.get(n) or []
                paired = [v for v in pool if pairing_key(v, specs[n]) == key]
                if paired:
                    colls[n] = build_collection(specs[n], paired, _layout_of(layouts, paired))
                elif n in names:
                    missing.append(n)
            if missing:
                if unused is not None:
                    unused.append(
                        f"{model.name}: {Path(vols[0].path).name} (+{len(vols) - 1}) has no "
                        f"{'/'.join(missing)} input with the same {dict(key) or 'entities'}"
                    )
                continue
            # an entity the lead query fixes (MPM's acq-PDw) names the input's role, not the run
            ents = {
                k: v
                for k, v in shared_entities(vols).items()
                if not isinstance(lead.query.get(k), str) or k in ("datatype", "suffix")
            }
            runs.append(ModelRun(model, colls, ents, tuple(names)))
        return runs
    return []


def _layout_of(layouts: InputLayouts, vols: list[Volume]) -> BIDSLayout:
    return layouts.derivatives.get(vols[0].dataset, layouts.raw)


def find_structural(
    layout: BIDSLayout,
    subject: str,
    session: str | None,
    filters: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Volume]:
    """The structural images (FLAIR, T1w, T2w, ceT1w) of a subject/session; the first run of each.

    ``T1w`` never is a ``ce-`` image; ``ceT1w`` is a T1w whose ``ce-`` label is one of
    :data:`GADOLINIUM_LABELS` (``ce-gadolinium`` first when there are several).
    """
    filters = filters or {}
    out = {}
    for name, query in STRUCTURAL.items():
        vols = find_volumes(layout, subject, session, query, filters.get(name.lower()))
        vols.sort(key=lambda v: v.entities.get("ceagent") != "gadolinium")  # stable
        if vols:
            if len(vols) > 1:
                logger.info(
                    "sub-%s: %d %s images; using %s", subject, len(vols), name, vols[0].path
                )
            out[name] = vols[0]
    return out
