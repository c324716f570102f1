"""Registration of manipulation functions: ``specutils.manipulation`` and ``spec.deepclean``.

specutils has no plugin API for manipulation functions, so this module does exactly
two global things, neither of which overwrites a name that already exists:

1. it attaches one descriptor, ``deepclean``, to `~specutils.Spectrum` (and so to the
   deprecated ``Spectrum1D`` subclass), giving ``spectrum.deepclean.<name>(...)``;
2. `register_manipulation` adds a function to the :mod:`specutils.manipulation`
   namespace, where users look for specutils' own manipulation functions, and makes
   it available on the accessor.  When specutils already has a function of that name
   (a later specutils could gain a ``denoise``), it warns and adds only the accessor
   name: ``specutils.manipulation.<name>`` stays specutils' own.

Examples
--------
>>> import numpy as np
>>> import astropy.units as u
>>> from specutils import Spectrum
>>> from specutils_deepclean import register_manipulation
>>> def double_flux(spectrum, *, factor=2.0):
...     '''Multiply the flux by ``factor`` (an example function).'''
...     return Spectrum(flux=spectrum.flux * factor, spectral_axis=spectrum.spectral_axis)
>>> _ = register_manipulation(double_flux)
>>> spec = Spectrum(flux=np.ones(3) * u.Jy, spectral_axis=[1, 2, 3] * u.um)
>>> spec.deepclean.double_flux().flux
<Quantity [2., 2., 2.] Jy>
>>> import specutils.manipulation
>>> specutils.manipulation.double_flux is double_flux
True
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import specutils.manipulation
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

__all__ = ["DeepCleanAccessor", "register_manipulation", "registered_manipulations"]

_REGISTRY: dict[str, Callable] = {}


def registered_manipulations() -> dict[str, Callable]:
    """Return a copy of the name -> function mapping of registered manipulations."""
    return dict(_REGISTRY)


def register_manipulation(func: Callable | None = None, *, name: str | None = None) -> Callable:
    """Register a manipulation function with specutils and the ``deepclean`` accessor.

    Can be used as a plain call or as a decorator (with or without ``name=``).

    Parameters
    ----------
    func : callable
        A function whose first argument is a `~specutils.Spectrum` (or a list of them)
        and which returns a new `~specutils.Spectrum`.
    name : str, optional
        The public name; defaults to ``func.__name__``.

    Returns
    -------
    callable
        ``func`` itself, unchanged.

    Raises
    ------
    ValueError
        If a different function is already registered as ``name``, or ``name`` is an
        attribute of the accessor (re-registering the same function is a no-op).
    TypeError
        If ``func`` is not callable.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        If :mod:`specutils.manipulation` already has a different ``name``: it is kept,
        and ``func`` is reachable only as ``spectrum.deepclean.<name>``.
    """
    if func is None:
        return functools.partial(register_manipulation, name=name)
    if not callable(func):
        raise TypeError(f"register_manipulation needs a callable, got {type(func).__name__}")
    name = name or func.__name__
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"{name!r} is not a public Python identifier")
    if name in _REGISTRY and _REGISTRY[name] is not func:
        raise ValueError(f"a different function is already registered as {name!r}")
    if hasattr(DeepCleanAccessor, name):
        raise ValueError(f"{name!r} clashes with an attribute of the deepclean accessor")
    existing = getattr(specutils.manipulation, name, None)
    _REGISTRY[name] = func
    if existing is None:
        setattr(specutils.manipulation, name, func)
    elif existing is not func:
        warnings.warn(
            f"specutils.manipulation already has a {name!r} ({existing!r}); it is kept, "
            f"and specutils-deepclean's {name} is available as spectrum.deepclean.{name}",
            AstropyUserWarning,
            stacklevel=2,
        )
    return func


class DeepCleanAccessor:
    """The ``spectrum.deepclean`` namespace: registered functions as bound methods.

    ``spectrum.deepclean.<name>(*args, **kwargs)`` is exactly
    ``<name>(spectrum, *args, **kwargs)``.
    """

    def __init__(self, spectrum: Spectrum | None = None):
        self._spectrum = spectrum

    def __get__(self, instance, owner=None):
        # Accessed on the class (Spectrum.deepclean): return the descriptor itself so
        # that help() and Sphinx can inspect it.
        if instance is None:
            return self
        return type(self)(instance)

    def __getattr__(self, name):
        if name.startswith("_") or name not in _REGISTRY:
            raise AttributeError(
                f"no deepclean manipulation named {name!r}; registered: {sorted(_REGISTRY)}"
            )
        func = _REGISTRY[name]
        spectrum = self._spectrum
        if spectrum is None:
            return func
        return functools.update_wrapper(functools.partial(func, spectrum), func)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_REGISTRY))

    def __repr__(self):
        return f"<deepclean accessor: {', '.join(sorted(_REGISTRY)) or 'no functions registered'}>"


def _attach_accessor() -> None:
    current = Spectrum.__dict__.get("deepclean")
    if isinstance(current, DeepCleanAccessor):
        return
    if hasattr(Spectrum, "deepclean"):
        raise RuntimeError(
            "specutils.Spectrum already has a 'deepclean' attribute; not overwriting it"
        )
    Spectrum.deepclean = DeepCleanAccessor()


_attach_accessor()
