"""``remove_tellurics(mode="divide")``: the transmission floor holds on the input's axis.

The transmission is estimated on the model grid and resampled to the input's axis;
the resampling (flux-conserving, piecewise parabolic) overshoots at steep band edges,
below the floor and even below zero.  The floor used to be applied before the
resampling only: DESI spectra came back amplified 478 times or with their sign flipped.
"""

import glob
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from specutils import Spectrum, SpectrumList

from specutils_deepclean.datasets import data_dir
from specutils_deepclean.files import read_result, write_result
from specutils_deepclean.manipulation import (
    TRANSMISSION_FLOOR,
    _divide_result,
    remove_tellurics,
)
from specutils_deepclean.spectra import ModelGrid, to_model_grid

pytest.importorskip("torch")


def _assert_floor_holds(spectrum: Spectrum, result: Spectrum) -> None:
    info = result.meta["deepclean"]
    t = info["transmission"].flux.value
    divided = ~result.mask
    assert np.all(t[divided] >= TRANSMISSION_FLOOR)
    flux_in, flux_out = spectrum.flux.value, result.flux.value
    finite = np.isfinite(flux_in) & np.isfinite(flux_out)
    assert np.all(np.abs(flux_out[finite]) <= np.abs(flux_in[finite]) / TRANSMISSION_FLOOR)
    assert np.all(np.sign(flux_out[finite]) == np.sign(flux_in[finite]))
    below = info["below_floor"]
    assert below.shape == spectrum.shape and result.mask[below].all()
    assert info["transmission_floor"] == TRANSMISSION_FLOOR


def test_resampling_overshoot_below_the_floor_is_masked(tmp_path):
    """A saturated band edge, reconstruction known: T on the input axis dips below 0."""
    grid = ModelGrid(np.arange(6800.0, 7000.0, 0.9) * u.AA, "air")
    wave = np.arange(6810.0, 6990.0, 0.3)  # an input three times finer than the grid
    true_t = np.where((wave > 6880.0) & (wave < 6900.0), 0.06, 1.0)
    spectrum = Spectrum(
        flux=true_t * u.one, spectral_axis=wave * u.AA, meta={"medium": "air"}
    )
    gs = to_model_grid(spectrum, grid)
    recon = np.ones_like(gs.flux) / gs.scale[:, None]  # the star: flat, level 1
    region = np.ones(len(grid), dtype=bool)
    result = _divide_result(spectrum, gs, recon, region, 0.0, (None, None), {})
    t = result.meta["deepclean"]["transmission"].flux.value
    below = result.meta["deepclean"]["below_floor"]
    assert np.nanmin(t) < 0  # the construct overshoots below zero on the input axis
    assert below.any()
    _assert_floor_holds(spectrum, result)
    # the band's plateau (T = 0.06 >= floor) is divided: it comes back at 1
    plateau = (wave > 6884.0) & (wave < 6896.0)
    np.testing.assert_allclose(result.flux.value[plateau], 1.0, rtol=1e-6)
    # the pixels' reason survives a result file
    write_result(result, tmp_path / "result.fits")
    back = read_result(tmp_path / "result.fits").meta["deepclean"]["below_floor"]
    np.testing.assert_array_equal(back, below)


def _desi_arms():
    folder = data_dir()
    if folder is None:
        return []
    return sorted(glob.glob(str(Path(folder) / "desi" / "*.fits")))


@pytest.mark.skipif(not _desi_arms(), reason="needs the shared DESI files")
@pytest.mark.parametrize("path", _desi_arms(), ids=lambda p: Path(p).name)
def test_desi_arms_divide_within_the_floor(path):
    """The b and r arms of the shared DESI files (2-D batches of 5 fibres)."""
    reader = "DESI coadd" if Path(path).name.startswith("coadd") else "DESI spectra"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the files' units and meta
        arms = SpectrumList.read(path, format=reader)
    for spectrum in arms[:2]:  # b and r; z lies beyond the model's range
        with warnings.catch_warnings():
            # empty and sky fibres: "... spectra have no valid pixel ..."
            warnings.filterwarnings("ignore", ".* have no valid pixel on the model grid")
            result = remove_tellurics(spectrum, mode="divide", medium="vacuum")
        _assert_floor_holds(spectrum, result)
