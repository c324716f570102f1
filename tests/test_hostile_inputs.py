"""Hostile and odd inputs to `denoise` and `remove_tellurics`, with the shipped models.

Every case ends in a clear `ValueError` (asserted with a key phrase), a warning plus
a masked result, or a result checked against an independent computation; the input
Spectrum is compared with a deep copy after every call (flux, mask, uncertainty,
meta, spectral axis).  The table of behaviours is in ``docs/reliability.rst``.
`denoise` runs with a cheap optimisation (``steps=5, n_starts=1``).
"""

import copy
import re
import time
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from astropy.utils.masked import Masked
from specutils import Spectrum
from specutils.utils.wcs_utils import air_to_vac

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.manipulation import ConvergenceWarning, denoise, remove_tellurics

torch = pytest.importorskip("torch")

FUNCTIONS = {
    "divide": lambda spec: remove_tellurics(spec, device="cpu"),
    "reconstruct": lambda spec: remove_tellurics(spec, mode="reconstruct", device="cpu"),
    "denoise": lambda spec: denoise(spec, device="cpu", steps=5, n_starts=1),
}
TELLURIC = ("divide", "reconstruct")


@pytest.fixture(scope="module")
def star():
    """The example G dwarf: flux (float64), wavelengths (air) and a 1 % sigma."""
    library = load_examples()
    flux = library.flux[3].astype(float)
    return flux, library.wavelength, 0.01 * flux


def make(star, flux=None, wave=None, *, sigma="default", mask=None, unit=u.one, meta=None):
    """A Spectrum of the example star with some parts replaced."""
    base_flux, base_wave, base_sigma = star
    flux = base_flux if flux is None else flux
    sigma = base_sigma if isinstance(sigma, str) else sigma
    return Spectrum(
        flux=flux if isinstance(flux, u.Quantity) else flux * unit,
        spectral_axis=base_wave if wave is None else wave,
        uncertainty=None if sigma is None else StdDevUncertainty(sigma),
        mask=mask,
        meta={"medium": "air"} if meta is None else meta,
    )


def _state(spec: Spectrum):
    return copy.deepcopy(
        (
            spec.flux,
            None if spec.mask is None else np.array(spec.mask),
            None if spec.uncertainty is None else np.array(spec.uncertainty.array),
            dict(spec.meta),
            spec.spectral_axis,
        )
    )


def _assert_same_state(before, after):
    for old, new in zip(before, after, strict=True):
        if isinstance(old, np.ndarray):
            np.testing.assert_array_equal(old, new)
        else:
            assert old is None and new is None or type(old) is type(new)
            if isinstance(old, u.Quantity):
                assert old.unit == new.unit
                np.testing.assert_array_equal(old.value, new.value)
            elif old is not None:
                assert old == new


