"""Broken images: exit 65 with one line naming the file, never a crash or a wrong map.

Decisions, as an MS imaging study would want them:

- An image that cannot be read completely (truncated or corrupt gzip, zero bytes, random
  bytes) is refused (65); a broken symlink left by an un-fetched DataLad dataset is found
  before any work (66, tests/test_datalad_inputs.py). The gzip
  CRC is checked: nibabel stops at the declared size, so flipped bytes would otherwise give
  silently wrong voxels.
- A header is checked before any data is read: absurd dimensions (more voxels than
  ``bids_app.io.MAX_VOXELS``) and a declared size the file cannot hold are refused without
  allocating it; so are a 4-D image where a volume is expected, and shapes or affines that
  disagree within a collection.
- An all-zero (or all-NaN) input volume is an error (65), not NaN maps with a warning: it is
  a failed reconstruction or export, and a warning in the log of a 200-subject batch is
  missed while the empty maps would enter the group statistics as missing data.
- NaN/Inf voxels are missing data: they are NaN in the maps fitted from them and every other
  voxel is exactly as without them. A hole in a B1 map is filled by its mask-aware smoothing
  (B1 is smooth), so the T1 map stays defined there.
- Provided lesion masks may be binary, integer multi-label (non-zero is lesion) or
  probabilistic in [0, 1] (lesion where p >= 0.5); other values, a mask with the reference
  voxel grid but another affine, or one outside the reference field of view are refused
  (65). An all-zero lesion mask is valid (no lesion).
"""

from __future__ import annotations

import gzip
import json
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from bids_app import io
from bids_app.errors import MetadataError

A = "sub-01/anat/"
VFA2 = A + "sub-01_flip-2_VFA.nii.gz"
FLAIR = A + "sub-01_FLAIR.nii.gz"
LESION = "derivatives/lesions/sub-01/anat/sub-01_label-lesion_mask.nii.gz"
CUBE = (slice(18, 22), slice(20, 24), slice(18, 22))  # 64 voxels inside the brain


def truncate(path, edit):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bytes(path, edit):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))


def random_bytes(path, edit):
    path.write_bytes(np.random.default_rng(7).bytes(4096))


def zero_bytes(path, edit):
    path.write_bytes(b"")


def singular_sform(path, edit):
    """An sform whose z row is zero (written byte by byte: nibabel refuses to)."""
    img = nib.load(path)
    hdr = img.header.copy()
    hdr.set_data_dtype(np.float32)
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    hdr["srow_z"] = [0.0, 0.0, 0.0, -73.5]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["vox_offset"] = len(hdr.binaryblock) + 4
    data = np.asarray(img.dataobj, dtype=np.float32)
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + bytes(4) + data.tobytes(order="F"))


def header_only(shape, header_class=nib.Nifti1Header):
    """A header claiming ``shape`` float32 voxels, followed by 64 bytes of data."""

    def write(path, edit):
        hdr = header_class()
        hdr.set_data_shape(shape)
        hdr.set_data_dtype(np.float32)
        hdr.set_sform(np.diag([4.0, 4.0, 4.0, 1.0]), 1)
        hdr["vox_offset"] = len(hdr.binaryblock) + 4  # no extension
        with gzip.open(path, "wb") as f:
            f.write(hdr.binaryblock + bytes(4 + 64))

    return write


def change(fn, affine=None):
    def write(path, edit):
        if affine is None:
            edit(path, fn)
        else:
            edit(path, fn, affine=affine(nib.load(path).affine))

    return write


def shift(mm):
    def move(affine):
        out = affine.copy()
        out[0, 3] += mm
        return out

    return move


