"""Indexing by participant (issue 25 item 9): a one-subject job reads only that subject.

A dataset of 300 skeleton subjects (1-voxel images, tiny sidecars, one lesion mask each in a
derivative dataset) plus one real tiny subject (``sub-real``: a two-flip VFA collection whose
``RepetitionTimeExcitation`` comes only from the top-level ``VFA.json``). Timings are in
``benchmarks/bench_indexing.py``; these tests check what is indexed, not how fast.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bids_app.bids.layout as layout_module
from bids_app.bids.layout import (
    invalid_sidecars,
    make_derivative_layouts,
    make_layout,
    select_subjects,
)
from bids_app.bids.query import InputLayouts, resolve_model
from bids_app.errors import SelectionError
from bids_app.models import get_model
from tests.bids_builder import vfa_spec, write_dataset

N_SKELETONS = 300
TR = 0.015  # s, only in the top-level VFA.json
_NII = gzip.compress(nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)).to_bytes())


def _skeleton(root: Path, sub: str, deriv: Path) -> None:
    anat = root / sub / "anat"
    anat.mkdir(parents=True)
    for stem, meta in ((f"{sub}_T1w", {"RepetitionTime": 2.3}), (f"{sub}_flip-1_VFA", None)):
        (anat / f"{stem}.nii.gz").write_bytes(_NII)
        if meta is not None:
            (anat / f"{stem}.json").write_text(json.dumps(meta))
    mask = deriv / sub / "anat" / f"{sub}_space-orig_label-lesion_mask.nii.gz"
    mask.parent.mkdir(parents=True)
    mask.write_bytes(_NII)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path]:
    """(raw root, lesion derivative root) of 300 skeletons plus ``sub-real``."""
    root = tmp_path_factory.mktemp("scale") / "bids"
    spec = {"sub-real": vfa_spec("sub-real", tr=TR)}
    for stem in spec["sub-real"]:  # TR only from the top-level sidecar (inheritance)
        meta, data = spec["sub-real"][stem]
        spec["sub-real"][stem] = ({k: v for k, v in meta.items() if k == "FlipAngle"}, data)
    labels = ["real", *(f"{k:04d}" for k in range(N_SKELETONS))]
    write_dataset(root, spec, participants=[{"participant_id": f"sub-{s}"} for s in labels])
    (root / "VFA.json").write_text(json.dumps({"RepetitionTimeExcitation": TR}))
    deriv = root / "derivatives" / "lesions"
    write_dataset(
        deriv, {}, description={"Name": "lesions", "BIDSVersion": "1.10.0",
                                "DatasetType": "derivative", "GeneratedBy": [{"Name": "x"}]}
    )  # fmt: skip
    mask = np.zeros((6, 6, 6), np.float32)
    mask[2:4, 2:4, 2:4] = 1
    write_dataset(
        deriv, {"sub-real": {"anat/sub-real_space-orig_label-lesion_mask": (None, mask)}}
    )
    for lab in labels[1:]:
        _skeleton(root, f"sub-{lab}", deriv)
    # folders beside the subjects: indexed (phenotype) or not (hidden), as pybids decides
    (root / "phenotype").mkdir()
    (root / "phenotype" / "edss.tsv").write_text("participant_id\tedss\nsub-real\t2\n")
    (root / "phenotype" / "edss.json").write_text(json.dumps({"edss": {"Description": "x"}}))
    (root / ".datalad").mkdir()
    (root / ".datalad" / "config.json").write_text("{")
    # unreadable sidecars in another subject: a one-subject job must not even open them
    (root / "sub-0007" / "anat" / "sub-0007_T1w.json").write_text("{not json")
    (deriv / "sub-0007" / "anat" / "sub-0007_space-orig_label-lesion_mask.json").write_text("[")
    return root, deriv


def _folders(layout) -> set[str]:
    """First path component of every indexed file that lies in a folder."""
    root = Path(layout.root)
    rels = [Path(f.path).relative_to(root).parts for f in layout.get()]
    return {parts[0] for parts in rels if len(parts) > 1}


def test_one_participant_indexes_only_its_folder(big, caplog):
    root, _ = big
    with caplog.at_level(logging.WARNING):
        layout = make_layout(root, participant_label=["real"])
    assert layout.get_subjects() == ["real"]
    assert _folders(layout) == {"sub-real", "phenotype"}
    top = {Path(f.path).name for f in layout.get() if Path(f.path).parent == root}
    assert {"dataset_description.json", "participants.tsv", "VFA.json"} <= top
    assert len(layout.get(extension=".nii.gz")) == 2  # the two flips, nothing else
    # sub-0007's broken JSON was never parsed: no warning, nothing recorded
    assert invalid_sidecars(layout) == {}
    assert "sub-0007" not in caplog.text


def test_top_level_sidecar_is_still_inherited(big):
    root, deriv = big
    raw = make_layout(root, participant_label=["real"])
    (flip,) = raw.get(subject="real", flip=1, suffix="VFA", extension=".nii.gz")
    meta = flip.get_metadata()
    assert meta["RepetitionTimeExcitation"] == TR
    assert meta["FlipAngle"] == 3
    # and through msqmri's own input resolution (which raises without a TR)
    layouts = InputLayouts(
        raw, make_derivative_layouts({"lesions": deriv}, participant_label=["real"])
    )
    (run,) = resolve_model(layouts, get_model("vfa_t1"), "real", None)
    assert len(run.collections["vfa"].volumes) == 2


def test_derivative_layouts_are_filtered_too(big, caplog):
    _, deriv = big
    with caplog.at_level(logging.WARNING):
        layouts = make_derivative_layouts({"lesions": deriv}, participant_label=["real"])
    lesions = layouts["lesions"]
    assert lesions.get_subjects() == ["real"]
    assert _folders(lesions) == {"sub-real"}
    (mask,) = lesions.get(suffix="mask", extension=".nii.gz")
    assert mask.get_entities()["label"] == "lesion"
    assert invalid_sidecars(lesions) == {}
    assert "sub-0007" not in caplog.text


def test_selection_messages_still_name_the_other_subjects(big):
    root, _ = big
    layout = make_layout(root, participant_label=["nope"])
    with pytest.raises(SelectionError) as err:
        select_subjects(layout, ["nope"], None)
    assert "'0007'" in str(err.value)
    assert "'real'" in str(err.value)


def test_no_selection_indexes_every_subject(big):
    root, deriv = big
    raw = make_layout(root)
    assert len(raw.get_subjects()) == N_SKELETONS + 1
    assert _folders(raw) == {"phenotype", *(f"sub-{s}" for s in raw.get_subjects())}
    # the broken sidecar is found now, and only its own image is affected
    bad = invalid_sidecars(raw)
    assert list(bad) == [str(root / "sub-0007" / "anat" / "sub-0007_T1w.json")]
    lesions = make_derivative_layouts({"lesions": deriv})["lesions"]
    assert len(lesions.get(suffix="mask", extension=".nii.gz")) == N_SKELETONS + 1
    assert list(invalid_sidecars(lesions)) == [
        str(deriv / "sub-0007" / "anat" / "sub-0007_space-orig_label-lesion_mask.json")
    ]


def _content(layout) -> dict[str, tuple]:
    return {f.path: (f.get_entities(), f.get_metadata()) for f in layout.get()}


@pytest.mark.parametrize("derivative", [False, True])
def test_pruned_root_listing_indexes_as_pybids_does(big, monkeypatch, derivative):
    """The indexer that skips other subjects' folders = pybids with the ignore patterns."""
    root = big[derivative]
    checked = []
    validate = layout_module._validate_path

    def spy(path, *args, **kwargs):
        checked.append(Path(path.path).name)
        return validate(path, *args, **kwargs)

    monkeypatch.setattr(layout_module, "_validate_path", spy)
    pruned = make_layout(root, participant_label=["real"], derivative=derivative)
    assert "sub-real" in checked  # the pruned listing ran, and never met another subject
    assert not [name for name in checked if name.startswith("sub-0")]
    monkeypatch.setattr(layout_module, "_PRUNE_ROOT", False)
    plain = make_layout(root, participant_label=["real"], derivative=derivative)
    assert _content(pruned) == _content(plain)
    assert len(_content(plain)) >= 2


def test_participant_run_filters_the_derivative_layouts(big, tmp_path, monkeypatch):
    """``run_participants`` builds its ``--derivatives`` layouts for the selected subjects."""
    import bids_app.participant as participant
    from bids_app.config import RunConfig

    root, deriv = big
    built = {}

    class Stop(Exception):
        pass

    def spy(derivatives, *, participant_label=None):
        built.update(make_derivative_layouts(derivatives, participant_label=participant_label))
        raise Stop  # the layouts are what this test is about, not the fits

    monkeypatch.setattr(participant, "make_derivative_layouts", spy)
    cfg = RunConfig(
        bids_dir=root,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        analysis_level=("participant",),
        participant_label=("real",),
        derivatives={"lesions": deriv},
    )
    with pytest.raises(Stop):
        participant.run_participants(cfg)
    assert built["lesions"].get_subjects() == ["real"]
