"""Flux-conserving resampling of spectra given as arrays on bin edges.

The flux density inside each input pixel is reconstructed as a parabola whose mean
over the pixel is the pixel's value and whose values at the pixel edges are
interpolated linearly between the neighbouring pixel centres (extrapolated at the
end of a run of valid pixels); the reconstruction is continuous and reproduces
linear spectra exactly.  An output pixel receives the mean of this density over the
valid part of its bin (missing input pixels carry no weight), so the integral of the
flux is conserved and the operator is a sparse matrix acting on the flux; variances
propagate through the squares of its entries.  Bins are built from pixel centres
(midpoints between neighbours, the outer edges half a pixel out), as in
:class:`specutils.manipulation.FluxConservingResampler`.

:mod:`specutils_deepclean.spectra` uses it to put `~specutils.Spectrum` objects on a
model grid and back, :mod:`specutils_deepclean.doppler` to shift spectra.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse

__all__ = ["bin_edges", "rebin_matrix", "rebin"]

# Coverage thresholds allow for rounding, so that full coverage (1.0) can be asked for.
_ROUNDING = 1.0 - 1e-9


# --------------------------------------------------------------------------------------
# Bins and the overlap matrix
# --------------------------------------------------------------------------------------


def bin_edges(centres: np.ndarray) -> np.ndarray:
    """Bin edges of pixels with the given (strictly increasing) centres.

    Parameters
    ----------
    centres : ndarray, shape (n,)
        Strictly increasing pixel centres, ``n >= 2``.

    Returns
    -------
    ndarray, shape (n + 1,)
        Midpoints between neighbouring centres, and outer edges half a pixel beyond
        the first and last centre.

    Examples
    --------
    >>> bin_edges(np.array([1.0, 2.0, 4.0]))
    array([0.5, 1.5, 3. , 5. ])
    """
    centres = np.asarray(centres, dtype=float)
    if centres.ndim != 1 or centres.size < 2:
        raise ValueError("bin_edges needs a 1-D array of at least two pixel centres")
    if not np.all(np.diff(centres) > 0):
        raise ValueError("pixel centres must be strictly increasing")
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - (mid[0] - centres[0])
    last = centres[-1] + (centres[-1] - mid[-1])
    return np.concatenate([[first], mid, [last]])


def _segments(in_edges: np.ndarray, out_edges: np.ndarray):
    """Cut the common range of two binnings into pieces inside one bin of each.

    Returns the input bin ``i``, output bin ``j`` and the ends ``lo``, ``hi`` of every
    piece (empty arrays when the ranges do not overlap).
    """
    lo = max(in_edges[0], out_edges[0])
    hi = min(in_edges[-1], out_edges[-1])
    if hi <= lo:
        empty = np.zeros(0)
        return empty.astype(int), empty.astype(int), empty, empty
    cuts = np.concatenate([in_edges, out_edges])
    cuts = np.unique(cuts[(cuts > lo) & (cuts < hi)])
    cuts = np.concatenate([[lo], cuts, [hi]])
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    # Edges of the two grids that differ by rounding only leave pieces one ulp long
    # whose midpoint rounds onto an edge and would be put in no bin: drop them.
    keep = (mid > cuts[:-1]) & (mid < cuts[1:])
    mid, start, end = mid[keep], cuts[:-1][keep], cuts[1:][keep]
    i = np.searchsorted(in_edges, mid) - 1
    j = np.searchsorted(out_edges, mid) - 1
    return i, j, start, end


def rebin_matrix(in_edges: np.ndarray, out_edges: np.ndarray) -> scipy.sparse.csr_matrix:
    """Overlap lengths between input and output bins.

    Parameters
    ----------
    in_edges, out_edges : ndarray
        Strictly increasing bin edges, shapes ``(n_in + 1,)`` and ``(n_out + 1,)``.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_out, n_in)
        Entry ``(j, i)`` is the length of the overlap of output bin ``j`` and input
        bin ``i`` (zero where they do not overlap).

    Examples
    --------
    >>> rebin_matrix(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5])).toarray()
    array([[0.5, 0.5]])
    """
    in_edges = np.asarray(in_edges, dtype=float)
    out_edges = np.asarray(out_edges, dtype=float)
    i, j, lo, hi = _segments(in_edges, out_edges)
    shape = (out_edges.size - 1, in_edges.size - 1)
    return scipy.sparse.csr_matrix((hi - lo, (j, i)), shape=shape)


# --------------------------------------------------------------------------------------
# The piecewise-parabolic reconstruction
# --------------------------------------------------------------------------------------


def _parabola_integrals(s: np.ndarray):
    """Integrals over ``[0, s]`` of the three basis functions of a pixel's parabola.

    In local coordinates ``t`` in [0, 1] the density is
    ``L (1 - 4t + 3t^2) + R (3t^2 - 2t) + f (6t - 6t^2)``: value ``L`` at the left
    edge, ``R`` at the right edge and mean ``f``.
    """
    s2 = s * s
    s3 = s2 * s
    return s - 2 * s2 + s3, s3 - s2, 3 * s2 - 2 * s3


@functools.lru_cache(maxsize=16)
def _stencil_weights(widths_key: bytes) -> dict:
    """Candidate edge weights for given bin widths (cached by their bytes).

    Edge ``k`` lies between pixels ``k - 1`` and ``k``; every array has one entry per
    edge (``n + 1``).  ``interp`` interpolates linearly between the centres of pixels
    ``k - 1`` and ``k``; ``from_left`` extrapolates linearly from pixels ``k - 2`` and
    ``k - 1``, ``from_right`` from pixels ``k`` and ``k + 1``; ``fourth`` (``(n + 1, 4)``,
    pixels ``k - 2 .. k + 1``) is exact for cubic densities: the derivative at edge
    ``k`` of the quartic through the cumulative integral at edges ``k - 2 .. k + 2``
    (uniform pixels: ``(-1, 7, 7, -1) / 12``).
    """
    widths = np.frombuffer(widths_key)
    hp = np.pad(widths, 2, constant_values=1.0)
    # Pixel k + o of edge k sits at padded index k + o + 2.
    h = {o: hp[o + 2 : o + 3 + widths.size] for o in (-2, -1, 0, 1)}
    nodes = np.stack([-(h[-2] + h[-1]), -h[-1], np.zeros_like(h[0]), h[0], h[0] + h[1]])
    slope = {2: -sum(1.0 / nodes[q] for q in (0, 1, 3, 4))}
    for node in (0, 1, 3, 4):
        term = 1.0 / nodes[node]
        for q in {0, 1, 3, 4} - {node}:
            term = term * (-nodes[q]) / (nodes[node] - nodes[q])
        slope[node] = term
    # The cumulative integral at node l sums pixels 0 .. l-1 of the stencil.
    fourth = np.stack(
        [
            (h[-2], h[-1], h[0], h[1])[p] * sum(slope[node] for node in range(p + 1, 5))
            for p in range(4)
        ],
        axis=-1,
    )
    return {
        "interp": (h[0] / (h[-1] + h[0]), h[-1] / (h[-1] + h[0])),
        "from_left": (-h[-1] / (h[-1] + h[-2]), (2 * h[-1] + h[-2]) / (h[-1] + h[-2])),
        "from_right": ((2 * h[0] + h[1]) / (h[0] + h[1]), -h[0] / (h[0] + h[1])),
        "fourth": fourth,
    }


def _edge_stencils(widths: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Weights giving the flux density at every bin edge from valid neighbours.

    Edge ``k`` lies between pixels ``k - 1`` and ``k``.  With pixels ``k - 2 .. k + 1``
    all valid, the density there is exact for cubic densities; with only ``k - 1``
    and ``k`` valid, it is the linear interpolation between their centres; with one of
    them valid, the linear extrapolation from it and the next valid pixel on its side
    (or its own value when that one is missing too); with none, zero (unused: both
    pixels carry no weight).  Every non-zero row sums to one.

    Parameters
    ----------
    widths : ndarray, shape (n,)
        Input bin widths.
    good : ndarray of bool, shape (n_spec, n)
        Valid input pixels.

    Returns
    -------
    ndarray, shape (n_spec, n + 1, 4)
        Weights of pixels ``k - 2, k - 1, k, k + 1`` for edge ``k``.
    """
    n = widths.size
    cand = _stencil_weights(np.ascontiguousarray(widths, dtype=float).tobytes())
    gp = np.pad(good, ((0, 0), (2, 2)), constant_values=False)
    g = {o: gp[:, o + 2 : o + 3 + n] for o in (-2, -1, 0, 1)}
    both = g[-1] & g[0]
    left_only = g[-1] & ~g[0]
    right_only = g[0] & ~g[-1]
    left_extra = left_only & g[-2]
    right_extra = right_only & g[1]
    w = np.zeros((good.shape[0], n + 1, 4))
    w[..., 0] = np.where(left_extra, cand["from_left"][0], 0.0)
    w[..., 1] = np.where(both, cand["interp"][0], 0.0)
    w[..., 1] += np.where(left_extra, cand["from_left"][1], 0.0)
    w[..., 1] += left_only & ~g[-2]
    w[..., 2] = np.where(both, cand["interp"][1], 0.0)
    w[..., 2] += np.where(right_extra, cand["from_right"][0], 0.0)
    w[..., 2] += right_only & ~g[1]
    w[..., 3] = np.where(right_extra, cand["from_right"][1], 0.0)
    all_four = both & g[-2] & g[1]
    return np.where(all_four[..., None], cand["fourth"], w)


