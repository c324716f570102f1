r"""Is a spectrum one of the stars the denoiser knows?  The rule behind ``ood_flag``.

Three numbers per star, at the MAP (and the fitted velocity), and the latent
density score:

* ``fit_chi2``: the mean of :math:`r^2` over the pixels that count in the
  likelihood, :math:`r = (y - \hat s) / \sqrt{t^2 + \sigma_G^2}`, :math:`\hat s`
  the denoised model as the exposure sees it, :math:`t` the noise unit of the
  likelihood (the flow's scale times the given or estimated sigma) and
  :math:`\sigma_G` the generator's own error (``extra["generator_sigma"]``): about
  1 when the data are a star the model can draw plus noise.
* ``fit_structure``: the mean square of :math:`r` summed over runs of
  `STRUCTURE_PIXELS` pixels and divided by the square root of their number:
  about 1 for independent residuals, larger when the residuals have structure
  over tens of pixels (broad lines the model lacks, a wrong velocity or
  line-width, a composite spectrum), which the mean of :math:`r^2` dilutes.
* ``snr``: the median of :math:`y / t` over the counted pixels (the exposures
  added in quadrature): below about 1 there is too little signal to tell a star
  from anything else.
* ``ood_score``: `~specutils_deepclean.models.prior.KDEPrior.ood_score` of
  :math:`\hat z`.

A model file states its rule in ``extra["ood_limits"]`` = (largest ``fit_chi2``,
largest ``fit_structure``, smallest ``ood_score``, smallest ``snr``), chosen on
validation stars and constructed non-stars (``benchmarks/calibrate_ood.py``); a
spectrum beyond any limit is flagged.  Without it only ``ood_score < 0.01`` flags.
`~specutils_deepclean.models.denoiser.Denoiser.map_estimate` also flags a
spectrum whose fitted velocity ends beyond the searched range (the refinement
may move up to 60 km/s past the search's edge): a star moving faster than the
range, or no star.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "DEFAULT_SCORE_LIMIT",
    "STRUCTURE_PIXELS",
    "check_extra",
    "goodness_of_fit",
    "ood_flag",
    "temperature",
]

#: Pixels per run of the structure statistic.
STRUCTURE_PIXELS = 31
#: The latent-score limit of a model file without ``ood_limits``.
DEFAULT_SCORE_LIMIT = 0.01


def _running_sum(x: torch.Tensor, half: int) -> torch.Tensor:
    """Sum of ``x`` (..., P) over ``2 half + 1`` pixels centred on each (fewer at the ends)."""
    padded = torch.nn.functional.pad(x.reshape(-1, x.shape[-1]), (half + 1, half))
    total = padded.double().cumsum(-1)
    out = total[:, 2 * half + 1 :] - total[:, : -2 * half - 1]
    return out.to(x.dtype).reshape(x.shape)


def goodness_of_fit(data, observed: torch.Tensor, generator_sigma=None) -> tuple:
    """``fit_chi2``, ``fit_structure`` and ``snr`` of each star (B,).

    Parameters
    ----------
    data
        The denoiser's prepared batch (``flux``, ``inv_unit``, ``counted``, all
        (B, E, P)).
    observed : tensor, shape (B, E or 1, P)
        The denoised model as each exposure sees it.
    generator_sigma : array_like, shape (P,) or (B, E or 1, P), optional
        The generator's error, in the exposures' frame.
    """
    use = data.counted > 0
    unit = torch.where(use, 1 / torch.where(use, data.inv_unit, 1.0), 1.0)
    var = unit.square()
    if generator_sigma is not None:
        floor = torch.as_tensor(generator_sigma, dtype=var.dtype, device=var.device)
        var = var + floor.square()
    r = torch.where(use, (data.flux - observed) / var.sqrt(), 0.0)
    weight = use.to(r.dtype)
    count = weight.sum((-1, -2)).clamp_min(1.0)
    chi2 = r.square().sum((-1, -2)) / count
    half = STRUCTURE_PIXELS // 2
    runs = _running_sum(r, half)
    number = _running_sum(weight, half)
    full = number >= half + 1
    scaled = torch.where(full, runs.square() / number.clamp_min(1.0), 0.0)
    structure = scaled.sum((-1, -2)) / full.sum((-1, -2)).clamp_min(1).to(r.dtype)
    level = torch.where(use, data.flux / unit, torch.nan).nanmedian(-1).values  # (B, E)
    snr = torch.nan_to_num(level, nan=0.0).clamp_min(0.0).square().sum(-1).sqrt()
    return chi2, structure, snr


def ood_flag(extra: dict, score: torch.Tensor, statistics: tuple) -> torch.Tensor:
    """The rule of the module docstring: True for each star (B,) outside a limit."""
    if "ood_limits" not in extra:
        return score < DEFAULT_SCORE_LIMIT
    chi2_max, structure_max, score_min, snr_min = (
        float(x) for x in np.asarray(extra["ood_limits"], dtype=np.float64)
    )
    chi2, structure, snr = statistics
    return (chi2 > chi2_max) | (structure > structure_max) | (score < score_min) | (snr < snr_min)


def temperature(extra: dict) -> float:
    """The class posterior's temperature ``extra["class_temperature"]`` (1 without)."""
    if "class_temperature" not in extra:
        return 1.0
    return float(np.asarray(extra["class_temperature"], dtype=np.float64).ravel()[0])


def check_extra(extra: dict) -> None:
    """``ood_limits`` (4,) finite and ``class_temperature`` (1,) positive finite, if present."""
    if "ood_limits" in extra:
        limits = np.asarray(extra["ood_limits"], dtype=np.float64)
        if limits.shape != (4,) or not np.all(np.isfinite(limits)):
            raise ValueError(
                "extra['ood_limits'] must hold four finite numbers (largest fit_chi2, largest "
                f"fit_structure, smallest ood_score, smallest snr), got {limits.tolist()}"
            )
    if "class_temperature" in extra:
        value = np.asarray(extra["class_temperature"], dtype=np.float64)
        if value.shape != (1,) or not (np.isfinite(value[0]) and value[0] > 0):
            raise ValueError(
                "extra['class_temperature'] must hold one positive finite number, got "
                f"{value.tolist()}"
            )