# (id, breaker, fragments of the error line after the file name)
VOLUME_CASES = [
    ("truncated-gzip", truncate, ("data=", "truncated")),
    ("corrupt-gzip", flip_bytes, ("data=", "corrupt gzip stream", "CRC")),
    ("not-gzip", random_bytes, ("file=", "readable NIfTI")),
    ("zero-bytes", zero_bytes, ("file size='0 bytes'", "non-empty")),
    # an un-fetched DataLad image is 66 before any work: tests/test_datalad_inputs.py
    ("4-D", change(lambda d: np.stack([d, d], -1)), ("dim=(39, 48, 41, 2)", "a 3-D image")),
    ("shape", change(lambda d: d[:-1]), ("shape=(38, 48, 41)", "(39, 48, 41) like")),
    ("affine", change(lambda d: d, affine=shift(5.0)), ("affine=", "the affine of")),
    ("all-zero", change(lambda d: d * 0), ("every voxel 0", "an image with signal")),
    ("all-nan", change(lambda d: d * np.nan), ("every voxel NaN/Inf", "signal")),
    ("singular-affine", singular_sform, ("affine=", "non-singular")),
    ("nifti1-32767^3", header_only((32767,) * 3), ("dim=(32767, 32767, 32767)", "at most")),
    (
        "nifti2-100000^3",
        header_only((100000,) * 3, nib.Nifti2Header),
        ("dim=(100000, 100000, 100000)", "at most"),
    ),
]


@pytest.mark.parametrize(
    ("breaker", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in VOLUME_CASES]
)
def test_broken_volume_exit_65(dataset, msqmri, edit_nifti, digest, breaker, fragments):
    breaker(dataset / VFA2, edit_nifti)
    before = digest(dataset)
    res = msqmri(dataset)
    assert res.code == 65
    res.one_error("sub-01:", "sub-01_flip-2_VFA.nii.gz", *fragments)
    assert digest(dataset) == before
    assert not (res.out / "sub-01").exists()


@pytest.mark.parametrize(
    ("breaker", "fragments"),
    [
        pytest.param(change(lambda d: d * 0), ("every voxel 0",), id="all-zero"),
        pytest.param(change(lambda d: d * 0 + 100), ("image is constant",), id="constant"),
        pytest.param(change(lambda d: np.stack([d, d], -1)), ("a 3-D image",), id="4-D"),
        # within MAX_VOXELS, but 2 GB the file does not hold: refused before reading
        pytest.param(header_only((1000, 1000, 500)), ("data size=", "2000000"), id="lying-dim"),
    ],
)
def test_broken_reference_exit_65(dataset, msqmri, edit_nifti, breaker, fragments):
    breaker(dataset / FLAIR, edit_nifti)
    res = msqmri(dataset)
    assert res.code == 65
    res.one_error("sub-01:", "sub-01_FLAIR.nii.gz", *fragments)


def test_lying_header_is_not_allocated(tmp_path):
    """A header declaring 2 GB of voxels over 64 bytes of data: refused, nothing allocated."""
    path = tmp_path / "sub-01_T1w.nii.gz"
    header_only((1000, 1000, 500))(path, None)
    img = io.load_image(path)  # the header alone is fine
    tracemalloc.start()
    try:
        with pytest.raises(MetadataError, match="data size"):
            io.read_data(img, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16e6  # bytes; the gzip stream is checked in 1 MiB chunks


def test_valid_gzip_variants_are_read(tmp_path):
    """Several gzip members and zero padding (as ``gzip -d`` accepts) are valid; data after
    the padding is not. 2 MB of data also takes the multi-chunk path."""
    rng = np.random.default_rng(3)
    data = rng.normal(100, 10, (80, 80, 80)).astype(np.float32)
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), plain)
    raw = plain.read_bytes()
    members = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + bytes(512)
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(members)
    assert np.array_equal(io.read_data(io.load_image(path), path), data)
    path.write_bytes(members + b"junk")
    with pytest.raises(MetadataError, match="corrupt gzip"):
        io.read_data(io.load_image(path), path)
    plain.write_bytes(raw[:-100])  # uncompressed and truncated: checked by size
    with pytest.raises(MetadataError, match="data size"):
        io.read_data(io.load_image(plain), plain)


