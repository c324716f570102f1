"""The per-molecule telluric template and the physical fit (remove_tellurics mode='physical')."""

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum

from specutils_deepclean.resample import bin_edges
from specutils_deepclean.telluric_fit import fit_transmission, telluric_basis
from specutils_deepclean.telluric_template import (
    MOLECULES,
    build_molecular_template,
    load_molecular_template,
)


def _in(wave, lo, hi):
    return (wave > lo) & (wave < hi)


def test_shipped_template_decomposition():
    t = load_molecular_template()
    wave, h2o, o2 = t.wavelength, t.optical_depth["H2O"], t.optical_depth["O2"]
    assert wave[0] <= 3600 and wave[-1] >= 10000 and t.medium == "vacuum"
    # water-free regions: no water depth
    assert h2o[_in(wave, 4000, 5000)].max() < 0.005  # no water band in the blue
    for lo, hi in [(7600, 7640), (6868, 6890)]:
        assert h2o[_in(wave, lo, hi)].max() < 0.02 * o2[_in(wave, lo, hi)].max()
    # the O2 A and B bands are in the dry part, deep
    assert o2[_in(wave, 7590, 7700)].max() > 1.0
    assert o2[_in(wave, 6860, 6930)].max() > 0.2
    # the water bands are water, not dry
    for lo, hi in [(7160, 7340), (8100, 8400), (9300, 9500)]:
        assert h2o[_in(wave, lo, hi)].sum() > 5 * o2[_in(wave, lo, hi)].sum()
    # line part only: no smooth floor left (Rayleigh, ozone Chappuis removed)
    assert np.median(o2[_in(wave, 5000, 5500)]) < 1e-3


def test_build_template_needs_variants():
    from specutils_deepclean.datasets import Transmission

    wave = np.linspace(3000.0, 11000.0, 1000)
    with pytest.raises(ValueError, match="drier/wetter"):
        build_molecular_template(Transmission(wave * u.AA, np.ones(1000)))


def test_build_template_separates_synthetic_molecules():
    from specutils_deepclean.datasets import Transmission
    from specutils_deepclean.tellurics import split_transmission

    wave = 3000.0 * np.exp(np.arange(80000) / 60000.0)
    water = 0.3 * np.exp(-0.5 * ((wave - 9400) / 30) ** 2) * (1 + np.sin(wave))
    dry = 0.8 * np.exp(-0.5 * ((wave - 7600) / 1.0) ** 2)
    # a smooth continuum (Rayleigh-like) under everything: no molecule's line
    smooth = 0.1 * (5000.0 / wave) ** 4
    nominal = np.exp(-(dry + water + smooth))
    trans = Transmission(
        wave * u.AA, nominal, drier=np.exp(-(dry + 0.25 * water + smooth)),
        wetter=np.exp(-(dry + 2.25 * water + smooth)),
    )
    t = build_molecular_template(trans, wave_range=(3500.0, 10500.0))
    got = np.interp(wave, t.wavelength, t.optical_depth["H2O"]) * 3
    band = _in(wave, 9300, 9500)
    # water's line part (its band envelope above the 55 A upper envelope), not the
    # continuum: the same with or without the smooth term
    lines = -np.log(split_transmission(np.exp(-water), wave)[1])
    assert np.allclose(got[band], lines[band], atol=3e-3)
    assert lines[band].max() > 0.3
    assert t.optical_depth["H2O"][_in(t.wavelength, 7590, 7610)].max() < 1e-3
    assert t.optical_depth["O2"][_in(t.wavelength, 9300, 9500)].max() < 1e-3
    # the dry line keeps its depth; the continuum under it is gone
    o2 = np.interp(wave, t.wavelength, t.optical_depth["O2"]) * 3
    assert abs(o2[_in(wave, 7599, 7601)].max() - 0.8) < 0.02
    assert np.median(o2[_in(wave, 5000, 5500)]) < 3e-3  # 1 % of the continuum there
    assert np.isclose(t.meta["WSCALE"], 0.5, rtol=2e-2)


