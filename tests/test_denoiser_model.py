"""Tests of the deep Bayesian Denoiser and its MAP inference (models/denoiser.py)."""

import asdf
import astropy.units as u
import numpy as np
import pytest
from astropy.utils.exceptions import AstropyUserWarning

torch = pytest.importorskip("torch")

from specutils_deepclean import models  # noqa: E402
from specutils_deepclean.io.models import load_model, save_model  # noqa: E402
from specutils_deepclean.models.base import DeepCleanModel  # noqa: E402
from specutils_deepclean.models.denoiser import Denoiser, MAPResult  # noqa: E402
from specutils_deepclean.models.generator import IsometricAutoencoder  # noqa: E402
from specutils_deepclean.models.noiseflow import NoiseFlow  # noqa: E402
from specutils_deepclean.provenance import Provenance  # noqa: E402
from specutils_deepclean.training.kde import train_kde  # noqa: E402

N_PIX = 64
LATENT = 2
CENTRES = np.array([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]])
CLASSES = ["A", "B", "C"]
NOISE = 0.05
FAST = {"steps": 60, "n_starts": 2}
#: Every other pixel missing, and the first few: no pixel counts in the likelihood.
ALTERNATE = (np.arange(N_PIX) % 2 == 0) | (np.arange(N_PIX) < 3)


def make_parts(seed=0, kinds=("whitened", "plain")):
    """A near-linear isometric generator, three well separated classes and fresh flows."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = IsometricAutoencoder(
            N_PIX, LATENT, channels=2, bottleneck_length=8, hidden=8, block=4
        )
        flows = {kind: NoiseFlow(3, 4, [4], whitened=kind == "whitened") for kind in kinds}
    basis, _ = np.linalg.qr(rng.normal(size=(N_PIX, LATENT)))
    with torch.no_grad():
        generator.mean.copy_(torch.as_tensor(1 + 0.1 * np.sin(np.linspace(0, 6, N_PIX))))
        generator.linear.weight.copy_(torch.as_tensor(basis))
        generator.encoder_linear.weight.copy_(torch.as_tensor(basis.T))
        if "plain" in flows:
            flows["plain"].scale.fill_(NOISE)
    points = np.concatenate([c + 0.15 * rng.normal(size=(30, LATENT)) for c in CENTRES])
    prior = train_kde(points, np.repeat(CLASSES, 30))
    return generator, prior, flows


def make_model(seed=0, kinds=("whitened", "plain")):
    generator, prior, flows = make_parts(seed, kinds)
    wave = np.linspace(5000.0, 5100.0, N_PIX) * u.AA
    return Denoiser.from_parts(
        generator,
        prior,
        flows,
        wavelength=wave,
        medium="air",
        provenance=Provenance(data_name="synthetic", seed=seed),
        name="tiny-denoiser",
    )


@pytest.fixture(scope="module")
def model():
    return make_model()


def draw(model, n, seed, n_exp=1, noise=NOISE):
    """Stars from the model itself: z near class centres, y = G(z) + Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    z = CENTRES[labels] + 0.15 * rng.normal(size=(n, LATENT))
    with torch.no_grad():
        signal = model.generator.generate(torch.as_tensor(z, dtype=torch.float32)).double().numpy()
    flux = signal[:, None] + noise * rng.normal(size=(n, n_exp, N_PIX))
    return z, labels, signal, flux, np.full(flux.shape, noise)


def test_map_recovers_latent_and_class(model):
    z, labels, signal, flux, sigma = draw(model, 12, seed=1)
    result = model.map_estimate(flux[:, 0], sigma[:, 0])
    assert isinstance(result, MAPResult)
    assert result.z.shape == (12, LATENT) and result.flux.shape == (12, N_PIX)
    assert result.class_posterior.shape == (12, 3) and result.hessian.shape == (12, 3, 2, 2)
    np.testing.assert_array_equal(result.map_class, labels)
    np.testing.assert_allclose(result.class_posterior.sum(1), 1.0, rtol=1e-6)
    assert np.all(result.class_posterior[np.arange(12), labels] > 0.99)
    z_sigma = np.sqrt(np.diagonal(result.covariance[np.arange(12), labels], axis1=1, axis2=2))
    assert np.all(np.abs(result.z - z) < 5 * z_sigma)
    assert np.all(np.abs(result.z - z) < 0.2)
    assert np.mean((result.flux - signal) ** 2) < np.mean((flux[:, 0] - signal) ** 2) / 5
    assert result.flow == "whitened" and not result.sigma_estimated
    assert result.class_names == tuple(CLASSES)
    assert not result.filled.any()
    assert np.all((result.ood_score >= 0) & (result.ood_score <= 1))
    assert np.all(result.steps <= FAST["steps"] * 3)


