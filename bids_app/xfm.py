"""ITK/ANTs text transform files (``*_xfm.txt``) of the registrations.

The format is ITK's ``#Insight Transform File V1.0`` with one ``AffineTransform_double_3_3``
(what ``antsRegistration`` writes for rigid and affine stages as text and what
``antsApplyTransforms``, ITK-SNAP, nitransforms and Slicer read). An ITK transform maps
points of the *fixed* (reference, ``to-``) space to the *moving* (source, ``from-``) space in
LPS physical coordinates::

    y = A (x - c) + t + c        A: Parameters[:9] (row-major), t: Parameters[9:12],
                                 c: FixedParameters (the centre of rotation)

so that resampling the source image onto the reference grid uses it directly, as for
fMRIPrep's ``from-T1w_to-MNI..._xfm`` files. msqmri's matrices (:mod:`bids_app.registration`)
map reference RAS+ world coordinates to source RAS+ world coordinates; the LPS form is
``D M D`` with ``D = diag(-1, -1, 1, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_HEADER = "#Insight Transform File V1.0"
_AFFINE_TYPES = (
    "AffineTransform_double_3_3",
    "AffineTransform_float_3_3",
    "MatrixOffsetTransformBase_double_3_3",
    "MatrixOffsetTransformBase_float_3_3",
)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def format_itk_affine(matrix: np.ndarray) -> str:
    """The ITK text form of a reference-RAS -> source-RAS ``(4, 4)`` matrix.

    Raises
    ------
    ValueError
        If ``matrix`` is not a finite ``(4, 4)`` affine with last row ``(0, 0, 0, 1)``.
    """
    m = _check(matrix)
    lps = _LPS @ m @ _LPS
    params = [*lps[:3, :3].ravel(), *lps[:3, 3]]
    return "\n".join(
        [
            _HEADER,
            "#Transform 0",
            "Transform: AffineTransform_double_3_3",
            "Parameters: " + " ".join(repr(float(p)) for p in params),
            "FixedParameters: 0 0 0",
            "",
        ]
    )


def parse_itk_affine(text: str, *, source: str = "<text>") -> np.ndarray:
    """The reference-RAS -> source-RAS ``(4, 4)`` matrix of an ITK affine text transform.

    The centre of rotation (``FixedParameters``) is folded into the translation.

    Raises
    ------
    ValueError
        If the text is not a single 3-D affine ITK transform (the message names ``source``).
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise ValueError(f"{source}: not an ITK transform file (no '{_HEADER}' header)")
    fields: dict[str, str] = {}
    for ln in lines[1:]:
        if ln.startswith("#"):
            continue
        key, _, value = ln.partition(":")
        if key in fields:
            raise ValueError(f"{source}: more than one transform; one affine expected")
        fields[key.strip()] = value.strip()
    kind = fields.get("Transform")
    if kind not in _AFFINE_TYPES:
        raise ValueError(f"{source}: transform type {kind!r}; expected one of {_AFFINE_TYPES}")
    try:
        params = np.array(fields["Parameters"].split(), dtype=float)
        centre = np.array(fields.get("FixedParameters", "0 0 0").split(), dtype=float)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{source}: unreadable Parameters/FixedParameters ({exc})") from None
    if params.shape != (12,) or centre.shape != (3,):
        raise ValueError(f"{source}: 12 Parameters and 3 FixedParameters expected")
    a = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = params[9:] + centre - a @ centre
    return _LPS @ lps @ _LPS


def write_xfm(path: str | Path, matrix: np.ndarray) -> Path:
    """Write ``matrix`` (reference RAS -> source RAS) as an ITK text transform."""
    path = Path(path)
    path.write_text(format_itk_affine(matrix))
    return path


def read_xfm(path: str | Path) -> np.ndarray:
    """Read an ITK affine text transform as a reference-RAS -> source-RAS matrix.

    Raises
    ------
    ValueError
        If the file is not a single 3-D affine ITK transform (the message names the file).
    """
    path = Path(path)
    return parse_itk_affine(path.read_text(), source=str(path))


def _check(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4) or not np.isfinite(m).all() or not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"a finite (4, 4) affine with last row (0, 0, 0, 1) expected: {m}")
    return m
