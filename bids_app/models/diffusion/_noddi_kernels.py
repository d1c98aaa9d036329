"""NODDI response kernels for a linearised (AMICO-style) fit.

The three NODDI compartments [1]_ (Watson-dispersed sticks, the Watson-averaged tortuosity
zeppelin and free water) are axially symmetric about the fibre direction ``mu``, so on a shell
of b-value ``b`` each kernel depends only on ``t = (g . mu)^2``. For a grid of ODI (Watson
``kappa``) and ICVF values, each tissue atom

    a_ij(b, t) = v_j A_ic(b, t; kappa_i) + (1 - v_j) A_ec(b, t; kappa_i, v_j)

is stored per shell as a Chebyshev series in ``x = 2 t - 1`` (fitted to the exact signal of
:mod:`._noddi_forward`), so that the dictionary of any voxel, whatever its principal direction,
follows from the Chebyshev polynomials of its ``x`` values: no rotation look-up table and no
direction quantisation (unlike the 500-direction table of AMICO [2]_).

References
----------
.. [1] Zhang H, Schneider T, Wheeler-Kingshott CA, Alexander DC. NODDI: practical in vivo
   neurite orientation dispersion and density imaging of the human brain. NeuroImage
   2012;61:1000-1016.
.. [2] Daducci A, Canales-Rodriguez EJ, Zhang H, Dyrby TB, Alexander DC, Thiran JP.
   Accelerated Microstructure Imaging via Convex Optimization (AMICO) from diffusion MRI
   data. NeuroImage 2015;105:32-44.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev as cheb

from bids_app.models.diffusion._noddi_forward import (
    D_ISO,
    D_PAR,
    extra_signal,
    intra_signal,
    odi_to_kappa,
)

logger = logging.getLogger(__name__)

#: Default grids. ODI is sampled uniformly (the fit interpolates linearly between atoms);
#: 0.01-0.99 covers kappa 0.016-64.
ODI_GRID = np.linspace(0.01, 0.99, 50)
ICVF_GRID = np.linspace(0.0, 1.0, 26)
#: Chebyshev degree in t per shell: max abs error < 2e-6 of S/S0 up to b = 3000 s/mm^2
#: (1e-8 at degree 10), far below any noise level.
DEGREE = 8
#: b-values closer than this (s/mm^2) form one shell; b <= B0_MAX counts as b = 0.
SHELL_TOL = 50.0
B0_MAX = 50.0


@dataclass(frozen=True)
class NoddiKernels:
    """Per-shell Chebyshev coefficients of the NODDI dictionary.

    Attributes
    ----------
    shell_b : numpy.ndarray, shape (n_shells,)
        Shell b-values (s/mm^2), ascending; ``shell_b[0]`` is the b = 0 shell.
    shell_index : numpy.ndarray, shape (n_meas,)
        Shell of each measurement.
    odi_grid, icvf_grid : numpy.ndarray, shape (n_odi,), (n_icvf,)
        Grid values; atom ``k = i * n_icvf + j`` has ODI ``odi_grid[i]``, ICVF
        ``icvf_grid[j]``.
    coef : numpy.ndarray, shape (n_odi * n_icvf, n_shells, degree + 1)
        Chebyshev coefficients (in ``x = 2 t - 1``) of the tissue atoms.
    intra_coef : numpy.ndarray, shape (n_odi, n_shells, degree + 1)
        Coefficients of the intra-cellular kernel alone.
    iso : numpy.ndarray, shape (n_shells,)
        Free-water signal ``exp(-b d_iso)`` per shell.
    fit_error : float
        Largest absolute error of the Chebyshev series on a fine ``t`` grid.
    """

    shell_b: np.ndarray
    shell_index: np.ndarray
    odi_grid: np.ndarray
    icvf_grid: np.ndarray
    coef: np.ndarray
    intra_coef: np.ndarray
    iso: np.ndarray
    fit_error: float

    @property
    def n_atoms(self) -> int:
        """Number of tissue atoms."""
        return self.coef.shape[0]

    @property
    def atom_odi(self) -> np.ndarray:
        """ODI of each tissue atom, shape (n_atoms,)."""
        return np.repeat(self.odi_grid, self.icvf_grid.size)

    @property
    def atom_icvf(self) -> np.ndarray:
        """ICVF of each tissue atom, shape (n_atoms,)."""
        return np.tile(self.icvf_grid, self.odi_grid.size)


def group_shells(bvals, shell_tol=SHELL_TOL, b0_max=B0_MAX):
    """Group b-values into shells.

    Parameters
    ----------
    bvals : array_like, shape (n_meas,)
        b-values (s/mm^2).
    shell_tol : float
        Sorted b-values closer than this (s/mm^2) belong to one shell.
    b0_max : float
        b-values at or below this are the b = 0 shell (s/mm^2).

    Returns
    -------
    shell_b : numpy.ndarray, shape (n_shells,)
        Mean b-value of each shell (0 for the b = 0 shell).
    shell_index : numpy.ndarray of int, shape (n_meas,)

    Raises
    ------
    ValueError
        If there is no b = 0 measurement or a b-value is negative or not finite.
    """
    b = np.asarray(bvals, dtype=float).ravel()
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError("bvals must be finite and >= 0 (s/mm^2)")
    if not np.any(b <= b0_max):
        raise ValueError(f"NODDI needs at least one b=0 volume (b <= {b0_max} s/mm^2)")
    order = np.argsort(b, kind="stable")
    bs = np.where(b[order] <= b0_max, 0.0, b[order])
    new = np.r_[True, (np.diff(bs) > shell_tol) | ((bs[1:] > 0) & (bs[:-1] == 0))]
    sorted_index = np.cumsum(new) - 1
    index = np.empty_like(sorted_index)
    index[order] = sorted_index
    shell_b = np.array([bs[sorted_index == s].mean() for s in range(sorted_index[-1] + 1)])
    return shell_b, index


def chebyshev_basis(x, n):
    """Chebyshev polynomials ``T_0 .. T_{n-1}`` at ``x`` by recurrence.

    Parameters
    ----------
    x : numpy.ndarray
        Points in [-1, 1], any shape ``p``.
    n : int
        Number of polynomials (>= 1).

    Returns
    -------
    numpy.ndarray, shape ``p + (n,)``, dtype of ``x``.
    """
    out = np.empty((*x.shape, n), dtype=x.dtype)
    out[..., 0] = 1.0
    if n > 1:
        out[..., 1] = x
    for k in range(2, n):
        out[..., k] = 2.0 * x * out[..., k - 1] - out[..., k - 2]
    return out


def _fit_cheb(values, t_nodes, degree):
    """Chebyshev coefficients (last axis) of ``values`` sampled at ``t_nodes``."""
    flat = values.reshape(-1, t_nodes.size).T
    return cheb.chebfit(2.0 * t_nodes - 1.0, flat, degree).T.reshape(*values.shape[:-1], -1)


def build_kernels(
    bvals,
    *,
    d_par=D_PAR,
    d_iso=D_ISO,
    odi_grid=None,
    icvf_grid=None,
    degree=DEGREE,
    shell_tol=SHELL_TOL,
    b0_max=B0_MAX,
):
    """Chebyshev representation of the NODDI dictionary for a protocol.

    Parameters
    ----------
    bvals : array_like, shape (n_meas,)
        b-values (s/mm^2).
    d_par, d_iso : float
        Intrinsic parallel and free-water diffusivities (mm^2/s).
    odi_grid, icvf_grid : array_like, optional
        Grid values (ODI in (0, 1], ICVF in [0, 1]); defaults ``ODI_GRID``, ``ICVF_GRID``.
    degree : int
        Chebyshev degree in ``t = cos^2`` per shell.
    shell_tol, b0_max : float
        Passed to :func:`group_shells`.

    Returns
    -------
    NoddiKernels

    Raises
    ------
    ValueError
        If the grids are out of range or the b-values invalid (see :func:`group_shells`).
    """
    shell_b, shell_index = group_shells(bvals, shell_tol, b0_max)
    odi = np.asarray(ODI_GRID if odi_grid is None else odi_grid, dtype=float)
    icvf = np.asarray(ICVF_GRID if icvf_grid is None else icvf_grid, dtype=float)
    if odi.min() <= 0 or odi.max() > 1 or icvf.min() < 0 or icvf.max() > 1:
        raise ValueError("odi_grid must lie in (0, 1] and icvf_grid in [0, 1]")
    if np.any(np.diff(odi) <= 0) or np.any(np.diff(icvf) <= 0) or odi.size < 2 or icvf.size < 2:
        raise ValueError("odi_grid and icvf_grid must be increasing with >= 2 values")
    kappa = odi_to_kappa(odi)
    n_nodes = 3 * (degree + 1)
    t_nodes = 0.5 * (1.0 - np.cos(np.pi * (np.arange(n_nodes) + 0.5) / n_nodes))
    t_check = np.linspace(0.0, 1.0, 201)
    t_all = np.r_[t_nodes, t_check]
    n_s = shell_b.size
    b_col = np.repeat(shell_b, t_all.size)
    cos_col = np.tile(np.sqrt(t_all), n_s)
    a_ic = intra_signal(b_col, cos_col, kappa, d_par).reshape(odi.size, 1, n_s, t_all.size)
    a_ec = extra_signal(
        b_col.reshape(n_s, -1),
        cos_col.reshape(n_s, -1),
        kappa[:, None, None, None],
        icvf[None, :, None, None],
        d_par,
    )  # (n_odi, n_icvf, n_s, n_t)
    v = icvf[None, :, None, None]
    atoms = v * a_ic + (1.0 - v) * a_ec
    n_fit = t_nodes.size
    coef = _fit_cheb(atoms[..., :n_fit], t_nodes, degree)
    intra_coef = _fit_cheb(a_ic[:, 0, :, :n_fit], t_nodes, degree)
    recon = np.einsum("...l,tl->...t", coef, chebyshev_basis(2.0 * t_check - 1.0, degree + 1))
    err = float(np.abs(recon - atoms[..., n_fit:]).max())
    logger.debug(
        "NODDI kernels: %d shells, %d atoms, fit error %.2e", n_s, atoms[..., 0, 0].size, err
    )
    return NoddiKernels(
        shell_b=shell_b,
        shell_index=shell_index,
        odi_grid=odi,
        icvf_grid=icvf,
        coef=coef.reshape(odi.size * icvf.size, n_s, degree + 1),
        intra_coef=intra_coef,
        iso=np.exp(-shell_b * d_iso),
        fit_error=err,
    )


def dictionary(kernels, bvecs, directions):
    """Explicit per-voxel dictionary (for checks and small problems).

    Parameters
    ----------
    kernels : NoddiKernels
    bvecs : array_like, shape (n_meas, 3)
        Unit gradient directions.
    directions : array_like, shape (n_vox, 3)
        Unit fibre directions.

    Returns
    -------
    numpy.ndarray, shape (n_vox, n_meas, n_atoms + 1)
        Tissue atoms then the free-water atom (last column).
    """
    cos = np.atleast_2d(directions) @ np.asarray(bvecs, dtype=float).T
    x = np.clip(2.0 * cos**2 - 1.0, -1.0, 1.0)
    basis = chebyshev_basis(x, kernels.coef.shape[-1])  # (n_vox, n_meas, L)
    c = kernels.coef[:, kernels.shell_index, :]  # (n_atoms, n_meas, L)
    tissue = np.einsum("vml,aml->vma", basis, c)
    iso = np.broadcast_to(kernels.iso[kernels.shell_index][None, :, None], (*x.shape, 1))
    return np.concatenate([tissue, iso], axis=-1)


def cell_atoms(i0, j0, n_icvf):
    """Atom indices (..., 4) of the grid cells with lower corners (i0, j0)."""
    a = i0 * n_icvf + j0
    return np.stack([a, a + n_icvf, a + 1, a + n_icvf + 1], axis=-1)


def _pair_table(ca, cb):
    """Weights ``w_p`` with ``sum_m a(x_m) b(x_m) = sum_p w_p Q_p``, ``Q_p = sum_m T_p(x_m)``.

    ``ca``, ``cb`` (..., S, L) are Chebyshev series; ``T_l T_k = (T_{l+k} + T_{|l-k|}) / 2``.
    """
    n_l = ca.shape[-1]
    out = np.zeros((*ca.shape[:-1], 2 * n_l - 1))
    for i in range(n_l):
        for j in range(n_l):
            prod = 0.5 * ca[..., i] * cb[..., j]
            out[..., i + j] += prod
            out[..., abs(i - j)] += prod
    return out


class DictionaryTables:
    """Products of the kernels needed by the moment-based fit (built once per protocol).

    For a voxel with Chebyshev moments ``M`` (S, L) of its data and ``Q`` (S, P) of its basis
    (:func:`chebyshev_moments`), ``a_k . y = c_k . M``, ``a_k . u = u_k . Q[:, :L]`` and
    ``|a_k|^2 = k_k . Q`` (``u`` the free-water atom). ``*_rows`` hold these vectors per atom
    (n_atoms, ...) and ``*_coarse`` the transposed columns of the coarse sub-grid (every
    second ODI and ICVF value); ``cell_gram`` (n_cells, 10, S * P) gives the Gram matrix of
    the 4 corners of each grid cell (pairs ``pairs``).

    Parameters
    ----------
    kern : NoddiKernels
    dtype : numpy dtype
        Precision of the tables used with the data.
    """

    def __init__(self, kern, dtype=np.float32):
        coef = kern.coef
        n_a, n_s, n_l = coef.shape
        self.n_l, self.n_p, self.n_s = n_l, 2 * n_l - 1, n_s
        self.n_odi, self.n_icvf = kern.odi_grid.size, kern.icvf_grid.size
        self.atom_odi, self.atom_icvf = kern.atom_odi, kern.atom_icvf
        self.iso = kern.iso.astype(dtype)
        counts = np.bincount(kern.shell_index, minlength=n_s)
        self.uu = float(np.sum(counts * kern.iso**2))
        self.order = np.argsort(kern.shell_index, kind="stable")
        bounds = np.r_[0, np.cumsum(counts)]
        self.slices = [slice(bounds[s], bounds[s + 1]) for s in range(n_s)]
        self.c_rows = coef.reshape(n_a, -1).astype(dtype)
        self.u_rows = (coef * kern.iso[None, :, None]).reshape(n_a, -1).astype(dtype)
        self.k_rows = _pair_table(coef, coef).reshape(n_a, -1).astype(dtype)
        ci, cj = np.arange(0, self.n_odi, 2), np.arange(0, self.n_icvf, 2)
        self.coarse_shape = (ci.size, cj.size)
        self.coarse_atoms = (ci[:, None] * self.n_icvf + cj[None, :]).ravel()
        self.c_coarse, self.u_coarse, self.k_coarse = (
            np.ascontiguousarray(r[self.coarse_atoms].T)
            for r in (self.c_rows, self.u_rows, self.k_rows)
        )
        i0, j0 = np.meshgrid(np.arange(self.n_odi - 1), np.arange(self.n_icvf - 1), indexing="ij")
        corners = cell_atoms(i0.ravel(), j0.ravel(), self.n_icvf)
        self.pairs = np.array([(a, b) for a in range(4) for b in range(a, 4)])
        gram = _pair_table(coef[corners[:, self.pairs[:, 0]]], coef[corners[:, self.pairs[:, 1]]])
        self.cell_gram = gram.reshape(corners.shape[0], self.pairs.shape[0], -1).astype(dtype)


def chebyshev_moments(tables, y, x):
    """Chebyshev moments of a batch of voxels.

    Parameters
    ----------
    tables : DictionaryTables
    y : numpy.ndarray, shape (B, n_meas)
        Normalised signals, measurements in ``tables.order``.
    x : numpy.ndarray, shape (B, n_meas)
        ``2 (g . mu)^2 - 1``, same order.

    Returns
    -------
    m : numpy.ndarray, shape (B, S, L)
        ``M_sl = sum_{m in s} y_m T_l(x_m)``.
    q : numpy.ndarray, shape (B, S, 2 L - 1)
        ``Q_sp = sum_{m in s} T_p(x_m)``. Shell 0 (b = 0, where every atom is constant) uses
        ``x = 1``.
    """
    n_b = y.shape[0]
    m = np.empty((n_b, tables.n_s, tables.n_l), dtype=y.dtype)
    q = np.empty((n_b, tables.n_s, tables.n_p), dtype=y.dtype)
    sl0 = tables.slices[0]
    m[:, 0, :] = y[:, sl0].sum(axis=1)[:, None]
    q[:, 0, :] = sl0.stop - sl0.start
    for s in range(1, tables.n_s):
        xs = np.ascontiguousarray(x[:, tables.slices[s]])
        ys = np.ascontiguousarray(y[:, tables.slices[s]])
        t_prev, t_cur = np.ones_like(xs), xs
        q[:, s, 0] = xs.shape[1]
        m[:, s, 0] = ys.sum(axis=1)
        for k in range(1, tables.n_p):
            if k > 1:
                t_prev, t_cur = t_cur, 2.0 * xs * t_cur - t_prev
            q[:, s, k] = t_cur.sum(axis=1)
            if k < tables.n_l:
                m[:, s, k] = np.einsum("bm,bm->b", ys, t_cur)
    return m, q
