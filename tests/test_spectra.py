"""Tests of the specutils layer: Spectrum <-> model-grid arrays."""

import copy

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import (
    InverseVariance,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from specutils import Spectrum
from specutils.utils.wcs_utils import air_to_vac, vac_to_air

from specutils_deepclean.doppler import doppler_shift, shift_flux
from specutils_deepclean.resample import bin_edges, rebin
from specutils_deepclean.spectra import (
    GridSpectra,
    ModelGrid,
    from_model_grid,
    grid_to_input,
    median_denormalise,
    median_normalise,
    to_model_grid,
)

C_KMS = 299792.458


def smooth(wave):
    """A smooth positive test spectrum."""
    return 2.0 + np.sin(wave / 50.0) + 0.3 * np.cos(wave / 17.0)


def bin_means(wave):
    """Exact bin means of ``smooth`` over the bins of ``wave``."""
    edges = bin_edges(wave)
    integral = 2.0 * edges - 50.0 * np.cos(edges / 50.0) + 0.3 * 17.0 * np.sin(edges / 17.0)
    return np.diff(integral) / np.diff(edges)


@pytest.fixture
def grid():
    return ModelGrid(np.arange(4000.0, 5000.0, 0.9) * u.AA, "air")


FLAM = u.erg / u.s / u.cm**2 / u.AA


def make_spectrum(wave=None, flux=None, **kwargs):
    wave = np.arange(3950.0, 5050.0, 1.0) if wave is None else wave
    flux = bin_means(wave) if flux is None else flux
    kwargs.setdefault("meta", {"medium": "air"})
    return Spectrum(flux=flux * FLAM, spectral_axis=wave * u.AA, **kwargs)


# --- ModelGrid ---------------------------------------------------------------------


def test_model_grid_properties():
    grid = ModelGrid(np.array([354.05, 500.0, 740.96]) * u.nm, "vacuum")
    assert grid.wavelength.unit == u.AA
    assert grid.wave_aa.dtype == np.float64
    np.testing.assert_allclose(grid.wave_aa, [3540.5, 5000.0, 7409.6])
    np.testing.assert_allclose(grid.edges, bin_edges(grid.wave_aa))
    assert grid.range_str == "3540.5-7409.6 Angstrom (vacuum)"
    assert len(grid) == 3
    with pytest.raises(ValueError, match="read-only"):
        grid.wave_aa[0] = 1.0


@pytest.mark.parametrize(
    ("wave", "medium", "error", "match"),
    [
        ([1.0, 2.0, 3.0] * u.AA, "water", ValueError, "'air' or 'vacuum'"),
        ([1.0, 3.0, 2.0] * u.AA, "air", ValueError, "strictly increasing"),
        ([1.0] * u.AA, "air", ValueError, "at least two"),
        ([1.0, 2.0, 3.0] * u.Hz, "air", u.UnitsError, "length unit"),
    ],
)
def test_model_grid_bad(wave, medium, error, match):
    with pytest.raises(error, match=match):
        ModelGrid(wave, medium)


# --- rebin -------------------------------------------------------------------------


def test_rebin_reproduces_quadratic_densities_exactly():
    wave_in = np.sort(np.random.default_rng(1).uniform(0, 100, 300))
    wave_out = np.linspace(10, 90, 57)
    poly = np.polynomial.Polynomial([1.0, 0.3, -0.01])
    means = lambda w: np.diff(poly.integ()(bin_edges(w))) / np.diff(bin_edges(w))  # noqa: E731
    out, _, missing = rebin(means(wave_in), wave_in, wave_out)
    assert not missing.any()
    np.testing.assert_allclose(out, means(wave_out), rtol=1e-10)


def test_rebin_conserves_flux():
    rng = np.random.default_rng(2)
    wave_in = np.arange(100.0)
    flux = rng.uniform(0.5, 2.0, (3, 100))
    wave_out = np.arange(-5.0, 105.0, 0.37)
    out, _, missing = rebin(flux, wave_in, wave_out, min_coverage=1e-12)
    widths_out = np.diff(bin_edges(wave_out))
    covered = np.diff(np.clip(bin_edges(wave_out), -0.5, 99.5))
    total_out = np.nansum(out * covered, axis=1)
    np.testing.assert_allclose(total_out, flux.sum(axis=1), rtol=1e-12)
    assert np.all(covered[~missing[0]] <= widths_out[~missing[0]])


def test_rebin_variance_is_propagated_through_the_matrix():
    rng = np.random.default_rng(3)
    wave_in = np.arange(30.0)
    wave_out = np.arange(2.2, 27.0, 1.3)
    missing = np.zeros(30, bool)
    missing[[7, 8, 20]] = True
    variance = rng.uniform(0.5, 2.0, 30)
    # The resampling matrix, column by column, for this pattern of missing pixels.
    matrix = np.stack(
        [rebin(np.eye(30)[m], wave_in, wave_out, missing=missing)[0] for m in range(30)], axis=1
    )
    flux = rng.normal(size=30)
    out, var_out, miss_out = rebin(flux, wave_in, wave_out, variance=variance, missing=missing)
    ok = ~miss_out
    np.testing.assert_allclose(out[ok], (matrix @ flux)[ok], rtol=1e-10)
    np.testing.assert_allclose(var_out[ok], (matrix**2 @ variance)[ok], rtol=1e-10)
    assert np.all(np.isnan(var_out[~ok]))


@pytest.mark.parametrize("min_coverage", [0.5, 1.0])
def test_rebin_onto_the_same_axis_equals_the_matrix_product(min_coverage):
    # Same bins take the identity shortcut: it must agree with the sparse matrix of
    # the general path (built here for this pattern of valid pixels).
    from specutils_deepclean.resample import _matrix

    rng = np.random.default_rng(5)
    wave = np.cumsum(rng.uniform(0.5, 1.5, 40))
    flux = rng.normal(1.0, 0.2, (3, 40))
    variance = rng.uniform(0.5, 2.0, (3, 40))
    missing = np.zeros((3, 40), bool)
    missing[0, [0, 5, 6, 39]] = True
    flux[2, 17] = np.nan
    out, var_out, miss_out = rebin(
        flux, wave, wave, variance=variance, missing=missing, min_coverage=min_coverage
    )
    edges = bin_edges(wave)
    widths = np.diff(edges)
    for row in range(3):
        good = ~missing[row] & np.isfinite(flux[row])
        matrix = _matrix(edges, edges, good)
        norm = np.asarray(matrix.sum(axis=1)).ravel()
        np.testing.assert_array_equal(miss_out[row], norm < min_coverage * widths * (1 - 1e-9))
        ok = ~miss_out[row]
        zeroed = np.where(good, flux[row], 0.0)
        expected = (matrix @ zeroed)[ok] / norm[ok]
        np.testing.assert_allclose(out[row, ok], expected, rtol=1e-14)
        squares = matrix.multiply(matrix) @ np.where(good, variance[row], 0.0)
        np.testing.assert_allclose(var_out[row, ok], squares[ok] / norm[ok] ** 2, rtol=1e-14)
        assert np.isnan(out[row, ~ok]).all() and np.isnan(var_out[row, ~ok]).all()
    assert miss_out.sum() == 5


def test_rebin_missing_pixels_stay_local():
    wave = np.arange(200.0)
    wave_out = np.arange(1.0, 199.0, 0.9)
    flux = smooth(wave * 10)
    spoiled = flux.copy()
    spoiled[100] = np.nan
    masked = np.zeros(200, bool)
    masked[60] = True
    clean, _, _ = rebin(flux, wave, wave_out)
    out, _, missing = rebin(spoiled, wave, wave_out, missing=masked)
    near = (np.abs(wave_out - 100) < 4) | (np.abs(wave_out - 60) < 4)
    np.testing.assert_array_equal(out[~near], clean[~near])
    assert missing[np.abs(wave_out - 100) < 0.3].all()
    assert np.isfinite(out[~missing]).all()


def test_rebin_large_spectrum():
    wave = np.linspace(3000.0, 10000.0, 500_000)
    out, var, missing = rebin(
        np.ones(wave.size), wave, np.arange(3600.0, 7400.0, 0.9), variance=np.ones(wave.size)
    )
    assert not missing.any()
    np.testing.assert_allclose(out, 1.0)
    # about 64 input pixels per output pixel
    np.testing.assert_allclose(var, np.diff(wave)[0] / 0.9, rtol=0.02)


# --- normalisation -----------------------------------------------------------------


def test_median_normalise_inverse_is_exact():
    rng = np.random.default_rng(4)
    flux = rng.lognormal(size=(5, 50)) * rng.uniform(1e-17, 1e3, (5, 1))
    missing = rng.random((5, 50)) < 0.2
    normalised, scale = median_normalise(flux, missing)
    np.testing.assert_array_max_ulp(median_denormalise(normalised, scale), flux, maxulp=1)
    expected = [np.median(f[~m]) for f, m in zip(flux, missing, strict=True)]
    np.testing.assert_array_equal(scale, expected)


@pytest.mark.parametrize("row", [[np.nan, np.nan], [-1.0, -2.0], [0.0, 0.0]])
def test_median_normalise_flags_unusable(row):
    normalised, scale = median_normalise(np.array([[1.0, 3.0], row]))
    assert scale[0] == 2.0
    assert np.isnan(scale[1]) and np.isnan(normalised[1]).all()


# --- to_model_grid / from_model_grid -------------------------------------------------


@pytest.mark.parametrize(("step_in", "step_grid"), [(1.0, 0.9), (2.7, 0.9), (0.3, 0.9)])
def test_round_trip_smooth_spectrum(step_in, step_grid):
    wave = np.arange(3950.0, 5050.0, step_in)
    spec = make_spectrum(wave)
    grid = ModelGrid(np.arange(4000.0, 5000.0, step_grid) * u.AA, "air")
    gs = to_model_grid(spec, grid)
    np.testing.assert_allclose(gs.flux[0] * gs.scale[0], bin_means(grid.wave_aa), rtol=1e-3)
    back = from_model_grid(gs, gs.flux)
    ok = ~back.mask
    assert ok.sum() > 0.85 * ok.size
    np.testing.assert_allclose(back.flux.value[ok], spec.flux.value[ok], rtol=1e-3)


def test_batch_2d_equals_loop(grid):
    rng = np.random.default_rng(5)
    wave = np.arange(3950.0, 5050.0)
    flux = bin_means(wave) * rng.uniform(0.5, 3.0, (3, 1)) + rng.normal(0, 0.01, (3, wave.size))
    mask = rng.random(flux.shape) < 0.02
    spec = make_spectrum(wave, flux, mask=mask)
    gs = to_model_grid(spec, grid)
    assert gs.flux.shape == (3, len(grid)) and gs.scale.shape == (3,)
    for k in range(3):
        one = to_model_grid(make_spectrum(wave, flux[k], mask=mask[k]), grid)
        np.testing.assert_array_equal(gs.flux[k], one.flux[0])
        np.testing.assert_array_equal(gs.missing[k], one.missing[0])
    back = from_model_grid(gs, gs.flux)
    assert back.shape == spec.shape and back.spectral_axis_index == 1


def test_spectral_axis_first(grid):
    wave = np.arange(3950.0, 5050.0)
    flux = np.stack([bin_means(wave), 2 * bin_means(wave)], axis=1)  # (n_wave, 2)
    spec = make_spectrum(wave, flux, spectral_axis_index=0)
    gs = to_model_grid(spec, grid)
    np.testing.assert_allclose(gs.scale[1], 2 * gs.scale[0], rtol=1e-14)
    back = from_model_grid(gs, gs.flux)
    assert back.shape == flux.shape and back.spectral_axis_index == 0
    ok = ~back.mask
    np.testing.assert_allclose(back.flux.value[ok], flux[ok], rtol=1e-3)


@pytest.mark.parametrize(
    "unit", [u.nm, u.um, u.Hz, u.eV, u.cm**-1, u.AA], ids=["nm", "um", "Hz", "eV", "cm-1", "AA"]
)
@pytest.mark.parametrize("descending", [False, True])
def test_spectral_units_and_order_round_trip(grid, unit, descending):
    wave = np.arange(3950.0, 5050.0)
    flux = bin_means(wave)
    axis = (wave * u.AA).to(unit, u.spectral())
    if descending == (axis[1] > axis[0]):
        axis, flux = axis[::-1], flux[::-1]
    spec = Spectrum(flux=flux * u.mJy, spectral_axis=axis, meta={"medium": "air"})
    if unit.is_equivalent(u.AA):
        gs = to_model_grid(spec, grid)
    else:
        gs = to_model_grid(spec, grid)  # frequency-like axes are vacuum by definition
        assert gs.medium == "vacuum"
    back = from_model_grid(gs, gs.flux)
    assert back.spectral_axis is spec.spectral_axis
    assert back.flux.unit == u.mJy
    ok = ~back.mask
    assert ok.sum() > 0.85 * ok.size
    tol = 1e-3 if gs.medium == "air" else 2e-3  # a vacuum axis is stretched onto the grid
    np.testing.assert_allclose(back.flux.value[ok], flux[ok], rtol=tol)


@pytest.mark.parametrize("axis", [np.arange(10.0) * u.pix, np.arange(10.0) * u.km / u.s])
def test_non_spectral_axis(grid, axis):
    spec = Spectrum(flux=np.ones(10) * u.Jy, spectral_axis=axis)
    with pytest.raises(u.UnitsError, match="cannot be converted to a wavelength"):
        to_model_grid(spec, grid)


@pytest.mark.parametrize("bad", [np.ones(5), [1, 2], None])
def test_not_a_spectrum(grid, bad):
    with pytest.raises(TypeError, match=f"must be a specutils Spectrum, got {type(bad).__name__}"):
        to_model_grid(bad, grid)


def test_bad_arguments(grid):
    spec = make_spectrum()
    with pytest.raises(TypeError, match="grid must be a ModelGrid, got ndarray"):
        to_model_grid(spec, np.arange(10.0))
    with pytest.raises(ValueError, match="min_coverage must be in"):
        to_model_grid(spec, grid, min_coverage=0.0)
    with pytest.raises(ValueError, match="medium must be 'air' or 'vacuum', got 'glass'"):
        to_model_grid(spec, grid, medium="glass")
    hz = Spectrum(flux=np.ones(5) * u.Jy, spectral_axis=np.linspace(6, 7, 5) * 1e14 * u.Hz)
    with pytest.raises(ValueError, match="medium='air' does not apply"):
        to_model_grid(hz, grid, medium="air")


@pytest.mark.parametrize(
    ("uncertainty", "cls"),
    [
        (StdDevUncertainty(np.full(1100, 0.1)), StdDevUncertainty),
        (VarianceUncertainty(np.full(1100, 0.01)), VarianceUncertainty),
        (InverseVariance(np.full(1100, 100.0)), InverseVariance),
        (None, StdDevUncertainty),
    ],
)
def test_uncertainty_class_survives(grid, uncertainty, cls):
    spec = make_spectrum(uncertainty=uncertainty)
    gs = to_model_grid(spec, grid)
    assert gs.has_uncertainty == (uncertainty is not None)
    sigma = gs.sigma if uncertainty is not None else np.full_like(gs.flux, 0.05)
    back = from_model_grid(gs, gs.flux, sigma)
    assert type(back.uncertainty) is cls
    as_std = back.uncertainty.represent_as(StdDevUncertainty)
    assert as_std.unit == FLAM
    ok = ~back.mask
    if uncertainty is not None:
        # One input pixel spread over ~1.1 grid pixels and back: sigma shrinks a bit.
        assert np.all((as_std.array[ok] > 0.06) & (as_std.array[ok] <= 0.1 + 1e-12))
    # Sigma, normalised on the grid, comes back in physical units.
    np.testing.assert_allclose(np.median(as_std.array[ok]), 0.0, atol=0.11)


def test_uncertainty_units_are_converted(grid):
    flam_per_nm = u.erg / u.s / u.cm**2 / u.nm
    spec = make_spectrum(uncertainty=StdDevUncertainty(np.full(1100, 1.0) * flam_per_nm))
    gs = to_model_grid(spec, grid)
    np.testing.assert_allclose(np.nanmedian(gs.sigma * gs.scale[:, None]), 0.1, rtol=0.05)


def test_unknown_uncertainty_warns(grid):
    spec = make_spectrum(uncertainty=UnknownUncertainty(np.ones(1100)))
    with pytest.warns(AstropyUserWarning, match="UnknownUncertainty is not supported"):
        gs = to_model_grid(spec, grid)
    assert not gs.has_uncertainty and np.isnan(gs.sigma).all()


@pytest.mark.parametrize(
    "uncertainty",
    [
        StdDevUncertainty(np.r_[np.full(500, 0.1), 0.0, -1.0, np.full(598, 0.1)]),
        VarianceUncertainty(np.r_[np.full(500, 0.1), 0.0, np.nan, np.full(598, 0.1)]),
        InverseVariance(np.r_[np.full(500, 10.0), 0.0, -1.0, np.full(598, 10.0)]),
    ],
)
def test_unusable_uncertainty_is_missing(grid, uncertainty):
    gs = to_model_grid(make_spectrum(uncertainty=uncertainty), grid)
    # input pixels 500, 501 (4450, 4451 Angstrom) are missing
    gap = (grid.wave_aa > 4450.0) & (grid.wave_aa < 4451.0)
    assert gs.missing[0, gap].all()
    assert gs.missing[0].sum() == gap.sum()


def test_mask_and_nan_are_missing(grid):
    wave = np.arange(3950.0, 5050.0)
    flux = bin_means(wave)
    flux[300] = np.nan
    flux[301] = np.inf
    mask = np.zeros(wave.size, bool)
    mask[700:703] = True
    gs = to_model_grid(make_spectrum(wave, flux, mask=mask), grid)
    for lo, hi in [(4250.0, 4251.0), (4650.0, 4652.0)]:
        inside = (grid.wave_aa > lo) & (grid.wave_aa < hi)
        assert gs.missing[0, inside].all()
        assert np.isnan(gs.flux[0, inside]).all() and np.isnan(gs.sigma[0, inside]).all()
    reference = to_model_grid(make_spectrum(wave, bin_means(wave)), grid)
    far = np.all(np.abs(grid.wave_aa[:, None] - [4250.5, 4651.0]) > 5, axis=1)
    np.testing.assert_allclose(
        gs.flux[0, far] * gs.scale[0], reference.flux[0, far] * reference.scale[0], rtol=1e-13
    )
    back = from_model_grid(gs, gs.flux)
    np.testing.assert_array_equal(back.mask[700:703], True)


def test_no_overlap_names_both_ranges(grid):
    spec = make_spectrum(np.arange(8000.0, 9000.0), meta={"medium": "vacuum"})
    match = (
        r"spectrum covers 7999.5-8999.5 Angstrom \(vacuum\), the model covers "
        r"4000.0-4999.9 Angstrom \(air\): no overlap"
    )
    with pytest.raises(ValueError, match=match):
        to_model_grid(spec, grid)


def test_partial_overlap_masks_uncovered(grid):
    wave = np.arange(4500.0, 5500.0)
    spec = make_spectrum(wave)
    gs = to_model_grid(spec, grid)
    assert gs.missing[0, grid.wave_aa < 4499.5].all()
    assert not gs.missing[0, grid.wave_aa > 4501].any()
    back = from_model_grid(gs, gs.flux)
    beyond = wave + 0.5 > grid.edges[-1]  # not fully covered by the grid
    np.testing.assert_array_equal(back.mask, beyond)
    assert np.isnan(back.flux.value[beyond]).all()


def test_all_empty_is_an_error_and_some_empty_warn(grid):
    wave = np.arange(3950.0, 5050.0)
    flux = np.stack([bin_means(wave), bin_means(wave)])
    mask = np.zeros(flux.shape, bool)
    mask[1] = True
    with pytest.warns(AstropyUserWarning, match="1 of 2 spectra have no valid pixel"):
        gs = to_model_grid(make_spectrum(wave, flux, mask=mask), grid)
    assert np.isnan(gs.scale[1]) and gs.missing[1].all() and list(gs.usable) == [True, False]
    back = from_model_grid(gs, gs.flux)
    assert back.mask[1].all() and not back.mask[0, 60:-60].any()
    with pytest.raises(ValueError, match="no spectrum has a valid pixel"):
        to_model_grid(make_spectrum(wave, -flux[0]), grid)


def test_air_vacuum_conversion(grid):
    wave = np.arange(3950.0, 5050.0)
    line = 4500.0
    flux = 2.0 - np.exp(-0.5 * ((wave - line) / 2.0) ** 2)
    spec = make_spectrum(wave, flux, meta={"medium": "vacuum"})
    gs = to_model_grid(spec, grid)
    assert gs.medium == "vacuum"
    depth = 2.0 - gs.flux[0] * gs.scale[0]
    centroid = np.nansum(grid.wave_aa * depth) / np.nansum(depth)
    expected = vac_to_air(line * u.AA).to_value(u.AA)
    assert abs(expected - line) > 1.0  # a shift of more than a pixel
    assert abs(centroid - expected) < 0.01
    np.testing.assert_allclose(gs.input_edges, vac_to_air(bin_edges(wave) * u.AA).value)
    vac_grid = ModelGrid(grid.wavelength, "vacuum")
    gs2 = to_model_grid(make_spectrum(wave, flux), vac_grid)
    np.testing.assert_allclose(gs2.input_edges, air_to_vac(bin_edges(wave) * u.AA).value)
    back = from_model_grid(gs, gs.flux)
    ok = ~back.mask
    np.testing.assert_allclose(back.flux.value[ok], flux[ok], rtol=2e-3)


def test_unknown_medium_warns(grid):
    spec = make_spectrum(meta={})
    match = "medium .* is unknown; assuming the model's medium"
    with pytest.warns(AstropyUserWarning, match=match):
        gs = to_model_grid(spec, grid)
    assert gs.medium == "air"
    np.testing.assert_allclose(gs.input_edges, bin_edges(spec.spectral_axis.value))


@pytest.mark.parametrize(
    ("meta", "medium"),
    [
        ({"medium": "VAC"}, "vacuum"),
        ({"header": fits.Header({"WAVEMED": "vacuum"})}, "vacuum"),
        ({"header": fits.Header({"AIRORVAC": "air"})}, "air"),
        ({"header": fits.Header({"AIRORVAC": "vac"})}, "vacuum"),
        ({"header": fits.Header({"VACUUM": True})}, "vacuum"),
        ({"header": fits.Header({"VACUUM": False})}, "air"),
        ({"header": {"vacuum": "T"}}, "vacuum"),
    ],
)
def test_medium_from_meta(grid, meta, medium):
    assert to_model_grid(make_spectrum(meta=meta), grid).medium == medium


def test_medium_keyword_wins(grid):
    """The keyword overrides the meta; a contradiction is named (it was silent)."""
    spec = make_spectrum(meta={"medium": "air"})
    with pytest.warns(AstropyUserWarning, match="medium='vacuum' overrides the air"):
        assert to_model_grid(spec, grid, medium="vacuum").medium == "vacuum"
    assert to_model_grid(spec, grid, medium="air").medium == "air"  # agreeing: no warning
    with pytest.raises(ValueError, match=r"meta\['medium'\] must be 'air' or 'vacuum'"):
        to_model_grid(make_spectrum(meta={"medium": "oil"}), grid)


def test_input_never_modified(grid):
    rng = np.random.default_rng(6)
    wave = np.arange(3950.0, 5050.0)
    flux = bin_means(wave) + rng.normal(0, 0.01, wave.size)
    flux[10] = np.nan
    mask = rng.random(wave.size) < 0.05
    meta = {"medium": "air", "nested": {"a": [1, 2]}, "deepclean": {"old": 1}}
    spec = make_spectrum(
        wave, flux, mask=mask, meta=meta, uncertainty=VarianceUncertainty(np.full(wave.size, 1e-4))
    )
    before = copy.deepcopy((spec.flux, spec.mask, spec.uncertainty.array, dict(spec.meta)))
    gs = to_model_grid(spec, grid)
    back = from_model_grid(gs, gs.flux * 2, gs.sigma, meta={"model": "x"})
    shifted = doppler_shift(spec, 10 * u.km / u.s)
    after = (spec.flux, spec.mask, spec.uncertainty.array, dict(spec.meta))
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
    assert after[3] == before[3]
    assert back.meta["deepclean"] == {"old": 1, "model": "x"}
    assert back.meta["nested"] == meta["nested"] and back.meta["nested"] is not spec.meta["nested"]
    assert shifted.meta["deepclean"]["operation"] == "doppler_shift"
    assert back.mask is not spec.mask and back.mask[mask].all()


def test_scaled_flux_gives_same_grid(grid):
    spec = make_spectrum()
    scaled = make_spectrum(flux=spec.flux.value * 3.7e-16)
    a, b = to_model_grid(spec, grid), to_model_grid(scaled, grid)
    np.testing.assert_allclose(b.flux, a.flux, rtol=1e-13)
    np.testing.assert_allclose(b.scale, a.scale * 3.7e-16, rtol=1e-13)
    pow2 = to_model_grid(make_spectrum(flux=spec.flux.value * 4.0), grid)
    np.testing.assert_array_equal(pow2.flux, a.flux)
    np.testing.assert_array_equal(pow2.scale, 4.0 * a.scale)


def test_normalisation_is_undone_exactly(grid):
    gs = to_model_grid(make_spectrum(), grid)
    assert np.nanmedian(gs.flux) == 1.0
    direct = from_model_grid(gs, gs.flux)
    raw = rebin(
        gs.flux * gs.scale[:, None], grid.wave_aa, np.arange(3950.0, 5050.0), min_coverage=1.0
    )[0]
    np.testing.assert_allclose(direct.flux.value, raw[0], rtol=1e-14)


def test_from_model_grid_checks_and_tensors(grid):
    torch = pytest.importorskip("torch")
    gs = to_model_grid(make_spectrum(), grid)
    assert isinstance(gs, GridSpectra) and gs.n_spec == 1
    with pytest.raises(ValueError, match=r"flux must have shape \(1, 1112\), got \(1112,\)"):
        from_model_grid(gs, gs.flux[0])
    with pytest.raises(TypeError, match="grid_spectra must be a GridSpectra"):
        from_model_grid(gs.flux, gs.flux)
    flux, sigma, missing = gs.tensors(dtype=torch.float64, fill=0.0)
    assert flux.dtype == torch.float64 and missing.dtype == torch.bool
    assert torch.all(flux[missing] == 0) and torch.isnan(sigma[~missing]).all()
    back = from_model_grid(gs, flux, missing=missing)
    np.testing.assert_allclose(
        back.flux.value, from_model_grid(gs, gs.flux).flux.value, equal_nan=True
    )
    missing_out = np.zeros_like(gs.missing)
    missing_out[0, 500:520] = True
    masked = from_model_grid(gs, gs.flux, missing=missing_out)
    hole = (masked.spectral_axis.value > 4451) & (masked.spectral_axis.value < 4466)
    assert masked.mask[hole].all()


def test_spectrum1d_input_returns_spectrum(grid):
    from specutils import Spectrum1D

    with pytest.warns(AstropyDeprecationWarning):
        old = Spectrum1D(
            flux=bin_means(np.arange(3950.0, 5050.0)) * u.Jy,
            spectral_axis=np.arange(3950.0, 5050.0) * u.AA,
            meta={"medium": "air"},
        )
    gs = to_model_grid(old, grid)
    back = from_model_grid(gs, gs.flux)
    assert type(back) is Spectrum
    assert type(doppler_shift(old, 1 * u.km / u.s)) is Spectrum


# --- Doppler shifts ----------------------------------------------------------------


@pytest.mark.parametrize("velocity", [-30.0, -7.3, 12.0, 30.0])
def test_doppler_shift_moves_line_by_lambda_v_over_c(velocity):
    wave = np.arange(5000.0, 5100.0, 0.05)
    line = 5050.0
    flux = 1.0 - 0.8 * np.exp(-0.5 * ((wave - line) / 0.15) ** 2)
    spec = Spectrum(
        flux=flux * u.Jy,
        spectral_axis=wave * u.AA,
        uncertainty=StdDevUncertainty(np.full(wave.size, 0.01)),
    )
    shifted = doppler_shift(spec, velocity * u.km / u.s)
    depth = 1.0 - shifted.flux.value
    near = np.abs(wave - line) < 2.0
    centroid = np.sum(wave[near] * depth[near]) / np.sum(depth[near])
    # s'(lambda) = s(lambda (1 - v/c)): the line moves to line / (1 - v/c) ~ line (1 + v/c)
    assert abs(centroid - line / (1 - velocity / C_KMS)) < 0.002 * 0.05 * 20
    assert abs(centroid - line - line * velocity / C_KMS) < 0.01  # a fifth of a pixel
    assert shifted.spectral_axis is spec.spectral_axis
    assert type(shifted.uncertainty) is StdDevUncertainty
    if velocity > 0:  # pixels shifted in from the blue end have no data
        assert shifted.mask[0] and not shifted.mask[-1]
    else:
        assert shifted.mask[-1] and not shifted.mask[0]


def test_shift_flux_matches_doppler_shift_and_batches():
    rng = np.random.default_rng(7)
    wave = np.arange(5000.0, 5200.0, 0.5)
    flux = 1.0 + 0.3 * np.sin(wave[None, :] / rng.uniform(1, 5, (4, 1)))
    velocity = np.array([-25.0, 0.0, 3.0, 29.0])
    missing = np.zeros(flux.shape, bool)
    missing[2, 100] = True
    out, miss = shift_flux(flux, wave, velocity, missing=missing)
    spec = Spectrum(flux=flux * u.Jy, spectral_axis=wave * u.AA, mask=missing)
    shifted = doppler_shift(spec, velocity * u.km / u.s)
    np.testing.assert_array_equal(miss, shifted.mask)
    np.testing.assert_allclose(out[~miss], shifted.flux.value[~miss], rtol=1e-10)
    np.testing.assert_allclose(out[1], flux[1], rtol=1e-12)
    assert miss[2, 100]


@pytest.mark.parametrize(
    ("velocity", "error", "match"),
    [
        (3.0e5 * u.km / u.s, ValueError, "smaller than the speed of light"),
        (3.0 * u.AA, u.UnitsError, "velocity must be a velocity"),
        ([1.0, 2.0, 3.0] * u.km / u.s, ValueError, "does not fit the batch shape"),
    ],
)
def test_doppler_shift_bad_velocity(velocity, error, match):
    spec = make_spectrum(flux=np.ones((2, 1100)))
    with pytest.raises(error, match=match):
        doppler_shift(spec, velocity)


def test_flux_per_frequency_is_seen_as_flux_per_wavelength():
    wave = np.linspace(4000.0, 6000.0, 801) * u.AA
    f_lambda = (1.0 + 0.2 * np.sin(wave.value / 90.0)) * FLAM
    f_nu = f_lambda.to(u.mJy, u.spectral_density(wave))
    grid = ModelGrid(np.linspace(4100.0, 5900.0, 600) * u.AA, "air")
    spec_lambda = Spectrum(
        flux=f_lambda, spectral_axis=wave, uncertainty=StdDevUncertainty(0.01 * f_lambda.value)
    )
    spec_nu = Spectrum(
        flux=f_nu, spectral_axis=wave, uncertainty=StdDevUncertainty(0.01 * f_nu.value)
    )
    gs_lambda = to_model_grid(spec_lambda, grid, medium="air")
    gs_nu = to_model_grid(spec_nu, grid, medium="air")
    # The same shape on the grid (the model sees F_lambda); only the scale differs.
    np.testing.assert_allclose(gs_nu.flux, gs_lambda.flux, rtol=1e-6)
    np.testing.assert_allclose(gs_nu.sigma, gs_lambda.sigma, rtol=1e-3)
    back_nu = from_model_grid(gs_nu, gs_nu.flux, gs_nu.sigma)
    back_lambda = from_model_grid(gs_lambda, gs_lambda.flux, gs_lambda.sigma)
    assert back_nu.flux.unit == u.mJy
    assert back_nu.uncertainty.unit == u.mJy
    inner = ~back_nu.mask
    np.testing.assert_allclose(back_nu.flux.value[inner], f_nu.value[inner], rtol=1e-3)
    relative_nu = back_nu.uncertainty.array / back_nu.flux.value
    relative_lambda = back_lambda.uncertainty.array / back_lambda.flux.value
    np.testing.assert_allclose(relative_nu[inner], relative_lambda[inner], rtol=1e-3)


def test_grid_to_input_keeps_exact_values_and_marks_uncovered(grid):
    spec = make_spectrum()
    gs = to_model_grid(spec, grid)
    values = np.zeros_like(gs.flux)
    values[:, 100:120] = -0.25
    out, uncovered = grid_to_input(gs, values)
    assert out.shape == spec.shape and uncovered.shape == spec.shape
    # Far from the non-zero block, zeros come back exactly zero.
    inside = ~uncovered
    far = inside & (np.abs(spec.spectral_axis.value - grid.wave_aa[110]) > 20)
    assert np.all(out[far] == 0.0)
    assert np.all(np.isnan(out[uncovered]))
    with pytest.raises(ValueError, match="values must have shape"):
        grid_to_input(gs, values[:, :-1])


def test_median_normalise_scale_equals_nanmedian():
    rng = np.random.default_rng(11)
    flux = rng.lognormal(0.0, 0.5, (40, 31))
    flux[rng.random(flux.shape) < 0.2] = np.nan
    flux[3] = np.nan  # no valid pixel
    flux[4, 1:] = np.nan  # one
    flux[5, 2:] = np.nan  # two
    missing = rng.random(flux.shape) < 0.1
    _, scale = median_normalise(flux, missing)
    expected = np.array(
        [np.median(row[~gone & np.isfinite(row)]) if (~gone & np.isfinite(row)).any() else np.nan
         for row, gone in zip(flux, missing, strict=True)]
    )
    np.testing.assert_array_equal(scale, expected)
    _, scale3 = median_normalise(flux.reshape(4, 10, 31), missing.reshape(4, 10, 31))
    np.testing.assert_array_equal(scale3, expected.reshape(4, 10))


def test_resampling_geometry_cache_follows_the_axis_values_and_stays_bounded():
    # resample._plan and _stencil_weights cache the matrix geometry by the bytes of
    # the bin edges: an axis changed in place, or another axis, gets its own entry.
    from specutils_deepclean.resample import _plan, _stencil_weights

    wave = np.linspace(5000.0, 5100.0, 101)
    out_wave = np.linspace(5010.0, 5090.0, 57)
    flux = 1.0 + 0.001 * (wave - 5000.0) ** 2  # quadratic: reproduced exactly
    first, _, _ = rebin(flux, wave, out_wave)
    np.testing.assert_allclose(first, 1.0 + 0.001 * (out_wave - 5000.0) ** 2, rtol=1e-4)
    wave *= 1.001  # the same array object, new values
    moved, _, _ = rebin(flux, wave, out_wave)
    fresh, _, _ = rebin(flux, wave.copy(), out_wave)
    np.testing.assert_array_equal(moved, fresh)
    assert not np.allclose(moved, first)
    for k in range(40):  # many axes: the caches keep at most their maxsize entries
        rebin(flux, wave + k, out_wave + k)
    for cached in (_plan, _stencil_weights):
        info = cached.cache_info()
        assert info.maxsize is not None and info.currsize <= info.maxsize
