"""Tests of the locally isometric autoencoder (specutils_deepclean.models.generator)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.models.generator import IsometricAutoencoder  # noqa: E402
from specutils_deepclean.models.layers import fill_missing  # noqa: E402
from specutils_deepclean.training.generator import (  # noqa: E402
    isometry_loss,
    reconstruction_loss,
    train_generator,
)

TINY = {"channels": 3, "bottleneck_length": 8, "hidden": 8, "block": 4}


pytestmark = pytest.mark.usefixtures("seeded_torch")


def toy_spectra(rng, n=48, n_pix=96):
    """Median-level spectra from a 2-parameter family (a line that moves and deepens)."""
    x = np.linspace(0.0, 1.0, n_pix)
    centre = rng.uniform(0.3, 0.7, (n, 1))
    depth = rng.uniform(0.2, 0.6, (n, 1))
    return 1.0 - depth * np.exp(-0.5 * ((x - centre) / 0.05) ** 2) + 0.1 * x


def randomise(model):
    """Weights away from the near-linear start, so every path matters."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
        model.mean.normal_(1.0, 0.1)
    return model


@pytest.mark.parametrize("n_pix", [2, 17, 128, 129, 255])
@pytest.mark.parametrize("latent_dim", [1, 5])
def test_shapes(n_pix, latent_dim):
    model = IsometricAutoencoder(n_pix, latent_dim, **TINY)
    assert model.padded_length >= n_pix
    assert model.padded_length == model.bottleneck * 2**model.depth
    assert model.bottleneck <= TINY["bottleneck_length"]
    flux = torch.rand(3, n_pix) + 0.5
    recon, z = model(flux)
    assert recon.shape == (3, n_pix) and z.shape == (3, latent_dim)
    assert model.encode(flux).shape == (3, latent_dim)
    assert model.generate(torch.zeros(2, 4, latent_dim)).shape == (2, 4, n_pix)
    assert model.generate(torch.zeros(latent_dim)).shape == (n_pix,)


def test_depth_for_miles_length():
    model = IsometricAutoencoder(4222, 16)
    assert (model.depth, model.bottleneck, model.padded_length) == (8, 17, 4352)
    assert model.block == 32


def test_gradients_reach_every_parameter():
    model = randomise(IsometricAutoencoder(130, 4, **TINY))
    flux = torch.rand(5, 130) + 0.5
    missing = torch.zeros(5, 130, dtype=torch.bool)
    missing[:, 40:60] = True
    recon, z = model(flux, missing)
    loss = reconstruction_loss(recon, flux, missing) + isometry_loss(model.generate, z, 0.1)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_config_rebuilds_identical_model():
    model = randomise(IsometricAutoencoder(100, 3, **TINY))
    clone = IsometricAutoencoder(**model.config)
    clone.load_state_dict(model.state_dict())
    flux = torch.rand(4, 100) + 0.5
    missing = torch.rand(4, 100) < 0.2
    torch.testing.assert_close(clone(flux, missing), model(flux, missing), rtol=0, atol=0)
    assert model.config == {"n_pix": 100, "latent_dim": 3, "kernel_size": 5, **TINY}
    assert "mean" in model.state_dict()


def test_config_is_a_copy():
    model = IsometricAutoencoder(64, 2, **TINY)
    model.config["n_pix"] = 5
    assert model.n_pix == 64


def test_linear_path_alone_is_mean_plus_wz():
    model = randomise(IsometricAutoencoder(77, 3, **TINY))
    z = torch.randn(6, 3)
    assert not torch.allclose(model.generate(z), model.mean + z @ model.linear.weight.T)
    with torch.no_grad():
        model.decoder_out.zero_()
    torch.testing.assert_close(model.generate(z), model.mean + z @ model.linear.weight.T)


def test_fill_gaps_interpolates_and_extends():
    flux = torch.tensor([[9.0, 1.0, 9.0, 9.0, 4.0, 9.0], [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]])
    missing = torch.tensor([[True, False, True, True, False, True], [True] * 6])
    expected = torch.tensor([[1.0, 1.0, 2.0, 3.0, 4.0, 4.0], [1.0] * 6])
    torch.testing.assert_close(fill_missing(flux, missing), expected)


def test_encoder_never_sees_values_at_missing_pixels():
    model = randomise(IsometricAutoencoder(64, 3, **TINY))
    flux = torch.rand(2, 64) + 0.5
    missing = torch.zeros(2, 64, dtype=torch.bool)
    missing[:, 10:20] = True
    other = flux.clone()
    other[:, 10:20] = torch.nan
    torch.testing.assert_close(model.encode(flux, missing), model.encode(other))
    # ... and the mask is seen: the same filled values flagged or not differ
    filled = fill_missing(flux, missing)
    assert not torch.allclose(model.encode(filled, missing), model.encode(filled))


