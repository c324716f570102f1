"""Deprecated: moved to :mod:`specutils_deepclean.training.denoiser`."""

from ._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        name: "specutils_deepclean.training.denoiser"
        for name in (
            "train_denoiser",
            "calibrate_uncertainty",
            "fit_residual_basis",
            "fit_continuum_term",
            "RESIDUAL_COMPONENTS",
            "CONTINUUM_DEGREES",
            "CONTINUUM_SIGMAS",
        )
    },
)