def run(name: str, spec: Spectrum, *, warns=None):
    """Call a function, check the input survives, return the result.

    With ``warns`` (a regex) the call must emit AstropyUserWarnings, one of them
    matching it; without it, the call must not warn at all.  The exception is
    `denoise`'s ConvergenceWarning: the cheap optimisation here (5 steps) may stop
    short of the optimum, which is not what these tests are about.
    """
    before = _state(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = FUNCTIONS[name](spec)
    messages = [f"{item.category.__name__}: {item.message}" for item in caught]
    if warns is None:
        assert not messages, messages
    else:
        assert all(item.category is AstropyUserWarning for item in caught), messages
        assert any(re.search(warns, message) for message in messages), messages
    _assert_same_state(before, _state(spec))
    assert type(out) is Spectrum and out.shape == spec.shape
    assert out.flux.unit == spec.flux.unit
    np.testing.assert_array_equal(out.spectral_axis.value, spec.spectral_axis.value)
    assert out.spectral_axis.unit == spec.spectral_axis.unit
    # Every non-finite output pixel is masked (the contract's output mask).
    assert np.all(out.mask[~np.isfinite(out.flux.value)])
    return out


def refuse(name, spec, error, match):
    before = _state(spec)
    with pytest.raises(error, match=match):
        FUNCTIONS[name](spec)
    _assert_same_state(before, _state(spec))


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    "change",
    [
        {"flux": np.full(4300, np.nan)},
        {"mask": np.ones(4300, bool)},
        {"flux": np.zeros(4300)},
    ],
    ids=["all-nan", "all-masked", "zero-flux"],
)
def test_nothing_to_normalise_is_refused(star, name, change):
    refuse(name, make(star, **change), ValueError, "no spectrum has a valid pixel .* positive")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_negative_flux_is_refused(star, name):
    refuse(name, make(star, -star[0]), ValueError, "positive median flux")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_one_valid_pixel(star, name):
    keep = np.arange(4300) == 2000
    spec = make(star, mask=~keep)
    operation = "denoise" if name == "denoise" else "remove_tellurics"
    refuse(name, spec, ValueError, rf"cover \[0.0\] .* {operation} needs at least 20%")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_batch_row_with_one_valid_pixel(star, name):
    """The coverage rule in a batch: the row comes back fully masked, with a warning."""
    flux = np.stack([star[0], 2 * star[0], star[0]])
    mask = np.zeros(flux.shape, dtype=bool)
    mask[1, np.arange(4300) != 2000] = True
    out = run(name, make(star, flux, sigma=None, mask=mask), warns=r"spectra \[1\] cover")
    assert out.mask[1].all()
    single = run(name, make(star, sigma=None))
    for row in (0, 2):
        np.testing.assert_allclose(out.flux.value[row], single.flux.value, rtol=1e-5)
    if name == "divide":  # the row's input, untouched, no transmission
        np.testing.assert_array_equal(out.flux.value[1], flux[1])
        assert out.meta["deepclean"]["telluric_pixels"][1] == 0
        assert np.isnan(out.meta["deepclean"]["transmission"].flux.value[1]).all()
    else:
        assert np.isnan(out.flux.value[1]).all()


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("bad", [np.inf, 0.0, -1.0, np.nan], ids=["inf", "zero", "negative", "nan"])
def test_unusable_uncertainty_is_missing_data(star, name, bad):
    """A pixel with an infinite, zero, negative or NaN sigma counts as masked."""
    sigma = star[2].copy()
    sigma[100:300] = bad
    hole = np.zeros(4300, bool)
    hole[100:300] = True
    out = run(name, make(star, sigma=sigma))
    masked = run(name, make(star, mask=hole))
    np.testing.assert_array_equal(out.flux.value, masked.flux.value)
    np.testing.assert_array_equal(out.mask, masked.mask & ~hole)
    if name == "denoise":
        assert out.meta["deepclean"]["filled"][100:300].all()


def test_units_counts_and_f_lambda(star):
    """The result scales with the flux and keeps its unit (counts, F_lambda)."""
    base = {name: run(name, make(star)) for name in FUNCTIONS}
    for unit, factor in ((u.ct, 1e3), (u.erg / u.s / u.cm**2 / u.AA, 1e-15)):
        for name in FUNCTIONS:
            spec = make(star, star[0] * factor, sigma=star[2] * factor, unit=unit)
            out = run(name, spec)
            assert out.flux.unit == unit
            np.testing.assert_allclose(out.flux.value, base[name].flux.value * factor, rtol=1e-5)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_flux_per_unit_frequency(star, name):
    """Jy input gives the F_lambda result, converted to Jy (the model sees F_lambda)."""
    flam = make(star, sigma=None, unit=u.erg / u.s / u.cm**2 / u.AA)
    fnu = make(star, flam.flux.to(u.Jy, u.spectral_density(flam.spectral_axis)), sigma=None)
    expected = run(name, flam).flux.to(u.Jy, u.spectral_density(flam.spectral_axis))
    np.testing.assert_allclose(run(name, fnu).flux, expected, rtol=1e-4)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    "unit", [u.Hz, u.eV, u.cm**-1, u.AA], ids=["Hz", "eV", "per-cm", "AA-desc"]
)
def test_spectral_axis_units_and_direction(star, name, unit):
    """Hz, eV, cm^-1 (vacuum) and a descending Angstrom axis give the Angstrom result."""
    flux, wave, _ = star
    if unit == u.AA:
        axis, meta = wave[::-1], {"medium": "air"}
    else:
        axis, meta = air_to_vac(wave).to(unit, u.spectral())[::-1], {}
    out = run(name, make(star, flux[::-1], axis, sigma=None, meta=meta))
    expected = run(name, make(star, sigma=None))
    if unit == u.AA:
        np.testing.assert_array_equal(out.flux.value[::-1], expected.flux.value)
        return
    # Through vacuum and back the bin edges move by ~1e-6 of a pixel: the first or
    # last pixel may lose full coverage, the others agree to float32 precision.
    both = ~out.mask[::-1] & ~expected.mask
    assert np.count_nonzero(out.mask[::-1] != expected.mask) <= 2
    np.testing.assert_allclose(out.flux.value[::-1][both], expected.flux.value[both], rtol=5e-5)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("unit", [u.mag, u.ABmag, u.dex], ids=["mag", "ABmag", "dex"])
