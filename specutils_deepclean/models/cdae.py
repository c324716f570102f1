r"""The convolutional denoising autoencoder: the baseline of Kang et al., Section 4.

The network is the generator's: an
`~specutils_deepclean.models.generator.IsometricAutoencoder` (encoder
:math:`E`, generator :math:`G`) built from the same configuration, but trained
as a plain denoiser, :math:`\hat s = G(E(y))`, to map noisy observations
:math:`y` from the observation simulator to the clean star :math:`s`, with the
mean squared error over the valid truth pixels as the loss and no prior or
isometry term.

Two input treatments of missing pixels:

* ``zero_impute=False`` (default): as the generator, missing pixels are filled
  by linear interpolation between valid neighbours and flagged in a second
  input channel;
* ``zero_impute=True``: the paper's Section 4.2 variant: missing pixels are set
  to 0 and passed as data (no flag), so the network cannot tell a gap from
  zero flux.
"""

from __future__ import annotations

from numbers import Integral

import astropy.units as u
import numpy as np
import torch

from .._deprecated import moved, renamed_method
from .base import DeepCleanModel
from .generator import IsometricAutoencoder

__all__ = ["ARCHITECTURE", "ConvDenoisingAutoencoder"]

#: ``config["architecture"]`` of a `ConvDenoisingAutoencoder`.
ARCHITECTURE = "conv-denoising-autoencoder"

#: Options of the wrapped `IsometricAutoencoder` other than ``n_pix``, and their
#: defaults (``latent_dim`` has none).
_NETWORK_DEFAULTS = {
    "channels": 16,
    "kernel_size": 5,
    "bottleneck_length": 32,
    "hidden": 64,
    "block": 32,
}
_HISTORY_PREFIX = "history_"


