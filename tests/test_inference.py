"""The array-level entry point, the flow's public likelihood, the linear terms and the
inference verbs (inference.py, models/noiseflow.py, models/linear_terms.py)."""

import astropy.units as u
import numpy as np
import pytest
from astropy.utils.exceptions import AstropyDeprecationWarning

torch = pytest.importorskip("torch")

from test_denoiser_model import FAST, N_PIX, draw, make_model  # noqa: E402

from specutils_deepclean.inference import Denoised, denoise_arrays  # noqa: E402
from specutils_deepclean.models.level import relevel  # noqa: E402
from specutils_deepclean.models.linear_terms import (  # noqa: E402
    _BIN,
    check_term_arrays,
    model_term_parts,
    term_columns,
    term_parts,
    terms_posterior,
    terms_solve,
)
from specutils_deepclean.models.noiseflow import NoiseFlow, counted_pixels  # noqa: E402
from specutils_deepclean.spectra import median_normalise  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_denoise_arrays_is_normalise_map_rescale(model):
    """The one array path: the medians divided out, the MAP, the medians put back."""
    _, _, _, flux, sigma = draw(model, 4, seed=3)
    flux, sigma = 3.0 * flux[:, 0], 3.0 * sigma[:, 0]
    missing = np.zeros(flux.shape, bool)
    missing[1, 20:30] = True
    out = denoise_arrays(model, flux, sigma, missing, **FAST)
    assert isinstance(out, Denoised)
    normalised, scale = median_normalise(flux, missing)
    # a wide enough gap (star 1) puts the star on the generator's level first
    level = relevel(model, normalised, sigma / scale[:, None], missing)
    assert level[1] != 1 and np.all(level[[0, 2, 3]] == 1)
    by_hand = model.map_estimate(
        normalised / level[:, None], sigma / (scale * level)[:, None], missing, **FAST
    )
    scale = scale * level
    np.testing.assert_array_equal(out.scale, scale)
    np.testing.assert_array_equal(out.map.flux, by_hand.flux)
    np.testing.assert_array_equal(out.flux, by_hand.flux * scale[:, None])
    np.testing.assert_array_equal(out.flux_sigma, by_hand.flux_sigma * scale[:, None])
    np.testing.assert_array_equal(out.latent_sigma, by_hand.latent_sigma * scale[:, None])
    # already normalised input (as to_model_grid gives it): the same answer
    again = denoise_arrays(
        model, normalised, sigma / (scale / level)[:, None], missing, scale=scale / level, **FAST
    )
    np.testing.assert_array_equal(again.flux, out.flux)


def test_denoise_arrays_exposures_rescale_by_the_first(model):
    """Exposures through throughputs 2 and 5 keep them (not pooled): the output is on the
    first exposure's scale, its level that of the exposures' co-add."""
    _, _, signal, flux, sigma = draw(model, 2, seed=4, n_exp=2)
    flux = flux * np.array([2.0, 5.0])[None, :, None]
    sigma = sigma * np.array([2.0, 5.0])[None, :, None]
    out = denoise_arrays(model, flux, sigma, **FAST)
    _, scale = median_normalise(flux)
    np.testing.assert_allclose(out.scale, scale[:, 0], rtol=0.03)
    assert out.flux.shape == (2, N_PIX)
    np.testing.assert_allclose(out.flux / 2, signal, atol=0.05)


def test_denoise_arrays_bad_input(model):
    flux = np.ones((2, N_PIX))
    with pytest.raises(ValueError, match="2-D"):
        denoise_arrays(model, np.ones(N_PIX))
    with pytest.raises(ValueError, match="scale must have shape"):
        denoise_arrays(model, flux, scale=np.ones(3))
    with pytest.raises(TypeError, match="exposures"):
        denoise_arrays(model, flux, exposures=[0, 1])


def _flow(whitened=False, seed=1):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = NoiseFlow(context=3, channels=4, hidden=[5, 4], whitened=whitened).double()
        with torch.no_grad():  # heads far from white noise, so the network matters
            flow.head_mu.weight.mul_(50)
            flow.head_alpha.weight.mul_(50)
    return flow


