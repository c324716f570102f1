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
from numbers import Integral

import numpy as np
import torch
from torch import nn

from .._deprecated import moved
from .base import DeepCleanModel
from .layers import (
    LEAKY_SLOPE,
    down_block,
    fill_missing,
    patch_block,
    run_channels_last,
    same_conv,
    up_block,
)

__all__ = [
    "KaraokeVAE",
    "telluric_layer",
    "ARCHITECTURE",
    "HISTORY_PREFIX",
    "PATCH_ABOVE_PIXELS",
    "PATCH_STRIDE",
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

#: Grids longer than this (16 MILES spectra) get a patch-embedding first layer.
PATCH_ABOVE_PIXELS = 65_536
#: Its stride (and kernel): it stands for the first three stride-2 layers.
PATCH_STRIDE = 8


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

    Very long grids (over `PATCH_ABOVE_PIXELS`, 65,536 pixels: HARPS, not MILES) get
    a patch embedding (``patch_stride``, `PATCH_STRIDE` = 8 from `from_grid`): the
    first strided layer is a convolution of kernel and stride 8, standing for three
    stride-2 layers, and the decoder's last transposed convolution its mirror
    (``models.layers.patch_block``).  The layers at full resolution are what costs
    at that length; the speed of this layout against the paper's is measured by
    ``benchmarks/benchmarks/bench_tellurics_speed.py``, its telluric quality on
    HARPS spectra is not (no HARPS training set here).

    Missing pixels enter the encoder filled by linear interpolation between the
    nearest valid neighbours (the nearest valid value beyond the ends), never as
    zeros, and, with ``mask_channel=True``, a second input channel is 1 at
    missing pixels so the network knows the filled values are not data. The loss
    ignores them (`~specutils_deepclean.training.karaoke.karaoke_loss`).

    Parameters
    ----------
    config : dict
        ``"architecture": "karaoke-vae"``, ``"n_pix"`` (the length of
        ``wavelength``) and optionally ``latent_dim``, ``base_channels``,
        ``max_channels``, ``double_every``, ``kernel_sizes`` (odd kernel of strided
        layer ``i`` is ``kernel_sizes[min(i, len - 1)]``), ``bottleneck_length``,
        ``head_channels`` (channels of the last transposed convolution),
        ``patch_stride`` (1, or a power of 2: kernel and stride of a patch-embedding
        first layer; absent means 1), ``variational`` (False gives the deterministic autoencoder of the paper's
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
            ``head_channels=4``, ``variational=True``, ``mask_channel=True``;
            ``patch_stride``: `PATCH_STRIDE` for grids over `PATCH_ABOVE_PIXELS`
            pixels, else 1); ``provenance`` and ``name`` go to the base class.

        Returns
        -------
        KaraokeVAE
        """
        base_kwargs = {key: options.pop(key) for key in ("provenance", "name") if key in options}
        unknown = sorted(set(options) - set(_DEFAULTS) - {"patch_stride"})
        if unknown:
            raise ValueError(
                f"unknown KaraokeVAE option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted([*_DEFAULTS, 'patch_stride']))}"
            )
        patch = PATCH_STRIDE if len(wavelength) > PATCH_ABOVE_PIXELS else 1
        config = {
            "architecture": ARCHITECTURE,
            "n_pix": len(wavelength),
            **_DEFAULTS,
            "patch_stride": patch,
            **options,
        }
        model = cls(config, wavelength=wavelength, medium=medium, **base_kwargs)
        model.reset_parameters(seed)
        return model

    # -- construction -------------------------------------------------------------

    def _build(self, config: dict) -> None:
        _check_karaoke_config(config, self.n_pix)
        self.depth = _depth(config["n_pix"], config["bottleneck_length"])
        self.bottleneck_size = -(-config["n_pix"] // 2**self.depth)
        self.padded_length = self.bottleneck_size * 2**self.depth
        patch = config.get("patch_stride", 1)
        if patch >= 2**self.depth:
            raise ValueError(
                f"patch_stride {patch} must be below 2**depth = {2**self.depth} for "
                f"{config['n_pix']} pixels"
            )
        # A patch layer of stride 2**k stands for k stride-2 layers.
        n_layers = self.depth - patch.bit_length() + 1 + (patch > 1)
        channels = [
            min(
                config["base_channels"] * 2 ** (i // config["double_every"]), config["max_channels"]
            )
            for i in range(n_layers)
        ]
        kernels = config["kernel_sizes"]
        # Default torch initialisation draws from the global generator: keep the
        # caller's global state untouched; `reset_parameters` sets the real weights.
        with torch.random.fork_rng(devices=[]):
            encoder = []
            in_channels = 2 if config["mask_channel"] else 1
            for i, out_channels in enumerate(channels):
                if i == 0 and patch > 1:
                    encoder.append(patch_block(in_channels, out_channels, patch))
                else:
                    kernel = kernels[min(i, len(kernels) - 1)]
                    encoder.append(down_block(in_channels, out_channels, kernel))
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
            if patch > 1:
                decoder[-1] = patch_block(channels[0], config["head_channels"], patch, up=True)
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
                self._decode_mean(
                    torch.from_numpy(flux2[i : i + batch_size]).to(device),
                    torch.from_numpy(np.asarray(miss2[i : i + batch_size], bool)).to(device),
                )
                .cpu()
                .numpy()
                for i in range(0, flux2.shape[0], batch_size)
            ]
        result = np.concatenate(out).astype(float)
        return result[0] if single else result

    def _decode_mean(self, flux: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """``decode(encode(flux, missing)[0])`` on channels-last activations.

        The inference path of `reconstruct`: the same layers and weights run by
        `~specutils_deepclean.models.layers.run_channels_last` (2-3 times faster on
        CPU, equal to float32 rounding).
        """
        flux, missing = self._check_input(flux, missing)
        channels_last = torch.channels_last
        x = self._encoder_input(flux, missing)[:, :, None].contiguous(memory_format=channels_last)
        mu = self.to_mu(run_channels_last(self.encoder, x).flatten(1))
        features = self.from_latent(mu).view(mu.shape[0], -1, 1, self.bottleneck_size)
        out = run_channels_last(self.decoder, features.contiguous(memory_format=channels_last))
        start = (self.padded_length - self.n_pix) // 2
        return out[:, 0, 0, start : start + self.n_pix]

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
    patch = config.get("patch_stride", 1)
    if (
        isinstance(patch, bool)
        or not isinstance(patch, Integral)
        or patch < 1
        or patch & (patch - 1)
    ):
        raise ValueError(f"config['patch_stride'] must be a power of 2, got {patch!r}")
    for key in ("variational", "mask_channel"):
        if not isinstance(config[key], bool):
            raise ValueError(f"config[{key!r}] must be True or False, got {config[key]!r}")


__getattr__ = moved(
    __name__,
    {
        "karaoke_loss": "specutils_deepclean.training.karaoke",
        "velocity_whiten": "specutils_deepclean.training.karaoke",
    },
)
