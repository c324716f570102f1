r"""Training a NoiseFlow by maximum likelihood: `train_noiseflow`.

The loss is the negative masked log-likelihood of Eq. 15 per counted pixel
(`~specutils_deepclean.models.noiseflow.NoiseFlowDistribution.log_prob_pixels`);
the epochs run through :func:`~specutils_deepclean.training.loop.run_epochs`.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

from ..models.noiseflow import _MAD_TO_STD, NoiseFlow, _check_int, counted_pixels
from .loop import KeepBest, check_seed, resolve_device, run_epochs

__all__ = ["train_noiseflow"]


def train_noiseflow(
    residuals,
    sigma=None,
    missing=None,
    *,
    context: int = 8,
    channels: int = 16,
    hidden=(16,),
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device=None,
    val=None,
) -> NoiseFlow:
    r"""Train a `NoiseFlow` on noise residuals by maximum likelihood.

    The loss is the negative masked log-likelihood (Eq. 15) per counted pixel,
    minimised with Adam. The flow is whitened when ``sigma`` is given. Its
    ``scale`` is first set to the robust standard deviation (1.4826 MAD) of the
    observed (whitened) residuals. Initial weights and batch order come from
    ``seed`` only (the global torch random state is left untouched), so a run
    on the CPU is reproducible exactly.

    Parameters
    ----------
    residuals : array_like, shape ``(n, n_pix)``
        Noise residuals :math:`y - s` (e.g. simulated observations minus truth).
        Non-finite values are missing.
    sigma : array_like, shape ``(n, n_pix)``, optional
        Their per-pixel standard deviations: trains a whitened flow.
    missing : array_like of bool, shape ``(n, n_pix)``, optional
        True where a residual is missing.
    context, channels, hidden
        Architecture, as in `NoiseFlow`.
    epochs : int, optional
        Passes over the residuals.
    batch_size : int, optional
        Spectra per optimisation step.
    lr : float, optional
        Adam learning rate.
    seed : int, optional
        Seed of the initial weights and of the batch order.
    device : str or `torch.device`, optional
        Where to train (default: CUDA if available, else the CPU).
    val : tuple, optional
        Validation data ``(residuals, sigma, missing)`` (``sigma`` given exactly
        when it is for training; ``missing`` may be None). When given, the
        weights of the epoch with the lowest validation loss are kept.

    Returns
    -------
    NoiseFlow
        In eval mode on ``device``, with ``history`` (``{"train": [...],
        "val": [...]}``, loss per counted pixel per epoch) and ``best_epoch``.

    Raises
    ------
    TypeError
        If ``missing`` is not boolean.
    ValueError
        If the data or settings are bad (shapes, non-positive sigma, no counted
        pixel, non-positive epochs, batch size or learning rate).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> eps = rng.normal(0.0, 0.1, (64, 48))
    >>> flow = train_noiseflow(eps, context=3, channels=4, hidden=[4], epochs=2, device="cpu")
    >>> len(flow.history["train"])
    2
    """
    _check_settings(epochs, batch_size, lr, seed)
    device = resolve_device(device)
    train = _fit_data(residuals, sigma, missing, "residuals", device)
    valid = None
    if val is not None:
        if not isinstance(val, tuple) or len(val) != 3:
            raise ValueError("val must be a tuple (residuals, sigma, missing)")
        if (val[1] is None) != (sigma is None):
            raise ValueError("val must give sigma exactly when the training data do")
        valid = _fit_data(*val, "val residuals", device)
        if valid[0].shape[1] != train[0].shape[1]:
            raise ValueError(
                f"val residuals have {valid[0].shape[1]} pixels, training ones {train[0].shape[1]}"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = NoiseFlow(context, channels, hidden, whitened=sigma is not None)
    flow.to(device)
    flow.scale.fill_(_robust_scale(*train))
    _check_counted(flow, train, "residuals")
    history = {"train": [], "val": []}
    keep = KeepBest(flow, epoch=epochs, initial=True)
    optimiser = torch.optim.Adam(flow.parameters(), lr=lr)
    order_rng = torch.Generator().manual_seed(seed)

    def validate() -> dict:
        with torch.no_grad():
            return {"val": _mean_nll(flow, valid)}

    run_epochs(
        flow,
        epochs,
        lambda epoch: {"train": _train_epoch(flow, train, optimiser, batch_size, order_rng)},
        history=history,
        validate=None if valid is None else validate,
        keep=keep,
    )
    if valid is not None:
        keep.restore()
    flow.history = history
    # best_epoch counts from 0 here (the epoch's index), from 1 in the other trainers
    flow.best_epoch = keep.epoch - 1
    return flow.eval()


def _train_epoch(flow, data, optimiser, batch_size, order_rng) -> float:
    """One pass in random order; returns the mean loss per counted pixel."""
    total, count = 0.0, 0
    order = torch.randperm(data[0].shape[0], generator=order_rng).to(data[0].device)
    for index in order.split(batch_size):
        log_prob, counted = _batch_log_prob(flow, data, index)
        n_counted = int(counted.sum())
        if n_counted == 0:
            continue
        loss = -log_prob.sum() / n_counted
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * n_counted
        count += n_counted
    return total / count


def _mean_nll(flow, data, chunk: int = 1024) -> float:
    total, count = 0.0, 0
    for index in torch.arange(data[0].shape[0], device=data[0].device).split(chunk):
        log_prob, counted = _batch_log_prob(flow, data, index)
        total -= float(log_prob.sum())
        count += int(counted.sum())
    return total / max(count, 1)


def _batch_log_prob(flow, data, index):
    eps, sigma, missing = data
    if sigma is None:
        dist = flow(torch.zeros(eps.shape[1], device=eps.device))
    else:
        dist = flow(sigma=sigma[index])
    return dist.log_prob_pixels(eps[index], missing[index])


def _fit_data(residuals, sigma, missing, name: str, device):
    """Residuals, sigma (or None) and the full missing mask as tensors on ``device``."""
    eps = torch.as_tensor(np.asarray(residuals, dtype=np.float32), device=device)
    if eps.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_spectra, n_pix), got shape {tuple(eps.shape)}")
    gone = ~torch.isfinite(eps)
    if sigma is not None:
        sigma = torch.as_tensor(np.asarray(sigma, dtype=np.float32), device=device)
        if sigma.shape != eps.shape:
            raise ValueError(
                f"sigma has shape {tuple(sigma.shape)}, {name} have {tuple(eps.shape)}"
            )
        gone |= ~torch.isfinite(sigma)
        if bool(((sigma <= 0) & ~gone).any()):
            raise ValueError("sigma must be positive at every observed pixel")
    if missing is not None:
        missing = np.asarray(missing)
        if missing.dtype != bool:
            raise TypeError(f"missing must be a boolean array, got {missing.dtype}")
        if missing.shape != tuple(eps.shape):
            raise ValueError(f"missing has shape {missing.shape}, {name} have {tuple(eps.shape)}")
        gone |= torch.as_tensor(missing, device=device)
    return eps, sigma, gone


def _robust_scale(eps, sigma, missing) -> float:
    """1.4826 times the MAD of the observed (whitened) residuals."""
    u = eps if sigma is None else eps / sigma
    u = u[~missing]
    if u.numel() == 0:
        raise ValueError("the residuals have no observed pixel")
    scale = _MAD_TO_STD * float((u - u.median()).abs().median())
    if not scale > 0:
        scale = float(u.std()) if u.numel() > 1 else 0.0
    if not scale > 0:
        raise ValueError("the residuals are constant: their scale is zero")
    return scale


def _check_counted(flow, data, name: str) -> None:
    if data[0].shape[1] <= flow.context:
        raise ValueError(
            f"{name} have {data[0].shape[1]} pixels, too few for a context of {flow.context}"
        )
    if not bool(counted_pixels(data[2], flow.context).any()):
        raise ValueError(f"no pixel of the {name} counts: too many are missing")


def _check_settings(epochs, batch_size, lr, seed) -> None:
    _check_int(epochs, "epochs")
    _check_int(batch_size, "batch_size")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    check_seed(seed)