def test_encoder_start_not_needed(model):
    """With the encoder start alone far off, the KDE starts still find the class."""
    z, labels, _, flux, sigma = draw(model, 6, seed=2)
    result = model.map_estimate(flux[:, 0], sigma[:, 0], n_starts=3)
    one = model.map_estimate(flux[:, 0], sigma[:, 0], n_starts=1)
    np.testing.assert_array_equal(result.map_class, labels)
    np.testing.assert_allclose(result.z, one.z, atol=0.02)


def test_two_exposures_concentrate_posterior(model):
    z, _, _, flux, sigma = draw(model, 16, seed=3, n_exp=2)
    one = model.map_estimate(flux[:, 0], sigma[:, 0], **FAST)
    two = model.map_estimate(flux, sigma, **FAST)
    rows = np.arange(16)
    det_one = np.linalg.det(one.covariance[rows, one.map_class])
    det_two = np.linalg.det(two.covariance[rows, two.map_class])
    assert np.all(det_two < det_one)
    assert np.mean((two.z - z) ** 2) < np.mean((one.z - z) ** 2)
    assert np.mean(two.flux_sigma) < np.mean(one.flux_sigma)


def test_ragged_exposures_match_padded(model):
    _, _, _, flux, sigma = draw(model, 3, seed=4, n_exp=2)
    # star 0 has two exposures, stars 1 and 2 one each (their second is padding)
    rows = np.stack([flux[0, 0], flux[1, 0], flux[0, 1], flux[2, 0]])
    index = np.array([0, 1, 0, 2])
    ragged = model.map_estimate(rows, np.full(rows.shape, NOISE), exposures=index, **FAST)
    padded = flux.copy()
    padded[1:, 1] = np.nan
    dense = model.map_estimate(padded, sigma, **FAST)
    np.testing.assert_allclose(ragged.z, dense.z, atol=1e-5)
    np.testing.assert_allclose(ragged.class_posterior, dense.class_posterior, atol=1e-5)


def test_masked_pixels_ignored(model):
    z, _, _, flux, sigma = draw(model, 4, seed=5)
    flux, sigma = flux[:, 0], sigma[:, 0]
    missing = np.zeros(flux.shape, bool)
    missing[0, 10:30] = True
    missing[2, -12:] = True
    missing[3, :5] = True
    changed = np.where(missing, 50.0 * np.random.default_rng(6).normal(size=flux.shape), flux)
    first = model.map_estimate(flux, sigma, missing, **FAST)
    second = model.map_estimate(changed, sigma, missing, **FAST)
    as_nan = model.map_estimate(np.where(missing, np.nan, flux), sigma, **FAST)
    for other in (second, as_nan):
        np.testing.assert_array_equal(first.z, other.z)
        np.testing.assert_array_equal(first.flux_sigma, other.flux_sigma)
    np.testing.assert_array_equal(first.filled, missing)
    assert np.all(np.isfinite(first.flux)) and np.all(np.abs(first.z - z) < 0.3)


