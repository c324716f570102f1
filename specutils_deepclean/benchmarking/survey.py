"""Deprecated: the simulated survey moved to :mod:`specutils_deepclean.training.telluric_data`."""

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        name: "specutils_deepclean.training.telluric_data"
        for name in ("AIRMASS_RANGE", "SNR_RANGE", "Survey", "observe_split")
    },
)
