r"""`Denoiser`: the deep Bayesian model of Kang et al. and its batched MAP inference.

One model file holds the three parts of the hierarchical model (Eqs. 3-6):
the generator :math:`s = G(z)` (`~specutils_deepclean.models.generator.IsometricAutoencoder`),
one Gaussian KDE prior :math:`p(z \mid C)` per stellar class
(`~specutils_deepclean.models.prior.KDEPrior`) and the NoiseFlow observation
model :math:`p(y \mid s)` (`~specutils_deepclean.models.noiseflow.NoiseFlow`),
whitened by the per-pixel uncertainty, raw, or both. `Denoiser.map_estimate`
finds :math:`(\hat z, \hat C)` of Eq. 7 for a whole batch of stars, each from
one or several exposures, and adds what the paper does not: the class
posterior and the per-pixel uncertainty from a Laplace approximation, and an
out-of-distribution score.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Real

import astropy.units as u
import numpy as np
import torch
from astropy.utils.exceptions import AstropyUserWarning
from torch import nn

from ..provenance import Provenance
from .base import DeepCleanModel
from .generator import IsometricAutoencoder
from .layers import missing_mask
from .noiseflow import NoiseFlow, counted_pixels
from .prior import KDEPrior

__all__ = ["Denoiser", "MAPResult"]

ARCHITECTURE = "deep-bayesian"
#: Kinds of NoiseFlow a Denoiser may hold, and whether each is whitened.
FLOW_KINDS = {"whitened": True, "plain": False}
#: DER_SNR's noise factor: 1.482602 / sqrt(6) times the median |2 f_i - f_{i-2} - f_{i+2}|.
_DER_SNR = 1.482602 / math.sqrt(6.0)
_LOG_2PI = math.log(2.0 * math.pi)
_BETAS = (0.9, 0.999)
#: Latent points evaluated together: keeps the flow's activations in cache.
_CHUNK = 128


@dataclass(frozen=True)
class MAPResult:
    r"""What `Denoiser.map_estimate` found for a batch of B stars (NumPy arrays, CPU).

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
        The denoised spectrum :math:`G(\hat z)`, in the normalised units of the input.
    flux_sigma : ndarray, shape (B, P)
        Its per-pixel standard deviation (see `Denoiser.map_estimate`, Notes).
    filled : ndarray of bool, shape (B, P)
        Pixels missing in every exposure: their flux comes from the model alone.
    class_posterior : ndarray, shape (B, K)
        :math:`p(C \mid y)` from the Laplace approximation; rows sum to 1.
    class_z : ndarray, shape (B, K, L)
        The optimum :math:`\hat z_C` of each class.
    class_log_joint : ndarray, shape (B, K)
        :math:`\log p(y \mid G(\hat z_C)) + \log p(\hat z_C \mid C) + \log p(C)`.
    hessian : ndarray, shape (B, K, L, L)
        :math:`H_C`, the Hessian of the negative log joint in :math:`z` at
        :math:`\hat z_C` (exact, by automatic differentiation).
    covariance : ndarray, shape (B, K, L, L)
        :math:`H_C^{-1}`, the Laplace covariance of :math:`z` (eigenvalues of
        :math:`H_C` below a small floor are raised to it first).
    ood_score : ndarray, shape (B,)
        `~specutils_deepclean.models.prior.KDEPrior.ood_score` of :math:`\hat z`:
        the share of training stars whose latent is less likely than
        :math:`\hat z`; near 0 for an input unlike the training stars.
    steps : ndarray of int, shape (B, K)
        Adam steps taken by the best start of each class.
    converged : ndarray of bool, shape (B, K)
        Whether that start stopped early because it had converged.
    flow : str
        The NoiseFlow used: ``"whitened"`` or ``"plain"``.
    sigma_estimated : bool
        True when ``sigma`` was not given and the whitened flow ran on a
        DER_SNR estimate of it.
    """

    z: np.ndarray
    map_class: np.ndarray
    class_names: tuple
    flux: np.ndarray
    flux_sigma: np.ndarray
    filled: np.ndarray
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


@dataclass
class _Data:
    """A batch on the model's device: (B, E, P) flux, sigma (or None), missing mask."""

    flux: torch.Tensor
    sigma: torch.Tensor | None
    gone: torch.Tensor
    flow: str
    sigma_estimated: bool


