r"""The denoiser's own error on a spectrum unlike its training stars, in its uncertainty.

The calibrated uncertainty (the Laplace covariance through the generator, the
generator's error ``extra["generator_sigma"]``, the linear terms where there is no
data) covers the truth for about 68 % of the pixels of stars like the training
ones.  A star the model cannot draw as well (another resolution, a flux-calibration
error, a peculiar star) is denoised with a larger error, and leaves residuals with
more structure than the training stars do: ``fit_structure`` :math:`S`
(`~specutils_deepclean.models.ood.goodness_of_fit`: the mean square of the whitened
residual summed over runs of 31 pixels, scaled to 1 for independent noise) picks up
what the mean square of the residual dilutes.  With ``snr`` :math:`q`, the
uncertainty's variance is multiplied by

.. math::

    f^2 = 1 + k \, \max\bigl(0,\; S - 1 - c\, q^{p}\bigr),

where :math:`1 + c\,q^p` is where the training stars' own structure ends (it grows
with the signal: what the generator cannot draw is a share of the flux); the shipped
model's :math:`c` is the 95th percentile of :math:`(S - 1) / q^p` over MILES ``val``
at S/N 5-50, :math:`p = 1.5`, :math:`k = 3.6`.
A model file states ``extra["model_error"]`` = :math:`(k, c, p)`, chosen on MILES
``val`` as it is and degraded to another resolution with tilts
(`~specutils_deepclean.training.model_error.calibrate_model_error`); without it
:math:`f = 1`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_model_error", "model_error_factor"]


def model_error_factor(extra: dict, structure: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
    """:math:`f` of each star (B,) as the module docstring defines it; ones without
    ``extra["model_error"]``.

    Parameters
    ----------
    extra : dict
        The model's extra arrays.
    structure, snr : tensor, shape (B,)
        ``fit_structure`` and ``snr`` of `~specutils_deepclean.models.ood.goodness_of_fit`.

    Returns
    -------
    tensor, shape (B,)
    """
    if "model_error" not in extra:
        return torch.ones_like(structure)
    k, c, p = (float(x) for x in np.asarray(extra["model_error"]))
    excess = (structure - 1 - c * snr.clamp_min(0) ** p).clamp_min(0)
    return (1 + k * excess).sqrt()


def check_model_error(extra: dict) -> None:
    """``extra["model_error"]``, when present: three finite numbers, k >= 0.

    Raises
    ------
    ValueError
        If it is not.
    """
    if "model_error" not in extra:
        return
    values = np.asarray(extra["model_error"], dtype=np.float64)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or values[0] < 0:
        raise ValueError(
            "extra['model_error'] must hold three finite numbers (k >= 0, c, p), got "
            f"{values.tolist()}"
        )
