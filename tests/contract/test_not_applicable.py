"""A model that cannot use a valid collection is skipped with its reason; the rest go on."""

from __future__ import annotations

import logging

from tests.contract.conftest import region_rows


def test_short_mese_skips_mwf_and_keeps_mese_t2(subject, run_cli, caplog):
    """4 echoes are a valid MESE for the mono-exponential T2 but no myelin-water protocol
    (``mwf`` needs >= 8): mese_t2 is fitted, mwf is reported as not applicable, exit 0."""
    anat = subject / "sub-01" / "anat"
    for k in range(5, 17):
        for ext in (".nii.gz", ".json"):
            (anat / f"sub-01_echo-{k}_MESE{ext}").unlink()
    caplog.set_level(logging.INFO)
    code, out = run_cli("mese_t2", "mwf")
    assert code == 0
    assert "mwf: not applicable" in caplog.text
    assert "CPMG" in caplog.text
    assert (out / "sub-01" / "anat" / "sub-01_T2map.nii.gz").exists()
    assert not list(out.rglob("*MWFmap*"))
    assert not region_rows(out, "T2map").empty
