r"""The denoiser's linear terms: a residual basis and a multiplicative continuum.

Beyond the paper's :math:`s = G(z)`, a `~specutils_deepclean.models.denoiser.Denoiser`
may model the spectrum as

.. math::

    s = G(\hat z)\,\Bigl(1 + \sum_{k \le D} c_k P_k(x)\Bigr) + B a, \qquad
    a \sim N(0, \Lambda), \quad c_k \sim N(0, \tau_k^2),

the *residual term* :math:`B a` (``extra["residual_basis"]`` :math:`B` (K, P),
orthonormal rows, and ``extra["residual_variance"]`` :math:`\Lambda` (K,): the
principal directions of the generator's error on clean training spectra) and the
*continuum term* (``extra["continuum_sigma"]`` :math:`\tau` (D + 1,): Legendre
polynomials :math:`P_k` of :math:`x` running from -1 to 1 over the model grid).  Both
are linear in their coefficients once :math:`\hat z` is fixed; they are fitted after
the MAP of :math:`(z, C)` by one ridge solve per star (`terms_posterior`).

The functions here work on explicit parts (`TermParts`, built once per batch by
`term_parts`) and arrays, not on the model: the denoiser calls them, and so can a
test or a study.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "TermParts",
    "has_terms",
    "term_parts",
    "model_term_parts",
    "term_columns",
    "residual_sums",
    "terms_posterior",
    "terms_solve",
    "check_term_arrays",
]

#: The ``extra`` keys `term_parts` reads.
_TERM_KEYS = ("residual_basis", "residual_variance", "continuum_sigma")
#: Each model's `term_parts` per (grid size, dtype, device), with the arrays they were
#: built from (`model_term_parts`).
_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Stars per chunk of the normal equations ((n, K, P) temporaries).
_CHUNK = 32
#: Pixels per bin of the residual basis's approximate normal matrix (`_binned_gram`: the
#: weights averaged over each bin's pixels with data, so its cost is K^2 P / 2 per star
#: divided by this), the preconditioner of `terms_solve`'s conjugate gradients; they stop
#: when the residual has fallen by `_CG_RTOL` for the float type, after `_CG_STEPS` at
#: most.  Bins of 4, 8 and 16 pixels and 1e-4 to 1e-6 were timed on 256 simulated MILES
#: val stars at S/N 10 and 50 (one thread): 8 and 1e-5 took 0.50-0.55 s against 0.64-0.72
#: for the exact normal matrix, the fit within 1e-6 of its rms of that one's (float32
#: rounding; 1e-4 left 1e-5).
_BIN = 8
#: `_cholesky`'s first diagonal jitter, relative to a matrix's largest diagonal element.
_JITTER = 1e-10
_CG_STEPS = 50
_CG_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
#: Most Legendre orders of the continuum term a model file may declare.
MAX_CONTINUUM_TERMS = 16


@dataclass(frozen=True)
class TermParts:
    """The linear terms' fixed parts on the model's device.

    Attributes
    ----------
    basis : tensor, shape (K, P), or None
        The residual basis :math:`B`.
    legendre : tensor, shape (D + 1, P), or None
        The Legendre rows :math:`P_k(x)` of the continuum term.
    precision : tensor, shape (K + D + 1, K + D + 1), float64
        The prior precision :math:`\\operatorname{diag}(\\Lambda, \\tau^2)^{-1}` of all
        coefficients (residual first).
    binned : tensor, shape (ceil(P / `_BIN`), K (K + 1) / 2), or None
        The products :math:`B_i B_j` (:math:`i \\le j`, in the order of
        `torch.triu_indices`) of the basis rows summed over each bin of `_BIN` pixels
        (`_binned_gram`).
    """

    basis: torch.Tensor | None
    legendre: torch.Tensor | None
    precision: torch.Tensor
    binned: torch.Tensor | None = None


def has_terms(extra: dict) -> bool:
    """Whether a model's ``extra`` arrays declare a residual or a continuum term.

    Parameters
    ----------
    extra : dict
        A model's extra arrays.

    Returns
    -------
    bool
    """
    return "residual_basis" in extra or "continuum_sigma" in extra


def term_parts(extra: dict, n_pix: int, dtype: torch.dtype, device) -> TermParts:
    """Build the linear terms' fixed parts from a model's ``extra`` arrays.

    Parameters
    ----------
    extra : dict
        Holds ``residual_basis`` and ``residual_variance``, and/or
        ``continuum_sigma`` (checked by `check_term_arrays`; at least one term).
    n_pix : int
        Pixels of the model grid.
    dtype : torch.dtype
        Floating type of the basis and Legendre rows.
    device : torch.device or str
        Where the parts live.

    Returns
    -------
    TermParts
    """
    basis = legendre = None
    variances = []
    if "residual_basis" in extra:
        basis = torch.as_tensor(extra["residual_basis"], dtype=dtype).to(device)
        variances.append(torch.as_tensor(extra["residual_variance"], dtype=torch.float64))
    if "continuum_sigma" in extra:
        tau = torch.as_tensor(extra["continuum_sigma"], dtype=torch.float64)
        grid = np.linspace(-1.0, 1.0, n_pix)
        rows = np.polynomial.legendre.legvander(grid, tau.numel() - 1).T
        legendre = torch.as_tensor(rows, dtype=dtype, device=device)
        variances.append(tau.square())
    if not variances:
        raise ValueError("extra declares no linear term (residual_basis or continuum_sigma)")
    precision = torch.diag(1 / torch.cat(variances)).to(device)
    binned = None if basis is None else _binned_products(basis)
    return TermParts(basis, legendre, precision, binned)


def model_term_parts(model, n_pix: int, dtype: torch.dtype, device) -> TermParts:
    """`term_parts` of ``model.extra``, built once per model, grid size, dtype and
    device (not on every call: their binned products are the costly part), and again
    when one of the model's term arrays is replaced.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser (its ``extra``).
    n_pix, dtype, device
        As for `term_parts`.

    Returns
    -------
    TermParts
    """
    arrays = tuple(model.extra.get(key) for key in _TERM_KEYS)
    per_model = _PARTS.setdefault(model, {})
    key = (n_pix, dtype, str(device))
    built = per_model.get(key)
    if built is None or any(old is not new for old, new in zip(built[0], arrays, strict=True)):
        built = per_model[key] = (arrays, term_parts(model.extra, n_pix, dtype, device))
    return built[1]


def term_columns(parts: TermParts, signal: torch.Tensor) -> torch.Tensor:
    """The terms' columns :math:`M` (n, K + D + 1, P) for stars of MAP signal ``signal``.

    Parameters
    ----------
    parts : TermParts
        From `term_parts`.
    signal : tensor, shape (n, P)
        :math:`G(\\hat z)` of each star (the continuum term's columns scale it).

    Returns
    -------
    tensor, shape (n, K + D + 1, P)
    """
    columns = [] if parts.basis is None else [parts.basis.expand(signal.shape[0], -1, -1)]
    if parts.legendre is not None:
        columns.append(signal[:, None] * parts.legendre)
    return torch.cat(columns, 1)


def terms_posterior(
    parts: TermParts, flux: torch.Tensor, inv_unit: torch.Tensor, signal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The linear terms' posterior mean given ``signal``, and their variance per pixel.

    With the columns :math:`M` of both terms stacked per star (`term_columns`), the
    coefficients are :math:`\hat u = A^{-1} M W r`, :math:`A = M W M^\top +
    \operatorname{diag}(\Lambda, \tau^2)^{-1}`, with the residual :math:`r = y -
    G(\hat z)` and :math:`W` the inverse noise variance, both summed over the
    exposures (zero at missing and rejected pixels).  The variance is
    :math:`\operatorname{diag}(M^\top A^{-1} M)` at the pixels without data in every
    exposure (there it is close to the prior's), zero elsewhere (where the data pin
    the coefficients down, the calibrated generator-error part of the denoiser's
    uncertainty covers it).

    The residual basis's part of :math:`A` costs :math:`K^2 P / 2` per star written out;
    :math:`\tilde A`, with :math:`W` averaged over bins of 8 pixels with data (zero kept
    zero), costs an eighth of that.  :math:`\hat u` is solved by conjugate gradients
    preconditioned with :math:`\tilde A^{-1}` to the float type's rounding; the variance
    takes :math:`\tilde A` for :math:`A` (on simulated MILES val stars at S/N 2-50 its
    square root within 6 % of the exact one, 0.1 % in the median; exact for weights
    constant over each bin's pixels with data).

    Parameters
    ----------
    parts : TermParts
        From `term_parts`.
    flux : tensor, shape (B, E, P)
        The exposures (any value where ``inv_unit`` is zero).
    inv_unit : tensor, shape (B, E, P)
        :math:`1 / t`, the inverse noise unit (flow scale included), zero at
        missing pixels.
    signal : tensor, shape (B, P)
        :math:`G(\hat z)` of each star.

    Returns
    -------
    fit : tensor, shape (B, P)
        :math:`M^\top \hat u`, the terms' posterior mean.
    variance : tensor, shape (B, P)
        Their posterior variance at the pixels without data, zero elsewhere.
    """
    return terms_solve(parts, *residual_sums(flux, inv_unit, signal), signal)


def residual_sums(
    flux: torch.Tensor, inv_unit: torch.Tensor, signal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The weighted residual :math:`\sum_j W_j (y_j - G(\hat z))` and the weight
    :math:`\sum_j W_j` per pixel, summed over the exposures.

    Parameters
    ----------
    flux, inv_unit, signal
        As for `terms_posterior`.

    Returns
    -------
    target, weight : tensor, shape (B, P)
    """
    weight = inv_unit.square()  # (B, E, P)
    target = ((flux - signal[:, None]) * weight).sum(1)  # (B, P)
    return target, weight.sum(1)


def terms_solve(
    parts: TermParts, target: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""`terms_posterior` from the sums of `residual_sums` (or any others on the rest
    grid, such as a Doppler-shifted batch's residual put back to rest).

    Parameters
    ----------
    parts : TermParts
        From `term_parts`.
    target, weight : tensor, shape (B, P)
        :math:`\sum_j W_j r_j` and :math:`\sum_j W_j` (zero at pixels without data).
    signal : tensor, shape (B, P)
        :math:`G(\hat z)` of each star.

    Returns
    -------
    fit, variance : tensor, shape (B, P)
        As for `terms_posterior`.
    """
    spread = torch.zeros_like(signal)
    continuum = None if parts.legendre is None else signal[:, None] * parts.legendre
    inverse = parts.precision.new_empty((signal.shape[0],) + parts.precision.shape)
    gram = None if parts.basis is None else _binned_gram(parts, weight)
    for part in torch.arange(signal.shape[0], device=signal.device).split(_CHUNK):
        block = None if continuum is None else continuum[part]
        basis_block = None if gram is None else gram[part]
        system = _normal_matrix(parts, basis_block, block, weight[part]) + parts.precision
        # Cholesky, not linalg.solve: batched LU fails on K >= ~130 with some MKL builds
        factor = _cholesky(system)
        inverse[part] = torch.cholesky_inverse(factor)
        # the variance where the star has no data, on each star's own such pixels only
        empty = weight[part] == 0
        count = empty.sum(1)
        if bool(count.any()):
            # per star its empty pixels first (the first count[i] of order[i])
            order = torch.argsort((~empty).to(torch.uint8), dim=1, stable=True)[:, : count.max()]
            keep = torch.arange(order.shape[1], device=order.device) < count[:, None]
            sub = [] if parts.basis is None else [parts.basis.T[order].transpose(1, 2)]
            if block is not None:
                sub.append(block.gather(2, order[:, None].expand(-1, block.shape[1], -1)))
            half = torch.linalg.solve_triangular(factor, torch.cat(sub, 1).double(), upper=False)
            value = half.square().sum(1).to(signal.dtype)  # diag(sub' A^-1 sub), (n, m)
            spread[part[:, None].expand_as(order)[keep], order[keep]] = value[keep]

    def normal_times(x):
        """The exact :math:`A x` (B, K) of coefficients ``x`` (B, K), float64."""
        pixels = _combine(parts, continuum, x.to(signal.dtype)) * weight
        return _columns_times(parts, continuum, pixels).double() + x @ parts.precision

    rhs = _columns_times(parts, continuum, target).double()
    coef = _conjugate_gradients(normal_times, rhs, inverse, _CG_RTOL[signal.dtype])
    return _combine(parts, continuum, coef.to(signal.dtype)), spread


def _cholesky(system: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of the approximate normal matrices ``system`` (n, K, K), float64.

    `_binned_gram` sums float32 products: under weights spanning many decades (a few
    pixels with a far smaller sigma than the rest) its cancellation can leave a matrix
    slightly indefinite.  Such a matrix alone gets a diagonal jitter, `_JITTER` of its
    largest diagonal element, raised tenfold until it factors: the factor is only
    the preconditioner of `_conjugate_gradients` (which solves with the exact product)
    and the approximation of the variance at pixels without data.
    """
    factor, info = torch.linalg.cholesky_ex(system)
    failed = (info != 0).nonzero()[:, 0]
    if failed.numel() == 0:
        return factor
    sub = system[failed]
    top = sub.diagonal(dim1=-2, dim2=-1).abs().amax(-1)[:, None, None]
    eye = torch.eye(sub.shape[-1], dtype=sub.dtype, device=sub.device)
    jitter = _JITTER
    while failed.numel():
        fixed, info = torch.linalg.cholesky_ex(sub + jitter * top * eye)
        done = info == 0
        factor[failed[done]] = fixed[done]
        failed, sub, top = failed[~done], sub[~done], top[~done]
        jitter *= 10
        if jitter > 1:
            raise ValueError("the linear terms' normal matrix is not finite")
    return factor


def _conjugate_gradients(normal_times, rhs, inverse, rtol: float) -> torch.Tensor:
    """Solve :math:`A x = b` (``normal_times`` :math:`x \\mapsto A x`, ``rhs`` b (n, K),
    float64) per row by conjugate gradients preconditioned with ``inverse`` (n, K, K), the
    inverse of an approximation of :math:`A`, from its solution, until every row's
    residual (in the preconditioner's norm) is ``rtol`` of b's, or after `_CG_STEPS`."""

    def precondition(r):
        return (inverse @ r[..., None])[..., 0]

    def dot(a, b):
        return (a * b).sum(-1, keepdim=True)

    x = precondition(rhs)
    limit = rtol**2 * dot(rhs, x)
    residual = rhs - normal_times(x)
    direction = precondition(residual)
    size = dot(residual, direction)
    for _ in range(_CG_STEPS):
        if bool((size <= limit).all()):
            break
        image = normal_times(direction)
        curvature = dot(direction, image)
        step = torch.where(curvature > 0, size / curvature, 0.0)
        x = x + step * direction
        residual = residual - step * image
        preconditioned = precondition(residual)
        new_size = dot(residual, preconditioned)
        direction = preconditioned + torch.where(size > 0, new_size / size, 0.0) * direction
        size = new_size
    return x


def _normal_matrix(parts: TermParts, basis_block, continuum, weight) -> torch.Tensor:
    """:math:`M W M^\\top` (n, K, K), float64, with the columns of `term_columns` (the
    residual basis, then ``continuum`` (n, D + 1, P) or None), ``weight`` (n, P) and
    the basis's block ``basis_block`` (`_binned_gram`, or None without a basis)."""
    if continuum is None:
        return basis_block
    scaled = continuum * weight[:, None]
    corner = (scaled @ continuum.transpose(-1, -2)).double()
    if basis_block is None:
        return corner
    cross = (scaled @ parts.basis.T).double()  # (n, D + 1, K)
    top = torch.cat([basis_block, cross.transpose(-1, -2)], 2)
    return torch.cat([top, torch.cat([cross, corner], 2)], 1)


def _binned_products(basis: torch.Tensor) -> torch.Tensor:
    """`TermParts.binned` of ``basis`` (K, P): the packed products of its rows summed
    over each bin of `_BIN` pixels (the last bin padded with zeros)."""
    k, n_pix = basis.shape
    n_bin = -(-n_pix // _BIN)
    padded = torch.nn.functional.pad(basis, (0, n_bin * _BIN - n_pix))
    rows = padded.reshape(k, n_bin, _BIN).transpose(0, 1)  # (bins, K, width)
    upper = torch.triu_indices(k, k, device=basis.device)
    flat = upper[0] * k + upper[1]
    return torch.cat(
        [(block @ block.transpose(1, 2)).reshape(-1, k * k)[:, flat] for block in rows.split(64)]
    )


def _binned_gram(parts: TermParts, weight: torch.Tensor) -> torch.Tensor:
    r""":math:`B \tilde W B^\top` (n, K, K), float64: the residual basis's normal matrix
    with ``weight`` (n, P) replaced, at each pixel with data, by its mean over the
    pixels with data of the pixel's bin of `_BIN` (zero stays zero).

    One product of the binned weights with `TermParts.binned` (K^2 P / 2 / `_BIN` per
    star), less the products of the pixels without data in bins with some, which that
    counted at their bin's mean.  Exact for weights constant over each bin's pixels
    with data; elsewhere the preconditioner of `terms_solve` (on simulated MILES val
    stars at S/N 2-50 its factor gave the variance at the pixels without data within
    6 % of the exact one's square root, 0.1 % in the median)."""
    n, n_pix = weight.shape
    k = parts.basis.shape[0]
    n_bin = parts.binned.shape[0]
    bins = torch.nn.functional.pad(weight, (0, n_bin * _BIN - n_pix)).reshape(n, n_bin, _BIN)
    mean = bins.sum(-1) / (bins > 0).sum(-1).clamp_min(1)  # (n, bins)
    upper = torch.triu_indices(k, k, device=weight.device)
    where = torch.empty((k, k), dtype=torch.int64, device=weight.device)
    where[upper[0], upper[1]] = where[upper[1], upper[0]] = torch.arange(upper.shape[1])
    gram = (mean @ parts.binned).double()[:, where.reshape(-1)].reshape(n, k, k)
    bin_of = torch.arange(n_pix, device=weight.device) // _BIN
    counted = torch.where(weight == 0, mean[:, bin_of], 0.0)  # (n, P), > 0 at those pixels
    most = int((counted > 0).sum(1).max())
    if most:
        value, order = torch.topk(counted, most, dim=1)  # the padding's value is 0
        columns = parts.basis.T[order]  # (n, m, K)
        gram -= ((columns * value[..., None]).transpose(1, 2) @ columns).double()
    return gram


def _columns_times(parts: TermParts, continuum, x: torch.Tensor) -> torch.Tensor:
    """:math:`M x` (n, K) for ``x`` (n, P), the columns as in `_normal_matrix`."""
    out = [] if parts.basis is None else [x @ parts.basis.T]
    return torch.cat(out + ([] if continuum is None else [(continuum @ x[..., None])[..., 0]]), 1)


def _combine(parts: TermParts, continuum, coef: torch.Tensor) -> torch.Tensor:
    """:math:`M^\\top c` (n, P) of coefficients ``coef`` (n, K), the columns as in
    `_normal_matrix`."""
    if parts.basis is None:
        return (coef[..., None] * continuum).sum(1)
    k = parts.basis.shape[0]
    out = coef[:, :k] @ parts.basis
    if continuum is not None:
        out = out + (coef[:, k:, None] * continuum).sum(1)
    return out


def check_term_arrays(extra: dict, n_pix: int) -> None:
    """Check the linear terms' arrays of a model's ``extra``, when present.

    ``residual_basis`` (K, P) finite with ``residual_variance`` (K,) finite > 0 (both
    or neither); ``continuum_sigma`` (D + 1,) finite > 0, at most
    `MAX_CONTINUUM_TERMS` orders.

    Parameters
    ----------
    extra : dict
        A model's extra arrays.
    n_pix : int
        Pixels of the model grid.

    Raises
    ------
    ValueError
        Naming the array that is wrong.
    """
    if ("residual_basis" in extra) != ("residual_variance" in extra):
        raise ValueError("extra needs both 'residual_basis' and 'residual_variance', or neither")
    if "residual_basis" in extra:
        basis = np.asarray(extra["residual_basis"], dtype=np.float64)
        variance = np.asarray(extra["residual_variance"], dtype=np.float64)
        if (
            basis.ndim != 2
            or basis.shape[1] != n_pix
            or variance.shape != basis.shape[:1]
            or not np.all(np.isfinite(basis))
            or not np.all(np.isfinite(variance) & (variance > 0))
        ):
            raise ValueError(
                f"extra['residual_basis'] must be (K, {n_pix}) finite and "
                f"extra['residual_variance'] (K,) positive finite, got shapes {basis.shape} "
                f"and {variance.shape}"
            )
    if "continuum_sigma" in extra:
        tau = np.asarray(extra["continuum_sigma"], dtype=np.float64)
        if tau.ndim != 1 or not 1 <= tau.size <= MAX_CONTINUUM_TERMS or not np.all(
            np.isfinite(tau) & (tau > 0)
        ):
            raise ValueError(
                "extra['continuum_sigma'] must hold 1 to "
                f"{MAX_CONTINUUM_TERMS} positive finite numbers (one per Legendre "
                f"order), got shape {tau.shape}"
            )
