r"""The level of a spectrum with a wide gap, from the denoiser's own training stars.

The denoiser's generator makes spectra of median 1 over the whole model grid (its
training spectra were normalised so) and cannot change a spectrum's level; the
continuum term (`~specutils_deepclean.models.linear_terms`) corrects a few per cent.
`~specutils_deepclean.inference.denoise_arrays` divides the input by the median of
its *valid* pixels, which is the whole-grid median only when few are missing: with
40 % of the grid missing, the median of the rest misses the whole-grid median by a
median 8-15 % (a tenth of the stars by 19-46 %) on MILES ``val`` at S/N 10, the MAP bends
:math:`z` to make up for it and the fill of the gap runs away.

`template_level` estimates the factor :math:`a` that puts such a spectrum on the
generator's level: the training stars' spectra as the model draws them,
:math:`G(z_i)` at the KDE points :math:`z_i` (one per training star), and the input
are smoothed by a Gaussian of `SMOOTH_PIXELS` (so that a Doppler shift within the
velocity search's range, or a line the model misses, hardly moves the answer), each
template is scaled to the observed pixels by weighted least squares,
:math:`a_i = \sum w y g_i / \sum w g_i^2`, and :math:`a` is the median of the
:math:`a_i` of the `TOP` templates of least weighted residual.  `relevel` applies it
to the spectra missing at least `MIN_MISSING` of the grid.  The choices were made on
MILES ``val``: the smoothing and the number of templates by
``benchmarks/studies/gap_level.py`` (``benchmarks/results/gap_level_val.json``), the
threshold by ``benchmarks/benchmarks/bench_gaps.py --split val``.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

__all__ = [
    "MIN_MISSING",
    "SMOOTH_PIXELS",
    "TEMPLATE_STARTS",
    "TOP",
    "gap_starts",
    "library",
    "relevel",
    "template_level",
    "template_starts",
]

#: Gaussian sigma (model pixels) of the smoothing before the comparison.
SMOOTH_PIXELS = 15.0
#: Templates of least residual whose scales' median is the level.
TOP = 5
#: Share of the model grid a spectrum must miss for `relevel` to change its level.
MIN_MISSING = 0.05
#: Whether such a spectrum's MAP also starts from each class's best template
#: (`gap_starts`; off only for studies).
TEMPLATE_STARTS = True

#: Each model's `library` and its smoothed templates (float64, CPU), built on first use.
_LIBRARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TEMPLATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Rows of ``x`` (n, P) convolved with a unit-sum Gaussian of ``sigma`` pixels
    (zero beyond the ends)."""
    radius = int(4 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum())[None, None]
    return torch.nn.functional.conv1d(x[:, None], kernel, padding=radius)[:, 0]


def library(model) -> torch.Tensor:
    """The training stars' spectra as the model draws them.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser (its generator and KDE points).

    Returns
    -------
    tensor, shape (N, P)
        :math:`G(z_i)` at the model's N KDE points (float64, CPU; built on first use).
    """
    cached = _LIBRARY.get(model)
    if cached is None:
        points = torch.as_tensor(
            np.asarray(model.extra["kde_points"]), dtype=model._dtype, device=model.device
        )
        with torch.no_grad():
            cached = _LIBRARY[model] = model.generator.generate(points).to("cpu", torch.float64)
    return cached


def _templates(model) -> torch.Tensor:
    """The smoothed `library`, (N, P) float64 on CPU."""
    cached = _TEMPLATES.get(model)
    if cached is None:
        cached = _TEMPLATES[model] = _smooth(library(model), SMOOTH_PIXELS)
    return cached