def test_outliers_rejected(model):
    """Upward spikes (cosmic-ray hits) are left out; a deep dip is not (one-sided)."""
    z, _, _, flux, sigma = draw(model, 4, seed=9)
    flux, sigma = flux[:, 0], sigma[:, 0]
    spiked = flux.copy()
    hits = np.zeros(flux.shape, bool)
    hits[0, 20:23] = hits[1, 40] = hits[3, [10, 50]] = True
    spiked[hits] += 30 * NOISE
    spiked[2, 30] -= 20 * NOISE  # a dip the guess misses, its flux still above zero: kept
    clean = model.map_estimate(flux, sigma, **FAST)
    clipped = model.map_estimate(spiked, sigma, **FAST)
    kept = model.map_estimate(spiked, sigma, clip=None, **FAST)
    masked = model.map_estimate(spiked, sigma, hits, clip=None, **FAST)
    np.testing.assert_array_equal(clipped.rejected, hits)
    assert not clean.rejected.any() and not kept.rejected.any()
    assert not clipped.filled.any()
    # the same fit as with the hits masked by hand; keeping them pulls it away
    np.testing.assert_allclose(clipped.z, masked.z, atol=1e-6)
    for star in (0, 1, 3):
        error = np.abs(clipped.z[star] - clean.z[star]).max()
        assert error < 0.05 and np.abs(kept.z[star] - clean.z[star]).max() > 2 * error
    np.testing.assert_allclose(clipped.z[2], kept.z[2], atol=1e-4)  # batch-wide EM stop


def test_negative_pixels_rejected(model):
    """A pixel far below zero flux (a bad pixel, an over-subtracted sky line) is left
    out; a dip as deep below the guess that stays above zero is kept."""
    _, _, _, flux, sigma = draw(model, 2, seed=11)
    flux, sigma = flux[:, 0], sigma[:, 0]
    flux[0, 15] = -10 * NOISE  # -10 sigma: no star's flux
    flux[1, 15] = 0.2 * NOISE  # far below the guess, but not below zero
    result = model.map_estimate(flux, sigma, **FAST)
    expected = np.zeros(flux.shape, bool)
    expected[0, 15] = True
    np.testing.assert_array_equal(result.rejected, expected)


def test_outliers_per_exposure(model):
    _, _, _, flux, sigma = draw(model, 2, seed=10, n_exp=2)
    flux[0, 1, 25] += 30 * NOISE
    result = model.map_estimate(flux, sigma, **FAST)
    expected = np.zeros((2, N_PIX), bool)
    expected[0, 25] = True
    np.testing.assert_array_equal(result.rejected, expected)
    assert not result.filled.any()  # exposure 0 still has the pixel


def test_outliers_without_a_noise_level(model):
    """No sigma and no noise to estimate: nothing is rejected, nothing raises."""
    result = model.map_estimate(np.ones((2, N_PIX)), **FAST)
    assert result.flow == "plain" and not result.rejected.any()


def test_hessian_matches_finite_differences():
    model = make_model().double()
    z, _, _, flux, sigma = draw(model, 2, seed=7)
    # a margin that keeps every class: every Hessian is computed at its class's optimum
    result = model.map_estimate(flux[:, 0], sigma[:, 0], class_margin=1e6, **FAST)
    step = 1e-5  # small: the leaky-ReLU generator is only piecewise smooth
    centre = torch.as_tensor(result.class_z)
    fd = np.zeros(result.hessian.shape)
    for i in range(LATENT):
        for j in range(LATENT):
            total = 0.0
            for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                point = centre.clone()
                point[..., i] += si * step
                point[..., j] += sj * step
                with torch.no_grad():
                    value = model.log_joint(point, flux[:, 0], sigma[:, 0]).numpy()
                total = total + si * sj * value
            fd[..., i, j] = -total / (4 * step**2)
    np.testing.assert_allclose(result.hessian, fd, rtol=1e-4, atol=1e-2)
    # at the optimum the curvature is about 1 / NOISE**2 per latent direction
    best = result.hessian[np.arange(2), result.map_class]
    assert np.all(np.linalg.eigvalsh(best) > 0.5 / NOISE**2)


