"""Participant and group HTML reports (failures are logged by the caller, never fatal).

The pages are rendered from the jinja2 templates in ``bids_app/reports/templates``; see
:mod:`bids_app.reports.participant` and :mod:`bids_app.reports.group`.
"""

from __future__ import annotations

from bids_app.reports.group import group_report
from bids_app.reports.participant import _rim_candidates, participant_report

__all__ = ["_rim_candidates", "group_report", "participant_report"]
