"""Wrong sidecar metadata: exit 65 and one line naming file, key, value and what was expected.

Decisions (CONTRACT 2.1 and 5): msqmri never guesses units or repairs values. A key that is
missing, null, of the wrong JSON type, in another unit (ms for s, radians for degrees), out
of range, duplicated within a collection (two echoes with one ``EchoTime``) or inconsistent
across it (``RepetitionTimeExcitation`` of a VFA) fails the subject with exit 65 before any
map is written, and the input dataset is never modified. A sidecar that is not a readable
JSON object fails only the subject whose images it describes (BIDS inheritance included);
one outside the subject folders fails the whole run, as every subject depends on it.
"""

from __future__ import annotations

import os

import pytest

A = "sub-01/anat/"
VFA2 = A + "sub-01_flip-2_VFA.json"

# (id, sidecar, keys to drop, new values, models, fragments of the error line)
CASES = [
    ("missing-key", VFA2, ("FlipAngle",), {}, ("vfa_t1",), ("FlipAngle=None", "be present")),
    (
        "missing-key-and-alias",
        VFA2,
        ("RepetitionTimeExcitation", "RepetitionTime"),
        {},
        ("vfa_t1",),
        ("RepetitionTimeExcitation=None", "be present", "'RepetitionTime'"),
    ),
    # pybids drops null values: null is reported as missing
    ("null", VFA2, (), {"FlipAngle": None}, ("vfa_t1",), ("FlipAngle=None", "be present")),
    (
        "echo-time-in-ms",
        A + "sub-01_echo-2_part-mag_MEGRE.json",
        (),
        {"EchoTime": 8.0},
        ("megre_r2star",),
        ("EchoTime=8.0", "milliseconds"),
    ),
    (
        "mese-echo-time-in-ms",
        A + "sub-01_echo-3_MESE.json",
        (),
        {"EchoTime": 30},
        ("mese_t2",),
        ("EchoTime=30", "milliseconds"),
    ),
    (
        "repetition-time-in-ms",
        A + "sub-01_flip-1_VFA.json",
        (),
        {"RepetitionTimeExcitation": 15, "RepetitionTime": 15},
        ("vfa_t1",),
        ("RepetitionTimeExcitation=15", "milliseconds"),
    ),
    (
        "flip-angle-in-radians",
        VFA2,
        (),
        {"FlipAngle": 0.13962634},  # 8 degrees
        ("vfa_t1",),
        ("FlipAngle=0.13962634", "radians"),
    ),
    (
        "mts-flip-angle-in-radians",
        A + "sub-01_flip-2_mt-off_MTS.json",
        (),
        {"FlipAngle": 0.34906585},  # 20 degrees
        ("mtsat",),
        ("FlipAngle=0.34906585", "radians"),
    ),
    (
        "zero-echo-time",
        A + "sub-01_echo-1_part-mag_MEGRE.json",
        (),
        {"EchoTime": 0},
        ("megre_r2star",),
        ("EchoTime=0", "seconds in"),
    ),
    (
        "not-finite",
        A + "sub-01_echo-1_part-mag_MEGRE.json",
        (),
        {"EchoTime": float("nan")},  # Python's json writes and reads NaN
        ("megre_r2star",),
        ("EchoTime=nan", "finite"),
    ),
    ("string-angle", VFA2, (), {"FlipAngle": "8"}, ("vfa_t1",), ("FlipAngle='8'", "degrees")),
    (
        "string-time",
        A + "sub-01_echo-1_part-mag_MEGRE.json",
        (),
        {"EchoTime": "0.004"},
        ("megre_r2star",),
        ("EchoTime='0.004'", "a number in seconds"),
    ),
    (
        "string-boolean",
        A + "sub-01_mt-on_MTR.json",
        (),
        {"MTState": "true"},
        ("mtr",),
        ("MTState='true'", "boolean"),
    ),
    (
        "duplicated-echo",
        A + "sub-01_echo-2_MESE.json",
        (),
        {"EchoTime": 0.01},  # the EchoTime of echo-1
        ("mese_t2",),
        ("EchoTime=0.01", "duplicated EchoTime", "sub-01_echo-1_MESE"),
    ),
    (
        "duplicated-flip",
        VFA2,
        (),
        {"FlipAngle": 3},  # the FlipAngle of flip-1
        ("vfa_t1",),
        ("FlipAngle=3.0", "duplicated FlipAngle", "sub-01_flip-1_VFA"),
    ),
    (
        "mt-state-against-entity",
        A + "sub-01_flip-1_mt-on_MTS.json",
        (),
        {"MTState": False},
        ("mtsat",),
        ("MTState",),
    ),
    (
        "inconsistent-repetition-time",
        VFA2,
        (),
        {"RepetitionTimeExcitation": 0.02, "RepetitionTime": 0.02},
        ("vfa_t1",),
        ("RepetitionTimeExcitation=0.02", "the same value as", "sub-01_flip-1_VFA"),
    ),
]


