"""Training loops: the Stellar Karaoke telluric VAE (`train_karaoke`).

Everything is seeded through explicit generators (`numpy.random.default_rng` and
`torch.Generator`), never through global random state; the per-epoch generators are
derived from ``(seed, epoch)``, so a run resumed from a checkpoint continues exactly
as an uninterrupted one would. Importing this module does not import torch.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from numbers import Integral, Real
from pathlib import Path

import astropy.units as u
import numpy as np

from .provenance import Provenance
from .spectra import ModelGrid, median_normalise, to_model_grid

__all__ = ["train_karaoke"]

_HISTORY_KEYS = ("train_loss", "train_l1", "train_kl", "val_loss", "val_l1", "val_kl")
_HISTORY = "history_"  # == models.karaoke.HISTORY_PREFIX (not imported: it needs torch)
_OPTIM = "optim_"
_BEST = "best_"
_LINES = "telluric_lines"  # the model's extra key read by remove_tellurics
_LINES_FLOOR = 1e-3  # saturated telluric pixels: the log of the layer stays finite


def train_karaoke(
    spectra,
    *,
    wavelength: u.Quantity | None = None,
    medium: str | None = None,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 1e-3,
    whitening_kms: float = 30.0,
    latent_dim: int = 128,
    variational: bool = True,
    beta: float = 0.1,
    telluric_lines=None,
    val=None,
    seed: int = 0,
    device=None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    model_options: dict | None = None,
    provenance: Provenance | None = None,
):
    """Train a Stellar Karaoke telluric model on observed spectra; no ground truth needed.

    Every spectrum is median-normalised once; every epoch, each one gets a new
    random virtual radial velocity ``v ~ U(-whitening_kms, whitening_kms)`` km/s
    (`~specutils_deepclean.models.karaoke.velocity_whiten`, Sedaghat et al. 2023,
    Section 3.1) and the network learns to reconstruct the shifted spectrum with
    the masked per-pixel L1 loss plus ``beta`` times the KL term
    (`~specutils_deepclean.models.karaoke.karaoke_loss`), optimised with Adam.
    The spectra must be in the topocentric frame (as observed), where the
    tellurics sit at fixed wavelengths: the whitening is what lets the network
    separate them from the star.

    With ``telluric_lines`` (a reference line transmission, e.g.
    `~specutils_deepclean.tellurics.reference_lines`), the loss compares the
    observation with ``reconstruction * telluric_lines ** p`` instead, ``p``
    fitted per spectrum in closed form
    (`~specutils_deepclean.models.karaoke.telluric_layer`; the lines move with the
    whitening velocity): the atmosphere is explained by the layer, and the
    network's reconstruction is left with the star.  This is our addition to the
    paper; it needs no ground truth either, only a generic transmission model.

    Parameters
    ----------
    spectra : ndarray, `~specutils.Spectrum` or list of `~specutils.Spectrum`
        The training spectra: an ``(n, n_pix)`` array (NaN or a masked array's
        mask = missing) on ``wavelength``; a 2-D Spectrum (a batch on one axis);
        or a list of Spectrum objects. Spectra are resampled (flux conserving)
        onto ``wavelength`` when it is given, else onto the axis of the (first)
        Spectrum.
    wavelength : `~astropy.units.Quantity`, optional
        The model grid; required for array input.
    medium : {"air", "vacuum"}
        Medium of the wavelengths (never guessed).
    epochs : int, optional
        Total number of epochs (a resumed run trains up to this number).
    batch_size : int, optional
        Spectra per optimisation step.
    lr : float, optional
        Adam learning rate.
    whitening_kms : float, optional
        Half-width ``N`` of the uniform velocity distribution, km/s (0 disables
        the whitening: the paper's "topo" network).
    latent_dim : int, optional
        Dimension of the latent code (128 in the paper).
    variational : bool, optional
        Train the VAE (True) or the deterministic autoencoder (False).
    beta : float, optional
        Weight of the KL term (0.1 in the paper); ignored when not variational.
    telluric_lines : array_like, shape (n_pix,), optional
        Line transmission (values in [0, 1], 1 outside the bands) on the model
        grid for the telluric layer; stored as the model's
        ``extra["telluric_lines"]``, which tells
        `~specutils_deepclean.remove_tellurics` where the bands are.  Default: no
        layer (the paper's training).
    val : same types as ``spectra``, optional
        Validation spectra. Each gets one fixed whitening velocity (drawn from the
        seed), the loss is computed from the latent mean, and the weights of the
        epoch with the lowest validation loss are returned. Without ``val`` the
        last epoch's weights are returned.
    seed : int, optional
        Seeds the weights, the batch order, the velocities and the latent noise.
    device : str or `torch.device`, optional
        Default: CUDA if available, else the CPU.
    progress : bool, optional
        Show a tqdm progress bar over the epochs when tqdm is installed.
    checkpoint : str or path-like, optional
        ASDF file written after every epoch (the model plus the optimiser state,
        the best weights so far and the loss history). If it exists when training
        starts, training resumes from it; the result equals an uninterrupted run.
    model_options : dict, optional
        Further `~specutils_deepclean.models.karaoke.KaraokeVAE` configuration
        (``base_channels``, ``bottleneck_length``, ``kernel_sizes``, ...).
    provenance : `~specutils_deepclean.provenance.Provenance`, optional
        Data description for the model file; ``seed``, ``metrics`` (best
        validation losses) and ``notes`` (the training settings) are filled in.

    Returns
    -------
    `~specutils_deepclean.models.karaoke.KaraokeVAE`
        The trained model (in evaluation mode, on ``device``); ``model.history``
        holds the per-epoch losses.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument has a bad value, the spectra are not on one grid, a
        spectrum has no valid pixel, or a checkpoint does not match the settings.

    Examples
    --------
    >>> import numpy as np, astropy.units as u
    >>> from specutils_deepclean.training import train_karaoke
    >>> rng = np.random.default_rng(0)
    >>> wave = np.linspace(6000.0, 6100.0, 64) * u.AA
    >>> flux = 1 + 0.05 * rng.normal(size=(16, 64))
    >>> model = train_karaoke(flux, wavelength=wave, medium="air", epochs=2, batch_size=8,
    ...                       latent_dim=4, progress=False,
    ...                       model_options={"base_channels": 4, "bottleneck_length": 8})
    >>> len(model.history["train_loss"])
    2
    """
    import torch

    from .models.karaoke import KaraokeVAE

    _check_settings(epochs, batch_size, lr, whitening_kms, beta, seed)
    train = _training_arrays(spectra, wavelength, medium, "spectra")
    grid_wave = train[2]
    lines = None if telluric_lines is None else _check_lines(telluric_lines, len(grid_wave))
    val_arrays = None if val is None else _training_arrays(val, grid_wave, medium, "val")[:2]
    device = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    options = {
        "latent_dim": latent_dim,
        "variational": bool(variational),
        **(model_options or {}),
    }
    model = KaraokeVAE.from_grid(grid_wave, medium=medium, seed=seed, **options)
    state = _TrainState(model, lr, lines)
    if checkpoint is not None and Path(checkpoint).exists():
        state.resume(Path(checkpoint))
    model.to(device)
    state.optimizer_to(device)
    beta_used = beta if variational else 0.0
    val_batch = (
        None
        if val_arrays is None
        else _whitened_val(val_arrays, grid_wave, whitening_kms, seed, lines)
    )
    bar = _epochs(state.epoch, epochs, progress)
    for epoch in bar:
        rng = np.random.default_rng([seed, epoch])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        model.train()
        sums = np.zeros(3)
        for index in np.array_split(
            rng.permutation(len(train[0])), _n_batches(len(train[0]), batch_size)
        ):
            flux, missing, log_lines = _whiten(
                train[0][index], train[1][index], grid_wave, whitening_kms, rng, lines
            )
            x, m = _tensors(flux, missing, device)
            recon, mu, logvar = model(x, m, generator=generator)
            losses = _loss(recon, x, mu, logvar, m, beta_used, log_lines)
            state.optimizer.zero_grad()
            losses[0].backward()
            state.optimizer.step()
            sums += len(index) * np.array([float(value.detach()) for value in losses])
        record = dict(
            zip(("train_loss", "train_l1", "train_kl"), sums / len(train[0]), strict=True)
        )
        record.update(_evaluate(model, val_batch, device, beta_used))
        state.end_epoch(record)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({key: f"{value:.4g}" for key, value in record.items() if "loss" in key})
        if checkpoint is not None:
            state.save(Path(checkpoint))
    return state.finish(
        provenance,
        seed=seed,
        settings=_settings_note(
            epochs, batch_size, lr, whitening_kms, beta_used, variational, latent_dim
        )
        + f", telluric_layer={lines is not None}",
    )


class _TrainState:
    """Optimiser, loss history and best weights of a training run."""

    def __init__(self, model, lr, lines):
        import torch

        self.model = model
        self.lines = lines
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.history = {key: [] for key in _HISTORY_KEYS}
        self.best = None
        self.best_loss = np.inf

    @property
    def epoch(self) -> int:
        return len(self.history["train_loss"])

    def end_epoch(self, record: dict) -> None:
        for key in _HISTORY_KEYS:
            self.history[key].append(float(record.get(key, np.nan)))
        if "val_loss" in record and record["val_loss"] < self.best_loss:
            self.best_loss = record["val_loss"]
            self.best = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            )

    def optimizer_to(self, device) -> None:
        for values in self.optimizer.state.values():
            for key, value in values.items():
                if key != "step":
                    values[key] = value.to(device)

    def save(self, path: Path) -> None:
        from .io.models import save_model

        extra = self._history_extra()
        if self.lines is not None:
            extra[_LINES] = self.lines
        for index, values in self.optimizer.state_dict()["state"].items():
            for key, value in values.items():
                extra[f"{_OPTIM}{index}_{key}"] = value.detach().cpu().numpy()
        if self.best is not None:
            extra.update({f"{_BEST}{k}": v.numpy() for k, v in self.best.items()})
        self.model.extra = extra
        try:
            save_model(self.model, path, overwrite=True)
        finally:
            self.model.extra = {}

    def resume(self, path: Path) -> None:
        import torch

        from .io.models import load_model

        saved = load_model(path)
        if type(saved) is not type(self.model) or saved.config != self.model.config:
            raise ValueError(
                f"checkpoint {path} holds a model with config {getattr(saved, 'config', None)}, "
                f"these settings build {self.model.config}"
            )
        if not np.array_equal(
            saved.wavelength.to_value(u.AA), self.model.wavelength.to_value(u.AA)
        ):
            raise ValueError(f"checkpoint {path} is on a different wavelength grid")
        extra = saved.extra
        saved_lines = extra.get(_LINES)
        if (saved_lines is None) != (self.lines is None) or (
            saved_lines is not None and not np.array_equal(saved_lines, self.lines)
        ):
            raise ValueError(
                f"checkpoint {path} was trained with other telluric_lines "
                f"({'none' if saved_lines is None else 'different values'})"
            )
        self.model.load_state_dict(saved.state_dict())
        self.history = {key: list(extra.get(_HISTORY + key, [])) for key in _HISTORY_KEYS}
        best = {
            k[len(_BEST) :]: torch.from_numpy(v) for k, v in extra.items() if k.startswith(_BEST)
        }
        if best:
            self.best = best
            self.best_loss = float(np.nanmin(self.history["val_loss"]))
        optim = self.optimizer.state_dict()
        state = {}
        for key, value in extra.items():
            if key.startswith(_OPTIM):
                index, _, name = key[len(_OPTIM) :].partition("_")
                state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
        optim["state"] = state
        self.optimizer.load_state_dict(optim)

    def finish(self, provenance, *, seed, settings):
        if self.best is not None:
            device = self.model.device
            self.model.load_state_dict({k: v.to(device) for k, v in self.best.items()})
        self.model.extra = self._history_extra()
        if self.lines is not None:
            self.model.extra[_LINES] = self.lines.astype(np.float32)
        metrics = {}
        if np.isfinite(self.best_loss):
            best_epoch = int(np.nanargmin(self.history["val_loss"]))
            metrics = {
                key: self.history[key][best_epoch] for key in ("val_loss", "val_l1", "val_kl")
            }
            metrics["best_epoch"] = float(best_epoch)
        provenance = Provenance() if provenance is None else provenance
        if not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}")
        self.model.provenance = dataclasses.replace(
            provenance,
            seed=seed,
            metrics={**provenance.metrics, **metrics},
            notes=(provenance.notes + "\n" if provenance.notes else "") + settings,
        )
        self.model.eval()
        return self.model

    def _history_extra(self) -> dict:
        return {
            _HISTORY + key: np.array(values, dtype=float) for key, values in self.history.items()
        }


def _loss(recon, x, mu, logvar, missing, beta, log_lines=None):
    from .models.karaoke import karaoke_loss, telluric_layer

    if log_lines is not None:
        recon = telluric_layer(recon, x, log_lines.to(recon.device), missing)[0]
    return karaoke_loss(recon, x, mu, logvar, missing, beta=beta)


def _evaluate(model, val_batch, device, beta) -> dict:
    """Validation losses from the latent mean (no sampling)."""
    if val_batch is None:
        return {}
    import torch

    model.eval()
    sums = np.zeros(3)
    with torch.inference_mode():
        for flux, missing, log_lines in val_batch:
            x, m = _tensors(flux, missing, device)
            recon, mu, logvar = model(x, m)
            sums += len(flux) * np.array(
                [float(value) for value in _loss(recon, x, mu, logvar, m, beta, log_lines)]
            )
    n = sum(len(batch[0]) for batch in val_batch)
    return dict(zip(("val_loss", "val_l1", "val_kl"), sums / n, strict=True))


def _whitened_val(val_arrays, wavelength, whitening_kms, seed, lines, chunk: int = 256):
    """Validation spectra (and log lines) whitened once with fixed velocities, in chunks."""
    rng = np.random.default_rng([seed, 2**31])
    flux, missing, log_lines = _whiten(*val_arrays, wavelength, whitening_kms, rng, lines)
    return [
        (
            flux[i : i + chunk],
            missing[i : i + chunk],
            None if log_lines is None else log_lines[i : i + chunk],
        )
        for i in range(0, len(flux), chunk)
    ]


def _whiten(flux, missing, wavelength, whitening_kms, rng, lines=None):
    """Whitened flux and missing mask, and the log line transmission moved with them.

    The log lines are a float32 tensor (one row per spectrum), None without ``lines``.
    """
    import torch

    from .models.karaoke import velocity_whiten
    from .spectra import shift_flux

    velocities = None
    if whitening_kms != 0:
        flux, missing, velocities = velocity_whiten(
            flux, wavelength, missing, max_velocity=whitening_kms, rng=rng
        )
    if lines is None:
        return flux, missing, None
    moved = np.broadcast_to(lines, flux.shape)
    if velocities is not None:
        wave = np.asarray(getattr(wavelength, "value", wavelength), dtype=float)
        # Beyond the grid ends the shifted lines are unknown: no absorption there.
        moved = np.nan_to_num(shift_flux(moved, wave, velocities)[0], nan=1.0)
    log_lines = np.log(np.clip(moved, _LINES_FLOOR, 1.0))
    return flux, missing, torch.from_numpy(log_lines.astype(np.float32))


def _tensors(flux, missing, device):
    import torch

    x = torch.from_numpy(np.asarray(flux, dtype=np.float32)).to(device)
    m = torch.from_numpy(np.asarray(missing, dtype=bool)).to(device)
    return x, m


def _check_lines(lines, n_pix: int) -> np.ndarray:
    """The reference line transmission as float64, checked."""
    lines = np.asarray(lines, dtype=float)
    if lines.shape != (n_pix,):
        raise ValueError(
            f"telluric_lines must have shape ({n_pix},) to match the grid, got {lines.shape}"
        )
    if not np.all(np.isfinite(lines)) or np.any(lines < 0) or np.any(lines > 1):
        raise ValueError("telluric_lines must be finite and in [0, 1]")
    return lines


def _n_batches(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _epochs(start: int, stop: int, progress: bool):
    epochs = range(start, stop)
    if not progress:
        return epochs
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return epochs
    return tqdm(epochs, desc="train_karaoke", unit="epoch", initial=start, total=stop)


def _settings_note(epochs, batch_size, lr, whitening_kms, beta, variational, latent_dim) -> str:
    return (
        f"train_karaoke: epochs={epochs}, batch_size={batch_size}, lr={lr}, "
        f"whitening_kms={whitening_kms}, beta={beta}, variational={variational}, "
        f"latent_dim={latent_dim}, optimiser=Adam, loss=masked L1 + beta * mean KL"
    )


def _check_settings(epochs, batch_size, lr, whitening_kms, beta, seed) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, value, low in (
        ("lr", lr, 0.0),
        ("whitening_kms", whitening_kms, 0.0),
        ("beta", beta, 0.0),
    ):
        if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if value < low or (name == "lr" and value == 0):
            raise ValueError(
                f"{name} must be {'positive' if name == 'lr' else 'non-negative'}, got {value!r}"
            )
    if whitening_kms >= 1e5:
        raise ValueError(f"whitening_kms must be below 1e5 km/s, got {whitening_kms!r}")


def _training_arrays(spectra, wavelength, medium, name):
    """Median-normalised flux (NaN where missing), missing mask and grid of the input."""
    from specutils import Spectrum

    if medium not in ("air", "vacuum"):
        raise ValueError(f"medium must be 'air' or 'vacuum' (never guessed), got {medium!r}")
    if isinstance(spectra, Spectrum):
        spectra = [spectra]
    if (
        isinstance(spectra, list | tuple)
        and spectra
        and all(isinstance(s, Spectrum) for s in spectra)
    ):
        axis = wavelength if wavelength is not None else u.Quantity(spectra[0].spectral_axis)
        grid = ModelGrid(axis, medium)
        parts = [to_model_grid(spec, grid, medium=medium) for spec in spectra]
        flux = np.concatenate([part.flux for part in parts])
        missing = np.concatenate([part.missing for part in parts])
        if missing.all(axis=1).any():
            bad = np.flatnonzero(missing.all(axis=1)).tolist()
            raise ValueError(f"{name}: spectra {bad} have no valid pixel on the model grid")
        return flux, missing, grid.wavelength
    if isinstance(spectra, list | tuple) and any(isinstance(s, Spectrum) for s in spectra):
        raise TypeError(f"{name}: a list must hold only Spectrum objects")
    if not isinstance(spectra, np.ndarray):
        raise TypeError(
            f"{name} must be an (n, n_pix) array, a Spectrum or a list of Spectrum, "
            f"got {type(spectra).__name__}"
        )
    if not isinstance(wavelength, u.Quantity):
        raise TypeError(
            f"array {name} need wavelength as a Quantity, got {type(wavelength).__name__}"
        )
    grid = ModelGrid(wavelength, medium)
    flux = np.ma.getdata(spectra).astype(float)
    if flux.ndim != 2 or flux.shape[1] != len(grid.wavelength):
        raise ValueError(
            f"{name} must have shape (n, {len(grid.wavelength)}) to match wavelength, "
            f"got {flux.shape}"
        )
    normalised, scale = median_normalise(flux, np.ma.getmaskarray(spectra))
    if not np.all(np.isfinite(scale)):
        bad = np.flatnonzero(~np.isfinite(scale)).tolist()
        raise ValueError(f"{name}: spectra {bad} have no valid pixel or a non-positive median")
    missing = ~np.isfinite(normalised) | np.ma.getmaskarray(spectra)
    return np.where(missing, np.nan, normalised), missing, grid.wavelength
