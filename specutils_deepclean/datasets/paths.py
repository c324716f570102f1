"""Where the real data live: the data folder and the user cache."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import warnings
from pathlib import Path

from astropy.utils.exceptions import AstropyUserWarning

__all__ = [
    "DATA_ENV",
    "data_dir",
    "default_cache_dir",
]

#: Environment variable naming the real-data folder.
DATA_ENV = "SPECUTILS_DEEPCLEAN_DATA"


_DATA_FILES = {
    "miles": "miles/miles.fits",
    "transmission": "telluric/eso_transmission.fits",
    "sky": "sky/paranal_sky.fits",
}


def data_dir() -> Path | None:
    """The real-data folder, or None when there is none.

    Looked up in this order:

    1. the environment variable ``SPECUTILS_DEEPCLEAN_DATA`` (a warning if it names
       no folder, then the search goes on);
    2. ``../shared/data`` relative to the current directory or any of its parents,
       if it holds one of the data files (``miles/miles.fits``,
       ``telluric/eso_transmission.fits``, ``sky/paranal_sky.fits``).

    Returns
    -------
    pathlib.Path or None
    """
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        warnings.warn(
            f"{DATA_ENV}={env!r} is not a folder; ignored", AstropyUserWarning, stacklevel=2
        )
    cwd = Path.cwd().resolve()
    for parent in (cwd, *cwd.parents):
        candidate = parent.parent / "shared" / "data"
        if any((candidate / name).is_file() for name in _DATA_FILES.values()):
            return candidate
    return None


def default_cache_dir() -> Path:
    """The user cache folder of the package (``platformdirs.user_cache_dir``)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("specutils-deepclean"))


@contextlib.contextmanager
def _packaged_or(path: str | os.PathLike | None, resource: str):
    """The given file (it must exist), or the package's own ``resource``."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        yield path
        return
    with importlib.resources.as_file(
        importlib.resources.files("specutils_deepclean").joinpath(resource)
    ) as packaged:
        yield packaged
