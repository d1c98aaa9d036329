"""Per-measurement tables beside 4-D series: ``.bval``, ``.bvec``, ``_aslcontext.tsv``.

Files are found with pybids' inheritance rules (``BIDSLayout.get_nearest``: the nearest file
with the companion's suffix and extension whose entities are a subset of the image's), read
into arrays with one row per measurement, and checked against the image's number of volumes.
Every error names the file.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_app.errors import MetadataError
from bids_app.models.specs import Companion

#: b-vectors of non-zero b-values must have unit norm within this tolerance
BVEC_NORM_TOL = 0.05
#: b-values up to this many s/mm² count as b=0
B0_THRESHOLD = 50.0


def n_measurements(path: str) -> int:
    """Number of measurements of an image (the 4th dimension; 1 for a 3-D image).

    Raises
    ------
    MetadataError
        If the image has more than four non-singleton dimensions.
    """
    shape = nib.load(path).shape
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise MetadataError(path, "dim", tuple(shape), "a 3-D or 4-D image")
    return int(shape[3]) if len(shape) == 4 else 1


def find_companion(image: str, comp: Companion, layout=None) -> Path | None:
    """The companion file of ``image`` (nearest by BIDS inheritance), or ``None``."""
    if layout is not None:
        try:
            found = layout.get_nearest(
                image, suffix=comp.suffix, extension=comp.extension, strict=True
            )
        except (ValueError, KeyError):  # pybids raises on files it did not index
            found = None
        if found:
            return Path(found)
    name = Path(image).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            stem = name[: -len(ext)]
            stem = stem.rsplit("_", 1)[0] + "_" + comp.suffix
            beside = Path(image).with_name(stem + comp.extension)
            return beside if beside.is_file() else None
    return None


def _numbers(path: Path) -> np.ndarray:
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return np.array(rows, dtype=float)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise MetadataError(str(path), "values", type(err).__name__, f"numbers ({err})") from None


def read_bval(path: Path, n: int) -> np.ndarray:
    """b-values (n,) in s/mm² from a FSL-style ``.bval`` (one row).

    Raises
    ------
    MetadataError
        Not one row of ``n`` finite non-negative numbers.
    """
    arr = _numbers(path)
    if arr.ndim != 2 or arr.shape[0] != 1 or arr.shape[1] != n:
        raise MetadataError(
            str(path), "values", f"shape {arr.shape}", f"one row of {n} b-values (one per volume)"
        )
    b = arr[0]
    if not np.all(np.isfinite(b) & (b >= 0)):
        raise MetadataError(str(path), "values", b.tolist()[:8], "finite b-values >= 0 (s/mm²)")
    return b


def read_bvec(path: Path, n: int) -> np.ndarray:
    """b-vectors (n, 3) from a FSL-style ``.bvec`` (three rows); norms are checked later."""
    arr = _numbers(path)
    if arr.ndim != 2 or arr.shape != (3, n):
        raise MetadataError(
            str(path), "values", f"shape {arr.shape}", f"3 rows of {n} values (one per volume)"
        )
    if not np.all(np.isfinite(arr)):
        raise MetadataError(str(path), "values", "non-finite", "finite b-vector components")
    return arr.T.copy()


def check_gradients(bval: np.ndarray, bvec: np.ndarray, path: str) -> None:
    """Unit b-vectors where b > :data:`B0_THRESHOLD`, and at least one b=0 volume.

    Raises
    ------
    MetadataError
        Naming ``path`` (the ``.bvec`` or ``.bval``) and the first bad volume.
    """
    norms = np.linalg.norm(bvec, axis=1)
    bad = np.flatnonzero((bval > B0_THRESHOLD) & (np.abs(norms - 1) > BVEC_NORM_TOL))
    if bad.size:
        raise MetadataError(
            path,
            f"volume {int(bad[0])}",
            f"|bvec| = {norms[bad[0]]:.3f}",
            f"unit b-vectors (within {BVEC_NORM_TOL}) for b > {B0_THRESHOLD:g} s/mm²",
        )
    if not np.any(bval <= B0_THRESHOLD):
        raise MetadataError(path, "b-values", "no b=0", f"a volume with b <= {B0_THRESHOLD:g}")


def read_tsv_column(path: Path, column: str, n: int) -> np.ndarray:
    """One column (n,) of a TSV with a header (``_aslcontext.tsv``: ``volume_type``)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise MetadataError(
            str(path), "file", type(err).__name__, f"a TSV table ({err})"
        ) from None
    if column not in table.columns:
        raise MetadataError(str(path), "columns", list(table.columns), f"a {column!r} column")
    if len(table) != n:
        raise MetadataError(str(path), "rows", len(table), f"{n} rows (one per volume)")
    return table[column].str.strip().to_numpy(dtype=str)


_READERS = {"bval": read_bval, "bvec": read_bvec}


def read_companion(image: str, comp: Companion, n: int, layout=None) -> np.ndarray | None:
    """Find and read one companion table of ``image`` with ``n`` measurements.

    Returns
    -------
    ndarray or None
        ``None`` when an optional companion is absent.

    Raises
    ------
    MetadataError
        A required companion is missing, or it is malformed (naming the file).
    """
    path = find_companion(image, comp, layout)
    if path is None:
        if comp.required:
            expected = f"a {comp.suffix}{comp.extension} file beside it (BIDS inheritance)"
            raise MetadataError(image, comp.name, "missing", expected)
        return None
    if comp.reader == "tsv_column":
        return read_tsv_column(path, comp.column, n)
    if comp.reader not in _READERS:
        raise ValueError(f"unknown companion reader {comp.reader!r}")
    return _READERS[comp.reader](path, n)
