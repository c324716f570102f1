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
from .noiseflow import _HALF_LOG_2PI, NoiseFlow, counted_pixels
from .prior import KDEPrior

__all__ = ["Denoiser", "MAPResult"]

ARCHITECTURE = "deep-bayesian"
#: Kinds of NoiseFlow a Denoiser may hold, and whether each is whitened.
FLOW_KINDS = {"whitened": True, "plain": False}
#: DER_SNR's noise factor: 1.482602 / sqrt(6) times the median |2 f_i - f_{i-2} - f_{i+2}|.
_DER_SNR = 1.482602 / math.sqrt(6.0)
_LOG_2PI = 2.0 * _HALF_LOG_2PI
#: Latent points per chunk of likelihood derivatives, and of plain evaluations:
#: the fastest of 8/16, 16/32, 32/64 and 64/128 for batches of 256 on a 2-core CPU
#: (larger chunks leave the cache, smaller ones pay per-call overhead).
_CHUNK = 16
_EVAL_CHUNK = 32
#: Screening rounds, each around the star's best point so far.
_SCREEN_ROUNDS = 2
#: EM iterations of the screening, and the largest move (latent units) that stops them.
_EM_ITERATIONS = 50
_EM_TOL = 1e-4
#: Halvings of a Newton step that does not raise the log joint before the class stops.
_HALVINGS = 3
#: Classes with a smaller posterior are left out of the flux uncertainty's mixture.
_MIX_FLOOR = 1e-10
#: Stars per chunk of the linear terms' normal equations ((n, K, P) temporaries).
_RESIDUAL_CHUNK = 32
#: Most Legendre orders of the continuum term a model file may declare.
_MAX_CONTINUUM_TERMS = 16


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
        The denoised spectrum :math:`G(\hat z)` (with the continuum and residual
        terms when the model has them: see `Denoiser.map_estimate`, Notes), in the
        normalised units of the input.
    flux_sigma : ndarray, shape (B, P)
        Its per-pixel standard deviation (see `Denoiser.map_estimate`, Notes).
    latent_sigma : ndarray, shape (B, P)
        The part of it that comes from the posterior of :math:`z` and
        :math:`C` alone, before the calibration scales and the generator's own
        error are applied.
    filled : ndarray of bool, shape (B, P)
        Pixels missing in every exposure: their flux comes from the model alone.
    rejected : ndarray of bool, shape (B, P)
        Pixels rejected as outliers (``clip`` of `Denoiser.map_estimate`) in at
        least one exposure; they do not count in the likelihood.
    class_posterior : ndarray, shape (B, K)
        :math:`p(C \mid y)` from the Laplace approximation; rows sum to 1.
    class_z : ndarray, shape (B, K, L)
        The optimum :math:`\hat z_C` of each class.
    class_log_joint : ndarray, shape (B, K)
        :math:`\log p(y \mid G(\hat z_C)) + \log p(\hat z_C \mid C) + \log p(C)`.
    hessian : ndarray, shape (B, K, L, L)
        :math:`H_C`, the Hessian of the negative log joint in :math:`z` at
        :math:`\hat z_C` (exact almost everywhere, see `Denoiser.map_estimate`).
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


@dataclass
class _Data:
    """A batch on the model's device, (B, E, P) arrays, arranged for the flow ``flow``.

    ``flux`` is zero and ``inv_unit`` (1 / (flow scale * sigma)) is zero at
    missing pixels (``gone``: the input's missing pixels and the ``rejected``
    outliers); ``counted`` is 1 where a pixel counts in the likelihood;
    ``constant`` (B,) is the likelihood's part that does not depend on z,
    minus the sum of ``log(unit) + log(2 pi) / 2`` over the counted pixels.
    """

    flux: torch.Tensor
    gone: torch.Tensor
    rejected: torch.Tensor
    inv_unit: torch.Tensor
    counted: torch.Tensor
    constant: torch.Tensor
    flow: str
    sigma_estimated: bool


