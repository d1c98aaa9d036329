"""QC figures as SVG files (an embedded PNG mosaic), written as BIDS ``figures`` derivatives."""

from __future__ import annotations

import base64
import io as _io

import imageio.v3 as iio
import numpy as np
from skimage import segmentation


def _scale(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.nan_to_num((img - lo) / (hi - lo if hi > lo else 1.0), nan=0.0)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def mosaic(
    volume: np.ndarray,
    *,
    outline: np.ndarray | None = None,
    n_slices: int = 5,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Axial slices side by side as an RGB uint8 image, with an optional red outline.

    Parameters
    ----------
    volume : (X, Y, Z) ndarray
    outline : (X, Y, Z) bool ndarray, optional
        Mask whose border is drawn in red (e.g. lesions).
    n_slices : int
    window : (2,) tuple of float, optional
        Display range; default the 2nd-98th percentiles of the finite values.

    Returns
    -------
    (Y, n_slices * X, 3) uint8 ndarray
    """
    finite = volume[np.isfinite(volume)]
    lo, hi = window or (
        (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (0.0, 1.0)
    )
    zs = np.linspace(0.25, 0.75, n_slices) * (volume.shape[2] - 1)
    tiles = []
    for z in np.round(zs).astype(int):
        grey = np.rot90(_scale(volume[:, :, z], lo, hi))
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        if outline is not None and outline[:, :, z].any():
            edge = np.rot90(segmentation.find_boundaries(outline[:, :, z], mode="inner"))
            rgb[edge] = (230, 30, 30)
        tiles.append(rgb)
    return np.concatenate(tiles, axis=1)


def svg_figure(rgb: np.ndarray, title: str, *, scale: int = 3) -> str:
    """An SVG document embedding ``rgb`` as a PNG, with a title line."""
    buf = _io.BytesIO()
    iio.imwrite(buf, rgb, extension=".png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    h, w = rgb.shape[:2]
    W, H = w * scale, h * scale + 24
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}"><rect width="100%" height="100%" fill="black"/>'
        f'<text x="6" y="17" fill="white" font-family="sans-serif" font-size="14">'
        f"{title}</text>"
        f'<image x="0" y="24" width="{W}" height="{h * scale}" '
        f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/></svg>\n'
    )
