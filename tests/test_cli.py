"""Command line: exit codes of CONTRACT section 5, labels, aliases, --models list."""

import pytest

from bids_app.cli.parser import normalise_argv, parse_args
from bids_app.cli.run import main
from tests.bids_builder import vfa_spec, write_dataset
from tests.conftest import tree_digest


@pytest.fixture
def vfa_ds(tmp_path):
    return write_dataset(
        tmp_path / "bids", {"sub-01": vfa_spec("sub-01"), "sub-02": vfa_spec("sub-02")}
    )


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "msqmri" in capsys.readouterr().out


def test_models_list(capsys):
    assert main(["--models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("vfa_t1", "megre_r2star", "mese_t2", "mtr", "mtsat", "b1"):
        assert name in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["/nonexistent/bids", "/tmp/out", "participant"],
        ["{bids}", "{out}", "subject"],
        ["{bids}", "{out}", "participant", "--no-such-option"],
        ["{bids}", "{out}", "participant", "--models", "not_a_model"],
        ["{bids}", "{out}", "participant", "--nprocs", "0"],
        ["{bids}", "{bids}", "participant"],
        ["{bids}", "{bids}/out", "participant"],
    ],
)
def test_usage_errors_exit_64(argv, vfa_ds, tmp_path, capsys):
    argv = [a.format(bids=vfa_ds, out=tmp_path / "out") for a in argv]
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_labels_stripped_and_snake_case(vfa_ds, tmp_path):
    ns = parse_args(
        [
            str(vfa_ds),
            str(tmp_path / "o"),
            "participant",
            "group",
            "--participant_label",
            "sub-01",
            "02",
            "--session_label",
            "ses-a",
            "--skip_bids_validator",
        ]
    )
    assert ns.participant_label == ["01", "02"]
    assert ns.session_label == ["a"]
    assert ns.skip_bids_validation
    assert ns.analysis_level == ["participant", "group"]
    assert normalise_argv(["--participant_label=01"]) == ["--participant-label=01"]


def test_derivatives_inside_bids_allowed(vfa_ds):
    ns = parse_args([str(vfa_ds), str(vfa_ds / "derivatives" / "msqmri"), "participant"])
    assert ns.output_dir == vfa_ds / "derivatives" / "msqmri"


def test_unknown_label_exit_18(vfa_ds, tmp_path):
    before = tree_digest(vfa_ds)
    assert (
        main(
            [
                str(vfa_ds),
                str(tmp_path / "out"),
                "participant",
                "--participant-label",
                "99",
                "--skip-bids-validation",
            ]
        )
        == 18
    )
    assert tree_digest(vfa_ds) == before


def test_no_qmri_inputs_exit_66(tmp_path):
    # a BOLD series: no model of msqmri takes it
    ds = write_dataset(
        tmp_path / "bids", {"sub-01": {"func/sub-01_task-rest_bold": ({"TaskName": "rest"}, None)}}
    )
    assert main([str(ds), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == 66


def test_unwritable_output_exit_73(vfa_ds, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main([str(vfa_ds), str(blocker / "out"), "participant", "--skip-bids-validation"]) == 73


def test_missing_dataset_description_exit_64(tmp_path):
    ds = write_dataset(tmp_path / "bids", {"sub-01": vfa_spec()})
    (ds / "dataset_description.json").unlink()
    # with validation on (CONTRACT 5); --skip-bids-validation runs: tests/test_datalad_inputs.py
    assert main([str(ds), str(tmp_path / "out"), "participant"]) == 64


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"RepetitionTimeExcitation": 15}, "RepetitionTimeExcitation"),
        ({"FlipAngle": "3"}, "FlipAngle"),
    ],
)
def test_metadata_errors_exit_65_name_file_and_key(tmp_path, caplog, overrides, key):
    spec = vfa_spec()
    stem = "anat/sub-01_flip-1_VFA"
    spec[stem] = ({**spec[stem][0], **overrides}, None)
    ds = write_dataset(tmp_path / "bids", {"sub-01": spec})
    before = tree_digest(ds)
    assert main([str(ds), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == 65
    text = caplog.text
    assert "sub-01_flip-1_VFA.json" in text
    assert key in text
    assert tree_digest(ds) == before


def test_echo_time_in_ms_exit_65(tmp_path, caplog):
    spec = {
        f"anat/sub-01_echo-{i}_MEGRE": ({"EchoTime": te}, None)
        for i, te in enumerate((3.5, 7.0, 10.5), start=1)
    }
    ds = write_dataset(tmp_path / "bids", {"sub-01": spec})
    assert main([str(ds), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == 65
    assert "EchoTime" in caplog.text
    assert "milliseconds" in caplog.text


def test_non_model_tables_of_config_reach_the_run(vfa_ds, tmp_path):
    """``[lesionseg]`` in --config is kept in the run's options (it was dropped once)."""
    from bids_app.cli.run import build_config

    cfg_file = tmp_path / "opts.toml"
    cfg_file.write_text("[lesionseg]\nenabled = false\n\n[vfa_t1]\nfit_method = 'linear'\n")
    ns = parse_args([str(vfa_ds), str(tmp_path / "o"), "participant", "--config", str(cfg_file)])
    opts = build_config(ns).model_options
    assert opts["lesionseg"] == {"enabled": False}
    assert opts["vfa_t1"]["fit_method"] == "linear"
    assert "mtr" in opts  # every model keeps its defaults