def _check(model, flux, weight) -> tuple[np.ndarray, np.ndarray]:
    """``flux`` and ``weight`` as float64 arrays, checked for `template_level`."""
    flux = np.asarray(flux, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if flux.ndim != 2 or flux.shape != weight.shape or flux.shape[1] != model.n_pix:
        raise ValueError(
            f"flux and weight must both be (n, {model.n_pix}), got {flux.shape} and "
            f"{weight.shape}"
        )
    good = np.isfinite(flux) & np.isfinite(weight) & (weight > 0)
    if not good.any(1).all():
        raise ValueError("every spectrum needs an observed pixel of positive weight")
    return flux, weight


def template_level(model, flux: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The factor that puts each spectrum on the generator's level.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser (its generator and KDE points give the templates).
    flux : ndarray, shape (n, P)
        Spectra on the model grid (any value where ``weight`` is 0).
    weight : ndarray, shape (n, P)
        Inverse variances (or any relative weights), 0 at missing pixels; every row
        needs a positive one.

    Returns
    -------
    ndarray, shape (n,)
        :math:`a` such that ``flux / a`` is on the level of the generator's spectra
        (median 1 over the whole grid).

    Raises
    ------
    ValueError
        If the shapes differ from each other or from the model grid, or a row has no
        positive weight.
    """
    flux, weight = _check(model, flux, weight)
    scales, residual = _template_fits(model, flux, weight)
    best = residual.argsort(1)[:, :TOP]
    return torch.gather(scales, 1, best).median(1).values.numpy()


def _template_fits(
    model, flux: np.ndarray, weight: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each template's least-squares scale to each smoothed spectrum and its weighted
    residual, both (n, N) float64 (the comparison of `template_level`)."""
    good = np.isfinite(flux) & np.isfinite(weight) & (weight > 0)
    y = torch.as_tensor(np.where(good, flux, 0.0))
    w = torch.as_tensor(np.where(good, weight, 0.0))
    spread = _smooth(w, SMOOTH_PIXELS)
    # the smoothed data where enough observed pixels fall in the kernel
    keep = spread > 1e-3 * spread.amax(1, keepdim=True)
    smooth_y = torch.where(keep, _smooth(w * y, SMOOTH_PIXELS) / spread.clamp_min(1e-300), 0.0)
    spread = torch.where(keep, spread, 0.0)
    templates = _templates(model)
    cross = (spread * smooth_y) @ templates.T  # (n, N)
    power = spread @ templates.square().T
    scales = cross / power
    residual = (spread * smooth_y.square()).sum(1, keepdim=True) - scales * cross
    return scales, residual


def template_starts(model, flux: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each class's training star whose spectrum best fits each spectrum's observed pixels.

    The comparison is `template_level`'s (smoothed spectra, each template scaled to
    the observed pixels by weighted least squares); per class, the KDE point of least
    weighted residual is returned.  With a wide part of the grid missing, the
    encoder's guess and the densest training points can all lie far from the star,
    and the MAP settles on a wrong class or a fill that runs away; a start from the
    star's nearest neighbour of each class avoids that (the documentation page
    *Denoising spectra*, section Wide gaps).

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser.
    flux, weight : ndarray, shape (n, P)
        As for `template_level`.

    Returns
    -------
    ndarray, shape (n, K, L)
        The latent vectors (the KDE points) of the K classes' best templates.

    Raises
    ------
    ValueError
        As `template_level`.
    """
    flux, weight = _check(model, flux, weight)
    _, residual = _template_fits(model, flux, weight)
    points = np.asarray(model.extra["kde_points"])
    ends = np.cumsum(np.asarray(model.extra["kde_counts"]))
    residual = residual.numpy()
    best = [
        start + residual[:, start:end].argmin(1)
        for start, end in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)
    ]
    return points[np.stack(best, 1)]


def relevel(model, flux: np.ndarray, sigma: np.ndarray | None, gone: np.ndarray) -> np.ndarray:
    """`template_level` of the spectra missing at least `MIN_MISSING` of the grid, 1
    for the others.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser.
    flux : ndarray, shape (..., P)
        Median-normalised spectra on the model grid.
    sigma : ndarray, same shape as ``flux``, or None
        Their standard deviations (None: equal weights).
    gone : ndarray of bool, same shape as ``flux``
        Missing pixels.

    Returns
    -------
    ndarray, shape (...)
        The factor to divide each spectrum (and its sigma) by; 1 where the spectrum
        misses less than `MIN_MISSING` of the grid, has no valid pixel, or the
        estimate is not a positive finite number.
    """
    lead, n_pix = flux.shape[:-1], flux.shape[-1]
    flux = flux.reshape(-1, n_pix)
    gone = np.broadcast_to(gone, lead + (n_pix,)).reshape(flux.shape) | ~np.isfinite(flux)
    if sigma is not None:
        sigma = sigma.reshape(-1, n_pix)
        gone = gone | ~(np.isfinite(sigma) & (sigma > 0))
    share = gone.mean(1)
    rows = np.nonzero((share >= MIN_MISSING) & (share < 1))[0]
    factor = np.ones(flux.shape[0])
    if rows.size:
        weight = np.ones((rows.size, n_pix)) if sigma is None else 1 / sigma[rows] ** 2
        weight = np.where(gone[rows], 0.0, weight)
        found = template_level(model, np.where(gone[rows], 0.0, flux[rows]), weight)
        factor[rows] = np.where(np.isfinite(found) & (found > 0), found, 1.0)
    return factor.reshape(lead)


def gap_starts(model, flux: torch.Tensor, gone: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP starts for the stars missing at least `MIN_MISSING` of the grid (at rest, in
    every exposure): each class's best template (`template_starts`).

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser.
    flux, gone : tensor, shape (B, 1, P)
        The batch's spectra at rest, of several exposures their co-add, and the
        pixels without data (`~specutils_deepclean.models.observations.rest_coadd`,
        computed once per batch for the encoder's start too).

    Returns
    -------
    starts : tensor, shape (B * K, L)
        Star-major (star, class) pairs: the start of each pair of a star with a wide
        gap, zeros for the others.
    wide : tensor of bool, shape (B * K,)
        The pairs that have a start (none when `TEMPLATE_STARTS` is False).
    """
    flux, gone = flux[:, 0], gone[:, 0]
    share = gone.to(torch.float64).mean(-1).cpu().numpy()
    rows = np.nonzero((share >= MIN_MISSING) & (share < 1) & TEMPLATE_STARTS)[0]
    k, n_dim = model.n_classes, model.latent_dim
    starts = torch.zeros((flux.shape[0] * k, n_dim), dtype=model._dtype, device=flux.device)
    wide = torch.zeros(flux.shape[0] * k, dtype=torch.bool, device=flux.device)
    if rows.size:
        observed = ~gone[rows].cpu().numpy()
        found = template_starts(model, flux[rows].cpu().double().numpy(), observed * 1.0)
        pairs = torch.as_tensor((rows[:, None] * k + np.arange(k)).reshape(-1), device=flux.device)
        found = torch.as_tensor(found.reshape(-1, n_dim), dtype=starts.dtype)
        starts[pairs] = found.to(flux.device)
        wide[pairs] = True
    return starts, wide
