"""The factor on the uncertainty of pixels without data (models/fill_sigma.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.models.fill_sigma import (  # noqa: E402
    check_fill_sigma,
    fill_sigma,
    obs_sigma,
)
from specutils_deepclean.simulate import gap_slice  # noqa: E402


@pytest.mark.parametrize(
    "function, key, other, scaled_where_filled",
    [
        (fill_sigma, "fill_sigma_scale", "obs_sigma_scale", True),
        (obs_sigma, "obs_sigma_scale", "fill_sigma_scale", False),
    ],
    ids=["fill_sigma", "obs_sigma"],
)
def test_factor_scales_its_pixels_only(function, key, other, scaled_where_filled):
    """``fill_sigma`` scales the pixels without data, ``obs_sigma`` those with; each
    returns the variance itself without its own key (the other one's is ignored)."""
    rng = np.random.default_rng(3 if scaled_where_filled else 5)
    var = torch.as_tensor(rng.uniform(0.1, 2.0, (4, 50)))
    filled = torch.as_tensor(rng.random((4, 50)) < 0.3)
    scale = rng.uniform(0.5, 1.5, 50)
    out = function({key: scale}, var, filled)
    hit = filled if scaled_where_filled else ~filled
    assert torch.equal(out[~hit], var[~hit])
    expected = (var * torch.as_tensor(scale) ** 2)[hit]
    torch.testing.assert_close(out[hit], expected, rtol=1e-12, atol=0)
    assert function({}, var, filled) is var
    assert function({other: scale}, var, filled) is var


@pytest.mark.parametrize("key", ["fill_sigma_scale", "obs_sigma_scale"])
@pytest.mark.parametrize(
    "bad",
    [
        np.ones(49),
        np.ones((2, 50)),
        np.r_[np.ones(49), np.nan],
        np.r_[np.ones(49), 0.0],
        -np.ones(50),
    ],
)
def test_check_fill_sigma_refuses(key, bad):
    with pytest.raises(ValueError, match=rf"extra\['{key}'\] must hold 50 finite values > 0"):
        check_fill_sigma({key: bad}, 50)
    check_fill_sigma({key: np.ones(50)}, 50)
    check_fill_sigma({}, 50)


@pytest.fixture(scope="module")
def pair():
    """The shipped model and the same without its factor."""
    plain = load_model("denoiser-miles")
    factor = plain.extra.pop("fill_sigma_scale")
    return load_model("denoiser-miles"), plain, factor


def _stars(model, seed=5):
    """Two training-like stars (KDE modes of classes A and K) at S/N 20."""
    names = model.prior.class_names
    with torch.no_grad():
        modes = model.prior.starts(1)[:, 0]
        signal = model.generator.generate(modes).double().numpy()
    signal = signal[[names.index("A"), names.index("K")]]
    sigma = np.full_like(signal, 0.05)
    return signal + sigma * np.random.default_rng(seed).normal(size=signal.shape), sigma


def test_shipped_factor_shrinks_the_grid_ends_more():
    scale = np.asarray(load_model("denoiser-miles").extra["fill_sigma_scale"])
    middle = scale[len(scale) // 3 : 2 * len(scale) // 3]
    assert scale[:100].mean() < middle.mean() and scale[-100:].mean() < middle.mean()


def test_shipped_obs_factor_shrinks_the_grid_ends_and_widens_the_middle():
    scale = np.asarray(load_model("denoiser-miles").extra["obs_sigma_scale"])
    middle = scale[len(scale) // 3 : 2 * len(scale) // 3]
    assert scale[:100].mean() < 0.9 < 1.0 < middle.mean()
    assert scale[-100:].mean() < 0.9


def test_no_missing_pixel_keeps_its_sigma_bit_for_bit(pair):
    shipped, plain, _ = pair
    flux, sigma = _stars(shipped)
    missing = np.zeros(flux.shape, bool)
    a = shipped.map_estimate(flux, sigma, missing, steps=5)
    b = plain.map_estimate(flux, sigma, missing, steps=5)
    assert not a.filled.any()
    np.testing.assert_array_equal(a.flux_sigma, b.flux_sigma)
    np.testing.assert_array_equal(a.flux, b.flux)


@pytest.mark.parametrize("width, place", [(100, "blue"), (0.4, "red"), (400, "middle")])
def test_a_gap_s_sigma_is_scaled_and_its_fill_kept(pair, width, place):
    shipped, plain, factor = pair
    flux, sigma = _stars(shipped)
    n_pix = shipped.n_pix
    pixels = int(round(width * n_pix)) if width < 1 else width
    missing = np.zeros(flux.shape, bool)
    missing[:, gap_slice(pixels, place, n_pix)] = True
    a = shipped.map_estimate(flux, sigma, missing, steps=5)
    b = plain.map_estimate(flux, sigma, missing, steps=5)
    np.testing.assert_array_equal(a.filled, missing)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.flux_sigma[~missing], b.flux_sigma[~missing])
    expected = (b.flux_sigma * factor[None])[missing]
    np.testing.assert_allclose(a.flux_sigma[missing], expected, rtol=1e-5)
    assert not np.allclose(a.flux_sigma[missing], b.flux_sigma[missing], rtol=1e-3)


def test_a_flagged_star_s_filled_pixels_get_the_ood_factor():
    rng = np.random.default_rng(4)
    var = torch.as_tensor(rng.uniform(0.1, 2.0, (3, 20)))
    filled = torch.as_tensor(rng.random((3, 20)) < 0.5)
    flag = torch.tensor([True, False, True])
    extra = {"fill_sigma_scale": np.full(20, 0.5), "fill_sigma_ood_scale": np.array([4.0])}
    out = fill_sigma(extra, var, filled, flag)
    factor = torch.where(filled & flag[:, None], 4.0**2, 1.0) * torch.where(filled, 0.25, 1.0)
    torch.testing.assert_close(out, var * factor, rtol=1e-12, atol=0)
    assert torch.equal(out[~filled], var[~filled])
    # without a flag, or without the factor, only fill_sigma_scale
    torch.testing.assert_close(fill_sigma(extra, var, filled), var * torch.where(filled, 0.25, 1.0))
    assert fill_sigma({}, var, filled, flag) is var


@pytest.mark.parametrize("bad", [np.ones(2), np.nan, 0.0, -1.0])
def test_check_fill_sigma_refuses_a_bad_ood_factor(bad):
    with pytest.raises(ValueError, match="fill_sigma_ood_scale"):
        check_fill_sigma({"fill_sigma_ood_scale": bad}, 50)
    check_fill_sigma({"fill_sigma_ood_scale": np.array([3.0])}, 50)
