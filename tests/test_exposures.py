"""Several exposures of one star: one level, pooled estimates, a joint fit at least as good
as the co-add (exposures.py, inference.denoise_arrays, the denoiser's velocity pooling)."""

import numpy as np
import pytest

from specutils_deepclean.exposures import exposure_scales, pool_velocities, random_effects
from specutils_deepclean.spectra import median_normalise

torch = pytest.importorskip("torch")

from test_denoiser_model import FAST, N_PIX, draw, make_model  # noqa: E402

from specutils_deepclean.inference import denoise_arrays  # noqa: E402


def test_random_effects_pools_agreeing_estimates_only():
    values = np.array([[1.0, 1.2, 1.1], [0.0, 10.0, 20.0]])
    variances = np.array([[0.04, 0.04, 0.01], [0.04, 0.04, 0.04]])
    pooled, var = random_effects(values, variances)
    # agreeing: all the precision-weighted mean, with its variance
    mean = np.sum(values[0] / variances[0]) / np.sum(1 / variances[0])
    np.testing.assert_allclose(pooled[0], mean)
    np.testing.assert_allclose(var[0], 1 / np.sum(1 / variances[0]))
    # far apart (tau >> errors): each keeps about its own value and variance
    np.testing.assert_allclose(pooled[1], values[1], atol=0.05)
    np.testing.assert_allclose(var[1], variances[1], rtol=0.05)


@pytest.mark.parametrize("n_exp", [2, 4])
def test_random_effects_keeps_agreeing_estimates_apart_at_the_significance_only(n_exp):
    """Estimates of one value (no real spread) stay apart in a share ``significance``
    of the stars (the plain DerSimonian-Laird estimate: 0.32 of them for two, 0.39
    for four); estimates far apart stay apart."""
    rng = np.random.default_rng(3)
    variances = rng.uniform(0.5, 2.0, (4000, n_exp))
    values = rng.normal(size=variances.shape) * np.sqrt(variances)
    for significance in (0.05, 0.2):
        pooled, _ = random_effects(values, variances, significance)
        apart = np.ptp(pooled, axis=1) > 1e-9
        assert abs(apart.mean() - significance) < 0.02
    spread = values + 30 * np.arange(n_exp)
    assert np.all(np.ptp(random_effects(spread, variances)[0], axis=1) > 20 * (n_exp - 1))


@pytest.mark.parametrize("significance", [0, 1, -0.1, 1.5])
def test_random_effects_refuses_a_bad_significance(significance):
    with pytest.raises(ValueError, match="significance must be in"):
        random_effects([[1.0, 2.0]], [[1.0, 1.0]], significance)


