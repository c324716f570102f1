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

import copy
import math
from collections.abc import Sequence
from numbers import Integral, Real

import astropy.units as u
import numpy as np
import torch

from ..simulate import GAP_PLACES, GAP_WIDTHS
from .base import DeepCleanModel
from .generator import (
    IsometricAutoencoder,
    init_linear_paths,
    param_groups,
    reconstruction_loss,
)
from .layers import fill_missing

__all__ = ["ARCHITECTURE", "ConvDenoisingAutoencoder", "fit_cdae"]

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
    >>> model.denoise(np.ones((3, 64)), np.zeros((3, 64), dtype=bool)).shape
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
        """Per-epoch ``train`` loss and ``val`` score of `fit_cdae` (empty when untrained)."""
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

    def denoise(self, flux, missing=None, *, batch_size: int = 256) -> np.ndarray:
        """Denoise spectra given as arrays, in eval mode and without gradients.

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


def fit_cdae(
    train_truth,
    *,
    simulator,
    latent_dim: int,
    snr_range: tuple[float, float] = (2.0, 50.0),
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    val=None,
    zero_impute: bool = False,
    gaps: bool | Sequence[int] = True,
    device=None,
    progress: bool = False,
    **architecture,
) -> ConvDenoisingAutoencoder:
    r"""Train a `ConvDenoisingAutoencoder` on fresh simulated noise every epoch.

    Every epoch each training star is observed once more with
    ``simulator.observe`` (sky residuals, cosmic rays, correlated noise: the
    simulator's defaults, no tellurics) at a S/N drawn log-uniformly from
    ``snr_range``; with ``gaps``, a random half of the stars also get one gap
    of a random width from ``gaps`` at a random place (blue end, middle, red
    end, as in the benchmark protocol). The loss
    is the mean over the batch of each spectrum's MSE between :math:`G(E(y))`
    and the clean truth over the valid truth pixels (gap pixels included: the
    denoiser learns to fill them). Adam; before training :math:`\bar s` is set
    to the mean of the (gap-filled) training truths and the linear paths to
    their top ``latent_dim`` principal components, as for the generator.

    Initial weights, batch order, S/N, gaps and noise all derive from ``seed``,
    so a CPU run is reproducible exactly; the global random states are left
    as they were.

    Parameters
    ----------
    train_truth : array_like, shape ``(n, n_pix)``
        Clean median-normalised training stars on the simulator's grid
        (`~specutils_deepclean.simulate.prepare_truth`); NaN where not valid.
    simulator : `~specutils_deepclean.simulate.Simulator`
        The observation simulator; its grid and medium become the model's.
    latent_dim : int
        Size of the latent code (use the generator's).
    snr_range : (float, float), optional
        Lowest and highest training S/N (0 < low <= high).
    epochs : int, optional
        Passes over the training stars.
    batch_size : int, optional
        Spectra per step.
    lr : float, optional
        Adam learning rate.
    seed : int, optional
        Seed of everything random.
    val : tuple, optional
        ``(flux, missing, truth)`` of fixed validation observations, e.g.
        ``(obs.flux, obs.mask, obs.truth)`` of an
        `~specutils_deepclean.simulate.Observation`. When given, the weights
        with the lowest validation score (median over spectra of the MSE
        against ``truth`` on its finite pixels), the untrained state included,
        are kept.
    zero_impute : bool, optional
        Train the zero-imputation variant (the paper's Section 4.2).
    gaps : bool or sequence of int, optional
        Gap widths (pixels) cut into a random half of the training
        observations: True for the protocol's
        `~specutils_deepclean.simulate.GAP_WIDTHS` (100, 400, 800), False for
        no gaps.
    device : str or `torch.device`, optional
        Where to train (default: CUDA if available, else the CPU).
    progress : bool, optional
        Print the losses after every epoch.
    **architecture
        `IsometricAutoencoder` options (``channels``, ``kernel_size``,
        ``bottleneck_length``, ``hidden``, ``block``).

    Returns
    -------
    ConvDenoisingAutoencoder
        In eval mode on ``device``; ``history`` holds the mean training loss
        (per-pixel MSE) of every epoch and, with ``val``, the validation score
        (entry 0: the untrained state); ``best_epoch`` is the epoch kept.

    Raises
    ------
    ValueError
        If the data or a setting is bad.

    Examples
    --------
    >>> import numpy as np
    >>> from specutils_deepclean.simulate import Simulator
    >>> wave = np.linspace(5000.0, 5200.0, 64)
    >>> rng = np.random.default_rng(0)
    >>> truth = 1 + 0.1 * np.sin(wave / 20 + rng.uniform(0, 3, (16, 1)))
    >>> model = fit_cdae(truth, simulator=Simulator(wave, "air"), latent_dim=2, epochs=2,
    ...                  gaps=(8,), channels=2, bottleneck_length=8, hidden=8, block=4,
    ...                  device="cpu")
    >>> len(model.history["train"]), model.denoise(truth).shape
    (2, (16, 64))
    """
    _check_settings(epochs, batch_size, lr, snr_range, zero_impute)
    gap_widths = _gap_widths(gaps, simulator.wave.size)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    truth = _truth(train_truth, simulator.wave.size, "train_truth")
    valid = None if val is None else _val_data(val, simulator.wave.size, device)
    model = ConvDenoisingAutoencoder.from_grid(
        simulator.wavelength,
        medium=simulator.medium,
        latent_dim=latent_dim,
        zero_impute=zero_impute,
        seed=seed,
        **architecture,
    ).to(device)
    truth_t = torch.as_tensor(truth, dtype=torch.float32, device=device)
    init_linear_paths(model.network, fill_missing(truth_t, ~torch.isfinite(truth_t)))
    optimiser = torch.optim.Adam(param_groups(model.network, lr))
    sim_seeds = np.random.SeedSequence(seed).spawn(epochs)
    order_rng = torch.Generator().manual_seed(_check_seed(seed))
    history = {"train": [], "val": []}
    best = (math.inf, None, 0)
    if valid is not None:
        best = _keep_best(model, valid, history, best, 0)
    for epoch in range(epochs):
        data = _simulate(simulator, truth, snr_range, sim_seeds[epoch], gap_widths)
        model.train()
        history["train"].append(_train_epoch(model, data, optimiser, batch_size, order_rng))
        if valid is not None:
            best = _keep_best(model, valid, history, best, epoch + 1)
        if progress:
            print(
                f"fit_cdae epoch {epoch + 1}/{epochs}: train {history['train'][-1]:.4g}"
                + (f"  val {history['val'][-1]:.4g}" if valid is not None else "")
            )
    if valid is not None:
        model.load_state_dict(best[1])
    model.extra = {
        **model.extra,
        **{_HISTORY_PREFIX + key: np.asarray(value, float) for key, value in history.items()},
    }
    model.best_epoch = best[2] if valid is not None else epochs
    return model.eval()


def _simulate(simulator, truth, snr_range, seed_seq, gap_widths):
    """One fresh noisy observation of every star: flux, missing mask, clean target."""
    rng = np.random.default_rng(seed_seq)
    n = truth.shape[0]
    low, high = np.log(snr_range[0]), np.log(snr_range[1])
    snr = np.exp(rng.uniform(low, high, size=n))
    # group 0: no gap; group 1 + i: gap setting i (a width and a place)
    settings = [None] + [(w, place) for w in gap_widths for place in GAP_PLACES]
    with_gap = rng.random(n) < 0.5 if gap_widths else np.zeros(n, bool)
    group = np.where(with_gap, 1 + rng.integers(0, max(len(settings) - 1, 1), size=n), 0)
    flux = np.empty_like(truth)
    missing = np.empty(truth.shape, dtype=bool)
    target = np.empty_like(truth)
    for index, gap in enumerate(settings):
        rows = group == index
        obs_seed = int(rng.integers(2**63))
        if rows.any():
            obs = simulator.observe(truth[rows], snr[rows], seed=obs_seed, gap=gap)
            flux[rows], missing[rows], target[rows] = obs.flux, obs.mask, obs.truth
    return (
        torch.as_tensor(np.where(missing, 0.0, flux), dtype=torch.float32),
        torch.as_tensor(missing),
        torch.as_tensor(target, dtype=torch.float32),
    )


def _train_epoch(model, data, optimiser, batch_size, rng) -> float:
    """One pass in random order; the mean per-pixel MSE against the truth."""
    flux, missing, target = data
    device = model.device
    total = 0.0
    for index in torch.randperm(flux.shape[0], generator=rng).split(batch_size):
        batch_target = target[index].to(device)
        recon = model(flux[index].to(device), missing[index].to(device))
        loss = reconstruction_loss(recon, batch_target) / model.n_pix
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * index.numel()
    return total / flux.shape[0]


def _keep_best(model, valid, history, best, epoch):
    score = _val_score(model, *valid)
    history["val"].append(score)
    if score < best[0]:
        return (score, copy.deepcopy(model.state_dict()), epoch)
    return best


def _val_score(model, flux, missing, truth, chunk: int = 256) -> float:
    """Median over spectra of the MSE against the truth on its finite pixels."""
    model.eval()
    scores = []
    with torch.no_grad():
        for index in torch.arange(flux.shape[0]).split(chunk):
            pred = model(flux[index], missing[index])
            ok = torch.isfinite(truth[index])
            err = torch.where(ok, pred - torch.nan_to_num(truth[index]), 0.0).square()
            scores.append(err.sum(1) / ok.sum(1).clamp(min=1))
    return float(np.median(torch.cat(scores).cpu().numpy()))


def _truth(values, n_pix: int, name: str) -> np.ndarray:
    truth = np.asarray(values, dtype=np.float64)
    if truth.ndim != 2 or truth.shape[1] != n_pix:
        raise ValueError(
            f"{name} must have shape (n, {n_pix}) (the simulator grid), got {truth.shape}"
        )
    if not np.isfinite(truth).any(axis=1).all():
        raise ValueError(f"{name} has a spectrum with no valid pixel")
    return truth


def _val_data(val, n_pix: int, device):
    if not isinstance(val, tuple) or len(val) != 3:
        raise ValueError("val must be a tuple (flux, missing, truth)")
    flux = np.asarray(val[0], dtype=np.float64)
    truth = _truth(val[2], n_pix, "val truth")
    missing = np.asarray(val[1])
    if missing.dtype != bool or missing.shape != truth.shape or flux.shape != truth.shape:
        raise ValueError("val flux, missing (boolean) and truth must have the same shape")
    missing = missing | ~np.isfinite(flux)
    return (
        torch.as_tensor(np.where(missing, 0.0, flux), dtype=torch.float32, device=device),
        torch.as_tensor(missing, device=device),
        torch.as_tensor(truth, dtype=torch.float32, device=device),
    )


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_settings(epochs, batch_size, lr, snr_range, zero_impute) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    try:
        low, high = (float(v) for v in snr_range)
    except (TypeError, ValueError):
        raise ValueError(f"snr_range must be two numbers (low, high), got {snr_range!r}") from None
    if not 0 < low <= high < math.inf:
        raise ValueError(f"snr_range must satisfy 0 < low <= high < inf, got {snr_range!r}")
    if not isinstance(zero_impute, bool):
        raise ValueError(f"zero_impute must be a bool, got {zero_impute!r}")


def _gap_widths(gaps, n_pix: int) -> tuple[int, ...]:
    """The training gap widths: `GAP_WIDTHS` for True, none for False, else as given."""
    if isinstance(gaps, bool):
        return tuple(GAP_WIDTHS) if gaps else ()
    try:
        widths = tuple(gaps)
    except TypeError:
        raise ValueError(f"gaps must be a bool or a sequence of widths, got {gaps!r}") from None
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, Integral) or not 0 < width < n_pix:
            raise ValueError(f"gap widths must be integers in 1..{n_pix - 1}, got {width!r}")
    return tuple(int(w) for w in widths)
