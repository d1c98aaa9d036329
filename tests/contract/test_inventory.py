"""Every image of a subject is accounted for in the log: used by whom, or why not."""

from __future__ import annotations

import logging

import numpy as np

from tests.contract.conftest import save


def test_unused_collections_are_listed_with_reasons(subject, reference, run_cli, caplog):
    _, affine, brain = reference
    anat = subject / "sub-01" / "anat"
    for i in (1, 2):
        save(anat / f"sub-01_echo-{i}_PDT2.nii.gz", np.where(brain, 100.0 * i, 0), affine)
        save(anat / f"sub-01_echo-{i}_part-phase_MEGRE.nii.gz", np.zeros(brain.shape), affine)
    caplog.set_level(logging.INFO)
    code, _ = run_cli("vfa_t1")
    assert code == 0
    text = caplog.text
    assert "found anat/*_VFA (3 files) -> vfa_t1" in text
    assert "found anat/*_FLAIR (1 file) -> structural" in text
    assert "anat/*_PDT2 (2 files, e.g. sub-01_echo-1_PDT2.nii.gz): no model for PDT2" in text
    assert "found fmap/*_TB1map (1 file) -> b1" in text  # the producer vfa_t1 needs
    assert "anat/*_MESE (16 files, e.g. sub-01_echo-1_MESE.nii.gz): --models left out" in text
    assert "anat/*_MEGRE part-phase (2 files" in text


def test_phase_images_named_when_their_suffix_model_runs(subject, reference, run_cli, caplog):
    _, affine, brain = reference
    anat = subject / "sub-01" / "anat"
    for i in (1, 2):
        save(anat / f"sub-01_echo-{i}_part-phase_MEGRE.nii.gz", np.zeros(brain.shape), affine)
    caplog.set_level(logging.INFO)
    code, _ = run_cli("megre_r2star")
    assert code == 0
    assert "part-phase images are not used by megre_r2star" in caplog.text


def test_entity_and_sidecar_must_agree(subject, run_cli, caplog):
    import json

    side = subject / "sub-01" / "anat" / "sub-01_mt-on_MTR.json"
    meta = json.loads(side.read_text())
    meta["MTState"] = False  # an mt-on file whose sidecar says the MT pulse was off
    side.write_text(json.dumps(meta))
    code, _ = run_cli("mtr")
    assert code == 65
    assert "sub-01_mt-on_MTR.json" in caplog.text
    assert "to agree with mt-on" in caplog.text
