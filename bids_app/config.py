"""The frozen run configuration, passed explicitly (no module-level singleton)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bids_app.errors import UsageError


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; dumped to ``logs/<run>/config.toml``."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    analysis_level: tuple[str, ...]
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    derivatives: Mapping[str, Path] = field(default_factory=dict)
    bids_filters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    b1_policy: str = "auto"
    reference: str = "auto"
    registration: str = "rigid"
    #: registration of a collection's separately acquired volumes to its first (``rigid``)
    volume_registration: str = "rigid"
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    skip_bids_validation: bool = False
    reports: bool = True
    overwrite: bool = False
    verbosity: int = 0
    #: group-level settings (:class:`bids_app.group_options.GroupOptions` fields)
    group_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chunk_size(self) -> int:
        """Voxels per fitting chunk from the memory budget (about 2 kB per voxel-chunk)."""
        if not self.mem_gb:
            return 65536
        return int(min(max(self.mem_gb * 1e9 / 8 / 2048 / max(self.nprocs, 1), 4096), 1e6))

    def to_toml(self) -> str:
        """The configuration as TOML text (paths as strings, empty values omitted)."""
        data = asdict(self)
        lines = ["[execution]"]
        tables = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                tables[key] = value
            elif value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        for name, table in tables.items():
            if not table:
                continue
            lines.append(f"\n[{name}]")
            for key, value in table.items():
                if isinstance(value, Mapping):
                    inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
                    lines.append(f"{_toml_key(key)} = {{ {inner} }}")
                else:
                    lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else f'"{key}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def load_model_options(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read ``[model] option = value`` tables from a TOML file and validate them.

    Besides the models, a ``[lesionseg]`` table sets the built-in lesion segmentation
    (:data:`bids_app.lesionseg.LESION_OPTIONS`, and ``enabled = false`` to turn it off)
    and a ``[brainmask]`` table the computed brain mask
    (:data:`bids_app.brain_extraction.BRAINMASK_OPTIONS`).
    A ``logs/<run>/config.toml`` written by a run is accepted too: its ``[model_options]``
    table is read (the other run settings come from the command line).

    Raises
    ------
    UsageError
        Unreadable file, unknown model or option, or invalid value (exit 64).
    """
    if path is None:
        return {}
    from bids_app.models import get_model

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{path}: cannot read the TOML configuration ({err})") from None
    if isinstance(data.get("execution"), dict):  # a logs/<run>/config.toml passed back
        data = data.get("model_options", {})
    out = {}
    for name, opts in data.items():
        if name == "lesionseg":
            out[name] = _lesionseg_options(path, opts)
            continue
        if name == "brainmask":
            out[name] = _brainmask_options(path, opts)
            continue
        try:
            model = get_model(name)
        except KeyError as err:
            raise UsageError(f"{path}: [{name}]: {err.args[0]}") from None
        if not isinstance(opts, dict):
            raise UsageError(f"{path}: [{name}] must be a table of options")
        try:
            model.check_options(opts)
        except ValueError as err:
            raise UsageError(f"{path}: {err}") from None
        out[name] = dict(opts)
    return out


def _brainmask_options(path: Path, opts: Any) -> dict[str, Any]:
    """The ``[brainmask]`` table (:data:`bids_app.brain_extraction.BRAINMASK_OPTIONS`)."""
    from bids_app import brain_extraction

    if not isinstance(opts, dict):
        raise UsageError(f"{path}: [brainmask] must be a table of options")
    try:
        brain_extraction.check_options(opts)
    except ValueError as err:
        raise UsageError(f"{path}: [brainmask] {err}") from None
    return dict(opts)


def _lesionseg_options(path: Path, opts: Any) -> dict[str, Any]:
    """The ``[lesionseg]`` table, validated (exit 64 on a bad key or value)."""
    from bids_app import lesionseg

    if not isinstance(opts, dict):
        raise UsageError(f"{path}: [lesionseg] must be a table of options")
    enabled = opts.get("enabled", True)
    if not isinstance(enabled, bool):
        raise UsageError(f"{path}: [lesionseg] enabled must be true or false")
    try:
        lesionseg.check_options({k: v for k, v in opts.items() if k != "enabled"})
    except ValueError as err:
        raise UsageError(f"{path}: [lesionseg] {err}") from None
    return dict(opts)
