"""The one training loop: epochs, keep-best on validation, seeding, checkpoints.

Every trainer of :mod:`specutils_deepclean.training` runs its epochs through
`run_epochs`: per epoch it puts the model in training mode, runs the trainer's
``train_epoch(epoch)``, then (with validation data) evaluation mode and
``validate()``, appends both records to the history, offers the validation score to
a `KeepBest`, and calls the trainer's ``after_epoch`` (a checkpoint).  Randomness
comes from explicit generators only (`torch.Generator`,
`numpy.random.default_rng`); the global random states are left as they were.
Importing this module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral

__all__ = [
    "KeepBest",
    "check_seed",
    "epoch_range",
    "history_extra",
    "load_checkpoint",
    "optimizer_to",
    "resolve_device",
    "run_epochs",
    "save_checkpoint",
]


def resolve_device(device):
    """``device`` as a `torch.device`; None means CUDA when available, else the CPU."""
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def check_seed(seed) -> int:
    """The seed as an int; ValueError unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class KeepBest:
    """The weights of the epoch with the lowest validation score seen so far.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained.
    epoch : int
        The epoch reported when no score was ever offered.
    initial : bool
        Snapshot the current weights now (restored when no score beats infinity).
    """

    def __init__(self, model, *, epoch: int = 0, initial: bool = False):
        self.model = model
        self.score = math.inf
        self.epoch = epoch
        self.state = self._snapshot() if initial else None

    def _snapshot(self) -> dict:
        return {key: value.detach().cpu().clone() for key, value in self.model.state_dict().items()}

    def offer(self, score: float, epoch: int) -> bool:
        """Keep the current weights when ``score`` is below the best; True when kept."""
        if score < self.score:
            self.score, self.epoch, self.state = score, epoch, self._snapshot()
            return True
        return False

    def restore(self) -> None:
        """Load the kept weights into the model (nothing when none were kept)."""
        if self.state is not None:
            self.model.load_state_dict(self.state)


def epoch_range(start: int, stop: int, progress: bool, desc: str):
    """``range(start, stop)``, wrapped in a tqdm bar when ``progress`` and tqdm is installed."""
    epochs = range(start, stop)
    if not progress:
        return epochs
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return epochs
    return tqdm(epochs, desc=desc, unit="epoch", initial=start, total=stop)


def run_epochs(
    model,
    stop: int,
    train_epoch: Callable[[int], dict],
    *,
    history: dict,
    validate: Callable[[], dict] | None = None,
    keep: KeepBest | None = None,
    keep_key: str = "val",
    start: int = 0,
    progress: bool = False,
    desc: str = "training",
    after_epoch: Callable[[int], None] | None = None,
) -> None:
    """Run the epochs from ``start`` up to ``stop - 1`` of a training.

    Parameters
    ----------
    model : torch.nn.Module
        Put in training mode before each epoch, evaluation mode before validation.
    stop : int
        One past the last epoch.
    train_epoch : callable
        ``train_epoch(epoch) -> dict`` of the epoch's training numbers.
    history : dict
        Name -> list; every number of the epoch's records is appended to its list.
    validate : callable, optional
        ``validate() -> dict`` of validation numbers.
    keep : KeepBest, optional
        Offered ``record[keep_key]`` as the score of epoch ``epoch + 1`` (the end of
        the epoch; 0 is the untrained state) when the record has it.
    keep_key : str
        The validation number that decides which weights are kept.
    start : int
        The first epoch (a resumed training).
    progress : bool
        Show a progress bar with the losses.
    desc : str
        The bar's label.
    after_epoch : callable, optional
        ``after_epoch(epoch)``, e.g. writing a checkpoint.
    """
    bar = epoch_range(start, stop, progress, desc)
    for epoch in bar:
        model.train()
        record = dict(train_epoch(epoch))
        if validate is not None:
            model.eval()
            record.update(validate())
        for key, value in record.items():
            history[key].append(value)
        if keep is not None and keep_key in record:
            keep.offer(record[keep_key], epoch + 1)
        if after_epoch is not None:
            after_epoch(epoch)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({key: f"{value:.4g}" for key, value in record.items()})


_HISTORY = "history_"
_OPTIM = "optim_"
_BEST = "best_"


def history_extra(history: dict) -> dict:
    """The history as model-file extras: ``history_<name>`` -> float array."""
    import numpy as np

    return {_HISTORY + key: np.array(values, dtype=float) for key, values in history.items()}


def save_checkpoint(path, model, optimizer, history: dict, keep: KeepBest, extra: dict) -> None:
    """Write a model file holding the model, the optimiser state, the best weights and history.

    Parameters
    ----------
    path : path
        The file (overwritten).
    model : `~specutils_deepclean.models.base.DeepCleanModel`
        The model being trained (its ``extra`` is left empty afterwards).
    optimizer : torch.optim.Optimizer
    history : dict
        Name -> list of numbers per epoch.
    keep : KeepBest
        The best weights so far.
    extra : dict
        Further arrays for the file (e.g. data the training depends on).
    """
    from ..io.models import save_model

    extra = {**history_extra(history), **extra}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            extra[f"{_OPTIM}{index}_{key}"] = value.detach().cpu().numpy()
    if keep.state is not None:
        extra.update({f"{_BEST}{k}": v.numpy() for k, v in keep.state.items()})
    model.extra = extra
    try:
        save_model(model, path, overwrite=True)
    finally:
        model.extra = {}


def load_checkpoint(path, model, optimizer, keep: KeepBest, history_keys, keep_key: str):
    """Resume from `save_checkpoint`'s file: weights, optimiser, best weights; history back.

    Parameters
    ----------
    path : path
        The checkpoint.
    model, optimizer
        Built from the same settings as the checkpointed run.
    keep : KeepBest
        Receives the best weights and their score (the lowest ``keep_key`` so far).
    history_keys : sequence of str
        The history's names.
    keep_key : str
        The validation number that decides which weights are kept.

    Returns
    -------
    history : dict
        Name -> list of numbers per epoch so far.
    extra : dict
        The checkpoint's extras (for the trainer's own checks).

    Raises
    ------
    ValueError
        If the checkpoint holds another model class, configuration or grid.
    """
    import astropy.units as u
    import numpy as np
    import torch

    from ..io.models import load_model

    saved = load_model(path)
    if type(saved) is not type(model) or saved.config != model.config:
        raise ValueError(
            f"checkpoint {path} holds a model with config {getattr(saved, 'config', None)}, "
            f"these settings build {model.config}"
        )
    if not np.array_equal(saved.wavelength.to_value(u.AA), model.wavelength.to_value(u.AA)):
        raise ValueError(f"checkpoint {path} is on a different wavelength grid")
    extra = saved.extra
    model.load_state_dict(saved.state_dict())
    history = {key: list(extra.get(_HISTORY + key, [])) for key in history_keys}
    best = {k[len(_BEST) :]: torch.from_numpy(v) for k, v in extra.items() if k.startswith(_BEST)}
    if best:
        keep.state = best
        keep.score = float(np.nanmin(history[keep_key]))
    optim = optimizer.state_dict()
    state = {}
    for key, value in extra.items():
        if key.startswith(_OPTIM):
            index, _, name = key[len(_OPTIM) :].partition("_")
            state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
    optim["state"] = state
    optimizer.load_state_dict(optim)
    return history, extra


def optimizer_to(optimizer, device) -> None:
    """Move an optimiser's state tensors (not its step counts) to ``device``."""
    for values in optimizer.state.values():
        for key, value in values.items():
            if key != "step":
                values[key] = value.to(device)