def test_likelihood_derivatives_match_autograd():
    """Gradient and Hessian of the likelihood (two exposures, missing pixels) are exact."""
    model = make_model().double()
    z, _, _, flux, sigma = draw(model, 3, seed=15, n_exp=2)
    missing = np.zeros(flux.shape, bool)
    missing[0, 1, 10:20] = True
    missing[2, 0, :6] = True
    data = model._prepare(flux, sigma, missing, None)
    point = torch.as_tensor(z) + 0.1
    rows = torch.arange(3)
    lik, grad, hess = model._likelihood(point, rows, data, derivatives=True)
    query = point.clone().requires_grad_(True)
    reference = model._likelihood(query, rows, data)
    (ref_grad,) = torch.autograd.grad(reference.sum(), query, create_graph=True)
    ref_hess = -torch.stack(
        [torch.autograd.grad(ref_grad[:, i].sum(), query, retain_graph=True)[0] for i in range(2)],
        dim=1,
    )
    np.testing.assert_allclose(lik.numpy(), reference.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref_grad.detach().numpy(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(hess.numpy(), ref_hess.numpy(), rtol=1e-8, atol=1e-8)
    joint = model.log_joint(np.repeat(point.numpy()[:, None], 3, 1), flux, sigma, missing)
    prior = model.prior.log_prob(point)
    np.testing.assert_allclose(
        joint.detach().numpy(), lik.numpy()[:, None] + prior.numpy() - np.log(3), rtol=1e-10
    )


def test_newton_raises_the_log_joint(model):
    """Each class ends at least as high as its screening start, and converges."""
    _, labels, _, flux, sigma = draw(model, 6, seed=16)
    screened = model.map_estimate(flux[:, 0], sigma[:, 0], steps=0, class_margin=1e6)
    refined = model.map_estimate(flux[:, 0], sigma[:, 0], steps=20, class_margin=1e6)
    assert np.all(screened.steps == 0)
    assert np.all(refined.class_log_joint >= screened.class_log_joint - 1e-6)
    rows = np.arange(6)
    assert np.all(refined.converged[rows, labels])


def test_class_log_joint_is_the_log_joint_at_class_z():
    """Each class's log joint is the one at its point, whether its Newton ascent ended on
    a small full step (whose derivatives are not computed again), on a small decrement
    or at screening (the shipped model: the toy one converges at screening)."""
    model = load_model("denoiser-miles")
    rng = np.random.default_rng(3)
    with torch.no_grad():
        z = model.prior.starts(1)[:, 0]
        z = z + 0.5 * torch.as_tensor(rng.normal(size=z.shape), dtype=z.dtype)
        signal = model.generator.generate(z).double().numpy()
    sigma = np.full_like(signal, 0.1)
    flux = signal + sigma * rng.normal(size=signal.shape)
    result = model.map_estimate(flux, sigma, clip=None, class_margin=1e6)
    assert np.any(result.steps > 0)
    joint = model.log_joint(result.class_z, flux, sigma).detach().numpy()
    np.testing.assert_allclose(result.class_log_joint, joint, rtol=0, atol=0.01)


def test_margin_stops_classes_after_screening(model):
    _, labels, _, flux, sigma = draw(model, 6, seed=17)
    result = model.map_estimate(flux[:, 0], sigma[:, 0], class_margin=5.0)
    gap = result.class_log_joint.max(1, keepdims=True) - result.class_log_joint
    assert np.all(result.steps[gap > 100] == 0)
    np.testing.assert_array_equal(result.map_class, labels)


def test_uncertainty_shrinks_with_signal_to_noise(model):
    widths = []
    for noise in (0.1, 0.02):
        _, _, _, flux, sigma = draw(model, 6, seed=8, noise=noise)
        widths.append(model.map_estimate(flux[:, 0], sigma[:, 0], **FAST).flux_sigma.mean())
    assert widths[1] < widths[0] / 3


def test_batch_equals_loop(model):
    _, _, _, flux, sigma = draw(model, 4, seed=9)
    batch = model.map_estimate(flux[:, 0], sigma[:, 0], **FAST)
    for i in range(4):
        single = model.map_estimate(flux[i, 0], sigma[i, 0], **FAST)
        np.testing.assert_allclose(single.z[0], batch.z[i], atol=1e-4)
        np.testing.assert_allclose(single.class_posterior[0], batch.class_posterior[i], atol=1e-5)
        np.testing.assert_allclose(single.flux_sigma[0], batch.flux_sigma[i], rtol=1e-3)


def test_deterministic_for_a_seed(model):
    _, _, _, flux, sigma = draw(model, 3, seed=10)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return model.map_estimate(flux[:, 0], sigma[:, 0], random_starts=2, generator=gen, **FAST)

    first, second = run(0), run(0)
    for name in ("z", "class_z", "class_posterior", "flux", "flux_sigma", "steps"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_sigma_fallbacks():
    _, labels, _, flux, sigma = draw(make_model(), 4, seed=11)
    whitened_only = make_model(kinds=("whitened",))
    estimated = whitened_only.map_estimate(flux[:, 0], **FAST)
    assert estimated.flow == "whitened" and estimated.sigma_estimated
    np.testing.assert_array_equal(estimated.map_class, labels)
    plain_only = make_model(kinds=("plain",))
    with pytest.warns(AstropyUserWarning, match="no whitened NoiseFlow: sigma is ignored"):
        ignored = plain_only.map_estimate(flux[:, 0], sigma[:, 0], **FAST)
    assert ignored.flow == "plain"
    np.testing.assert_array_equal(ignored.map_class, labels)


def _check_same(model, other, flux, sigma):
    first = model.map_estimate(flux, sigma, **FAST)
    second = other.map_estimate(flux, sigma, **FAST)
    for name in ("z", "class_posterior", "flux", "flux_sigma", "ood_score"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_tree_round_trip(model, monkeypatch, tmp_path):
    """The model's ASDF tree, written and read back, rebuilds an identical Denoiser."""
    monkeypatch.setitem(
        models.MODEL_REGISTRY, "Denoiser", "specutils_deepclean.models.denoiser:Denoiser"
    )
    path = tmp_path / "tree.asdf"
    asdf.AsdfFile({"tree": model._to_tree()}).write_to(path)
    with asdf.open(path) as af:
        loaded = DeepCleanModel._from_tree(af["tree"])
    assert isinstance(loaded, Denoiser) and loaded.classes == tuple(CLASSES)
    assert loaded.prior.class_names == model.prior.class_names
    _, _, _, flux, sigma = draw(model, 3, seed=12)
    _check_same(model, loaded.eval(), flux[:, 0], sigma[:, 0])


@pytest.mark.skipif(
    "Denoiser" not in models.MODEL_REGISTRY,
    reason="Denoiser is not in specutils_deepclean.models.MODEL_REGISTRY yet",
)
def test_save_load(model, tmp_path):
    loaded = load_model(save_model(model, tmp_path / "denoiser.asdf"))
    assert isinstance(loaded, Denoiser) and loaded.name == "tiny-denoiser"
    _, _, _, flux, sigma = draw(model, 3, seed=13)
    _check_same(model, loaded, flux[:, 0], sigma[:, 0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"flux": np.ones((2, N_PIX + 1))}, ValueError, "has 65 pixels but the model grid has 64"),
        ({"flux": np.ones((1, 2, 3, N_PIX))}, ValueError, "1-D, 2-D or 3-D"),
        ({"sigma": np.ones((2, N_PIX - 1))}, ValueError, "sigma has shape"),
        ({"sigma": -np.ones((2, N_PIX))}, ValueError, "sigma must be positive"),
        ({"missing": np.ones((2, N_PIX), int)}, TypeError, "missing must be a boolean"),
        ({"missing": np.zeros((2, 3), bool)}, ValueError, "missing has shape"),
        ({"flux": np.full((2, N_PIX), np.nan)}, ValueError, "spectrum 0 has no valid pixel"),
        ({"missing": np.tile(ALTERNATE, (2, 1))}, ValueError, "no pixel that counts"),
        ({"exposures": [0, 2]}, ValueError, "number the stars 0 to B-1"),
        ({"exposures": [0]}, ValueError, "exposures must be 2 integers"),
        ({"steps": -1}, ValueError, "steps must be an integer >= 0"),
        ({"n_starts": 0}, ValueError, "n_starts must be an integer >= 1"),
        ({"tol": 0.0}, ValueError, "tol must be a positive finite number"),
        ({"clip": 0.0}, ValueError, "clip must be a positive finite number"),
        ({"clip": np.nan}, ValueError, "clip must be a positive finite number"),
    ],
)
def test_bad_inputs(model, kwargs, error, match):
    args = {"flux": np.ones((2, N_PIX)), "sigma": np.full((2, N_PIX), 0.1)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        model.map_estimate(**args)


def test_all_missing_star_in_a_batch(model):
    flux = np.ones((3, 2, N_PIX))
    flux[1] = np.nan
    with pytest.raises(ValueError, match=r"spectrum 1 has no valid pixel"):
        model.map_estimate(flux)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"flows": {}}, ValueError, "non-empty list"),
        ({"flows": {"plain": NoiseFlow(3, 4, [4], whitened=True)}}, ValueError, "whitened=False"),
        ({"flows": {"other": NoiseFlow(3, 4, [4])}}, ValueError, "non-empty list"),
        ({"flows": [NoiseFlow(3, 4, [4])]}, TypeError, "dict of NoiseFlow"),
        ({"generator": "G"}, TypeError, "generator must be an IsometricAutoencoder"),
        ({"prior": None}, TypeError, "prior must be a KDEPrior"),
        ({"wavelength": np.linspace(1, 2, 10) * u.AA}, ValueError, "wavelength grid has 10"),
    ],
)
def test_from_parts_errors(change, error, match):
    generator, prior, flows = make_parts()
    parts = {"generator": generator, "prior": prior, "flows": flows}
    parts.update({k: v for k, v in change.items() if k in parts})
    wave = change.get("wavelength", np.linspace(5000.0, 5100.0, N_PIX) * u.AA)
    with pytest.raises(error, match=match):
        Denoiser.from_parts(**parts, wavelength=wave, medium="air")


