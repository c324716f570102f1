r"""The Laplace summary of the denoiser's MAP: class posterior, flux uncertainty, OOD flag.

`summarise` is the last step of
`~specutils_deepclean.models.denoiser.Denoiser.map_estimate`: from each (star, class)
optimum and its Hessian it builds the Laplace class posterior (then calibrated:
`~specutils_deepclean.models.ood.class_posterior`), the denoised flux with the
linear terms, its per-pixel uncertainty (the Laplace covariance pushed through the
generator and mixed over the classes, with the calibrated generator error), the
out-of-distribution flag (`~specutils_deepclean.models.ood`) and, with a Doppler
shift, the output in the first exposure's frame; `MAPResult` holds it all.  The
documentation page *The denoiser's inference* gives the equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..exposures import pool_velocities
from . import ood
from .fill_sigma import fill_sigma, obs_sigma
from .gap_fill import class_mixture, library_pull, nonnegative
from .model_error import model_error
from .noiseflow import _HALF_LOG_2PI
from .observations import Observations, generator_floor, observed_model
from .velocity import _VELOCITY_FINE, shared_floor, velocity_error

__all__ = ["MAPResult", "eig_floor", "summarise"]

_LOG_2PI = 2.0 * _HALF_LOG_2PI
#: Classes with a smaller posterior are left out of the flux uncertainty's mixture (their
#: weights sum to at most K times this; 1e-4 instead of 1e-10 leaves out about 28 % of
#: the pairs a batch of 256 simulated MILES val stars at S/N 10 mixed, each a generator
#: Jacobian; the share of pixels within one sigma moved by 1e-4 or less on val,
#: ``benchmarks/results/denoise_quality_val_speed6.json``).
_MIX_FLOOR = 1e-4


@dataclass(frozen=True)
class MAPResult:
    r"""What the denoiser's MAP found for a batch of B stars (NumPy arrays, CPU).

    Returned by `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`.

    K is the number of classes, L the latent size, P the number of pixels.

    Attributes
    ----------
    z : ndarray, shape (B, L)
        :math:`\hat z`, the MAP latent vector of the MAP class.
    map_class : ndarray of int, shape (B,)
        Index of the MAP class :math:`\hat C` (the largest `class_posterior`).
    class_names : tuple of str
        The K class names.
    flux : ndarray, shape (B, P)
        The denoised spectrum :math:`G(\hat z)` (with the continuum and residual
        terms when the model has them: `~specutils_deepclean.models.linear_terms`), in the
        normalised units of the input.
    flux_sigma : ndarray, shape (B, P)
        Its per-pixel standard deviation: the Laplace covariance of each class
        pushed through the generator, mixed over the class posterior, with the
        generator's calibrated error (the documentation page *The denoiser's
        inference*, section Uncertainty), at the pixels with data scaled by the
        model's ``obs_sigma_scale``, then by ``model_error_scale``, with
        ``model_sigma`` added in quadrature; at the ``filled`` pixels scaled by the
        model's ``fill_sigma_scale``, and its ``fill_sigma_ood_scale`` for a star
        flagged out of distribution (`~specutils_deepclean.models.fill_sigma`).
    latent_sigma : ndarray, shape (B, P)
        The part of it that comes from the posterior of :math:`z` and
        :math:`C` alone, before the calibration scales and the generator's own
        error are applied.
    filled : ndarray of bool, shape (B, P)
        Pixels missing in every exposure: their flux comes from the model alone.
    rejected : ndarray of bool, shape (B, P)
        Pixels rejected as outliers (``clip`` of
        `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`) in at
        least one exposure; they do not count in the likelihood.
    class_posterior : ndarray, shape (B, K)
        :math:`p(C \mid y)` from the Laplace approximation; rows sum to 1.
    class_z : ndarray, shape (B, K, L)
        The optimum :math:`\hat z_C` of each class.
    class_log_joint : ndarray, shape (B, K)
        :math:`\log p(y \mid G(\hat z_C)) + \log p(\hat z_C \mid C) + \log p(C)`.
    hessian : ndarray, shape (B, K, L, L)
        :math:`H_C`, the Hessian of the negative log joint in :math:`z` at
        :math:`\hat z_C` (exact almost everywhere, see
        `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`).
    covariance : ndarray, shape (B, K, L, L)
        :math:`H_C^{-1}`, the Laplace covariance of :math:`z` (eigenvalues of
        :math:`H_C` below a small floor are raised to it first).
    ood_score : ndarray, shape (B,)
        `~specutils_deepclean.models.prior.KDEPrior.ood_score` of :math:`\hat z`:
        the share of training stars whose latent is less likely than
        :math:`\hat z`; near 0 for an input unlike the training stars.
    steps : ndarray of int, shape (B, K)
        Newton steps taken by each class (0: it stopped after screening).
    converged : ndarray of bool, shape (B, K)
        Whether the class stopped converged: its Newton decrement fell below
        ``tol``, or no halved step raised the log joint by ``tol`` while none
        lowered it by more (a flat optimum).
    flow : str
        The NoiseFlow used: ``"whitened"`` or ``"plain"``.
    sigma_estimated : bool
        True when ``sigma`` was not given and the whitened flow ran on a
        DER_SNR estimate of it.
    velocity : ndarray, shape (B, E)
        Radial velocity of each exposure, km/s (positive: redshift, the
        convention of `~specutils_deepclean.doppler.shift_flux`): fitted, or the
        one given (0 at rest).
    velocity_error : ndarray, shape (B, E)
        Its Laplace standard deviation
        (`~specutils_deepclean.models.velocity.velocity_error`); 0 for a given
        velocity, inf where the data do not constrain it.
    fit_chi2, fit_structure, snr : ndarray, shape (B,)
        Goodness of fit at the MAP and the data's signal level
        (`~specutils_deepclean.models.ood.goodness_of_fit`).
    ood_flag : ndarray of bool, shape (B,)
        True for a spectrum the model does not recognise as a star it knows
        (`~specutils_deepclean.models.ood`): its ``class_posterior`` is uniform
        and its result is not to be trusted.
    class_log_evidence : ndarray, shape (B, K)
        The Laplace log evidence of each class (up to a constant), before the
        calibration (`~specutils_deepclean.models.ood.class_posterior`) that gives
        ``class_posterior`` (uniform for a flagged spectrum).
    model_sigma : ndarray, shape (B, P)
        :math:`\sigma_M`, the model's own error added in quadrature to
        ``flux_sigma`` for a star whose residuals have more structure than the
        noise (`~specutils_deepclean.models.model_error`); 0 for the others and
        without the model file's ``model_error_terms``.
    noise_sigma : ndarray, shape (B, P)
        :math:`u`, the standard deviation of the residual under the likelihood
        (noise and generator error, `~specutils_deepclean.models.model_error`);
        NaN where no exposure has data.
    model_error_scale : ndarray, shape (B,)
        The factor (<= 1) on the variance of a star fitted better than the noise
        and generator error assume (`~specutils_deepclean.models.model_error`).
    """

    z: np.ndarray
    map_class: np.ndarray
    class_names: tuple
    flux: np.ndarray
    flux_sigma: np.ndarray
    latent_sigma: np.ndarray
    filled: np.ndarray
    rejected: np.ndarray
    class_posterior: np.ndarray
    class_z: np.ndarray
    class_log_joint: np.ndarray
    hessian: np.ndarray
    covariance: np.ndarray
    ood_score: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    flow: str
    sigma_estimated: bool
    velocity: np.ndarray
    velocity_error: np.ndarray
    fit_chi2: np.ndarray
    fit_structure: np.ndarray
    snr: np.ndarray
    ood_flag: np.ndarray
    class_log_evidence: np.ndarray
    model_sigma: np.ndarray
    noise_sigma: np.ndarray
    model_error_scale: np.ndarray


def summarise(model, data: Observations, state, searched: float | None, chunk: int) -> MAPResult:
    """The Laplace summary: step 3 of `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`.

    The class posterior, the flux and its uncertainty, the OOD flag and, when
    shifted, the output in the first exposure's frame.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The model that found the optima.
    data : `~specutils_deepclean.models.observations.Observations`
        The stars' data, as the MAP saw them.
    state
        The (star, class) optima, star-major: their ``z``, log joint ``obj``,
        Hessian ``hess``, star ``rows``, Newton ``steps`` and ``converged``.
    searched : float or None
        The velocity range (km/s) when the velocities were fitted, else None.
    chunk : int
        (star, class) pairs per generator Jacobian.

    Returns
    -------
    MAPResult
    """
    n_star, k, n_dim = data.flux.shape[0], model.n_classes, model.latent_dim
    values, vectors = torch.linalg.eigh(state.hess)
    values = values.clamp_min(eig_floor(values))
    cov = vectors @ torch.diag_embed(1 / values) @ vectors.transpose(-1, -2)
    log_det = torch.log(values).sum(-1)
    obj = state.obj.reshape(n_star, k)
    log_post = obj + 0.5 * (n_dim * _LOG_2PI - log_det.reshape(n_star, k))
    posterior = torch.softmax(log_post, dim=-1)
    best = posterior.argmax(-1)
    z = state.z.reshape(n_star, k, n_dim)
    stars = torch.arange(n_star, device=z.device)
    z_map = z[stars, best]
    chosen = model.generator.generate(z_map)
    terms, terms_var = model._linear_terms(data, chosen)
    flux = chosen + terms
    score = model.prior.ood_score(z_map, reference=model._ood_reference)
    floor = generator_floor(model.extra, data)
    observed = observed_model(flux, stars, data)
    fit = ood.goodness_of_fit(data, observed, floor)
    scale, model_var, noise = model_error(model.extra, data, observed, floor, fit[1])
    flag = ood.ood_flag(model.extra, score, fit)
    fill_weight = posterior  # a wide gap's fill's class weights (`gap_fill`)
    if "class_calibration" in model.extra:  # calibrated (the MAP class is unchanged)
        posterior = ood.class_posterior(model.extra, log_post, fit[2], score)
        fill_weight = ood.class_posterior(model.extra, log_post, fit[2], score, floor=False)
    if searched is not None:  # a star beyond the range is found at its edge
        beyond = np.abs(data.shift.velocity) > searched
        flag = flag | torch.as_tensor(beyond.any(-1), device=flag.device)
    filled = _filled(data)  # the pixels no exposure has data for
    # a star with a wide gap: the class posterior's mean spectrum
    gap = class_mixture(model, data, z, fill_weight, filled)
    # a spectrum flagged as unlike the training stars has no confident class
    posterior = torch.where(flag[:, None], torch.full_like(posterior, 1 / k), posterior)
    # the uncertainty mixes the classes by their Laplace evidence: the calibration
    # above is the label's (flattened, uniform when flagged) and would mix in optima
    # the data reject; a star with a wide gap by the weights of its mean spectrum
    mixture = torch.softmax(log_post, dim=-1)
    pair_centre, slot = None, None
    if gap is not None:
        flux[gap.rows] = gap.flux
        terms_var[gap.rows] = gap.terms_var
        mixture[gap.rows] = gap.weight.to(mixture.dtype)
        slot = torch.full((n_star * k,), -1, dtype=torch.int64, device=flux.device)
        slot[gap.pairs] = torch.arange(gap.pairs.numel(), device=flux.device)
        pair_centre = gap.centre
    var = torch.zeros_like(chosen)
    mixed = (mixture >= _MIX_FLOOR).reshape(-1).nonzero()[:, 0]
    for part in mixed.split(chunk):
        signal, jac = model.generator.generate_jacobian(state.z[part])
        spread = torch.einsum("npi,nij,npj->np", jac, cov[part], jac)
        centre = chosen[state.rows[part]]
        if pair_centre is not None:  # a wide gap's pair: its offset from the mean spectrum
            hit = slot[part] >= 0
            centre[hit] = pair_centre[slot[part][hit]]
        spread += (signal - centre).square()
        weight = mixture.reshape(-1)[part, None]
        var.index_add_(0, state.rows[part], weight * spread)
    latent_var = var
    scales = model.extra.get("sigma_scales", (1.0, 1.0))
    var = float(scales[0]) ** 2 * latent_var
    if "generator_sigma" in model.extra:
        floor = torch.as_tensor(model.extra["generator_sigma"], dtype=var.dtype)
        var = var + float(scales[1]) ** 2 * floor.to(var.device).square()
    var = var + terms_var
    if gap is not None:  # a wide gap's fill held near the training library
        flux[gap.rows] = library_pull(
            model, data, gap, var[gap.rows].sqrt(), filled[gap.rows]
        )
    flux, var = nonnegative(flux, var, filled)  # a star's flux is not negative
    var = fill_sigma(model.extra, obs_sigma(model.extra, var, filled), filled, flag)
    velocity = np.zeros(data.flux.shape[:2])
    error = np.zeros(data.flux.shape[:2])
    reached = torch.ones_like(flux, dtype=torch.bool)
    if data.shift is not None:  # the output in the first exposure's frame
        velocity = data.shift.velocity
        if searched is not None:
            error = velocity_error(
                data.shift, flux, data.counted, data.inv_unit, floor, _VELOCITY_FINE[-1],
                calibration=model.extra.get("velocity_error"),
            )
            if data.unpooled is not None:  # the pooled velocities' error
                error = pool_velocities(data.unpooled, error, shared_floor(model.extra))[1]
        reached = data.shift.valid[:, 0]
        flux = torch.where(reached, observed_model(flux, stars, data)[:, 0], torch.nan)
        var, latent_var = (
            observed_model(x.sqrt(), stars, data)[:, 0].square() for x in (var, latent_var)
        )
    # the model-error terms where some exposure has data (the frame of ``noise``)
    var = torch.where(torch.isfinite(noise), var * scale[:, None], var) + model_var
    as_np = _numpy
    return MAPResult(
        z=as_np(z_map),
        map_class=as_np(best),
        class_names=model.prior.class_names,
        flux=as_np(flux),
        flux_sigma=as_np(torch.where(reached, var.sqrt(), torch.nan)),
        latent_sigma=as_np(torch.where(reached, latent_var.sqrt(), torch.nan)),
        filled=as_np(filled & reached),
        rejected=as_np(data.rejected.any(dim=1)),
        class_posterior=as_np(posterior),
        class_z=as_np(z),
        class_log_joint=as_np(obj),
        hessian=as_np(state.hess.reshape(n_star, k, n_dim, n_dim)),
        covariance=as_np(cov.reshape(n_star, k, n_dim, n_dim)),
        ood_score=as_np(score),
        steps=as_np(state.steps.reshape(n_star, k)),
        converged=as_np(state.converged.reshape(n_star, k)),
        flow=data.flow,
        sigma_estimated=data.sigma_estimated,
        velocity=velocity,
        velocity_error=error,
        fit_chi2=as_np(fit[0]),
        fit_structure=as_np(fit[1]),
        snr=as_np(fit[2]),
        ood_flag=as_np(flag),
        class_log_evidence=as_np(log_post),
        model_sigma=as_np(torch.where(reached, model_var.sqrt(), torch.nan)),
        noise_sigma=as_np(noise),
        model_error_scale=as_np(scale),
    )


def eig_floor(values: torch.Tensor) -> torch.Tensor:
    """Smallest eigenvalue kept for each Hessian: 1e-6 of its largest magnitude (or tiny)."""
    top = values.abs().amax(-1, keepdim=True)
    return torch.clamp_min(top * 1e-6, torch.finfo(values.dtype).tiny ** 0.5)


def _filled(data: Observations) -> torch.Tensor:
    """Pixels (B, P) the input lacks in every exposure (not the rejected ones, nor those
    left out because the shifted model cannot reach them at every trial velocity)."""
    lacking = data.gone & ~data.rejected
    if data.unreached is not None:
        lacking = lacking & ~data.unreached
    return lacking.all(dim=1)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float64) if array.dtype.kind == "f" else array