def _synthetic(depths, velocity, power=2000.0, snr=300.0, seed=0):
    wave = 10 ** np.arange(np.log10(5600.0), np.log10(9800.0), 1e-4)
    edges = bin_edges(wave)
    basis = telluric_basis(edges, "vacuum", power)
    tau = basis.evaluate(np.array([depths]), np.array([velocity]))[0]
    star = 1 + 0.2 * (wave - 7000) / 3000
    star = star * (1 - 0.5 * np.exp(-0.5 * ((wave - 5895) / 1.5) ** 2))  # an Na D-like line
    flux = star * np.exp(-tau.sum(axis=1))[0]
    rng = np.random.default_rng(seed)
    sigma = flux / snr
    return wave, edges, star, flux + sigma * rng.standard_normal(wave.size), sigma


def test_fit_recovers_depths_and_velocity():
    wave, edges, star, flux, sigma = _synthetic([1.7, 1.3], 21.0)
    fit = fit_transmission(edges, "vacuum", flux[None], sigma[None], np.ones((1, wave.size), bool),
                           resolving_power=2000.0)
    assert fit.fitted[0]
    assert np.allclose(fit.depths[0], [1.7, 1.3], rtol=0.1)
    assert abs(fit.velocity[0] - 21.0) < 4.0
    # the stellar line is not in the transmission
    assert fit.transmission[0, _in(wave, 5885, 5905)].min() > 0.99
    corrected = flux / fit.transmission[0]
    band = _in(wave, 7590, 7700) & (fit.transmission[0] > 0.3)
    assert np.median(np.abs(corrected[band] / star[band] - 1)) < 0.02


def test_fit_recovers_the_simulators_airmass():
    """The template against the simulator's transmission (ESO model ``T ** (X / 3)``,
    convolved at constant FWHM): noise-free, both columns follow the airmass.  With
    the continuum (Rayleigh, ozone) left on the water pixels of the template, the
    water column came out 0.93 X at X = 2.5 (and 0.84 X with the fit of before)."""
    from specutils_deepclean.simulate import Simulator

    wave = np.arange(6300.0, 7400.0, 0.9)
    airmass = np.array([1.0, 2.5])
    sim = Simulator(wave, "air", fwhm=2.5)
    flux = np.array([sim.transmission_at(x) for x in airmass])
    fit = fit_transmission(bin_edges(wave), "air", flux, np.full_like(flux, 1e-3),
                           np.ones_like(flux, bool), np.ones_like(flux),
                           resolving_power=2828.0)
    ratio = fit.depths / airmass[:, None]
    assert np.all(np.abs(ratio[:, MOLECULES.index("H2O")] - 1) < 0.06), ratio
    assert np.all(np.abs(ratio[:, MOLECULES.index("O2")] - 1) < 0.15), ratio


def test_fit_finds_nothing_without_tellurics():
    """No telluric absorption: no column, no correction (T exactly 1)."""
    wave, edges, star, flux, sigma = _synthetic([0.0, 0.0], 0.0, snr=200)
    fit = fit_transmission(edges, "vacuum", flux[None], sigma[None],
                           np.ones((1, wave.size), bool), resolving_power=2000.0)
    assert np.all(fit.depths == 0)
    assert np.all(fit.transmission == 1)


def test_weak_band_left_alone_at_low_snr():
    """At S/N 10 the weak 6500 A water band is left uncorrected, the O2 A band not."""
    wave, edges, star, flux, sigma = _synthetic([1.0, 1.0], 0.0, snr=10, seed=3)
    fit = fit_transmission(edges, "vacuum", flux[None], sigma[None],
                           np.ones((1, wave.size), bool), resolving_power=2000.0)
    t = fit.transmission[0]
    assert np.all(t[_in(wave, 6400, 6800)] == 1)
    assert t[_in(wave, 7590, 7700)].min() < 0.5
    assert fit.uncorrected_bands[0] >= 1
    # the same at S/N 300: every band corrected
    wave, edges, star, flux, sigma = _synthetic([1.0, 1.0], 0.0, snr=300, seed=3)
    fit = fit_transmission(edges, "vacuum", flux[None], sigma[None],
                           np.ones((1, wave.size), bool), resolving_power=2000.0)
    assert fit.transmission[0, _in(wave, 6400, 6800)].min() < 0.999
    assert fit.uncorrected_bands[0] == 0


