r"""The fill of a wide gap: the class posterior's mean, held near the training library.

Where a spectrum has data, every class's optimum :math:`\hat z_C` fits them and the
classes' spectra agree; over a wide gap they need not.  A hot star whose blue end is
missing is the example: its red part fits an A and a B star's optimum about equally
well, while the two fill the Balmer jump very differently.  The MAP class's fill is
then the wrong one about as often as the posterior says; the fill that minimises the
expected squared error is the posterior mean

.. math::

    \bar s = \sum_C p(C \mid y)\, \bigl(G(\hat z_C) + t_C\bigr),

with :math:`p(C \mid y)` the calibrated class posterior
(`~specutils_deepclean.models.ood.class_posterior`) without its floor
:math:`\epsilon / K` and before a flagged spectrum's is made uniform (both are
statements about the label: the floor is there for the stars whose label the model
gets confidently wrong, the uniform posterior for those unlike any training star,
while the data still reject the optima of the classes they rule out), classes below
`MIN_WEIGHT` left out, and :math:`t_C` the linear terms fitted to class C's residual
(`~specutils_deepclean.models.linear_terms`).  Its variance mixes the classes' with
the same weights, :math:`\sum_C p(C \mid y) (\sigma_C^2 + (G(\hat z_C) + t_C -
\bar s)^2)`.

`class_mixture` does this for the stars that lack at least
`~specutils_deepclean.models.level.MIN_MISSING` of the grid in every exposure (the
threshold of the re-levelling and template starts); the others keep the MAP class's
spectrum, so a spectrum without a wide gap is denoised exactly as before.  The
choice (the calibrated posterior without its floor, against the MAP class's spectrum
and the posterior with its floor) was made on MILES ``val``
(``benchmarks/studies/gap_mixture.py``, ``benchmarks/results/gap_mixture_val.json``).

`library_pull` then moves that fill, over the filled pixels, part of the way toward
the mean of the training stars' spectra that fit the observed pixels, by at most
`LIBRARY_STEP` times its own standard deviation, and less within `LIBRARY_REACH`
pixels of the data; its uncertainty is kept.  The settings were chosen on MILES
``val`` (``benchmarks/studies/gap_library.py``,
``benchmarks/results/gap_library_val.json``): the median MSE over a 40 % gap falls
by 32 % and 34 % at the blue and red ends, with a median within 3 % of before over
the middle gaps of 400 to 1689 pixels.

`nonnegative` last sets a negative fill of any pixel without data (of every spectrum,
not only those with a wide gap) to zero and widens its uncertainty by the move
(``benchmarks/studies/gap_nonnegative.py``,
``benchmarks/results/gap_nonnegative_val.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import level
from .level import library
from .observations import Observations, rest_weight

__all__ = [
    "CLASS_MIXTURE",
    "LIBRARY_PULL",
    "LIBRARY_REACH",
    "LIBRARY_STEP",
    "LIBRARY_TEMPERATURE",
    "MIN_WEIGHT",
    "NONNEGATIVE",
    "GapMixture",
    "class_mixture",
    "library_pull",
    "nonnegative",
]

#: Whether the stars with a wide gap get the posterior mean over classes (off only
#: for studies).
CLASS_MIXTURE = True
#: Classes of smaller weight are left out of the mixture (the rest renormalised).
MIN_WEIGHT = 1e-3
#: Share of its distance to the training library's mean that a wide gap's fill moves
#: (`library_pull`; 0: not at all).
LIBRARY_PULL = 0.5
#: Pixels from the nearest observed one over which the pull grows from 0 to
#: `LIBRARY_PULL` (0: the full pull everywhere in the gap).
LIBRARY_REACH = 1000.0
#: The most a pixel moves, in units of its standard deviation.
LIBRARY_STEP = 0.5
#: The library's weights are :math:`\exp(-\chi^2_i / (2 T))` with this :math:`T`.
LIBRARY_TEMPERATURE = 10.0
#: Whether a negative fill of pixels without data is set to zero (`nonnegative`; off
#: only for studies).
NONNEGATIVE = True


@dataclass(frozen=True)
class GapMixture:
    """The posterior-mean spectra of the stars with a wide gap.

    Attributes
    ----------
    rows : tensor of int, shape (W,)
        The stars (of the batch) it applies to.
    weight : tensor, shape (W, K)
        Their class weights (0 below `MIN_WEIGHT`, summing to 1).
    flux : tensor, shape (W, P)
        :math:`\\bar s`, at rest.
    terms_var : tensor, shape (W, P)
        The linear terms' variance mixed with ``weight``.
    pairs : tensor of int, shape (M,)
        The (star, class) pairs of positive weight, as ``star * K + class``.
    centre : tensor, shape (M, P)
        Per pair, :math:`\\bar s - t_C`, so that :math:`G(\\hat z_C) - \\text{centre}
        = G(\\hat z_C) + t_C - \\bar s`, the pair's offset in the mixture's variance.
    """

    rows: torch.Tensor
    weight: torch.Tensor
    flux: torch.Tensor
    terms_var: torch.Tensor
    pairs: torch.Tensor
    centre: torch.Tensor


def class_mixture(
    model, data: Observations, z: torch.Tensor, posterior: torch.Tensor, filled: torch.Tensor
) -> GapMixture | None:
    """The class posterior's mean spectrum of each star with a wide gap.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser that found the optima.
    data : `~specutils_deepclean.models.observations.Observations`
        The batch as the MAP saw it.
    z : tensor, shape (B, K, L)
        Each star's optimum under each class.
    posterior : tensor, shape (B, K)
        The class weights: the calibrated class posterior without its floor.
    filled : bool tensor, shape (B, P)
        The pixels without data in every exposure.

    Returns
    -------
    GapMixture or None
        None when no star lacks `~specutils_deepclean.models.level.MIN_MISSING` of
        the grid in every exposure (or `CLASS_MIXTURE` is False).
    """
    share = filled.to(torch.float64).mean(-1)
    rows = ((share >= level.MIN_MISSING) & (share < 1)).nonzero()[:, 0]
    if not CLASS_MIXTURE or rows.numel() == 0:
        return None
    k = model.n_classes
    weight = posterior[rows].to(z.dtype)
    weight = torch.where(weight >= MIN_WEIGHT, weight, 0.0)
    weight = weight / weight.sum(-1, keepdim=True)
    wide, classes = (weight > 0).nonzero(as_tuple=True)  # the pairs that count
    star = rows[wide]
    signal = model.generator.generate(z[star, classes])
    terms, terms_var = model._linear_terms(_take(data, star), signal)
    share = weight[wide, classes][:, None]
    flux = torch.zeros_like(signal[: rows.numel()]).index_add_(0, wide, share * (signal + terms))
    mixed_var = torch.zeros_like(flux).index_add_(0, wide, share * terms_var)
    return GapMixture(
        rows=rows,
        weight=weight,
        flux=flux,
        terms_var=mixed_var,
        pairs=star * k + classes,
        centre=flux[wide] - terms,
    )


def library_pull(
    model, data: Observations, gap: GapMixture, sigma: torch.Tensor, filled: torch.Tensor
) -> torch.Tensor:
    r"""A wide gap's fill moved toward the training stars that fit the observed pixels.

    Each training star's spectrum as the model draws it, :math:`g_i = G(z_i)` at the
    KDE points (`~specutils_deepclean.models.level.library`), is scaled to the star's
    co-add at rest by weighted least squares (:math:`a_i = \sum w y g_i / \sum w
    g_i^2`, residual :math:`\chi^2_i`); their mean :math:`m = \sum_i p_i a_i g_i`,
    :math:`p_i \propto \exp(-\chi^2_i / (2 T))` (`LIBRARY_TEMPERATURE`), is a fill
    that cannot leave the library's shapes.  Over the filled pixels the fill
    :math:`\bar s` becomes :math:`\bar s + \mathrm{clip}(\lambda (m - \bar s),
    \pm k \sigma)` with :math:`\lambda` `LIBRARY_PULL` (times :math:`\min(1, d / R)`
    at :math:`d` pixels from the nearest observed one, :math:`R` `LIBRARY_REACH`) and
    :math:`k` `LIBRARY_STEP`: a move within the fill's own uncertainty, which is kept
    (:math:`\sigma` is the uncertainty before the factor on pixels without data,
    `~specutils_deepclean.models.fill_sigma`).

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser.
    data : `~specutils_deepclean.models.observations.Observations`
        The batch as the MAP saw it.
    gap : GapMixture
        The fills of its stars with a wide gap (`class_mixture`).
    sigma : tensor, shape (W, P)
        Their standard deviations at rest.
    filled : bool tensor, shape (W, P)
        Their pixels without data.

    Returns
    -------
    tensor, shape (W, P)
        The fills, moved (``gap.flux`` itself when `LIBRARY_PULL` is 0).
    """
    if LIBRARY_PULL == 0:
        return gap.flux
    flux, weight = rest_weight(_take(data, gap.rows))
    spectra = library(model).to(device=flux.device, dtype=flux.dtype)
    cross = (weight * flux) @ spectra.T  # (W, N)
    scale = cross / (weight @ spectra.square().T)
    chi2 = (weight * flux.square()).sum(-1, keepdim=True) - scale * cross
    share = torch.softmax(-0.5 * chi2 / LIBRARY_TEMPERATURE, dim=-1)
    mean = (share * scale) @ spectra
    bound = LIBRARY_STEP * sigma
    pull = LIBRARY_PULL
    if LIBRARY_REACH > 0:
        pull = pull * (_distance(filled) / LIBRARY_REACH).clamp_max(1).to(sigma.dtype)
    step = torch.clamp(pull * (mean - gap.flux), -bound, bound)
    return gap.flux + torch.where(filled, step, 0.0)


def nonnegative(
    flux: torch.Tensor, var: torch.Tensor, filled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The fill held at or above zero flux, its uncertainty widened by the move.

    Over the pixels without data the output is the model's alone, and nothing holds it
    above zero: where the generator's optimum is extrapolated into a gap at a faint end
    of the grid (the blue end of a cool giant) it can fall well below zero.  A star's
    flux is not negative, so a fill :math:`\mu < 0` becomes 0; the fill was then off
    by at least :math:`|\mu|`, which its variance gains: :math:`\sigma^2 + \mu^2`.
    (The normal posterior truncated at zero, whose mean moves every fill within a few
    sigma of zero, was tried on MILES ``val`` and rejected: over the gaps where the
    classes' fills disagree its sigma is wide and the mean moved far,
    ``benchmarks/studies/gap_nonnegative.py``.)  Pixels with data, and every pixel of a
    spectrum without a missing one, are returned bit for bit.

    Parameters
    ----------
    flux, var : tensor, shape (B, P)
        The fill and its variance at rest.
    filled : bool tensor, shape (B, P)
        The pixels without data.

    Returns
    -------
    flux, var : tensor, shape (B, P)
        ``flux`` and ``var`` with the change above at the ``filled`` pixels where
        ``flux`` is negative (both unchanged when `NONNEGATIVE` is False).
    """
    below = filled & (flux < 0)
    if not NONNEGATIVE or not bool(below.any()):
        return flux, var
    return torch.where(below, 0.0, flux), torch.where(below, var + flux.square(), var)


def _distance(filled: torch.Tensor) -> torch.Tensor:
    """Each pixel's distance (pixels) from the nearest unfilled pixel of its row (0 for
    those; the grid's length where a row has none)."""
    n_pix = filled.shape[-1]
    index = torch.arange(n_pix, device=filled.device).expand_as(filled)
    far = torch.full_like(index, 2 * n_pix)
    left = torch.where(filled, -far, index).cummax(-1).values
    right = torch.where(filled, far, index).flip(-1).cummin(-1).values.flip(-1)
    return torch.minimum(index - left, right - index).clamp_max(n_pix)


def _take(data: Observations, rows: torch.Tensor) -> Observations:
    """The stars ``rows`` of a batch (what the linear terms read of it)."""
    return dataclasses.replace(
        data,
        flux=data.flux[rows],
        gone=data.gone[rows],
        rejected=data.rejected[rows],
        inv_unit=data.inv_unit[rows],
        counted=data.counted[rows],
        constant=data.constant[rows],
        shift=None if data.shift is None else data.shift.take(rows),
        unreached=None if data.unreached is None else data.unreached[rows],
        unpooled=None,
    )
