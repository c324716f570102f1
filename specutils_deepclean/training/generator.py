r"""Training the generator (Kang et al., Eq. 10): `train_generator` and its loss terms.

The loss per batch is the masked reconstruction error (`reconstruction_loss`) plus
the isometry term (`isometry_loss`); the linear paths start at the training set's
principal components (`init_linear_paths`) and step at their own rate
(`param_groups`).  The epochs run through :func:`~specutils_deepclean.training.loop.run_epochs`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

from ..models.generator import IsometricAutoencoder, _check_int
from ..models.layers import fill_missing
from .loop import KeepBest, resolve_device, run_epochs

__all__ = [
    "train_generator",
    "init_linear_paths",
    "param_groups",
    "isometry_loss",
    "reconstruction_loss",
]


def reconstruction_loss(recon, flux, missing=None) -> torch.Tensor:
    r"""Masked squared error :math:`\lVert y - G(E(y))\rVert^2`, the first term of Eq. 10.

    Per spectrum, the sum of squared errors over the observed pixels, scaled by
    ``n_pix / n_observed`` so a spectrum with gaps weighs as much as a complete
    one; missing pixels contribute nothing (their values are never read).
    Averaged over the batch. Divide by ``n_pix`` for the per-pixel MSE.

    Parameters
    ----------
    recon, flux : tensor, shape ``(batch, n_pix)``
        Reconstruction and data (non-finite data are missing).
    missing : bool tensor, shape ``(batch, n_pix)``, optional
        True where a pixel is missing.

    Returns
    -------
    tensor
        A scalar.

    Examples
    --------
    >>> import torch
    >>> flux = torch.tensor([[1.0, 2.0, float("nan"), 4.0]])
    >>> reconstruction_loss(torch.ones(1, 4), flux)
    tensor(13.3333)
    """
    gone = ~torch.isfinite(flux)
    if missing is not None:
        gone = gone | missing
    sq = torch.where(gone, torch.zeros_like(recon), recon - torch.where(gone, 0.0, flux)).square()
    observed = (~gone).sum(-1).clamp(min=1).to(recon.dtype)
    return (sq.sum(-1) * flux.shape[-1] / observed).mean()


def isometry_loss(generate, z, delta: float, *, generator: torch.Generator | None = None):
    r"""The local-isometry term of Eq. 10, averaged over a batch of codes.

    .. math::

        E_\delta \bigl(\lVert G(z) - G(z + \delta)\rVert - \lVert\delta\rVert\bigr)^2

    :math:`\delta` is drawn uniformly on the sphere of radius ``delta`` in
    :math:`\mathbb R^L` (a normalised Gaussian vector), one per code, and the
    norm is the plain Euclidean norm in pixel space, as in the paper (see the
    Notes). The mean over the batch is returned.

    Parameters
    ----------
    generate : callable
        :math:`G`, mapping ``(batch, L)`` to ``(batch, n_pix)``.
    z : tensor, shape ``(batch, L)``
        Latent codes.
    delta : float
        Radius of the perturbation sphere (> 0).
    generator : `torch.Generator`, optional
        Source of the random directions.

    Returns
    -------
    tensor
        A scalar.

    Notes
    -----
    The norm is not rescaled by the number of pixels. With median-normalised
    flux this makes latent distances equal to pixel-space distances, the
    geometry of PCA coefficients on an orthonormal basis; the linear path of
    `IsometricAutoencoder` starts exactly there, so the penalty measures how far
    the nonlinear residual distorts it.

    Examples
    --------
    >>> import torch
    >>> basis = torch.linalg.qr(torch.randn(50, 3, dtype=torch.float64))[0]
    >>> loss = isometry_loss(lambda z: z @ basis.T, torch.randn(8, 3, dtype=torch.float64), 0.1)
    >>> float(loss) < 1e-20
    True
    """
    if isinstance(delta, bool) or not isinstance(delta, Real) or not 0 < delta < math.inf:
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")
    direction = torch.randn(
        z.shape,
        generator=generator,
        dtype=z.dtype,
        device="cpu" if generator is None else generator.device,
    ).to(z.device)
    step = delta * direction / direction.norm(dim=-1, keepdim=True)
    moved = generate(torch.cat([z, z + step]))
    distance = (moved[z.shape[0] :] - moved[: z.shape[0]]).norm(dim=-1)
    return (distance - delta).square().mean()


def train_generator(
    train_flux,
    train_missing=None,
    *,
    latent_dim: int,
    val=None,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    isometry_weight: float = 1.0,
    delta: float = 0.1,
    seed: int = 0,
    device=None,
    progress: bool = True,
    noise_augment: float = 0.0,
    tilt_augment: float = 0.0,
    **architecture,
) -> IsometricAutoencoder:
    r"""Train an `IsometricAutoencoder` with the loss of Eq. 10 and Adam.

    The loss per batch is `reconstruction_loss` plus ``isometry_weight`` times
    `isometry_loss` at the (detached) codes :math:`z = E(y)`; with weight 1 this
    is Eq. 10 exactly. Before training, :math:`\bar s` is set to the mean of the
    gap-filled training spectra and both linear paths to their top
    ``latent_dim`` principal components (:math:`W` orthonormal,
    :math:`V = W^T`), so the untrained model is PCA with :math:`k = L`.

    Augmentation (fresh draws every epoch): each training spectrum is
    multiplied by a linear tilt :math:`1 + a x`, :math:`x \in [-1, 1]` across
    the spectrum, :math:`a \sim U(-t, t)` with ``t = tilt_augment``, and
    divided by its new median (a flux-calibration change; input and target
    alike); then the encoder's input (not the target) gets Gaussian noise of a
    standard deviation drawn from :math:`U(0, \mathrm{noise\_augment})` per
    spectrum, so :math:`E` gives useful starting codes for noisy spectra.

    Initial weights (seeded inside `torch.random.fork_rng`), batch order,
    augmentation and :math:`\delta` come from ``seed`` only, so a CPU run is
    reproducible exactly and the global random state is left as it was.

    Parameters
    ----------
    train_flux : array_like, shape ``(n, n_pix)``
        Median-normalised training spectra (non-finite values are missing).
    train_missing : array_like of bool, shape ``(n, n_pix)``, optional
        True where a training pixel is missing.
    latent_dim : int
        :math:`L` (at most ``n`` and ``n_pix``).
    val : tuple, optional
        ``(flux, missing)`` of validation spectra (``missing`` may be None).
        When given, the weights with the lowest validation score (the median
        over spectra of the per-pixel MSE of :math:`G(E(y))` on observed
        pixels), the untrained PCA state included, are kept.
    epochs : int, optional
        Passes over the training set.
    batch_size : int, optional
        Spectra per step.
    lr : float, optional
        Adam learning rate.
    isometry_weight : float, optional
        :math:`\lambda` (>= 0), the weight of the isometry term.
    delta : float, optional
        Radius of the perturbation sphere in latent space.
    seed : int, optional
        Seed of everything random.
    device : str or `torch.device`, optional
        Where to train (default: CUDA if available, else the CPU).
    progress : bool, optional
        Show a progress bar (tqdm, when installed).
    noise_augment : float, optional
        Largest noise standard deviation added to the encoder's input (>= 0).
    tilt_augment : float, optional
        Largest fractional tilt across the spectrum (0 <= t < 1).
    **architecture
        Further `IsometricAutoencoder` options (``channels``, ``kernel_size``,
        ``bottleneck_length``, ``hidden``, ``block``).

    Returns
    -------
    IsometricAutoencoder
        In eval mode on ``device``, with ``history`` (``{"train": [...],
        "recon": [...], "isometry": [...], "val": [...]}``: mean total loss,
        per-pixel reconstruction MSE and isometry term per epoch on the
        training batches, and the validation score, whose entry 0 is the
        untrained PCA state) and ``best_epoch`` (0 for the untrained state,
        ``e`` for the end of epoch ``e``).

    Raises
    ------
    TypeError
        If a missing mask is not boolean.
    ValueError
        If the data or a setting is bad.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.linspace(0.0, 1.0, 64)
    >>> flux = 1.0 + 0.1 * np.sin(6 * x + rng.uniform(0, 3, (40, 1)))
    >>> model = train_generator(flux, latent_dim=2, epochs=2, channels=2, bottleneck_length=8,
    ...                         hidden=8, block=4, device="cpu", progress=False)
    >>> len(model.history["train"]), model.latent_dim
    (2, 2)
    """
    _check_settings(epochs, batch_size, lr, seed, isometry_weight, noise_augment, tilt_augment)
    device = resolve_device(device)
    flux, missing = _fit_data(train_flux, train_missing, "train_flux", device)
    latent_dim = _check_int(latent_dim, "latent_dim")
    if latent_dim > min(flux.shape):
        raise ValueError(
            f"latent_dim={latent_dim} exceeds the number of training spectra or pixels "
            f"{tuple(flux.shape)}"
        )
    valid = None
    if val is not None:
        if not isinstance(val, tuple) or len(val) != 2:
            raise ValueError("val must be a tuple (flux, missing)")
        valid = _fit_data(*val, "val flux", device)
        if valid[0].shape[1] != flux.shape[1]:
            raise ValueError(f"val flux has {valid[0].shape[1]} pixels, train_flux {flux.shape[1]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IsometricAutoencoder(flux.shape[1], latent_dim, **architecture)
    model.to(device)
    init_linear_paths(model, fill_missing(flux, missing))
    rng = torch.Generator(device=device).manual_seed(seed)
    optimiser = torch.optim.Adam(param_groups(model, lr))
    history = {"train": [], "recon": [], "isometry": [], "val": []}
    keep = KeepBest(model)
    if valid is not None:
        model.eval()
        history["val"].append(_val_score(model, *valid))
        keep.offer(history["val"][-1], 0)
    augment = (noise_augment, tilt_augment)

    def train_epoch(epoch: int) -> dict:
        totals = _train_epoch(
            model, (flux, missing), optimiser, batch_size, rng, augment, isometry_weight, delta
        )
        return dict(zip(("train", "recon", "isometry"), totals, strict=True))

    run_epochs(
        model,
        epochs,
        train_epoch,
        history=history,
        validate=None if valid is None else lambda: {"val": _val_score(model, *valid)},
        keep=keep,
        progress=progress,
        desc="train_generator",
    )
    keep.restore()
    model.history = history
    model.best_epoch = keep.epoch if valid is not None else epochs
    return model.eval()


def init_linear_paths(model: IsometricAutoencoder, filled: torch.Tensor) -> None:
    """Put the mean spectrum and the top principal components into the linear paths.

    Parameters
    ----------
    model : IsometricAutoencoder
        The network to initialise (its mean buffer and linear encoder/decoder).
    filled : torch.Tensor, shape (n, n_pix)
        Training spectra with their gaps filled.
    """
    mean = filled.mean(0)
    _, _, vh = torch.linalg.svd(filled - mean, full_matrices=False)
    basis = vh[: model.latent_dim]
    with torch.no_grad():
        model.mean.copy_(mean)
        model.linear.weight.copy_(basis.T)
        model.encoder_linear.weight.copy_(basis)


def param_groups(model: IsometricAutoencoder, lr: float) -> list[dict]:
    r"""Adam groups: the linear paths step ``lr / sqrt(n_pix)``, the size of their entries.

    Adam's steps are about ``lr`` per entry whatever the entry's scale; entries of
    an orthonormal :math:`D \times L` basis are about :math:`1/\sqrt D`, so the
    full ``lr`` would scramble the PCA start within a few steps.
    """
    linear = [model.linear.weight, model.encoder_linear.weight]
    ids = {id(p) for p in linear}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": linear, "lr": lr / math.sqrt(model.n_pix)}]


def _train_epoch(model, data, optimiser, batch_size, rng, augment, weight, delta):
    """One pass in random order: mean total loss, per-pixel MSE and isometry term."""
    flux, missing = data
    sums = np.zeros(3)
    order = torch.randperm(flux.shape[0], generator=rng, device=rng.device).to(flux.device)
    for index in order.split(batch_size):
        target, gone = _augment(flux[index], missing[index], augment[1], rng)
        noisy = _add_noise(target, augment[0], rng)
        recon, z = model(noisy, gone)
        recon_term = reconstruction_loss(recon, target, gone)
        iso_term = isometry_loss(model.generate, z.detach(), delta, generator=rng)
        loss = recon_term + weight * iso_term
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        terms = [float(t.detach()) for t in (loss, recon_term / flux.shape[1], iso_term)]
        sums += np.array(terms) * index.numel()
    return (sums / flux.shape[0]).tolist()


def _augment(flux, missing, tilt, rng):
    """Random linear tilt, then division by the new median of the observed pixels."""
    if tilt == 0:
        return flux, missing
    slope = (torch.rand(flux.shape[0], 1, generator=rng, device=rng.device) * 2 - 1) * tilt
    x = torch.linspace(-1.0, 1.0, flux.shape[1], device=flux.device)
    tilted = flux * (1 + slope.to(flux.device) * x)
    level = torch.where(missing, torch.nan, tilted).nanmedian(dim=1, keepdim=True).values
    return tilted / level, missing


def _add_noise(flux, noise, rng):
    if noise == 0:
        return flux
    scale = torch.rand(flux.shape[0], 1, generator=rng, device=rng.device) * noise
    draw = torch.randn(flux.shape, generator=rng, device=rng.device)
    return flux + (scale * draw).to(flux.device)


def _val_score(model, flux, missing, chunk: int = 256) -> float:
    """Median over spectra of the per-pixel MSE of ``G(E(y))`` on observed pixels."""
    scores = []
    with torch.no_grad():
        for index in torch.arange(flux.shape[0], device=flux.device).split(chunk):
            recon, _ = model(flux[index], missing[index])
            err = torch.where(missing[index], 0.0, recon - torch.nan_to_num(flux[index])).square()
            scores.append(err.sum(1) / (~missing[index]).sum(1).clamp(min=1))
    return float(torch.cat(scores).median())


def _fit_data(flux, missing, name: str, device):
    """Flux (float32, NaN-free at observed pixels) and the full missing mask."""
    values = torch.as_tensor(np.asarray(flux, dtype=np.float32), device=device)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_spectra, n_pix), got shape {tuple(values.shape)}")
    gone = ~torch.isfinite(values)
    if missing is not None:
        missing = np.asarray(missing)
        if missing.dtype != bool:
            raise TypeError(f"missing must be a boolean array, got {missing.dtype}")
        if missing.shape != tuple(values.shape):
            raise ValueError(f"missing has shape {missing.shape}, {name} {tuple(values.shape)}")
        gone |= torch.as_tensor(missing, device=device)
    if bool(gone.all(dim=1).any()):
        raise ValueError(f"{name} has a spectrum with no observed pixel")
    return torch.where(gone, 0.0, values), gone


def _check_settings(epochs, batch_size, lr, seed, weight, noise, tilt) -> None:
    _check_int(epochs, "epochs")
    _check_int(batch_size, "batch_size")
    for name, value, high in (
        ("lr", lr, math.inf),
        ("isometry_weight", weight, math.inf),
        ("noise_augment", noise, math.inf),
        ("tilt_augment", tilt, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < high:
            raise ValueError(f"{name} must be a finite number in [0, {high}), got {value!r}")
    if lr == 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