def test_flow_log_likelihood_is_the_distribution_less_the_unit_terms():
    flow = _flow()
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.normal(size=(3, 40)))
    missing = torch.zeros(3, 40, dtype=torch.bool)
    missing[1, 5:9] = True
    counted = counted_pixels(missing, flow.context)
    u = torch.where(missing, 0.0, y)
    full = flow(torch.zeros(40)).log_prob(y, missing)
    constant = counted.sum(-1).double() * 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(
        flow.log_likelihood(u, counted).detach().numpy(),
        (full + constant).detach().numpy(),
        rtol=1e-12,
    )
    np.testing.assert_array_equal(
        flow.standardise(u).detach().numpy(),
        flow(torch.zeros(40)).standardise(u).detach().numpy(),
    )


def test_flow_log_likelihood_derivatives_match_autograd():
    """With the Jacobian of u in theta = u itself, gradient and Hessian are autograd's."""
    flow = _flow()
    rng = np.random.default_rng(1)
    u = torch.as_tensor(rng.normal(size=(2, 24)))
    counted = torch.ones(2, 24, dtype=torch.float64)
    counted[0, 10:14] = 0.0
    jac = torch.eye(24, dtype=torch.float64).expand(2, 24, 24)
    lik, grad, hess = flow.log_likelihood(u, counted, jacobian=jac)
    for row in range(2):

        def f(x, row=row):
            return flow.log_likelihood(x[None], counted[row : row + 1])[0]

        np.testing.assert_allclose(lik[row].item(), f(u[row]).item(), rtol=1e-12)
        ref_grad = torch.autograd.functional.jacobian(f, u[row])
        ref_hess = -torch.autograd.functional.hessian(f, u[row])
        np.testing.assert_allclose(grad[row].numpy(), ref_grad.numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(hess[row].numpy(), ref_hess.numpy(), rtol=1e-9, atol=1e-9)


def test_terms_posterior_recovers_a_residual_component():
    """Flux = signal + B a with a broad prior and small noise: the fit is B a."""
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.normal(size=(N_PIX, 3)))
    extra = {"residual_basis": basis.T, "residual_variance": np.full(3, 100.0)}
    check_term_arrays(extra, N_PIX)
    parts = term_parts(extra, N_PIX, torch.float64, "cpu")
    assert parts.legendre is None and parts.precision.shape == (3, 3)
    signal = torch.ones(2, N_PIX, dtype=torch.float64)
    coef = np.array([[0.3, -0.2, 0.1], [0.0, 0.5, 0.0]])
    flux = signal[:, None] + torch.as_tensor(coef @ basis.T)[:, None]
    inv_unit = torch.full((2, 1, N_PIX), 1e3, dtype=torch.float64)
    inv_unit[1, 0, :8] = 0.0  # no data there: a variance comes back, from the prior's scale
    fit, variance = terms_posterior(parts, flux, inv_unit, signal)
    np.testing.assert_allclose(fit.numpy(), coef @ basis.T, atol=1e-5)
    assert np.all(variance[0].numpy() == 0) and np.all(variance[1, :8].numpy() > 0)
    assert np.all(variance[1, 8:].numpy() == 0)


def _dense_terms(parts, target, weight, signal):
    """The terms' fit and variance from the normal equations written out and inverted."""
    columns = term_columns(parts, signal)  # (n, K, P)
    system = (columns * weight[:, None]) @ columns.transpose(1, 2) + parts.precision
    coef = torch.linalg.solve(system, columns @ target[..., None])
    spread = ((torch.linalg.inv(system) @ columns) * columns).sum(1)
    return (coef.transpose(1, 2) @ columns)[:, 0], spread


def _terms_problem(n_star, weight):
    """Both terms on N_PIX pixels, ``weight`` (n_star, N_PIX) with star 0's pixels 5-14
    (across bins) and 40 (alone in its bin) without data."""
    rng = np.random.default_rng(7)
    basis, _ = np.linalg.qr(rng.normal(size=(N_PIX, 5)))
    extra = {
        "residual_basis": basis.T,
        "residual_variance": rng.uniform(0.01, 1.0, 5),
        "continuum_sigma": np.array([0.05, 0.02, 0.01]),
    }
    parts = term_parts(extra, N_PIX, torch.float64, "cpu")
    signal = torch.as_tensor(1 + 0.2 * rng.random((n_star, N_PIX)))
    weight = torch.as_tensor(weight)
    weight[0, 5:15] = weight[0, 40] = 0.0
    target = weight * torch.as_tensor(rng.normal(scale=0.03, size=(n_star, N_PIX)))
    return parts, target, weight, signal


