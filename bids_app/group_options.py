"""Options of the group level (``--group-column``, ``--covariates``, ``--harmonize`` ...).

Kept apart from :mod:`bids_app.group_stats` so that the command line can build and check
them without importing scipy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from bids_app.schema import CONTROL_LABELS, PATIENT_LABELS

#: ``--harmonize`` choices
HARMONIZE = ("none", "combat")
#: ``--longitudinal-registration`` choices
LONGITUDINAL_REGISTRATION = ("rigid", "none")


@dataclass(frozen=True)
class GroupOptions:
    """Settings of the group statistics and the longitudinal lesion tracking.

    Attributes
    ----------
    group_column : str
        ``participants.tsv`` column that tells patients from controls.
    patient_labels, control_labels : tuple of str
        Values of ``group_column`` read as patients / controls (case-insensitive); empty
        means the defaults of :data:`bids_app.schema.PATIENT_LABELS` / ``CONTROL_LABELS``.
    covariates : tuple of str
        ``participants.tsv`` columns adjusted for by ordinary least squares (numeric
        columns enter linearly, others as indicator variables, e.g. ``age sex``).
    harmonize : {'none', 'combat'}
        ``combat``: ComBat (Johnson et al. 2007; Fortin et al. 2018) of the region means
        across ``site_column`` through the ``neuroCombat`` package.
    site_column : str
        ``participants.tsv`` column naming the site or scanner.
    zscore_regions : tuple of str
        Regions whose per-patient z-scores against the controls are written.
    change_fraction : float
        A matched lesion is enlarging / shrinking when its volume changes by more than
        this fraction of its earlier volume ...
    change_voxels : float
        ... and by more than this many voxels (of the earlier session's grid).
    longitudinal_registration : {'rigid', 'none'}
        How the later session's lesion labels are brought onto the earlier session's
        grid: a rigid registration of the two reference images (dipy, mutual information),
        or the image affines only.
    """

    group_column: str = "group"
    patient_labels: tuple[str, ...] = ()
    control_labels: tuple[str, ...] = ()
    covariates: tuple[str, ...] = ()
    harmonize: str = "none"
    site_column: str = "site"
    zscore_regions: tuple[str, ...] = ("NAWM", "NAGM")
    change_fraction: float = 0.25
    change_voxels: float = 3.0
    longitudinal_registration: str = "rigid"

    def __post_init__(self):
        if self.harmonize not in HARMONIZE:
            raise ValueError(f"harmonize={self.harmonize!r}: expected one of {HARMONIZE}")
        if self.longitudinal_registration not in LONGITUDINAL_REGISTRATION:
            raise ValueError(
                f"longitudinal_registration={self.longitudinal_registration!r}: expected one "
                f"of {LONGITUDINAL_REGISTRATION}"
            )
        if not self.change_fraction >= 0 or not self.change_voxels >= 0:
            raise ValueError("change_fraction and change_voxels must be >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> GroupOptions:
        """Build from a mapping (e.g. ``RunConfig.group_options``); unknown keys raise.

        Raises
        ------
        ValueError
            Unknown key or invalid value.
        """
        values = dict(values or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown group option(s) {unknown}; expected some of {sorted(names)}"
            )
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def role(self, value) -> str | None:
        """'patient', 'control' or None for a value of :attr:`group_column`.

        Examples
        --------
        >>> GroupOptions(patient_labels=("RRMS",), control_labels=("HV",)).role("hv")
        'control'
        >>> GroupOptions().role("HC")
        'control'
        """
        v = str(value).strip().lower()
        pat = {s.lower() for s in self.patient_labels} or PATIENT_LABELS
        con = {s.lower() for s in self.control_labels} or CONTROL_LABELS
        return "patient" if v in pat else "control" if v in con else None