class ConvDenoisingAutoencoder(DeepCleanModel):
    r"""Denoising autoencoder :math:`\hat s = G(E(y))` with the generator's architecture.

    Parameters
    ----------
    config : dict
        ``"architecture": "conv-denoising-autoencoder"``, ``"latent_dim"``,
        ``"zero_impute"`` (bool) and the further `IsometricAutoencoder` options
        ``channels``, ``kernel_size``, ``bottleneck_length``, ``hidden``,
        ``block`` (``n_pix`` is the length of ``wavelength``). Use `from_grid`
        to fill in defaults.
    **kwargs
        ``wavelength``, ``medium``, ... as in
        `~specutils_deepclean.models.base.DeepCleanModel`.

    Raises
    ------
    ValueError
        If the configuration is bad.

    References
    ----------
    Kang et al., *A novel stellar spectrum denoising method based on deep
    Bayesian modeling*, Section 4 (the denoising autoencoder compared with)
    and Section 4.2 (zero-imputed gaps).

    Examples
    --------
    >>> import numpy as np, astropy.units as u
    >>> from specutils_deepclean.models.cdae import ConvDenoisingAutoencoder
    >>> wave = np.linspace(5000.0, 5100.0, 64) * u.AA
    >>> model = ConvDenoisingAutoencoder.from_grid(
    ...     wave, medium="air", latent_dim=4, channels=2, bottleneck_length=8, hidden=8, block=4)
    >>> model.network.latent_dim, model.zero_impute
    (4, False)
    >>> model.reconstruct(np.ones((3, 64)), np.zeros((3, 64), dtype=bool)).shape
    (3, 64)
    """

    @classmethod
    def from_grid(
        cls,
        wavelength: u.Quantity,
        *,
        medium: str,
        latent_dim: int,
        zero_impute: bool = False,
        seed: int = 0,
        **options,
    ) -> ConvDenoisingAutoencoder:
        """Build an untrained model for a wavelength grid.

        Parameters
        ----------
        wavelength : `~astropy.units.Quantity`
            The model grid (1-D, strictly increasing).
        medium : {"air", "vacuum"}
            Medium of ``wavelength``.
        latent_dim : int
            Size of the latent code (use the generator's).
        zero_impute : bool, optional
            Fill missing input pixels with zeros (the paper's Section 4.2
            variant) instead of interpolation plus a mask channel.
        seed : int, optional
            Seed of the initial weights (the global random state is untouched).
        **options
            `IsometricAutoencoder` options overriding the defaults
            (``channels=16``, ``kernel_size=5``, ``bottleneck_length=32``,
            ``hidden=64``, ``block=32``); ``provenance`` and ``name`` go to
            the base class.

        Returns
        -------
        ConvDenoisingAutoencoder

        Raises
        ------
        ValueError
            If an option is unknown or has a bad value.
        """
        base_kwargs = {key: options.pop(key) for key in ("provenance", "name") if key in options}
        unknown = sorted(set(options) - set(_NETWORK_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown ConvDenoisingAutoencoder option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_NETWORK_DEFAULTS))}"
            )
        config = {
            "architecture": ARCHITECTURE,
            "latent_dim": latent_dim,
            "zero_impute": zero_impute,
            **_NETWORK_DEFAULTS,
            **options,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_check_seed(seed))
            return cls(config, wavelength=wavelength, medium=medium, **base_kwargs)

    def _build(self, config: dict) -> None:
        if config["architecture"] != ARCHITECTURE:
            raise ValueError(
                f"config['architecture'] must be {ARCHITECTURE!r}, got {config['architecture']!r}"
            )
        expected = {"architecture", "latent_dim", "zero_impute", *_NETWORK_DEFAULTS}
        if set(config) != expected:
            raise ValueError(
                f"config must have exactly the keys {sorted(expected)}, got {sorted(config)}"
            )
        if not isinstance(config["zero_impute"], bool):
            raise ValueError(f"config['zero_impute'] must be a bool, got {config['zero_impute']!r}")
        options = {key: config[key] for key in ("latent_dim", *_NETWORK_DEFAULTS)}
        # Default initialisation draws from the global generator: leave it as it was.
        with torch.random.fork_rng(devices=[]):
            self.network = IsometricAutoencoder(self.n_pix, **options)

    @property
    def zero_impute(self) -> bool:
        """True when missing input pixels enter as zeros (the paper's Section 4.2 variant)."""
        return bool(self.config["zero_impute"])

    @property
    def history(self) -> dict:
        """Per-epoch ``train`` loss and ``val`` score of the training (empty when untrained).

        Written by `~specutils_deepclean.training.cdae.train_cdae`.
        """
        return {
            key[len(_HISTORY_PREFIX) :]: np.asarray(value, dtype=float).tolist()
            for key, value in self.extra.items()
            if key.startswith(_HISTORY_PREFIX)
        }

    def forward(self, flux, missing=None) -> torch.Tensor:
        """Denoise a batch: ``G(E(y))``, every pixel (missing ones included) predicted.

        Parameters
        ----------
        flux : tensor, shape ``(batch, n_pix)``
            Median-normalised noisy spectra; non-finite values are missing.
        missing : bool tensor, shape ``(batch, n_pix)``, optional
            True where a pixel is missing.

        Returns
        -------
        tensor, shape ``(batch, n_pix)``

        Raises
        ------
        ValueError
            If the shapes are wrong.
        TypeError
            If ``missing`` is not boolean.
        """
        flux, gone = self.network.encoder_inputs(flux, missing)
        observed = torch.where(gone, torch.zeros_like(flux), flux)
        if self.zero_impute:
            return self.network(observed)[0]
        return self.network(observed, gone)[0]

    def reconstruct(self, flux, missing=None, *, batch_size: int = 256) -> np.ndarray:
        """Denoise spectra given as arrays, in eval mode and without gradients.

        The inference verb of the point-estimate models, as
        `~specutils_deepclean.models.baselines.PCADenoiser.reconstruct` and
        `~specutils_deepclean.models.karaoke.KaraokeVAE.reconstruct`.

        Parameters
        ----------
        flux : array_like, shape ``(n, n_pix)``
            Median-normalised noisy spectra on the model grid; non-finite values
            are missing.
        missing : array_like of bool, shape ``(n, n_pix)``, optional
            True where a pixel is missing.
        batch_size : int, optional
            Spectra per forward pass.

        Returns
        -------
        ndarray, shape ``(n, n_pix)``
            The denoised spectra (float64), gaps filled.

        Raises
        ------
        ValueError
            If the shapes or ``batch_size`` are bad.
        TypeError
            If ``missing`` is not boolean.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        flux = np.asarray(flux, dtype=np.float32)
        if flux.ndim != 2 or flux.shape[1] != self.n_pix:
            raise ValueError(f"flux must have shape (n, {self.n_pix}), got {flux.shape}")
        if missing is not None:
            missing = np.asarray(missing)
            if missing.dtype != bool:
                raise TypeError(f"missing must be a boolean array, got dtype {missing.dtype}")
            if missing.shape != flux.shape:
                raise ValueError(f"missing has shape {missing.shape}, flux {flux.shape}")
        was_training = self.training
        self.eval()
        out = []
        try:
            with torch.inference_mode():
                for start in range(0, flux.shape[0], batch_size):
                    rows = slice(start, start + batch_size)
                    batch = torch.from_numpy(flux[rows]).to(self.device)
                    gone = None if missing is None else torch.from_numpy(missing[rows])
                    out.append(self(batch, gone).cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(out).astype(np.float64) if out else np.empty((0, self.n_pix))

    denoise = renamed_method("denoise", "reconstruct")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


__getattr__ = moved(__name__, {"fit_cdae": "specutils_deepclean.training.cdae:train_cdae"})