@pytest.mark.parametrize("n_star", [3, 40])
def test_terms_solve_fit_is_the_dense_solution(n_star):
    """The conjugate gradients reach the dense normal equations' fit, with weights that
    differ from pixel to pixel (the binned preconditioner far from exact) and gaps."""
    weight = np.random.default_rng(8).uniform(10.0, 1e3, (n_star, N_PIX))
    parts, target, weight, signal = _terms_problem(n_star, weight)
    fit, variance = terms_solve(parts, target, weight, signal)
    dense_fit, dense_spread = _dense_terms(parts, target, weight, signal)
    np.testing.assert_allclose(fit.numpy(), dense_fit.numpy(), atol=1e-10)
    assert np.all(variance[0, 5:15].numpy() > 0) and variance[0, 40] > 0
    assert np.all(variance[0, :5].numpy() == 0) and np.all(variance[1:].numpy() == 0)


def test_terms_solve_variance_exact_for_weights_constant_per_bin():
    """The variance comes from the binned normal matrix: exact when the weights are
    constant over each bin's pixels with data, whatever pixels have none (the products
    of those in bins with some taken back out)."""
    per_bin = np.random.default_rng(9).uniform(10.0, 1e3, (3, -(-N_PIX // _BIN)))
    weight = np.repeat(per_bin, _BIN, axis=1)[:, :N_PIX]
    parts, target, weight, signal = _terms_problem(3, weight)
    fit, variance = terms_solve(parts, target, weight, signal)
    dense_fit, dense_spread = _dense_terms(parts, target, weight, signal)
    np.testing.assert_allclose(fit.numpy(), dense_fit.numpy(), atol=1e-10)
    empty = weight[0].numpy() == 0
    np.testing.assert_allclose(
        variance[0, empty].numpy(), dense_spread[0, empty].numpy(), rtol=1e-9
    )


def test_model_term_parts_built_once_and_again_for_new_arrays():
    class Holder:  # what model_term_parts reads of a model
        def __init__(self, extra):
            self.extra = extra

    rng = np.random.default_rng(0)
    holder = Holder({"residual_basis": rng.normal(size=(3, 20)), "residual_variance": np.ones(3)})
    first = model_term_parts(holder, 20, torch.float64, "cpu")
    assert model_term_parts(holder, 20, torch.float64, "cpu") is first
    assert model_term_parts(holder, 20, torch.float32, "cpu") is not first
    holder.extra["residual_basis"] = 2 * holder.extra["residual_basis"]
    again = model_term_parts(holder, 20, torch.float64, "cpu")
    assert again is not first
    np.testing.assert_allclose(again.basis.numpy(), holder.extra["residual_basis"])
    np.testing.assert_allclose(again.binned.numpy(), 4 * first.binned.numpy())


def test_term_parts_continuum_rows_and_errors():
    extra = {"continuum_sigma": np.array([0.03, 0.03])}
    parts = term_parts(extra, 5, torch.float64, "cpu")
    np.testing.assert_allclose(parts.legendre.numpy(), [np.ones(5), np.linspace(-1, 1, 5)])
    np.testing.assert_allclose(np.diag(parts.precision.numpy()), 1 / 0.03**2)
    with pytest.raises(ValueError, match="no linear term"):
        term_parts({}, 5, torch.float64, "cpu")
    with pytest.raises(ValueError, match="continuum_sigma"):
        check_term_arrays({"continuum_sigma": np.array([0.0])}, 5)
    with pytest.raises(ValueError, match="both"):
        check_term_arrays({"residual_basis": np.ones((1, 5))}, 5)


def test_old_inference_verbs_warn_and_agree():
    """``project`` (PCA) and ``denoise`` (CDAE) are ``reconstruct`` now."""
    from specutils_deepclean.models.baselines import PCADenoiser
    from specutils_deepclean.models.cdae import ConvDenoisingAutoencoder

    rng = np.random.default_rng(5)
    wave = np.linspace(5000.0, 5100.0, 64) * u.AA
    flux = 1 + 0.1 * rng.normal(size=(20, 64))
    pca = PCADenoiser.fit(flux, wavelength=wave, medium="air", n_components=3)
    with pytest.warns(AstropyDeprecationWarning, match=r"PCADenoiser.project is now"):
        old = pca.project(flux)
    np.testing.assert_array_equal(old, pca.reconstruct(flux))
    cdae = ConvDenoisingAutoencoder.from_grid(wave, medium="air", latent_dim=4, seed=0)
    with pytest.warns(AstropyDeprecationWarning, match=r"ConvDenoisingAutoencoder.denoise is"):
        old = cdae.denoise(flux)
    np.testing.assert_array_equal(old, cdae.reconstruct(flux))
