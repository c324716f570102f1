"""Real-data loaders: stellar libraries (MILES), the ESO transmission, the night sky.

The package ships compact copies of the ESO transmission and the Paranal night sky
(:func:`load_transmission`, :func:`load_sky`) and eight MILES example spectra
(:func:`load_examples`).  The full libraries live in one data folder (see
:func:`data_dir`); where that folder is absent, :func:`load_library` builds the MILES
library from the PyPI package that distributes it (``sdss-mangadap``) into the user
cache, once.

Every stellar library is read from one multi-extension FITS file in the *library
layout*: ``FLUX`` (``n_star x n_pix``), ``WAVE`` (``n_pix``, Angstrom), ``MASK``
(1 = bad) and ``PARAMS`` (one table row per spectrum), see :class:`Library`.
"""

from .atmosphere import SkySpectrum, Transmission, load_sky, load_transmission
from .library import SPLITS, Library, load_examples
from .miles import download_miles, load_library
from .paths import DATA_ENV, data_dir, default_cache_dir

__all__ = [
    "DATA_ENV",
    "SPLITS",
    "Library",
    "Transmission",
    "SkySpectrum",
    "data_dir",
    "default_cache_dir",
    "load_library",
    "load_examples",
    "download_miles",
    "load_transmission",
    "load_sky",
]
