"""Skip marks for the tests that need files the package does not ship.

The package ships what the demo, the simulator and most tests need (the MILES
example set, compact copies of the sky and the transmission).  The full MILES library
and the survey files come from the data folder (``SPECUTILS_DEEPCLEAN_DATA`` or
``../shared/data``); MILES also from the user cache, where
``specutils_deepclean.datasets.download_miles()`` (or a ``--remote-data`` test run)
puts it.
"""

from pathlib import Path

import pytest

from specutils_deepclean.datasets import DATA_ENV, data_dir, default_cache_dir


def data_file(relative: str) -> Path | None:
    """``relative`` in the data folder, or None when there is no such file."""
    root = data_dir()
    if root is None or not (root / relative).is_file():
        return None
    return root / relative


def miles_file() -> Path | None:
    """The full MILES library file (data folder, then user cache), or None."""
    found = data_file("miles/miles.fits")
    if found is None and (default_cache_dir() / "miles.fits").is_file():
        found = default_cache_dir() / "miles.fits"
    return found


def needs_data_file(relative: str):
    """Skip unless the data folder holds ``relative``."""
    return pytest.mark.skipif(
        data_file(relative) is None,
        reason=f"needs {relative} of the data folder (set {DATA_ENV} to it)",
    )


needs_miles = pytest.mark.skipif(
    miles_file() is None,
    reason=f"needs the full MILES library: miles/miles.fits in the data folder (set "
    f"{DATA_ENV}) or in the user cache (specutils_deepclean.datasets.download_miles())",
)
