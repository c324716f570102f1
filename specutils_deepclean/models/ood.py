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

A model file states its rule in ``extra["ood_limits"]`` = :math:`(a_\chi, a_S, p,
s_{\min}, q_{\min})`: a spectrum is flagged when

.. math::

    \text{fit\_chi2} > 1 + a_\chi\, \text{snr}^p \;\text{or}\;
    \text{fit\_structure} > 1 + a_S\, \text{snr}^p \;\text{or}\;
    \text{ood\_score} < s_{\min} \;\text{or}\; \text{snr} < q_{\min}.

The limits grow with the signal because a star's residuals do: what the generator
cannot draw is a fixed share of the flux, so its excess over the noise grows with
the S/N (on MILES ``val`` the upper quantiles of both statistics minus 1 grow as
about :math:`\text{snr}^{1.5}` from S/N 5 to 50).  They are chosen on validation stars
(``benchmarks/training/calibrate_ood.py``, which also reports constructed non-stars).
Without ``ood_limits`` only ``ood_score < 0.01`` flags.
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
    "class_posterior",
    "ood_flag",
    "whitened_residual",
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
    r, var, use = whitened_residual(data, observed, generator_sigma)
    unit = torch.where(use, 1 / torch.where(use, data.inv_unit, 1.0), 1.0)
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


def whitened_residual(data, observed: torch.Tensor, generator_sigma=None) -> tuple:
    r"""The whitened residual :math:`r` of the module docstring, its variance and where it counts.

    Parameters
    ----------
    data, observed, generator_sigma
        As for `goodness_of_fit`.

    Returns
    -------
    r, variance : tensor, shape (B, E, P)
        :math:`r` (0 where it does not count) and :math:`t^2 + \sigma_G^2`.
    use : bool tensor, shape (B, E, P)
        The pixels that count in the likelihood.
    """
    use = data.counted > 0
    unit = torch.where(use, 1 / torch.where(use, data.inv_unit, 1.0), 1.0)
    var = unit.square()
    if generator_sigma is not None:
        floor = torch.as_tensor(generator_sigma, dtype=var.dtype, device=var.device)
        var = var + floor.square()
    return torch.where(use, (data.flux - observed) / var.sqrt(), 0.0), var, use


def ood_flag(extra: dict, score, statistics: tuple):
    """The rule of the module docstring: True for each star (B,) outside a limit.

    Parameters
    ----------
    extra : dict
        The model's extra arrays (``ood_limits`` when present).
    score : tensor or ndarray, shape (B,)
        ``ood_score``.
    statistics : tuple
        ``(fit_chi2, fit_structure, snr)`` of `goodness_of_fit`, each (B,).

    Returns
    -------
    bool tensor or ndarray, shape (B,)
    """
    if "ood_limits" not in extra:
        return score < DEFAULT_SCORE_LIMIT
    a_chi2, a_structure, power, score_min, snr_min = (
        float(x) for x in np.asarray(extra["ood_limits"], dtype=np.float64)
    )
    chi2, structure, snr = statistics
    grow = snr.clip(min=0.0) ** power
    return (
        (chi2 > 1 + a_chi2 * grow)
        | (structure > 1 + a_structure * grow)
        | (score < score_min)
        | (snr < snr_min)
    )