class Denoiser(DeepCleanModel):
    r"""The deep Bayesian stellar-spectrum model of Kang et al.: generator, class priors, NoiseFlow.

    The model (Eqs. 3-6) is

    .. math::

        y_j \mid s \sim p(y \mid s), \quad s = G(z), \quad
        z \mid C \sim p(z \mid C), \quad C \sim \mathrm{Uniform},

    and `map_estimate` maximises the log joint of Eq. 7 over :math:`(z, C)`.

    Build one from trained parts with `from_parts`; load one with
    `~specutils_deepclean.io.models.load_model`. The attributes ``generator``
    (`~specutils_deepclean.models.generator.IsometricAutoencoder`), ``prior``
    (`~specutils_deepclean.models.prior.KDEPrior`) and ``flows`` (a
    `torch.nn.ModuleDict` with a ``"whitened"`` and/or a ``"plain"``
    `~specutils_deepclean.models.noiseflow.NoiseFlow`) are the parts.

    The configuration is flat: ``architecture`` (``"deep-bayesian"``), the
    generator's hyper-parameters prefixed ``generator_``, ``flows`` (the list of
    flow kinds) and each flow's hyper-parameters prefixed ``flow_<kind>_``, and
    the prior's `~specutils_deepclean.models.prior.KDEPrior.to_config` entries.
    ``extra`` holds the prior's arrays
    (`~specutils_deepclean.models.prior.KDEPrior.to_arrays`) and
    ``ood_reference``, the prior's reference scores computed once at build time.
    The weights are those of the generator and the flows; the prior is rebuilt
    from ``extra`` whenever the model is built, so a loaded model is complete.

    Parameters
    ----------
    config, wavelength, medium, classes, extra, provenance, name
        As for `~specutils_deepclean.models.base.DeepCleanModel`.

    Raises
    ------
    ValueError
        If the configuration or the extra arrays are inconsistent.

    References
    ----------
    Kang, X., et al., *A novel stellar spectrum denoising method based on deep
    Bayesian modeling*, Research in Astronomy and Astrophysics (2023), Section 3.
    """

    def _build(self, config: dict) -> None:
        if config["architecture"] != ARCHITECTURE:
            raise ValueError(
                f"Denoiser needs architecture {ARCHITECTURE!r}, got {config['architecture']!r}"
            )
        self.generator = IsometricAutoencoder(**_unprefix(config, "generator_"))
        if self.generator.n_pix != self.n_pix:
            raise ValueError(
                f"the generator makes {self.generator.n_pix} pixels but the wavelength grid "
                f"has {self.n_pix}"
            )
        self.flows = nn.ModuleDict(_build_flows(config, self.n_pix))
        self.prior = KDEPrior.from_arrays(self.extra, config)
        if self.prior.n_dim != self.generator.latent_dim:
            raise ValueError(
                f"the prior is {self.prior.n_dim}-dimensional, the generator's latent space "
                f"{self.generator.latent_dim}-dimensional"
            )
        if self.classes is not None and tuple(self.classes) != self.prior.class_names:
            raise ValueError(
                f"classes {self.classes} differ from the prior's {self.prior.class_names}"
            )
        if "ood_reference" not in self.extra:
            raise ValueError("extra lacks 'ood_reference' (the prior's reference scores)")
        reference = np.sort(np.asarray(self.extra["ood_reference"], dtype=np.float64).ravel())
        self.register_buffer("_ood_reference", torch.from_numpy(reference), persistent=False)
        points = self.prior.to_arrays()["kde_points"]
        spread = points.std(axis=0) if len(points) > 1 else np.ones(points.shape[1])
        spread = np.where(spread > 0, spread, 1.0)
        self.register_buffer("_latent_scale", torch.from_numpy(spread), persistent=False)

    @classmethod
    def from_parts(
        cls,
        generator: IsometricAutoencoder,
        prior: KDEPrior,
        flows: dict,
        *,
        wavelength: u.Quantity,
        medium: str,
        provenance: Provenance | None = None,
        extra: dict | None = None,
        name: str | None = None,
    ) -> Denoiser:
        """Assemble a Denoiser from a trained generator, prior and flow(s).

        The parts are copied (weights included); the prior's reference OOD
        scores are computed here, once.

        Parameters
        ----------
        generator : `~specutils_deepclean.models.generator.IsometricAutoencoder`
            Trained generator (and encoder) on the model grid.
        prior : `~specutils_deepclean.models.prior.KDEPrior`
            Per-class latent prior; its classes become the model's classes.
        flows : dict of str to `~specutils_deepclean.models.noiseflow.NoiseFlow`
            ``"whitened"`` (a flow with ``whitened=True``, used for spectra with an
            uncertainty) and/or ``"plain"`` (``whitened=False``, for spectra without).
        wavelength : `~astropy.units.Quantity`
            The model grid (``generator.n_pix`` pixels).
        medium : {"air", "vacuum"}
            Medium of ``wavelength``.
        provenance : `~specutils_deepclean.provenance.Provenance`, optional
            Training provenance.
        extra : dict of str to array_like, optional
            Further arrays to store (names must not clash with the prior's arrays
            or ``ood_reference``).
        name : str, optional
            Short name of the model.

        Returns
        -------
        Denoiser
            In evaluation mode, on the CPU, with float32 weights (as
            `~specutils_deepclean.io.models.load_model` gives them).

        Raises
        ------
        TypeError
            If a part has the wrong type.
        ValueError
            If the parts do not fit together.
        """
        if not isinstance(generator, IsometricAutoencoder):
            raise TypeError(f"generator must be an IsometricAutoencoder, got {type(generator)}")
        if not isinstance(prior, KDEPrior):
            raise TypeError(f"prior must be a KDEPrior, got {type(prior).__name__}")
        if not isinstance(flows, dict) or not all(isinstance(f, NoiseFlow) for f in flows.values()):
            raise TypeError("flows must be a dict of NoiseFlow")
        config = {"architecture": ARCHITECTURE, **_prefix(generator.config, "generator_")}
        config["flows"] = sorted(flows)
        for kind, flow in flows.items():
            config.update(_prefix(flow.config, f"flow_{kind}_"))
        config.update(prior.to_config())
        arrays = {**prior.to_arrays(), "ood_reference": prior.reference_scores().cpu().numpy()}
        clash = sorted(set(arrays) & set(extra or {}))
        if clash:
            raise ValueError(f"extra must not contain {', '.join(clash)} (set from the prior)")
        model = cls(
            config,
            wavelength=wavelength,
            medium=medium,
            classes=prior.class_names,
            extra={**(extra or {}), **arrays},
            provenance=provenance,
            name=name,
        )
        model.generator.load_state_dict(generator.state_dict())
        for kind, flow in flows.items():
            model.flows[kind].load_state_dict(flow.state_dict())
        return model.eval()

    @property
    def latent_dim(self) -> int:
        """:math:`L`, the size of the latent space."""
        return self.generator.latent_dim

    @property
    def n_classes(self) -> int:
        """Number of classes K of the prior."""
        return self.prior.n_classes

    # ------------------------------------------------------------------ the objective

    def log_joint(self, z, flux, sigma=None, missing=None) -> torch.Tensor:
        r"""The log joint of Eq. 7 under every class.

        :math:`\sum_j \log p(y_j \mid G(z)) + \log p(z \mid C) + \log p(C)`.

        Parameters
        ----------
        z : tensor, shape (B, K, L)
            One latent vector per star and class.
        flux, sigma, missing
            One star per row, as in `map_estimate` (2-D or 3-D, no ragged index).

        Returns
        -------
        tensor, shape (B, K)
            Differentiable in ``z``.
        """
        data = self._prepare(flux, sigma, missing, None)
        z = torch.as_tensor(z, dtype=self._dtype, device=self.device)
        if z.shape != (data.flux.shape[0], self.n_classes, self.latent_dim):
            raise ValueError(
                f"z must have shape {(data.flux.shape[0], self.n_classes, self.latent_dim)}, "
                f"got {tuple(z.shape)}"
            )
        rows = torch.arange(z.shape[0], device=z.device).repeat_interleave(self.n_classes)
        classes = torch.arange(self.n_classes, device=z.device).repeat(z.shape[0])
        flat = self._objective(z.reshape(-1, self.latent_dim), rows, classes, data)
        return flat.reshape(z.shape[:2])

    def _objective(self, z, rows, classes, data: _Data) -> torch.Tensor:
        """Log joint of latent ``z[i]`` (n, L) for star ``rows[i]`` under class ``classes[i]``."""
        signal = self.generator.generate(z)[:, None, :]
        sigma = None if data.sigma is None else data.sigma[rows]
        dist = self.flows[data.flow](signal, sigma=sigma)
        log_lik = dist.log_prob(data.flux[rows], missing=data.gone[rows]).sum(-1)
        return log_lik + self.prior.log_prob(z, c=classes) - math.log(self.n_classes)

    # ------------------------------------------------------------------ inference

    def map_estimate(
        self,
        flux,
        sigma=None,
        missing=None,
        *,
        exposures=None,
        n_starts: int = 3,
        steps: int = 150,
        lr: float = 0.05,
        tol: float = 1e-3,
        patience: int = 10,
        class_margin: float = 30.0,
        prune_after: int = 10,
        newton_steps: int = 2,
        random_starts: int = 0,
        generator: torch.Generator | None = None,
    ) -> MAPResult:
        r"""MAP estimate of :math:`(z, C)` (Eq. 7) for a batch of stars, with Laplace posteriors.

        For every star, every class and several starts at once, the log joint

        .. math::

            \sum_j \log p(y_j \mid G(z)) + \log p(z \mid C) + \log p(C)

        is maximised over :math:`z` (the sum runs over the star's exposures, each
        with its masked NoiseFlow likelihood, Eq. 15; :math:`p(C)` is uniform).

        1. Starts per class: the encoder's guess :math:`E(y)` (the mean of the
           exposures' codes, weighted by their numbers of valid pixels), then
           ``n_starts - 1`` high-density training latents of the class
           (`~specutils_deepclean.models.prior.KDEPrior.starts`), then
           ``random_starts`` draws from :math:`p(z \mid C)` (from ``generator``).
        2. Adam ascent, all (star, class, start) triples in one tensor, in
           coordinates scaled by the spread of the training latents (so ``lr`` is
           in units of that spread). A triple stops when its objective has not
           risen by ``tol`` for ``patience`` steps; after ``prune_after`` steps
           only the best start of each (star, class) goes on, and classes more than
           ``class_margin`` below the star's best class stop (their posterior
           weight is below :math:`e^{-\text{margin}}`). The best point seen is kept.
        3. ``newton_steps`` safeguarded Newton steps per (star, class) with the
           exact Hessian (accepted only where the objective rises).
        4. Laplace approximation at each class's optimum :math:`\hat z_C`, with
           :math:`H_C` the Hessian of the negative log joint:
           :math:`\log p(C \mid y) = \log p(y, \hat z_C, C) + \tfrac12 \log\det(2\pi H_C^{-1})`
           up to a constant, normalised over the classes.

        Parameters
        ----------
        flux : array_like or tensor, shape (P,), (B, P), (B, E, P) or (N, P)
            Spectra on the model grid, normalised as the model's training spectra
            (median-normalised). 2-D: one exposure per star; 3-D: E exposures per
            star (pad missing exposures with NaN); with ``exposures``: N rows, any
            number per star. Non-finite values are missing.
        sigma : array_like, same shape as ``flux``, optional
            Per-pixel standard deviations (positive where observed; non-finite
            ones mark missing pixels).
        missing : array_like of bool, same shape as ``flux``, optional
            True where a pixel is missing.
        exposures : array_like of int, shape (N,), optional
            Star index of each row of a 2-D ``flux``: rows with the same index are
            exposures of one star. Stars are numbered 0 to B-1, each at least once.
        n_starts : int, optional
            Starts per class from the encoder and the KDE (>= 1).
        steps : int, optional
            Largest number of Adam steps (>= 0).
        lr : float, optional
            Adam learning rate, in units of the spread of the training latents.
        tol : float, optional
            Rise of the objective (nats) that counts as progress.
        patience : int, optional
            Steps without progress after which a start stops.
        class_margin : float, optional
            Log-joint gap (nats) beyond which a class stops being optimised.
        prune_after : int, optional
            Step after which only the best start of each (star, class) goes on.
        newton_steps : int, optional
            Newton refinements after Adam (>= 0).
        random_starts : int, optional
            Extra starts per class drawn from the prior (>= 0).
        generator : `torch.Generator`, optional
            Source of the random starts (on the model's device).

        Returns
        -------
        MAPResult

        Raises
        ------
        ValueError
            If the shapes do not fit the model or each other, a star has no valid
            pixel (or none that counts in the likelihood), ``sigma`` is not
            positive at an observed pixel, or a setting is out of range.
        TypeError
            If ``missing`` is not boolean.

        Warns
        -----
        `~astropy.utils.exceptions.AstropyUserWarning`
            If ``sigma`` is given but the model has no whitened flow (the plain
            flow is used and ``sigma`` ignored).

        Notes
        -----
        Flow choice: with ``sigma``, the whitened flow (else the plain one, with a
        warning); without ``sigma``, the plain flow, else the whitened flow with
        ``sigma`` estimated per exposure as DER_SNR does (1.4826 / sqrt(6) times
        the median of :math:`|2 f_i - f_{i-2} - f_{i+2}|` over valid pixels), a
        constant over the spectrum.

        Uncertainty: per class, :math:`\Sigma_C = H_C^{-1}` pushed through the
        generator, :math:`\operatorname{diag}(J_C \Sigma_C J_C^\top)` with
        :math:`J_C = \partial G / \partial z` at :math:`\hat z_C`; ``flux_sigma``
        mixes the classes by their posterior around the MAP spectrum,
        :math:`\sigma^2 = \sum_C p(C \mid y)\,[\operatorname{diag}(J_C \Sigma_C
        J_C^\top) + (G(\hat z_C) - G(\hat z))^2]`, so class ambiguity widens it.
        When the model file holds ``extra["generator_sigma"]`` (the per-pixel RMS
        error of ``G(E(y))`` on clean validation spectra, written by the training
        script), it is added in quadrature: the generator's own representation
        error, which the latent posterior does not know about.

        Runs with gradients enabled even inside `torch.inference_mode` (inputs
        are copied first); the model's weights are not changed.
        """
        _check_settings(
            {
                "n_starts": (n_starts, 1),
                "steps": (steps, 0),
                "patience": (patience, 1),
                "prune_after": (prune_after, 1),
                "newton_steps": (newton_steps, 0),
                "random_starts": (random_starts, 0),
            },
            {"lr": lr, "tol": tol, "class_margin": class_margin},
        )
        with torch.inference_mode(False), torch.enable_grad():
            data = self._prepare(flux, sigma, missing, exposures)
            z0 = self._starts(data, n_starts, random_starts, generator)
            best_z, best_obj, used, done = self._adam(
                data, z0, steps, lr, tol, patience, class_margin, prune_after
            )
            z_hat, obj, hess = self._newton(data, best_z, best_obj, newton_steps)
            return self._summarise(data, z_hat, obj, hess, used, done)

    # ------------------------------------------------------------------ steps of the MAP

    def _starts(self, data: _Data, n_starts, random_starts, generator) -> torch.Tensor:
        """Start points, shape (B, K, S, L)."""
        n_star, n_exp, n_pix = data.flux.shape
        k = self.n_classes
        valid = (~data.gone).sum(-1).to(self._dtype)  # (B, E)
        with torch.no_grad():
            codes = self.generator.encode(
                data.flux.reshape(-1, n_pix), data.gone.reshape(-1, n_pix)
            ).reshape(n_star, n_exp, -1)
        guess = (codes * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        parts = [guess[:, None, None, :].expand(n_star, k, 1, self.latent_dim)]
        if n_starts > 1:
            modes = self.prior.starts(n_starts - 1).to(self._dtype)
            parts.append(modes[None].expand(n_star, -1, -1, -1))
        if random_starts:
            draws = [
                self.prior.sample(n_star * random_starts, c, generator=generator) for c in range(k)
            ]
            draws = torch.stack(draws).to(self._dtype).reshape(k, n_star, random_starts, -1)
            parts.append(draws.transpose(0, 1))
        return torch.cat(parts, dim=2).detach()

    def _adam(self, data: _Data, z0, steps, lr, tol, patience, margin, prune_after):
        """Adam ascent of all triples; the best point of each (star, class) and diagnostics."""
        n_star, k, n_start, n_dim = z0.shape
        scale = self._latent_scale.to(self._dtype)
        x = (z0 / scale).reshape(-1, n_dim).clone()
        n = x.shape[0]
        rows = torch.arange(n_star, device=x.device).repeat_interleave(k * n_start)
        classes = torch.arange(k, device=x.device).repeat_interleave(n_start).repeat(n_star)
        moment1, moment2 = torch.zeros_like(x), torch.zeros_like(x)
        best_x, best_obj = x.clone(), torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        used = torch.zeros(n, dtype=torch.int64, device=x.device)
        stall = torch.zeros_like(used)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        done = torch.zeros_like(active)
        for step in range(steps):
            index = active.nonzero()[:, 0]
            if index.numel() == 0:
                break
            xa = x[index]
            obj, grad = self._gradient(xa, scale, rows[index], classes[index], data)
            finite = torch.isfinite(obj) & torch.isfinite(grad).all(-1)
            better = finite & (obj > best_obj[index])
            progress = finite & (obj > best_obj[index] + tol)
            best_obj[index] = torch.where(better, obj, best_obj[index])
            best_x[index] = torch.where(better[:, None], xa, best_x[index])
            stall[index] = torch.where(progress, 0, stall[index] + 1)
            grad = torch.where(finite[:, None], grad, 0.0)
            used[index] += 1
            t = used[index, None].to(x.dtype)
            moment1[index] = _BETAS[0] * moment1[index] + (1 - _BETAS[0]) * grad
            moment2[index] = _BETAS[1] * moment2[index] + (1 - _BETAS[1]) * grad.square()
            m_hat = moment1[index] / (1 - _BETAS[0] ** t)
            v_hat = moment2[index] / (1 - _BETAS[1] ** t)
            x[index] = xa + lr * m_hat / (v_hat.sqrt() + 1e-8)
            converged = stall >= patience
            done |= converged & active
            active &= ~converged
            active[index] &= finite
            if step + 1 == prune_after:
                active &= _survivors(best_obj.reshape(n_star, k, n_start), margin).reshape(-1)
        best_obj = best_obj.reshape(n_star, k, n_start)
        pick = best_obj.argmax(-1, keepdim=True)  # best start of each (star, class)
        best_x = best_x.reshape(n_star, k, n_start, n_dim)
        z = torch.gather(best_x, 2, pick[..., None].expand(-1, -1, 1, n_dim))[:, :, 0] * scale
        used = torch.gather(used.reshape(n_star, k, n_start), 2, pick)[..., 0]
        done = torch.gather(done.reshape(n_star, k, n_start), 2, pick)[..., 0]
        return z, torch.gather(best_obj, 2, pick)[..., 0], used, done

    def _newton(self, data: _Data, z, obj, newton_steps):
        """Safeguarded Newton steps; returns z, objective and Hessian of -log joint."""
        n_star, k, n_dim = z.shape
        rows = torch.arange(n_star, device=z.device).repeat_interleave(k)
        classes = torch.arange(k, device=z.device).repeat(n_star)
        flat = z.reshape(-1, n_dim)
        obj, grad, hess = self._derivatives(flat, rows, classes, data)
        for _ in range(newton_steps):
            values, vectors = torch.linalg.eigh(hess)
            values = values.clamp_min(_eig_floor(values))
            inv = vectors @ torch.diag_embed(1 / values) @ vectors.transpose(-1, -2)
            proposal = flat + (inv @ grad[..., None])[..., 0]
            with torch.no_grad():
                new = self._objective(proposal, rows, classes, data)
            accept = torch.isfinite(new) & (new > obj)
            if not bool(accept.any()):
                break
            flat = torch.where(accept[:, None], proposal, flat)
            obj, grad, hess = self._derivatives(flat, rows, classes, data)
        return flat.reshape(n_star, k, n_dim), obj.reshape(n_star, k), hess

    def _gradient(self, x, scale, rows, classes, data: _Data):
        """Objective and its gradient in scaled coordinates, in cache-sized chunks."""
        parts = []
        for part in torch.arange(x.shape[0], device=x.device).split(_CHUNK):
            xa = x[part].detach().requires_grad_(True)
            obj = self._objective(xa * scale, rows[part], classes[part], data)
            (grad,) = torch.autograd.grad(obj.sum(), xa)
            parts.append((obj.detach(), grad))
        return tuple(torch.cat(items) for items in zip(*parts, strict=True))

    def _derivatives(self, z, rows, classes, data: _Data):
        """Objective (n,), gradient (n, L) and Hessian of its negative (n, L, L), chunked."""
        parts = [
            self._chunk_derivatives(z[part], rows[part], classes[part], data)
            for part in torch.arange(z.shape[0], device=z.device).split(_CHUNK)
        ]
        return tuple(torch.cat(items) for items in zip(*parts, strict=True))

    def _chunk_derivatives(self, z, rows, classes, data: _Data):
        z = z.detach().requires_grad_(True)
        obj = self._objective(z, rows, classes, data)
        (grad,) = torch.autograd.grad(obj.sum(), z, create_graph=True)
        columns = [
            torch.autograd.grad(grad[:, i].sum(), z, retain_graph=i + 1 < z.shape[1])[0]
            for i in range(z.shape[1])
        ]
        hess = -torch.stack(columns, dim=1)
        hess = 0.5 * (hess + hess.transpose(-1, -2))
        return obj.detach(), grad.detach(), hess.detach()

    def _summarise(self, data: _Data, z, obj, hess, used, done) -> MAPResult:
        n_star, k, n_dim = z.shape
        values, vectors = torch.linalg.eigh(hess)
        values = values.clamp_min(_eig_floor(values))
        cov = vectors @ torch.diag_embed(1 / values) @ vectors.transpose(-1, -2)
        log_det = torch.log(values).sum(-1)
        log_post = obj.reshape(n_star, k) + 0.5 * (n_dim * _LOG_2PI - log_det.reshape(n_star, k))
        posterior = torch.softmax(log_post, dim=-1)
        best = posterior.argmax(-1)
        signal, jac = self._jacobian(z.reshape(-1, n_dim))
        signal = signal.reshape(n_star, k, -1)
        var = torch.einsum("npi,nij,npj->np", jac, cov, jac).reshape(n_star, k, -1)
        chosen = signal[torch.arange(n_star), best]
        spread = var + (signal - chosen[:, None]).square()
        flux_sigma = (posterior[..., None] * spread).sum(1)
        if "generator_sigma" in self.extra:
            floor = torch.as_tensor(self.extra["generator_sigma"], dtype=flux_sigma.dtype)
            flux_sigma = flux_sigma + floor.to(flux_sigma.device).square()
        flux_sigma = flux_sigma.sqrt()
        z_map = z[torch.arange(n_star), best]
        ood = self.prior.ood_score(z_map, reference=self._ood_reference)
        as_np = _numpy
        return MAPResult(
            z=as_np(z_map),
            map_class=as_np(best),
            class_names=self.prior.class_names,
            flux=as_np(chosen),
            flux_sigma=as_np(flux_sigma),
            filled=as_np(data.gone.all(dim=1)),
            class_posterior=as_np(posterior),
            class_z=as_np(z),
            class_log_joint=as_np(obj.reshape(n_star, k)),
            hessian=as_np(hess.reshape(n_star, k, n_dim, n_dim)),
            covariance=as_np(cov.reshape(n_star, k, n_dim, n_dim)),
            ood_score=as_np(ood),
            steps=as_np(used),
            converged=as_np(done),
            flow=data.flow,
            sigma_estimated=data.sigma_estimated,
        )

    def _jacobian(self, z):
        r"""``G(z)`` (n, P) and ``dG/dz`` (n, P, L).

        Reverse mode twice: :math:`g(w) = J^\top w` is linear in :math:`w`, so
        :math:`\partial g_i / \partial w = J_{:, i}`: L backward passes, none of P.
        """
        z = z.detach().requires_grad_(True)
        signal = self.generator.generate(z)
        probe = torch.zeros_like(signal, requires_grad=True)
        (pulled,) = torch.autograd.grad(signal, z, grad_outputs=probe, create_graph=True)
        columns = [
            torch.autograd.grad(pulled[:, i].sum(), probe, retain_graph=i + 1 < z.shape[1])[0]
            for i in range(z.shape[1])
        ]
        return signal.detach(), torch.stack(columns, dim=-1)

    # ------------------------------------------------------------------ inputs

    @property
    def _dtype(self) -> torch.dtype:
        return self.generator.mean.dtype

    def _prepare(self, flux, sigma, missing, exposures) -> _Data:
        """Check the inputs and arrange them as (B, E, P) tensors on the model's device."""
        flux = self._as_tensor(flux, "flux")
        if flux.ndim not in (1, 2, 3):
            raise ValueError(f"flux must be 1-D, 2-D or 3-D, got shape {tuple(flux.shape)}")
        if flux.shape[-1] != self.n_pix:
            raise ValueError(
                f"flux has {flux.shape[-1]} pixels but the model grid has {self.n_pix}"
            )
        gone = missing_mask(flux, None if missing is None else np.asarray(missing))
        if sigma is not None:
            sigma = self._as_tensor(sigma, "sigma")
            if sigma.shape != flux.shape:
                raise ValueError(f"sigma has shape {tuple(sigma.shape)}, flux {tuple(flux.shape)}")
            gone = gone | ~torch.isfinite(sigma)
            if bool(((sigma <= 0) & ~gone).any()):
                raise ValueError("sigma must be positive at every observed pixel")
        arrays = [flux, gone] + ([] if sigma is None else [sigma])
        arrays = _arrange(arrays, exposures)
        flux, gone = arrays[0], arrays[1]
        sigma = arrays[2] if sigma is not None else None
        _check_usable(gone, self._min_context())
        flux = torch.where(gone, 0.0, flux)
        if sigma is not None:
            sigma = torch.where(gone, 1.0, sigma)
        return self._choose_flow(flux, sigma, gone)

    def _choose_flow(self, flux, sigma, gone) -> _Data:
        if sigma is not None:
            if "whitened" in self.flows:
                return _Data(flux, sigma, gone, "whitened", False)
            warnings.warn(
                "this Denoiser has no whitened NoiseFlow: sigma is ignored and the plain "
                "flow is used",
                AstropyUserWarning,
                stacklevel=4,
            )
            return _Data(flux, None, gone, "plain", False)
        if "plain" in self.flows:
            return _Data(flux, None, gone, "plain", False)
        level = _der_snr_noise(flux, gone)
        sigma = level[..., None].expand_as(flux).contiguous()
        return _Data(flux, sigma, gone, "whitened", True)

    def _min_context(self) -> int:
        return max(flow.context for flow in self.flows.values())

    def _as_tensor(self, x, name: str) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        try:
            array = np.array(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of numbers") from exc
        return torch.as_tensor(array, dtype=self._dtype, device=self.device).clone()


# ---------------------------------------------------------------------- helpers


def _build_flows(config: dict, n_pix: int) -> dict:
    kinds = config.get("flows")
    if not isinstance(kinds, list) or not kinds or not set(kinds) <= set(FLOW_KINDS):
        raise ValueError(
            f"config['flows'] must be a non-empty list of {sorted(FLOW_KINDS)}, got {kinds!r}"
        )
    flows = {}
    for kind in kinds:
        flow = NoiseFlow(**_unprefix(config, f"flow_{kind}_"))
        if flow.whitened != FLOW_KINDS[kind]:
            raise ValueError(
                f"the {kind!r} flow must have whitened={FLOW_KINDS[kind]}, got {flow.whitened}"
            )
        if flow.context >= n_pix:
            raise ValueError(f"the {kind!r} flow's context {flow.context} needs > {n_pix} pixels")
        flows[kind] = flow
    return flows


def _prefix(config: dict, prefix: str) -> dict:
    return {f"{prefix}{key}": value for key, value in config.items()}


def _unprefix(config: dict, prefix: str) -> dict:
    found = {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
    if not found:
        raise ValueError(f"config has no entries starting with {prefix!r}")
    return found


def _arrange(arrays: list, exposures) -> list:
    """Reshape every array to (B, E, P), padding ragged exposures with missing pixels."""
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


def _check_usable(gone: torch.Tensor, context: int) -> None:
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


def _der_snr_noise(flux: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """DER_SNR noise level of each exposure (B, E); exposures without any are 1."""
    diff = 2 * flux[..., 2:-2] - flux[..., :-4] - flux[..., 4:]
    bad = gone[..., 2:-2] | gone[..., :-4] | gone[..., 4:]
    level = _DER_SNR * torch.where(bad, torch.nan, diff.abs()).nanmedian(dim=-1).values
    all_gone = gone.all(-1)
    if bool((~all_gone & ~(level > 0)).any()):
        raise ValueError(
            "cannot estimate the noise of a spectrum without sigma (too few valid pixels "
            "or zero noise): pass sigma"
        )
    return torch.where(all_gone | ~(level > 0), 1.0, level)


def _survivors(best_obj: torch.Tensor, margin: float) -> torch.Tensor:
    """Mask (B, K, S): the best start of each (star, class), for classes within margin."""
    per_class = best_obj.max(-1)
    keep_start = torch.zeros_like(best_obj, dtype=torch.bool)
    keep_start.scatter_(-1, per_class.indices[..., None], True)
    top = per_class.values.max(-1, keepdim=True).values
    keep_class = per_class.values >= top - margin
    return keep_start & keep_class[..., None]


def _eig_floor(values: torch.Tensor) -> torch.Tensor:
    """Smallest eigenvalue kept for each Hessian: 1e-6 of its largest magnitude (or tiny)."""
    top = values.abs().amax(-1, keepdim=True)
    return torch.clamp_min(top * 1e-6, torch.finfo(values.dtype).tiny ** 0.5)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _check_settings(integers: dict, numbers: dict) -> None:
    """Integers (name -> (value, lowest allowed)) and positive finite numbers."""
    for name, (value, low) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
