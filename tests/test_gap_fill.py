"""The fill of a wide gap as the class posterior's mean (models/gap_fill.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.models import gap_fill, ood  # noqa: E402
from specutils_deepclean.simulate import gap_slice  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_model("denoiser-miles")


@pytest.fixture
def mixture_off():
    gap_fill.CLASS_MIXTURE = False
    yield
    gap_fill.CLASS_MIXTURE = True


def _blend(model, snr=30.0, seed=1):
    """Half an A and half a B class mode, and half a G and half a K one, with the
    blue 40 % of the grid missing: stars whose red part two classes fit."""
    names = model.prior.class_names
    with torch.no_grad():
        modes = model.prior.starts(1)[:, 0]
        drawn = model.generator.generate(modes).double().numpy()
    signal = np.stack(
        [
            0.5 * (drawn[names.index("A")] + drawn[names.index("B")]),
            0.5 * (drawn[names.index("G")] + drawn[names.index("K")]),
        ]
    )
    rng = np.random.default_rng(seed)
    sigma = np.full_like(signal, 1 / snr)
    flux = signal + sigma * rng.normal(size=signal.shape)
    missing = np.zeros(signal.shape, bool)
    missing[:, gap_slice(int(0.4 * model.n_pix), "blue", model.n_pix)] = True
    return flux, sigma, missing


def _weights(model, result):
    """The fill's class weights, computed from the result's own numbers."""
    weight = ood.class_posterior(
        model.extra,
        torch.as_tensor(result.class_log_evidence),
        torch.as_tensor(result.snr),
        torch.as_tensor(result.ood_score),
        floor=False,
    ).numpy()
    weight = np.where(weight >= gap_fill.MIN_WEIGHT, weight, 0.0)
    return weight / weight.sum(1, keepdims=True)


def test_a_wide_gap_is_filled_with_the_posterior_mean(shipped):
    flux, sigma, missing = _blend(shipped)
    result = shipped.map_estimate(flux, sigma, missing, clip=None, steps=10)
    weight = _weights(shipped, result)
    assert np.sum(weight > 0) > len(flux)  # some star mixes classes
    data = shipped._prepare(flux, sigma, missing, None)
    with torch.no_grad():
        expected = np.zeros_like(flux)
        spread = np.zeros_like(flux)
        total = []
        for c in range(shipped.n_classes):
            z = torch.as_tensor(result.class_z[:, c], dtype=shipped._dtype)
            signal = shipped.generator.generate(z)
            terms, _ = shipped._linear_terms(data, signal)
            total.append((signal + terms).double().numpy())
            expected += weight[:, c, None] * total[-1]
        for c in range(shipped.n_classes):
            spread += weight[:, c, None] * (total[c] - expected) ** 2
    np.testing.assert_allclose(result.flux, expected, rtol=1e-4, atol=1e-5)
    gap = missing[0]
    # the uncertainty over the gap includes the classes' disagreement
    assert np.all(result.flux_sigma[:, gap] ** 2 >= 0.999 * spread[:, gap])
    # the MAP class's spectrum differs where the classes disagree
    mixed = np.nonzero(np.sum(weight > 0, 1) > 1)[0]
    best = result.map_class[mixed]
    assert not np.allclose(result.flux[mixed], np.stack(total, 1)[mixed, best], atol=1e-3)


def test_spectra_without_a_wide_gap_keep_the_map_class(shipped, mixture_off):
    flux, sigma, missing = _blend(shipped)
    missing[0] = False  # complete
    missing[1] = False
    missing[1, :100] = True  # 2 % missing: below MIN_MISSING
    before = shipped.map_estimate(flux, sigma, missing, steps=5)
    gap_fill.CLASS_MIXTURE = True
    after = shipped.map_estimate(flux, sigma, missing, steps=5)
    np.testing.assert_array_equal(after.flux, before.flux)
    np.testing.assert_array_equal(after.flux_sigma, before.flux_sigma)


def test_class_posterior_floor(shipped):
    rng = np.random.default_rng(3)
    evidence = torch.as_tensor(rng.normal(scale=20.0, size=(4, shipped.n_classes)))
    snr = torch.as_tensor([2.0, 5.0, 10.0, 50.0])
    score = torch.as_tensor([0.5, 0.2, 0.05, 0.9])
    with_floor = ood.class_posterior(shipped.extra, evidence, snr, score)
    without = ood.class_posterior(shipped.extra, evidence, snr, score, floor=False)
    epsilon = float(np.asarray(shipped.extra["class_calibration"])[2])
    assert epsilon > 0
    np.testing.assert_allclose(without.sum(-1), 1.0)
    np.testing.assert_allclose(
        with_floor, (1 - epsilon) * without + epsilon / shipped.n_classes, rtol=1e-12
    )