def test_from_parts_copies_and_log_joint(model):
    generator, prior, flows = make_parts()
    with torch.no_grad():
        generator.mean.add_(1.0)
    assert not torch.equal(generator.mean, model.generator.mean)
    z, labels, _, flux, sigma = draw(model, 2, seed=14)
    start = torch.as_tensor(np.repeat(z[:, None], 3, axis=1))
    joint = model.log_joint(start, flux[:, 0], sigma[:, 0])
    assert joint.shape == (2, 3)
    assert np.all(joint.argmax(1).numpy() == labels)
    with pytest.raises(ValueError, match="z must have shape"):
        model.log_joint(start[:, :2], flux[:, 0], sigma[:, 0])


def test_generator_sigma_adds_in_quadrature():
    generator, prior, flows = make_parts(0)
    wave = np.linspace(5000.0, 5100.0, N_PIX) * u.AA
    floor = np.full(N_PIX, 0.03, dtype=np.float32)
    kwargs = {"wavelength": wave, "medium": "air"}
    plain = Denoiser.from_parts(generator, prior, flows, **kwargs)
    floored = Denoiser.from_parts(
        generator, prior, flows, extra={"generator_sigma": floor}, **kwargs
    )
    _, _, _, flux, sigma = draw(plain, 3, seed=11)
    a = plain.map_estimate(flux[:, 0], sigma[:, 0], **FAST)
    b = floored.map_estimate(flux[:, 0], sigma[:, 0], **FAST)
    np.testing.assert_allclose(b.flux, a.flux)
    np.testing.assert_allclose(b.flux_sigma**2, a.flux_sigma**2 + 0.03**2, rtol=1e-4)
    np.testing.assert_allclose(b.latent_sigma, a.flux_sigma, rtol=1e-6)
    scaled = Denoiser.from_parts(
        generator,
        prior,
        flows,
        extra={"generator_sigma": floor, "sigma_scales": np.array([2.0, 0.5])},
        **kwargs,
    )
    c = scaled.map_estimate(flux[:, 0], sigma[:, 0], **FAST)
    np.testing.assert_allclose(c.flux_sigma**2, 4 * a.flux_sigma**2 + 0.25 * 0.03**2, rtol=1e-4)


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"sigma_scales": np.array([1.0])}, "sigma_scales"),
        ({"sigma_scales": np.array([1.0, -1.0])}, "sigma_scales"),
        ({"sigma_scales": np.array([np.nan, 1.0])}, "sigma_scales"),
        ({"generator_sigma": np.ones(N_PIX - 1)}, "generator_sigma"),
        ({"generator_sigma": np.full(N_PIX, np.inf)}, "generator_sigma"),
        ({"obs_sigma_scale": np.ones(N_PIX - 1)}, "obs_sigma_scale"),
        ({"obs_sigma_scale": np.ones((2, N_PIX))}, "obs_sigma_scale"),
        ({"obs_sigma_scale": np.r_[np.ones(N_PIX - 1), 0.0]}, "obs_sigma_scale"),
        ({"obs_sigma_scale": np.r_[np.ones(N_PIX - 1), np.nan]}, "obs_sigma_scale"),
        ({"residual_basis": np.ones((2, N_PIX))}, "both 'residual_basis'"),
        ({"continuum_sigma": np.array([0.1, 0.0])}, "continuum_sigma"),
        ({"continuum_sigma": np.ones((2, 2))}, "continuum_sigma"),
        ({"continuum_sigma": np.ones(17)}, "continuum_sigma"),
        ({"residual_basis": np.ones((2, N_PIX - 1)), "residual_variance": np.ones(2)},
         "residual_basis"),
        ({"residual_basis": np.ones((2, N_PIX)), "residual_variance": np.ones(3)},
         "residual_basis"),
        ({"residual_basis": np.ones((2, N_PIX)), "residual_variance": np.array([1.0, 0.0])},
         "residual_basis"),
    ],
)
def test_uncertainty_extras_are_checked(extra, match):
    generator, prior, flows = make_parts(0)
    wave = np.linspace(5000.0, 5100.0, N_PIX) * u.AA
    with pytest.raises(ValueError, match=match):
        Denoiser.from_parts(generator, prior, flows, wavelength=wave, medium="air", extra=extra)


