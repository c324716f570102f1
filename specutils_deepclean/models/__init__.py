"""The package's models and the fixed registry of the classes a model file may name.

Importing this package never imports torch: the model classes are imported the
first time one is used (``from specutils_deepclean.models import PCADenoiser``),
and the ASDF converters look classes up in ``MODEL_REGISTRY``, a fixed
mapping written in the source, never taken from a file.
"""

import importlib

__all__ = [
    "MODEL_REGISTRY",
    "model_class",
    "registry_name",
    "DeepCleanModel",
    "PCADenoiser",
    "KaraokeVAE",
    "ConvDenoisingAutoencoder",
    "Denoiser",
]

#: Name written in a model file's ``class`` field -> ``"module:Class"`` of the model.
#: A model file can only name a class listed here.
MODEL_REGISTRY = {
    "PCADenoiser": "specutils_deepclean.models.baselines:PCADenoiser",
    "KaraokeVAE": "specutils_deepclean.models.karaoke:KaraokeVAE",
    "ConvDenoisingAutoencoder": "specutils_deepclean.models.cdae:ConvDenoisingAutoencoder",
    "Denoiser": "specutils_deepclean.models.denoiser:Denoiser",
}

_LAZY = {
    "DeepCleanModel": "specutils_deepclean.models.base",
    "PCADenoiser": "specutils_deepclean.models.baselines",
    "KaraokeVAE": "specutils_deepclean.models.karaoke",
    "ConvDenoisingAutoencoder": "specutils_deepclean.models.cdae",
    "Denoiser": "specutils_deepclean.models.denoiser",
}


def model_class(name: str) -> type:
    """Return the model class registered under ``name``.

    Parameters
    ----------
    name : str
        A key of ``MODEL_REGISTRY``.

    Returns
    -------
    type
        The class (a subclass of `~specutils_deepclean.models.base.DeepCleanModel`).

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the registered names.

    Examples
    --------
    >>> from specutils_deepclean.models import model_class
    >>> model_class("PCADenoiser").__name__
    'PCADenoiser'
    """
    if not isinstance(name, str) or name not in MODEL_REGISTRY:
        known = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(f"unknown model class {name!r}; known classes: {known}")
    module, _, attr = MODEL_REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def registry_name(cls: type) -> str:
    """Return the registry name of a model class.

    Parameters
    ----------
    cls : type
        A model class.

    Returns
    -------
    str
        Its key in ``MODEL_REGISTRY``.

    Raises
    ------
    TypeError
        If the class is not registered (it could not be read back from a file).
    """
    path = f"{cls.__module__}:{cls.__qualname__}"
    for name, registered in MODEL_REGISTRY.items():
        if registered == path:
            return name
    raise TypeError(
        f"model class {path} is not in specutils_deepclean.models.MODEL_REGISTRY, "
        "so a file written from it could not be loaded"
    )


def __getattr__(name):
    # Lazy model classes: they import torch, this package must not.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specutils_deepclean.models' has no attribute {name!r}")
