"""Derivative naming, sidecars and dataset description."""

import json

import numpy as np
import pandas as pd

from bids_app.bids.derivatives import (
    build_name,
    dataset_description,
    init_output,
    naming_entities,
    write_image,
    write_table,
)


def test_names_follow_entity_order_not_input_order():
    ents = {
        "desc": "MTS",
        "space": "FLAIR",
        "acquisition": "sag",
        "subject": "01",
        "session": "2",
        "run": "1",
    }
    assert (
        build_name(ents, "T1map") == "sub-01_ses-2_acq-sag_run-1_space-FLAIR_desc-MTS_T1map.nii.gz"
    )


def test_index_entities_dropped_from_derived_names():
    src = {
        "subject": "01",
        "flip": "1",
        "mt": "off",
        "echo": "2",
        "part": "mag",
        "acquisition": "x",
        "suffix": "MTS",
        "extension": ".nii.gz",
        "datatype": "anat",
    }
    assert naming_entities(src, space="T1w") == {
        "subject": "01",
        "acquisition": "x",
        "space": "T1w",
    }


def test_write_image_float32_and_sidecar(tmp_path):
    import nibabel as nib

    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    path = write_image(
        tmp_path,
        "anat",
        {"subject": "01"},
        "T1map",
        np.ones((4, 4, 4), dtype=np.float64),
        aff,
        {"Units": "s"},
    )
    assert path == tmp_path / "sub-01" / "anat" / "sub-01_T1map.nii.gz"
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, aff)
    assert json.loads(path.with_name("sub-01_T1map.json").read_text()) == {"Units": "s"}


def test_dataset_description_is_a_derivative_and_rewrite_is_identical(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    out = tmp_path / "out"
    init_output(out, bids)
    first = (out / "dataset_description.json").read_bytes()
    init_output(out, bids)
    assert (out / "dataset_description.json").read_bytes() == first
    desc = json.loads(first)
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "msqmri"
    assert "raw" in desc["DatasetLinks"]
    assert (out / ".bidsignore").is_file()
    assert dataset_description(bids)["SourceDatasets"]


def test_table_na_and_column_dictionary(tmp_path):
    df = pd.DataFrame({"a": [1.0, np.nan], "b": ["x", None]})
    write_table(tmp_path / "t_stats.tsv", df, {"a": "alpha"})
    text = (tmp_path / "t_stats.tsv").read_text()
    assert text.splitlines() == ["a\tb", "1\tx", "n/a\tn/a"]
    assert json.loads((tmp_path / "t_stats.json").read_text())["a"]["Description"] == "alpha"


def test_every_output_suffix_is_bids_or_listed_in_bidsignore():
    """A model output whose suffix the BIDS schema does not know is covered by a BIDSIGNORE
    pattern of the derivative dataset (else the validator flags every such map)."""
    from fnmatch import fnmatch

    import bidsschematools.schema

    from bids_app.bids.derivatives import BIDSIGNORE, build_name
    from bids_app.models import REGISTRY

    known = set(bidsschematools.schema.load_schema().objects.suffixes.keys())
    missing = []
    for name, cls in REGISTRY.items():
        for spec in cls.outputs:
            ents = {"subject": "01", **dict(spec.entities or {})}
            if spec.desc:
                ents["desc"] = spec.desc
            path = f"sub-01/{spec.datatype or 'anat'}/" + build_name(ents, spec.suffix)
            ignored = any(
                fnmatch(path, p.rstrip("/"))
                or fnmatch(path.split("/")[-1], p)
                or (p.startswith("**/") and f"/{p[3:]}/" in f"/{path}")
                for p in BIDSIGNORE
            )
            if spec.suffix not in known and not ignored:
                missing.append(f"{name}: {path}")
    assert not missing, missing


def test_link_image_is_the_same_bytes_and_falls_back_to_a_copy(tmp_path, monkeypatch):
    import os

    from bids_app.bids.derivatives import link_image
    from bids_app.io import link_or_copy

    ents = {"subject": "01"}
    src = write_image(tmp_path, "anat", ents, "T1map", np.ones((2, 2, 2)), np.eye(4), {})
    ref = link_image(tmp_path, "anat", dict(ents, space="FLAIR"), "T1map", src, {"Units": "s"})
    assert ref.name == "sub-01_space-FLAIR_T1map.nii.gz"
    assert ref.stat().st_ino == src.stat().st_ino
    assert json.loads(ref.with_suffix("").with_suffix(".json").read_text()) == {"Units": "s"}

    def no_links(*_):
        raise OSError("EXDEV")

    monkeypatch.setattr(os, "link", no_links)
    dst = tmp_path / "copy.nii.gz"
    assert link_or_copy(src, dst) == "copy"
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_ino != src.stat().st_ino
    assert not list(tmp_path.rglob(".*tmp*"))
