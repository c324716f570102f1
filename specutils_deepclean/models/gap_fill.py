r"""The fill of a wide gap: the class posterior's mean, not the MAP class's spectrum.

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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .level import MIN_MISSING
from .observations import Observations

__all__ = ["CLASS_MIXTURE", "MIN_WEIGHT", "GapMixture", "class_mixture"]

#: Whether the stars with a wide gap get the posterior mean over classes (off only
#: for studies).
CLASS_MIXTURE = True
#: Classes of smaller weight are left out of the mixture (the rest renormalised).
MIN_WEIGHT = 1e-3


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
    rows = ((share >= MIN_MISSING) & (share < 1)).nonzero()[:, 0]
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
