r"""The Stellar Karaoke telluric model: a 1-D convolutional VAE and velocity whitening.

After Sedaghat et al. (2023), *Stellar Karaoke: deep blind separation of terrestrial
atmospheric effects out of stellar spectra by velocity whitening*, MNRAS 526
(doi:10.1093/mnras/stad2686, arXiv:2301.00313); method in their Sections 2-3,
training choices in Sections 3.2 and 5.

Velocity whitening (their Section 3.1) gives every training spectrum a random
virtual radial velocity, so the telluric lines, which sit at fixed topocentric
wavelengths, stop being correlated from spectrum to spectrum; a compressed VAE
then learns the stellar component and rejects the tellurics as it rejects noise.
`telluric_layer` is our addition for spectra whose resolution element is wider than
the whitening: during training the atmosphere is put back on the reconstruction by
a reference transmission with a fitted power, so the network need not draw it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from ..spectra import shift_flux
from .base import DeepCleanModel
from .layers import LEAKY_SLOPE, down_block, fill_missing, same_conv, up_block

__all__ = [
    "KaraokeVAE",
    "velocity_whiten",
    "karaoke_loss",
    "telluric_layer",
    "ARCHITECTURE",
    "HISTORY_PREFIX",
]

#: ``config["architecture"]`` of a `KaraokeVAE`.
ARCHITECTURE = "karaoke-vae"

#: Prefix of the ``extra`` arrays that hold the training history.
HISTORY_PREFIX = "history_"

_DEFAULTS = {
    "latent_dim": 128,
    "base_channels": 16,
    "max_channels": 512,
    "double_every": 3,
    "kernel_sizes": [7, 5, 5, 3],
    "bottleneck_length": 32,
    "head_channels": 4,
    "variational": True,
    "mask_channel": True,
}


class KaraokeVAE(DeepCleanModel):
    r"""The 1-D convolutional (variational) autoencoder of Stellar Karaoke.

    Encoder: ``depth`` strided convolutions (stride 2, leaky ReLU 0.1), each
    halving the length, then one stride-1 convolution; fully connected layers
    map the flattened features to the mean :math:`\mu` and log-variance
    :math:`\log\sigma^2` of the latent code (``latent_dim``, 128 by default, as
    in the paper). Decoder: a fully connected layer back to the bottleneck
    features, a stride-1 convolution, ``depth`` transposed convolutions (kernel
    4, stride 2) each doubling the length, and a linear convolution to one
    channel. The layout follows the paper's Fig. 2 and Section 3.2 (the authors'
    HARPS network: 14 stride-2 layers, 16 to 512 channels, kernels 7, 5, 5 then
    3, 327,680 pixels down to 20). Differences: channels here double every third
    layer (the authors' last two layers have 256 and 512, here 256 and 256), the
    depth follows the input length, the last transposed convolution has
    ``head_channels`` outputs (the authors': 1) and a mask channel is optional.

    The depth is derived from the input length: the smallest ``depth >= 1`` for
    which ``ceil(n_pix / 2**depth) <= bottleneck_length``. The input is padded
    (edge values, flagged missing) to ``2**depth`` times that length and the output
    cropped back, so the same code builds a network for a 4,300-pixel MILES
    spectrum (depth 8) and a 327,680-pixel HARPS one (depth 14, bottleneck 20).
    Channels of strided layer ``i`` are
    ``min(base_channels * 2**(i // double_every), max_channels)``.

    Missing pixels enter the encoder filled by linear interpolation between the
    nearest valid neighbours (the nearest valid value beyond the ends), never as
    zeros, and, with ``mask_channel=True``, a second input channel is 1 at
    missing pixels so the network knows the filled values are not data. The loss
    ignores them (`karaoke_loss`).

    Parameters
    ----------
    config : dict
        ``"architecture": "karaoke-vae"``, ``"n_pix"`` (the length of
        ``wavelength``) and optionally ``latent_dim``, ``base_channels``,
        ``max_channels``, ``double_every``, ``kernel_sizes`` (odd kernel of strided
        layer ``i`` is ``kernel_sizes[min(i, len - 1)]``), ``bottleneck_length``,
        ``head_channels`` (channels of the last transposed convolution),
        ``variational`` (False gives the deterministic autoencoder of the paper's
        Section 5.4) and ``mask_channel``. Use `from_grid` to fill in defaults.
    **kwargs
        ``wavelength``, ``medium``, ... as in
        `~specutils_deepclean.models.base.DeepCleanModel`.

    References
    ----------
    Sedaghat, N., Smart, B. M., Kalmbach, J. B., Howard, E. L., Amindavar, H. 2023,
    MNRAS 526, "Stellar Karaoke: deep blind separation of terrestrial atmospheric
    effects out of stellar spectra by velocity whitening", doi:10.1093/mnras/stad2686,
    arXiv:2301.00313.

    Examples
    --------
    >>> import numpy as np, astropy.units as u, torch
    >>> from specutils_deepclean.models.karaoke import KaraokeVAE
    >>> wave = np.linspace(5000, 5100, 100) * u.AA
    >>> model = KaraokeVAE.from_grid(wave, medium="air", latent_dim=8, bottleneck_length=8)
    >>> model.depth, model.padded_length
    (4, 112)
    >>> recon, mu, logvar = model(torch.ones(3, 100))
    >>> recon.shape, mu.shape
    (torch.Size([3, 100]), torch.Size([3, 8]))
    >>> model.reconstruct(np.ones(100)).shape
    (100,)
    """

    @classmethod
    def from_grid(cls, wavelength, *, medium: str, seed: int = 0, **options) -> KaraokeVAE:
        """Build an untrained model for a wavelength grid.

        Parameters
        ----------
        wavelength : `~astropy.units.Quantity`
            The model grid (1-D, strictly increasing).
        medium : {"air", "vacuum"}
            Medium of ``wavelength``.
        seed : int, optional
            Seed of the weight initialisation (`reset_parameters`).
        **options
            Configuration entries overriding the defaults (``latent_dim=128``,
            ``base_channels=16``, ``max_channels=512``, ``double_every=3``,
            ``kernel_sizes=[7, 5, 5, 3]``, ``bottleneck_length=32``,
            ``head_channels=4``, ``variational=True``, ``mask_channel=True``);
            ``provenance`` and ``name`` go to the base class.

        Returns
        -------
        KaraokeVAE
        """
        base_kwargs = {key: options.pop(key) for key in ("provenance", "name") if key in options}
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown KaraokeVAE option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_DEFAULTS))}"
            )
        config = {"architecture": ARCHITECTURE, "n_pix": len(wavelength), **_DEFAULTS, **options}
        model = cls(config, wavelength=wavelength, medium=medium, **base_kwargs)
        model.reset_parameters(seed)
        return model

    # -- construction -------------------------------------------------------------

    def _build(self, config: dict) -> None:
        _check_karaoke_config(config, self.n_pix)
        self.depth = _depth(config["n_pix"], config["bottleneck_length"])
        self.bottleneck_size = -(-config["n_pix"] // 2**self.depth)
        self.padded_length = self.bottleneck_size * 2**self.depth
        channels = [
            min(
                config["base_channels"] * 2 ** (i // config["double_every"]), config["max_channels"]
            )
            for i in range(self.depth)
        ]
        kernels = config["kernel_sizes"]
        # Default torch initialisation draws from the global generator: keep the
        # caller's global state untouched; `reset_parameters` sets the real weights.
        with torch.random.fork_rng(devices=[]):
            encoder = []
            in_channels = 2 if config["mask_channel"] else 1
            for i, out_channels in enumerate(channels):
                encoder.append(
                    down_block(in_channels, out_channels, kernels[min(i, len(kernels) - 1)])
                )
                in_channels = out_channels
            encoder.append(same_conv(in_channels, in_channels))
            self.encoder = nn.Sequential(*encoder)
            flat = channels[-1] * self.bottleneck_size
            latent = config["latent_dim"]
            self.to_mu = nn.Linear(flat, latent)
            self.to_logvar = nn.Linear(flat, latent) if config["variational"] else None
            self.from_latent = nn.Linear(latent, flat)
            decoder = [same_conv(channels[-1], channels[-1])]
            outs = channels[-2::-1] + [config["head_channels"]]
            for in_channels, out_channels in zip(channels[::-1], outs, strict=True):
                decoder.append(up_block(in_channels, out_channels))
            decoder.append(same_conv(config["head_channels"], 1, activation=False))
            self.decoder = nn.Sequential(*decoder)

    def reset_parameters(self, seed: int = 0) -> None:
        """Re-initialise every weight from an explicit generator seeded with ``seed``.

        Convolutions followed by a leaky ReLU get He (Kaiming) uniform weights for
        slope 0.1, the linear layers and the output convolution unit gain; all
        biases start at zero except the output's, which starts at 1, the level of a
        median-normalised spectrum. The global torch random state is not used.

        Parameters
        ----------
        seed : int, optional
            Seed of the `torch.Generator` drawing the weights.
        """
        generator = torch.Generator().manual_seed(int(seed))
        output_layer = self.decoder[-1]
        with torch.no_grad():
            for module in self.modules():
                if not isinstance(module, nn.Conv1d | nn.ConvTranspose1d | nn.Linear):
                    continue
                linear = isinstance(module, nn.Linear) or module is output_layer
                gain = 1.0 if linear else math.sqrt(2.0 / (1.0 + LEAKY_SLOPE**2))
                bound = gain * math.sqrt(3.0 / _fan_in(module))
                weight = torch.empty(module.weight.shape).uniform_(
                    -bound, bound, generator=generator
                )
                module.weight.copy_(weight)
                module.bias.fill_(1.0 if module is output_layer else 0.0)

    # -- properties ---------------------------------------------------------------

    @property
    def variational(self) -> bool:
        """True for the VAE, False for the deterministic autoencoder."""
        return bool(self.config["variational"])

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent code."""
        return int(self.config["latent_dim"])

    @property
    def history(self) -> dict:
        """Per-epoch training losses, name -> list (empty for an untrained model).

        Filled by `~specutils_deepclean.training.train_karaoke` (``train_loss``,
        ``train_l1``, ``train_kl``, ``val_loss``, ``val_l1``, ``val_kl``; NaN where
        there was no validation set) and kept in the model file.
        """
        return {
            key[len(HISTORY_PREFIX) :]: np.asarray(value, dtype=float).tolist()
            for key, value in self.extra.items()
            if key.startswith(HISTORY_PREFIX)
        }

    # -- network --------------------------------------------------------------------

    def encode(self, flux: torch.Tensor, missing: torch.Tensor | None = None):
        """Latent mean and log-variance of a batch of median-normalised spectra.

        Parameters
        ----------
        flux : torch.Tensor, shape (batch, n_pix)
            Median-normalised spectra on the model grid; non-finite values are
            missing.
        missing : torch.Tensor of bool, shape (batch, n_pix), optional
            True at missing pixels.

        Returns
        -------
        mu : torch.Tensor, shape (batch, latent_dim)
        logvar : torch.Tensor, shape (batch, latent_dim), or None
            None for the deterministic autoencoder.
        """
        flux, missing = self._check_input(flux, missing)
        features = self.encoder(self._encoder_input(flux, missing)).flatten(1)
        mu = self.to_mu(features)
        logvar = None if self.to_logvar is None else self.to_logvar(features)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Spectra (batch, n_pix) from latent codes (batch, latent_dim)."""
        features = self.from_latent(z).view(z.shape[0], -1, self.bottleneck_size)
        out = self.decoder(features)[:, 0]
        start = (self.padded_length - self.n_pix) // 2
        return out[:, start : start + self.n_pix]

    def forward(
        self,
        flux: torch.Tensor,
        missing: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ):
        """Encode, sample (in training mode, VAE only) and decode.

        Parameters
        ----------
        flux : torch.Tensor, shape (batch, n_pix)
            Median-normalised spectra; non-finite values are missing.
        missing : torch.Tensor of bool, shape (batch, n_pix), optional
            True at missing pixels.
        generator : torch.Generator, optional
            CPU generator for the reparametrisation noise ``z = mu + sigma * eps``
            (training mode only); without one the global generator is used.

        Returns
        -------
        reconstruction : torch.Tensor, shape (batch, n_pix)
        mu : torch.Tensor, shape (batch, latent_dim)
        logvar : torch.Tensor, shape (batch, latent_dim), or None
            None for the deterministic autoencoder.
        """
        mu, logvar = self.encode(flux, missing)
        z = mu
        if logvar is not None and self.training:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar

    def reconstruct(self, flux, missing=None, *, batch_size: int = 256) -> np.ndarray:
        """Reconstruct spectra for inference: decode the latent mean, no sampling.

        Parameters
        ----------
        flux : array_like, shape (n_pix,) or (n, n_pix)
            Median-normalised spectra on the model grid; non-finite values are
            missing.
        missing : array_like of bool, same shape, optional
            True at missing pixels (they are filled by interpolation for the
            encoder and reconstructed like every other pixel).
        batch_size : int, optional
            Spectra per forward pass.

        Returns
        -------
        ndarray, same shape as ``flux``
            The reconstruction (float64), computed on the model's device.
        """
        flux = np.asarray(flux, dtype=np.float32)
        single = flux.ndim == 1
        flux2 = np.atleast_2d(flux)
        miss2 = np.zeros(flux2.shape, bool) if missing is None else np.atleast_2d(missing)
        if miss2.shape != flux2.shape:
            raise ValueError(f"missing has shape {np.shape(missing)}, flux has {flux.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = self.device
        # Decode the latent mean directly: no train/eval switch, so concurrent calls
        # on one model (threads) never see each other's mode.
        with torch.inference_mode():
            out = [
                self.decode(
                    self.encode(
                        torch.from_numpy(flux2[i : i + batch_size]).to(device),
                        torch.from_numpy(np.asarray(miss2[i : i + batch_size], bool)).to(device),
                    )[0]
                )
                .cpu()
                .numpy()
                for i in range(0, flux2.shape[0], batch_size)
            ]
        result = np.concatenate(out).astype(float)
        return result[0] if single else result

    # -- helpers ----------------------------------------------------------------------

    def _check_input(self, flux, missing):
        if not isinstance(flux, torch.Tensor):
            raise TypeError(f"flux must be a torch.Tensor, got {type(flux).__name__}")
        if flux.ndim != 2 or flux.shape[1] != self.n_pix:
            raise ValueError(f"flux must have shape (batch, {self.n_pix}), got {tuple(flux.shape)}")
        bad = ~torch.isfinite(flux)
        if missing is not None:
            if tuple(missing.shape) != tuple(flux.shape):
                raise ValueError(
                    f"missing has shape {tuple(missing.shape)}, flux has {tuple(flux.shape)}"
                )
            bad = bad | missing.to(torch.bool)
        return flux, bad

    def _encoder_input(self, flux, missing):
        filled = fill_missing(flux, missing)
        left = (self.padded_length - self.n_pix) // 2
        right = self.padded_length - self.n_pix - left
        channels = [nn.functional.pad(filled[:, None], (left, right), mode="replicate")]
        if self.config["mask_channel"]:
            flag = nn.functional.pad(missing.to(flux.dtype)[:, None], (left, right), value=1.0)
            channels.append(flag)
        return torch.cat(channels, dim=1)


def karaoke_loss(
    reconstruction: torch.Tensor,
    flux: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor | None,
    missing: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
):
    r"""Masked per-pixel L1 loss plus ``beta`` times the KL divergence of the code.

    .. math::

        \mathcal{L} = \frac{1}{B} \sum_b \left[ \frac{\sum_p m_{bp} |\hat x_{bp} - x_{bp}|}
        {\bar m} + \beta \sum_j \tfrac12
          \left(\mu_{bj}^2 + \sigma_{bj}^2 - 1 - \log\sigma_{bj}^2\right) \right] / P

    with :math:`m_{bp} = 0` at missing pixels (and non-finite flux), 1 elsewhere,
    :math:`\bar m` the share of valid pixels, :math:`B` spectra and :math:`P`
    pixels.  This is the usual VAE objective, summed over pixels and latent
    dimensions (the per-spectrum negative ELBO with a Laplace likelihood), divided
    by the number of pixels so that the value reads as a mean absolute error: the
    reported ``l1`` is the mean over valid pixels and ``kl`` the KL divergence per
    pixel.  The paper uses the per-pixel L1 reconstruction loss with the weight of
    the latent loss set to 0.1 (Sections 3.2 and 5.4, Fig. 8).  With both terms as
    means instead (KL averaged over latent dimensions), the KL weight grows by
    ``P / D`` (about 34 for 4,300 pixels and 128 dimensions) and the posterior
    collapses: training on MILES gave a reconstruction no better than a constant.

    Parameters
    ----------
    reconstruction, flux : torch.Tensor, shape (batch, n_pix)
        Model output and (median-normalised) input.
    mu, logvar : torch.Tensor, shape (batch, latent_dim)
        Latent mean and log-variance; ``logvar=None`` (the deterministic
        autoencoder) drops the KL term.
    missing : torch.Tensor of bool, shape (batch, n_pix), optional
        True where the pixel is excluded from the loss.
    beta : float, optional
        Weight of the KL term.

    Returns
    -------
    total, l1, kl : torch.Tensor
        Scalars; ``total = l1 + beta * kl`` (``kl`` is 0 without ``logvar``).

    Raises
    ------
    ValueError
        If no pixel is valid.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0, float("nan")]])
    >>> total, l1, kl = karaoke_loss(torch.ones(1, 3), x, torch.zeros(1, 2), torch.zeros(1, 2))
    >>> float(l1), float(kl)
    (0.5, 0.0)
    >>> ones = torch.ones(1, 4)
    >>> total, l1, kl = karaoke_loss(ones, ones, torch.ones(1, 2), torch.zeros(1, 2))
    >>> float(kl)  # (0.5 * 1 + 0.5 * 1) / 4 pixels
    0.25
    """
    valid = torch.isfinite(flux)
    if missing is not None:
        valid = valid & ~missing.to(torch.bool)
    count = valid.sum()
    if int(count) == 0:
        raise ValueError("the loss needs at least one valid pixel")
    # Zero the target where it is missing first: |recon - NaN| would poison the gradient.
    target = torch.where(valid, flux, torch.zeros_like(flux))
    l1 = torch.where(valid, (reconstruction - target).abs(), torch.zeros_like(flux)).sum() / count
    if logvar is None:
        kl = torch.zeros((), dtype=l1.dtype, device=l1.device)
    else:
        per_spectrum = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        kl = per_spectrum.mean() / flux.shape[-1]
    return l1 + beta * kl, l1, kl


#: Reconstruction and flux below this are left out of the power fit (log of noise).
_POWER_FIT_FLOOR = 1e-2
#: Largest telluric power fitted (relative to the reference's airmass).
MAX_TELLURIC_POWER = 4.0


def telluric_layer(
    reconstruction: torch.Tensor,
    flux: torch.Tensor,
    log_lines: torch.Tensor,
    missing: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Put the atmosphere back on a reconstruction: ``reconstruction * lines ** p``.

    The training-time telluric layer of `~specutils_deepclean.training.train_karaoke`
    (our addition to Sedaghat et al. 2023).  For each spectrum the power
    :math:`p \ge 0` of a reference line transmission :math:`T_0` is the
    least-squares solution of

    .. math::

        \log y = \log \bar S + p \log T_0

    over the valid pixels where :math:`T_0 < 1` (and both fluxes exceed 0.01),
    clipped to ``[0, MAX_TELLURIC_POWER]`` and held fixed (no gradient); the output
    :math:`\bar S \, T_0^p` is what the loss compares with the observation.  The
    network is then not rewarded for drawing the tellurics itself: the layer
    explains them, so the reconstruction :math:`\bar S` stays the star's.  The
    power plays the part of the airmass (``p = airmass / airmass_reference`` for a
    single-species atmosphere).

    Parameters
    ----------
    reconstruction : torch.Tensor, shape (batch, n_pix)
        The network's output :math:`\bar S`.
    flux : torch.Tensor, shape (batch, n_pix)
        The observed (median-normalised) spectra; non-finite values are missing.
    log_lines : torch.Tensor, shape (batch, n_pix) or (n_pix,)
        :math:`\log T_0` on each spectrum's pixels (0 outside the bands; shifted
        with the spectrum when it was whitened).
    missing : torch.Tensor of bool, shape (batch, n_pix), optional
        Pixels left out of the fit.

    Returns
    -------
    model_flux : torch.Tensor, shape (batch, n_pix)
        :math:`\bar S \, T_0^p`.
    power : torch.Tensor, shape (batch,)
        The fitted :math:`p` (0 where no pixel constrains it).

    Examples
    --------
    >>> log_t = torch.log(torch.tensor([1.0, 0.8, 0.5, 1.0]))
    >>> star = torch.ones(1, 4)
    >>> observed = star * torch.exp(1.5 * log_t)
    >>> model_flux, power = telluric_layer(star, observed, log_t)
    >>> round(float(power[0]), 6)
    1.5
    """
    log_lines = torch.broadcast_to(log_lines, flux.shape)
    with torch.no_grad():
        use = (
            torch.isfinite(flux)
            & (log_lines < 0)
            & (flux > _POWER_FIT_FLOOR)
            & (reconstruction > _POWER_FIT_FLOOR)
        )
        if missing is not None:
            use = use & ~missing.to(torch.bool)
        floor = torch.full_like(reconstruction, _POWER_FIT_FLOOR)
        ratio = torch.log(torch.maximum(torch.nan_to_num(flux), floor)) - torch.log(
            torch.maximum(reconstruction, floor)
        )
        g = torch.where(use, log_lines, torch.zeros_like(log_lines))
        num = (torch.where(use, ratio, torch.zeros_like(ratio)) * g).sum(dim=-1)
        den = (g * g).sum(dim=-1)
        power = torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))
        power = power.clamp(0.0, MAX_TELLURIC_POWER)
    return reconstruction * torch.exp(power[:, None] * log_lines), power