def test_obs_sigma_scale_widens_the_pixels_with_data_only(model):
    """``extra["obs_sigma_scale"]``: sigma times the factor where there is data, the
    pixels without data and the flux unchanged."""
    factor = np.linspace(0.5, 2.0, N_PIX)
    scaled = with_extra(model, obs_sigma_scale=factor)
    _, _, _, flux, sigma = draw(model, 3, seed=12)
    missing = np.zeros((3, N_PIX), bool)
    missing[:, 40:50] = True
    a = with_extra(model).map_estimate(flux[:, 0], sigma[:, 0], missing, **FAST)
    b = scaled.map_estimate(flux[:, 0], sigma[:, 0], missing, **FAST)
    np.testing.assert_array_equal(b.filled, missing)
    np.testing.assert_allclose(b.flux, a.flux, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b.flux_sigma[missing], a.flux_sigma[missing], rtol=1e-6)
    expected = (a.flux_sigma * factor)[~missing]
    np.testing.assert_allclose(b.flux_sigma[~missing], expected, rtol=1e-5)


def with_extra(model, **extra):
    generator, prior, flows = make_parts(0)
    return Denoiser.from_parts(
        generator, prior, flows, wavelength=model.wavelength, medium="air", extra=extra
    )


def with_residual_basis(model, basis, variance):
    return with_extra(
        model, residual_basis=basis.astype(np.float32), residual_variance=variance
    )


