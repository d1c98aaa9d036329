"""Stages of the participant workflow, wired together by :mod:`bids_app.participant`."""
