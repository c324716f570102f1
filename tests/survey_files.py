"""A mock survey of spectrum files made from the shipped example stars (for the tests)."""

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum

FLUX_UNIT = 1e-17 * u.erg / (u.s * u.cm**2 * u.AA)


def write_survey(folder, n, seed=0, snr=30.0):
    """``n`` noisy copies of the shipped example stars as ``tabular-fits`` files."""
    from specutils_deepclean.datasets import load_examples

    library = load_examples()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        truth = library.flux[i % len(library)]
        truth = truth / np.nanmedian(truth)
        sigma = np.abs(truth) / snr + 1e-3
        flux = truth + sigma * rng.normal(size=truth.shape)
        mask = ~np.isfinite(flux)
        header = fits.Header({"WAVEMED": library.medium, "OBJECT": f"star{i}"})
        spectrum = Spectrum(
            flux=np.nan_to_num(flux) * FLUX_UNIT,
            spectral_axis=library.wavelength,
            uncertainty=StdDevUncertainty(sigma * FLUX_UNIT),
            mask=mask,
            meta={"header": header},
        )
        path = folder / f"star{i:03d}.fits"
        spectrum.write(path, format="tabular-fits")
        paths.append(path)
    return paths
