"""The physical mode's stellar model correction (telluric_physical.refine_stellar)."""

import astropy.units as u
import numpy as np

from specutils_deepclean.models.baselines import PCADenoiser
from specutils_deepclean.telluric_physical import refine_stellar

C_KMS = 299792.458
LINES = np.linspace(6200.0, 7500.0, 60)  # rest wavelengths of the synthetic stars' lines


def _depths(rng, n):
    """Line depths of ``n`` stars that vary with four parameters (as stars do with a few)."""
    mixing = np.random.default_rng(0).standard_normal((4, LINES.size))
    return 0.25 + 0.2 * np.tanh(0.5 * rng.standard_normal((n, 4)) @ mixing)


def _stars(wave, depths, velocity=0.0):
    """Power-law continua with Gaussian lines (sigma 1 A) of the given depths."""
    centre = LINES * (1 + velocity / C_KMS)
    profile = np.exp(-0.5 * ((wave[None, :] - centre[:, None]) / 1.0) ** 2)
    return (wave / 6800.0) ** -1.0 * (1 - np.atleast_2d(depths) @ profile)


def _basis(rng, n_stars, n_components):
    """A principal-component basis of synthetic stars at rest, 6000-7700 A (air)."""
    rest = np.arange(6000.0, 7700.0, 0.9)
    return PCADenoiser.fit(_stars(rest, _depths(rng, n_stars)), rest * u.AA,
                           n_components=n_components, medium="air")


def test_refine_stellar_recovers_the_star_under_absorption():
    rng = np.random.default_rng(3)
    basis = _basis(rng, 300, 40)
    wave = np.arange(6100.0, 7600.0, 0.9)
    velocity = 60.0
    star = _stars(wave, _depths(rng, 2), velocity)
    # a model with every line 40 % too shallow, in a 3 % wrong continuum
    model = _stars(wave, 0.6 * np.ones(LINES.size) * 0.25, velocity) * 1.03
    model = np.stack([model[0], np.full(wave.size, np.nan)])
    trans = 1 - 0.6 * np.exp(-0.5 * ((wave - 6900.0) / 3.0) ** 2)[None] * np.ones((2, 1))
    sigma = 0.002 * star
    flux = star * trans + sigma * rng.standard_normal(star.shape)
    valid = np.ones(flux.shape, bool)
    refined, found = refine_stellar(wave, "air", flux, sigma, valid, model, trans, basis)
    inside = (wave > 6300) & (wave < 7400)
    assert abs(found[0] - velocity) < 5.0
    # the model's error inside the region: a few per cent before, well below after
    before = np.std(model[0, inside] / star[0, inside] - 1)
    after = np.std(refined[0, inside] / star[0, inside] - 1)
    assert before > 0.02 and after < 0.2 * before
    # outside the region, and on a row without a model, nothing changes
    assert np.array_equal(refined[0, ~inside], model[0, ~inside])
    assert np.isnan(refined[1]).all()


def test_refine_stellar_leaves_rows_without_enough_clear_pixels():
    rng = np.random.default_rng(4)
    basis = _basis(rng, 100, 10)
    wave = np.arange(6100.0, 7600.0, 0.9)
    star = _stars(wave, _depths(rng, 1))
    trans = np.full(star.shape, 0.5)  # everything absorbed below min_transmission
    refined, _ = refine_stellar(wave, "air", star * trans, 0.01 * star, np.ones(star.shape, bool),
                                star * 1.1, trans, basis)
    assert np.array_equal(refined, star * 1.1)
    # a spectrum outside the basis's range is returned as it came
    far = np.arange(8000.0, 9000.0, 1.0)
    same, velocity = refine_stellar(far, "air", np.ones((1, far.size)), np.ones((1, far.size)),
                                    np.ones((1, far.size), bool), np.ones((1, far.size)),
                                    np.ones((1, far.size)), basis)
    assert np.array_equal(same, np.ones((1, far.size))) and velocity[0] == 0.0


def test_fit_started_from_a_fit_skips_the_velocity_search(monkeypatch):
    import specutils_deepclean.telluric_fit as telluric_fit
    from specutils_deepclean.resample import bin_edges
    from specutils_deepclean.simulate import Simulator

    wave = np.arange(6300.0, 7400.0, 0.9)
    sim = Simulator(wave, "air", fwhm=2.5)
    flux = np.array([sim.transmission_at(x) for x in (1.2, 2.0)])
    args = (bin_edges(wave), "air", flux, np.full_like(flux, 1e-3), np.ones_like(flux, bool),
            np.ones_like(flux))
    cold = telluric_fit.fit_transmission(*args, resolving_power=2828.0)

    def no_search(*_):
        raise AssertionError("the velocity search ran")

    monkeypatch.setattr(telluric_fit, "_velocity_start", no_search)
    warm = telluric_fit.fit_transmission(*args, resolving_power=2828.0, start=cold, n_iter=1)
    assert np.allclose(warm.depths, cold.depths, rtol=0.02)
    assert np.allclose(warm.velocity, cold.velocity, atol=0.5)


def test_remove_tellurics_physical_uses_the_stellar_basis():
    from astropy.nddata import StdDevUncertainty
    from specutils import Spectrum

    from specutils_deepclean import remove_tellurics
    from specutils_deepclean.datasets import load_examples

    lib = load_examples()
    flux = lib.flux[:2].astype(float)
    spec = Spectrum(flux=flux * u.one, spectral_axis=lib.wavelength,
                    uncertainty=StdDevUncertainty(0.01 * flux), meta={"medium": "air"})
    out = remove_tellurics(spec, mode="physical", device="cpu")
    assert out.meta["deepclean"]["stellar_basis"] == "miles-pca"
    assert np.isfinite(out.flux.value[~out.mask]).all()
