"""Training every model of the package; the models themselves live in :mod:`specutils_deepclean.models`.

One verb, ``train_*``, per model family, each in its own module:

* :mod:`~specutils_deepclean.training.karaoke`: `train_karaoke` (the telluric VAE),
  its loss, velocity whitening and the reference telluric lines;
* :mod:`~specutils_deepclean.training.denoiser`: `train_denoiser` (the whole deep
  Bayesian denoiser, stage by stage) and the val-tuned steps after it;
* :mod:`~specutils_deepclean.training.generator`: `train_generator` (Eq. 10);
* :mod:`~specutils_deepclean.training.noiseflow`: `train_noiseflow` (Eq. 15);
* :mod:`~specutils_deepclean.training.kde`: `train_kde` (the per-class prior);
* :mod:`~specutils_deepclean.training.cdae`: `train_cdae` (the paper's baseline);
* :mod:`~specutils_deepclean.training.loop`: the epoch loop, keep-best on
  validation and checkpoints they all use;
* :mod:`~specutils_deepclean.training.telluric_data`: the simulated topocentric
  survey the telluric VAE trains on (and its benchmark observes).

Importing this package does not import torch: the trainers are imported when first
used (``from specutils_deepclean.training import train_karaoke`` works).
"""

import importlib

__all__ = [
    "train_cdae",
    "train_denoiser",
    "train_generator",
    "train_karaoke",
    "train_kde",
    "train_noiseflow",
]

_WHERE = {
    "train_cdae": "cdae",
    "train_denoiser": "denoiser",
    "train_generator": "generator",
    "train_karaoke": "karaoke",
    "train_kde": "kde",
    "train_noiseflow": "noiseflow",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
