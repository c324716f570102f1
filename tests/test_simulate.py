"""The observation simulator: truth preparation, each noise term's statistics, gaps,
tellurics, determinism."""

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from numpy.testing import assert_allclose, assert_array_equal
from specutils import Spectrum

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.metrics import der_snr
from specutils_deepclean.simulate import (
    GAP_PLACES,
    GAP_WIDTHS,
    Simulator,
    gap_slice,
    prepare_truth,
)

GRID = np.linspace(3600.0, 7400.0, 2000)


@pytest.fixture(scope="module")
def examples():
    return load_examples()


@pytest.fixture(scope="module")
def truth(examples):
    return prepare_truth(examples, GRID, "air")[0]


@pytest.fixture(scope="module")
def sim():
    return Simulator(GRID, "air")


@pytest.fixture(scope="module")
def flat_batch():
    """64 flat spectra: every statistic of the noise is then easy to read off."""
    return np.ones((64, GRID.size))


# ----------------------------------------------------------------------------- truth


def test_prepare_truth(examples, truth):
    assert truth.shape == (8, GRID.size)
    assert_allclose(np.median(truth, axis=1), 1.0)
    vac, valid = prepare_truth(examples, GRID, "vacuum")
    assert valid.all()
    # Vacuum wavelengths are ~1.5 A longer: on the same numbers, the lines sit redder.
    shift = np.argmax(np.correlate(vac[3] - 1, truth[3] - 1, "full")) - (GRID.size - 1)
    assert shift == 1  # 1.5 A / 1.9 A per pixel rounds to one pixel


def test_prepare_truth_partial_coverage(examples):
    grid = np.linspace(3400.0, 5000.0, 800)
    truth, valid = prepare_truth(examples, grid, "air")
    assert not valid[:, grid < 3540].any() and valid[:, grid > 3542].all()
    assert np.isnan(truth[~valid]).all()


def test_prepare_truth_no_overlap(examples):
    with pytest.raises(ValueError, match="no valid pixels with a positive median"):
        prepare_truth(examples, np.linspace(8000.0, 9000.0, 100), "air")


# ------------------------------------------------------------------------ the terms


def test_der_snr_at_target(sim, truth):
    """DER_SNR within 15% of S/N 10 (no sky, no cosmics: DER_SNR would count them)."""
    batch = np.repeat(truth, 4, axis=0)
    obs = sim.observe(batch, 10.0, seed=0, sky=False, cosmics=False)
    assert abs(np.median(obs.der_snr) / 10.0 - 1) < 0.15
    assert np.all(np.abs(obs.der_snr / 10.0 - 1) < 0.25)
    # the median per-pixel S/N is the target exactly
    assert_allclose(np.median(obs.truth / obs.sigma, axis=1), 10.0)


def test_der_snr_matches_specutils(sim, truth):
    obs = sim.observe(truth[:2], 5.0, seed=1, gap=(100, "middle"))
    assert_allclose(obs.der_snr, der_snr(obs.flux, mask=obs.mask), rtol=1e-12)


def test_snr_per_spectrum(sim, truth):
    snr = np.array([2, 5, 10, 20, 50, 10, 10, 10.0])
    obs = sim.observe(truth, snr, seed=2, sky=False, cosmics=False)
    assert_allclose(np.median(obs.truth / obs.sigma, axis=1), snr)
    assert_array_equal(obs.snr_target, snr)


def test_photon_and_read_terms(sim):
    """sigma**2 is linear in the flux: a * (F + r * median(F)), r = read_fraction."""
    truth = np.tile(np.linspace(0.5, 1.5, GRID.size), (2, 1))
    obs = sim.observe(truth, 10.0, seed=3, sky=False)
    var = obs.sigma[0] ** 2
    slope, offset = np.polyfit(truth[0], var, 1)
    assert offset / slope == pytest.approx(sim.settings["read_fraction"] * 1.0, rel=1e-6)
    # empirical: the residuals have the reported variance
    resid = (obs.flux - obs.truth)[~obs.cosmics] / obs.sigma[~obs.cosmics]
    assert np.std(resid) == pytest.approx(1.0, abs=0.03)


def test_sky_residual_follows_sky(sim, flat_batch):
    """Residual variance per pixel, over many draws, follows the sky spectrum."""
    obs = sim.observe(flat_batch, 20.0, seed=4, cosmics=False)
    var = np.var(obs.flux - obs.truth, axis=0)
    assert np.corrcoef(var, sim.sky)[0, 1] > 0.9
    off = sim.observe(flat_batch, 20.0, seed=4, cosmics=False, sky=False)
    assert abs(np.corrcoef(np.var(off.flux - off.truth, axis=0), sim.sky)[0, 1]) < 0.2
    # the systematic part: one fraction of the sky per spectrum, a few per cent
    fraction = np.mean((obs.flux - obs.truth) * sim.sky, axis=1) / np.mean(sim.sky**2)
    assert np.abs(fraction).max() < 0.07 and np.std(fraction) > 0.01