def test_flux_in_magnitudes_is_refused(star, name, unit):
    """A logarithmic flux unit is refused by name; ``spectrum.flux`` itself raises for
    mag(AB) (astropy's Quantity takes no function units), so the check reads the unit."""
    spec = Spectrum(
        flux=-2.5 * np.log10(star[0]) * unit, spectral_axis=star[1], meta={"medium": "air"}
    )
    message = rf"flux unit {re.escape(str(unit))} is logarithmic"
    with pytest.raises(u.UnitsError, match=message):
        FUNCTIONS[name](spec)
    with pytest.raises(u.UnitsError, match=message):  # a list: exposures or arms
        (denoise if name == "denoise" else remove_tellurics)([spec, spec])
    if name == "divide":
        with pytest.raises(u.UnitsError, match=message):
            remove_tellurics(spec, mode="physical", device="cpu")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_flux_is_refused(star, name):
    """A complex flux is refused by name, not cast to its real part."""
    spec = Spectrum(
        flux=(star[0] + 1j * star[0]) * u.Jy, spectral_axis=star[1], meta={"medium": "air"}
    )
    with pytest.raises(TypeError, match="the flux is complex"):
        FUNCTIONS[name](spec)
    with pytest.raises(TypeError, match="the flux is complex"):  # a list: exposures or arms
        (denoise if name == "denoise" else remove_tellurics)([spec, spec])


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    "uncertainty",
    [StdDevUncertainty(np.zeros(4300)), InverseVariance(np.zeros(4300)),
     VarianceUncertainty(np.full(4300, np.nan))],
    ids=["zero-sigma", "zero-ivar", "nan-variance"],
)
def test_uncertainty_unusable_everywhere_is_named(star, name, uncertainty):
    """Every pixel missing because of the uncertainty: the error says so."""
    spec = Spectrum(
        flux=star[0] * u.one, spectral_axis=star[1], uncertainty=uncertainty,
        meta={"medium": "air"},
    )
    kind = type(uncertainty).__name__
    refuse(name, spec, ValueError, rf"no spectrum has a valid pixel .* \(the {kind} is zero")


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    ("values", "hint"),
    [
        (lambda wave: np.log10(wave), "log10 of the wavelength"),
        (lambda wave: wave / 10, r"10\^1 times .* unit right"),  # nm labelled Angstrom
        (lambda wave: wave * 1e4, r"10\^-4 times .* unit right"),  # e.g. pixels of 1e-4 A
        (lambda wave: wave + 10000, "no overlap$"),  # nothing to suggest
    ],
    ids=["log10", "nm-as-AA", "1e4", "shifted"],
)
def test_no_overlap_suggests_a_cause(star, name, values, hint):
    """An axis far from the model's, with the likely slip named when one fits."""
    spec = make(star, wave=values(star[1].value) * u.AA)
    refuse(name, spec, ValueError, rf"no overlap.*{hint}" if "$" not in hint else hint)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_one_pixel_spectrum_is_refused(star, name):
    flux, wave, sigma = star
    spec = make(star, flux[2000:2001], wave[2000:2001], sigma=sigma[2000:2001])
    refuse(name, spec, ValueError, "the spectral axis has 1 pixel: at least 2 are needed")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_repeated_axis_value_is_refused(star, name):
    wave = star[1].copy()
    wave[1000] = wave[999]
    refuse(name, make(star, wave=wave), ValueError, "repeats values .* first at index 999")


