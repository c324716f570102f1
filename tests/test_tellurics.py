"""Telluric bands: line/continuum split, the absorbing region, the divide-mode estimate."""

import numpy as np
import pytest

from specutils_deepclean.tellurics import estimate_transmission, split_transmission, telluric_region

WAVE = np.linspace(6000.0, 7000.0, 1001)


def band(centre, depth, width=2.0):
    return 1 - depth * np.exp(-0.5 * ((WAVE - centre) / width) ** 2)


def test_split_separates_smooth_continuum_from_lines():
    continuum = 0.95 + 0.03 * (WAVE - 6000.0) / 1000.0  # a slow slope, like Rayleigh
    lines = band(6300.0, 0.4) * band(6870.0, 0.7)
    got_continuum, got_lines = split_transmission(continuum * lines, WAVE)
    np.testing.assert_allclose(got_continuum * got_lines, continuum * lines, rtol=1e-12)
    far = (np.abs(WAVE - 6300) > 30) & (np.abs(WAVE - 6870) > 30)
    np.testing.assert_allclose(got_lines[far], 1.0, atol=2e-3)
    assert got_lines.min() == pytest.approx(0.3, abs=0.02)
    assert np.all(got_lines <= 1.0)


def test_split_works_on_batches():
    t = np.stack([band(6300.0, 0.4), band(6500.0, 0.2)])
    _, lines = split_transmission(t, WAVE)
    np.testing.assert_allclose(lines[1], split_transmission(t[1], WAVE)[1])


def test_split_rejects_mismatched_grid():
    with pytest.raises(ValueError, match="transmission has 10 pixels, the grid 1001"):
        split_transmission(np.ones(10), WAVE)


def test_region_threshold_and_dilation():
    lines = np.ones(20)
    lines[[5, 12]] = 0.99
    assert np.flatnonzero(telluric_region(lines, dilate=0)).tolist() == [5, 12]
    assert np.flatnonzero(telluric_region(lines, threshold=0.98)).tolist() == []
    assert np.flatnonzero(telluric_region(lines, dilate=1)).tolist() == [4, 5, 6, 11, 12, 13]
    with pytest.raises(ValueError, match="must be 1-D"):
        telluric_region(np.ones((2, 5)))


def test_estimate_is_one_outside_and_ratio_inside():
    rng = np.random.default_rng(0)
    star = 1 + 0.1 * rng.normal(size=(3, WAVE.size))
    truth_t = band(6500.0, 0.5)
    region = telluric_region(split_transmission(truth_t, WAVE)[1])
    t, bad = estimate_transmission(star * truth_t, star, region, smooth_pixels=0)
    assert np.all(t[:, ~region] == 1.0)
    np.testing.assert_allclose(
        t[:, region], np.broadcast_to(truth_t[region], (3, region.sum())), rtol=1e-12
    )
    assert not bad.any()


def test_estimate_clips_smooths_and_flags():
    obs = np.array([[1.0, 1.2, 0.01, np.nan, 0.5, 1.0]])
    rec = np.ones((1, 6))
    region = np.array([False, True, True, True, True, False])
    t, bad = estimate_transmission(obs, rec, region, smooth_pixels=0)
    assert t[0, 1] == 1.0  # clipped to at most 1
    assert t[0, 2] == 0.05 and bad[0, 2]  # below the floor
    assert np.isnan(t[0, 3]) and bad[0, 3]  # no data
    assert t[0, 4] == 0.5 and not bad[0, 4]
    smooth, _ = estimate_transmission(obs, rec, region, smooth_pixels=1.0)
    assert np.isfinite(smooth[0, 3])  # filled from its neighbours
    assert np.all(smooth[0, [0, 5]] == 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"floor": 0.0}, "floor must be in"), ({"floor": 1.0}, "floor must be in")],
)
def test_estimate_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_transmission(np.ones((1, 3)), np.ones((1, 3)), np.ones(3, bool), **kwargs)


def test_estimate_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        estimate_transmission(np.ones((1, 3)), np.ones((1, 4)), np.ones(3, bool))


def test_molecule_labels_o2_and_water_bands():
    from specutils_deepclean.telluric_template import MOLECULES, molecule_labels

    wave = np.arange(6850.0, 7300.0, 0.9)
    labels = molecule_labels(wave, "air")
    assert labels.shape == wave.shape
    o2_b = (wave > 6868) & (wave < 6880)  # the O2 B band head
    water = (wave > 7180) & (wave < 7280)
    assert np.all(labels[o2_b] == MOLECULES.index("O2"))
    assert np.mean(labels[water] == MOLECULES.index("H2O")) > 0.9
    assert molecule_labels(wave, "air") is labels  # cached per grid


def test_column_bounds_follow_the_column_and_hold_quiet_bands():
    """Two bands of one molecule: the column is fitted over both (a stellar line the
    reconstruction misses rejected), the bounds bracket the truth; a spectrum whose
    absorption is far below its noise keeps T = 1 in the weak band."""
    from specutils_deepclean.tellurics import column_bounds

    wave = np.arange(5000.0, 5400.0, 1.0)
    ref = 1 - 0.5 * np.exp(-0.5 * ((wave - 5100) / 3) ** 2) - 0.01 * np.exp(
        -0.5 * ((wave - 5300) / 3) ** 2
    )
    region = ref < 0.995
    molecules = np.zeros(wave.size, dtype=int)
    rng = np.random.default_rng(3)
    star = np.ones((2, wave.size))
    observed = star * ref**0.7
    observed[:, 95:98] *= 0.8  # a stellar line missing from the reconstruction
    sigma = np.array([[1e-3], [0.05]]) * np.ones(wave.size)
    observed = observed + sigma * rng.normal(size=observed.shape)
    lower, upper, columns = column_bounds(
        observed, star, ref, region, molecules, wave_aa=wave, sigma=sigma, factor=1.25
    )
    assert columns.shape == (2, 1) and abs(columns[0, 0] - 0.7) < 0.02
    truth = ref**0.7
    strong = region & (wave < 5200)
    assert np.all((lower[0] <= truth + 1e-9)[strong]) and np.all((upper[0] >= truth - 1e-9)[strong])
    np.testing.assert_array_equal(lower[:, ~region], 1.0)
    np.testing.assert_array_equal(upper[:, ~region], 1.0)
    weak = region & (wave > 5200)
    assert np.all(lower[0, weak] < 1)  # 1 % deep at noise 0.1 %: corrected
    np.testing.assert_array_equal(lower[1, weak], 1.0)  # at noise 5 %: held at 1
    np.testing.assert_array_equal(upper[1, weak], 1.0)
    with pytest.raises(ValueError, match="factor"):
        column_bounds(observed, star, ref, region, molecules, wave_aa=wave, factor=0.9)