def test_fit_chooses_resolution():
    wave, edges, star, flux, sigma = _synthetic([1.5, 1.5], 0.0, power=2000.0, snr=500)
    fit = fit_transmission(edges, "vacuum", flux[None], sigma[None], np.ones((1, wave.size), bool))
    assert 2000 / 1.3 < fit.resolving_power < 2000 * 1.3


@pytest.fixture(scope="module")
def red_spectrum():
    """A smooth star 5600-9800 A (beyond the shipped model's 7410 A) with injected bands."""
    wave, edges, star, flux, sigma = _synthetic([1.4, 1.2], -12.0)
    return Spectrum(
        flux=flux * u.one, spectral_axis=wave * u.AA, uncertainty=StdDevUncertainty(sigma),
        meta={"medium": "vacuum"},
    ), star


def test_physical_mode_outside_model_range(red_spectrum):
    from specutils_deepclean import remove_tellurics

    spec, star = red_spectrum
    out = remove_tellurics(spec, mode="physical", device="cpu", resolution=2000.0)
    wave = spec.spectral_axis.to_value(u.AA)
    meta = out.meta["deepclean"]
    for key in ("transmission", "transmission_molecules", "depths", "depth_uncertainty",
                "o2_airmass", "h2o_column", "telluric_velocity", "resolving_power", "masked"):
        assert key in meta
    assert set(meta["transmission_molecules"]) == set(MOLECULES)
    assert abs(meta["o2_airmass"] - 1.2) < 0.15
    assert abs(meta["h2o_column"] - 1.4 / 1.2) < 0.15
    assert meta["uncorrected_bands"] == 0
    assert abs(meta["telluric_velocity"] + 12.0) < 5.0
    t_h2o = meta["transmission_molecules"]["H2O"].flux.value
    t_o2 = meta["transmission_molecules"]["O2"].flux.value
    assert t_o2[_in(wave, 7590, 7700)].min() < 0.5 and t_h2o[_in(wave, 7590, 7700)].min() > 0.9
    assert t_h2o[_in(wave, 8900, 9800)].min() < 0.75  # injected: 0.68
    good = ~out.mask & _in(wave, 7550, 9800)
    assert np.median(np.abs(out.flux.value[good] / star[good] - 1)) < 0.01
    # Na D-like stellar line untouched
    nad = _in(wave, 5885, 5905)
    assert np.allclose(out.flux.value[nad], spec.flux.value[nad], rtol=0.01)
    # uncertainty includes the transmission's: at least the divided input's
    unc = out.uncertainty.array
    divided = spec.uncertainty.array / meta["transmission"].flux.value
    assert np.all(unc[~out.mask] >= divided[~out.mask] * (1 - 1e-9))


def test_physical_mode_masks_saturated(red_spectrum):
    from specutils_deepclean import remove_tellurics

    spec, _ = red_spectrum
    deep = Spectrum(flux=spec.flux, spectral_axis=spec.spectral_axis,
                    uncertainty=spec.uncertainty, meta={"medium": "vacuum"})
    out = remove_tellurics(deep, mode="physical", device="cpu", resolution=2000.0)
    # masked where the whole transmission (the molecules' product) is below the floor
    molecules = out.meta["deepclean"]["transmission_molecules"].values()
    t = np.prod([m.flux.value for m in molecules], axis=0)
    assert np.array_equal(out.mask & np.isfinite(spec.flux.value), t < 0.05)
    assert out.meta["deepclean"]["masked"]["transmission_below_floor"] == int((t < 0.05).sum())


def test_physical_mode_on_model_grid_leaves_nad():
    from specutils_deepclean import remove_tellurics
    from specutils_deepclean.datasets import load_examples
    from specutils_deepclean.simulate import Simulator, prepare_truth

    lib = load_examples()
    wave = lib.wavelength.value
    rows = np.flatnonzero(np.char.strip(np.asarray(lib.labels, dtype=str)) == "M")
    truth, _ = prepare_truth(lib, wave, lib.medium)
    obs = Simulator(wave, lib.medium, fwhm=2.5).observe(truth[rows], 200, seed=5, airmass=1.5)
    out = remove_tellurics(obs.to_spectrum(), mode="physical", device="cpu")
    t = np.atleast_2d(out.meta["deepclean"]["transmission"].flux.value)
    assert t[:, _in(wave, 5880, 5905)].min() >= 0.98
    assert t[:, _in(wave, 6865, 6900)].min() < 0.9  # the B band is corrected