def class_posterior(
    extra: dict,
    log_evidence: torch.Tensor,
    snr: torch.Tensor,
    score: torch.Tensor | None = None,
    *,
    floor: bool = True,
) -> torch.Tensor:
    r"""The calibrated class posterior (B, K) from the Laplace log evidences (B, K).

    ``extra["class_calibration"]`` = :math:`(T_0, \gamma, \epsilon, \alpha, \beta)`
    (a file with three numbers has :math:`\alpha = 1`, one with three or four
    :math:`\beta = 0`):

    .. math::

        p(C \mid y) = (1 - \epsilon)\, \operatorname{softmax}_C\bigl(-(\Delta_C /
            T)^\alpha\bigr) + \epsilon / K, \qquad
        \Delta_C = \max_{C'} \log Z_{C'} - \log Z_C, \qquad
        T = T_0 (\max(\text{snr}, 1) / 10)^\gamma\, \max(s, s_0)^{-\beta},

    a temperature that may grow with the signal (the classes' evidences part more with
    more signal; their confusion on real stars does not shrink as fast) and, with
    :math:`\beta > 0`, as the latent's `ood_score` :math:`s` drops (a star in a sparse
    part of the latent space is classified less reliably than one among many
    training stars; :math:`s_0` = `DEFAULT_SCORE_LIMIT`, below which a spectrum is
    flagged), a power :math:`\alpha < 1` that compresses the large evidence gaps more
    than the small ones (with :math:`\alpha = 1` it is
    :math:`\operatorname{softmax}(\log Z_C / T)`) and a floor :math:`\epsilon` for
    the stars whose label the model gets confidently wrong (the temperature alone
    would have to flatten every posterior for them).  The MAP class is unchanged.
    Without a calibration, :math:`\operatorname{softmax}(\log Z_C)`.

    Parameters
    ----------
    extra : dict
        The model's extra arrays.
    log_evidence : tensor, shape (B, K)
        :math:`\log Z_C`, up to a constant per star.
    snr : tensor, shape (B,)
        `goodness_of_fit`'s ``snr``.
    score : tensor, shape (B,), optional
        The MAP latent's ``ood_score``; needed by a calibration with five numbers.
    floor : bool, optional
        Whether to add the floor :math:`\epsilon` (False: the tempered softmax alone,
        the weights of a wide gap's fill, `~specutils_deepclean.models.gap_fill`).

    Returns
    -------
    tensor, shape (B, K)

    Raises
    ------
    ValueError
        If the calibration has five numbers and ``score`` is not given.
    """
    if "class_calibration" not in extra:
        return torch.softmax(log_evidence, dim=-1)
    t0, gamma, epsilon, power, beta = _calibration(extra["class_calibration"])
    temperature = t0 * (snr.clamp_min(1.0) / 10.0) ** gamma
    if beta != 0.0:
        if score is None:
            raise ValueError("a class calibration with a score power needs the ood_score")
        density = score.to(temperature).clamp_min(DEFAULT_SCORE_LIMIT)
        temperature = temperature * density**-beta
    gap = log_evidence.max(-1, keepdim=True).values - log_evidence
    posterior = torch.softmax(-((gap / temperature[:, None]) ** power), dim=-1)
    if not floor:
        return posterior
    return (1 - epsilon) * posterior + epsilon / log_evidence.shape[-1]


def _calibration(value) -> tuple[float, float, float, float, float]:
    """``class_calibration`` as (T0, gamma, floor, alpha, beta); alpha 1 and beta 0
    when not given."""
    value = np.asarray(value, dtype=np.float64)
    alpha = float(value[3]) if value.size >= 4 else 1.0
    beta = float(value[4]) if value.size == 5 else 0.0
    return (*(float(x) for x in value[:3]), alpha, beta)


def check_extra(extra: dict) -> None:
    r"""``ood_limits`` (5,) finite with :math:`a_\chi, a_S, p \ge 0`, and
    ``class_calibration`` (3,), (4,) or (5,) (`class_posterior`), if present.

    Raises
    ------
    ValueError
        Naming the array that is wrong.
    """
    if "ood_limits" in extra:
        limits = np.asarray(extra["ood_limits"], dtype=np.float64)
        if limits.shape != (5,) or not np.all(np.isfinite(limits)) or np.any(limits[:3] < 0):
            raise ValueError(
                "extra['ood_limits'] must hold five finite numbers (fit_chi2 and "
                "fit_structure coefficients, the snr power, smallest ood_score, smallest "
                f"snr), the first three >= 0, got {limits.tolist()}"
            )
    if "class_calibration" in extra:
        value = np.asarray(extra["class_calibration"], dtype=np.float64)
        if (
            value.shape not in ((3,), (4,), (5,))
            or not np.all(np.isfinite(value))
            or value[0] <= 0
            or not 0 <= value[2] < 1
            or (value.size >= 4 and value[3] <= 0)
        ):
            raise ValueError(
                "extra['class_calibration'] must hold T0 > 0, a finite power, a floor "
                "in [0, 1), optionally alpha > 0 and then a finite score power beta, "
                f"got {value.tolist()}"
            )