@pytest.mark.parametrize(
    ("sidecar", "drop", "changes", "models", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_wrong_metadata_exit_65_one_line(
    dataset, msqmri, edit_json, digest, sidecar, drop, changes, models, fragments
):
    edit_json(dataset / sidecar, drop=drop, **changes)
    before = digest(dataset)
    res = msqmri(dataset, models=models)
    assert res.code == 65
    stem = os.path.basename(sidecar)[: -len(".json")]
    res.one_error("sub-01", stem, *fragments)
    assert digest(dataset) == before  # the input is read only
    assert not (res.out / "sub-01").exists()  # no partial subject


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        pytest.param("sub-01_flip-2_VFA.json", "[8, 0.015]", "not an object", id="not-object"),
        pytest.param("sub-01_flip-2_VFA.json", b"\xff\xfe{}", "UTF-8", id="not-utf8"),
        # an inherited sidecar (no flip entity) describes every VFA image of sub-01
        pytest.param(
            "sub-01_VFA.json", '{"RepetitionTime": 0.015', "invalid JSON", id="inherited"
        ),
    ],
)
def test_unreadable_sidecar_exit_65(dataset, msqmri, name, content, fragment):
    path = dataset / A / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    res = msqmri(dataset)
    assert res.code == 65
    res.one_error("sub-01:", name, "JSON", fragment)


def test_invalid_json_fails_only_its_subject(dataset, msqmri, read_image):
    """pybids cannot index a broken sidecar: it is left out of the index, and only sub-01,
    whose image it describes, fails (65, naming it); sub-02 is fitted."""
    (dataset / VFA2).write_text('{"FlipAngle": 8,, }')
    res = msqmri(dataset, subjects=())
    assert res.code == 65
    res.one_error("sub-01:", "sub-01_flip-2_VFA.json", "JSON", "invalid JSON", "line 1")
    t1 = read_image(res.out / "sub-02" / "anat" / "sub-02_T1map.nii.gz")
    assert (t1 > 0).sum() > 1000
    assert not (res.out / "sub-01").exists()


def test_unfetched_datalad_sidecar(dataset, msqmri):
    """A broken symlink in place of a sidecar (git-annex content not fetched)."""
    path = dataset / VFA2
    path.unlink()
    path.symlink_to("../../.git/annex/objects/Xx/Yy/MD5E-s200--0123.json/MD5E-s200--0123.json")
    res = msqmri(dataset)
    assert res.code == 66  # absent content, before any work (CONTRACT 5)
    res.one_error("sub-01/anat/sub-01_flip-2_VFA.json", "broken symlink", "datalad get")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("dataset_description.json", '{"Name": "x", ', id="dataset-description"),
        pytest.param("VFA.json", '{"FlipAngle": }', id="top-level-sidecar"),
    ],
)
def test_unreadable_shared_json_fails_the_run(dataset, msqmri, name, content):
    """A JSON file outside the subject folders concerns every subject: the run stops (65)."""
    (dataset / name).write_text(content)
    res = msqmri(dataset, subjects=())
    assert res.code == 65
    res.one_error(name, "JSON", "invalid JSON")
    assert not list(res.out.glob("sub-*"))
