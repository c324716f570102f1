"""Property-based tests of the manipulation contract (hypothesis).

Spectra are the example G dwarf, cut to a random sub-range of the model grid, scaled
by a random positive constant, with random masked gaps holding garbage values, and
optionally with a descending axis.  What is tested, precisely:

* every function returns the input's spectral axis, flux unit and shape;
* values under the mask never change any unmasked output pixel: the result equals,
  bitwise, the result for the same spectrum with NaN under the mask (for `denoise`
  and ``reconstruct`` every output pixel, as masked pixels get model values; for
  ``divide`` the masked pixels return their own input value divided by ``T``);
* ``divide``: every input pixel more than 3 model pixels away from the model's
  telluric region (the region of its reference line transmission, the resampling
  stencil reaches 2 pixels) comes back bitwise unchanged: flux, uncertainty, mask;
* scaling the flux (and uncertainty) by ``c > 0`` scales the result by ``c``
  (``rtol=1e-5``: the networks run in float32);
* the spectra layer: on the model's own grid, `from_model_grid` of `to_model_grid`
  reproduces every unmasked input pixel to ``rtol=1e-12``, and `to_model_grid`'s
  normalised output does not depend on ``c``.
"""

import functools
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import binary_dilation
from specutils import Spectrum

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.io.models import load_model
from specutils_deepclean.manipulation import TRANSMISSION_FLOOR, denoise, remove_tellurics
from specutils_deepclean.spectra import ModelGrid, from_model_grid, to_model_grid
from specutils_deepclean.tellurics import telluric_region

torch = pytest.importorskip("torch")

#: Example counts and randomness come from the hypothesis profile (tests/conftest.py).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNITS = [u.one, u.ct, u.Jy, u.erg / u.s / u.cm**2 / u.AA]


@functools.cache
def _star():
    library = load_examples()
    return library.flux[3].astype(float), library.wavelength


@functools.cache
def _far_from_tellurics() -> np.ndarray:
    """Model pixels more than 3 pixels from the telluric region of karaoke-miles."""
    model = load_model("karaoke-miles")
    region = telluric_region(np.asarray(model.extra["telluric_lines"], dtype=float))
    return ~binary_dilation(region, iterations=3)


