"""Denoising baselines: classical smoothing / wavelet shrinkage and the CDAE."""

import sys

import astropy.units as u
import numpy as np
import pytest
import pywt
import torch
from scipy.ndimage import gaussian_filter1d, median_filter

from specutils_deepclean.metrics import mse
from specutils_deepclean.models import MODEL_REGISTRY
from specutils_deepclean.models.base import DeepCleanModel
from specutils_deepclean.models.cdae import ConvDenoisingAutoencoder
from specutils_deepclean.models.classical import (
    gaussian_smooth_baseline,
    median_smooth_baseline,
    wavelet_denoise,
)
from specutils_deepclean.simulate import Simulator
from specutils_deepclean.training.cdae import train_cdae

N_PIX = 256
CDAE_PATH = "specutils_deepclean.models.cdae:ConvDenoisingAutoencoder"
TINY = {"channels": 2, "bottleneck_length": 8, "hidden": 8, "block": 4}


def _clean(rng, n=4, n_pix=N_PIX):
    """Smooth spectra: continuum 1, a slow wave and two broad absorption lines."""
    x = np.linspace(0.0, 1.0, n_pix)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    lines = 0.4 * np.exp(-0.5 * ((x - 0.3) / 0.02) ** 2) + 0.3 * np.exp(
        -0.5 * ((x - 0.7) / 0.03) ** 2
    )
    return 1.0 + 0.1 * np.sin(4 * x + phase) - lines


@pytest.fixture
def noisy():
    rng = np.random.default_rng(3)
    clean = _clean(rng)
    return clean, clean + 0.05 * rng.standard_normal(clean.shape)


BASELINES = [
    pytest.param(lambda f, m: gaussian_smooth_baseline(f, m, 3.0), id="gaussian"),
    pytest.param(lambda f, m: median_smooth_baseline(f, m, 9), id="median"),
    pytest.param(lambda f, m: wavelet_denoise(f, m), id="wavelet-soft"),
    pytest.param(lambda f, m: wavelet_denoise(f, m, mode="hard", wavelet="db4"), id="wavelet-hard"),
]


# ---------------------------------------------------------------------- classical


@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_reduces_mse(baseline, noisy):
    clean, flux = noisy
    out = baseline(flux, np.zeros(flux.shape, bool))
    assert out.shape == flux.shape
    assert np.all(mse(out, clean) < 0.4 * mse(flux, clean))


@pytest.mark.parametrize("baseline", BASELINES)
def test_missing_values_never_reach_the_output(baseline, noisy):
    clean, flux = noisy
    missing = np.zeros(flux.shape, bool)
    missing[0, 100:140] = True
    missing[1, :30] = True
    missing[2, -5:] = True
    other = flux.copy()
    other[missing] = np.random.default_rng(0).uniform(-1e6, 1e6, missing.sum())
    with_nan = np.where(missing, np.nan, flux)
    reference = baseline(flux, missing)
    np.testing.assert_array_equal(baseline(other, missing), reference)
    np.testing.assert_array_equal(baseline(with_nan, None), reference)
    assert np.all(np.isfinite(reference))
    # gaps are bridged, not zero-filled: the output stays near the spectrum there
    assert np.all(np.abs(reference - clean)[missing] < 0.3)


@pytest.mark.parametrize("baseline", BASELINES)
def test_constant_spectrum_with_gap_is_unchanged_to_the_edges(baseline):
    flux = np.ones((2, 100))
    missing = np.zeros(flux.shape, bool)
    missing[0, 40:60] = True
    missing[1, :10] = True
    np.testing.assert_allclose(baseline(np.where(missing, 0.0, flux), missing), 1.0, atol=1e-12)


