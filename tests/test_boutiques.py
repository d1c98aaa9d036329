"""The Boutiques descriptor (``boutiques.json``) agrees with the command-line parser.

Every input id is a parser ``dest`` and vice versa (but for the template's second
``[OUTPUT_DIR]`` input). The descriptor follows the Boutiques bids-app template
(``boutiques/templates/bids-app.json``) and passes ``bosh validate --bids``: ``mkdir -p
[OUTPUT_DIR];`` first, and ``[OUTPUT_DIR]`` filled from two mutually exclusive inputs, the
String ``output_dir`` and the File ``participant_level_analysis_dir``. Boutiques 0.5
substitutes inputs in order and an absent input deletes the shared key, so the File form never
reaches the command line under bosh 0.5 (``test_bosh_drops_the_file_form_of_output_dir``, a
strict xfail that turns into a failure once Boutiques fixes it); the String form works at both
levels.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

import bids_app
from bids_app.cli.parser import build_parser, normalise_argv, parse_args
from bids_app.errors import MsqmriError

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "boutiques.json"
DOCKERFILE = ROOT / "Dockerfile"
INVOCATION = Path(__file__).parent / "data" / "boutiques_invocation.json"
#: parser actions that are not inputs of a run
NOT_INPUTS = {"help", "version"}
#: descriptor inputs that are another form of a parser argument (the bids-app template pair)
ALIASES = {"participant_level_analysis_dir": "output_dir"}
#: inputs given with a command-line flag (each is checked against the parser)
FLAGGED = (
    "participant_label",
    "session_label",
    "bids_filter_file",
    "derivatives",
    "models",
    "b1",
    "reference",
    "registration",
    "volume_registration",
    "config",
    "work_dir",
    "nprocs",
    "omp_nthreads",
    "mem_gb",
    "group_column",
    "patient_labels",
    "control_labels",
    "covariates",
    "harmonize",
    "site_column",
    "lesion_change_fraction",
    "lesion_change_voxels",
    "longitudinal_registration",
    "skip_bids_validation",
    "no_reports",
    "overwrite",
)


def _boutiques():
    return pytest.importorskip(
        "boutiques", reason="boutiques is not installed (pip install -e '.[test]')"
    )


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


@pytest.fixture(scope="module")
def inputs(descriptor) -> dict[str, dict]:
    return {inp["id"]: inp for inp in descriptor["inputs"]}


@pytest.fixture(scope="module")
def actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in build_parser()._actions if a.dest not in NOT_INPUTS}


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads(INVOCATION.read_text())


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A cwd holding every path the example invocation names (relative paths)."""
    (tmp_path / "bids" / "derivatives" / "lesions").mkdir(parents=True)
    (tmp_path / "filter.json").write_text(json.dumps({"flair": {"acquisition": "3D"}}))
    (tmp_path / "options.toml").write_text("[vfa_t1]\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _argv_values(value) -> list[str]:
    if isinstance(value, bool):
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _simulate(invocation: dict, tmp_path: Path) -> list[str]:
    """Run ``bosh exec simulate`` on ``invocation``; return the msqmri argv (no program)."""
    boutiques = _boutiques()
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    out = boutiques.bosh(["exec", "simulate", "-i", str(path), str(DESCRIPTOR)])
    mkdir, sep, command = out.shell_command.partition("; ")
    assert sep, out.shell_command
    assert shlex.split(mkdir)[:2] == ["mkdir", "-p"]
    argv = shlex.split(command)
    assert argv[0] == "msqmri"
    return argv[1:]


def test_identity(descriptor):
    assert descriptor["name"] == "msqmri"
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["tool-version"] == bids_app.__version__
    image = descriptor["container-image"]
    assert image["type"] == "docker"
    assert image["image"].endswith(f":{bids_app.__version__}")
    assert descriptor["command-line"].startswith(
        "mkdir -p [OUTPUT_DIR]; msqmri [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] "
        "[PARTICIPANT_LABEL] [SESSION_LABEL] "
    )
    assert [o["path-template"] for o in descriptor["output-files"]] == ["[OUTPUT_DIR]"]


def test_dockerfile_agrees():
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["msqmri"]' in text
    assert f'org.opencontainers.image.version="{bids_app.__version__}"' in text


def test_dockerfile_pins_every_dependency():
    pins = {
        re.sub(r"[-_.]+", "-", name).lower()
        for name in re.findall(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)==[0-9][^\s\\]*", DOCKERFILE.read_text()
        )
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {
        re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", dep).group()).lower()
        for dep in project["dependencies"]
    }
    assert needed <= pins, f"Dockerfile: pin {sorted(needed - pins)}"
    assert "bids-validator-deno" in pins


def test_every_dest_is_an_input_and_back(inputs, actions):
    assert set(actions) == set(inputs) - set(ALIASES)
    for alias, dest in ALIASES.items():
        assert inputs[alias]["value-key"] == inputs[dest]["value-key"]


def test_value_keys_appear_once_in_command_line(descriptor, inputs):
    keys = [inp["value-key"] for i, inp in inputs.items() if i not in ALIASES]
    assert len(set(keys)) == len(keys)
    msqmri = descriptor["command-line"].partition("; ")[2]
    for key in keys:
        assert msqmri.count(key) == 1, key


def test_choices_match_parser(inputs, actions):
    for dest, action in actions.items():
        if action.choices is not None:
            assert inputs[dest].get("value-choices") == list(action.choices), dest


def test_model_choices_are_the_registry(inputs):
    from bids_app.models import model_names

    assert sorted(inputs["models"]["value-choices"]) == sorted(model_names()), (
        "boutiques.json: inputs 'models' value-choices must list the model registry"
    )


def test_kinds_match_parser(inputs, actions):
    for dest, action in actions.items():
        inp = inputs[dest]
        if isinstance(action, argparse._StoreTrueAction):
            assert inp["type"] == "Flag", dest
        elif isinstance(action, argparse._CountAction):
            assert inp["type"] == "String", dest
            assert "command-line-flag" not in inp, dest
        else:
            assert inp["type"] != "Flag", dest
            assert inp.get("list", False) == (action.nargs in ("+", "*")), dest
        # the template's output pair: each optional, one of the two required (a group)
        optional = bool(action.option_strings) or dest in ALIASES.values()
        assert inp["optional"] is optional, dest
        if "default-value" in inp:
            assert inp["default-value"] == action.default, dest


def test_example_invocation_covers_every_input(inputs, example):
    assert set(example) == set(inputs) - set(ALIASES)


def test_output_pair_is_a_required_exclusive_group(descriptor):
    (group,) = descriptor["groups"]
    assert set(group["members"]) == set(ALIASES) | set(ALIASES.values())
    assert group["mutually-exclusive"]
    assert group["one-is-required"]


@pytest.mark.parametrize("input_id", FLAGGED)
def test_flag_is_accepted_by_parser(input_id, inputs, actions, example, workspace):
    inp = inputs[input_id]
    argv = ["bids", "out", "participant", inp["command-line-flag"]]
    argv += _argv_values(example[input_id])
    ns, extra = build_parser().parse_known_args(normalise_argv(argv))
    assert extra == []
    assert getattr(ns, input_id) != actions[input_id].default


def test_every_flagged_input_is_tested(inputs):
    assert {i for i, inp in inputs.items() if "command-line-flag" in inp} == set(FLAGGED)


@pytest.mark.parametrize("choice", ["-v", "-vv"])
def test_verbose_choices_count(choice, inputs, workspace):
    assert choice in inputs["verbose"]["value-choices"]
    ns = build_parser().parse_args(["bids", "out", "participant", choice])
    assert ns.verbose == len(choice) - 1


def test_error_codes_are_the_exceptions(descriptor):
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    expected = {MsqmriError.exit_code} | {c.exit_code for c in subclasses(MsqmriError)}
    assert {e["code"] for e in descriptor["error-codes"]} == expected


def test_bosh_validate():
    boutiques = _boutiques()
    boutiques.bosh(["validate", str(DESCRIPTOR)])


def test_bosh_validate_bids():
    """CBRAIN's check of the bids-app template (command line, OUTPUT_DIR pair, one output)."""
    boutiques = _boutiques()
    boutiques.bosh(["validate", "--bids", str(DESCRIPTOR)])


@pytest.mark.xfail(
    reason="Boutiques 0.5: an absent input listed first (output_dir) deletes the shared "
    "[OUTPUT_DIR] key, so the File form of the pair never reaches the command line",
    strict=True,
)
def test_bosh_drops_the_file_form_of_output_dir(workspace):
    (workspace / "out").mkdir()
    invocation = {
        "bids_dir": "bids",
        "participant_level_analysis_dir": "out",
        "analysis_level": ["group"],
    }
    argv = _simulate(invocation, workspace)
    assert parse_args(argv).output_dir == workspace / "out"


def test_bosh_simulate_example_is_accepted(example, workspace):
    argv = _simulate(example, workspace)
    ns = parse_args(argv)
    assert ns.bids_dir == workspace / "bids"
    assert ns.output_dir == workspace / "out"
    assert ns.analysis_level == ["participant", "group"]
    assert ns.participant_label == ["01", "02"]
    assert ns.session_label == ["01"]
    assert ns.bids_filter_file == {"flair": {"acquisition": "3D"}}
    assert ns.derivatives == [("lesions", workspace / "bids" / "derivatives" / "lesions")]
    assert ns.models == example["models"]
    assert (ns.b1, ns.reference) == (example["b1"], example["reference"])
    assert ns.config == Path("options.toml")
    assert ns.work_dir == Path("work")
    assert (ns.nprocs, ns.omp_nthreads, ns.mem_gb) == (2, 2, 1.5)
    assert (ns.skip_bids_validation, ns.no_reports, ns.overwrite) == (True, True, True)
    assert ns.verbose == 2


def test_bosh_simulate_minimal_group_level(workspace):
    invocation = {"bids_dir": "bids", "output_dir": "out", "analysis_level": ["group"]}
    argv = _simulate(invocation, workspace)
    ns = parse_args(argv)
    assert ns.output_dir == workspace / "out"
    assert ns.analysis_level == ["group"]
    # only defaults were added, and they are the parser's
    assert parse_args(["bids", "out", "group"]) == ns