@st.composite
def cases(draw, min_pixels: int):
    """(start, stop, scale, unit, descending, gaps) for a spectrum of the example star."""
    start = draw(st.integers(0, 4300 - min_pixels))
    stop = draw(st.integers(start + min_pixels, 4300))
    scale = 10.0 ** draw(st.floats(-20, 20))
    unit = draw(st.sampled_from(UNITS))
    descending = draw(st.booleans())
    # at most 4 gaps of up to a tenth of the spectrum each: some pixels stay valid
    widest = min(60, max(1, (stop - start) // 10))
    gaps = draw(
        st.lists(st.tuples(st.integers(0, stop - start - 1), st.integers(1, widest)), max_size=4)
    )
    return start, stop, scale, unit, descending, gaps


def spectrum(case, *, garbage: float = np.nan, scale: float | None = None) -> Spectrum:
    """The example star for a drawn case; ``garbage`` fills the masked gaps."""
    start, stop, drawn_scale, unit, descending, gaps = case
    flux, wave = _star()
    flux = flux[start:stop] * (drawn_scale if scale is None else scale)
    mask = np.zeros(flux.size, bool)
    for first, width in gaps:
        mask[first : first + width] = True
    flux = np.where(mask, garbage, flux)
    order = slice(None, None, -1) if descending else slice(None)
    return Spectrum(
        flux=flux[order] * unit,
        spectral_axis=wave[start:stop][order],
        uncertainty=StdDevUncertainty(0.01 * np.abs(flux[order])),
        mask=mask[order],
        meta={"medium": "air"},
    )


def _assert_contract(out: Spectrum, spec: Spectrum) -> None:
    assert type(out) is Spectrum and out.shape == spec.shape
    assert out.flux.unit == spec.flux.unit
    np.testing.assert_array_equal(out.spectral_axis.value, spec.spectral_axis.value)


FUNCTIONS = {
    "divide": lambda spec: remove_tellurics(spec, device="cpu"),
    "reconstruct": lambda spec: remove_tellurics(spec, mode="reconstruct", device="cpu"),
    "denoise": lambda spec: denoise(spec, device="cpu", steps=5, n_starts=1),
}


def call(name: str, spec: Spectrum) -> Spectrum:
    """Run a function, ignoring its warnings (e.g. the out-of-distribution flag)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        return FUNCTIONS[name](spec)


#: Shortest drawn spectrum: every function needs 20 % of its grid valid (gaps included).
MIN_PIXELS = {"divide": 1500, "reconstruct": 1500, "denoise": 1500}


@pytest.mark.parametrize("name", FUNCTIONS)
@SETTINGS
@given(data=st.data(), garbage=st.sampled_from([1e30, -1e30, 0.0, np.inf]))
def test_masked_values_never_matter(name, data, garbage):
    case = data.draw(cases(MIN_PIXELS[name]))
    spec = spectrum(case, garbage=garbage)
    out = call(name, spec)
    reference = call(name, spectrum(case))
    _assert_contract(out, spec)
    np.testing.assert_array_equal(out.mask, reference.mask)
    keep = ~spec.mask if name == "divide" else slice(None)
    np.testing.assert_array_equal(out.flux.value[keep], reference.flux.value[keep])


@pytest.mark.parametrize("name", FUNCTIONS)
@SETTINGS
@given(data=st.data(), factor=st.floats(1e-3, 1e3))
def test_flux_scaling_scales_the_result(name, data, factor):
    case = data.draw(cases(MIN_PIXELS[name]))
    spec = spectrum(case)
    out = call(name, spec)
    scaled = call(name, spectrum(case, scale=case[2] * factor))
    _assert_contract(scaled, spec)
    # The scaled input is normalised to the same numbers up to float rounding; where T
    # lies at the floor within that rounding, the floor decision may go either way.
    same = np.ones(out.mask.shape, dtype=bool)
    if name == "divide":
        transmission = out.meta["deepclean"]["transmission"].flux.value
        same = ~(np.abs(transmission - TRANSMISSION_FLOOR) < 1e-4)
    np.testing.assert_array_equal(scaled.mask[same], out.mask[same])
    np.testing.assert_allclose(scaled.flux.value[same], factor * out.flux.value[same], rtol=1e-5)
    np.testing.assert_allclose(
        scaled.uncertainty.array[same], factor * out.uncertainty.array[same], rtol=1e-5
    )


@SETTINGS
@given(case=cases(MIN_PIXELS["divide"]))
def test_divide_leaves_pixels_far_from_tellurics_untouched(case):
    spec = spectrum(case)
    out = remove_tellurics(spec, device="cpu")
    start, stop, *_ = case
    far = _far_from_tellurics()[start:stop]
    if case[4]:
        far = far[::-1]
    np.testing.assert_array_equal(out.flux.value[far], spec.flux.value[far])
    np.testing.assert_array_equal(out.uncertainty.array[far], spec.uncertainty.array[far])
    np.testing.assert_array_equal(out.mask[far], spec.mask[far])


@SETTINGS
@given(case=cases(MIN_PIXELS["divide"]))
def test_model_grid_round_trip_on_its_own_grid(case):
    spec = spectrum(case)
    grid = ModelGrid(_star()[1], "air")
    gs = to_model_grid(spec, grid)
    back = from_model_grid(gs, gs.flux, gs.sigma)
    _assert_contract(back, spec)
    good = ~back.mask
    assert np.all(back.mask[spec.mask]) and good.sum() >= (~spec.mask).sum() - 8
    np.testing.assert_allclose(back.flux.value[good], spec.flux.value[good], rtol=1e-12)
    unit_scale = to_model_grid(spectrum(case, scale=1.0), grid)
    np.testing.assert_allclose(gs.flux, unit_scale.flux, rtol=1e-12)
    np.testing.assert_allclose(gs.scale / unit_scale.scale, case[2], rtol=1e-12)