def _edge_values(flux: np.ndarray, stencils: np.ndarray) -> np.ndarray:
    """Density at every bin edge, ``(n_spec, n + 1)``, from zero-filled flux."""
    n = flux.shape[-1]
    fp = np.pad(flux, ((0, 0), (2, 2)))
    return sum(stencils[..., o] * fp[:, o : o + n + 1] for o in range(4))


def _cumulative(flux, good, edges, x):
    """Cumulative integrals of the reconstructed flux and of the valid length at ``x``.

    ``flux`` is zero where not ``good``; ``x`` has shape ``(n_x,)`` or
    ``(n_spec, n_x)``; points outside the edges are clipped to them.
    """
    widths = np.diff(edges)
    zero = np.zeros((flux.shape[0], 1))
    cum_f = np.concatenate([zero, np.cumsum(flux * widths, axis=1)], axis=1)
    cum_g = np.concatenate([zero, np.cumsum(good * widths, axis=1)], axis=1)
    d = np.empty_like(cum_f)
    for rows in _pattern_groups(good):
        d[rows] = _edge_values(flux[rows], _edge_stencils(widths, good[rows[:1]]))
    x = np.clip(x, edges[0], edges[-1])
    i = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, widths.size - 1)
    s = (x - edges[i]) / widths[i]
    p_left, p_right, p_mean = _parabola_integrals(s)
    rows = np.arange(flux.shape[0])[:, None]
    gi = good[rows, i]
    part = widths[i] * (d[rows, i] * p_left + d[rows, i + 1] * p_right + flux[rows, i] * p_mean)
    return cum_f[rows, i] + gi * part, cum_g[rows, i] + gi * widths[i] * s