@pytest.mark.parametrize("width", [0.7, 2.0, 5.0])
def test_gaussian_matches_scipy_reflect(width, noisy):
    _, flux = noisy
    expected = gaussian_filter1d(flux, width, axis=-1, mode="reflect", truncate=4.0)
    out = gaussian_smooth_baseline(flux, None, width)
    np.testing.assert_allclose(out[:, 1:-1], expected[:, 1:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("width", [1, 3, 7, 31])
def test_median_matches_scipy_reflect_per_spectrum(width, noisy):
    _, flux = noisy
    expected = median_filter(flux, size=(1, width), mode="reflect")
    np.testing.assert_array_equal(median_smooth_baseline(flux, None, width), expected)


def test_median_does_not_mix_spectra():
    flux = np.array([[1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(median_smooth_baseline(flux, None, 3), flux)


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("n_pix", [256, 257])
@pytest.mark.parametrize("wavelet", ["sym8", "haar"])
def test_wavelet_zero_threshold_is_perfect_reconstruction(mode, n_pix, wavelet):
    flux = np.random.default_rng(1).normal(1.0, 0.1, (3, n_pix))
    out = wavelet_denoise(flux, None, wavelet=wavelet, threshold_scale=0.0, mode=mode)
    np.testing.assert_allclose(out, flux, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_wavelet_matches_independent_visushrink(mode, noisy):
    _, flux = noisy
    scale, level = 0.7, 4
    expected = []
    for row in flux:
        coeffs = pywt.wavedec(row, "sym8", mode="symmetric", level=level)
        sigma = np.median(np.abs(coeffs[-1])) / 0.6745
        t = scale * sigma * np.sqrt(2 * np.log(N_PIX))
        shrunk = [coeffs[0]] + [pywt.threshold(c, t, mode=mode) for c in coeffs[1:]]
        expected.append(pywt.waverec(shrunk, "sym8", mode="symmetric"))
    out = wavelet_denoise(flux, None, level=level, threshold_scale=scale, mode=mode)
    np.testing.assert_allclose(out, np.array(expected), rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("width", [0, -1.0, np.nan, np.inf, True, "2", None])
def test_gaussian_width_validated(width, noisy):
    with pytest.raises(ValueError, match="width must be a positive finite number"):
        gaussian_smooth_baseline(noisy[1], None, width)


@pytest.mark.parametrize("width", [0, 2, 4, -3, 3.0, True, "5"])
def test_median_width_validated(width, noisy):
    with pytest.raises(ValueError, match="width must be a positive odd integer"):
        median_smooth_baseline(noisy[1], None, width)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold_scale": -0.1}, "threshold_scale must be a non-negative finite number"),
        ({"threshold_scale": np.nan}, "threshold_scale must be a non-negative finite number"),
        ({"threshold_scale": np.inf}, "threshold_scale must be a non-negative finite number"),
        ({"mode": "garrote"}, "mode must be 'soft' or 'hard'"),
        ({"level": 0}, "level must be an integer from 1 to"),
        ({"level": 20}, "level must be an integer from 1 to"),
        ({"level": 2.0}, "level must be an integer from 1 to"),
        ({"wavelet": "nope"}, "unknown wavelet 'nope'"),
        ({"wavelet": 3}, "wavelet must be a discrete wavelet name"),
    ],
)
def test_wavelet_settings_validated(kwargs, match, noisy):
    with pytest.raises(ValueError, match=match):
        wavelet_denoise(noisy[1], None, **kwargs)


def test_wavelet_too_short_spectrum():
    with pytest.raises(ValueError, match="too short for this wavelet"):
        wavelet_denoise(np.ones((1, 8)), None, wavelet="sym8")


def test_wavelet_without_pywavelets(monkeypatch, noisy):
    monkeypatch.setitem(sys.modules, "pywt", None)
    with pytest.raises(ImportError, match="PyWavelets"):
        wavelet_denoise(noisy[1], None)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize(
    ("flux", "missing", "error", "match"),
    [
        (np.ones(10), None, ValueError, r"flux must have shape \(n, n_pix\)"),
        (np.ones((2, 1)), None, ValueError, r"flux must have shape \(n, n_pix\)"),
        (np.ones((2, 64)), np.zeros((2, 64)), TypeError, "missing must be a boolean array"),
        (np.ones((2, 64)), np.zeros((2, 63), bool), ValueError, "missing has shape"),
        (np.ones((2, 64)), np.arange(2)[:, None] == np.ones((2, 64)), ValueError, r"\[1\] have no"),
    ],
)
def test_bad_arrays(baseline, flux, missing, error, match):
    with pytest.raises(error, match=match):
        baseline(flux, missing)


# ---------------------------------------------------------------------- CDAE


GRID = np.linspace(5000.0, 5200.0, 64)


@pytest.fixture(scope="module")
def simulator():
    return Simulator(GRID, "air")


@pytest.fixture(scope="module")
def truth():
    return _clean(np.random.default_rng(5), n=24, n_pix=GRID.size)


def _model(zero_impute=False, seed=0):
    return ConvDenoisingAutoencoder.from_grid(
        GRID * u.AA, medium="air", latent_dim=3, zero_impute=zero_impute, seed=seed, **TINY
    )


def _fit(truth, simulator, **kwargs):
    settings = {"latent_dim": 3, "epochs": 3, "batch_size": 8, "lr": 3e-3, "seed": 1}
    settings.update(kwargs)
    return train_cdae(truth, simulator=simulator, gaps=(10,), device="cpu", **settings, **TINY)


def _gapped(seed=0):
    rng = np.random.default_rng(seed)
    flux = _clean(rng, n=3, n_pix=GRID.size) + 0.05 * rng.standard_normal((3, GRID.size))
    missing = np.zeros(flux.shape, bool)
    missing[0, 20:35] = True
    missing[2, :12] = True
    return flux, missing


def test_cdae_shapes_and_architecture():
    model = _model()
    assert model.network.n_pix == GRID.size and model.network.latent_dim == 3
    flux, missing = _gapped()
    out = model(torch.as_tensor(flux, dtype=torch.float32), torch.as_tensor(missing))
    assert out.shape == (3, GRID.size)
    denoised = model.reconstruct(flux, missing, batch_size=2)
    assert denoised.shape == (3, GRID.size) and denoised.dtype == np.float64
    np.testing.assert_allclose(denoised, out.detach().numpy(), rtol=0, atol=1e-6)
    assert model.reconstruct(np.empty((0, GRID.size))).shape == (0, GRID.size)


def test_cdae_gradients_reach_every_parameter():
    model = _model().train()
    flux, missing = _gapped()
    out = model(torch.as_tensor(flux, dtype=torch.float32), torch.as_tensor(missing))
    (out - 1.0).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("zero_impute", [False, True])
def test_cdae_missing_values_never_reach_the_output(zero_impute):
    model = _model(zero_impute)
    flux, missing = _gapped()
    other = np.where(missing, 1e4, flux)
    np.testing.assert_array_equal(model.reconstruct(flux, missing), model.reconstruct(other, missing))
    np.testing.assert_array_equal(
        model.reconstruct(flux, missing), model.reconstruct(np.where(missing, np.nan, flux))
    )


def test_zero_impute_differs_only_on_gapped_input():
    interp, zeros = _model(False), _model(True)
    zeros.load_state_dict(interp.state_dict())
    flux, missing = _gapped()
    np.testing.assert_array_equal(interp.reconstruct(flux), zeros.reconstruct(flux))
    gapped_interp, gapped_zeros = interp.reconstruct(flux, missing), zeros.reconstruct(flux, missing)
    assert np.abs(gapped_interp[0] - gapped_zeros[0]).max() > 1e-4
    np.testing.assert_array_equal(gapped_interp[1], gapped_zeros[1])  # no gap in row 1
    # the zero-imputed input is exactly the data with zeros in the gaps, flagged nowhere
    as_data = zeros.network(torch.as_tensor(np.where(missing, 0.0, flux), dtype=torch.float32))
    np.testing.assert_allclose(gapped_zeros, as_data[0].detach().numpy(), rtol=0, atol=1e-6)


def test_fit_cdae_lowers_the_loss(truth, simulator):
    model = _fit(truth, simulator, epochs=6, snr_range=(20.0, 50.0))
    history = model.history["train"]
    assert len(history) == 6 and history[-1] < 0.7 * history[0]
    assert not model.training and model.best_epoch == 6


def test_fit_cdae_is_deterministic(truth, simulator):
    state = torch.get_rng_state()
    a, b = _fit(truth, simulator), _fit(truth, simulator)
    c = _fit(truth, simulator, seed=2)
    assert torch.equal(state, torch.get_rng_state())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert a.history == b.history
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_fit_cdae_keeps_best_val_epoch(truth, simulator):
    obs = simulator.observe(truth[:8], 10.0, seed=3, gap=(10, "middle"))
    val = (obs.flux, obs.mask, obs.truth)
    model = _fit(truth, simulator, val=val, zero_impute=True)
    scores = model.history["val"]
    assert len(scores) == 4 and model.zero_impute
    assert model.best_epoch == int(np.argmin(scores))
    achieved = np.median(mse(model.reconstruct(obs.flux, obs.mask), obs.truth))
    np.testing.assert_allclose(achieved, min(scores), rtol=1e-5)


def test_cdae_tree_roundtrip_gives_identical_output(truth, simulator, monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, "ConvDenoisingAutoencoder", CDAE_PATH)
    model = _fit(truth, simulator, epochs=1, zero_impute=True)
    loaded = DeepCleanModel._from_tree(model._to_tree())
    assert type(loaded) is ConvDenoisingAutoencoder and loaded.config == model.config
    assert loaded.zero_impute and loaded.history == model.history
    flux, missing = _gapped()
    np.testing.assert_array_equal(loaded.reconstruct(flux, missing), model.reconstruct(flux, missing))


@pytest.mark.skipif(
    MODEL_REGISTRY.get("ConvDenoisingAutoencoder") != CDAE_PATH,
    reason="ConvDenoisingAutoencoder is not in specutils_deepclean.models.MODEL_REGISTRY yet",
)
def test_cdae_file_roundtrip_gives_identical_output(truth, simulator, tmp_path):
    from specutils_deepclean.io.models import load_model, save_model

    model = _fit(truth, simulator, epochs=1)
    loaded = load_model(save_model(model, tmp_path / "cdae.asdf"))
    flux, missing = _gapped()
    np.testing.assert_array_equal(loaded.reconstruct(flux, missing), model.reconstruct(flux, missing))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive finite number"),
        ({"snr_range": (0.0, 5.0)}, "snr_range must satisfy"),
        ({"snr_range": (10.0, 5.0)}, "snr_range must satisfy"),
        ({"snr_range": 5.0}, "snr_range must be two numbers"),
        ({"zero_impute": 1}, "zero_impute must be a bool"),
        ({"gaps": (64,)}, r"gap widths must be integers in 1\.\.63"),
        ({"gaps": 3}, "gaps must be a bool or a sequence of widths"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"val": (np.ones((2, 64)),)}, r"val must be a tuple \(flux, missing, truth\)"),
        ({"val": (np.ones((2, 64)), np.zeros((2, 64)), np.ones((2, 64)))}, "same shape"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"depth": 4}, "unknown ConvDenoisingAutoencoder option"),
    ],
)
def test_fit_cdae_rejects_bad_settings(kwargs, match, truth, simulator):
    settings = {"latent_dim": 3, "epochs": 1, "simulator": simulator, **TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_cdae(truth, **settings)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.ones((4, 63)), r"train_truth must have shape \(n, 64\)"),
        (np.full((2, 64), np.nan), "no valid pixel"),
    ],
)
def test_fit_cdae_rejects_bad_truth(data, match, simulator):
    with pytest.raises(ValueError, match=match):
        train_cdae(data, simulator=simulator, latent_dim=2, epochs=1, **TINY)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"architecture": "karaoke-vae"}, "config\\['architecture'\\] must be"),
        ({"zero_impute": "yes"}, "zero_impute'\\] must be a bool"),
        ({"extra_key": 1}, "must have exactly the keys"),
    ],
)
def test_cdae_config_validated(edit, match):
    config = {**_model().config, **edit}
    with pytest.raises(ValueError, match=match):
        ConvDenoisingAutoencoder(config, wavelength=GRID * u.AA, medium="air")


@pytest.mark.parametrize(
    ("flux", "missing", "kwargs", "error", "match"),
    [
        (np.ones((2, 63)), None, {}, ValueError, r"flux must have shape \(n, 64\)"),
        (np.ones((2, 64)), np.zeros((2, 64)), {}, TypeError, "missing must be a boolean"),
        (np.ones((2, 64)), np.zeros((1, 64), bool), {}, ValueError, "missing has shape"),
        (np.ones((2, 64)), None, {"batch_size": 0}, ValueError, "batch_size must be a positive"),
    ],
)
def test_cdae_denoise_rejects_bad_input(flux, missing, kwargs, error, match):
    with pytest.raises(error, match=match):
        _model().reconstruct(flux, missing, **kwargs)
