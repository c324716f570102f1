"""The level of a spectrum with a wide gap (models/level.py) and its use in denoise_arrays."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.inference import denoise_arrays  # noqa: E402
from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.models import level  # noqa: E402
from specutils_deepclean.models.observations import rest_coadd  # noqa: E402
from specutils_deepclean.simulate import gap_slice  # noqa: E402
from specutils_deepclean.spectra import median_normalise  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_model("denoiser-miles")


def _stars(model, names=("M", "K", "A")):
    """One class mode per name, drawn by the model's generator (whole-grid median ~1)."""
    with torch.no_grad():
        z = model.prior.starts(1)[[model.prior.class_names.index(n) for n in names], 0]
        return model.generator.generate(z).double().numpy()


def _gappy(signal, place, snr=30.0, seed=0):
    n_pix = signal.shape[-1]
    rng = np.random.default_rng(seed)
    sigma = np.full_like(signal, 1 / snr)
    flux = signal + sigma * rng.normal(size=signal.shape)
    missing = np.zeros(signal.shape, bool)
    missing[:, gap_slice(int(0.4 * n_pix), place, n_pix)] = True
    return flux, sigma, missing


@pytest.mark.parametrize("place", ["blue", "red"])
def test_template_level_recovers_the_whole_grid_level(shipped, place):
    signal = _stars(shipped)
    flux, sigma, missing = _gappy(signal, place)
    normalised, observed = median_normalise(flux, missing)
    _, whole = median_normalise(signal)
    truth = whole / observed  # what divides `normalised` back to the whole-grid level
    assert np.max(np.abs(truth - 1)) > 0.05  # the observed median misses it
    found = level.template_level(shipped, np.where(missing, 0, normalised), np.where(missing, 0, 1.0))
    np.testing.assert_allclose(found, truth, rtol=0.03)


def test_relevel_leaves_spectra_with_few_missing_pixels(shipped):
    signal = _stars(shipped)
    flux, sigma, missing = _gappy(signal, "red")
    missing[0] = False  # complete
    missing[1] = False
    missing[1, :100] = True  # 2 % missing
    factor = level.relevel(shipped, flux, sigma, missing)
    assert factor.shape == (3,)
    assert factor[0] == 1 and factor[1] == 1 and factor[2] != 1
    # exposures (B, E, P): one factor per exposure
    both = level.relevel(shipped, np.stack([flux, flux], 1), None, np.stack([missing] * 2, 1))
    assert both.shape == (3, 2)
    np.testing.assert_allclose(both[:, 0], both[:, 1])


def test_template_level_refuses_bad_input(shipped):
    with pytest.raises(ValueError, match="must both be"):
        level.template_level(shipped, np.ones((2, 10)), np.ones((2, 10)))
    n_pix = shipped.n_pix
    with pytest.raises(ValueError, match="observed pixel"):
        level.template_level(shipped, np.ones((1, n_pix)), np.zeros((1, n_pix)))


def test_denoise_arrays_fills_a_wide_red_gap_at_the_right_level(shipped):
    signal = _stars(shipped, ("M",))
    flux, sigma, missing = _gappy(signal * 3.0, "red", snr=20.0)
    out = denoise_arrays(shipped, flux, sigma * 3.0, missing, steps=10, velocity=0.0)
    gap = missing[0]
    _, whole = median_normalise(signal * 3.0)
    np.testing.assert_allclose(out.scale, whole, rtol=0.03)
    # the fill within a few per cent of the truth, not run away
    error = np.sqrt(np.mean((out.flux[0, gap] - 3.0 * signal[0, gap]) ** 2)) / 3.0
    assert error < 0.05
    assert np.all(np.isfinite(out.flux_sigma[0, gap])) and np.all(out.flux_sigma[0, gap] > 0)


def test_template_starts_pick_each_classes_nearest_training_star(shipped):
    """Training stars' own spectra with 40 % of the grid missing: every start is a
    point of its class, and that of the star's class draws a spectrum close to the
    star's over the observed pixels (closer than most of the class's points)."""
    points = np.asarray(shipped.extra["kde_points"])
    ends = np.cumsum(shipped.extra["kde_counts"])
    begins = np.concatenate([[0], ends[:-1]])
    chosen = np.array([3, ends[2] + 5, ends[5] - 2])  # stars of three classes
    classes = np.searchsorted(ends, chosen, side="right")

    def draw(z):
        with torch.no_grad():
            z = torch.as_tensor(z, dtype=shipped._dtype)
            return shipped.generator.generate(z).double().numpy()

    signal = draw(points[chosen])
    _, _, missing = _gappy(signal, "blue")
    found = level.template_starts(shipped, np.where(missing, 0, signal), (~missing) * 1.0)
    assert found.shape == (3, shipped.n_classes, shipped.latent_dim)
    for c in range(shipped.n_classes):
        ours = points[begins[c] : ends[c]]
        assert all(np.any(np.all(ours == z, axis=1)) for z in found[:, c])
    observed = ~missing[0]
    near = draw(found[np.arange(3), classes])
    for i, c in enumerate(classes):
        rms = np.sqrt(np.mean((near[i, observed] - signal[i, observed]) ** 2))
        every = draw(points[begins[c] : ends[c]])
        spread = np.sqrt(np.mean((every[:, observed] - signal[i, observed]) ** 2, axis=1))
        assert rms < 0.5 * np.median(spread)


def test_gap_starts_only_for_wide_gaps(shipped):
    signal = _stars(shipped)
    flux, sigma, missing = _gappy(signal, "blue")
    missing[0] = False  # complete
    missing[1] = False
    missing[1, :100] = True  # 2 % missing: below MIN_MISSING
    data = shipped._prepare(flux, sigma, missing, None)
    starts, wide = level.gap_starts(shipped, *rest_coadd(data))
    k = shipped.n_classes
    assert starts.shape == (3 * k, shipped.latent_dim)
    np.testing.assert_array_equal(wide.numpy(), np.repeat([False, False, True], k))
    assert torch.all(starts[~wide] == 0) and torch.all(torch.isfinite(starts[wide]))