@dataclass
class _State:
    """The (star, class) pairs of a MAP run, flattened star-major: (B K, ...) tensors."""

    z: torch.Tensor
    obj: torch.Tensor
    hess: torch.Tensor
    rows: torch.Tensor
    classes: torch.Tensor
    active: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor


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
        _check_uncertainty_extra(self.extra, self.n_pix)

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
        log_lik = self._likelihood(z, rows, data)
        return log_lik + self.prior.log_prob(z, c=classes) - math.log(self.n_classes)

    # ------------------------------------------------------------------ inference

    def map_estimate(
        self,
        flux,
        sigma=None,
        missing=None,
        *,
        exposures=None,
        n_starts: int = 2,
        steps: int = 20,
        tol: float = 5e-2,
        class_margin: float = 10.0,
        random_starts: int = 0,
        clip: float | None = 5.0,
        generator: torch.Generator | None = None,
    ) -> MAPResult:
        r"""MAP estimate of :math:`(z, C)` (Eq. 7) for a batch of stars, with Laplace posteriors.

        For every star and every class, the log joint

        .. math::

            \sum_j \log p(y_j \mid G(z)) + \log p(z \mid C) + \log p(C)

        is maximised over :math:`z` (the sum runs over the star's exposures, each
        with its masked NoiseFlow likelihood, Eq. 15; :math:`p(C)` is uniform).
        The generator and the flow's networks are piecewise linear (leaky ReLU,
        ReLU), so the likelihood's gradient and Hessian in :math:`z` follow
        exactly from one Jacobian of :math:`G` and the flow's derivatives in its
        window of :math:`K` pixels (no second-order automatic differentiation);
        the prior's come in closed form
        (`~specutils_deepclean.models.prior.KDEPrior.log_prob_derivatives`).

        0. Outlier rejection (unless ``clip`` is None): each exposure's pixels
           that lie more than ``clip`` times the noise above the encoder's
           guess :math:`G(E(y))` are left out of the likelihood (cosmic-ray hits,
           sky-line residuals); see Notes.
        1. Screening, in two rounds per star. The likelihood's value, gradient
           and Hessian at a centre: first the encoder's guess :math:`z_E = E(y)`
           (the mean of the exposures' codes, weighted by their numbers of valid
           pixels), then the star's best point of the first round. For every
           class, the quadratic expansion of the likelihood there (its Hessian's
           eigenvalues raised to a small floor) plus the exact
           :math:`\log p(z \mid C)` is maximised by EM iterations on the KDE
           kernels (each one raises it). The log joint is evaluated at that
           optimum, at ``n_starts - 1`` high-density training latents of the class
           (`~specutils_deepclean.models.prior.KDEPrior.starts`) and at
           ``random_starts`` draws from :math:`p(z \mid C)` (from ``generator``);
           the best of these and :math:`z_E` starts the class. Classes more
           than ``class_margin`` below the star's best class stop here (their
           posterior weight is below :math:`e^{-\text{margin}}`).
        2. Newton ascent of the other classes, all (star, class) pairs in one
           batch: the exact Hessian :math:`H_C` of the negative log joint, its
           eigenvalues raised to a floor, gives the step; a step is halved up to
           three times until the log joint rises by at least ``tol``, else the
           class stops. A class
           has converged when the Newton decrement
           :math:`g^\top H_C^{-1} g / 2` (the rise a full step would bring) is
           below ``tol``; it stops at a point where :math:`H_C` is known.
        3. Laplace approximation at each class's point :math:`\hat z_C`:
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
            Starts per class: the screened encoder guess and ``n_starts - 1`` KDE
            modes (>= 1).
        steps : int, optional
            Largest number of Newton steps per class (>= 0).
        tol : float, optional
            Newton decrement (nats) below which a class has converged (0.05 gave the
            same median MSE as 0.01 on MILES val within 1.7 % at every S/N:
            ``benchmarks/results/denoise_val_tol0.01.json`` and
            ``denoise_val_tol0.05.json``).
        class_margin : float, optional
            Log-joint gap (nats) beyond which a class stops after screening
            (10, its posterior weight below :math:`5 \times 10^{-5}`, was as good as 30
            on MILES val and 1.4 times faster, timed on one thread of a shared CPU:
            ``benchmarks/results/denoise_val_margin.json``).
        random_starts : int, optional
            Extra starts per class drawn from the prior (>= 0).
        clip : float or None
            Outlier threshold (> 0), in units of the noise; None keeps every
            pixel.  The default 5 was chosen on simulated MILES val spectra, where
            it did almost as well as knowing the cosmic-ray hits (see the
            denoising docs).
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
        Outliers: with :math:`u = (y - G(E(y))) / \sqrt{\sigma^2 + \sigma_G^2}`
        per pixel (:math:`\sigma` the given or DER_SNR-estimated noise,
        :math:`\sigma_G` the generator's error, below), a pixel is rejected when
        :math:`u - \operatorname{median}(u) > \text{clip} \cdot \max(1, s)`,
        :math:`s` the robust spread (1.4826 times the median absolute deviation)
        of :math:`u` over the exposure: one-sided, because an absorption line
        the guess misses must not be cut.  The pixels are listed in
        ``MAPResult.rejected``; the encoder's guess of step 1 is taken again
        without them.

        Flow choice: with ``sigma``, the whitened flow (else the plain one, with a
        warning); without ``sigma``, the plain flow, else the whitened flow with
        ``sigma`` estimated per exposure as DER_SNR does (1.4826 / sqrt(6) times
        the median of :math:`|2 f_i - f_{i-2} - f_{i+2}|` over valid pixels), a
        constant over the spectrum.

        Hessians: exact (almost everywhere) for the classes that reach step 2.
        A class that stops at screening keeps the likelihood's Hessian at the
        last screening centre plus the prior's exact Hessian at its point; its posterior
        weight is below :math:`e^{-\text{margin}}` anyway.

        Uncertainty: per class, :math:`\Sigma_C = H_C^{-1}` pushed through the
        generator, :math:`\operatorname{diag}(J_C \Sigma_C J_C^\top)` with
        :math:`J_C = \partial G / \partial z` at :math:`\hat z_C`; ``flux_sigma``
        mixes the classes by their posterior around the MAP spectrum,
        :math:`\sigma^2 = \sum_C p(C \mid y)\,[\operatorname{diag}(J_C \Sigma_C
        J_C^\top) + (G(\hat z_C) - G(\hat z))^2]`, so class ambiguity widens it;
        classes with :math:`p(C \mid y) < 10^{-10}` are left out of the sum.
        When the model file holds ``extra["generator_sigma"]`` (the per-pixel RMS
        error of ``G(E(y))`` on clean validation spectra, written by the training
        script), it is added in quadrature: the generator's own representation
        error, which the latent posterior does not know about.  When it also holds
        ``extra["sigma_scales"]`` = :math:`(a, b)` (fitted on validation spectra by
        `~specutils_deepclean.training.denoiser.calibrate_uncertainty`), the
        variance is :math:`a^2 \sigma^2 + b^2 \sigma_G^2`, :math:`\sigma_G` the
        generator's error.

        Residual term: when the model file holds ``extra["residual_basis"]``
        (K, P), orthonormal rows :math:`B`, and ``extra["residual_variance"]``
        :math:`\Lambda` (K,) (the principal directions of the generator's error
        on clean training spectra and their variances, see
        `~specutils_deepclean.training.denoiser.fit_residual_basis`), the
        spectrum is :math:`G(z) + B a` with the prior :math:`a \sim N(0,
        \Lambda)`.  :math:`a` is fitted after the MAP of :math:`(z, C)`: its
        posterior mean given :math:`\hat z` under Gaussian noise of the flow's
        scale, a ridge solve per star; the class posterior and the latent
        uncertainty do not see it.

        Continuum term: when the model file holds ``extra["continuum_sigma"]``
        :math:`\tau` (D + 1,) (see
        `~specutils_deepclean.training.denoiser.fit_continuum_term`), the spectrum
        is multiplied by :math:`1 + \sum_{k \le D} c_k P_k(x)`, Legendre
        polynomials of :math:`x` running from -1 to 1 over the model's grid, with
        the prior :math:`c_k \sim N(0, \tau_k^2)`: the overall level (which the
        median normalisation of a noisy spectrum gets wrong by a few per cent at low
        S/N, and which :math:`G` cannot change) and the continuum's slope and
        curvature (flux calibration, reddening).  Linearised at
        :math:`G(\hat z)`, :math:`c` is fitted together with the residual term's
        :math:`a`, in the same ridge solve.  The two terms' posterior variance is
        added to ``flux_sigma`` at the pixels without data (there they are a
        guess from the prior); elsewhere it is left to the generator-error part.

        Runs without recording gradients; the model's weights are not changed.
        """
        _check_settings(
            {
                "n_starts": (n_starts, 1),
                "steps": (steps, 0),
                "random_starts": (random_starts, 0),
            },
            {"tol": tol, "class_margin": class_margin, **({} if clip is None else {"clip": clip})},
        )
        with torch.no_grad():
            data = self._prepare(flux, sigma, missing, exposures, clip)
            z_enc = self._encoder_guess(data)
            extra = self._extra_starts(data.flux.shape[0], n_starts, random_starts, generator)
            state = self._screen(data, z_enc, extra, class_margin)
            self._newton(data, state, steps, tol)
            return self._summarise(data, state)

    # ------------------------------------------------------------------ steps of the MAP

    def _encoder_guess(self, data: _Data) -> torch.Tensor:
        """:math:`E(y)` of each star (B, L): exposures' codes weighted by valid pixels."""
        n_star, n_exp, n_pix = data.flux.shape
        valid = (~data.gone).sum(-1).to(self._dtype)  # (B, E)
        codes = self.generator.encode(
            data.flux.reshape(-1, n_pix), data.gone.reshape(-1, n_pix)
        ).reshape(n_star, n_exp, -1)
        return (codes * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)

    def _extra_starts(self, n_star, n_starts, random_starts, generator) -> torch.Tensor:
        """KDE modes and random draws of every class, shape (B, K, S, L) (S may be 0)."""
        k, parts = self.n_classes, []
        if n_starts > 1:
            modes = self.prior.starts(n_starts - 1).to(self._dtype)
            parts.append(modes[None].expand(n_star, -1, -1, -1))
        if random_starts:
            draws = [
                self.prior.sample(n_star * random_starts, c, generator=generator) for c in range(k)
            ]
            draws = torch.stack(draws).to(self._dtype).reshape(k, n_star, random_starts, -1)
            parts.append(draws.transpose(0, 1))
        if not parts:
            return torch.zeros((n_star, k, 0, self.latent_dim), dtype=self._dtype)
        return torch.cat(parts, dim=2).to(self.device)

    def _screen(self, data: _Data, z_enc, extra, margin) -> _State:
        """Step 1 of `map_estimate`: a start per (star, class) and the classes that go on."""
        n_star, k, n_dim = z_enc.shape[0], self.n_classes, self.latent_dim
        stars = torch.arange(n_star, device=z_enc.device)
        rows = stars.repeat_interleave(k)
        classes = torch.arange(k, device=z_enc.device).repeat(n_star)
        precision = self.prior.precisions[classes]
        # the extra starts, then z_E, then the EM optimum around the star's best point
        n_extra = extra.shape[2]
        cand = extra.reshape(n_star * k, n_extra, n_dim)
        obj = z_enc.new_zeros((n_star * k, 0))
        if n_extra:
            obj = self._objective(
                cand.reshape(-1, n_dim),
                rows.repeat_interleave(n_extra),
                classes.repeat_interleave(n_extra),
                data,
            ).reshape(n_star * k, n_extra)
        centre = z_enc
        for _ in range(_SCREEN_ROUNDS):
            lik, grad, hess = self._likelihood(centre, stars, data, derivatives=True)
            prior = self.prior.log_prob(centre[rows], c=classes)
            surrogate = self._surrogate_optimum(centre, grad, hess, precision, rows, classes)
            value = self._objective(surrogate, rows, classes, data)
            cand = torch.cat([cand, centre[rows, None], surrogate[:, None]], dim=1)
            obj = torch.cat(
                [obj, (lik[rows] + prior - math.log(k))[:, None], value[:, None]], dim=1
            )
            obj = torch.where(torch.isfinite(obj), obj, -math.inf)
            best = obj.argmax(-1)
            z = cand[torch.arange(n_star * k), best]
            top = obj.max(-1).values.reshape(n_star, k).argmax(-1)
            centre = z.reshape(n_star, k, n_dim)[stars, top]
        obj = obj.max(-1).values
        top = obj.reshape(n_star, k).max(-1, keepdim=True).values
        active = (obj.reshape(n_star, k) >= top - margin).reshape(-1)
        _, _, prior_hess = self.prior.log_prob_derivatives(z, classes)
        return _State(
            z=z,
            obj=obj,
            hess=hess[rows] - prior_hess,
            rows=rows,
            classes=classes,
            active=active,
            steps=torch.zeros(n_star * k, dtype=torch.int64, device=z.device),
            converged=torch.zeros(n_star * k, dtype=torch.bool, device=z.device),
        )

    def _surrogate_optimum(self, centre, grad, hess, precision, rows, classes) -> torch.Tensor:
        r"""Optimum of the quadratic likelihood at ``centre`` plus each class's log prior.

        For every (star ``rows[i]``, class ``classes[i]``), the maximum of the
        likelihood's second-order expansion at the star's ``centre`` plus
        :math:`\log p(z \mid C)`, by EM on the KDE
        kernels: with the responsibility-weighted mean :math:`m` of the
        class's kernel centres at the current :math:`z`, the next one is
        :math:`(A + P)^{-1} (A c + g + P m)`, :math:`A` the floored Hessian of
        the negative log likelihood at the centre :math:`c`, :math:`g` its
        gradient and :math:`P` the class's kernel precision. Each iteration
        raises the surrogate; they stop after `_EM_ITERATIONS` or when no
        coordinate moves by more than `_EM_TOL`. The L x L algebra runs in
        float64: a narrow kernel's precision can be ~1e9 times the likelihood's
        curvature, beyond float32.
        """
        curvature = _floored(hess.double())[rows]  # (n, L, L), positive definite
        system = _floored(curvature + precision, power=-1)
        fixed = (curvature @ centre[rows, :, None].double())[..., 0] + grad[rows].double()
        z = centre[rows].double()
        for _ in range(_EM_ITERATIONS):
            _, prior_grad, _ = self.prior.log_prob_derivatives(
                z.to(self._dtype), classes, hessian=False
            )
            # P m = P z + grad log p(z | C)
            target = fixed + (precision @ z[..., None])[..., 0] + prior_grad.double()
            new = (system @ target[..., None])[..., 0]
            moved = float((new - z).abs().max())
            z = new
            if moved < _EM_TOL:
                break
        return z.to(self._dtype)

    def _newton(self, data: _Data, state: _State, steps: int, tol: float) -> None:
        """Step 2 of `map_estimate`: safeguarded Newton ascent of the active classes, in place."""
        for step in range(steps + 1):
            index = state.active.nonzero()[:, 0]
            if index.numel() == 0:
                return
            z, rows, classes = state.z[index], state.rows[index], state.classes[index]
            lik, grad, hess = self._likelihood(z, rows, data, derivatives=True)
            prior, prior_grad, prior_hess = self.prior.log_prob_derivatives(z, classes)
            grad, hess = grad + prior_grad, hess - prior_hess
            obj = lik + prior - math.log(self.n_classes)
            state.obj[index] = obj
            state.hess[index] = hess
            step_matrix = _floored(hess.double(), power=-1)
            delta = (step_matrix @ grad.double()[..., None])[..., 0].to(self._dtype)
            done = 0.5 * (grad * delta).sum(-1) < tol
            if step == steps:
                state.converged[index] = done
                return
            # halve the step until the log joint rises by tol; a smaller rise is not taken
            gain = torch.zeros_like(obj)
            for _ in range(_HALVINGS + 1):
                trial = (~done & ~(gain > 0)).nonzero()[:, 0]
                if trial.numel() == 0:
                    break
                proposal = z[trial] + delta[trial]
                value = self._objective(proposal, rows[trial], classes[trial], data)
                rise = torch.where(torch.isfinite(value), value - obj[trial], -math.inf)
                z[trial] = torch.where(rise[:, None] >= tol, proposal, z[trial])
                gain[trial] = rise
                delta[trial] = 0.5 * delta[trial]
            moved = gain >= tol
            state.z[index] = z
            state.steps[index] += moved.to(torch.int64)
            state.converged[index] = done | ((gain > -tol) & ~moved)
            state.active[index] = moved

    def _summarise(self, data: _Data, state: _State) -> MAPResult:
        n_star, k, n_dim = data.flux.shape[0], self.n_classes, self.latent_dim
        values, vectors = torch.linalg.eigh(state.hess)
        values = values.clamp_min(_eig_floor(values))
        cov = vectors @ torch.diag_embed(1 / values) @ vectors.transpose(-1, -2)
        log_det = torch.log(values).sum(-1)
        obj = state.obj.reshape(n_star, k)
        log_post = obj + 0.5 * (n_dim * _LOG_2PI - log_det.reshape(n_star, k))
        posterior = torch.softmax(log_post, dim=-1)
        best = posterior.argmax(-1)
        z = state.z.reshape(n_star, k, n_dim)
        stars = torch.arange(n_star, device=z.device)
        z_map = z[stars, best]
        chosen = self.generator.generate(z_map)
        terms, terms_var = self._linear_terms(data, chosen)
        flux = chosen + terms
        var = torch.zeros_like(chosen)
        mixed = (posterior >= _MIX_FLOOR).reshape(-1).nonzero()[:, 0]
        for part in mixed.split(_CHUNK):
            signal, jac = self.generator.generate_jacobian(state.z[part])
            spread = torch.einsum("npi,nij,npj->np", jac, cov[part], jac)
            spread += (signal - chosen[state.rows[part]]).square()
            weight = posterior.reshape(-1)[part, None]
            var.index_add_(0, state.rows[part], weight * spread)
        latent_var = var
        scales = self.extra.get("sigma_scales", (1.0, 1.0))
        var = float(scales[0]) ** 2 * latent_var
        if "generator_sigma" in self.extra:
            floor = torch.as_tensor(self.extra["generator_sigma"], dtype=var.dtype)
            var = var + float(scales[1]) ** 2 * floor.to(var.device).square()
        var = var + terms_var
        ood = self.prior.ood_score(z_map, reference=self._ood_reference)
        as_np = _numpy
        return MAPResult(
            z=as_np(z_map),
            map_class=as_np(best),
            class_names=self.prior.class_names,
            flux=as_np(flux),
            flux_sigma=as_np(var.sqrt()),
            latent_sigma=as_np(latent_var.sqrt()),
            filled=as_np((data.gone & ~data.rejected).all(dim=1)),
            rejected=as_np(data.rejected.any(dim=1)),
            class_posterior=as_np(posterior),
            class_z=as_np(z),
            class_log_joint=as_np(obj),
            hessian=as_np(state.hess.reshape(n_star, k, n_dim, n_dim)),
            covariance=as_np(cov.reshape(n_star, k, n_dim, n_dim)),
            ood_score=as_np(ood),
            steps=as_np(state.steps.reshape(n_star, k)),
            converged=as_np(state.converged.reshape(n_star, k)),
            flow=data.flow,
            sigma_estimated=data.sigma_estimated,
        )

    def _linear_terms(self, data: _Data, signal: torch.Tensor):
        r"""The linear terms' posterior mean given ``signal`` (B, P), and their posterior
        variance per pixel (B, P).

        The terms are the residual term :math:`B a` (``extra["residual_basis"]``,
        prior :math:`a \sim N(0, \Lambda)`) and the continuum term
        :math:`G(\hat z) \sum_k c_k P_k(x)` (``extra["continuum_sigma"]``: Legendre
        polynomials :math:`P_k` of :math:`x \in [-1, 1]` over the model's grid,
        prior :math:`c_k \sim N(0, \tau_k^2)`); both zero when the model has
        neither.  With the columns :math:`M` of both stacked per star, the
        coefficients are :math:`\hat u = A^{-1} M W r`, :math:`A = M W M^\top +
        \operatorname{diag}(\Lambda, \tau^2)^{-1}`, the residual :math:`r = y -
        G(\hat z)` and :math:`W` the inverse noise variance (flow scale included),
        both summed over the exposures, zero at missing and rejected pixels; the
        variance is :math:`\operatorname{diag}(M^\top A^{-1} M)` at the pixels
        without data in every exposure (gaps, masked and rejected pixels: there it is
        close to the prior's), zero elsewhere (where the data pin the coefficients
        down, the calibrated generator-error part covers it).
        """
        if "residual_basis" not in self.extra and "continuum_sigma" not in self.extra:
            return torch.zeros_like(signal), torch.zeros_like(signal)
        weight = data.inv_unit.square()  # (B, E, P)
        target = ((data.flux - signal[:, None]) * weight).sum(1)  # (B, P)
        weight = weight.sum(1)
        fit = torch.empty_like(signal)
        spread = torch.zeros_like(signal)
        basis, legendre, precision = self._term_parts(signal)
        for part in torch.arange(signal.shape[0], device=signal.device).split(_RESIDUAL_CHUNK):
            columns = _term_columns(basis, legendre, signal[part])  # (n, K, P)
            scaled = columns * weight[part, None]
            system = (scaled @ columns.transpose(-1, -2)).double() + precision
            # Cholesky, not linalg.solve: batched LU fails on K >= ~130 with some MKL builds
            factor = torch.linalg.cholesky(system)
            rhs = (columns @ target[part, :, None]).double()
            coef = torch.cholesky_solve(rhs, factor).to(signal.dtype)  # (n, K, 1)
            fit[part] = (coef.transpose(-1, -2) @ columns)[:, 0]
            # the variance where the star has no data, on those pixels only (cheap)
            empty = weight[part] == 0
            pixels = empty.any(0).nonzero()[:, 0]
            if pixels.numel():
                covariance = torch.cholesky_inverse(factor).to(signal.dtype)  # (n, K, K)
                sub = columns[..., pixels]
                value = ((covariance @ sub) * sub).sum(1)
                spread[part[:, None], pixels] = torch.where(empty[:, pixels], value, 0.0)
        return fit, spread

    def _term_parts(self, signal: torch.Tensor):
        """The linear terms' fixed parts, built once per batch: the residual basis (K, P)
        or None, the Legendre rows (D + 1, P) or None, and the prior precision matrix
        (float64) of all coefficients."""
        basis = legendre = None
        variances = []
        if "residual_basis" in self.extra:
            basis = torch.as_tensor(self.extra["residual_basis"], dtype=signal.dtype)
            basis = basis.to(signal.device)
            variances.append(torch.as_tensor(self.extra["residual_variance"], dtype=torch.float64))
        if "continuum_sigma" in self.extra:
            tau = torch.as_tensor(self.extra["continuum_sigma"], dtype=torch.float64)
            grid = np.linspace(-1.0, 1.0, signal.shape[-1])
            rows = np.polynomial.legendre.legvander(grid, tau.numel() - 1).T
            legendre = torch.as_tensor(rows, dtype=signal.dtype, device=signal.device)
            variances.append(tau.square())
        return basis, legendre, torch.diag(1 / torch.cat(variances)).to(signal.device)

    # ------------------------------------------------------------------ the likelihood

    def _likelihood(self, z, rows, data: _Data, derivatives: bool = False):
        r""":math:`\log p(y \mid G(z))` of star ``rows[i]`` at ``z[i]``, in chunks.

        With ``derivatives``, also its gradient (n, L) and the Hessian of its
        negative (n, L, L), else those are None. Write :math:`e = u - \mu(u)`
        and :math:`a = \alpha(u)` with :math:`u = (y - G(z)) / t`: each counted
        pixel adds :math:`e^2 e^{-2a} / 2 + a` to the negative log likelihood,
        and :math:`e`, :math:`a` are piecewise linear in :math:`z` (so are
        :math:`G` and the flow's network), with Jacobians
        :math:`J_e = (I - D_\mu) J_u` and :math:`J_a = D_\alpha J_u`, where
        :math:`J_u = -J_G / t` and :math:`D` are the flow's banded window
        derivatives (`~specutils_deepclean.models.noiseflow.NoiseFlow.window_derivatives`).
        With :math:`\xi = e\, e^{-a}`, the Hessian is
        :math:`J_e^\top e^{-2a} J_e + 2 J_a^\top \xi^2 J_a
        - 2 (J_e^\top \xi e^{-a} J_a + \text{transpose})` (diagonal weights per
        pixel), exact where the networks are differentiable.
        """
        chunk = _CHUNK if derivatives else _EVAL_CHUNK
        parts = [
            self._likelihood_chunk(z[part], rows[part], data, derivatives)
            for part in torch.arange(z.shape[0], device=z.device).split(chunk)
        ]
        if not derivatives:
            return torch.cat(parts) if parts else z.new_zeros(0)
        return tuple(torch.cat(items) for items in zip(*parts, strict=True))

    def _likelihood_chunk(self, z, rows, data: _Data, derivatives: bool):
        flow = self.flows[data.flow]
        context = flow.context
        n, n_exp, n_pix = z.shape[0], data.flux.shape[1], data.flux.shape[2]
        if derivatives:
            signal, jac = self.generator.generate_jacobian(z)
        else:
            signal = self.generator.generate(z)
        inv_unit = data.inv_unit[rows]  # (n, E, P), zero at missing pixels
        counted = data.counted[rows].reshape(n * n_exp, n_pix)
        u = ((data.flux[rows] - signal[:, None]) * inv_unit).reshape(n * n_exp, n_pix)
        if derivatives:
            params, window = flow.window_derivatives(u)
        else:
            params = torch.stack(flow._params(u), dim=1)
        scale = torch.exp(-params[:, 1])
        xi = (u - params[:, 0]) * scale
        terms = counted * (-0.5 * xi.square() - params[:, 1])
        lik = terms.sum(-1).reshape(n, n_exp).sum(-1) + data.constant[rows]
        if not derivatives:
            return lik
        # J_u (n E, L, P); J_e and J_a from the banded window derivatives
        ju = (jac.transpose(1, 2)[:, None] * -inv_unit[:, :, None]).reshape(n * n_exp, -1, n_pix)
        je, ja = ju.clone(), torch.zeros_like(ju)
        head, tail = je[..., context:], ja[..., context:]
        for k in range(context):
            shifted = ju[..., k : n_pix - context + k]
            head.addcmul_(window[:, None, 0, k, context:], shifted, value=-1.0)
            tail.addcmul_(window[:, None, 1, k, context:], shifted)
        grad = -(
            je @ (counted * xi * scale)[..., None] + ja @ (counted * (1 - xi.square()))[..., None]
        )
        weighted = je * (counted * scale)[:, None]
        spread = ja * (counted * xi)[:, None]
        cross = (je * (counted * xi * scale)[:, None]) @ ja.transpose(1, 2)
        hess = (
            weighted @ weighted.transpose(1, 2)
            + 2 * spread @ spread.transpose(1, 2)
            - 2 * (cross + cross.transpose(1, 2))
        )
        n_dim = z.shape[1]
        return (
            lik,
            grad.reshape(n, n_exp, n_dim).sum(1),
            hess.reshape(n, n_exp, n_dim, n_dim).sum(1),
        )

    # ------------------------------------------------------------------ inputs

    @property
    def _dtype(self) -> torch.dtype:
        return self.generator.mean.dtype

    def _prepare(self, flux, sigma, missing, exposures, clip=None) -> _Data:
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
        rejected = torch.zeros_like(gone)
        if clip is not None:
            rejected = self._outliers(flux, sigma, gone, clip)
            _check_usable(gone | rejected, self._min_context())
        gone = gone | rejected
        flux = torch.where(rejected, 0.0, flux)
        sigma, flow, estimated = self._choose_flow(flux, sigma, gone)
        return self._data(flux, sigma, gone, rejected, flow, estimated)

    def _outliers(self, flux, sigma, gone, clip: float) -> torch.Tensor:
        """Pixels (B, E, P) more than ``clip`` noise units above the encoder's guess."""
        n_pix = flux.shape[-1]
        guess = self.generator(flux.reshape(-1, n_pix), gone.reshape(-1, n_pix))[0]
        guess = guess.reshape(flux.shape)
        # without sigma, DER_SNR's level; an exposure without one (no noise, too few
        # pixels) gets NaN, so nothing in it is rejected
        if sigma is None:
            level = _der_snr_level(flux, gone)
            noise = torch.where(level > 0, level, torch.nan)[..., None]
        else:
            noise = sigma
        var = noise.square()
        if "generator_sigma" in self.extra:
            floor = torch.as_tensor(self.extra["generator_sigma"], dtype=var.dtype)
            var = var + floor.to(var.device).square()
        u = torch.where(gone, torch.nan, (flux - guess) / var.sqrt())
        centre = u.nanmedian(dim=-1, keepdim=True).values
        spread = 1.4826 * (u - centre).abs().nanmedian(dim=-1, keepdim=True).values
        excess = torch.nan_to_num(u - centre, nan=-math.inf)
        return excess > clip * torch.nan_to_num(spread, nan=1.0).clamp_min(1.0)

    def _choose_flow(self, flux, sigma, gone) -> tuple:
        """The sigma the likelihood uses (None for the plain flow), the flow, and
        whether sigma was estimated."""
        if sigma is not None:
            if "whitened" in self.flows:
                return sigma, "whitened", False
            warnings.warn(
                "this Denoiser has no whitened NoiseFlow: sigma is ignored and the plain "
                "flow is used",
                AstropyUserWarning,
                stacklevel=4,
            )
            return None, "plain", False
        if "plain" in self.flows:
            return None, "plain", False
        level = _der_snr_noise(flux, gone)
        return level[..., None].expand_as(flux).contiguous(), "whitened", True

    def _data(self, flux, sigma, gone, rejected, flow: str, estimated: bool) -> _Data:
        scale = self.flows[flow].scale.to(flux.dtype)
        unit = scale.expand_as(flux) if sigma is None else scale * sigma
        unit = torch.where(gone, 1.0, unit)
        counted = counted_pixels(gone, self.flows[flow].context).to(flux.dtype)
        constant = -(counted * (torch.log(unit) + _HALF_LOG_2PI)).sum((-1, -2))
        return _Data(
            flux,
            gone,
            rejected,
            torch.where(gone, 0.0, 1 / unit),
            counted,
            constant,
            flow,
            estimated,
        )

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


