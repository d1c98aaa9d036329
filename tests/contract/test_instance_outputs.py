"""Options that change what a model writes or consumes reach the pipeline (mese_t2 EPG)."""

from __future__ import annotations

import json


def _side(out, name):
    return json.loads((out / "sub-01" / "anat" / f"sub-01_{name}.json").read_text())


def test_epg_writes_the_angle_map_and_uses_b1_only_when_asked(subject, run_cli, tmp_path):
    """``fit_method='epg'`` adds the refocusing-angle map; ``refocusing_angle='b1'`` makes
    the run consume the B1 map (recorded Applied); the mono-exponential fit does not."""
    code, out = run_cli("mese_t2")
    assert code == 0
    assert not list(out.rglob("*MESErefocusing_FAmap*"))
    record = _side(out, "T2map")["B1Correction"]
    assert record["Applied"] is False
    assert "does not use B1" in record["Reason"]

    config = tmp_path / "epg.toml"
    config.write_text('[mese_t2]\nfit_method = "epg"\nrefocusing_angle = "b1"\n')
    code, out = run_cli("mese_t2", extra=("--config", str(config), "--overwrite"))
    assert code == 0
    angle = out / "sub-01" / "anat" / "sub-01_desc-MESErefocusing_FAmap.nii.gz"
    assert angle.exists()
    assert _side(out, "T2map")["B1Correction"]["Applied"] is True
    assert _side(out, "desc-MESErefocusing_FAmap")["Units"] == "degree"