def velocity_whiten(
    flux,
    wavelength,
    missing=None,
    *,
    max_velocity: float = 30.0,
    rng: np.random.Generator | None = None,
    velocities=None,
):
    r"""Velocity whitening: shift each spectrum by a random virtual radial velocity.

    Sedaghat et al. (2023, Section 3.1) whiten the telluric component of a set of
    topocentric spectra by giving each observation :math:`x_i` its own virtual
    velocity :math:`v'_i \sim U(-N, N)` (Eqs. 5-7, 16):
    :math:`x'_i(\lambda) = x_i(\lambda (1 - v'_i / c))`. Only the observed
    spectrum exists, so the *whole* observed spectrum is shifted, stellar and
    telluric components alike, and the noise with them (Eqs. 8-9); what matters is
    that the tellurics, which without it sit at the same topocentric wavelengths in
    every observation, now move by :math:`v'_i` while the star moves by
    :math:`v_i + v'_i` (Eq. 10): the two components move independently across the
    training set, the telluric pixels decorrelate (Fig. 4) and a compressed
    network can no longer learn them as a fixed pattern. The spectra stay
    topocentric (no barycentric correction is involved), and the shift is applied
    on the fly, with new velocities every epoch. The resampling is the
    flux-conserving `~specutils_deepclean.spectra.shift_flux`; the paper's
    :math:`(1 - v'/c)` factor of Eq. 9 is normalised out with the median, here it
    never arises because the flux density is transported unchanged.

    Parameters
    ----------
    flux : array_like, shape (n, n_pix)
        Median-normalised spectra on ``wavelength`` (topocentric frame).
    wavelength : array_like or `~astropy.units.Quantity`, shape (n_pix,)
        Strictly increasing pixel centres; only ratios are used, so any unit.
    missing : array_like of bool, shape (n, n_pix), optional
        Missing pixels (non-finite flux is missing too).
    max_velocity : float, optional
        :math:`N` in km/s; velocities are drawn uniformly in ``[-N, N]``.
    rng : numpy.random.Generator, optional
        Source of the velocities (required unless ``velocities`` is given).
    velocities : array_like, shape (n,), optional
        Use these velocities (km/s) instead of drawing them.

    Returns
    -------
    shifted : ndarray, shape (n, n_pix)
        Shifted spectra, NaN where missing.
    missing : ndarray of bool, shape (n, n_pix)
        Missing pixels after the shift: the input's, moved, plus the pixels
        shifted in from beyond the ends of the grid.
    velocities : ndarray, shape (n,)
        The velocities applied, km/s; a line at :math:`\lambda_0` moves to
        :math:`\lambda_0 / (1 - v/c) \approx \lambda_0 (1 + v/c)`.

    Examples
    --------
    >>> import numpy as np
    >>> wave = np.linspace(5000.0, 5010.0, 11)
    >>> out, miss, v = velocity_whiten(np.ones((2, 11)), wave, velocities=[-60.0, 60.0])
    >>> miss[:, [0, -1]]
    array([[False,  True],
           [ True, False]])
    """
    wave = np.asarray(getattr(wavelength, "value", wavelength), dtype=float)
    flux = np.asarray(flux, dtype=float)
    if flux.ndim != 2 or flux.shape[1] != wave.size:
        raise ValueError(
            f"flux must have shape (n, {wave.size}) to match the wavelength grid, got {flux.shape}"
        )
    if velocities is None:
        if not isinstance(max_velocity, Real) or not 0 <= max_velocity < 1e5:
            raise ValueError(f"max_velocity must be in [0, 1e5) km/s, got {max_velocity!r}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError("velocity_whiten needs rng (a numpy.random.Generator) or velocities")
        velocities = rng.uniform(-max_velocity, max_velocity, size=flux.shape[0])
    velocities = np.asarray(velocities, dtype=float)
    if velocities.shape != (flux.shape[0],):
        raise ValueError(f"velocities must have shape ({flux.shape[0]},), got {velocities.shape}")
    shifted, missing_out = shift_flux(flux, wave, velocities, missing=missing)
    return shifted, missing_out, velocities


def _depth(n_pix: int, bottleneck_length: int) -> int:
    depth = 1
    while -(-n_pix // 2**depth) > bottleneck_length:
        depth += 1
    return depth


def _fan_in(module: nn.Module) -> int:
    weight = module.weight
    if isinstance(module, nn.ConvTranspose1d):
        # Each output pixel sees in_channels * kernel / stride input values.
        return max(1, weight.shape[0] * weight.shape[2] // module.stride[0])
    return weight[0].numel()


def _check_karaoke_config(config: dict, n_pix: int) -> None:
    if config["architecture"] != ARCHITECTURE:
        raise ValueError(
            f"KaraokeVAE needs architecture {ARCHITECTURE!r}, got {config['architecture']!r}"
        )
    missing = sorted({"n_pix", *_DEFAULTS} - set(config))
    if missing:
        raise ValueError(f"KaraokeVAE config lacks: {', '.join(missing)}")
    for key in (
        "n_pix",
        "latent_dim",
        "base_channels",
        "max_channels",
        "double_every",
        "bottleneck_length",
        "head_channels",
    ):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"config[{key!r}] must be a positive int, got {value!r}")
    if config["n_pix"] != n_pix:
        raise ValueError(f"config['n_pix'] = {config['n_pix']} but the wavelength grid has {n_pix}")
    kernels = config["kernel_sizes"]
    if (
        not isinstance(kernels, list)
        or not kernels
        or not all(
            isinstance(k, Integral) and not isinstance(k, bool) and k >= 1 and k % 2 == 1
            for k in kernels
        )
    ):
        raise ValueError(
            f"config['kernel_sizes'] must be a list of odd positive ints, got {kernels!r}"
        )
    for key in ("variational", "mask_channel"):
        if not isinstance(config[key], bool):
            raise ValueError(f"config[{key!r}] must be True or False, got {config[key]!r}")
