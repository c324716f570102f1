"""Every class of the model registry through save -> load -> infer.

A class added to ``specutils_deepclean.models.MODEL_REGISTRY`` needs a tiny instance
here (``BUILDERS``) and its inference verb (``INFER``); the first test fails until it
has both.  The loaded model must answer bit for bit as the one saved.
"""

import astropy.units as u
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.io.models import load_model, save_model  # noqa: E402
from specutils_deepclean.models import MODEL_REGISTRY, model_class  # noqa: E402

N_PIX = 64
WAVE = np.linspace(5000.0, 5100.0, N_PIX) * u.AA


def _pca():
    rng = np.random.default_rng(0)
    flux = 1 + 0.1 * rng.normal(size=(20, N_PIX))
    return model_class("PCADenoiser").fit(flux, WAVE, medium="air", n_components=3)


def _karaoke():
    return model_class("KaraokeVAE").from_grid(
        WAVE, medium="air", latent_dim=4, bottleneck_length=8, seed=0
    )


def _cdae():
    return model_class("ConvDenoisingAutoencoder").from_grid(
        WAVE, medium="air", latent_dim=4, seed=0
    )


def _denoiser():
    from test_denoiser_model import make_model

    return make_model()


BUILDERS = {
    "PCADenoiser": _pca,
    "KaraokeVAE": _karaoke,
    "ConvDenoisingAutoencoder": _cdae,
    "Denoiser": _denoiser,
}


def _observed():
    rng = np.random.default_rng(1)
    flux = 1 + 0.05 * np.sin(np.linspace(0, 9, N_PIX)) + 0.02 * rng.normal(size=(3, N_PIX))
    missing = np.zeros(flux.shape, bool)
    missing[1, 30:40] = True
    return flux, missing


def _reconstruct(model, flux, missing):
    return {"flux": model.reconstruct(flux, missing)}


def _map(model, flux, missing):
    result = model.map_estimate(
        flux, np.full(flux.shape, 0.02), missing, generator=torch.Generator().manual_seed(0)
    )
    return {"flux": result.flux, "flux_sigma": result.flux_sigma, "z": result.z}


#: The inference verb of each family: ``reconstruct`` for the point-estimate models,
#: ``map_estimate`` for the deep Bayesian denoiser.
INFER = {
    "PCADenoiser": _reconstruct,
    "KaraokeVAE": _reconstruct,
    "ConvDenoisingAutoencoder": _reconstruct,
    "Denoiser": _map,
}


def test_every_registered_class_has_a_builder_and_a_verb():
    assert set(BUILDERS) == set(MODEL_REGISTRY) == set(INFER)


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_save_load_infer(name, tmp_path):
    model = BUILDERS[name]()
    assert type(model) is model_class(name)
    path = save_model(model, tmp_path / f"{name}.asdf")
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config and loaded.n_pix == model.n_pix
    flux, missing = _observed()
    before, after = INFER[name](model, flux, missing), INFER[name](loaded, flux, missing)
    for key, value in before.items():
        assert np.all(np.isfinite(value)), key
        np.testing.assert_array_equal(after[key], value, err_msg=key)
