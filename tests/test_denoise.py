"""denoise(): the specutils contract on a tiny Denoiser (see test_denoiser_model.py)."""

import copy
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from specutils import Spectrum, SpectrumList

torch = pytest.importorskip("torch")

from test_denoiser_model import N_PIX, NOISE, draw, make_model  # noqa: E402

import specutils_deepclean  # noqa: E402, F401
from specutils_deepclean.manipulation import denoise  # noqa: E402

WAVE = np.linspace(5000.0, 5100.0, N_PIX)
FAST = {"steps": 60, "n_starts": 2, "device": "cpu"}
#: The tiny model's grid is 100 Angstrom long: tests of other things fix the velocity.
REST = {**FAST, "radial_velocity": 0 * u.km / u.s}


@pytest.fixture(scope="module")
def model():
    return make_model()


def observed(model, n=1, seed=1, uncertainty=StdDevUncertainty, scale=3.0, **kwargs):
    _, labels, signal, flux, sigma = draw(model, max(n, 1), seed=seed)
    flux, sigma = flux[:, 0] * scale, sigma[:, 0] * scale
    if n == 1:
        flux, sigma, signal = flux[0], sigma[0], signal[0]
    unc = None
    if uncertainty is StdDevUncertainty:
        unc = StdDevUncertainty(sigma)
    elif uncertainty is VarianceUncertainty:
        unc = VarianceUncertainty(sigma**2)
    elif uncertainty is InverseVariance:
        unc = InverseVariance(sigma**-2.0)
    kwargs.setdefault("meta", {"medium": "air", "observer": "test"})
    spec = Spectrum(
        flux=flux * u.erg / u.s / u.cm**2 / u.AA,
        spectral_axis=WAVE * u.AA,
        uncertainty=unc,
        **kwargs,
    )
    return spec, signal * scale, labels


@pytest.mark.parametrize("uncertainty", [StdDevUncertainty, VarianceUncertainty, InverseVariance])
def test_denoise_contract(model, uncertainty):
    spec, signal, labels = observed(model, uncertainty=uncertainty)
    before = copy.deepcopy((spec.flux, spec.uncertainty.array, spec.meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = denoise(spec, model, **FAST)
    assert type(out) is Spectrum and out.shape == spec.shape
    assert out.flux.unit == spec.flux.unit
    assert np.all(out.spectral_axis == spec.spectral_axis)
    assert type(out.uncertainty) is uncertainty
    inner = ~out.mask
    assert inner.sum() > N_PIX - 4
    # Closer to the truth than the observation.
    err_out = np.mean((out.flux.value[inner] - signal[inner]) ** 2)
    err_in = np.mean((spec.flux.value[inner] - signal[inner]) ** 2)
    assert err_out < err_in / 3
    info = out.meta["deepclean"]
    assert info["map_class"] == "ABC"[labels[0]]
    assert abs(sum(info["class_posterior"].values()) - 1) < 1e-6
    assert len(info["z"]) == 2 and 0 <= info["ood_score"] <= 1
    assert info["model"] == "tiny-denoiser" and info["operation"] == "denoise"
    assert out.meta["observer"] == "test"
    np.testing.assert_array_equal(spec.flux, before[0])
    np.testing.assert_array_equal(spec.uncertainty.array, before[1])
    assert spec.meta == before[2]


def test_masked_pixels_are_filled_and_reported(model):
    mask = np.zeros(N_PIX, dtype=bool)
    mask[20:30] = True
    spec, signal, _ = observed(model, mask=mask)
    out = denoise(spec, model, **FAST)
    filled = out.meta["deepclean"]["filled"]
    assert filled[21:29].all() and not filled[:15].any()
    assert out.mask[20:30].all()  # the input said they were bad
    assert np.all(np.isfinite(out.flux.value[21:29]))
    np.testing.assert_allclose(out.flux.value[21:29], signal[21:29], atol=6 * NOISE * 3)


def test_cosmic_ray_hits_are_rejected_and_reported(model, tmp_path):
    from specutils_deepclean.files import read_result, write_result

    spec, signal, _ = observed(model)
    hit = spec.flux.value.copy()
    hit[[12, 40, 41]] += 40 * NOISE * 3
    spiked = Spectrum(flux=hit * spec.flux.unit, spectral_axis=spec.spectral_axis,
                      uncertainty=spec.uncertainty, meta=spec.meta)
    out = denoise(spiked, model, **REST)
    rejected = out.meta["deepclean"]["rejected"]
    assert rejected.shape == spec.shape and set(np.flatnonzero(rejected)) >= {12, 40, 41}
    assert not out.meta["deepclean"]["filled"].any() and not out.mask[[12, 40, 41]].any()
    kept = denoise(spiked, model, clip=None, **REST)
    assert not kept.meta["deepclean"]["rejected"].any()
    assert np.mean((out.flux.value - signal) ** 2) < np.mean((kept.flux.value - signal) ** 2)
    path = write_result(out, tmp_path / "r.fits")
    np.testing.assert_array_equal(read_result(path).meta["deepclean"]["rejected"], rejected)


def test_scaling_the_input_scales_the_output(model):
    spec, _, _ = observed(model)
    double = Spectrum(
        flux=spec.flux * 2,
        spectral_axis=spec.spectral_axis,
        uncertainty=StdDevUncertainty(spec.uncertainty.array * 2),
        meta=spec.meta,
    )
    a = denoise(spec, model, **FAST)
    b = denoise(double, model, **FAST)
    np.testing.assert_allclose(b.flux.value, 2 * a.flux.value, rtol=1e-5)


def test_batch_equals_loop(model):
    spec, _, _ = observed(model, n=3, seed=4)
    batch = denoise(spec, model, **FAST)
    assert batch.shape == spec.shape
    assert len(batch.meta["deepclean"]["map_class"]) == 3
    for row in range(3):
        one = Spectrum(
            flux=spec.flux[row],
            spectral_axis=spec.spectral_axis,
            uncertainty=StdDevUncertainty(spec.uncertainty.array[row]),
            meta={"medium": "air"},
        )
        single = denoise(one, model, **FAST)
        np.testing.assert_allclose(batch.flux.value[row], single.flux.value, rtol=1e-4, atol=1e-6)


def test_several_exposures_share_one_posterior(model):
    _, _, signal, flux, sigma = draw(model, 1, seed=5, n_exp=2)
    exposures = SpectrumList(
        [
            Spectrum(
                flux=flux[0, e] * u.one,
                spectral_axis=WAVE * u.AA,
                uncertainty=StdDevUncertainty(sigma[0, e]),
                meta={"medium": "air"},
            )
            for e in range(2)
        ]
    )
    out = denoise(exposures, model, **REST)
    assert out.meta["deepclean"]["exposures"] == 2
    one = denoise(exposures[0], model, **REST)
    assert np.median(out.uncertainty.array) < np.median(one.uncertainty.array)


def test_accessor_and_spectrum1d(model):
    from specutils import Spectrum1D

    spec, _, _ = observed(model)
    with pytest.warns(AstropyDeprecationWarning):
        old = Spectrum1D(
            flux=spec.flux,
            spectral_axis=spec.spectral_axis,
            uncertainty=spec.uncertainty,
            meta={"medium": "air"},
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = old.deepclean.denoise(model, **FAST)
    assert type(out) is Spectrum


def test_out_of_distribution_warns(model):
    rng = np.random.default_rng(7)
    galaxy = 1 + 2.0 * np.sin(np.linspace(0, 40, N_PIX)) + NOISE * rng.normal(size=N_PIX)
    spec = Spectrum(
        flux=np.abs(galaxy) * u.one,
        spectral_axis=WAVE * u.AA,
        uncertainty=StdDevUncertainty(np.full(N_PIX, NOISE)),
        meta={"medium": "air"},
    )
    with pytest.warns(AstropyUserWarning, match=r"spectra \[0\] are flagged"):
        out = denoise(spec, model, **FAST)
    info = out.meta["deepclean"]
    assert info["ood_flag"] is True
    assert list(info["class_posterior"].values()) == pytest.approx([1 / 3] * 3)
    # the test model states no model-error term
    assert info["model_error_share"] == 0.0 and info["model_error_scale"] == 1.0


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: np.ones(5), TypeError, "must be a specutils Spectrum or a list"),
        (lambda: [], ValueError, "at least one exposure"),
        (lambda: [np.ones(3)], TypeError, "exposure 0 is a ndarray"),
    ],
)
def test_bad_inputs(model, make, error, match):
    with pytest.raises(error, match=match):
        denoise(make(), model, **FAST)


