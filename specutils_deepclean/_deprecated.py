"""Old import paths of names that moved: they still work, with a deprecation warning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

from astropy.utils.exceptions import AstropyDeprecationWarning

__all__ = ["moved", "renamed_method"]


def moved(module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving names that moved to other modules.

    Parameters
    ----------
    module : str
        The old module (its ``__name__``).
    names : dict
        Old name -> ``"new.module"`` or ``"new.module:new_name"``.

    Returns
    -------
    callable
        ``__getattr__(name)``: the moved object, after an
        `~astropy.utils.exceptions.AstropyDeprecationWarning` naming the new place.
    """

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, new_name = names[name].partition(":")
        new_name = new_name or name
        warnings.warn(
            f"{module}.{name} moved to {target}.{new_name}; the old name will be removed",
            AstropyDeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), new_name)

    return __getattr__


def renamed_method(old: str, new: str) -> Callable:
    """A method ``old`` that calls the method ``new``, with a deprecation warning.

    Parameters
    ----------
    old, new : str
        The old and the new method names.

    Returns
    -------
    callable
        The method to put in the class body under the old name.
    """

    def method(self, *args, **kwargs):
        warnings.warn(
            f"{type(self).__name__}.{old} is now {type(self).__name__}.{new}; the old name "
            "will be removed",
            AstropyDeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, new)(*args, **kwargs)

    method.__name__ = old
    method.__doc__ = f"Deprecated: use `{new}`."
    return method
