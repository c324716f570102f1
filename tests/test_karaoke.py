"""Tests of the Stellar Karaoke VAE, velocity whitening and `train_karaoke`."""

import astropy.units as u
import numpy as np
import pytest
import torch
from specutils import Spectrum

from specutils_deepclean.models import MODEL_REGISTRY
from specutils_deepclean.models.karaoke import (
    MAX_TELLURIC_POWER,
    KaraokeVAE,
    telluric_layer,
)
from specutils_deepclean.models.layers import fill_missing
from specutils_deepclean.training.karaoke import (
    _whiten,
    karaoke_loss,
    train_karaoke,
    velocity_whiten,
)

C_KMS = 299792.458
TINY = {"base_channels": 4, "bottleneck_length": 8, "head_channels": 2}
needs_registry = pytest.mark.skipif(
    "KaraokeVAE" not in MODEL_REGISTRY,
    reason="KaraokeVAE is not in specutils_deepclean.models.MODEL_REGISTRY yet",
)


def _wave(n_pix, lo=6000.0, hi=6100.0):
    return np.linspace(lo, hi, n_pix) * u.AA


def _tiny(n_pix=64, seed=0, **options):
    return KaraokeVAE.from_grid(
        _wave(n_pix), medium="air", seed=seed, latent_dim=4, **{**TINY, **options}
    )


