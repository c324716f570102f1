"""The model-error term of the denoiser's uncertainty (models/model_error.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.benchmarking.degrade import degrade  # noqa: E402
from specutils_deepclean.models.model_error import (  # noqa: E402
    check_model_error,
    model_error_factor,
)


def test_model_error_factor_follows_its_formula():
    structure = torch.tensor([0.8, 1.5, 4.0, 4.0], dtype=torch.float64)
    snr = torch.tensor([10.0, 10.0, 10.0, 50.0], dtype=torch.float64)
    k, c, p = 2.0, 1e-3, 1.5
    got = model_error_factor({"model_error": [k, c, p]}, structure, snr).numpy()
    want = np.sqrt(1 + k * np.clip(structure.numpy() - 1 - c * snr.numpy() ** p, 0, None))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == 1 and 1 < got[1] < got[2] and got[3] < got[2]  # the limit grows with S/N


def test_no_term_without_the_array():
    out = model_error_factor({}, torch.tensor([3.0]), torch.tensor([10.0]))
    assert out.tolist() == [1.0]


@pytest.mark.parametrize("bad", [[1.0, 2.0], [-1.0, 0.0, 1.5], [1.0, np.nan, 1.5]])
def test_check_model_error_refuses(bad):
    with pytest.raises(ValueError, match="model_error"):
        check_model_error({"model_error": bad})
    check_model_error({"model_error": [1.0, 0.0, 1.5]})
    check_model_error({})


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


def test_map_estimate_widens_flux_sigma_by_the_factor():
    from test_denoiser_model import FAST, N_PIX, draw, make_model

    model = make_model()
    _, _, _, flux, sigma = draw(model, 3, seed=5)
    flux = flux[:, 0] + 0.3 * np.sin(np.arange(N_PIX) / 3.0)  # structure G cannot draw
    plain = model.map_estimate(flux, sigma[:, 0], generator=torch.Generator().manual_seed(0), **FAST)
    assert np.all(plain.model_error_factor == 1)
    assert np.all(plain.fit_structure > 1)
    model.extra["model_error"] = np.array([1.0, 0.0, 1.5])
    wider = model.map_estimate(flux, sigma[:, 0], generator=torch.Generator().manual_seed(0), **FAST)
    np.testing.assert_array_equal(wider.flux, plain.flux)
    np.testing.assert_array_equal(wider.latent_sigma, plain.latent_sigma)
    assert np.all(wider.model_error_factor > 1)
    np.testing.assert_allclose(
        wider.flux_sigma, plain.flux_sigma * wider.model_error_factor[:, None], rtol=1e-5
    )
