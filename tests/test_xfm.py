"""ITK text transforms: the reader and writer against ITK's stated semantics."""

import numpy as np
import pytest

from bids_app.xfm import format_itk_affine, parse_itk_affine, read_xfm, write_xfm

ITK_TRANSLATION = """#Insight Transform File V1.0
#Transform 0
Transform: AffineTransform_double_3_3
Parameters: 1 0 0 0 1 0 0 0 1 10 -2 3
FixedParameters: 0 0 0
"""


def test_lps_translation_is_read_in_ras():
    # ITK maps fixed LPS points x to moving x + t; in RAS the x and y components flip
    m = parse_itk_affine(ITK_TRANSLATION)
    np.testing.assert_allclose(m[:3, 3], [-10.0, 2.0, 3.0])
    np.testing.assert_allclose(m[:3, :3], np.eye(3))


def test_centre_of_rotation_is_folded_in():
    # 90 degrees about z around the LPS centre c = (5, 0, 0): the centre maps to itself
    text = ITK_TRANSLATION.replace("1 0 0 0 1 0 0 0 1 10 -2 3", "0 -1 0 1 0 0 0 0 1 0 0 0")
    text = text.replace("FixedParameters: 0 0 0", "FixedParameters: 5 0 0")
    m = parse_itk_affine(text)
    centre_ras = np.array([-5.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(m @ centre_ras, centre_ras, atol=1e-12)
    # a point 1 mm from the centre along LPS x (RAS x = -6) goes to LPS (5, 1, 0)
    np.testing.assert_allclose(m @ [-6.0, 0.0, 0.0, 1.0], [-5.0, -1.0, 0.0, 1.0], atol=1e-12)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    m = np.eye(4)
    m[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * [1.0, 1.1, 0.9]
    m[:3, 3] = rng.normal(scale=5.0, size=3)
    path = write_xfm(tmp_path / "sub-01_from-vfat1_to-FLAIR_mode-image_xfm.txt", m)
    np.testing.assert_allclose(read_xfm(path), m, atol=1e-12)
    assert format_itk_affine(m).startswith("#Insight Transform File V1.0\n")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hello", "not an ITK transform"),
        (ITK_TRANSLATION.replace("AffineTransform_double_3_3", "BSplineTransform"), "type"),
        (ITK_TRANSLATION.replace("10 -2 3", "10 -2"), "12 Parameters"),
        (ITK_TRANSLATION + "Transform: AffineTransform_double_3_3\n", "more than one"),
    ],
)
def test_bad_files_name_the_source(text, match):
    with pytest.raises(ValueError, match=match):
        parse_itk_affine(text, source="x_xfm.txt")


def test_writer_rejects_non_affine():
    with pytest.raises(ValueError, match="affine"):
        format_itk_affine(np.ones((4, 4)))
