"""Checked reading of NIfTI data: every byte the header declares, gzip CRCs verified, once.

A ``.nii.gz`` is decompressed once in bounded chunks: the CRC and length checks of gzip
(which nibabel skips: it stops at the declared size) and, for unscaled images, the array
itself come from that one pass.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.errors import MetadataError

#: bytes read (and decompressed) at a time when checking a gzip stream
_CHUNK = 1 << 20
#: zlib ``wbits`` for the gzip container (header and CRC-32/length trailer checked)
_GZIP_WBITS = zlib.MAX_WBITS | 16


def _gzip_length(path: Path, sink: bytearray | None = None) -> int:
    """Uncompressed length of a gzip file, checking every member's CRC, in bounded memory.

    With ``sink``, the uncompressed bytes are also appended to it (one decompression serves
    both the check and the read, see :func:`read_data`).

    The output is produced and discarded in chunks of at most :data:`_CHUNK` bytes, so neither
    a header that lies about the image size nor a "zip bomb" makes this allocate much.
    Several gzip members and zero padding after the last one are accepted (as ``gzip -d``).

    Raises
    ------
    MetadataError
        Truncated stream or corrupt data (bad CRC or length, invalid deflate blocks).
    """
    total = 0
    with open(path, "rb") as f:
        try:
            dec = zlib.decompressobj(_GZIP_WBITS)
            data = f.read(_CHUNK)
            while True:
                while data and not dec.eof:
                    out = dec.decompress(data, _CHUNK)
                    total += len(out)
                    if sink is not None:
                        sink += out
                    data = dec.unconsumed_tail
                if dec.eof:
                    data = dec.unused_data or f.read(_CHUNK)
                    if not data.strip(b"\0"):  # end of file, or zero padding up to it
                        while data:
                            if data.strip(b"\0"):
                                raise zlib.error("data after the zero padding")
                            data = f.read(_CHUNK)
                        return total
                    dec = zlib.decompressobj(_GZIP_WBITS)  # the next gzip member
                    continue
                data = f.read(_CHUNK)
                if not data:
                    out = dec.flush()
                    total += len(out)
                    if sink is not None:
                        sink += out
                    if dec.eof:
                        return total
                    raise MetadataError(
                        str(path),
                        "data",
                        f"gzip stream ending after {total} bytes",
                        "a complete gzip stream (the file is truncated: an interrupted copy "
                        "or download?)",
                    )
        except zlib.error as err:
            raise MetadataError(
                str(path),
                "data",
                f"corrupt gzip stream ({err})",
                "intact compressed data (CRC and length checks of gzip)",
            ) from None


def check_data_size(
    img: nib.Nifti1Image, path: str | Path, *, sink: bytearray | None = None
) -> None:
    """Check that the file holds all the data its header declares, before reading any of it.

    A ``.nii.gz`` is decompressed once in bounded memory (checking the gzip CRC, which nibabel
    does not: it stops reading at the declared size, so corrupt blocks would give silently
    wrong voxels); a ``.nii`` is checked by its size.

    Raises
    ------
    MetadataError
        Truncated or corrupt file, or a header declaring more data than the file holds.
    """
    p = Path(path)
    offset = int(getattr(img.dataobj, "offset", 0))
    n_bytes = int(np.prod(img.shape, dtype=np.float64)) * img.get_data_dtype().itemsize
    expected = offset + n_bytes
    actual = _gzip_length(p, sink) if p.name.endswith(".gz") else p.stat().st_size
    if actual < expected:
        raise MetadataError(
            str(p),
            "data size",
            f"{actual} bytes",
            f"{expected} bytes, as the header declares (dim {tuple(int(n) for n in img.shape)}, "
            f"{img.get_data_dtype()}): a truncated file or a wrong header",
        )


def read_checked_bytes(img: nib.Nifti1Image, path: str | Path) -> bytearray | None:
    """Check the file's data size; for an unscaled ``.nii.gz``, return its uncompressed bytes.

    Images with a scale factor (``scl_slope``/``scl_inter``) are left to nibabel's scaling
    (the bytes are then not kept, and nibabel reads the file a second time).
    """
    slope, inter = img.dataobj.slope, img.dataobj.inter
    plain = (
        str(path).endswith(".gz")
        and slope in (1.0,)
        and inter in (0.0,)
        and isinstance(img, nib.Nifti1Image)
    )
    sink = bytearray() if plain else None
    check_data_size(img, path, sink=sink)
    return sink


def array_from_bytes(img: nib.Nifti1Image, raw: bytearray) -> np.ndarray:
    """The image array (float32) from the uncompressed file bytes (Fortran order)."""
    dtype = img.get_data_dtype()
    offset = int(img.dataobj.offset)
    arr = np.ndarray(img.shape, dtype=dtype, buffer=raw, offset=offset, order="F")
    return arr.astype(np.float32)