def _spectra(n, n_pix, seed=0):
    """Smooth low-rank spectra around 1 with a few absorption lines, plus noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n_pix)
    basis = np.stack([np.exp(-0.5 * ((x - c) / 0.02) ** 2) for c in (0.2, 0.45, 0.7)])
    depth = rng.uniform(0.1, 0.5, size=(n, 3))
    return 1 - depth @ basis + 0.01 * rng.normal(size=(n, n_pix))


@pytest.mark.parametrize("n_pix", [64, 65, 97, 128, 255])
@pytest.mark.parametrize("variational", [True, False])
def test_shapes_follow_input_length(n_pix, variational):
    model = _tiny(n_pix, variational=variational)
    n_blocks = -(-n_pix // 2**model.depth)
    assert n_blocks <= 8 and (model.depth == 1 or -(-n_pix // 2 ** (model.depth - 1)) > 8)
    assert model.padded_length == n_blocks * 2**model.depth >= n_pix
    recon, mu, logvar = model(torch.ones(3, n_pix))
    assert recon.shape == (3, n_pix) and mu.shape == (3, 4)
    assert (logvar is None) == (not variational)
    assert model.reconstruct(np.ones((5, n_pix))).shape == (5, n_pix)
    assert model.reconstruct(np.ones(n_pix)).shape == (n_pix,)


@pytest.mark.parametrize(("n_pix", "depth", "bottleneck"), [(4300, 8, 17), (327680, 14, 20)])
def test_depth_of_real_sizes(n_pix, depth, bottleneck):
    config = {
        "architecture": "karaoke-vae",
        "n_pix": n_pix,
        "latent_dim": 128,
        "base_channels": 16,
        "max_channels": 512,
        "double_every": 3,
        "kernel_sizes": [7, 5, 5, 3],
        "bottleneck_length": 32,
        "head_channels": 4,
        "variational": True,
        "mask_channel": True,
    }
    model = KaraokeVAE(config, wavelength=np.arange(n_pix) * u.AA + 3000 * u.AA, medium="vacuum")
    assert (model.depth, model.bottleneck_size) == (depth, bottleneck)
    assert model.to_mu.in_features == model.encoder[-2][0].out_channels * bottleneck


@pytest.mark.parametrize("variational", [True, False])
def test_gradients_reach_every_parameter(variational):
    model = _tiny(70, variational=variational).train()
    flux = torch.from_numpy(_spectra(4, 70).astype(np.float32))
    missing = torch.zeros(4, 70, dtype=torch.bool)
    missing[1, 5:15] = True
    recon, mu, logvar = model(flux, missing, generator=torch.Generator().manual_seed(1))
    karaoke_loss(recon, flux, mu, logvar, missing)[0].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.any(parameter.grad != 0), name


def test_vae_samples_in_training_ae_does_not():
    flux = torch.from_numpy(_spectra(2, 64).astype(np.float32))
    vae, ae = _tiny(variational=True).train(), _tiny(variational=False).train()
    gen = torch.Generator()
    assert not torch.equal(
        vae(flux, generator=gen.manual_seed(0))[0], vae(flux, generator=gen.manual_seed(1))[0]
    )
    assert torch.equal(ae(flux)[0], ae(flux)[0])
    with torch.no_grad():
        assert torch.equal(vae.eval()(flux)[0], vae(flux)[0])
    assert not hasattr(ae, "to_logvar") or ae.to_logvar is None


def test_reconstruct_ignores_values_at_missing_pixels():
    model = _tiny(64)
    flux = _spectra(2, 64)
    missing = np.zeros(flux.shape, bool)
    missing[:, 20:30] = True
    changed = flux.copy()
    changed[:, 20:30] = [1e6, 0.0, np.nan, -5.0, 3.0, 0.0, 0.0, 1e-3, 2.0, np.inf]
    np.testing.assert_array_equal(
        model.reconstruct(flux, missing), model.reconstruct(changed, missing)
    )
    nan_flux = np.where(missing, np.nan, flux)
    np.testing.assert_array_equal(model.reconstruct(flux, missing), model.reconstruct(nan_flux))
    assert np.all(np.isfinite(model.reconstruct(nan_flux)))


def test_fill_missing_interpolates_valid_neighbours():
    flux = torch.tensor([[9.0, 2.0, 9.0, 9.0, 5.0, 9.0], [9.0] * 6])
    missing = torch.tensor([[True, False, True, True, False, True], [True] * 6])
    expected = torch.tensor([[2.0, 2.0, 3.0, 4.0, 5.0, 5.0], [1.0] * 6])
    assert torch.equal(fill_missing(flux, missing), expected)


def test_masked_l1_ignores_missing_pixels():
    rng = np.random.default_rng(3)
    recon = torch.tensor(rng.normal(size=(2, 10)), requires_grad=True)
    flux = torch.tensor(rng.normal(size=(2, 10)))
    missing = torch.zeros(2, 10, dtype=torch.bool)
    missing[0, 3] = missing[1, 7] = True
    mu, logvar = torch.tensor(rng.normal(size=(2, 3))), torch.tensor(rng.normal(size=(2, 3)))
    total, l1, kl = (value.detach() for value in karaoke_loss(recon, flux, mu, logvar, missing))
    changed = flux.clone()
    changed[0, 3], changed[1, 7] = 1e5, float("nan")
    total2, l12, _ = karaoke_loss(recon, changed, mu, logvar, missing)
    assert float(total) == float(total2.detach()) and float(l1) == float(l12.detach())
    valid = ~missing.numpy()
    expected_l1 = np.abs(recon.detach().numpy() - flux.numpy())[valid].mean()
    # KL summed over latent dimensions, averaged over spectra, per pixel.
    expected_kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).numpy().sum(axis=1).mean() / 10
    np.testing.assert_allclose([float(l1), float(kl)], [expected_l1, expected_kl], rtol=1e-12)
    np.testing.assert_allclose(float(total), expected_l1 + 0.1 * expected_kl, rtol=1e-12)
    total2.backward()
    assert torch.all(torch.isfinite(recon.grad)) and float(recon.grad[0, 3]) == 0.0


def test_loss_without_valid_pixels_raises():
    with pytest.raises(ValueError, match="at least one valid pixel"):
        karaoke_loss(
            torch.ones(1, 3),
            torch.ones(1, 3),
            torch.zeros(1, 2),
            None,
            torch.ones(1, 3, dtype=torch.bool),
        )


@pytest.mark.parametrize("velocity", [-30.0, -11.3, 0.0, 7.7, 30.0])
def test_whitening_moves_a_line_by_lambda_v_over_c(velocity):
    wave = np.linspace(6000.0, 6040.0, 201)  # 0.2 A pixels; 30 km/s = 0.6 A = 3 pixels
    centre = 6020.0
    flux = 1 - 0.5 * np.exp(-0.5 * ((wave - centre) / 0.8) ** 2)
    shifted, missing, used = velocity_whiten(flux[None], wave * u.AA, velocities=[velocity])
    assert used.tolist() == [velocity]
    depth = np.where(missing[0], 0.0, 1 - shifted[0])
    measured = np.sum(depth * wave) / np.sum(depth)
    expected = centre / (1 - velocity / C_KMS)
    assert abs(measured - expected) < 0.02 * 0.2  # 2 % of a pixel
    assert abs(expected - centre - centre * velocity / C_KMS) < 1e-3


@pytest.mark.parametrize("velocity", [-300.0, 300.0])
def test_whitening_marks_shifted_in_pixels_missing(velocity):
    wave = np.linspace(6000.0, 6040.0, 201)
    flux = np.ones((1, 201))
    missing_in = np.zeros((1, 201), bool)
    missing_in[0, 100] = True
    shifted, missing, _ = velocity_whiten(flux, wave, missing_in, velocities=[velocity])
    source = wave * (1 - velocity / C_KMS)  # where each output pixel's flux comes from
    step = wave[1] - wave[0]
    outside = (source < wave[0] - 1.5 * step) | (source > wave[-1] + 1.5 * step)
    inside = (source > wave[0] + step) & (source < wave[-1] - step)
    assert outside.sum() >= 5
    assert np.all(missing[0, outside]) and np.all(np.isnan(shifted[0, outside]))
    moved = np.abs(source - wave[100]) < 0.4 * step  # the input's missing pixel, moved
    assert np.all(missing[0, moved])
    others = inside & (np.abs(source - wave[100]) > 1.5 * step)
    assert not np.any(missing[0, others])
    np.testing.assert_allclose(shifted[0, ~missing[0]], 1.0, rtol=1e-12)


def test_whitening_draws_uniform_velocities_from_rng():
    wave = np.linspace(6000.0, 6040.0, 50)
    _, _, v1 = velocity_whiten(
        np.ones((400, 50)), wave, max_velocity=15.0, rng=np.random.default_rng(5)
    )
    _, _, v2 = velocity_whiten(
        np.ones((400, 50)), wave, max_velocity=15.0, rng=np.random.default_rng(5)
    )
    np.testing.assert_array_equal(v1, v2)
    assert np.all(np.abs(v1) <= 15.0) and v1.min() < -13 and v1.max() > 13


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, "needs rng"),
        ({"velocities": [1.0, 2.0, 3.0]}, ValueError, "velocities must have shape"),
        ({"rng": np.random.default_rng(0), "max_velocity": -1.0}, ValueError, "max_velocity"),
        ({"velocities": [1.0, 2.0], "flux": np.ones((2, 7))}, ValueError, "flux must have shape"),
    ],
)
def test_whitening_bad_arguments(kwargs, error, match):
    flux = kwargs.pop("flux", np.ones((2, 10)))
    with pytest.raises(error, match=match):
        velocity_whiten(flux, np.linspace(6000, 6010, 10), **kwargs)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kernel_sizes": [4]}, "kernel_sizes"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"variational": 1}, "variational"),
        ({"colour": "red"}, "unknown KaraokeVAE option"),
        ({"patch_stride": 3}, "power of 2"),
        ({"patch_stride": True}, "power of 2"),
        ({"patch_stride": 64}, "below 2\\*\\*depth"),
    ],
)
def test_bad_configuration(options, match):
    with pytest.raises(ValueError, match=match):
        KaraokeVAE.from_grid(_wave(64), medium="air", **options)


def test_forward_bad_input():
    model = _tiny(64)
    with pytest.raises(ValueError, match=r"shape \(batch, 64\)"):
        model(torch.ones(2, 63))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(np.ones((2, 64)))


def _train(flux=None, **kwargs):
    flux = _spectra(24, 64) if flux is None else flux
    options = {
        "wavelength": _wave(64),
        "medium": "air",
        "epochs": 3,
        "batch_size": 8,
        "latent_dim": 4,
        "progress": False,
        "model_options": TINY,
        "lr": 3e-3,
    }
    return train_karaoke(flux, **{**options, **kwargs})


def test_training_lowers_the_loss_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    model = _train(epochs=6, val=_spectra(6, 64, seed=9))
    assert torch.equal(state, torch.random.get_rng_state())
    history = model.history
    assert len(history["train_loss"]) == 6
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert np.all(np.isfinite(history["val_loss"]))
    best = int(np.argmin(history["val_loss"]))
    assert model.provenance.metrics["best_epoch"] == best
    assert model.provenance.metrics["val_loss"] == history["val_loss"][best]
    assert not model.training


def test_training_is_deterministic_given_the_seed():
    a, b, c = _train(seed=4), _train(seed=4), _train(seed=5)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not all(
        torch.equal(pa, pc)
        for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("whitening_kms", [0.0, 30.0])
def test_training_autoencoder_and_no_whitening(whitening_kms):
    model = _train(variational=False, whitening_kms=whitening_kms, epochs=2)
    assert not model.variational
    assert model.history["train_kl"] == [0.0, 0.0]
    assert np.all(np.isnan(model.history["val_loss"]))


def test_training_from_spectrum_objects_and_missing_pixels(capsys):
    flux = _spectra(6, 64)
    flux[2, 10:20] = np.nan
    mask = np.zeros(flux.shape, bool)
    mask[4, 30:33] = True
    spectra = [
        Spectrum(flux=row * 3.0 * u.Jy, spectral_axis=_wave(64), mask=m)
        for row, m in zip(flux, mask, strict=True)
    ]
    model = train_karaoke(
        spectra,
        medium="air",
        epochs=2,
        batch_size=4,
        latent_dim=4,
        model_options=TINY,
        progress=True,
    )
    assert model.n_pix == 64 and np.all(np.isfinite(model.history["train_loss"]))
    assert u.allclose(model.wavelength, _wave(64))
    batch = Spectrum(flux=flux * u.Jy, spectral_axis=_wave(64))
    model2 = train_karaoke(
        batch, medium="air", epochs=1, latent_dim=4, model_options=TINY, progress=False
    )
    assert len(model2.history["train_loss"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs must be a positive int"),
        ({"batch_size": 2.5}, ValueError, "batch_size must be a positive int"),
        ({"lr": 0.0}, ValueError, "lr must be positive"),
        ({"whitening_kms": -1.0}, ValueError, "whitening_kms must be non-negative"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int"),
        ({"medium": None}, ValueError, "medium must be 'air' or 'vacuum'"),
        ({"wavelength": np.linspace(6000, 6100, 64)}, TypeError, "wavelength as a Quantity"),
        ({"wavelength": _wave(65)}, ValueError, r"shape \(n, 65\)"),
        ({"flux": [[1.0] * 64]}, TypeError, "must be an \\(n, n_pix\\) array"),
        ({"flux": -np.ones((4, 64))}, ValueError, "non-positive median"),
    ],
)
def test_training_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _train(**kwargs)


@needs_registry
def test_save_load_gives_identical_outputs(tmp_path):
    from specutils_deepclean.io.models import load_model, save_model

    model = _train(epochs=1)
    save_model(model, tmp_path / "karaoke.asdf")
    loaded = load_model(tmp_path / "karaoke.asdf")
    flux = _spectra(5, 64, seed=2)
    np.testing.assert_array_equal(loaded.reconstruct(flux), model.reconstruct(flux))
    np.testing.assert_equal(loaded.history, model.history)  # NaN val losses compare equal
    assert loaded.config == model.config and loaded.medium == "air"


@needs_registry
def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    val = _spectra(4, 64, seed=7)
    full = _train(epochs=3, val=val)
    _train(epochs=1, val=val, checkpoint=tmp_path / "ckpt.asdf")
    resumed = _train(epochs=3, val=val, checkpoint=tmp_path / "ckpt.asdf")
    assert resumed.history == full.history
    for pa, pb in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="checkpoint .* holds a model with config"):
        _train(epochs=4, val=val, checkpoint=tmp_path / "ckpt.asdf", latent_dim=5)


def _band(n_pix=64):
    lines = np.ones(n_pix)
    lines[28:36] = [0.9, 0.7, 0.5, 0.4, 0.4, 0.5, 0.7, 0.9]
    return lines


def test_telluric_layer_recovers_the_power_and_ignores_missing_pixels():
    log_t = torch.log(torch.as_tensor(_band(), dtype=torch.float64))
    star = torch.as_tensor(_spectra(3, 64), dtype=torch.float64)
    powers = torch.tensor([0.4, 1.0, 2.3], dtype=torch.float64)
    observed = star * torch.exp(powers[:, None] * log_t)
    missing = torch.zeros(observed.shape, dtype=torch.bool)
    missing[1, 30] = True
    observed[1, 30] = 50.0  # a bad pixel, masked: must not move the fit
    recon = star.clone().requires_grad_(True)
    model_flux, power = telluric_layer(recon, observed, log_t, missing)
    torch.testing.assert_close(power, powers)
    assert not power.requires_grad
    keep = ~missing
    torch.testing.assert_close(model_flux[keep], observed[keep])
    model_flux.sum().backward()  # the gradient reaches the reconstruction through T ** p
    torch.testing.assert_close(recon.grad, torch.exp(powers[:, None] * log_t).expand(3, 64))


def test_telluric_layer_power_is_clipped_and_zero_without_bands():
    log_t = torch.log(torch.as_tensor(_band(), dtype=torch.float32))
    star = torch.ones(3, 64)
    observed = torch.stack(
        [star[0] * torch.exp(-1.0 * log_t), star[1] * torch.exp(9.0 * log_t), star[2]]
    )
    _, power = telluric_layer(star, observed, log_t)
    assert power.tolist()[:2] == [0.0, MAX_TELLURIC_POWER]
    _, none = telluric_layer(star, observed, torch.zeros(64))  # no band: nothing to fit
    assert none.tolist() == [0.0, 0.0, 0.0]


def test_whitening_moves_the_telluric_lines_with_the_spectrum():
    lines = _band(256)
    wave = _wave(256)
    flux = np.tile(lines, (4, 1))
    rng = np.random.default_rng(3)
    shifted, missing, log_lines = _whiten(flux, np.zeros(flux.shape, bool), wave, 300.0, rng, lines)
    assert log_lines.shape == flux.shape and log_lines.dtype == torch.float32
    inside = ~missing
    expected = np.minimum(shifted, 1.0)[inside]  # the lines never exceed 1
    np.testing.assert_allclose(np.exp(log_lines.numpy())[inside], expected, atol=1e-6)
    assert not np.allclose(shifted, flux)  # it did move
    _, _, none = _whiten(flux, np.zeros(flux.shape, bool), wave, 30.0, rng)
    assert none is None


def test_training_with_the_telluric_layer(tmp_path):
    lines = _band()
    rng = np.random.default_rng(0)
    flux = _spectra(24, 64) * lines ** rng.uniform(0.3, 1.5, size=(24, 1))
    val = flux[:6]
    plain = _train(flux, epochs=2, val=val)
    layered = _train(flux, epochs=2, val=val, telluric_lines=lines)
    np.testing.assert_array_equal(layered.extra["telluric_lines"], lines.astype(np.float32))
    assert "telluric_layer=True" in layered.provenance.notes
    assert "telluric_lines" not in plain.extra and "telluric_layer=False" in plain.provenance.notes
    # the same seed and data: only the loss differs, so the training history does
    assert layered.history["train_loss"] != plain.history["train_loss"]
    # a checkpoint made with the layer is not resumed without it (or with other lines)
    _train(flux, epochs=1, val=val, telluric_lines=lines, checkpoint=tmp_path / "c.asdf")
    for other in (None, lines**2):
        with pytest.raises(ValueError, match="other telluric_lines"):
            _train(flux, epochs=2, val=val, telluric_lines=other, checkpoint=tmp_path / "c.asdf")
    resumed = _train(flux, epochs=2, val=val, telluric_lines=lines, checkpoint=tmp_path / "c.asdf")
    assert resumed.history == layered.history


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (np.ones(63), r"shape \(64,\)"),
        (np.full(64, 1.5), r"in \[0, 1\]"),
        (np.full(64, np.nan), r"in \[0, 1\]"),
    ],
)
def test_training_bad_telluric_lines(lines, match):
    with pytest.raises(ValueError, match=match):
        _train(telluric_lines=lines)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"variational": False, "mask_channel": False},
        {"kernel_sizes": [9, 3], "head_channels": 1, "double_every": 1},
        {"patch_stride": 4},
    ],
)
def test_reconstruct_equals_the_modules_forward(options):
    # reconstruct runs the layers channels-last (run_channels_last): same outputs as
    # decode(encode(x)) through the nn modules, gaps included, to float32 rounding.
    model = _tiny(97, seed=3, **options)
    flux = _spectra(6, 97, seed=1).astype(np.float32)
    missing = np.zeros(flux.shape, bool)
    missing[1, 10:30] = True
    missing[2, :5] = True
    with torch.no_grad():
        expected = model.decode(
            model.encode(torch.from_numpy(flux), torch.from_numpy(missing))[0]
        ).numpy()
    got = model.reconstruct(flux, missing)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected - expected.mean()).max()


def test_patch_embedding_only_for_grids_far_larger_than_miles(tmp_path):
    from specutils_deepclean.io.models import load_model, save_model
    from specutils_deepclean.models.karaoke import PATCH_ABOVE_PIXELS, PATCH_STRIDE

    # The shipped model's file has no patch_stride: stride-2 layers only, as before.
    shipped = load_model("karaoke-miles")
    assert "patch_stride" not in shipped.config
    assert all(block[0].stride == (2,) for block in shipped.encoder[:-1])
    assert KaraokeVAE.from_grid(_wave(4300), medium="air").config["patch_stride"] == 1
    edge = KaraokeVAE.from_grid(_wave(PATCH_ABOVE_PIXELS), medium="air", latent_dim=4)
    assert edge.config["patch_stride"] == 1
    big = KaraokeVAE.from_grid(_wave(327_680), medium="air", latent_dim=4)
    assert big.config["patch_stride"] == PATCH_STRIDE == 8
    first, last = big.encoder[0][0], big.decoder[-2][0]
    assert first.kernel_size == first.stride == (8,)
    assert last.kernel_size == last.stride == (8,) and last.out_channels == 4
    # 3 stride-2 layers fewer, same total reduction (327,680 -> 20) and output length.
    assert len(big.encoder) == 1 + 1 + 11 and (big.depth, big.bottleneck_size) == (14, 20)
    assert big.reconstruct(np.ones(327_680)).shape == (327_680,)
    model = _tiny(96, patch_stride=4)
    save_model(model, tmp_path / "patched.asdf")
    loaded = load_model(tmp_path / "patched.asdf")
    flux = _spectra(3, 96, seed=4)
    assert loaded.config["patch_stride"] == 4
    np.testing.assert_array_equal(loaded.reconstruct(flux), model.reconstruct(flux))