def test_reconstruction_loss_ignores_missing_pixels():
    rng = np.random.default_rng(3)
    flux = torch.as_tensor(rng.normal(1.0, 0.1, (4, 30)))
    recon = torch.as_tensor(rng.normal(1.0, 0.1, (4, 30)))
    missing = torch.as_tensor(rng.random((4, 30)) < 0.3)
    base = reconstruction_loss(recon, flux, missing)
    changed = torch.where(missing, flux + 100.0, flux)
    torch.testing.assert_close(reconstruction_loss(recon, changed, missing), base)
    torch.testing.assert_close(
        reconstruction_loss(recon, torch.where(missing, torch.nan, flux)), base
    )
    expected = np.mean(
        [
            30 * np.mean((r - f)[~m] ** 2)
            for r, f, m in zip(recon.numpy(), flux.numpy(), missing.numpy(), strict=True)
        ]
    )
    assert float(base) == pytest.approx(expected, rel=1e-12)


def test_isometry_loss_zero_for_orthonormal_embedding():
    rng = np.random.default_rng(5)
    basis = torch.as_tensor(np.linalg.qr(rng.normal(size=(40, 4)))[0])
    offset = torch.as_tensor(rng.normal(size=40))
    z = torch.as_tensor(rng.normal(size=(16, 4)))
    gen = torch.Generator().manual_seed(0)
    loss = isometry_loss(lambda v: offset + v @ basis.T, z, 0.3, generator=gen)
    assert float(loss) < 1e-20


@pytest.mark.parametrize("stretch", [0.5, 2.0])
def test_isometry_loss_positive_for_scaled_or_curved_maps(stretch):
    rng = np.random.default_rng(6)
    basis = torch.as_tensor(np.linalg.qr(rng.normal(size=(40, 3)))[0])
    z = torch.as_tensor(rng.normal(size=(32, 3)))
    delta = 0.2
    # a uniform stretch changes every distance by (stretch - 1) * delta exactly
    scaled = isometry_loss(lambda v: stretch * v @ basis.T, z, delta)
    assert float(scaled) == pytest.approx(((stretch - 1) * delta) ** 2, rel=1e-9)
    curved = isometry_loss(lambda v: torch.sin(3 * v) @ basis.T, z, delta)
    assert float(curved) > 1e-4


@pytest.mark.parametrize("delta", [0.0, -1.0, float("inf"), True])
def test_isometry_loss_rejects_bad_delta(delta):
    with pytest.raises(ValueError, match="delta must be a positive finite number"):
        isometry_loss(lambda v: v, torch.zeros(2, 2), delta)


def test_isometry_loss_draws_on_the_sphere():
    z = torch.zeros(500, 3, dtype=torch.float64)
    seen = []
    isometry_loss(lambda v: seen.append(v) or v, z, 0.7, generator=torch.Generator().manual_seed(1))
    step = seen[0][500:] - seen[0][:500]
    torch.testing.assert_close(step.norm(dim=1), torch.full((500,), 0.7, dtype=torch.float64))
    assert float(step.mean(0).abs().max()) < 0.1  # directions spread over the sphere


def fit_tiny(seed=0, **kwargs):
    rng = np.random.default_rng(0)
    flux = toy_spectra(rng)
    missing = rng.random(flux.shape) < 0.05
    val = toy_spectra(rng, n=16)
    options = {"latent_dim": 2, "epochs": 20, "batch_size": 16, "lr": 1e-2, "seed": seed}
    options.update(TINY | kwargs)
    return train_generator(flux, missing, val=(val, None), device="cpu", progress=False, **options)


def test_training_lowers_loss_and_is_deterministic():
    model = fit_tiny()
    history = model.history
    assert len(history["train"]) == 20 and len(history["val"]) == 21
    assert history["train"][-1] < history["train"][0]
    assert min(history["val"][1:]) < 0.8 * history["val"][0]  # beats PCA with k = L
    assert history["val"][model.best_epoch] == min(history["val"])
    again = fit_tiny()
    assert again.history == history
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    other = fit_tiny(seed=1)
    assert other.history["train"] != history["train"]
    assert not model.training


