"""Any numeric type in, the float64 answer out.

A spectrum whose spectral axis, flux or uncertainty is float32, float16 or big-endian
holds numbers that float64 holds exactly: cleaning it must give the result of the same
numbers in native float64 (to float32 precision).  The float32 axes of SDSS files
lost a quarter of their pixels: the coverage test ran in float32, where its rounding
allowance vanishes.
"""

import functools

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import InverseVariance, StdDevUncertainty
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from specutils import Spectrum

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.doppler import doppler_shift
from specutils_deepclean.manipulation import denoise, remove_tellurics
from specutils_deepclean.spectra import (
    ModelGrid,
    from_model_grid,
    grid_to_input,
    to_model_grid,
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLAM = u.erg / u.s / u.cm**2 / u.AA
DTYPES = [np.dtype(f"{order}{kind}") for kind in ("f8", "f4", "f2") for order in "<>"]


def _as(values, dtype):
    """``values`` in ``dtype`` (any byte order) and the same numbers in native float64."""
    typed = np.asarray(values).astype(dtype)
    return typed, typed.astype(np.float64)


def _spectrum(wave, flux, uncertainty, mask):
    return Spectrum(
        flux=flux * FLAM,
        spectral_axis=wave * u.AA,
        uncertainty=uncertainty,
        mask=mask,
        meta={"medium": "air"},
    )


@functools.cache
def _grid():
    # a model grid at the SDSS sampling near 7000 A (1.6 A pixels)
    return ModelGrid(np.arange(6000.0, 7000.0, 1.6) * u.AA, "air")


@SETTINGS
@given(
    axis=st.sampled_from(DTYPES),
    flux=st.sampled_from(DTYPES),
    sigma=st.sampled_from(DTYPES),
    step=st.sampled_from([0.8, 1.7, 8.0]),
    start=st.floats(5900.0, 6100.0),
    gap=st.integers(0, 30),
    inverse=st.booleans(),
)
def test_spectra_layer_any_dtype_gives_the_float64_result(
    axis, flux, sigma, step, start, gap, inverse
):
    """to_model_grid, from_model_grid and grid_to_input as for native float64 arrays."""
    if axis.kind == "f" and axis.itemsize == 2:
        step = 8.0  # float16 holds wavelengths near 6000 A to 4 A
    n = int(1100 / step)
    wave64 = start + step * np.arange(n)
    rng = np.random.default_rng(gap)
    values = 1.0 + 0.2 * np.sin(wave64 / 7.0) + 0.01 * rng.normal(size=n)
    noise = 0.02 + 0.01 * rng.random(n)
    mask = np.zeros(n, dtype=bool)
    mask[n // 3 : n // 3 + gap] = True
    kind = InverseVariance if inverse else StdDevUncertainty
    wave_t, wave_r = _as(wave64, axis)
    flux_t, flux_r = _as(values, flux)
    unc_t, unc_r = _as(noise**-2 if inverse else noise, sigma)
    typed = _spectrum(wave_t, flux_t, kind(unc_t), mask)
    native = _spectrum(wave_r, flux_r, kind(unc_r), mask)
    grid = _grid()
    a, b = (to_model_grid(s, grid) for s in (typed, native))
    np.testing.assert_array_equal(a.missing, b.missing)
    np.testing.assert_allclose(a.flux, b.flux, rtol=1e-6)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-6)
    model = np.where(b.missing, np.nan, 1.0 + 0.1 * np.cos(grid.wave_aa / 3.0))
    back_a, back_b = (from_model_grid(gs, model, 0.05 * model) for gs in (a, b))
    np.testing.assert_array_equal(back_a.mask, back_b.mask)
    np.testing.assert_allclose(back_a.flux.value, back_b.flux.value, rtol=1e-6)
    np.testing.assert_allclose(back_a.uncertainty.array, back_b.uncertainty.array, rtol=1e-6)
    full = np.broadcast_to(1.0 + 0.1 * np.cos(grid.wave_aa / 3.0), model.shape)
    (va, ua), (vb, ub) = (grid_to_input(gs, full) for gs in (a, b))
    np.testing.assert_array_equal(ua, ub)
    np.testing.assert_allclose(va, vb, rtol=1e-6)
    # every input pixel inside the grid is covered (a float32 axis lost many)
    inside = (wave_r > grid.edges[0] + step) & (wave_r < grid.edges[-1] - step)
    assert not ua[inside].any()


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_doppler_shift_any_axis_dtype(dtype):
    wave64 = 6000.0 + 8.0 * np.arange(100)
    wave_t, wave_r = _as(wave64, dtype)
    flux = 1.0 + 0.2 * np.sin(wave_r / 30.0)
    a, b = (
        doppler_shift(Spectrum(flux=flux * u.Jy, spectral_axis=w * u.AA), 30 * u.km / u.s)
        for w in (wave_t, wave_r)
    )
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.flux.value, b.flux.value, rtol=1e-6)


@functools.cache
def _example_star():
    library = load_examples()
    flux = library.flux[3].astype(float)
    wave = library.wavelength.to_value(u.AA)
    keep = np.isfinite(flux)
    return wave[keep], flux[keep]


@pytest.mark.parametrize(
    ("axis", "flux", "sigma"),
    [(">f8", ">f8", ">f8"), ("<f4", "<f4", "<f4"), (">f4", "<f2", ">f2")],
)
def test_cleaning_any_dtype_gives_the_float64_result(axis, flux, sigma):
    """denoise and both telluric modes: the native float64 result."""
    wave, values = _example_star()
    rng = np.random.default_rng(1)
    noise = 0.02 * values
    values = values + noise * rng.normal(size=values.size)
    mask = np.zeros(values.size, dtype=bool)
    wave_t, wave_r = _as(wave, axis)
    flux_t, flux_r = _as(values, flux)
    sigma_t, sigma_r = _as(noise, sigma)
    typed = _spectrum(wave_t, flux_t, StdDevUncertainty(sigma_t), mask)
    native = _spectrum(wave_r, flux_r, StdDevUncertainty(sigma_r), mask)
    calls = [
        lambda s: remove_tellurics(s, mode="divide"),
        lambda s: remove_tellurics(s, mode="reconstruct"),
        lambda s: denoise(s),
    ]
    for call in calls:
        a, b = call(typed), call(native)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.flux.value, b.flux.value, rtol=1e-5, atol=1e-6)
