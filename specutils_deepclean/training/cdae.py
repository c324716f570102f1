r"""Training the convolutional denoising autoencoder baseline (Kang et al., Section 4).

`train_cdae` observes the training stars afresh every epoch through the observation
simulator and fits :math:`G(E(y))` to the clean truth; the epochs run through
:func:`~specutils_deepclean.training.loop.run_epochs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch

from ..models.cdae import _HISTORY_PREFIX, ConvDenoisingAutoencoder
from ..models.layers import fill_missing
from ..simulate import GAP_PLACES, GAP_WIDTHS
from .generator import init_linear_paths, param_groups, reconstruction_loss
from .loop import KeepBest, check_seed, resolve_device, run_epochs

__all__ = ["train_cdae"]


def train_cdae(
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
        Show a progress bar with the losses (tqdm, when installed).
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
    >>> model = train_cdae(truth, simulator=Simulator(wave, "air"), latent_dim=2, epochs=2,
    ...                    gaps=(8,), channels=2, bottleneck_length=8, hidden=8, block=4,
    ...                    device="cpu")
    >>> len(model.history["train"]), model.reconstruct(truth).shape
    (2, (16, 64))
    """
    _check_settings(epochs, batch_size, lr, snr_range, zero_impute)
    gap_widths = _gap_widths(gaps, simulator.wave.size)
    device = resolve_device(device)
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
    order_rng = torch.Generator().manual_seed(check_seed(seed))
    history = {"train": [], "val": []}
    keep = KeepBest(model)
    if valid is not None:
        model.eval()
        history["val"].append(_val_score(model, *valid))
        keep.offer(history["val"][-1], 0)

    def train_epoch(epoch: int) -> dict:
        data = _simulate(simulator, truth, snr_range, sim_seeds[epoch], gap_widths)
        return {"train": _train_epoch(model, data, optimiser, batch_size, order_rng)}

    run_epochs(
        model,
        epochs,
        train_epoch,
        history=history,
        validate=None if valid is None else lambda: {"val": _val_score(model, *valid)},
        keep=keep,
        progress=progress,
        desc="train_cdae",
    )
    keep.restore()
    model.extra = {
        **model.extra,
        **{_HISTORY_PREFIX + key: np.asarray(value, float) for key, value in history.items()},
    }
    model.best_epoch = keep.epoch if valid is not None else epochs
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


def _val_score(model, flux, missing, truth, chunk: int = 256) -> float:
    """Median over spectra of the MSE against the truth on its finite pixels."""
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