def test_nan_and_inf_voxels_are_nan_in_the_maps(dataset, msqmri, edit_nifti, clean_run):
    """NaN and +-Inf input voxels are NaN in the T1 map (native and reference space); every
    other voxel is exactly what the intact data give, and the log says how many there were."""

    def spoil(d):
        d[CUBE] = np.nan
        d[10, 24, 20], d[11, 24, 20] = np.inf, -np.inf
        return d

    edit_nifti(dataset / VFA2, spoil)
    res = msqmri(dataset)
    assert res.code == 0, res.err
    assert "sub-01_flip-2_VFA.nii.gz: 66 NaN/Inf voxel(s)" in res.err
    name = "sub-01/anat/sub-01_T1map.nii.gz"
    t1 = np.asarray(nib.load(res.out / name).dataobj)
    clean = np.asarray(nib.load(clean_run / name).dataobj)
    bad = np.zeros(t1.shape, bool)
    bad[CUBE] = bad[10, 24, 20] = bad[11, 24, 20] = True
    assert np.isfinite(clean[bad]).all()
    assert np.isnan(t1[bad]).all()
    np.testing.assert_array_equal(t1[~bad], clean[~bad])
    ref = np.asarray(nib.load(res.out / "sub-01/anat/sub-01_space-FLAIR_T1map.nii.gz").dataobj)
    assert np.isnan(ref[CUBE]).all()


def test_hole_in_b1_map_is_filled_by_smoothing(dataset, msqmri, edit_nifti, clean_run):
    """64 NaN voxels (8 mm grid) in the B1 map: the smoothed B1 fills them, and the T1 map
    there stays within 10 % of the one from the intact B1 map."""

    def hole(d):
        d[8:12, 10:14, 8:12] = np.nan
        return d

    edit_nifti(dataset / "sub-01/fmap/sub-01_TB1map.nii.gz", hole)
    res = msqmri(dataset)
    assert res.code == 0, res.err
    name = "sub-01/anat/sub-01_T1map.nii.gz"
    t1 = np.asarray(nib.load(res.out / name).dataobj)[16:24, 20:28, 16:24]
    clean = np.asarray(nib.load(clean_run / name).dataobj)[16:24, 20:28, 16:24]
    assert np.isfinite(t1).all()
    assert np.max(np.abs(t1 / clean - 1)) < 0.1


def _lesion_run(dataset, msqmri, edit_nifti, fn, *, dtype=None, affine=None):
    path = dataset / LESION

    def write(d):
        out = fn(d)
        return out.astype(dtype) if dtype else out

    edit_nifti(path, write, affine=affine(nib.load(path).affine) if affine else None)
    return msqmri(dataset, models=("mtr",), lesions=True)


def _lesion_output(res):
    anat = res.out / "sub-01" / "anat"
    mask = np.asarray(nib.load(anat / "sub-01_space-FLAIR_label-lesion_mask.nii.gz").dataobj)
    brain = np.asarray(nib.load(anat / "sub-01_space-FLAIR_desc-brain_mask.nii.gz").dataobj)
    return mask > 0, brain > 0


def test_probabilistic_lesion_mask_thresholded_at_half(dataset, msqmri, edit_nifti):
    rng = np.random.default_rng(5)
    prob = {}

    def fn(d):
        prob["p"] = np.where(d > 0, rng.choice([0.3, 0.5, 0.7], size=d.shape), 0.0)
        return prob["p"]

    res = _lesion_run(dataset, msqmri, edit_nifti, fn)
    assert res.code == 0, res.err
    lesion, brain = _lesion_output(res)
    expected = (prob["p"] >= 0.5) & brain
    assert 0 < expected.sum() < (prob["p"] > 0).sum()
    np.testing.assert_array_equal(lesion, expected)


def test_multilabel_lesion_mask_nonzero_is_lesion(dataset, msqmri, edit_nifti):
    labels = {}

    def fn(d):
        labels["l"] = (d > 0) * np.random.default_rng(6).integers(1, 6, size=d.shape)
        return labels["l"]

    res = _lesion_run(dataset, msqmri, edit_nifti, fn, dtype=np.int16)
    assert res.code == 0, res.err
    lesion, brain = _lesion_output(res)
    np.testing.assert_array_equal(lesion, (labels["l"] > 0) & brain)
    assert lesion.sum() > 0