def test_non_monotonic_axis_cannot_be_built(star):
    """specutils itself refuses it, so no function ever sees such a spectrum."""
    wave = star[1].copy()
    wave[[1000, 1001]] = wave[[1001, 1000]]
    with pytest.raises(ValueError, match="strictly increasing or decreasing"):
        make(star, wave=wave)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_narrower_than_the_model(star, name):
    flux, wave, sigma = star
    spec = make(star, flux[1000:1100], wave[1000:1100], sigma=sigma[1000:1100])
    refuse(name, spec, ValueError, r"cover \[0.02[0-9]*\] .* needs at least 20%")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_no_overlap_names_both_ranges(star, name):
    spec = make(star, wave=star[1] + 10000 * u.AA)
    match = r"spectrum covers 13540.0-17410.0 Angstrom \(air\), the model covers 3[0-9.]+-7[0-9.]+"
    refuse(name, spec, ValueError, match)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_batch_with_one_bad_row(star, name):
    flux = np.stack([star[0], 2 * star[0], np.full(4300, np.nan)])
    out = run(name, make(star, flux, sigma=None), warns="1 of 3 spectra have no valid pixel")
    assert out.mask[2].all() and np.isnan(out.flux.value[2]).all()
    single = run(name, make(star, sigma=None))
    for row, factor in ((0, 1), (1, 2)):
        np.testing.assert_allclose(out.flux.value[row], factor * single.flux.value, rtol=1e-5)
    if name == "denoise":
        assert out.meta["deepclean"]["map_class"][2] is None
        assert out.meta["deepclean"]["map_class"][0] == single.meta["deepclean"]["map_class"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_redshifted_star(star, name):
    """z = 0.5: only 5311-7410 A overlaps; denoise flags it as out of distribution."""
    spec = make(star, wave=star[1] * 1.5, sigma=None)
    warns = "flagged as unlike the model.s stars" if name == "denoise" else None
    out = run(name, spec, warns=warns)
    beyond = spec.spectral_axis > 7410 * u.AA
    assert out.mask[beyond].all() and not out.mask[~beyond][50:-50].all()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_deprecated_spectrum1d(star, name):
    from specutils import Spectrum1D

    with pytest.warns(AstropyDeprecationWarning):
        old = Spectrum1D(flux=star[0] * u.one, spectral_axis=star[1], meta={"medium": "air"})
    out = run(name, old)  # the call itself must not warn
    np.testing.assert_array_equal(out.flux, run(name, make(star, sigma=None)).flux)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_float16_and_integer_flux(star, name, dtype):
    """Same result as the same values in float64."""
    values = (star[0] * 1000).astype(dtype)
    out = run(name, make(star, values, sigma=None))
    expected = run(name, make(star, values.astype(float), sigma=None))
    assert out.flux.dtype == np.float64
    np.testing.assert_array_equal(out.flux.value, expected.flux.value)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_numpy_masked_array_flux(star, name):
    """A numpy masked array (through astropy's Masked): its mask is honoured.

    Garbage under the mask changes nothing the function computes from the data.
    """
    hole = np.zeros(4300, bool)
    hole[2000:2100] = True
    garbage = np.where(hole, 1e30, star[0])
    flux = Masked(np.ma.masked_array(garbage, mask=hole)) * u.one
    out = run(name, make(star, flux, sigma=None))
    clean = run(name, make(star, np.where(hole, np.nan, star[0]), sigma=None, mask=hole))
    np.testing.assert_array_equal(out.mask, clean.mask)
    keep = ~hole if name == "divide" else slice(None)  # divide returns masked input as is
    np.testing.assert_array_equal(out.flux.value[keep], clean.flux.value[keep])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_half_a_million_pixels(star, name):
    flux, wave, _ = star
    fine = np.linspace(wave[0].value, wave[-1].value, 500_000)
    spec = make(star, np.interp(fine, wave.value, flux), fine * u.AA, sigma=None)
    start = time.perf_counter()
    warns = "pixels are 0.0086 times the model's" if name in TELLURIC else None
    out = run(name, spec, warns=warns)
    assert time.perf_counter() - start < 30
    inside = (fine > 3610) & (fine < 7390)
    assert not out.mask[inside].any()


def test_bad_batch_row_is_reported_once(star):
    """One warning per bad row: the resampler's, not a second one from the coverage check."""
    flux = np.stack([star[0], np.full(4300, np.nan)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FUNCTIONS["denoise"](make(star, flux, sigma=None))
    messages = [str(item.message) for item in caught]
    assert len(messages) == 1 and "1 of 2 spectra have no valid pixel" in messages[0], messages



@pytest.mark.parametrize("every", [2, 3, 5])
def test_holes_at_every_few_pixels(star, every):
    """A mask with a hole every few pixels (a bitmask flag set on most pixels).

    The telluric model takes it (masked pixels are missing data); the denoiser's noise
    model needs each pixel's 8 predecessors, so with no such run the star is refused
    (returned masked in a batch) instead of coming back all NaN or prior-driven.
    """
    holes = np.arange(4300) % every == 1
    for name in TELLURIC:
        out = run(name, make(star, mask=holes))
        keep = ~holes & ~run(name, make(star)).mask
        assert np.isfinite(out.flux.value[keep]).all() and not out.mask[keep].any()
        assert out.mask[holes].all()
    message = r"spectra \[0\] have no run of 9 valid pixels .* mask"
    refuse("denoise", make(star, mask=holes), ValueError, message)
    flux = np.stack([star[0], star[0]])
    mask = np.stack([np.zeros(4300, bool), holes])
    batch = run("denoise", make(star, flux, sigma=None, mask=mask), warns=message.replace("0", "1"))
    assert batch.mask[1].all() and not batch.mask[0, 100:-100].any()
    single = run("denoise", make(star, sigma=None))
    np.testing.assert_allclose(batch.flux.value[0], single.flux.value, rtol=1e-5)


@pytest.mark.parametrize("fill", [-1e30, 1e30, -1e6], ids=["-1e30", "1e30", "-1e6"])
@pytest.mark.parametrize("relative", [False, True], ids=["sigma", "relative-sigma"])
def test_unflagged_fill_values(star, fill, relative):
    """Fill values left unmasked are missing data to denoise, with a warning naming them.

    Four pixels of -1e30 or 1e30 (a sigma of 1 % of the flux, or of the fill) crashed
    inside torch (linalg.eigh on a NaN Hessian); -1e6 flagged the star as unlike the
    model's.  The result is the one for the same pixels masked (to the fill values'
    share in the spectrum's median, which normalises it).
    """
    flux = star[0].copy()
    hole = np.zeros(4300, bool)
    hole[[500, 1500, 2500, 3500]] = True
    flux[hole] = fill
    sigma = 0.01 * np.abs(flux) if relative else star[2]
    warns = r"spectra \[0\]: 4 pixels .* fill values"
    out = run("denoise", make(star, flux, sigma=sigma), warns=warns)
    masked = run("denoise", make(star, flux, sigma=sigma, mask=hole))
    assert out.meta["deepclean"]["ood_flag"] is False
    assert out.meta["deepclean"]["filled"][hole].all()
    np.testing.assert_allclose(out.flux.value, masked.flux.value, rtol=5e-3)


@pytest.mark.parametrize("factor", [20, 50])
def test_few_pixels_with_a_far_smaller_sigma(star, factor):
    """Ten pixels (brighter than the median) whose sigma is 20 or 50 times smaller than
    their neighbours' (still above ``MIN_SIGMA``).

    The linear terms' approximate normal matrix (float32 sums over weights spanning
    many decades) came out indefinite and torch's Cholesky raised; now those matrices
    get a diagonal jitter.  The result is within 3 % of the star (0.5 % with ordinary
    sigma: ten pixels dominate the fit).
    """
    flux, _, sigma = star
    bright = np.flatnonzero(flux > np.median(flux))
    sigma = sigma.copy()
    sigma[bright[np.linspace(0, bright.size - 1, 10).astype(int)]] /= factor
    out = run("denoise", make(star, sigma=sigma))
    keep = ~out.mask
    assert np.median(np.abs(out.flux.value - flux)[keep]) < 0.03 * np.median(flux)


@pytest.mark.parametrize("snr", [1e6, 1e10])
def test_signal_to_noise_beyond_the_model(star, snr):
    """A sigma of 1e-6 or 1e-10 of the median flux (a placeholder on a model spectrum).

    It crashed inside torch (linalg.eigh: residuals whitened by such a sigma overflowed
    the noise model's float32); the uncertainty is raised to ``MIN_SIGMA`` (1e-4) of
    the median flux, with a warning, and the result is the star's.
    """
    level = np.median(star[0])
    sigma = np.full(4300, level / snr)
    out = run("denoise", make(star, sigma=sigma), warns=r"uncertainty below 0.0001 of the")
    keep = ~out.mask
    assert np.median(np.abs(out.flux.value - star[0])[keep]) < 0.02 * level


def test_physical_mode_names_a_medium_contradiction_once(star):
    """``medium=`` against the meta's medium is warned about once in ``physical`` mode
    (it was warned twice: once when resolved, once on the model grid)."""
    spec = make(star, meta={"medium": "air"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remove_tellurics(spec, mode="physical", medium="vacuum", device="cpu")
    named = [w for w in caught if "medium='vacuum' overrides the air" in str(w.message)]
    assert len(named) == 1