def test_random_effects_leaves_out_missing_and_rejects_bad_input():
    pooled, var = random_effects([[1.0, np.nan, 3.0]], [[1.0, 1.0, np.inf]])
    assert pooled[0, 0] == 1.0 and np.isnan(pooled[0, 1]) and pooled[0, 2] == 3.0
    assert var[0, 0] == 1.0 and np.isinf(var[0, 2])
    with pytest.raises(ValueError, match="positive"):
        random_effects([[1.0, 2.0]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="2-D"):
        random_effects([1.0, 2.0], [1.0, 1.0])


def test_pool_velocities_keep_the_shared_floor():
    """The floor (star/model mismatch, shared by the exposures) does not shrink with
    their number; only each exposure's own error is pooled."""
    own, floor = 3.0, 5.2
    for n in (2, 4, 16):
        velocity = np.full((1, n), 10.0) + np.linspace(-0.5, 0.5, n)
        error = np.full((1, n), np.hypot(own, floor))
        pooled, pooled_error = pool_velocities(velocity, error, floor)
        np.testing.assert_allclose(pooled, velocity.mean(), rtol=1e-12)
        np.testing.assert_allclose(pooled_error, np.hypot(own / np.sqrt(n), floor))
        assert np.all(pooled_error > floor)
    # without a floor: the plain random-effects pooling, the error shrinks by sqrt(n)
    _, plain = pool_velocities(np.zeros((1, 4)), np.full((1, 4), 2.0))
    np.testing.assert_allclose(plain, 1.0)
    # an exposure without information keeps its inf; an error at the floor is valid
    v, e = pool_velocities([[1.0, 2.0, 3.0]], [[np.inf, floor, 6.0]], floor)
    assert np.isinf(e[0, 0]) and np.all(np.isfinite(e[0, 1:])) and np.all(e[0, 1:] >= floor)
    with pytest.raises(ValueError, match="floor"):
        pool_velocities([[1.0, 2.0]], [[1.0, 1.0]], -1.0)


def _lined(n_star, n_exp, snr, throughput, rng):
    """Skewed spectra (continuum 1 with deep lines, median above the mean) and noise."""
    pixels = np.arange(2000)
    lines = np.zeros(pixels.size)
    for centre in rng.uniform(0, pixels.size, 150):
        lines += 0.6 * np.exp(-0.5 * ((pixels - centre) / 3.0) ** 2)
    truth = np.clip(1 - lines, 0.05, None)
    sigma = np.full((n_star, n_exp, pixels.size), 1 / snr) * np.asarray(throughput)[:, None]
    flux = truth * np.asarray(throughput)[:, None] + sigma * rng.normal(size=sigma.shape)
    return truth, flux, sigma


def test_exposure_scales_give_the_coadds_level_to_every_exposure():
    """Equal throughputs: one scale for all exposures, less biased than each median."""
    rng = np.random.default_rng(0)
    truth, flux, sigma = _lined(30, 4, 3.0, [1.0] * 4, rng)
    normalised, medians = median_normalise(flux)
    total = medians * exposure_scales(normalised, sigma / medians[..., None], scale=medians)
    true_level = np.median(truth)
    assert np.median(np.std(total, 1) / total.mean(1)) < 0.3 * np.median(np.std(medians, 1))
    assert np.mean(np.abs(total[:, 0] - true_level)) < 0.8 * np.mean(
        np.abs(medians[:, 0] - true_level)
    )
    # without sigma (DER_SNR levels) the same pooling
    blind = medians * exposure_scales(normalised, scale=medians)
    assert np.median(np.std(blind, 1) / blind.mean(1)) < 0.3 * np.median(np.std(medians, 1))


def test_exposure_scales_keep_real_throughput_and_ignore_cosmics():
    rng = np.random.default_rng(1)
    truth, flux, sigma = _lined(5, 2, 20.0, [1.0, 1.3], rng)
    flux[:, 0, 100:103] += 50.0  # a cosmic-ray hit in every first exposure
    factor = exposure_scales(flux, sigma)
    np.testing.assert_allclose(factor[:, 1] / factor[:, 0], 1.3, rtol=0.01)
    with pytest.raises(ValueError, match="3-D"):
        exposure_scales(flux[:, 0])
    with pytest.raises(ValueError, match="scale"):
        exposure_scales(flux, sigma, scale=np.ones((5, 3)))


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_joint_fit_of_exposures_is_as_good_as_their_coadd(model):
    """Four noisy exposures of each star in one posterior do as well as their co-add
    denoised as one spectrum, and far better than one of them.  Before the exposures
    shared one level (each its own median: the first one's set the output's level and
    the noise biased each), the joint fit gave 1.85 times the co-add's median MSE here
    and 0.94 times one exposure's."""
    _, _, signal, flux, sigma = draw(model, 24, seed=12, n_exp=4, noise=0.4)
    joint = denoise_arrays(model, flux, sigma, **FAST)
    weight = 1 / sigma**2
    coadd = (flux * weight).sum(1) / weight.sum(1)
    alone = denoise_arrays(model, coadd, 1 / np.sqrt(weight.sum(1)), **FAST)
    first = denoise_arrays(model, flux[:, 0], sigma[:, 0], **FAST)

    def mse(out):
        return np.median(np.mean((out.flux - signal) ** 2, axis=1))

    assert mse(joint) < 1.2 * mse(alone)
    assert mse(joint) < 0.75 * mse(first)
    assert joint.flux.shape == (24, N_PIX)