def test_residual_term_fits_what_the_generator_cannot(model, tmp_path):
    """Spectra G(z) + B a: the term recovers B a; the MAP of z does not change."""
    rng = np.random.default_rng(12)
    pixels = np.arange(N_PIX)
    basis = np.stack([np.sin(pixels / 3.0), np.cos(pixels / 5.0)])
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    extended = with_residual_basis(model, basis, np.array([0.04, 0.01]))
    _, _, signal, flux, sigma = draw(model, 8, seed=13, noise=0.01)
    coef = rng.normal(size=(8, 2)) * np.sqrt([0.04, 0.01])
    truth = signal + coef @ basis
    flux = flux[:, 0] + coef @ basis
    plain = model.map_estimate(flux, sigma[:, 0], **FAST)
    fitted = extended.map_estimate(flux, sigma[:, 0], **FAST)
    np.testing.assert_allclose(fitted.z, plain.z, atol=0.05)  # the MAP's business is z
    assert np.mean((fitted.flux - truth) ** 2) < np.mean((plain.flux - truth) ** 2) / 5
    # the ridge solve with a missing stretch: the term fills it too
    missing = np.zeros(flux.shape, bool)
    missing[:, 20:40] = True
    gapped = extended.map_estimate(flux, sigma[:, 0], missing, **FAST)
    inside = np.mean((gapped.flux[:, 20:40] - truth[:, 20:40]) ** 2)
    assert inside < np.mean((plain.flux[:, 20:40] - truth[:, 20:40]) ** 2) / 3
    # the term's posterior variance is added where there is no data: between zero
    # and its prior variance there, nothing elsewhere
    without = model.map_estimate(flux, sigma[:, 0], missing, **FAST)
    added = gapped.flux_sigma**2 - without.flux_sigma**2
    prior = (basis**2 * np.array([0.04, 0.01])[:, None]).sum(0)
    assert np.all(added[:, 20:40] > 0) and np.all(added[:, 20:40] <= prior[20:40] * 1.001)
    np.testing.assert_allclose(added[~missing], 0.0, atol=1e-6)
    np.testing.assert_allclose(fitted.flux_sigma, plain.flux_sigma, rtol=1e-5)
    path = save_model(extended, tmp_path / "r.asdf")
    again = load_model(path).map_estimate(flux, sigma[:, 0], **FAST)
    np.testing.assert_array_equal(again.flux, fitted.flux)


