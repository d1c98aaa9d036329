"""Writing the derivative dataset: BIDS names from entities, sidecars, dataset description.

Names are built from the source entities plus new ones (``space``, ``label``, ``desc``) in
the BIDS entity order, never by string concatenation of file names (NiPreps
``DerivativesDataSink`` rule: keep the entities shared by all sources).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_app import __version__
from bids_app.io import link_or_copy, save_nifti, save_text

logger = logging.getLogger(__name__)

#: BIDS entity order (key in pybids, key in file names)
ENTITY_ORDER = (
    ("subject", "sub"),
    ("session", "ses"),
    ("task", "task"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("direction", "dir"),
    ("run", "run"),
    ("echo", "echo"),
    ("flip", "flip"),
    ("inv", "inv"),
    ("mt", "mt"),
    ("part", "part"),
    ("space", "space"),
    ("label", "label"),
    ("model", "model"),  # BEP016 (diffusion derivatives)
    ("param", "param"),
    ("desc", "desc"),
    ("from", "from"),  # transforms: <source>_from-<x>_to-<y>_mode-image_xfm.txt
    ("to", "to"),
    ("mode", "mode"),
)
#: entities that index volumes within a collection and never name a derived map
INDEX_ENTITIES = {"echo", "flip", "inv", "mt", "part"}
#: files that are not BIDS derivatives yet, listed in .bidsignore
BIDSIGNORE = (
    "logs/",
    "*.html",
    "**/figures",
    "*_stats.tsv",
    "*_stats.json",
    "group_*",
    "*_dwimap.*",
    "*_xfm.txt",
    "*_desc-rmse_*",
    "*_desc-localfield_*",  # QSM field maps (a fieldmap suffix is not BIDS under anat/)
    "*_desc-totalfield_*",
    "**/perf",  # CBF/ATT, DSC and DCE maps: no BIDS derivative suffixes yet (ASL BEP pending)
    # maps of quantities BIDS has no suffix for (tests/test_derivatives.py keeps this true)
    "*_InvEffmap.*",
    "*_IEWFmap.*",
    "*_FAmap.*",
    "*_SNRmap.*",
    "*_residual.*",
)


def bids_uri(dataset: str, relpath: str | Path) -> str:
    """A BIDS URI ``bids:<dataset>:<relpath>`` (``dataset`` is a DatasetLinks key)."""
    return f"bids:{dataset}:{Path(relpath).as_posix()}"


def build_name(entities: Mapping[str, Any], suffix: str, extension: str = ".nii.gz") -> str:
    """A BIDS file name from entities in the specification's order.

    Parameters
    ----------
    entities : mapping
        pybids entity names (``subject``, ``session``, ``acquisition`` ...) to values; entities
        with value ``None`` are left out.
    suffix : str
    extension : str

    Examples
    --------
    >>> build_name({'subject': '01', 'desc': 'rmse', 'session': 'a'}, 'T1map')
    'sub-01_ses-a_desc-rmse_T1map.nii.gz'
    """
    parts = [
        f"{short}-{entities[long]}"
        for long, short in ENTITY_ORDER
        if entities.get(long) is not None
    ]
    return "_".join([*parts, suffix]) + extension


def subject_dir(out: Path, entities: Mapping[str, Any], datatype: str) -> Path:
    """``OUTPUT_DIR/sub-<l>[/ses-<s>]/<datatype>``."""
    d = out / f"sub-{entities['subject']}"
    if entities.get("session"):
        d = d / f"ses-{entities['session']}"
    return d / datatype


def naming_entities(entities: Mapping[str, Any], **new: Any) -> dict[str, Any]:
    """Source entities without index/descriptive ones, plus ``new`` entities."""
    keep = {
        k: v
        for k, v in entities.items()
        if k in dict(ENTITY_ORDER)
        and k not in INDEX_ENTITIES
        and k not in ("space", "label", "model", "param", "desc")
    }
    keep.update(new)
    return keep


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """Deterministic JSON text (sorted keys kept as given, 2-space indent)."""
    return json.dumps(_jsonable(obj), indent=2) + "\n"


def write_image(
    out: Path,
    datatype: str,
    entities: Mapping[str, Any],
    suffix: str,
    data: np.ndarray,
    affine: np.ndarray,
    sidecar: Mapping[str, Any],
    *,
    dtype=np.float32,
    header=None,
) -> Path:
    """Write ``<name>.nii.gz`` and its ``.json`` sidecar; return the image path."""
    d = subject_dir(out, entities, datatype)
    path = d / build_name(entities, suffix)
    save_nifti(path, data, affine, dtype=dtype, header=header)
    save_text(path.with_name(path.name.replace(".nii.gz", ".json")), dumps(sidecar))
    return path


def link_image(
    out: Path,
    datatype: str,
    entities: Mapping[str, Any],
    suffix: str,
    source: Path,
    sidecar: Mapping[str, Any],
) -> Path:
    """As :func:`write_image` for data identical to the image ``source``: a hard link.

    See :func:`bids_app.io.link_or_copy` (a copy where links are not possible).
    """
    d = subject_dir(out, entities, datatype)
    path = d / build_name(entities, suffix)
    link_or_copy(source, path)
    save_text(path.with_name(path.name.replace(".nii.gz", ".json")), dumps(sidecar))
    return path


def write_table(path: Path, table: pd.DataFrame, columns: Mapping[str, str]) -> None:
    """Write a TSV (``n/a`` for missing) and its JSON column dictionary."""
    text = table.to_csv(
        sep="\t", index=False, na_rep="n/a", float_format="%.6g", lineterminator="\n"
    )
    save_text(path, text)
    save_text(
        path.with_suffix(".json"),
        dumps({c: {"Description": columns.get(c, c)} for c in table.columns}),
    )


def dataset_description(
    bids_dir: Path, source_name: str | None = None, links: Mapping[str, Path] | None = None
) -> dict[str, Any]:
    """The derivative ``dataset_description.json`` content (deterministic).

    ``links`` are the ``--derivatives`` datasets (``bids:<name>:`` URIs in the sidecars).
    """
    extra = {k: Path(v).resolve().as_uri() for k, v in sorted((links or {}).items())}
    return {
        "Name": "msqmri derivatives" + (f" of {source_name}" if source_name else ""),
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "msqmri",
                "Version": __version__,
                "Description": "Quantitative MRI maps and MS lesion / normal-appearing tissue "
                "metrics",
                "CodeURL": "https://pypi.org/project/msqmri/",
                "Container": {"Type": "docker", "Tag": f"msqmri/msqmri:{__version__}"},
            }
        ],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
        "DatasetLinks": {**extra, "raw": Path(bids_dir).resolve().as_uri()},
    }


def init_output(out: Path, bids_dir: Path, links: Mapping[str, Path] | None = None) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` atomically.

    Safe when parallel participant jobs start together: every writer writes the same bytes.
    """
    try:
        name = json.loads((bids_dir / "dataset_description.json").read_text()).get("Name")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    desc = dataset_description(bids_dir, name, links)
    save_text(out / "dataset_description.json", dumps(desc))
    save_text(out / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


def relpaths(paths: Sequence[str], root: Path) -> list[str]:
    """Paths relative to ``root`` as posix strings (for BIDS URIs)."""
    return [Path(p).resolve().relative_to(Path(root).resolve()).as_posix() for p in paths]
