"""Real survey files from the shared data through the shipped telluric model."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from specutils import Spectrum

import specutils_deepclean  # noqa: F401  (registers the accessor)
from specutils_deepclean.datasets import data_dir

pytest.importorskip("torch")


def test_float32_spectral_axis_resamples():
    """A float32 axis (as SDSS files have) resamples like a float64 one (was a crash)."""
    import astropy.units as u

    from specutils_deepclean.spectra import ModelGrid, to_model_grid

    wave = np.linspace(5000, 5100, 200)
    flux = 1 + 0.1 * np.sin(wave / 5)
    grid = ModelGrid(np.linspace(5010, 5090, 100) * u.AA, "air")
    spectra = [
        Spectrum(flux=flux * u.Jy, spectral_axis=wave.astype(dtype) * u.AA, meta={"medium": "air"})
        for dtype in (np.float64, np.float32)
    ]
    a, b = (to_model_grid(spec, grid) for spec in spectra)
    np.testing.assert_allclose(a.flux, b.flux, rtol=1e-5)


@pytest.mark.skipif(data_dir() is None, reason="needs the shared data")
def test_sdss_file_remove_tellurics():
    path = Path(data_dir()) / "sdss" / "NGC3073_SDSS_DR18.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's unit string
        spec = Spectrum.read(path, format="SDSS-III/IV spec")
    clean = spec.deepclean.remove_tellurics()
    info = clean.meta["deepclean"]
    assert info["medium"] == "vacuum"  # SDSS states VACUUM = T
    wave = spec.spectral_axis.value
    outside = wave > 7600  # beyond the model's range: unchanged but masked
    assert clean.mask[outside].all()
    np.testing.assert_array_equal(clean.flux.value[outside], spec.flux.value[outside])
    t = info["transmission"].flux.value
    # The SDSS pipeline already divides out most of the absorption (the O2 B band is
    # a ~1 % dip in this file), so no depth per band is asserted: some absorption is
    # found in the bands (water at 7170-7330 A here), and nothing above 1.
    bands = ((wave > 6860) & (wave < 6960)) | ((wave > 7160) & (wave < 7340))
    assert np.nanmin(t[bands]) < 0.99 and np.nanmax(t[~outside]) <= 1