@pytest.mark.parametrize(
    ("seed", "error"),
    [("1", TypeError), (1.5, TypeError), (None, TypeError), (True, TypeError), (2**70, ValueError)],
)
def test_bad_seed(model, seed, error):
    """A seed torch cannot take is refused by name (it was a RuntimeError from torch)."""
    spec, _, _ = observed(model)
    with pytest.raises(error, match=r"seed must be an integer"):
        denoise(spec, model, seed=seed, **FAST)


def test_exposure_without_data_is_named(model):
    """A list of exposures with one unusable: the error names it."""
    spec, _, _ = observed(model)
    empty, _, _ = observed(model, mask=np.ones(N_PIX, bool))
    with pytest.raises(ValueError, match=r"^exposure 1 of 2: no spectrum has a valid pixel"):
        denoise([spec, empty], model, **FAST)
    with pytest.raises(ValueError, match=r"^no spectrum has a valid pixel"):  # alone: as was
        denoise(empty, model, **FAST)


@pytest.mark.parametrize("bad", [3, b"denoiser-miles", "spectrum"])
def test_bad_model_object(model, bad):
    """Not a model, a name nor a path (e.g. the spectrum given twice through the
    accessor): a TypeError naming it (was an AttributeError on ``.device``)."""
    spec, _, _ = observed(model)
    bad = spec if bad == "spectrum" else bad
    with pytest.raises(TypeError, match=rf"model must be a Denoiser .*, got {type(bad).__name__}"):
        denoise(spec, bad, **FAST)
    with pytest.raises(TypeError, match="model must be a Denoiser"):
        spec.deepclean.denoise(spec)


def test_too_little_coverage(model):
    mask = np.ones(N_PIX, dtype=bool)
    mask[:8] = False
    spec, _, _ = observed(model, mask=mask)
    with pytest.raises(ValueError, match=r"denoise needs at least 20%"):
        denoise(spec, model, **FAST)


def test_wrong_model_type(model):
    spec, _, _ = observed(model)
    from specutils_deepclean.io.models import load_model

    with pytest.raises(TypeError, match="model must be a Denoiser"):
        denoise(spec, load_model("miles-pca"), **FAST)
