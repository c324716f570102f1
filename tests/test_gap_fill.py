"""The fill of a wide gap as the class posterior's mean, held near the training
library (models/gap_fill.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.models import gap_fill, level, ood  # noqa: E402
from specutils_deepclean.models.observations import rest_weight  # noqa: E402
from specutils_deepclean.simulate import gap_slice  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_model("denoiser-miles")


@pytest.fixture
def mixture_off():
    gap_fill.CLASS_MIXTURE = False
    yield
    gap_fill.CLASS_MIXTURE = True


@pytest.fixture
def pull_off():
    shipped = gap_fill.LIBRARY_PULL
    gap_fill.LIBRARY_PULL = 0.0
    yield
    gap_fill.LIBRARY_PULL = shipped


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


def test_a_wide_gap_is_filled_with_the_posterior_mean(shipped, pull_off):
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


def test_the_library_pull_moves_only_a_wide_gaps_fill_within_its_bound(shipped):
    flux, sigma, missing = _blend(shipped)
    missing[1] = False  # complete: no wide gap
    pulled = shipped.map_estimate(flux, sigma, missing, clip=None, steps=10)
    saved = gap_fill.LIBRARY_PULL
    gap_fill.LIBRARY_PULL = 0.0
    try:
        before = shipped.map_estimate(flux, sigma, missing, clip=None, steps=10)
    finally:
        gap_fill.LIBRARY_PULL = saved
    gap = missing[0]
    np.testing.assert_array_equal(pulled.flux[1], before.flux[1])
    np.testing.assert_array_equal(pulled.flux[0, ~gap], before.flux[0, ~gap])
    np.testing.assert_array_equal(pulled.flux_sigma, before.flux_sigma)
    step = np.abs(pulled.flux[0, gap] - before.flux[0, gap])
    assert step.max() > 0
    # the bound is the sigma before the factor on pixels without data (float32
    # outputs: a rounding's leeway)
    unscaled = before.flux_sigma[0, gap] / np.asarray(shipped.extra["fill_sigma_scale"])[gap]
    assert np.all(step <= gap_fill.LIBRARY_STEP * unscaled + 1e-5)


def test_the_library_pull_goes_toward_the_training_star_that_fits(shipped, monkeypatch):
    spectra = level.library(shipped).numpy()
    star = 2.0 * spectra[7]  # a training star's spectrum, at another level
    missing = np.zeros(star.shape, bool)
    missing[gap_slice(int(0.4 * shipped.n_pix), "red", shipped.n_pix)] = True
    sigma = np.full_like(star, 1e-3)
    data = shipped._prepare(star[None], sigma[None], missing[None], None)
    rest, weight = rest_weight(data)
    np.testing.assert_array_equal(weight[0, missing].numpy(), 0.0)
    assert torch.all(weight[0, ~missing] > 0)
    scale = float(rest[0, 0] / star[0])  # the batch's normalisation
    target = torch.as_tensor(star * scale, dtype=data.flux.dtype)[None]
    offset = 0.1 * torch.ones_like(target)
    gap = gap_fill.GapMixture(
        rows=torch.tensor([0]), weight=torch.ones(1, shipped.n_classes), flux=target + offset,
        terms_var=torch.zeros_like(target), pairs=torch.tensor([0]), centre=target,
    )  # fmt: skip
    filled = torch.as_tensor(missing)[None]
    monkeypatch.setattr(gap_fill, "LIBRARY_REACH", 0.0)
    wide = gap_fill.library_pull(shipped, data, gap, torch.ones_like(target), filled)
    expected = torch.where(filled, target + (1 - gap_fill.LIBRARY_PULL) * offset, gap.flux)
    torch.testing.assert_close(wide, expected, rtol=0, atol=2e-3)
    # with a reach R, the pull grows from the gap's edge over R pixels
    monkeypatch.setattr(gap_fill, "LIBRARY_REACH", 300.0)
    ramped = gap_fill.library_pull(shipped, data, gap, torch.ones_like(target), filled)
    edge = int(np.nonzero(missing)[0][0])  # the red gap's first pixel, 1 from the data
    distance = torch.clamp(torch.arange(star.size) - (edge - 1), 0, 300) / 300
    pull = gap_fill.LIBRARY_PULL * distance
    torch.testing.assert_close(ramped, gap.flux - pull * offset, rtol=0, atol=2e-3)
    # a move is never more than LIBRARY_STEP sigma
    monkeypatch.setattr(gap_fill, "LIBRARY_REACH", 0.0)
    narrow = gap_fill.library_pull(shipped, data, gap, 0.01 * torch.ones_like(target), filled)
    step = 0.01 * gap_fill.LIBRARY_STEP
    torch.testing.assert_close(narrow, torch.where(filled, gap.flux - step, gap.flux))


def test_distance_from_the_observed_pixels():
    filled = torch.tensor([[True, True, False, True, True, True, False], [False] * 7])
    expected = torch.tensor([[2, 1, 0, 1, 2, 1, 0], [0] * 7])
    torch.testing.assert_close(gap_fill._distance(filled), expected)
    # a row without data: the grid's length
    nothing = torch.ones(1, 4, dtype=bool)
    torch.testing.assert_close(gap_fill._distance(nothing), torch.full((1, 4), 4))


def test_a_negative_fill_is_set_to_zero_and_its_variance_widened(monkeypatch):
    flux = torch.tensor([[-0.3, 0.0, 0.05, -1.0], [-0.2, 0.4, -0.1, 1.0]])
    var = torch.full_like(flux, 0.03**2)
    filled = torch.tensor([[True, True, True, False], [False, False, False, False]])
    out, out_var = gap_fill.nonnegative(flux, var, filled)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.05, -1.0], [-0.2, 0.4, -0.1, 1.0]]))
    torch.testing.assert_close(out_var[0, 0], var[0, 0] + 0.3**2)
    # pixels with data, and every pixel of a complete spectrum, bit for bit
    assert torch.equal(out_var[0, 1:], var[0, 1:]) and torch.equal(out[1], flux[1])
    assert torch.equal(out_var[1], var[1])
    monkeypatch.setattr(gap_fill, "NONNEGATIVE", False)
    off = gap_fill.nonnegative(flux, var, filled)
    assert off[0] is flux and off[1] is var


def test_the_floor_leaves_complete_spectra_and_observed_pixels_bit_for_bit(shipped):
    flux, sigma, missing = _blend(shipped)
    missing[1] = False  # complete
    on = shipped.map_estimate(flux, sigma, missing, steps=5)
    gap_fill.NONNEGATIVE = False
    try:
        off = shipped.map_estimate(flux, sigma, missing, steps=5)
    finally:
        gap_fill.NONNEGATIVE = True
    np.testing.assert_array_equal(on.flux[1], off.flux[1])
    np.testing.assert_array_equal(on.flux_sigma[1], off.flux_sigma[1])
    gap = missing[0]
    np.testing.assert_array_equal(on.flux[0, ~gap], off.flux[0, ~gap])
    np.testing.assert_array_equal(on.flux_sigma[0, ~gap], off.flux_sigma[0, ~gap])
    assert np.all(on.flux[0, gap] >= 0)
    np.testing.assert_array_equal(on.flux[0, gap], np.maximum(off.flux[0, gap], 0))
