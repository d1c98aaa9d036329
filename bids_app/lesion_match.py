"""Match lesions of two sessions by overlap and label their change (pure array code).

The lesion label images of the two sessions are on one grid (the earlier session's; see
:mod:`bids_app.longitudinal` for the resampling). Lesions are the nodes of a bipartite
graph whose edges join an earlier and a later lesion sharing at least one voxel; each
connected component of the graph is one tracked lesion (a lesion that splits or merges
with another stays one component). A component:

- with no earlier lesion is ``new``;
- with no later lesion is ``resolved``;
- otherwise its total volume changes from ``V0`` to ``V1``: ``enlarging`` when
  ``V1 - V0 > change_fraction * V0`` and by more than ``change_voxels`` voxels,
  ``shrinking`` when ``V0 - V1`` passes both thresholds, else ``stable`` (defaults 25 % and
  3 voxels; cf. the "new or enlarging T2 lesion" criteria of the MAGNIMS-CMSC-NAIMS 2021
  consensus, Wattjes et al., Lancet Neurol 2021;20:653-670, which leave the thresholds to
  the reader).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

#: change labels (CONTRACT 4.1)
CHANGES = ("new", "enlarging", "shrinking", "stable", "resolved")


@dataclass(frozen=True)
class Match:
    """One tracked lesion between two sessions.

    Attributes
    ----------
    ids_from, ids_to : tuple of int
        Labels at the earlier / later session (empty for new / resolved lesions).
    voxels_from, voxels_to : int
        Voxels on the common grid.
    overlap : int
        Voxels labelled at both sessions.
    change : str
        One of :data:`CHANGES`.
    """

    ids_from: tuple[int, ...]
    ids_to: tuple[int, ...]
    voxels_from: int
    voxels_to: int
    overlap: int
    change: str


def classify_change(
    v0: float, v1: float, *, voxel: float, change_fraction: float = 0.25,
    change_voxels: float = 3.0,
) -> str:  # fmt: skip
    """Change label of a lesion whose volume goes from ``v0`` to ``v1`` (same units).

    Parameters
    ----------
    v0, v1 : float
        Volumes at the earlier and later session (0 = absent).
    voxel : float
        Volume of one voxel (same units), for ``change_voxels``.
    change_fraction, change_voxels : float
        Thresholds (see the module docstring).

    Returns
    -------
    str
        One of :data:`CHANGES`.

    Examples
    --------
    >>> classify_change(10, 14, voxel=1), classify_change(10, 12, voxel=1)
    ('enlarging', 'stable')
    >>> classify_change(0, 5, voxel=1), classify_change(20, 0, voxel=1)
    ('new', 'resolved')
    """
    if v0 <= 0:
        return "new"
    if v1 <= 0:
        return "resolved"
    delta = v1 - v0
    big = abs(delta) > change_fraction * v0 and abs(delta) > change_voxels * voxel
    if not big:
        return "stable"
    return "enlarging" if delta > 0 else "shrinking"


def match_lesions(
    labels_from: np.ndarray,
    labels_to: np.ndarray,
    *,
    change_fraction: float = 0.25,
    change_voxels: float = 3.0,
) -> list[Match]:
    """Track the lesions of two label images on one grid.

    Parameters
    ----------
    labels_from, labels_to : (X, Y, Z) int ndarray
        0 background, one positive integer per lesion.
    change_fraction, change_voxels : float
        Thresholds of :func:`classify_change` (volumes in voxels here).

    Returns
    -------
    list of Match
        Components sorted by their smallest earlier label, new lesions last.

    Raises
    ------
    ValueError
        When the shapes differ.

    Examples
    --------
    >>> a = np.zeros((8, 1, 1), int); b = a.copy()
    >>> a[0:2] = 1; a[5:7] = 2; b[0:2] = 1; b[3] = 2
    >>> [(m.ids_from, m.ids_to, m.change) for m in match_lesions(a, b, change_voxels=0)]
    [((1,), (1,), 'stable'), ((2,), (), 'resolved'), ((), (2,), 'new')]
    """
    a = np.asarray(labels_from).astype(np.int64, copy=False)
    b = np.asarray(labels_to).astype(np.int64, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"label images of shapes {a.shape} and {b.shape}: expected one grid")
    ids_a = np.unique(a[a > 0])
    ids_b = np.unique(b[b > 0])
    na, nb = ids_a.size, ids_b.size
    count_a = dict(
        zip(ids_a.tolist(), np.bincount(np.searchsorted(ids_a, a[a > 0]), minlength=na).tolist())
    )
    count_b = dict(
        zip(ids_b.tolist(), np.bincount(np.searchsorted(ids_b, b[b > 0]), minlength=nb).tolist())
    )
    both = (a > 0) & (b > 0)
    pairs, overlap = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    ia = np.searchsorted(ids_a, pairs[0])
    ib = np.searchsorted(ids_b, pairs[1]) + na
    graph = sparse.coo_matrix((np.ones(ia.size), (ia, ib)), shape=(na + nb, na + nb))
    n_comp, comp = connected_components(graph, directed=False)
    ov = {(int(x), int(y)): int(c) for x, y, c in zip(pairs[0], pairs[1], overlap)}
    out = []
    for k in range(n_comp):
        members = np.flatnonzero(comp == k)
        f = tuple(int(ids_a[i]) for i in members if i < na)
        t = tuple(int(ids_b[i - na]) for i in members if i >= na)
        v0 = sum(count_a[i] for i in f)
        v1 = sum(count_b[i] for i in t)
        inter = sum(c for (x, y), c in ov.items() if x in f and y in t)
        change = classify_change(
            v0, v1, voxel=1.0, change_fraction=change_fraction, change_voxels=change_voxels
        )
        out.append(Match(f, t, v0, v1, inter, change))
    out.sort(key=lambda m: (not m.ids_from, m.ids_from or m.ids_to))
    return out
