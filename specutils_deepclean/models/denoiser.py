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

import dataclasses
import math
from dataclasses import dataclass
from numbers import Real

import astropy.units as u
import numpy as np
import torch
from torch import nn

from ..exposures import pool_velocities
from ..provenance import Provenance
from . import ood
from .base import DeepCleanModel
from .fill_sigma import check_fill_sigma
from .generator import IsometricAutoencoder
from .laplace import MAPResult, summarise
from .layers import missing_mask
from .level import gap_starts
from .linear_terms import (
    check_term_arrays,
    has_terms,
    model_term_parts,
    terms_posterior,
    terms_solve,
)
from .model_error import check_model_error
from .noiseflow import NoiseFlow
from .observations import (
    Observations,
    arrange,
    check_usable,
    choose_flow,
    der_snr_level,
    generator_floor,
    observations,
    observed_model,
    outliers,
    rest_coadd,
)
from .prior import KDEPrior
from .surrogate import floored, surrogate_optimum
from .velocity import (
    _VELOCITY_MARGIN,
    C_KMS,
    DopplerShift,
    check_velocity_error,
    fixed_velocities,
    refine_velocity,
    search_velocity,
    shared_floor,
    template_bank,
    to_rest,
    velocity_error,
)

__all__ = ["Denoiser", "MAPResult"]

