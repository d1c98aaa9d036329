"""Participant figures: mosaics, mask and registration overlays, histograms by region.

Drawn with matplotlib (no ``pyplot``): map mosaics with lesion contours and colour bars,
the brain mask and registration overlays, histograms of a map by region.

The mosaics are axial slices of the reference grid, downsampled to at most
``max_size`` voxels a side (a stride, no interpolation) so a report stays fast and small.
Registration overlays follow the NiPreps habit (Esteban et al. 2019, Nat Methods
16:111-116): the registered image in grey under the edges of the reference image (Canny
1986, IEEE TPAMI 8:679-698, :func:`skimage.feature.canny`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from skimage import feature

from bids_app.reports.render import new_figure, robust_window

#: contour colours: lesions, brain mask
LESION_COLOUR = "#ff2020"
MASK_COLOUR = "#ffd700"
EDGE_COLOUR = (0.0, 1.0, 1.0, 0.9)


def pick_slices(
    volume: np.ndarray, n_slices: int, support: np.ndarray | None = None
) -> np.ndarray:
    """Indices of ``n_slices`` axial slices evenly spread over the slices holding data.

    Parameters
    ----------
    volume : (X, Y, Z) ndarray
    n_slices : int
    support : (X, Y, Z) bool ndarray, optional
        Where the data is (default: finite non-zero voxels of ``volume``).

    Returns
    -------
    (n,) int ndarray
        Increasing slice indices along the third axis (``n <= n_slices``).
    """
    has = support if support is not None else np.isfinite(volume) & (volume != 0)
    zs = np.flatnonzero(has.any(axis=(0, 1)))
    if zs.size == 0:
        zs = np.arange(volume.shape[2])
    lo, hi = zs[0] + 0.15 * (zs[-1] - zs[0]), zs[-1] - 0.15 * (zs[-1] - zs[0])
    return np.unique(np.round(np.linspace(lo, hi, n_slices)).astype(int))


def _stride(shape: tuple[int, ...], max_size: int) -> int:
    return max(1, int(np.ceil(max(shape[:2]) / max_size)))


def _view(volume: np.ndarray, z: int, step: int) -> np.ndarray:
    """Slice ``z`` downsampled by ``step``, rotated so that +x is right and +y is up."""
    return np.rot90(volume[::step, ::step, z])


def tile(volume: np.ndarray, zs: np.ndarray, step: int, fill: float = np.nan) -> np.ndarray:
    """Slices ``zs`` side by side (one image: one axes, fast to draw), a column apart.

    Parameters
    ----------
    volume : (X, Y, Z) ndarray
    zs : (n,) int ndarray
    step : int
        Downsampling stride in x and y.
    fill : float
        Value of the separating columns.

    Returns
    -------
    (ceil(Y / step), n * (ceil(X / step) + 1) - 1) float ndarray
    """
    views = [_view(np.asarray(volume, dtype=float), int(z), step) for z in zs]
    gap = np.full((views[0].shape[0], 1), fill)
    parts = [p for v in views for p in (v, gap)][:-1]
    return np.concatenate(parts, axis=1)


def _size(row: np.ndarray, width_fraction: float, height: float = 1.2) -> tuple[float, float]:
    """Figure (width, height) in inches so that ``row`` fills its axes at equal aspect."""
    return height * row.shape[1] / row.shape[0] / width_fraction, height / 0.8


def _label_slices(ax, zs: np.ndarray, width: int) -> None:
    for i, z in enumerate(zs):
        ax.text((i + 0.5) * (width + 1) - 1, -1, f"z={z}", ha="center", va="bottom", fontsize=6)


def mosaic_figure(
    volume: np.ndarray,
    *,
    units: str,
    title: str = "",
    lesion: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    cmap: str = "gray",
    window: tuple[float, float] | None = None,
    n_slices: int = 6,
    max_size: int = 96,
):
    """One row of axial slices of a map with lesion (red) and mask (yellow) contours.

    Parameters
    ----------
    volume : (X, Y, Z) float ndarray
        A map on the reference grid (NaN outside the brain); ``units`` label its colour bar.
    units : str
    title : str, optional
    lesion, mask : (X, Y, Z) bool ndarray, optional
        Contoured at 0.5 (``matplotlib`` marching squares). With lesions, half of the
        slices are those holding the most lesion voxels, the rest evenly spread.
    cmap : str
        Matplotlib colour map.
    window : (2,) tuple of float, optional
        Display range; default the 2nd-98th percentiles of the finite values.
    n_slices, max_size : int
        Slices shown; largest side in voxels after downsampling.

    Returns
    -------
    matplotlib.figure.Figure
        One image axes (the slices, labelled ``z=<index>``) and a colour bar.
    """
    vol = np.asarray(volume, dtype=float)
    lo, hi = window or robust_window(vol)
    zs = pick_slices(vol, n_slices, mask)
    if lesion is not None and lesion.any():  # half the slices where the lesions are largest
        per_slice = lesion.sum(axis=(0, 1))
        top = np.argsort(per_slice, kind="stable")[::-1][: n_slices // 2]
        top = top[per_slice[top] > 0]
        spread = pick_slices(vol, n_slices - len(top), mask)
        zs = np.unique(np.concatenate([spread, top]))
    step = _stride(vol.shape, max_size)
    row = tile(vol, zs, step)
    fig = new_figure(*_size(row, 0.86))
    ax = fig.add_axes((0.01, 0.02, 0.86, 0.8))
    im = ax.imshow(row, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", aspect="equal")
    for overlay, colour in ((mask, MASK_COLOUR), (lesion, LESION_COLOUR)):
        if overlay is not None and overlay[:, :, zs].any():
            ax.contour(tile(overlay, zs, step, 0.0), levels=[0.5], colors=colour, linewidths=0.7)
    ax.set_axis_off()
    _label_slices(ax, zs, _view(vol, int(zs[0]), step).shape[1])
    cax = fig.add_axes((0.885, 0.08, 0.015, 0.68))
    fig.colorbar(im, cax=cax, label=units)
    if title:
        fig.suptitle(title, fontsize=8, x=0.02, ha="left")
    return fig


def edges_figure(
    registered: np.ndarray,
    reference: np.ndarray,
    *,
    title: str = "",
    n_slices: int = 6,
    max_size: int = 96,
):
    """A registered image in grey under the Canny edges (cyan) of the reference image.

    Parameters
    ----------
    registered, reference : (X, Y, Z) float ndarray
        Both on the reference grid.
    title : str, optional
    n_slices, max_size : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    reg = np.asarray(registered, dtype=float)
    ref = np.nan_to_num(np.asarray(reference, dtype=float))
    lo, hi = robust_window(reg)
    rlo, rhi = robust_window(ref)
    zs = pick_slices(ref, n_slices)
    step = _stride(ref.shape, max_size)
    row = tile(reg, zs, step)
    scaled = np.clip((tile(ref, zs, step, 0.0) - rlo) / (rhi - rlo), 0, 1)
    edges = feature.canny(scaled, sigma=1.0)
    rgba = np.zeros((*edges.shape, 4))
    rgba[edges] = EDGE_COLOUR
    fig = new_figure(*_size(row, 0.98))
    ax = fig.add_axes((0.01, 0.02, 0.98, 0.8))
    ax.imshow(row, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.imshow(rgba, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8, x=0.02, ha="left")
    return fig


def histogram_figure(
    volume: np.ndarray, regions: Mapping[str, np.ndarray], *, units: str, title: str = ""
):
    """Normalised histograms of a map's finite values in each region (step lines).

    Parameters
    ----------
    volume : (X, Y, Z) float ndarray
    regions : mapping of str to (X, Y, Z) bool ndarray
        Region name -> mask on the grid of ``volume``; empty regions are left out.
    units : str
        The x-axis label.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    vol = np.asarray(volume, dtype=float)
    values = {
        name: vol[m & np.isfinite(vol)] for name, m in regions.items() if m.shape == vol.shape
    }
    values = {k: v for k, v in values.items() if v.size}
    fig = new_figure(3.4, 2.0)
    ax = fig.subplots()
    if values:
        every = np.concatenate(list(values.values()))
        lo, hi = np.percentile(every, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        for name, v in values.items():
            ax.hist(v, bins=bins, histtype="step", density=True, label=f"{name} (n={v.size})")
        ax.legend(fontsize=6, frameon=False)
    else:
        ax.text(0.5, 0.5, "no finite values in the regions", ha="center", transform=ax.transAxes)
    ax.set_xlabel(units)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
