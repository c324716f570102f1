"""Deprecated: fitting the KDE prior moved to :mod:`specutils_deepclean.training.kde`.

``fit_kde``, ``held_out_log_likelihood``, ``scott_factor``, ``silverman_factor`` and
``CV_GRID`` are served from there (``fit_kde`` is now
`~specutils_deepclean.training.kde.train_kde`).  ``evaluate``, ``sample``,
``class_posterior`` and ``ood_score`` were NumPy copies of the prior's own methods
(`~specutils_deepclean.models.prior.KDEPrior.log_prob`, ``sample``, ``ood_score``
and `scipy.special.softmax`); they still work here, with a deprecation warning.
"""

import warnings

import numpy as np
from astropy.utils.exceptions import AstropyDeprecationWarning
from scipy.special import softmax

from ._deprecated import moved

_MOVED = moved(
    __name__,
    {
        "fit_kde": "specutils_deepclean.training.kde:train_kde",
        "held_out_log_likelihood": "specutils_deepclean.training.kde",
        "scott_factor": "specutils_deepclean.training.kde",
        "silverman_factor": "specutils_deepclean.training.kde",
        "CV_GRID": "specutils_deepclean.training.kde",
    },
)
_INSTEAD = {
    "evaluate": "KDEPrior.log_prob",
    "sample": "KDEPrior.sample",
    "class_posterior": "scipy.special.softmax",
    "ood_score": "KDEPrior.ood_score",
}


def __getattr__(name: str):
    if name in _INSTEAD:
        warnings.warn(
            f"{__name__}.{name} is deprecated: use {_INSTEAD[name]} instead",
            AstropyDeprecationWarning,
            stacklevel=2,
        )
        return globals()["_" + name]
    return _MOVED(name)


def _evaluate(prior, z) -> np.ndarray:
    r"""Log densities :math:`\log p(z \mid C)` of latents under every class of a prior.

    Parameters
    ----------
    prior : `~specutils_deepclean.models.prior.KDEPrior`
    z : array_like, shape (..., L)

    Returns
    -------
    `~numpy.ndarray`, shape (..., K), float64; column k is class ``prior.class_names[k]``.

    """
    import torch

    with torch.inference_mode():
        return prior.log_prob(_to_tensor(prior, z)).cpu().numpy().astype(np.float64)


def _sample(prior, n: int, cls: int | str, seed: int | None = None) -> np.ndarray:
    """Draw latents from one class of a prior.

    Parameters
    ----------
    prior : `~specutils_deepclean.models.prior.KDEPrior`
    n : int
        Number of draws.
    cls : int or str
        Class index or name (a merged class's name gives its target).
    seed : int, optional
        Seed of the `torch.Generator` used (same seed, same draws on one device).

    Returns
    -------
    `~numpy.ndarray`, shape (n, L), float64

    """
    import torch

    generator = torch.Generator(device=prior._loc.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    with torch.inference_mode():
        return prior.sample(n, cls, generator=generator).cpu().numpy().astype(np.float64)


def _class_posterior(log_joint, axis: int = -1) -> np.ndarray:
    r"""Normalise log joint densities over classes into posterior probabilities.

    :math:`p(C \mid y) = \exp \ell_C / \sum_{C'} \exp \ell_{C'}` for
    :math:`\ell_C = \log p(y \mid C) + \log p(C)` (computed stably); classes at
    :math:`-\infty` get 0.

    Parameters
    ----------
    log_joint : array_like
        Log joint density per class along ``axis``.
    axis : int
        The class axis.

    Returns
    -------
    `~numpy.ndarray`, same shape, summing to 1 along ``axis``.

    """
    log_joint = np.asarray(log_joint, dtype=np.float64)
    if np.any(np.isnan(log_joint)) or np.any(log_joint == np.inf):
        raise ValueError("log_joint must not contain NaN or +inf")
    if np.any(np.all(log_joint == -np.inf, axis=axis)):
        raise ValueError("every class has log density -inf: no posterior")
    return softmax(log_joint, axis=axis)


def _ood_score(prior, z, reference_latents=None) -> np.ndarray:
    r"""How usual a latent vector is under the prior, compared with reference stars.

    With :math:`s(z) = \max_C \log p(z \mid C)`, the score of ``z`` is the share of
    reference stars :math:`r` with :math:`s(r) \le s(z)`: a tail probability, about
    uniform on [0, 1] for stars like the reference ones and near 0 for a latent
    unlike any of them (a p-value of the hypothesis "z is a star like these").
    The default reference is the prior's training stars, each scored with itself
    left out of its class's KDE so that its score is distributed like a new
    star's; give ``reference_latents`` (e.g. validation latents, which the prior
    has not seen) to use others.

    Parameters
    ----------
    prior : `~specutils_deepclean.models.prior.KDEPrior`
    z : array_like, shape (..., L)
    reference_latents : array_like, shape (M, L), optional

    Returns
    -------
    `~numpy.ndarray`, shape (...), values in [0, 1].

    """
    import torch

    with torch.inference_mode():
        reference = None
        if reference_latents is not None:
            reference_latents = _to_tensor(prior, reference_latents)
            if reference_latents.ndim != 2 or reference_latents.shape[0] == 0:
                raise ValueError("reference_latents must be a non-empty 2-D array (M, L)")
            reference = prior.score(reference_latents)
        return prior.ood_score(_to_tensor(prior, z), reference).cpu().numpy().astype(np.float64)


def _to_tensor(prior, z):
    import torch

    z = np.asarray(z, dtype=np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError("latents must be finite (found NaN or inf)")
    return torch.as_tensor(z, dtype=prior._loc.dtype, device=prior._loc.device)