def test_empty_lesion_mask_means_no_lesion(dataset, msqmri, edit_nifti):
    res = _lesion_run(dataset, msqmri, edit_nifti, lambda d: d * 0)
    assert res.code == 0, res.err
    assert not _lesion_output(res)[0].any()


def test_lesion_mask_on_coarser_grid_is_resampled(dataset, msqmri, edit_nifti):
    """A 8 mm mask of the same world space: each lesion voxel covers 2x2x2 reference voxels."""
    res = _lesion_run(
        dataset,
        msqmri,
        edit_nifti,
        lambda d: d[::2, ::2, ::2],
        affine=lambda a: a @ np.diag([2.0, 2.0, 2.0, 1.0]),
    )
    assert res.code == 0, res.err
    assert _lesion_output(res)[0].sum() >= 8


@pytest.mark.parametrize(
    ("fn", "affine", "fragments"),
    [
        pytest.param(lambda d: d * 2.5, None, ("values='0..2.5'", "p >= 0.5"), id="values"),
        pytest.param(
            lambda d: d, shift(8.0), ("affine=", "fix the mask header"), id="same-grid-affine"
        ),
        pytest.param(
            lambda d: d[::2, ::2, ::2],
            lambda a: shift(900.0)(a @ np.diag([2.0, 2.0, 2.0, 1.0])),
            ("affine=", "none of its non-zero voxels falls inside"),
            id="outside-fov",
        ),
        pytest.param(lambda d: np.stack([d, d], -1), None, ("a 3-D image",), id="4-D"),
        pytest.param(
            lambda d: d[:-3],
            None,
            ("shape=", "does not cover its field of view"),
            id="cropped-same-affine",
        ),
    ],
)
def test_bad_lesion_mask_exit_65(dataset, msqmri, edit_nifti, fn, affine, fragments):
    res = _lesion_run(dataset, msqmri, edit_nifti, fn, affine=affine)
    assert res.code == 65
    res.one_error("sub-01:", "sub-01_label-lesion_mask.nii.gz", *fragments)


def test_probabilistic_lesion_mask_is_thresholded_with_a_warning(dataset, msqmri, edit_nifti):
    res = _lesion_run(dataset, msqmri, edit_nifti, lambda d: d * 0.7)
    assert res.code == 0, res.err
    assert "sub-01_label-lesion_mask.nii.gz" in res.err
    assert "thresholded at p >= 0.5" in res.err
    assert _lesion_output(res)[0].any()


def test_wm_gm_probsegs_without_csf_are_used(dataset, msqmri):
    """CONTRACT 2.2: WM and GM probsegs without a CSF probseg: CSF is the rest of the brain."""
    truth = dataset / "derivatives" / "truth" / "sub-01" / "anat" / "sub-01_dseg.nii.gz"
    img = nib.load(truth)
    labels = np.asarray(img.dataobj)
    deriv = dataset / "derivatives" / "probs"
    anat = deriv / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "probsegs",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "test"}],
            }
        )
    )
    for name, code in (("GM", 1), ("WM", 2)):
        prob = (labels == code).astype(np.float32) * 0.9
        nib.save(nib.Nifti1Image(prob, img.affine), anat / f"sub-01_label-{name}_probseg.nii.gz")
    res = msqmri(dataset, "--derivatives", f"probs={deriv}", models=("mtr",))
    assert res.code == 0, res.err
    assert "no label-CSF probseg" in res.err
    out = res.out / "sub-01" / "anat"
    wm = np.asarray(nib.load(out / "sub-01_space-FLAIR_label-WM_mask.nii.gz").dataobj) > 0
    brain = np.asarray(nib.load(out / "sub-01_space-FLAIR_desc-brain_mask.nii.gz").dataobj) > 0
    # the provided WM, not a new segmentation (lesion voxels may be filled as WM)
    assert wm[(labels == 2) & brain].mean() > 0.97
    lesion = _lesion_output(res)[0]  # built-in segmentation: lesion voxels are filled as WM
    assert not (wm & ~lesion & ~np.isin(labels, (2, 4))).any()
