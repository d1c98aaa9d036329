"""Paramagnetic rim lesion index from a susceptibility map (pure array functions).

Chronic active ("smouldering") MS lesions carry iron-laden microglia at their edge, seen as a
paramagnetic rim on phase and QSM (Absinta M et al., J Clin Invest 2016; Dal-Bianco A et al.,
Acta Neuropathol 2017; consensus criteria in Bagnato F et al., Brain 2024: a rim that is
paramagnetic relative to the surrounding white matter along most of the lesion edge).

For every lesion (a label of ``labels``):

* ``rim``: the lesion's voxels within ``rim_mm`` of its border (the inner shell: the lesion
  masks, from FLAIR, include the iron rim); ``core``: its other voxels;
* ``core_mean``, ``rim_mean``: mean chi (ppm) of each;
* ``rim_index``: the fraction of rim voxels whose chi exceeds by more than ``threshold_ppm``
  both the NAWM mean and the lesion's own core mean (a rim is paramagnetic relative to the
  surrounding white matter *and* to its core; a uniformly hyperintense lesion, from myelin
  loss, has no rim);
* ``prl_candidate``: ``rim_index >= min_fraction`` with at least ``min_rim_voxels`` rim
  voxels.

The defaults (``threshold_ppm = 0.02``: below the +0.05 ppm synthetic rim excess once the
reconstruction has blurred it across the 1-2 voxel shell, above the ~0.005 ppm noise of chi
at SNR 100; ``min_fraction = 0.5``: a rim along at least half of the edge) were chosen on
the synthetic phantom of :mod:`bids_app.synth.qsm` at SNR 100 (see
``tests/models/test_qsm.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

RIM_COLUMNS = (
    "lesion_id",
    "n_voxels",
    "n_rim",
    "core_mean",
    "rim_mean",
    "rim_index",
    "prl_candidate",
)


def lesion_shells(labels: np.ndarray, zooms, rim_mm: float = 2.0) -> np.ndarray:
    """Inner border shells: the label where a lesion voxel is within ``rim_mm`` of non-lesion.

    Parameters
    ----------
    labels : (X, Y, Z) int ndarray
        0 background, 1.. lesions.
    zooms : (3,) tuple of float
        mm.
    rim_mm : float
        Shell thickness (mm); at least one voxel layer is always included.

    Returns
    -------
    (X, Y, Z) int ndarray
        The lesion label in its shell, 0 elsewhere.
    """
    labels = np.asarray(labels)
    # distance of each lesion voxel to the nearest voxel that is not the same lesion
    out = np.zeros_like(labels)
    objects = ndi.find_objects(labels.astype(np.int64))
    for lab, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        own = labels[sl] == lab
        dist = ndi.distance_transform_edt(np.pad(own, 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
        shell = own & (dist <= max(rim_mm, float(min(zooms))) + 1e-6)
        out[sl][shell] = lab
    return out


def rim_metrics(
    chi: np.ndarray,
    labels: np.ndarray,
    nawm: np.ndarray,
    zooms,
    *,
    rim_mm: float = 2.0,
    threshold_ppm: float = 0.02,
    min_fraction: float = 0.5,
    min_rim_voxels: int = 5,
) -> dict[str, np.ndarray]:
    """Per-lesion core and rim susceptibility and the rim index (module docstring).

    Parameters
    ----------
    chi : (X, Y, Z) ndarray
        Susceptibility (ppm), NaN where undefined (ignored).
    labels : (X, Y, Z) int ndarray
        Lesion labels (0 background).
    nawm : (X, Y, Z) bool ndarray
        Normal-appearing white matter (the reference of the threshold).
    zooms : (3,) tuple of float
        mm.
    rim_mm, threshold_ppm, min_fraction : float
    min_rim_voxels : int

    Returns
    -------
    dict
        Columns of :data:`RIM_COLUMNS`, one entry per label present (ascending); means are
        NaN where no finite chi exists; ``prl_candidate`` bool.

    Raises
    ------
    ValueError
        Shapes differ, or the NAWM mask has no finite chi.
    """
    chi = np.asarray(chi, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    nawm = np.asarray(nawm, bool)
    if not chi.shape == labels.shape == nawm.shape:
        raise ValueError(
            f"shapes differ: chi {chi.shape}, labels {labels.shape}, nawm {nawm.shape}"
        )
    ref = chi[nawm & np.isfinite(chi)]
    if ref.size == 0:
        raise ValueError("no finite chi in the NAWM mask")
    nawm_mean = float(ref.mean())
    shells = lesion_shells(labels, zooms, rim_mm)
    ids = np.unique(labels[labels > 0])
    out = {k: [] for k in RIM_COLUMNS}
    finite = np.isfinite(chi)
    for lab in ids:
        les = labels == lab
        rim = (shells == lab) & finite
        core = les & (shells != lab) & finite
        rim_vals, core_vals = chi[rim], chi[core]
        rim_mean = float(rim_vals.mean()) if rim_vals.size else np.nan
        core_mean = float(core_vals.mean()) if core_vals.size else np.nan
        base = max(nawm_mean, core_mean) if core_vals.size else nawm_mean
        index = float(np.mean(rim_vals > base + threshold_ppm)) if rim_vals.size else np.nan
        cand = bool(rim_vals.size >= min_rim_voxels and index >= min_fraction)
        for key, val in zip(
            RIM_COLUMNS,
            (int(lab), int(les.sum()), int(rim_vals.size), core_mean, rim_mean, index, cand),
            strict=True,
        ):
            out[key].append(val)
    return {k: np.asarray(v) for k, v in out.items()}