def test_continuum_term_fits_level_and_slope(model, tmp_path):
    """Spectra G(z) (1 + c0 + c1 x): the continuum term recovers the level and slope
    the generator cannot draw, alone and with a residual term; a gap gets its variance."""
    rng = np.random.default_rng(21)
    _, _, signal, flux, sigma = draw(model, 8, seed=22, noise=0.01)
    x = np.linspace(-1.0, 1.0, N_PIX)
    coef = rng.normal(size=(8, 2)) * 0.05
    truth = signal * (1 + coef[:, :1] + coef[:, 1:] * x)
    flux = flux[:, 0] - signal + truth
    plain = model.map_estimate(flux, sigma[:, 0], **FAST)
    tilted = with_extra(model, continuum_sigma=np.array([0.1, 0.1, 0.1]))
    fitted = tilted.map_estimate(flux, sigma[:, 0], **FAST)
    np.testing.assert_allclose(fitted.z, plain.z)  # the MAP's business is z
    assert np.mean((fitted.flux - truth) ** 2) < np.mean((plain.flux - truth) ** 2) / 5
    basis = np.stack([np.sin(np.arange(N_PIX) / 3.0)]) / np.sqrt(N_PIX / 2)
    both = with_extra(
        model,
        continuum_sigma=np.array([0.1, 0.1, 0.1]),
        residual_basis=basis.astype(np.float32),
        residual_variance=np.array([0.01]),
    ).map_estimate(flux, sigma[:, 0], **FAST)
    assert np.mean((both.flux - truth) ** 2) < np.mean((plain.flux - truth) ** 2) / 5
    missing = np.zeros(flux.shape, bool)
    missing[:, 50:] = True
    gapped = tilted.map_estimate(flux, sigma[:, 0], missing, **FAST)
    without = model.map_estimate(flux, sigma[:, 0], missing, **FAST)
    added = gapped.flux_sigma**2 - without.flux_sigma**2
    assert np.all(added[:, 50:] > 0)
    np.testing.assert_allclose(added[:, :50], 0.0, atol=1e-6)
    path = save_model(tilted, tmp_path / "c.asdf")
    again = load_model(path).map_estimate(flux, sigma[:, 0], **FAST)
    np.testing.assert_array_equal(again.flux, fitted.flux)


def test_map_with_a_near_singular_kernel():
    """A class whose training latents lie almost on a line has a kernel precision far beyond
    float32's range of the likelihood's curvature; the MAP must still run and stay finite."""
    generator, _, flows = make_parts()
    rng = np.random.default_rng(3)
    line = np.linspace(-1, 1, 30)[:, None] * np.array([[1.0, 0.5]])
    points = np.concatenate([line + 1e-6 * rng.normal(size=line.shape), CENTRES[1] + line])
    prior = train_kde(points, np.repeat(CLASSES[:2], 30))
    assert np.linalg.cond(prior.to_arrays()["kde_bandwidths"][0]) > 1e9
    model = Denoiser.from_parts(
        generator,
        prior,
        flows,
        wavelength=np.linspace(5000.0, 5100.0, N_PIX) * u.AA,
        medium="air",
        provenance=Provenance(data_name="synthetic", seed=0),
        name="tiny-denoiser",
    )
    _, _, _, flux, sigma = draw(model, 4, seed=5)
    result = model.map_estimate(flux[:, 0], sigma=sigma[:, 0], **FAST)
    assert np.all(np.isfinite(result.flux)) and np.all(np.isfinite(result.class_posterior))