def test_physical_mode_beyond_model_range():
    """A spectrum that does not reach the model's range at all is still corrected."""
    from specutils_deepclean import remove_tellurics

    wave, _, star, flux, sigma = _synthetic([1.0, 1.5], 8.0)
    red = wave > 7450
    spec = Spectrum(flux=flux[red] * u.one, spectral_axis=wave[red] * u.AA,
                    uncertainty=StdDevUncertainty(sigma[red]), meta={"medium": "vacuum"})
    out = remove_tellurics(spec, mode="physical", device="cpu", resolution=2000.0)
    assert abs(out.meta["deepclean"]["o2_airmass"] - 1.5) < 0.2
    good = ~out.mask
    assert np.median(np.abs(out.flux.value[good] / star[red][good] - 1)) < 0.01
    with pytest.raises(ValueError, match="no overlap"):
        remove_tellurics(spec, mode="divide", device="cpu")


def test_physical_mode_batch_with_an_empty_row():
    """A batch row without data comes back masked, the others fitted; meta per row in the
    batch's shape; no warning but the package's own."""
    from astropy.utils.exceptions import AstropyUserWarning

    from specutils_deepclean import remove_tellurics
    from specutils_deepclean.datasets import load_examples

    lib = load_examples()
    flux = lib.flux[3].astype(float)
    batch = np.stack([np.stack([flux, np.full_like(flux, np.nan)])] * 2)
    spec = Spectrum(flux=batch * u.one, spectral_axis=lib.wavelength,
                    uncertainty=StdDevUncertainty(0.01 * batch), meta={"medium": "air"})
    with pytest.warns(AstropyUserWarning, match="no valid pixel"):
        out = remove_tellurics(spec, mode="physical", device="cpu")
    meta = out.meta["deepclean"]
    assert np.array(meta["depths"]["O2"]).shape == (2, 2)
    assert np.array(meta["telluric_velocity"]).shape == (2, 2)
    assert out.mask[:, 1].all() and not out.mask[:, 0].all()
    assert np.isfinite(out.flux.value[:, 0]).all()



def test_basis_cache_is_per_template_object(monkeypatch):
    """Two templates with the same id (CPython reuses a freed object's) get their own basis."""
    import specutils_deepclean.telluric_fit as telluric_fit
    from specutils_deepclean.telluric_template import MolecularTemplate

    monkeypatch.setattr(telluric_fit, "id", lambda obj: -1, raising=False)
    wave = 6000.0 * np.exp(np.arange(20000) / 60000.0)
    line = np.exp(-0.5 * ((wave - 6500.0) / 0.5) ** 2)
    edges = bin_edges(np.linspace(6200.0, 6800.0, 600))
    first = MolecularTemplate(wave, {"H2O": line, "O2": 0 * line})
    second = MolecularTemplate(wave, {"H2O": 0 * line, "O2": 0 * line})
    assert telluric_basis(edges, "vacuum", 3000.0, first).tau.max() > 0
    assert telluric_basis(edges, "vacuum", 3000.0, second).tau.max() < 1e-6


def test_line_part_matches_the_split_of_whole_rows():
    """The line part, computed over the absorbing stretch only, is the package's split of
    the whole rows; a row without absorption stays 1."""
    from specutils_deepclean.telluric_physical import line_part
    from specutils_deepclean.tellurics import split_transmission

    wave, edges, _, _, _ = _synthetic([1.4, 1.2], 0.0)
    basis = telluric_basis(edges, "vacuum", 2000.0)
    tau = basis.evaluate(np.array([[1.4, 1.2], [0.0, 0.0]]), np.zeros(2), derivatives=False)[0]
    trans = np.exp(-tau.sum(axis=1).astype(float))
    lines = line_part(trans, wave)
    assert np.allclose(lines[0], split_transmission(trans[0], wave)[1], rtol=0, atol=1e-12)
    assert np.all(lines[1] == 1.0)
    # the blended 9400 A band keeps a smooth envelope: the line part is shallower
    band = _in(wave, 8900, 9800)
    assert np.all(lines[0] >= trans[0]) and np.median(lines[0, band] / trans[0, band]) > 1.005
