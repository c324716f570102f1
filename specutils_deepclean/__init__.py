"""Deep-model cleaning of stellar spectra for specutils.

Importing the package does exactly two global things (see
:mod:`specutils_deepclean._accessor`): it attaches the ``deepclean`` accessor to
`~specutils.Spectrum`, and it adds the package's manipulation functions to the
:mod:`specutils.manipulation` namespace.  It never imports torch: the models are
imported when they are first used.
"""

from ._accessor import DeepCleanAccessor, register_manipulation, registered_manipulations
from .manipulation import denoise, remove_tellurics
from .provenance import package_version

__version__ = package_version()

register_manipulation(denoise)
register_manipulation(remove_tellurics)

__all__ = [
    "__version__",
    "DeepCleanAccessor",
    "register_manipulation",
    "registered_manipulations",
    "denoise",
    "remove_tellurics",
    "save_model",
    "load_model",
]

_LAZY = {
    "save_model": "specutils_deepclean.io.models",
    "load_model": "specutils_deepclean.io.models",
}


def __getattr__(name):
    # Lazy public names: the model I/O imports torch, the package itself must not.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specutils_deepclean' has no attribute {name!r}")
