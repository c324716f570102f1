r"""The denoiser's own error on a spectrum unlike its training stars, in its uncertainty.

The calibrated uncertainty (the Laplace covariance through the generator, the
generator's error ``extra["generator_sigma"]``, the linear terms where there is no
data) covers the truth for about 68 % of the pixels of stars like the training
ones.  A star the model cannot draw as well (another resolution, a flux-calibration
error, a peculiar star) is denoised with a larger error, and leaves residuals with
more structure than the noise: ``fit_structure`` :math:`S`
(`~specutils_deepclean.models.ood.goodness_of_fit`: the mean square of the whitened
residual summed over runs of 31 pixels, scaled to 1 for independent noise) measures
it.  A star the model draws better than the budget of noise and generator error
assumes leaves less (:math:`S < 1`, common at high S/N), and its uncertainty is
wider than its error.  With :math:`\sigma_0^2` the calibrated variance of a pixel
and :math:`u^2 = t^2 + \sigma_G^2` the variance of its residual under the
likelihood (noise and generator error; with several exposures
:math:`1/u^2` is the mean of theirs), the variance becomes

.. math::

    \sigma^2 = \operatorname{clip}(S, L, 1)\, \sigma_0^2
        + k \max(0,\; S - 1 - c)\; u^2 .

The second term, :math:`\sigma_M^2` (``model_sigma``), is the model's error: the
residual's power beyond the noise's, :math:`(S - 1)\, u^2`, beyond a margin
:math:`c` for the statistic's own noise, scaled by :math:`k`.  It is additive: at
low S/N the noise dominates and the term adds little to the wide uncertainty there;
it follows the noise from pixel to pixel (bright and faint, the spectrum's ends) and
is none where no exposure has data (gaps: their uncertainty is the linear terms').
The first narrows the uncertainty of a star fitted better than assumed, down to
:math:`L`, where some exposure has data (:math:`S` says nothing of a gap's fill).
A model file states ``extra["model_error_terms"]`` = :math:`(k, c, L)`, chosen on
MILES ``val`` as it is and degraded to another resolution with tilts
(`~specutils_deepclean.training.model_error.calibrate_model_error`); without it
:math:`\sigma = \sigma_0`.  (``extra["model_error"]``, a factor on the whole
spectrum's uncertainty in earlier versions, is ignored with a warning.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .ood import whitened_residual

__all__ = ["check_model_error", "model_error"]


def model_error(
    extra: dict,
    data,
    observed: torch.Tensor,
    generator_sigma: torch.Tensor | np.ndarray | None,
    structure: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The terms of the module docstring for each star and pixel.

    Parameters
    ----------
    extra : dict
        The model's extra arrays (``model_error_terms`` when present).
    data, observed, generator_sigma
        As for `~specutils_deepclean.models.ood.goodness_of_fit`: the prepared
        batch, the denoised model as each exposure sees it (B, E or 1, P), the
        generator's error.
    structure : tensor, shape (B,)
        :math:`S`, ``fit_structure`` of the same.

    Returns
    -------
    scale : tensor, shape (B,)
        :math:`\\operatorname{clip}(S, L, 1)` (ones without ``model_error_terms``), for
        the pixels where ``noise`` is finite.
    variance : tensor, shape (B, P)
        :math:`\\sigma_M^2` in the exposures' pixels (zeros without
        ``model_error_terms``).
    noise : tensor, shape (B, P)
        :math:`u`; NaN where no exposure has data.
    """
    _, var, use = whitened_residual(data, observed, generator_sigma)
    count = use.sum(1)
    precision = torch.where(use, 1 / var, 0.0).sum(1) / count.clamp_min(1)
    noise = torch.where(count > 0, precision.clamp_min(1e-30).rsqrt(), torch.nan)
    if "model_error_terms" not in extra:
        return torch.ones_like(structure), torch.zeros_like(precision), noise
    k, c, low = (float(x) for x in np.asarray(extra["model_error_terms"], dtype=np.float64))
    excess = k * (structure - 1 - c).clamp_min(0.0)
    variance = excess[:, None] * torch.nan_to_num(noise, nan=0.0).square()
    return structure.clamp(low, 1.0), variance, noise


def check_model_error(extra: dict) -> None:
    """``extra["model_error_terms"]``, when present: k >= 0, c >= 0 and 0 < L <= 1.

    Warns about ``extra["model_error"]`` (earlier versions' factor), which is ignored.

    Raises
    ------
    ValueError
        If ``model_error_terms`` is not as stated.
    """
    if "model_error" in extra:
        warnings.warn(
            "extra['model_error'] (the whole-spectrum factor of earlier versions) is "
            "ignored; specutils_deepclean.training.model_error.calibrate_model_error "
            "writes its replacement, extra['model_error_terms']",
            stacklevel=2,
        )
    if "model_error_terms" not in extra:
        return
    values = np.asarray(extra["model_error_terms"], dtype=np.float64)
    if (
        values.shape != (3,)
        or not np.all(np.isfinite(values))
        or np.any(values[:2] < 0)
        or not 0 < values[2] <= 1
    ):
        raise ValueError(
            "extra['model_error_terms'] must hold three finite numbers k >= 0, c >= 0 "
            f"and 0 < L <= 1, got {values.tolist()}"
        )
