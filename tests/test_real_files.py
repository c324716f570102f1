"""Real survey files from the shared data through the shipped telluric model."""

import contextlib
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


def _read_sdss():
    path = Path(data_dir()) / "sdss" / "NGC3073_SDSS_DR18.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's unit string
        return path, Spectrum.read(path, format="SDSS-III/IV spec")


def _valid_in_range(spec) -> np.ndarray:
    """The file's valid pixels whose bins lie inside the model grid (in air)."""
    import astropy.units as u
    from specutils.utils.wcs_utils import vac_to_air

    from specutils_deepclean.io.models import load_model

    wave = load_model("karaoke-miles").wavelength.to_value(u.AA)
    air = vac_to_air(spec.spectral_axis.to(u.AA).astype(float)).value
    inside = (air > wave[0] + 2) & (air < wave[-1] - 2)
    return inside & ~spec.mask & np.isfinite(spec.flux.value)


def _lost(spec, result) -> int:
    """Valid in-range input pixels that come back masked or non-finite."""
    bad = np.asarray(result.mask, dtype=bool) | ~np.isfinite(result.flux.value)
    return int(np.count_nonzero(bad & _valid_in_range(spec)))


@contextlib.contextmanager
def _expected_galaxy_warnings():
    """The SDSS file is a galaxy: the denoiser may find it unlike every star, and
    its MAP, looking for a star, may not converge."""
    from specutils_deepclean.manipulation import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "spectra .* are flagged as unlike the model.s stars")
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.mark.skipif(data_dir() is None, reason="needs the shared data")
@pytest.mark.parametrize("task", ["divide", "reconstruct", "denoise"])
def test_sdss_float32_axis_loses_no_pixel(task):
    """specutils reads SDSS files with a float32 axis: the result is the float64 one."""
    from specutils_deepclean import denoise, remove_tellurics

    _, spec = _read_sdss()
    assert spec.spectral_axis.dtype == np.float32
    as64 = Spectrum(
        flux=spec.flux,
        spectral_axis=spec.spectral_axis.astype(np.float64),
        uncertainty=spec.uncertainty,
        mask=spec.mask,
        meta=spec.meta,
    )
    valid = int(np.count_nonzero(_valid_in_range(spec)))
    assert valid > 2800
    results = []
    for item in (spec, as64):
        if task == "denoise":
            with _expected_galaxy_warnings():
                results.append(denoise(item))
        else:
            results.append(remove_tellurics(item, mode=task))
    typed, native = results
    assert _lost(spec, typed) <= 0.01 * valid
    np.testing.assert_array_equal(typed.mask, native.mask)
    np.testing.assert_allclose(typed.flux.value, native.flux.value, rtol=1e-5)


@pytest.mark.skipif(data_dir() is None, reason="needs the shared data")
@pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")  # the file's unit string
@pytest.mark.parametrize("task", ["denoise", "detelluric"])
def test_sdss_file_through_the_cli_loses_no_pixel(task, tmp_path, capsys):
    from specutils_deepclean import cli
    from specutils_deepclean.files import read_result

    path, spec = _read_sdss()
    argv = [task, str(path), "-o", str(tmp_path), "--format", "SDSS-III/IV spec", "--quiet"]
    assert cli.main(argv) == 0
    (result_file,) = tmp_path.glob("*.fits")
    result = read_result(result_file)
    valid = int(np.count_nonzero(_valid_in_range(spec)))
    assert _lost(spec, result) <= 0.01 * valid
    assert "done 1" in capsys.readouterr().out
