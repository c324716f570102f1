"""Spectrum <-> model-grid arrays: resampling, normalisation, masks, uncertainties.

All resampling here is flux conserving: an output pixel receives the mean flux
density of the input over its bin, weighted by the overlap of the bins.  Bins are
built from pixel centres (midpoints between neighbours, the outer edges extrapolated
by half a pixel), as in :class:`specutils.manipulation.FluxConservingResampler`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

__all__ = ["bin_edges", "rebin_matrix", "rebin"]


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
    """
    in_edges = np.asarray(in_edges, dtype=float)
    out_edges = np.asarray(out_edges, dtype=float)
    n_in, n_out = in_edges.size - 1, out_edges.size - 1
    lo = max(in_edges[0], out_edges[0])
    hi = min(in_edges[-1], out_edges[-1])
    if hi <= lo:
        return scipy.sparse.csr_matrix((n_out, n_in))
    # Every boundary inside the common range cuts it into segments that lie in
    # exactly one input bin and one output bin.
    cuts = np.concatenate([in_edges, out_edges])
    cuts = np.unique(cuts[(cuts > lo) & (cuts < hi)])
    cuts = np.concatenate([[lo], cuts, [hi]])
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    length = np.diff(cuts)
    i = np.searchsorted(in_edges, mid) - 1
    j = np.searchsorted(out_edges, mid) - 1
    matrix = scipy.sparse.coo_matrix((length, (j, i)), shape=(n_out, n_in))
    return matrix.tocsr()


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

    Missing input pixels get zero weight; an output pixel is missing when less than
    ``min_coverage`` of its bin is covered by valid input pixels.

    Parameters
    ----------
    flux : ndarray, shape (..., n_in)
        Flux densities (last axis spectral).
    in_centres, out_centres : ndarray
        Strictly increasing pixel centres of the input and output grids.
    variance : ndarray, shape (..., n_in), optional
        Per-pixel variances, propagated as ``sum(w**2 var) / sum(w)**2``
        (pixel-to-pixel covariance of the output is not returned).
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
    """
    flux = np.asarray(flux, dtype=float)
    lead = flux.shape[:-1]
    flat = flux.reshape(-1, flux.shape[-1])
    bad = ~np.isfinite(flat)
    if missing is not None:
        bad |= np.broadcast_to(np.asarray(missing, dtype=bool), flux.shape).reshape(flat.shape)
    var = None
    if variance is not None:
        var = np.broadcast_to(np.asarray(variance, dtype=float), flux.shape).reshape(flat.shape)
        bad |= ~np.isfinite(var)
    in_edges, out_edges = bin_edges(in_centres), bin_edges(out_centres)
    weights = rebin_matrix(in_edges, out_edges)
    good = (~bad).astype(float)
    # (n_spec, n_in) @ (n_in, n_out): sparse matrix from the right.
    wt = weights.T.tocsr()
    norm = (good @ wt) if good.shape[0] else np.zeros((0, out_edges.size - 1))
    norm = np.asarray(norm)
    num = np.asarray(np.where(bad, 0.0, flat) @ wt)
    coverage = norm / np.diff(out_edges)
    missing_out = coverage < min_coverage
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(missing_out, np.nan, num / norm)
        var_out = None
        if var is not None:
            wt2 = wt.multiply(wt).tocsr()
            v = np.asarray(np.where(bad, 0.0, var) @ wt2)
            var_out = np.where(missing_out, np.nan, v / norm**2).reshape(*lead, -1)
    return out.reshape(*lead, -1), var_out, missing_out.reshape(*lead, -1)
