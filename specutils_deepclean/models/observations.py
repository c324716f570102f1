r"""A batch of observed spectra arranged for the denoiser's likelihood.

`~specutils_deepclean.models.denoiser.Denoiser.map_estimate` takes spectra as one
row per star, as (stars, exposures, pixels) or as rows with a star index; the
functions here check them, put them in one (B, E, P) layout, reject outliers
against the generator's first guess, choose the NoiseFlow (whitened or plain,
with a DER_SNR estimate of the noise when none is given) and precompute what the
likelihood (Eq. 15) needs per pixel: `Observations`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from astropy.utils.exceptions import AstropyUserWarning

from .noiseflow import _HALF_LOG_2PI, counted_pixels
from .velocity import DopplerShift, to_rest

__all__ = [
    "Observations",
    "observations",
    "arrange",
    "check_usable",
    "outliers",
    "choose_flow",
    "der_snr_level",
    "observed_model",
    "generator_floor",
    "rest_coadd",
    "rest_weight",
]

#: DER_SNR's noise factor: 1.482602 / sqrt(6) times the median |2 f_i - f_{i-2} - f_{i+2}|.
_DER_SNR = 1.482602 / math.sqrt(6.0)


@dataclass
class Observations:
    """A batch on the model's device, (B, E, P) tensors, arranged for the flow ``flow``.

    Attributes
    ----------
    flux : tensor, shape (B, E, P)
        The exposures, zero at missing pixels.
    gone : bool tensor, shape (B, E, P)
        Missing pixels: the input's missing pixels and the ``rejected`` outliers.
    rejected : bool tensor, shape (B, E, P)
        Pixels rejected as outliers.
    inv_unit : tensor, shape (B, E, P)
        :math:`1 / t`, one over (flow scale times sigma), zero at missing pixels.
    counted : tensor, shape (B, E, P)
        1 where a pixel counts in the likelihood (`counted_pixels`), else 0.
    constant : tensor, shape (B,)
        The likelihood's part that does not depend on the signal: minus the sum of
        :math:`\\log t + \\log(2\\pi) / 2` over the counted pixels.
    flow : str
        The NoiseFlow used, ``"whitened"`` or ``"plain"``.
    sigma_estimated : bool
        Whether sigma is a DER_SNR estimate.
    shift : `~specutils_deepclean.models.velocity.DopplerShift` or None
        The Doppler shift of the model to each exposure's velocity; None at rest.
    unreached : bool tensor, shape (B, E, P), or None
        Observed pixels left out (in ``gone``) because the shifted model does not
        reach them; None at rest.
    unpooled : ndarray, shape (B, E), or None
        With fitted velocities of several exposures: each exposure's own velocity,
        before the exposures that agree were pooled
        (`~specutils_deepclean.exposures.pool_velocities`) into ``shift``; else None.
    """

    flux: torch.Tensor
    gone: torch.Tensor
    rejected: torch.Tensor
    inv_unit: torch.Tensor
    counted: torch.Tensor
    constant: torch.Tensor
    flow: str
    sigma_estimated: bool
    shift: DopplerShift | None = None
    unreached: torch.Tensor | None = None
    unpooled: np.ndarray | None = None


def observations(flux, sigma, gone, rejected, flows, flow: str, estimated: bool) -> Observations:
    """Precompute the likelihood's per-pixel parts of a checked (B, E, P) batch.

    Parameters
    ----------
    flux : tensor, shape (B, E, P)
        The exposures, zero at ``gone`` pixels.
    sigma : tensor, shape (B, E, P), or None
        Per-pixel noise (None for the plain flow).
    gone, rejected : bool tensor, shape (B, E, P)
        Missing pixels (outliers included) and the outliers.
    flows : mapping of str to `~specutils_deepclean.models.noiseflow.NoiseFlow`
        The model's flows.
    flow : str
        The one to use.
    estimated : bool
        Whether ``sigma`` is a DER_SNR estimate.

    Returns
    -------
    Observations
    """
    scale = flows[flow].scale.to(flux.dtype)
    unit = scale.expand_as(flux) if sigma is None else scale * sigma
    unit = torch.where(gone, 1.0, unit)
    counted = counted_pixels(gone, flows[flow].context).to(flux.dtype)
    constant = -(counted * (torch.log(unit) + _HALF_LOG_2PI)).sum((-1, -2))
    return Observations(
        flux,
        gone,
        rejected,
        torch.where(gone, 0.0, 1 / unit),
        counted,
        constant,
        flow,
        estimated,
    )


def arrange(arrays: list, exposures) -> list:
    """Reshape every array to (B, E, P), padding ragged exposures with missing pixels.

    Parameters
    ----------
    arrays : list of tensor
        ``[flux, missing]`` or ``[flux, missing, sigma]``, all of one shape: (P,),
        (B, P), (B, E, P), or (N, P) with ``exposures``.
    exposures : array_like of int, shape (N,), or None
        The star of each row of 2-D arrays (stars 0 to B-1, each at least once).

    Returns
    -------
    list of tensor, shape (B, E, P)
        Padding is 0 for the flux, True for ``missing`` and 1 for ``sigma``.

    Raises
    ------
    ValueError
        If ``exposures`` does not fit the arrays.
    """
    ndim = arrays[0].ndim
    if exposures is None:
        if ndim == 1:
            return [a[None, None] for a in arrays]
        return [a[:, None] if ndim == 2 else a for a in arrays]
    if ndim != 2:
        raise ValueError(f"with exposures, flux must be 2-D (N, P), got {ndim}-D")
    index = np.asarray(exposures)
    if index.shape != (arrays[0].shape[0],) or index.dtype.kind not in "iu":
        raise ValueError(
            f"exposures must be {arrays[0].shape[0]} integers (one per row of flux), "
            f"got {index.dtype} array of shape {index.shape}"
        )
    n_star = int(index.max()) + 1 if index.size else 0
    counts = np.bincount(index, minlength=n_star) if index.min() >= 0 else np.zeros(0)
    if index.min() < 0 or np.any(counts == 0):
        raise ValueError("exposures must number the stars 0 to B-1, each at least once")
    slot = np.zeros_like(index)
    for star in range(n_star):
        slot[index == star] = np.arange(counts[star])
    out = []
    for i, a in enumerate(arrays):
        fill = True if i == 1 else (1.0 if i == 2 else 0.0)
        padded = torch.full((n_star, int(counts.max()), a.shape[-1]), fill, dtype=a.dtype)
        padded = padded.to(a.device)
        padded[torch.as_tensor(index), torch.as_tensor(slot)] = a
        out.append(padded)
    return out


def check_usable(gone: torch.Tensor, context: int) -> None:
    """Refuse a batch with a star that has no pixel counting in the likelihood.

    Parameters
    ----------
    gone : bool tensor, shape (B, E, P)
        Missing pixels.
    context : int
        The flows' largest context :math:`K`.

    Raises
    ------
    ValueError
        Naming the stars without a valid pixel, or without a counted one.
    """
    empty = gone.all(dim=-1).all(dim=-1)
    if bool(empty.any()):
        stars = empty.nonzero()[:, 0].tolist()
        raise ValueError(f"spectrum {stars[0]} has no valid pixel (all missing: {stars})")
    counted = counted_pixels(gone, context).any(dim=-1).any(dim=-1)
    if not bool(counted.all()):
        stars = (~counted).nonzero()[:, 0].tolist()
        raise ValueError(
            f"spectra {stars} have no pixel that counts in the likelihood "
            f"(a valid pixel with {context} valid predecessors)"
        )


def outliers(
    flux, sigma, gone, clip: float, generator, generator_sigma=None, shift=None
) -> torch.Tensor:
    r"""Pixels (B, E, P) more than ``clip`` noise units above the generator's first guess,
    or below zero flux.

    With :math:`u = (y - G(E(y))) / \sqrt{\sigma^2 + \sigma_G^2}` per pixel
    (:math:`\sigma` the given noise, else the exposure's DER_SNR level;
    :math:`\sigma_G` the generator's error), a pixel is rejected when :math:`u -
    \operatorname{median}(u) > \text{clip} \cdot \max(1, s)`, :math:`s` the robust
    spread (1.4826 times the median absolute deviation) of :math:`u` over the
    exposure: one-sided, because an absorption line the guess misses must not be
    cut.  Below the guess only a pixel whose flux itself lies more than
    :math:`\text{clip} \cdot \max(1, s)` of the same noise units below zero is
    rejected: a star's flux is not negative, so that is a bad pixel or an
    over-subtracted sky line, while an absorption line the guess misses stays.

    Parameters
    ----------
    flux : tensor, shape (B, E, P)
        The exposures, zero at ``gone`` pixels.
    sigma : tensor, shape (B, E, P), or None
        Per-pixel noise.
    gone : bool tensor, shape (B, E, P)
        Missing pixels.
    clip : float
        The threshold.
    generator : `~specutils_deepclean.models.generator.IsometricAutoencoder`
        Gives the guess :math:`G(E(y))`.
    generator_sigma : array_like, shape (P,), optional
        :math:`\sigma_G`.
    shift : `~specutils_deepclean.models.velocity.DopplerShift`, optional
        The exposures' Doppler shift: the guess is made from the data put back to
        rest and shifted to the exposures' frame.

    Returns
    -------
    bool tensor, shape (B, E, P)
    """
    n_pix = flux.shape[-1]
    if shift is None:
        guess = generator(flux.reshape(-1, n_pix), gone.reshape(-1, n_pix))[0]
        guess = guess.reshape(flux.shape)
    else:
        rest, lost = to_rest(shift, flux, gone)
        guess = generator(rest.reshape(-1, n_pix), lost.reshape(-1, n_pix))[0]
        guess = shift.apply_each(guess.reshape(flux.shape))
    # without sigma, DER_SNR's level; an exposure without one (no noise, too few
    # pixels) gets NaN, so nothing in it is rejected
    if sigma is None:
        level = der_snr_level(flux, gone)
        noise = torch.where(level > 0, level, torch.nan)[..., None]
    else:
        noise = sigma
    var = noise.square()
    if generator_sigma is not None:
        floor = torch.as_tensor(generator_sigma, dtype=var.dtype)
        var = var + floor.to(var.device).square()
    u = torch.where(gone, torch.nan, (flux - guess) / var.sqrt())
    centre = u.nanmedian(dim=-1, keepdim=True).values
    spread = 1.4826 * (u - centre).abs().nanmedian(dim=-1, keepdim=True).values
    bound = clip * torch.nan_to_num(spread, nan=1.0).clamp_min(1.0)
    excess = torch.nan_to_num(u - centre, nan=-math.inf)
    below = torch.nan_to_num(torch.where(gone, torch.nan, flux / var.sqrt()), nan=math.inf)
    return (excess > bound) | (below < -bound)


def choose_flow(flows, flux, sigma, gone) -> tuple:
    """The sigma the likelihood uses, the flow, and whether sigma was estimated.

    With ``sigma``, the whitened flow (else the plain one, with a warning);
    without, the plain flow, else the whitened flow with sigma estimated per
    exposure as DER_SNR does, a constant over the spectrum.

    Parameters
    ----------
    flows : mapping of str to `~specutils_deepclean.models.noiseflow.NoiseFlow`
        The model's flows (``"whitened"`` and/or ``"plain"``).
    flux, sigma, gone : tensor
        As for `outliers`.

    Returns
    -------
    sigma : tensor or None
        None for the plain flow.
    flow : str
    estimated : bool

    Warns
    -----
    `~astropy.utils.exceptions.AstropyUserWarning`
        If ``sigma`` is given but there is no whitened flow.
    """
    if sigma is not None:
        if "whitened" in flows:
            return sigma, "whitened", False
        warnings.warn(
            "this Denoiser has no whitened NoiseFlow: sigma is ignored and the plain "
            "flow is used",
            AstropyUserWarning,
            stacklevel=4,
        )
        return None, "plain", False
    if "plain" in flows:
        return None, "plain", False
    level = _der_snr_noise(flux, gone)
    return level[..., None].expand_as(flux).contiguous(), "whitened", True


def der_snr_level(flux: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """DER_SNR noise level of each exposure (B, E); NaN where no pixel triple is valid.

    Parameters
    ----------
    flux : tensor, shape (B, E, P)
        The exposures.
    gone : bool tensor, shape (B, E, P)
        Missing pixels.

    Returns
    -------
    tensor, shape (B, E)
        1.482602 / sqrt(6) times the median of :math:`|2 f_i - f_{i-2} - f_{i+2}|`
        over the valid pixel triples.
    """
    diff = 2 * flux[..., 2:-2] - flux[..., :-4] - flux[..., 4:]
    bad = gone[..., 2:-2] | gone[..., :-4] | gone[..., 4:]
    return _DER_SNR * torch.where(bad, torch.nan, diff.abs()).nanmedian(dim=-1).values


def _der_snr_noise(flux: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """DER_SNR noise level of each exposure (B, E); exposures without any are 1."""
    level = der_snr_level(flux, gone)
    all_gone = gone.all(-1)
    if bool((~all_gone & ~(level > 0)).any()):
        raise ValueError(
            "cannot estimate the noise of a spectrum without sigma (too few valid pixels "
            "or zero noise): pass sigma"
        )
    return torch.where(all_gone | ~(level > 0), 1.0, level)


def observed_model(signal: torch.Tensor, rows: torch.Tensor, data: Observations) -> torch.Tensor:
    """Rest-frame rows (n, ..., P) of stars ``rows`` as each exposure sees them: (n, E,
    ..., P), or (n, 1, ..., P) without a Doppler shift."""
    if data.shift is None:
        return signal[:, None]
    return data.shift.apply(signal, rows)


def generator_floor(extra: dict, data: Observations) -> torch.Tensor | None:
    """The generator's error :math:`\\sigma_G` (``extra["generator_sigma"]``) as each
    exposure sees it, (B, E or 1, P), or None when the model has none."""
    floor = extra.get("generator_sigma")
    if floor is None:
        return None
    floor = torch.as_tensor(floor, dtype=data.flux.dtype, device=data.flux.device)
    stars = torch.arange(data.flux.shape[0], device=data.flux.device)
    return observed_model(floor.expand(len(stars), -1), stars, data).abs()


def rest_coadd(data: Observations) -> tuple[torch.Tensor, torch.Tensor]:
    """The exposures at rest and, of several, their inverse-variance co-add (the encoder's
    input for the MAP's start).

    Parameters
    ----------
    data : Observations
        The batch, (B, E, P).

    Returns
    -------
    flux, gone : tensor, shape (B, 1, P)
        The flux (0 where gone) and the pixels without data.
    """
    if data.flux.shape[1] == 1:
        return _at_rest(data)
    flux, weight = rest_weight(data)
    return flux[:, None], (weight == 0)[:, None]


def rest_weight(data: Observations) -> tuple[torch.Tensor, torch.Tensor]:
    """Each star's inverse-variance co-add at rest and its weight.

    Parameters
    ----------
    data : Observations
        The batch, (B, E, P).

    Returns
    -------
    flux, weight : tensor, shape (B, P)
        The co-add of the exposures at rest (0 where none has data) and the sum of
        their :math:`1 / t^2` there (0 where none has data).
    """
    flux, gone = _at_rest(data)
    weight = data.inv_unit.square()
    if data.shift is not None:
        weight = data.shift.inverse().apply_each(weight).clamp_min(0)
    weight = torch.where(gone, 0.0, weight)
    total = weight.sum(1)
    return (flux * weight).sum(1) / torch.where(total == 0, 1.0, total), total


def _at_rest(data: Observations) -> tuple[torch.Tensor, torch.Tensor]:
    """The exposures' flux and missing pixels at rest, (B, E, P)."""
    if data.shift is None:
        return data.flux, data.gone
    return to_rest(data.shift, data.flux, data.gone)