def test_cosmics(sim, flat_batch):
    obs = sim.observe(flat_batch[:16], 10.0, seed=5)
    counts = obs.cosmics.sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= 15
    excess = (obs.flux - obs.truth) / obs.sigma
    assert excess[obs.cosmics].min() > 5  # large and positive
    clean = sim.observe(flat_batch[:16], 10.0, seed=5, cosmics=False)
    # sigma does not know the cosmics, and nothing else changes
    assert_array_equal(obs.sigma, clean.sigma)
    assert_array_equal(obs.flux[~obs.cosmics], clean.flux[~obs.cosmics])
    assert not clean.cosmics.any()


def _lag1(x):
    x = x - x.mean(axis=1, keepdims=True)
    return np.sum(x[:, 1:] * x[:, :-1]) / np.sum(x * x)


def test_correlated_noise(flat_batch):
    kwargs = dict(seed=6, sky=False, cosmics=False)
    only = Simulator(GRID, "air", correlated_fraction=1.0).observe(flat_batch, 10, **kwargs)
    white = Simulator(GRID, "air", correlated_fraction=0.0).observe(flat_batch, 10, **kwargs)
    assert _lag1(only.flux - 1) > 0.08
    assert abs(_lag1(white.flux - 1)) < 0.02
    # rescaled to the reported variance either way
    assert np.std((only.flux - 1) / only.sigma) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(
    "width, place, start",
    [(100, "blue", 0), (400, "middle", 800), (800, "red", 1200)],
)
def test_gap(sim, truth, width, place, start):
    obs = sim.observe(truth, 10.0, seed=7, gap=(width, place))
    expected = np.zeros(GRID.size, bool)
    expected[start:start + width] = True
    assert_array_equal(obs.mask, np.tile(expected, (8, 1)))
    assert np.isnan(obs.flux[obs.mask]).all() and np.isfinite(obs.flux[~obs.mask]).all()
    assert_array_equal(obs.gap, np.tile([start, start + width], (8, 1)))


def test_gap_random(sim, flat_batch):
    obs = sim.observe(flat_batch, 10.0, seed=8, gap="random")
    widths = obs.gap[:, 1] - obs.gap[:, 0]
    assert set(widths) == {100, 400, 800}
    assert set(obs.gap[:, 0]) >= {0}
    assert_array_equal(obs.mask.sum(axis=1), widths)


def test_survey_gap_fraction(examples):
    from specutils_deepclean.training.telluric_data import observe_split

    plain = observe_split(examples, GRID, "air", copies=8, seed=3)
    gapped = observe_split(examples, GRID, "air", copies=8, seed=3, gap_fraction=0.5)
    lost = np.isnan(gapped.flux) & ~np.isnan(plain.flux)
    # the observations are the same; only the gaps differ
    assert_array_equal(gapped.flux[~lost], plain.flux[~lost])
    rows = np.flatnonzero(lost.any(axis=1))
    assert 0 < rows.size < len(lost)
    gaps = [gap_slice(w, p, GRID.size) for w in GAP_WIDTHS for p in GAP_PLACES]
    for row in rows:  # each gapped spectrum lost exactly one gap of the protocol
        missing = np.isnan(gapped.flux[row])
        inside = [np.isin(np.arange(GRID.size), np.arange(g.start, g.stop)) for g in gaps]
        assert any(
            missing[g].all() and not lost[row, ~i].any()
            for g, i in zip(gaps, inside, strict=True)
        )
    with pytest.raises(ValueError, match="gap_fraction"):
        observe_split(examples, GRID, "air", copies=1, seed=3, gap_fraction=1.5)


def test_tellurics(sim, truth):
    t1, t2 = sim.transmission_at(1.0), sim.transmission_at(2.0)
    assert np.all(t2 <= t1 + 1e-12) and t2.min() < t1.min() < 1
    band = (GRID > 6860) & (GRID < 6890)  # O2 B band (air)
    assert t1[band].min() < 0.9
    assert np.mean(1 - t2) > 1.8 * np.mean(1 - t1)
    obs = sim.observe(truth, 50.0, seed=9, airmass=np.array([1.0] * 4 + [2.0] * 4))
    assert_allclose(obs.transmission[0], t1) and assert_allclose(obs.transmission[-1], t2)
    assert np.all(np.abs(obs.stellar_rv) <= 50) and np.std(obs.stellar_rv) > 0
    noiseless = obs.truth * obs.transmission
    assert np.nanmedian(np.abs(obs.flux - noiseless) / obs.sigma) < 1.0


def test_stellar_rv_shifts_star_not_tellurics(sim, truth):
    obs = sim.observe(truth[3:4], 50.0, seed=10, airmass=1.5, stellar_rv=100 * u.km / u.s)
    assert_array_equal(obs.truth_rest, truth[3:4])
    # Cross-correlation: the star moves ~1.4 px red (100 km/s at 5500 A, 1.9 A/px) ...
    lags = np.arange(-5, 6)
    a, b = np.nan_to_num(obs.truth[0] - 1), truth[3] - 1
    cc = [np.sum(np.roll(b, k) * a) for k in lags]
    assert lags[np.argmax(cc)] == 1
    # ... the transmission stays where it is
    assert_allclose(obs.transmission[0], sim.transmission_at(1.5))


