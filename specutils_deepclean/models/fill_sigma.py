r"""The uncertainty calibrated by wavelength: pixels without data, and pixels with.

The denoiser's uncertainty (the Laplace covariance through the generator, the
generator's error, the linear terms) is calibrated over whole spectra with data
(``extra["sigma_scales"]``): it covers about 68 % of the pixels pooled over the grid,
but not at every wavelength.  On MILES ``val`` at S/N 10 it covers 0.79-0.84 of the
observed pixels within 400 pixels of either end of the grid and 0.63 in the middle.
A pixel the spectrum lacks (a gap) gets its flux and uncertainty from the model
alone, and inherits that pattern: the fills of gaps at the grid's ends, whatever
their width, are covered 0.78-0.83, those of gaps in the middle 0.65-0.72.

A model file may state ``extra["fill_sigma_scale"]`` :math:`r` (P,), a factor on the
standard deviation of each pixel that no exposure has data for (``filled`` of the
result): :math:`\sigma \to r\,\sigma` there, every other pixel unchanged (a spectrum
without missing pixels is denoised bit for bit as without it).
`~specutils_deepclean.training.fill_sigma.calibrate_fill_sigma` chooses it on MILES
``val``: the 68.3 % quantile of :math:`|s - \hat s| / \sigma` over the filled pixels
of the benchmark protocol's gaps, in bins of wavelength, interpolated between the
bins' centres.

A star flagged out of distribution (``ood_flag``) is one the model cannot draw, and
its fill is the model's alone: on MILES ``val`` the calibrated uncertainty covered
0.11-0.34 of its filled pixels against 0.64-0.73 for the other stars, and every fill
that ran away there but one was flagged.  A model file may therefore also state
``extra["fill_sigma_ood_scale"]`` :math:`k` (an array of one number), a further
factor on the standard deviation of a flagged star's pixels without data:
:math:`\sigma \to k\,r\,\sigma` there, chosen with :math:`r` by
`~specutils_deepclean.training.fill_sigma.calibrate_fill_sigma` (the 68.3 % quantile
of :math:`|s - \hat s| / (r \sigma)` over the flagged stars' filled pixels).

The pixels with data have that pattern at every S/N (MILES ``val`` observed without a
gap at S/N 5, 10, 20 and 50, ``benchmarks/studies/obs_sigma.py``): covered most at
both ends of the grid and least in its middle, the more so the higher the S/N, where
the generator's error dominates their variance.  A model file may state
``extra["obs_sigma_scale"]`` :math:`q` (P,), a factor on the standard deviation at
rest of each pixel that some exposure has data for: :math:`\sigma \to q\,\sigma`
there, before the model-error terms (`~specutils_deepclean.models.model_error`), every
pixel without data unchanged (`obs_sigma`).
`~specutils_deepclean.training.obs_sigma.calibrate_obs_sigma` chooses it on MILES
``val``, S/N 5, 10 and 20 pooled, per bin of wavelength, interpolated between the
bins' centres; :math:`r` does not depend on it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_fill_sigma", "fill_sigma", "obs_sigma"]


def fill_sigma(
    extra: dict, var: torch.Tensor, filled: torch.Tensor, flag: torch.Tensor | None = None
) -> torch.Tensor:
    """The variance with ``extra["fill_sigma_scale"]`` squared applied over ``filled``,
    and ``extra["fill_sigma_ood_scale"]`` squared over a flagged star's.

    Parameters
    ----------
    extra : dict
        The model's extra arrays (``fill_sigma_scale``, shape (P,), and
        ``fill_sigma_ood_scale``, one number, when present).
    var : tensor, shape (B, P)
        The variance at rest, on the model's grid.
    filled : bool tensor, shape (B, P)
        The pixels no exposure has data for.
    flag : bool tensor, shape (B,), optional
        The stars flagged out of distribution (None: none).

    Returns
    -------
    tensor, shape (B, P)
        ``var`` itself without either factor; else ``var`` times the factors squared
        at ``filled``, unchanged elsewhere.
    """
    if "fill_sigma_scale" in extra:
        scale = torch.as_tensor(extra["fill_sigma_scale"], dtype=var.dtype, device=var.device)
        var = torch.where(filled, var * scale.square(), var)
    if "fill_sigma_ood_scale" in extra and flag is not None:
        ood = float(np.asarray(extra["fill_sigma_ood_scale"]).reshape(-1)[0])
        var = torch.where(filled & flag[:, None], var * ood**2, var)
    return var


def obs_sigma(extra: dict, var: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """The variance with ``extra["obs_sigma_scale"]`` squared applied outside ``filled``.

    Parameters
    ----------
    extra : dict
        The model's extra arrays (``obs_sigma_scale``, shape (P,), when present).
    var : tensor, shape (B, P)
        The variance at rest, on the model's grid.
    filled : bool tensor, shape (B, P)
        The pixels no exposure has data for.

    Returns
    -------
    tensor, shape (B, P)
        ``var`` itself without the factor; else ``var`` times the factor squared
        outside ``filled``, unchanged at ``filled``.
    """
    if "obs_sigma_scale" not in extra:
        return var
    scale = torch.as_tensor(extra["obs_sigma_scale"], dtype=var.dtype, device=var.device)
    return torch.where(filled, var, var * scale.square())


def check_fill_sigma(extra: dict, n_pix: int) -> None:
    """``extra["fill_sigma_scale"]`` and ``extra["obs_sigma_scale"]``, when present:
    ``n_pix`` finite values > 0 each; ``extra["fill_sigma_ood_scale"]``, when present:
    one finite number > 0.

    Raises
    ------
    ValueError
        If any is not.
    """
    if "fill_sigma_ood_scale" in extra:
        ood = np.asarray(extra["fill_sigma_ood_scale"], dtype=np.float64)
        if ood.size != 1 or not (np.isfinite(ood) & (ood > 0)).all():
            raise ValueError(
                "extra['fill_sigma_ood_scale'] must be one finite number > 0, "
                f"got {extra['fill_sigma_ood_scale']!r}"
            )
    for key in ("fill_sigma_scale", "obs_sigma_scale"):
        if key not in extra:
            continue
        scale = np.asarray(extra[key], dtype=np.float64)
        if scale.shape != (n_pix,) or not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError(
                f"extra[{key!r}] must hold {n_pix} finite values > 0, got shape {scale.shape}"
            )
