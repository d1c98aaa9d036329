"""Typed options checked at start-up, faithful config.toml, producers ordered first."""

from __future__ import annotations

import pytest

from bids_app.config import RunConfig
from bids_app.models import REGISTRY
from bids_app.models.specs import Option, OutputSpec
from bids_app.participant import selected_models


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[b1]\nsmoothing_fwhm_mm = -1\n", "smoothing_fwhm_mm=-1"),
        ('[b1]\nsmoothing_fwhm_mm = "8"\n', "smoothing_fwhm_mm='8'"),
        ("[mese_t2]\ndrop_first_echo = 1\n", "drop_first_echo=1"),
        ('[vfa_t1]\nfit_method = "cubic"\n', "fit_method='cubic'"),
        ("[vfa_t1]\nfit_methd = 'linear'\n", "unknown option 'fit_methd'"),
    ],
)
def test_bad_option_is_exit_64_at_start_up(toml, fragment, run_cli, tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    code, out = run_cli("vfa_t1", extra=("--config", str(cfg)))
    assert code == 64
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err
    assert not (out / "sub-01").exists()  # refused before any subject ran


def test_option_types():
    opt = Option(8.0, float, range=(0, 50), unit="mm")
    assert opt.check("x", 4) == 4.0
    assert isinstance(opt.check("x", 4), float)
    for bad in (True, -0.1, 51, float("nan"), "8"):
        with pytest.raises(ValueError, match="x="):
            opt.check("x", bad)
    flag = Option(False, bool)
    assert flag.check("f", True) is True
    with pytest.raises(ValueError):
        flag.check("f", 1)


def test_config_toml_round_trip(run_cli, tmp_path):
    cfg = tmp_path / "given.toml"
    cfg.write_text('[vfa_t1]\nfit_method = "nonlinear"\n[b1]\nsmoothing_fwhm_mm = 4\n')
    code, out = run_cli("vfa_t1", extra=("--config", str(cfg)))
    assert code == 0
    (written,) = out.glob("logs/*/config.toml")
    text = written.read_text()
    assert 'fit_method = "nonlinear"' in text
    assert "smoothing_fwhm_mm = 4.0" in text
    assert "drop_first_echo = false" in text  # defaults recorded too
    again = tmp_path / "again"
    code2, out2 = run_cli("vfa_t1", extra=("--config", str(written), "-w", str(again)))
    assert code2 == 0
    (rewritten,) = [p for p in out2.glob("logs/*/config.toml") if p != written]
    strip = lambda t: t.split("[model_options]")[1]  # noqa: E731
    assert strip(rewritten.read_text()) == strip(text)


def test_producers_come_first(tmp_path):
    cfg = RunConfig(tmp_path, tmp_path / "o", tmp_path / "w", ("participant",))
    names = [m.name for m in selected_models(cfg)]
    for name in names:
        for req in REGISTRY[name].requires:
            if req.model in REGISTRY:  # the anatomy stage runs before every model
                assert names.index(req.model) < names.index(name)
    only = RunConfig(tmp_path, tmp_path / "o", tmp_path / "w", ("participant",), models=("mtsat",))
    assert [m.name for m in selected_models(only)] == ["b1", "mtsat"]
    none = RunConfig(
        tmp_path,
        tmp_path / "o",
        tmp_path / "w",
        ("participant",),
        models=("mtsat",),
        b1_policy="none",
    )
    assert [m.name for m in selected_models(none)] == ["mtsat"]


def test_output_entities_are_checked():
    with pytest.raises(ValueError, match="unknown entities"):
        OutputSpec("x", "dwimap", "1", entities={"space": "T1w"})
    assert OutputSpec("fa", "dwimap", "1", entities={"model": "tensor", "param": "fa"}).key == (
        "model-tensor_param-fa_dwimap"
    )