def test_no_tellurics_no_shift(sim, truth):
    obs = sim.observe(truth, 10.0, seed=11)
    assert_array_equal(obs.transmission, 1.0)
    assert_array_equal(obs.stellar_rv, 0.0)
    assert_array_equal(obs.truth, obs.truth_rest)
    assert np.isnan(obs.airmass).all()


# --------------------------------------------------------------------- determinism


def test_seed(sim, truth):
    kwargs = dict(gap="random", airmass=1.2)
    a = sim.observe(truth, 10.0, seed=12, **kwargs)
    b = sim.observe(truth, 10.0, seed=12, **kwargs)
    c = sim.observe(truth, 10.0, seed=13, **kwargs)
    assert_array_equal(a.flux, b.flux)
    assert_array_equal(a.stellar_rv, b.stellar_rv)
    assert not np.allclose(np.nan_to_num(a.flux), np.nan_to_num(c.flux))


def test_global_rng_untouched(sim, truth):
    state = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state
    sim.observe(truth, 10.0, seed=14, gap="random", airmass=1.1)
    assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


# ----------------------------------------------------------------------- to_spectrum


def test_to_spectrum(sim, truth):
    obs = sim.observe(truth, 10.0, seed=15, gap=(100, "red"))
    spec = obs.to_spectrum()
    assert isinstance(spec, Spectrum) and spec.flux.shape == (8, GRID.size)
    assert isinstance(spec.uncertainty, StdDevUncertainty)
    assert_array_equal(spec.mask, obs.mask)
    assert spec.meta["medium"] == "air"
    assert spec.meta["simulation"]["seed"] == 15
    assert_allclose(spec.spectral_axis.to_value(u.AA), GRID)


# ---------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"snr": 0.0}, "snr must be positive"),
        ({"snr": np.ones(3)}, r"snr must be a scalar or have one value per spectrum \(8\)"),
        ({"gap": (100, "left")}, "gap place must be one of"),
        ({"gap": (0, "blue")}, "gap width must be an integer"),
        ({"gap": (100.0, "blue")}, "gap width must be an integer"),
        ({"gap": "some"}, "gap must be None, 'random' or"),
        ({"airmass": 0.5}, "airmass must be >= 1"),
        ({"airmass": np.nan}, "airmass must be finite"),
    ],
)
def test_observe_bad(sim, truth, kwargs, match):
    kwargs = {"snr": 10.0, **kwargs}
    snr = kwargs.pop("snr")
    with pytest.raises(ValueError, match=match):
        sim.observe(truth, snr, seed=0, **kwargs)


def test_observe_bad_truth(sim):
    with pytest.raises(ValueError, match=r"truth must have shape \(n, 2000\)"):
        sim.observe(np.ones((2, 10)), 10.0, seed=0)
    truth = np.ones((2, GRID.size))
    truth[1] = np.nan
    with pytest.raises(ValueError, match=r"no valid pixel left in spectra \[1\]"):
        sim.observe(truth, 10.0, seed=0)


def test_snr_with_gap(sim, truth):
    obs = sim.observe(truth, 10.0, seed=16, gap=(800, "blue"), airmass=1.5)
    assert_allclose(np.nanmedian(obs.truth * obs.transmission / obs.sigma, axis=1), 10.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"correlated_fraction": 1.5}, r"correlated_fraction must be a number in \[0, 1\]"),
        ({"oversample": 1.0}, "oversample must be > 1"),
        ({"fwhm": 0.0}, r"fwhm must be a number in \(0"),
        ({"cosmics_per_spectrum": (3, 1)}, "cosmics_per_spectrum must be"),
    ],
)
def test_simulator_bad(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Simulator(GRID, "air", **kwargs)


def test_simulator_bad_grid():
    with pytest.raises(ValueError, match="medium must be 'air' or 'vacuum'"):
        Simulator(GRID, "water")
    with pytest.raises(ValueError, match="strictly increasing"):
        Simulator(GRID[::-1], "air")
    with pytest.raises(ValueError, match="the sky spectrum does not cover the grid"):
        Simulator(np.linspace(2500.0, 4000.0, 100), "air")


def test_write_files(sim, truth, tmp_path):
    obs = sim.observe(truth[:2], 20.0, seed=4, gap=(100, "blue"))
    paths = obs.write_files(tmp_path / "survey", prefix="night1")
    assert [p.name for p in paths] == ["night1_00000.fits", "night1_00001.fits"]
    back = Spectrum.read(paths[1], format="tabular-fits")
    unit = 1e-17 * u.erg / (u.s * u.cm**2 * u.AA)
    assert_allclose(back.flux[~back.mask].to_value(unit), obs.flux[1][~obs.mask[1]], rtol=1e-12)
    assert_array_equal(back.mask, obs.mask[1])
    assert_allclose(back.uncertainty.array[~back.mask] * back.flux.unit.to(unit),
                    obs.sigma[1][~obs.mask[1]], rtol=1e-12)
    assert back.meta["header"]["WAVEMED"] == obs.medium and back.meta["header"]["SIMROW"] == 1