def test_training_leaves_global_random_state_alone():
    state = torch.random.get_rng_state()
    fit_tiny(epochs=1, noise_augment=0.01, tilt_augment=0.05)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_untrained_model_is_pca():
    rng = np.random.default_rng(1)
    flux = toy_spectra(rng)
    model = train_generator(
        flux, latent_dim=3, epochs=1, lr=1e-12, device="cpu", progress=False, **TINY
    )
    mean = flux.mean(0)
    _, _, vh = np.linalg.svd(flux - mean, full_matrices=False)
    w = model.linear.weight.detach().double().numpy()
    np.testing.assert_allclose(w.T @ w, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(np.abs(w.T @ vh[:3].T), np.eye(3), atol=1e-4)
    np.testing.assert_allclose(model.mean.numpy(), mean, atol=1e-6)


def test_fit_without_val_keeps_last_epoch():
    rng = np.random.default_rng(2)
    model = train_generator(
        toy_spectra(rng, n=20), latent_dim=2, epochs=2, device="cpu", progress=False, **TINY
    )
    assert model.best_epoch == 2 and model.history["val"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_pix": 1}, "n_pix must be at least 2"),
        ({"n_pix": 64.0}, "n_pix must be a positive integer"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"channels": True}, "channels must be a positive integer"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"block": 6}, "block must be a power of 2"),
        ({"hidden": -3}, "hidden must be a positive integer"),
    ],
)
def test_bad_config(kwargs, message):
    config = {"n_pix": 64, "latent_dim": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        IsometricAutoencoder(**config)


def test_bad_inputs():
    model = IsometricAutoencoder(32, 2, **TINY)
    with pytest.raises(ValueError, match=r"flux must have shape \(batch, 32\)"):
        model.encode(torch.ones(2, 31))
    with pytest.raises(TypeError, match="missing must be a boolean array"):
        model.encode(torch.ones(2, 32), torch.zeros(2, 32))
    with pytest.raises(ValueError, match="missing has shape"):
        model.encode(torch.ones(2, 32), torch.zeros(2, 30, dtype=torch.bool))
    with pytest.raises(ValueError, match="z must end in latent_dim=2 values"):
        model.generate(torch.zeros(3, 5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": float("nan")}, r"lr must be a finite number in \[0, inf\)"),
        ({"isometry_weight": -1.0}, "isometry_weight must be"),
        ({"noise_augment": -0.1}, "noise_augment must be"),
        ({"tilt_augment": 1.0}, r"tilt_augment must be a finite number in \[0, 1.0\)"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"latent_dim": 30}, "latent_dim=30 exceeds the number of training spectra"),
        ({"val": (np.ones((3, 10)), None)}, "val flux has 10 pixels, train_flux 24"),
        ({"val": np.ones((3, 24))}, r"val must be a tuple \(flux, missing\)"),
    ],
)
def test_fit_rejects_bad_settings(kwargs, message):
    options = {"latent_dim": 2, "epochs": 1, "device": "cpu", "progress": False} | kwargs
    with pytest.raises(ValueError, match=message):
        train_generator(np.ones((20, 24)), **options)


def test_fit_rejects_bad_data():
    with pytest.raises(ValueError, match="train_flux must be 2-D"):
        train_generator(np.ones(24), latent_dim=1, progress=False)
    with pytest.raises(TypeError, match="missing must be a boolean array"):
        train_generator(np.ones((4, 24)), np.zeros((4, 24)), latent_dim=1, progress=False)
    flux = np.ones((4, 24))
    flux[2] = np.nan
    with pytest.raises(ValueError, match="train_flux has a spectrum with no observed pixel"):
        train_generator(flux, latent_dim=1, progress=False)


def test_generate_jacobian_matches_autograd():
    model = randomise(
        IsometricAutoencoder(100, 4, channels=2, bottleneck_length=8, hidden=8, block=4)
    )
    model = model.double()
    z = torch.randn(3, 4, dtype=torch.float64)
    signal, jacobian = model.generate_jacobian(z)
    assert jacobian.shape == (3, 100, 4)
    np.testing.assert_allclose(signal.numpy(), model.generate(z).detach().numpy(), rtol=1e-12)
    for i in range(3):
        reference = torch.autograd.functional.jacobian(model.generate, z[i])
        np.testing.assert_allclose(jacobian[i].numpy(), reference.numpy(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="z must have shape"):
        model.generate_jacobian(torch.zeros(4))


def test_generate_equals_the_1d_decoder_modules():
    """generate runs decoder_conv channels-last: the same values as the 1-D modules."""
    model = randomise(
        IsometricAutoencoder(100, 4, channels=3, bottleneck_length=8, hidden=8, block=4)
    ).double()
    z = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        features = model.decoder_head(z).view(5, -1, model.bottleneck)
        columns = model.decoder_conv(features)  # (5, channels, n_blocks)
        blocks = torch.einsum("ncb,bck->nbk", columns, model.decoder_out).flatten(1)
        offset = (model.padded_length - model.n_pix) // 2
        expected = model.mean + model.linear(z) + blocks[:, offset : offset + model.n_pix]
        got = model.generate(z)
        _, jacobian = model.generate_jacobian(z)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-14)
    assert jacobian.shape == (5, 100, 4)