@functools.lru_cache(maxsize=16)
def _plan(in_key: bytes, out_key: bytes):
    """Geometry of the resampling matrix for given edges (cached by their bytes).

    Returns the input pixel ``i`` of every segment (piece of the common range inside
    one input and one output bin), the integrals of the three parabola basis functions
    over each segment, a sparse map from (segment, pixel offset -2..2) terms to the
    matrix entries ``(j, m)`` they add to, and the CSR column indices and row
    pointers of those entries.
    """
    in_edges = np.frombuffer(in_key)
    out_edges = np.frombuffer(out_key)
    n_in, n_out = in_edges.size - 1, out_edges.size - 1
    i, j, lo, hi = _segments(in_edges, out_edges)
    widths = np.diff(in_edges)
    s0 = (lo - in_edges[i]) / widths[i]
    s1 = (hi - in_edges[i]) / widths[i]
    basis = np.stack(
        [
            widths[i] * (b1 - b0)
            for b0, b1 in zip(_parabola_integrals(s0), _parabola_integrals(s1), strict=True)
        ]
    )
    pix = i[:, None] + np.arange(-2, 3)
    inside = (pix >= 0) & (pix < n_in)
    entry, slot = np.unique((j[:, None] * n_in + pix)[inside], return_inverse=True)
    gather = scipy.sparse.csr_matrix(
        (np.ones(slot.size), (slot, np.flatnonzero(inside.ravel()))),
        shape=(entry.size, pix.size),
    )
    indptr = np.concatenate([[0], np.cumsum(np.bincount(entry // n_in, minlength=n_out))])
    return i, basis, gather, entry % n_in, indptr


def _matrix(in_edges, out_edges, good: np.ndarray) -> scipy.sparse.csr_matrix:
    """The resampling matrix ``M`` (n_out, n_in) for one pattern of valid pixels.

    ``(M @ flux)_j`` is the integral over output bin ``j`` of the reconstructed
    density (missing pixels contribute nothing); the row sums of ``M`` are the valid
    lengths of the output bins.
    """
    i, (b_left, b_right, b_mean), gather, columns, indptr = _plan(
        np.ascontiguousarray(in_edges, dtype=float).tobytes(),
        np.ascontiguousarray(out_edges, dtype=float).tobytes(),
    )
    stencil = _edge_stencils(np.diff(in_edges), good[None, :])[0]
    coef = np.zeros((i.size, 5))
    coef[:, :4] = b_left[:, None] * stencil[i]  # edge i: pixels i-2 .. i+1
    coef[:, 1:] += b_right[:, None] * stencil[i + 1]  # edge i+1: pixels i-1 .. i+2
    coef[:, 2] += b_mean
    coef *= good[i, None]
    shape = (out_edges.size - 1, in_edges.size - 1)
    return scipy.sparse.csr_matrix((gather @ coef.ravel(), columns, indptr), shape=shape)


def _pattern_groups(good: np.ndarray) -> list[np.ndarray]:
    """Row indices of ``good`` grouped by identical rows."""
    groups: dict[bytes, list[int]] = {}
    for row, key in enumerate(np.packbits(good, axis=1)):
        groups.setdefault(key.tobytes(), []).append(row)
    return [np.array(rows) for rows in groups.values()]


def _resample(flux, in_edges, out_edges, *, variance=None, missing=None, min_coverage=0.5):
    """Core of `rebin` on explicit edges; arrays are ``(n_spec, n_in)``.

    One sparse matrix is built per distinct pattern of valid pixels in the batch (none
    when the two binnings are the same: the identity).  Everything is computed in float64 whatever the inputs' dtype and byte order: in
    float32 the coverage test's rounding allowance (`_ROUNDING`) vanishes and fully
    covered pixels are found uncovered.
    """
    flux = np.asarray(flux, dtype=np.float64)
    in_edges = np.asarray(in_edges, dtype=np.float64)
    out_edges = np.asarray(out_edges, dtype=np.float64)
    if variance is not None:
        variance = np.asarray(variance, dtype=np.float64)
    bad = ~np.isfinite(flux)
    if missing is not None:
        bad |= missing
    if variance is not None:
        bad |= ~np.isfinite(variance)
        variance = np.where(bad, 0.0, variance)
    if in_edges.shape == out_edges.shape and np.array_equal(in_edges, out_edges):
        # Same bins: M is diagonal, M_jj the width of bin j (a pixel's parabola has the
        # pixel's mean), so every valid pixel comes back as it is, every missing one
        # missing (its bin has no valid length); num / norm would only add rounding.
        out = np.where(bad, np.nan, flux)
        var_out = None if variance is None else np.where(bad, np.nan, variance)
        return out, var_out, bad if min_coverage > 0 else np.zeros_like(bad)
    flux = np.where(bad, 0.0, flux)
    n_spec, n_out = flux.shape[0], out_edges.size - 1
    num = np.zeros((n_spec, n_out))
    norm = np.zeros((n_spec, n_out))
    var_num = None if variance is None else np.zeros((n_spec, n_out))
    for rows in _pattern_groups(~bad):
        matrix = _matrix(in_edges, out_edges, ~bad[rows[0]])
        num[rows] = (matrix @ flux[rows].T).T
        norm[rows] = np.asarray(matrix.sum(axis=1)).ravel()
        if variance is not None:
            var_num[rows] = (matrix.multiply(matrix) @ variance[rows].T).T
    missing_out = norm < min_coverage * np.diff(out_edges) * _ROUNDING
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(missing_out, np.nan, num / norm)
        var_out = None if variance is None else np.where(missing_out, np.nan, var_num / norm**2)
    return out, var_out, missing_out


def _as_batch(values, shape, dtype):
    return np.broadcast_to(np.asarray(values, dtype=dtype), shape).reshape(-1, shape[-1])


def rebin(
    flux: np.ndarray,
    in_centres: np.ndarray,
    out_centres: np.ndarray,
    *,
    variance: np.ndarray | None = None,
    missing: np.ndarray | None = None,
    min_coverage: float = 0.5,
):
    """Flux-conserving resampling of one or many spectra, with missing pixels.

    The density in each input pixel is a parabola with the pixel's mean and
    continuous values at the pixel edges (see the module notes); an output pixel is
    the mean of that density over the valid part of its bin.  Missing input pixels get
    zero weight and never enter a neighbour's parabola; an output pixel is missing
    when less than ``min_coverage`` of its bin is covered by valid input pixels.

    Parameters
    ----------
    flux : ndarray, shape (..., n_in)
        Flux densities (last axis spectral).
    in_centres, out_centres : ndarray
        Strictly increasing pixel centres of the input and output grids.
    variance : ndarray, shape (..., n_in), optional
        Per-pixel variances, propagated as ``sum_i M_ji**2 var_i`` through the
        resampling matrix ``M`` (the output's pixel-to-pixel covariance is not
        returned).
    missing : ndarray of bool, shape (..., n_in), optional
        True where an input pixel is missing.  Non-finite flux (or variance) is
        missing too.
    min_coverage : float
        Smallest valid fraction of an output bin for the output pixel to be valid.

    Returns
    -------
    flux_out : ndarray, shape (..., n_out)
        Resampled flux; NaN where missing.
    variance_out : ndarray or None
        Resampled variance (NaN where missing), or None without ``variance``.
    missing_out : ndarray of bool, shape (..., n_out)
        True where the output pixel is missing.

    Examples
    --------
    A straight line is reproduced exactly on any grid:

    >>> wave = np.arange(10.0)
    >>> out, _, miss = rebin(2.0 * wave + 1.0, wave, np.array([2.0, 4.0, 6.0]))
    >>> out  # doctest: +FLOAT_CMP
    array([ 5.,  9., 13.])
    """
    flux = np.asarray(flux, dtype=float)
    shape = flux.shape
    flat = flux.reshape(-1, shape[-1])
    miss = None if missing is None else _as_batch(missing, shape, bool)
    var = None if variance is None else _as_batch(variance, shape, float)
    out, var_out, missing_out = _resample(
        flat,
        bin_edges(in_centres),
        bin_edges(out_centres),
        variance=var,
        missing=miss,
        min_coverage=min_coverage,
    )
    lead = shape[:-1]
    var_out = None if var_out is None else var_out.reshape(*lead, -1)
    return out.reshape(*lead, -1), var_out, missing_out.reshape(*lead, -1)
