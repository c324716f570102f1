"""Training the Stellar Karaoke telluric VAE: `train_karaoke`, its loss, velocity whitening.

Also `reference_lines`, the reference telluric line transmission of the telluric
layer.  Everything is seeded through explicit generators (`numpy.random.default_rng` and
`torch.Generator`), never through global random state; the per-epoch generators are
derived from ``(seed, epoch)``, so a run resumed from a checkpoint continues exactly
as an uninterrupted one would. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import os
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING

import astropy.units as u
import numpy as np

from ..doppler import shift_flux
from ..provenance import Provenance
from ..spectra import ModelGrid, median_normalise, to_model_grid
from .loop import (
    KeepBest,
    history_extra,
    load_checkpoint,
    optimizer_to,
    run_epochs,
    save_checkpoint,
)

if TYPE_CHECKING:
    import torch

__all__ = ["train_karaoke", "karaoke_loss", "velocity_whiten", "reference_lines"]

_HISTORY_KEYS = ("train_loss", "train_l1", "train_kl", "val_loss", "val_l1", "val_kl")
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
    (`velocity_whiten`, Sedaghat et al. 2023,
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

    from ..models.karaoke import KaraokeVAE

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
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {key: [] for key in _HISTORY_KEYS}
    keep = KeepBest(model)
    if checkpoint is not None and Path(checkpoint).exists():
        history, extra = load_checkpoint(
            Path(checkpoint), model, optimizer, keep, _HISTORY_KEYS, "val_loss"
        )
        _check_checkpoint_lines(checkpoint, extra.get(_LINES), lines)
    model.to(device)
    optimizer_to(optimizer, device)
    beta_used = beta if variational else 0.0
    val_batch = (
        None
        if val_arrays is None
        else _whitened_val(val_arrays, grid_wave, whitening_kms, seed, lines)
    )

    def train_epoch(epoch: int) -> dict:
        rng = np.random.default_rng([seed, epoch])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
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
            optimizer.zero_grad()
            losses[0].backward()
            optimizer.step()
            sums += len(index) * np.array([float(value.detach()) for value in losses])
        means = sums / len(train[0])
        return {key: float(value) for key, value in zip(_HISTORY_KEYS[:3], means, strict=True)}

    def after_epoch(epoch: int) -> None:
        if checkpoint is not None:
            extra = {} if lines is None else {_LINES: lines}
            save_checkpoint(Path(checkpoint), model, optimizer, history, keep, extra)

    run_epochs(
        model,
        epochs,
        train_epoch,
        history=history,
        validate=lambda: _evaluate(model, val_batch, device, beta_used),
        keep=keep,
        keep_key="val_loss",
        start=len(history["train_loss"]),
        progress=progress,
        desc="train_karaoke",
        after_epoch=after_epoch,
    )
    keep.restore()
    model.extra = history_extra(history)
    if lines is not None:
        model.extra[_LINES] = lines.astype(np.float32)
    settings = _settings_note(
        epochs, batch_size, lr, whitening_kms, beta_used, variational, latent_dim
    )
    model.provenance = _provenance(
        provenance, seed, history, keep, settings + f", telluric_layer={lines is not None}"
    )
    return model.eval()


def _check_checkpoint_lines(path, saved, lines) -> None:
    if (saved is None) != (lines is None) or (
        saved is not None and not np.array_equal(saved, lines)
    ):
        raise ValueError(
            f"checkpoint {path} was trained with other telluric_lines "
            f"({'none' if saved is None else 'different values'})"
        )


def _provenance(provenance, seed: int, history: dict, keep: KeepBest, settings: str):
    """The data description with the seed, the best epoch's val losses and the settings."""
    metrics = {}
    if np.isfinite(keep.score):
        best_epoch = int(np.nanargmin(history["val_loss"]))
        metrics = {key: history[key][best_epoch] for key in ("val_loss", "val_l1", "val_kl")}
        metrics["best_epoch"] = float(best_epoch)
    provenance = Provenance() if provenance is None else provenance
    if not isinstance(provenance, Provenance):
        raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}")
    return dataclasses.replace(
        provenance,
        seed=seed,
        metrics={**provenance.metrics, **metrics},
        notes=(provenance.notes + "\n" if provenance.notes else "") + settings,
    )


def _loss(recon, x, mu, logvar, missing, beta, log_lines=None):
    from ..models.karaoke import telluric_layer

    if log_lines is not None:
        recon = telluric_layer(recon, x, log_lines.to(recon.device), missing)[0]
    return karaoke_loss(recon, x, mu, logvar, missing, beta=beta)


def _evaluate(model, val_batch, device, beta) -> dict:
    """Validation losses from the latent mean (no sampling)."""
    if val_batch is None:
        return dict.fromkeys(_HISTORY_KEYS[3:], np.nan)
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
    return {key: float(value) for key, value in zip(_HISTORY_KEYS[3:], sums / n, strict=True)}


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
    import torch

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
    flux-conserving `~specutils_deepclean.doppler.shift_flux`; the paper's
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


def reference_lines(
    wavelength_aa: np.ndarray, medium: str, *, airmass: float = 2.5, fwhm: float = 2.5
) -> np.ndarray:
    """The narrow-line telluric transmission on a grid, for a telluric model's bands.

    The ESO transmission (:func:`~specutils_deepclean.datasets.load_transmission`)
    at ``airmass``, convolved to ``fwhm`` and put on the grid by the simulator, then
    split into continuum and lines
    (:func:`~specutils_deepclean.tellurics.split_transmission`).  Stored as a telluric model's ``extra["telluric_lines"]``, it tells
    `~specutils_deepclean.remove_tellurics` where the atmosphere can absorb
    (:func:`~specutils_deepclean.tellurics.telluric_region`).

    Parameters
    ----------
    wavelength_aa : ndarray
        The model grid, Angstrom.
    medium : {"air", "vacuum"}
        Medium of the grid.
    airmass : float
        Airmass of the reference (the largest of the training data is a safe choice).
    fwhm : float
        Resolution of the spectra, FWHM in Angstrom.

    Returns
    -------
    ndarray
        Line transmission on the grid (1 outside the bands).
    """
    from ..simulate import Simulator
    from ..tellurics import split_transmission

    wave = np.asarray(wavelength_aa, dtype=float)
    simulator = Simulator(wave, medium, fwhm=fwhm)
    return split_transmission(simulator.transmission_at(airmass), wave)[1]