ARCHITECTURE = "deep-bayesian"
#: Kinds of NoiseFlow a Denoiser may hold, and whether each is whitened.
FLOW_KINDS = {"whitened": True, "plain": False}
#: Latent points per chunk of likelihood derivatives, and of plain evaluations:
#: the fastest of 8/16, 16/32, 32/64 and 64/128 for batches of 256 on a 2-core CPU
#: (larger chunks leave the cache, smaller ones pay per-call overhead).
_CHUNK = 16
_EVAL_CHUNK = 32
#: Screening rounds, each around the star's best point so far; after the first, classes
#: this many nats below the star's best are not screened again (nor from extra starts).
_SCREEN_ROUNDS, _SCREEN_HOPELESS = 2, 30.0
#: A full Newton step predicted (the decrement) to rise by less than this many nats that
#: rose within this share of it ends its class (the next decrement is not computed).
_SETTLE_DECREMENT, _SETTLE_AGREE = 1.0, 0.2
#: Halvings of a Newton step that does not raise the log joint before it is damped.
_HALVINGS = 3
#: Damping of a failed Newton step (its Hessian's eigenvalues floored at this times the
#: largest), multiplied by `_DAMPING_GROWTH` after each further failure; beyond
#: `_DAMPING_MAX` the class stops.
_DAMPING_START, _DAMPING_GROWTH, _DAMPING_MAX = 1e-4, 100.0, 1.0
#: Velocity search: grid step (km/s) and templates per class (KDE modes).
_VELOCITY_STEP = 40.0
_VELOCITY_TEMPLATES = 4


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
    damping: torch.Tensor


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
        ood.check_extra(self.extra)

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

    def _objective_of(self, z, todo, data: Observations) -> torch.Tensor:
        """`_objective` of the star-major (star, class) pairs ``todo`` at ``z[todo]`` (z
        (B K, L)), -inf for the others."""
        out = z.new_full(z.shape[:1], -math.inf)
        rows, classes = todo // self.n_classes, todo % self.n_classes
        out[todo] = self._objective(z[todo], rows, classes, data)
        return out

    def _objective(self, z, rows, classes, data: Observations) -> torch.Tensor:
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
        velocity=0.0,
        velocity_range: float = 2000.0,
    ) -> MAPResult:
        r"""MAP estimate of :math:`(z, C)` (Eq. 7) for a batch of stars, with Laplace posteriors.

        For every star and every class, the log joint

        .. math::

            \sum_j \log p(y_j \mid G(z)) + \log p(z \mid C) + \log p(C)

        is maximised over :math:`z` (the sum runs over the star's exposures, each
        with its masked NoiseFlow likelihood, Eq. 15; :math:`p(C)` is uniform), in
        four steps: outlier rejection (``clip``), screening of every class from the
        encoder's guess, KDE modes and prior draws (``n_starts``,
        ``random_starts``; classes more than ``class_margin`` below the best stop
        there), Newton ascent of the others with exact Hessians (``steps``,
        ``tol``), and a Laplace approximation at each class's optimum for the class
        posterior and the flux uncertainty.  The documentation page *The denoiser's
        inference* gives each step, the flow choice, the uncertainty and the linear
        terms in full, with the paper's equation each function computes.

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
        velocity : float, array_like or None, optional
            Radial velocity of the stars, km/s (positive: redshift): a number, one
            per star (B,) or one per exposure (B, E); the model is Doppler-shifted to
            it on the model grid and compared with the data there (the output is in
            that frame).  0 (the default) treats the spectra as at rest; None fits
            each exposure's velocity with :math:`(z, C)`: a batched search within
            ``velocity_range`` against the model's spectra, then, after the
            screening, refinement with the best screened spectrum before the Newton
            steps (the documentation page *The denoiser's inference*, section Radial
            velocity).
        velocity_range : float, optional
            With ``velocity=None``: the search runs over plus or minus this, km/s
            (0 < range < 0.1 c); a spectrum whose velocity ends beyond it is
            flagged (``ood_flag``).

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
        if velocity is None and not (
            isinstance(velocity_range, Real)
            and not isinstance(velocity_range, bool)
            and 0 < velocity_range < 0.1 * C_KMS
        ):
            raise ValueError(
                f"velocity_range must be a positive number of km/s below 0.1 c, got "
                f"{velocity_range!r}"
            )
        with torch.no_grad():
            data = self._prepare(flux, sigma, missing, exposures, clip, velocity, velocity_range)
            coadd = rest_coadd(data)
            z_enc = self._encoder_guess(*coadd)
            extra = self._extra_starts(data.flux.shape[0], n_starts, random_starts, generator)
            state = self._screen(data, z_enc, extra, class_margin, coadd)
            if velocity is None:  # refined from the screened spectrum: one Newton ascent
                data = self._refine_velocity(data, state)
            self._newton(data, state, steps, tol)
            searched = velocity_range if velocity is None else None
            return summarise(self, data, state, searched, _CHUNK)

    # ------------------------------------------------------------------ radial velocity

    def _refine_velocity(self, data: Observations, state: _State) -> Observations:
        """Refine each exposure's velocity with the spectrum of the star's best screened
        point fixed (`~specutils_deepclean.models.velocity.refine_velocity`), before the
        Newton ascent: refined after it, the velocities moved by a median 0.02 km/s
        or less on MILES ``val`` at S/N 2-50, at the cost of a second ascent
        (``benchmarks/results/denoise_quality_val.json``)."""
        n_star, k = data.flux.shape[0], self.n_classes
        best = state.obj.reshape(n_star, k).argmax(-1)
        stars = torch.arange(n_star, device=best.device)
        signal = self.generator.generate(state.z.reshape(n_star, k, -1)[stars, best])
        wave = self.wavelength.to_value(u.AA)
        velocity = refine_velocity(
            lambda observed, rows: self._exposure_likelihood(observed, rows, data),
            wave,
            signal,
            data.shift.velocity,
        )
        shift = DopplerShift(wave, velocity, device=data.flux.device, dtype=data.flux.dtype)
        unpooled = None
        if velocity.shape[1] > 1:  # exposures that agree within their errors share one
            floor = generator_floor(self.extra, data)
            error = velocity_error(
                shift, signal, data.counted, data.inv_unit, floor,
                calibration=self.extra.get("velocity_error"),
            )
            unpooled = velocity
            velocity, _ = pool_velocities(velocity, error, shared_floor(self.extra))
            shift = DopplerShift(wave, velocity, device=data.flux.device, dtype=data.flux.dtype)
        return dataclasses.replace(data, shift=shift, unpooled=unpooled)

    # ------------------------------------------------------------------ steps of the MAP

    def _encoder_guess(self, flux: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
        """:math:`E(y)` of each star (B, L): the code of the data at rest, of several
        exposures their co-add (`~specutils_deepclean.models.observations.rest_coadd`)."""
        n_pix = flux.shape[-1]
        return self.generator.encode(flux.reshape(-1, n_pix), gone.reshape(-1, n_pix))

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

    def _screen(self, data: Observations, z_enc, extra, margin, coadd) -> _State:
        """Step 1 of `map_estimate`: a start per (star, class) and the classes that go on."""
        n_star, k, n_dim = z_enc.shape[0], self.n_classes, self.latent_dim
        stars = torch.arange(n_star, device=z_enc.device)
        rows = stars.repeat_interleave(k)
        classes = torch.arange(k, device=z_enc.device).repeat(n_star)
        precision = self.prior.precisions[classes]
        # z_E and the EM optimum around the star's best point, the extra starts of the
        # classes within reach after the first round
        cand = z_enc.new_zeros((n_star * k, 0, n_dim))
        obj = z_enc.new_zeros((n_star * k, 0))
        column, wide = gap_starts(self, *coadd)  # wide gaps: each class's best template too
        if wide.any():
            value = torch.full_like(column[:, 0], -math.inf)
            value[wide] = self._objective(column[wide], rows[wide], classes[wide], data)
            cand, obj = column[:, None], value[:, None]
        centre, todo = z_enc, torch.arange(n_star * k, device=z_enc.device)
        for round_ in range(_SCREEN_ROUNDS):
            lik, grad, hess = self._likelihood(centre, stars, data, derivatives=True)
            prior = self.prior.log_prob(centre[rows], c=classes)
            surrogate = centre[rows]
            surrogate[todo] = surrogate_optimum(
                self.prior, centre, grad, hess, precision[todo], rows[todo], classes[todo]
            )
            cand = torch.cat([cand, centre[rows, None], surrogate[:, None]], dim=1)
            values = [lik[rows] + prior - math.log(k), self._objective_of(surrogate, todo, data)]
            obj = torch.cat([obj, torch.stack(values, 1)], dim=1)
            todo = _within_reach(obj, k)
            if round_ == 0 and extra.shape[2]:
                n_extra = extra.shape[2]
                more = extra.reshape(n_star * k, n_extra, n_dim)
                values = [self._objective_of(more[:, i], todo, data) for i in range(n_extra)]
                cand, obj = torch.cat([cand, more], 1), torch.cat([obj, torch.stack(values, 1)], 1)
                todo = _within_reach(obj, k)
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
            damping=torch.zeros(n_star * k, dtype=torch.float64, device=z.device),
        )

    def _newton(self, data: Observations, state: _State, steps: int, tol: float) -> None:
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
            step_matrix = floored(hess.double(), power=-1, damping=state.damping[index])
            delta = (step_matrix @ grad.double()[..., None])[..., 0].to(self._dtype)
            decrement = 0.5 * (grad * delta).sum(-1)
            done = decrement < tol
            if step == steps:
                state.converged[index] = done
                return
            # halve the step until the log joint rises by tol; a smaller rise is not taken
            gain = full = torch.zeros_like(obj)
            for halving in range(_HALVINGS + 1):
                trial = (~done & ~(gain > 0)).nonzero()[:, 0]
                if trial.numel() == 0:
                    break
                proposal = z[trial] + delta[trial]
                value = self._objective(proposal, rows[trial], classes[trial], data)
                rise = torch.where(torch.isfinite(value), value - obj[trial], -math.inf)
                z[trial] = torch.where(rise[:, None] >= tol, proposal, z[trial])
                gain[trial] = rise
                delta[trial] = 0.5 * delta[trial]
                full = gain.clone() if halving == 0 else full  # the full step's rise
            moved = gain >= tol
            settled = (
                (full >= tol)
                & (decrement < _SETTLE_DECREMENT)
                & ((full - decrement).abs() <= _SETTLE_AGREE * decrement)
            )
            state.z[index] = z
            state.obj[index] = torch.where(settled, obj + gain, obj)
            state.steps[index] += moved.to(torch.int64)
            state.converged[index] = done | settled | ((gain > -tol) & ~moved)
            # a step that lowered the log joint however halved (a direction of near-zero
            # or negative curvature, where the floored Newton step is far too long) is
            # tried again damped, towards the gradient; a successful step relaxes it
            damping = state.damping[index]
            failed = ~done & ~moved & (gain <= -tol)
            damping = torch.where(
                failed, (damping * _DAMPING_GROWTH).clamp_min(_DAMPING_START), damping / _DAMPING_GROWTH
            )
            state.damping[index] = damping
            state.active[index] = (moved & ~settled) | (failed & (damping <= _DAMPING_MAX))

    def _linear_terms(self, data: Observations, signal: torch.Tensor):
        """The linear terms' posterior mean given ``signal`` (B, P) and their variance
        (`~specutils_deepclean.models.linear_terms.terms_posterior`), both at rest;
        zeros without terms.  With a Doppler shift the residual and its weights are
        interpolated back to rest first."""
        if not has_terms(self.extra):
            return torch.zeros_like(signal), torch.zeros_like(signal)
        parts = model_term_parts(self, signal.shape[-1], signal.dtype, signal.device)
        if data.shift is None:
            return terms_posterior(parts, data.flux, data.inv_unit, signal)
        stars = torch.arange(signal.shape[0], device=signal.device)
        weight = data.inv_unit.square()
        residual = data.flux - observed_model(signal, stars, data)
        residual, lost = to_rest(data.shift, residual, data.gone | (weight == 0))
        weight = torch.where(lost, 0.0, data.shift.inverse().apply_each(weight).clamp_min(0))
        return terms_solve(parts, (residual * weight).sum(1), weight.sum(1), signal)

    # ------------------------------------------------------------------ the likelihood

    def _likelihood(self, z, rows, data: Observations, derivatives: bool = False):
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

    def _likelihood_chunk(self, z, rows, data: Observations, derivatives: bool):
        flow = self.flows[data.flow]
        n, n_exp, n_pix = z.shape[0], data.flux.shape[1], data.flux.shape[2]
        if derivatives:
            signal, jac = self.generator.generate_jacobian(z)
        else:
            signal = self.generator.generate(z)
        observed = observed_model(signal, rows, data)  # (n, E or 1, P)
        if not derivatives:
            return self._exposure_likelihood(observed, rows, data).sum(-1) + data.constant[rows]
        inv_unit = data.inv_unit[rows]  # (n, E, P), zero at missing pixels
        counted = data.counted[rows].reshape(n * n_exp, n_pix)
        u = ((data.flux[rows] - observed) * inv_unit).reshape(n * n_exp, n_pix)
        # J_u = -J_G / t, (n E, L, P), with G shifted as the exposures see it
        if data.shift is None:
            jac_t = jac.transpose(1, 2)[:, None]
        else:
            jac_t = data.shift.apply(jac.transpose(1, 2), rows)  # (n, E, L, P)
        ju = (jac_t * -inv_unit[:, :, None]).reshape(n * n_exp, -1, n_pix)
        lik, grad, hess = flow.log_likelihood(u, counted, jacobian=ju)
        n_dim = z.shape[1]
        return (
            lik.reshape(n, n_exp).sum(-1) + data.constant[rows],
            grad.reshape(n, n_exp, n_dim).sum(1),
            hess.reshape(n, n_exp, n_dim, n_dim).sum(1),
        )

    def _exposure_likelihood(self, observed, rows, data: Observations) -> torch.Tensor:
        """Each exposure's flow log likelihood (n, E) of the model ``observed`` (n, E or 1,
        P) of stars ``rows``, without ``data.constant``."""
        n_exp, n_pix = data.flux.shape[1], data.flux.shape[2]
        out = []
        for part in torch.arange(rows.shape[0], device=rows.device).split(_EVAL_CHUNK):
            n, chunk = part.numel(), rows[part]  # chunks: the flow's temporaries stay small
            counted = data.counted[chunk].reshape(n * n_exp, n_pix)
            u = (data.flux[chunk] - observed[part]) * data.inv_unit[chunk]
            lik = self.flows[data.flow].log_likelihood(u.reshape(n * n_exp, n_pix), counted)
            out.append(lik.reshape(n, n_exp))
        return torch.cat(out) if out else observed.new_zeros((0, n_exp))

    # ------------------------------------------------------------------ inputs

    @property
    def _dtype(self) -> torch.dtype:
        return self.generator.mean.dtype

    def _prepare(
        self, flux, sigma, missing, exposures, clip=None, velocity=0.0, velocity_range=None
    ) -> Observations:
        """Check the inputs and arrange them as (B, E, P) tensors on the model's device.

        ``velocity`` None: search each exposure's velocity within ``velocity_range``
        (`~specutils_deepclean.models.velocity.search_velocity`); else the fixed
        velocities (a scalar, (B,) or (B, E), km/s).  The data's pixels the shifted
        model cannot reach (beyond the grid, with the refinement's margin when
        searching) are missing."""
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
        arrays = arrange(arrays, exposures)
        flux, gone = arrays[0], arrays[1]
        sigma = arrays[2] if sigma is not None else None
        check_usable(gone, self._min_context())
        flux = torch.where(gone, 0.0, flux)
        if sigma is not None:
            sigma = torch.where(gone, 1.0, sigma)
        shift = self._velocity_shift(flux, sigma, gone, velocity, velocity_range)
        unreached = None
        if shift is not None:
            unreached = ~shift.valid & ~gone
            gone = gone | ~shift.valid
            check_usable(gone, self._min_context())
            flux = torch.where(gone, 0.0, flux)
        rejected = torch.zeros_like(gone)
        if clip is not None:
            generator_sigma = self.extra.get("generator_sigma")
            rejected = outliers(flux, sigma, gone, clip, self.generator, generator_sigma, shift)
            check_usable(gone | rejected, self._min_context())
        gone = gone | rejected
        flux = torch.where(rejected, 0.0, flux)
        sigma, flow, estimated = choose_flow(self.flows, flux, sigma, gone)
        data = observations(flux, sigma, gone, rejected, self.flows, flow, estimated)
        return dataclasses.replace(data, shift=shift, unreached=unreached)

    def _velocity_shift(self, flux, sigma, gone, velocity, velocity_range):
        """The `DopplerShift` of the model for these (B, E, P) data, or None at rest."""
        n_star, n_exp, n_pix = flux.shape
        wave = self.wavelength.to_value(u.AA)
        if velocity is not None:
            v = fixed_velocities(velocity, n_star, n_exp)
            if not np.any(v):
                return None
            return DopplerShift(wave, v, device=flux.device, dtype=flux.dtype)
        if sigma is None:  # the search needs relative weights only: DER_SNR's, or 1
            level = der_snr_level(flux, gone)
            noise = torch.where(level > 0, level, 1.0)[..., None].expand_as(flux)
        else:
            noise = sigma
        weight = torch.where(gone, 0.0, 1 / noise.square())
        bank = self._velocity_bank(float(velocity_range))
        found = search_velocity(flux.reshape(-1, n_pix), weight.reshape(-1, n_pix), bank)
        return DopplerShift(
            wave,
            found.reshape(n_star, n_exp),
            margin=_VELOCITY_MARGIN,
            device=flux.device,
            dtype=flux.dtype,
        )

    def _velocity_bank(self, velocity_range: float):
        """`~specutils_deepclean.models.velocity.template_bank` of this model, cached."""
        key = (velocity_range, str(self.device), self._dtype)
        cache = self.__dict__.setdefault("_bank_cache", {})
        if key not in cache:
            starts = self.prior.starts(_VELOCITY_TEMPLATES).to(self._dtype).to(self.device)
            templates = self.generator.generate(starts.reshape(-1, self.latent_dim))
            wave = self.wavelength.to_value(u.AA)
            cache.clear()
            cache[key] = template_bank(templates, wave, velocity_range, _VELOCITY_STEP)
        return cache[key]

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


def _within_reach(obj: torch.Tensor, k: int) -> torch.Tensor:
    """The star-major (star, class) pairs whose best log joint so far (``obj`` (B K, M))
    is within `_SCREEN_HOPELESS` of their star's best."""
    reach = obj.nan_to_num(-math.inf).max(-1).values.reshape(-1, k)
    return (reach >= reach.amax(-1, keepdim=True) - _SCREEN_HOPELESS).reshape(-1).nonzero()[:, 0]


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


def _check_uncertainty_extra(extra: dict, n_pix: int) -> None:
    """``generator_sigma`` (P,) finite >= 0 and ``sigma_scales`` (2,) finite > 0, if present,
    the linear terms' arrays (`~specutils_deepclean.models.linear_terms.check_term_arrays`)
    ``model_error_terms`` (`~specutils_deepclean.models.model_error.check_model_error`),
    ``fill_sigma_scale``, ``obs_sigma_scale`` (`~specutils_deepclean.models.fill_sigma`) and
    ``velocity_error`` (`~specutils_deepclean.models.velocity.check_velocity_error`)."""
    check_term_arrays(extra, n_pix)
    check_fill_sigma(extra, n_pix)
    check_model_error(extra)
    check_velocity_error(extra)
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


def _check_settings(integers: dict, numbers: dict) -> None:
    """Integers (name -> (value, lowest allowed)) and positive finite numbers."""
    for name, (value, low) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