def _term_columns(basis, legendre, signal: torch.Tensor) -> torch.Tensor:
    """Columns (n, K, P) of the linear terms for stars with MAP signal ``signal`` (n, P)."""
    columns = [] if basis is None else [basis.expand(signal.shape[0], -1, -1)]
    if legendre is not None:
        columns.append(signal[:, None] * legendre)
    return torch.cat(columns, 1)


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


def _der_snr_level(flux: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """DER_SNR noise level of each exposure (B, E); NaN where no pixel triple is valid."""
    diff = 2 * flux[..., 2:-2] - flux[..., :-4] - flux[..., 4:]
    bad = gone[..., 2:-2] | gone[..., :-4] | gone[..., 4:]
    return _DER_SNR * torch.where(bad, torch.nan, diff.abs()).nanmedian(dim=-1).values


def _der_snr_noise(flux: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """DER_SNR noise level of each exposure (B, E); exposures without any are 1."""
    level = _der_snr_level(flux, gone)
    all_gone = gone.all(-1)
    if bool((~all_gone & ~(level > 0)).any()):
        raise ValueError(
            "cannot estimate the noise of a spectrum without sigma (too few valid pixels "
            "or zero noise): pass sigma"
        )
    return torch.where(all_gone | ~(level > 0), 1.0, level)


def _eig_floor(values: torch.Tensor) -> torch.Tensor:
    """Smallest eigenvalue kept for each Hessian: 1e-6 of its largest magnitude (or tiny)."""
    top = values.abs().amax(-1, keepdim=True)
    return torch.clamp_min(top * 1e-6, torch.finfo(values.dtype).tiny ** 0.5)


def _floored(hess: torch.Tensor, power: int = 1) -> torch.Tensor:
    """``hess`` (..., L, L) with its eigenvalues raised to `_eig_floor`, to ``power``.

    Positive definite (``power=1``), or its inverse (``power=-1``) built from
    the eigendecomposition, which never fails on a near-singular matrix.
    """
    values, vectors = torch.linalg.eigh(hess)
    values = values.clamp_min(_eig_floor(values)) ** power
    return vectors @ torch.diag_embed(values) @ vectors.transpose(-1, -2)


def _check_uncertainty_extra(extra: dict, n_pix: int) -> None:
    """``generator_sigma`` (P,) finite >= 0 and ``sigma_scales`` (2,) finite > 0, if present;
    ``residual_basis`` (K, P) finite with ``residual_variance`` (K,) finite > 0;
    ``continuum_sigma`` (D + 1,) finite > 0."""
    if ("residual_basis" in extra) != ("residual_variance" in extra):
        raise ValueError("extra needs both 'residual_basis' and 'residual_variance', or neither")
    if "residual_basis" in extra:
        basis = np.asarray(extra["residual_basis"], dtype=np.float64)
        variance = np.asarray(extra["residual_variance"], dtype=np.float64)
        if (
            basis.ndim != 2
            or basis.shape[1] != n_pix
            or variance.shape != basis.shape[:1]
            or not np.all(np.isfinite(basis))
            or not np.all(np.isfinite(variance) & (variance > 0))
        ):
            raise ValueError(
                f"extra['residual_basis'] must be (K, {n_pix}) finite and "
                f"extra['residual_variance'] (K,) positive finite, got shapes {basis.shape} "
                f"and {variance.shape}"
            )
    if "continuum_sigma" in extra:
        tau = np.asarray(extra["continuum_sigma"], dtype=np.float64)
        if tau.ndim != 1 or not 1 <= tau.size <= _MAX_CONTINUUM_TERMS or not np.all(
            np.isfinite(tau) & (tau > 0)
        ):
            raise ValueError(
                "extra['continuum_sigma'] must hold 1 to "
                f"{_MAX_CONTINUUM_TERMS} positive finite numbers (one per Legendre "
                f"order), got shape {tau.shape}"
            )
    if "generator_sigma" in extra:
        floor = np.asarray(extra["generator_sigma"], dtype=np.float64)
        if floor.shape != (n_pix,) or not np.all(np.isfinite(floor) & (floor >= 0)):
            raise ValueError(
                f"extra['generator_sigma'] must hold {n_pix} finite values >= 0, "
                f"got shape {floor.shape}"
            )
    if "sigma_scales" in extra:
        scales = np.asarray(extra["sigma_scales"], dtype=np.float64)
        if scales.shape != (2,) or not np.all(np.isfinite(scales) & (scales > 0)):
            raise ValueError(
                "extra['sigma_scales'] must hold two positive finite numbers (latent, "
                f"generator), got {scales.tolist()}"
            )


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
