"""The model-error term of the denoiser's uncertainty (models/model_error.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.benchmarking.degrade import degrade  # noqa: E402
from specutils_deepclean.models.model_error import check_model_error, model_error  # noqa: E402


def _batch():
    """Two stars, two exposures, five pixels; pixel 4 has no data, pixel 3 one exposure."""
    unit = torch.tensor([[[0.1, 0.2, 0.1, 0.1, 0.1], [0.2, 0.2, 0.4, 0.3, 0.1]]] * 2)
    counted = torch.ones_like(unit)
    counted[:, :, 4] = 0
    counted[:, 1, 3] = 0
    flux = torch.ones_like(unit)
    data = SimpleNamespace(flux=flux, inv_unit=1 / unit, counted=counted)
    return data, unit, counted, flux


def test_model_error_follows_its_formula():
    data, unit, counted, flux = _batch()
    floor = torch.full((5,), 0.05)
    structure = torch.tensor([0.7, 2.0])
    k, c, low = 0.5, 0.2, 0.8
    scale, variance, noise = model_error(
        {"model_error_terms": [k, c, low]}, data, flux, floor, structure
    )
    u2 = unit.square() + floor.square()  # the residual's variance per exposure
    use = counted > 0
    want = (torch.where(use, 1 / u2, 0.0).sum(1) / use.sum(1)).rsqrt()  # harmonic pooling
    np.testing.assert_allclose(noise[:, :4].numpy(), want[:, :4].numpy(), rtol=1e-6)
    assert np.all(np.isnan(noise[:, 4].numpy()))
    np.testing.assert_allclose(noise[0, 3].item(), u2[0, 0, 3].sqrt().item(), rtol=1e-6)
    np.testing.assert_allclose(scale.numpy(), [0.8, 1.0])  # clipped to [L, 1]
    assert torch.all(variance[0] == 0)  # S < 1 + c: nothing added
    expected = k * (2.0 - 1 - c) * want[1, :4].square()
    np.testing.assert_allclose(variance[1, :4].numpy(), expected.numpy(), rtol=1e-6)
    assert variance[1, 4] == 0  # no data, no term


def test_no_term_without_the_array():
    data, _, _, flux = _batch()
    scale, variance, noise = model_error({}, data, flux, None, torch.tensor([3.0, 0.5]))
    assert scale.tolist() == [1.0, 1.0] and torch.all(variance == 0)
    assert torch.all(torch.isfinite(noise[:, :4]))


@pytest.mark.parametrize(
    "bad", [[1.0, 2.0], [-1.0, 0.0, 0.8], [1.0, np.nan, 0.8], [1.0, -0.1, 0.8],
            [1.0, 0.0, 0.0], [1.0, 0.0, 1.5]],
)  # fmt: skip
def test_check_model_error_refuses(bad):
    with pytest.raises(ValueError, match="model_error_terms"):
        check_model_error({"model_error_terms": bad})
    check_model_error({"model_error_terms": [1.0, 0.0, 1.0]})
    check_model_error({})


def test_check_model_error_warns_about_the_old_factor():
    with pytest.warns(UserWarning, match="ignored"):
        check_model_error({"model_error": [3.6, 0.02, 1.5]})


def test_degrade_broadens_tilts_and_normalises():
    wave = np.arange(4000.0, 4400.0, 0.9)
    truth = np.ones((2, wave.size))
    truth[:, 200] = 0.0  # a one-pixel line
    valid = np.ones(truth.shape, bool)
    valid[1, :10] = False
    out = degrade(truth, valid, wave, fwhm=3.4, tilt=0.0, seed=0)
    assert np.all(np.isnan(out[1, :10])) and np.all(np.isfinite(out[0]))
    assert 0 < out[0, 200] < 1 and out[0, 201] < 1  # broadened, shallower
    np.testing.assert_allclose(np.nanmedian(out, axis=1), 1.0)
    tilted = degrade(np.ones((1, wave.size)), np.ones((1, wave.size), bool), wave, seed=3)
    assert np.ptp(tilted) > 0.01
    with pytest.raises(ValueError, match="at least"):
        degrade(truth, valid, wave, fwhm=2.0)
    with pytest.raises(ValueError, match="uniformly"):
        degrade(truth, valid, np.geomspace(4000, 4400, wave.size))


def test_map_estimate_adds_the_terms():
    from test_denoiser_model import FAST, N_PIX, draw, make_model

    model = make_model()
    _, _, _, flux, sigma = draw(model, 3, seed=5)
    flux = flux[:, 0] + 0.3 * np.sin(np.arange(N_PIX) / 3.0)  # structure G cannot draw
    kwargs = {"generator": torch.Generator().manual_seed(0), **FAST}
    plain = model.map_estimate(flux, sigma[:, 0], **kwargs)
    assert np.all(plain.model_error_scale == 1) and np.all(plain.model_sigma == 0)
    assert np.all(plain.fit_structure > 1)
    model.extra["model_error_terms"] = np.array([1.0, 0.0, 0.5])
    kwargs["generator"] = torch.Generator().manual_seed(0)
    wider = model.map_estimate(flux, sigma[:, 0], **kwargs)
    np.testing.assert_array_equal(wider.flux, plain.flux)
    np.testing.assert_array_equal(wider.latent_sigma, plain.latent_sigma)
    assert np.all(wider.model_sigma > 0)
    np.testing.assert_allclose(
        wider.model_sigma**2,
        (wider.fit_structure - 1)[:, None] * wider.noise_sigma**2,
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        wider.flux_sigma**2, plain.flux_sigma**2 + wider.model_sigma**2, rtol=1e-4
    )


def test_flux_sigma_mixes_by_the_laplace_evidence():
    """The class posterior's calibration (here very flat) leaves the flux uncertainty."""
    from test_denoiser_model import FAST, draw, make_model

    model = make_model()
    _, _, _, flux, sigma = draw(model, 3, seed=2)
    kwargs = {"generator": torch.Generator().manual_seed(0), **FAST}
    sharp = model.map_estimate(flux[:, 0], sigma[:, 0], **kwargs)
    model.extra["class_calibration"] = np.array([50.0, 0.0, 0.5])
    kwargs["generator"] = torch.Generator().manual_seed(0)
    flat = model.map_estimate(flux[:, 0], sigma[:, 0], **kwargs)
    assert np.max(flat.class_posterior) < np.max(sharp.class_posterior)
    np.testing.assert_allclose(flat.flux_sigma, sharp.flux_sigma, rtol=1e-6)
