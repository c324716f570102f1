"""Metrics, each checked against arithmetic done by hand on a few pixels."""

import math
import subprocess
import sys

import astropy.units as u
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from specutils import Spectrum
from specutils.analysis import snr_derived

from specutils_deepclean.benchmarking.grouping import grouped, win_rates_by
from specutils_deepclean.metrics import (
    GAUSSIAN_COVERAGE,
    Calibration,
    calibration,
    der_snr,
    der_snr_array,
    estimate_continuum,
    mse,
    n_s,
    n_t,
    q_s,
    q_t,
    rms_in_mask,
    telluric_pixels,
    win_rate,
)

DER_SNR_CONSTANT = 0.6052697


# --------------------------------------------------------------------------- mse


def test_mse_by_hand():
    # (1-1)^2 + (2-2.5)^2 + (3-2)^2 = 0 + 0.25 + 1 over 3 pixels
    assert mse([1.0, 2.0, 3.0], [1.0, 2.5, 2.0]) == pytest.approx(1.25 / 3)


def test_mse_batch_with_mask():
    pred = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    truth = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    mask = np.array([[False, False, True, False], [True, False, False, False]])
    # row 0 keeps pixels 0, 1, 3: (0 + 1 + 9) / 3; row 1 keeps 1, 2, 3: (4 + 9 + 16) / 3
    assert_allclose(mse(pred, truth, mask=mask), [10 / 3, 29 / 3])


def test_mse_mask_broadcasts_over_spectra():
    pred = np.array([[1.0, 5.0, 2.0], [2.0, 5.0, 4.0]])
    truth = np.ones((2, 3))
    # pixel 1 masked in both: row 0 (0 + 1) / 2, row 1 (1 + 9) / 2
    assert_allclose(mse(pred, truth, mask=np.array([False, True, False])), [0.5, 5.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["pred", "truth"])
def test_mse_skips_non_finite(bad, where):
    pred = np.array([1.0, 2.0, 3.0])
    truth = np.array([1.0, 1.0, 1.0])
    {"pred": pred, "truth": truth}[where][2] = bad
    assert mse(pred, truth) == pytest.approx(0.5)  # (0 + 1) / 2


def test_mse_no_valid_pixel_is_nan():
    pred = np.array([[np.nan, 1.0], [1.0, 3.0]])
    truth = np.array([[1.0, np.nan], [1.0, 1.0]])
    assert_array_equal(mse(pred, truth), [np.nan, 2.0])
    assert math.isnan(mse([1.0, 2.0], [1.0, 1.0], mask=np.array([True, True])))


def test_mse_leading_axes_and_scalar_output():
    rng = np.random.default_rng(3)
    pred, truth = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    result = mse(pred, truth)
    assert result.shape == (2, 3)
    assert_allclose(result, ((pred - truth) ** 2).mean(axis=-1))
    assert isinstance(mse(pred[0, 0], truth[0, 0]), float)


@pytest.mark.parametrize(
    ("pred", "truth", "kwargs", "error", "match"),
    [
        (np.ones(3), np.ones(4), {}, ValueError, r"same shape.*pred \(3,\), truth \(4,\)"),
        (np.ones((2, 3)), np.ones(3), {}, ValueError, "same shape"),
        (1.0, 1.0, {}, ValueError, "pred must have at least one"),
        (["a", "b"], [1.0, 2.0], {}, TypeError, "pred must be a real numeric array"),
        (np.ones(3), np.ones(3) + 0j, {}, TypeError, "truth must be a real numeric"),
        (np.ones(3), np.ones(3), {"mask": np.zeros(4, bool)}, ValueError, "does not broadcast"),
        (np.ones(3), np.ones(3), {"mask": np.zeros(3)}, TypeError, "mask must be a boolean"),
    ],
)
def test_mse_bad_input(pred, truth, kwargs, error, match):
    with pytest.raises(error, match=match):
        mse(pred, truth, **kwargs)


# --------------------------------------------------------------------------- rms_in_mask


def test_rms_in_mask_by_hand():
    pred = np.array([[1.0, 3.0, 5.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    truth = np.ones((2, 4))
    region = np.array([False, True, True, True])
    # row 0: sqrt((4 + 16 + 1) / 3); row 1: sqrt((1 + 1 + 1) / 3) = 1
    assert_allclose(rms_in_mask(pred, truth, region), [math.sqrt(7.0), 1.0])
    # excluding pixel 2 as bad data: row 0 sqrt((4 + 1) / 2)
    bad = np.array([False, False, True, False])
    assert_allclose(rms_in_mask(pred, truth, region, mask=bad), [math.sqrt(2.5), 1.0])


def test_rms_in_empty_region_is_nan():
    assert math.isnan(rms_in_mask([1.0, 2.0], [1.0, 1.0], np.array([False, False])))


def test_rms_in_mask_region_must_be_boolean():
    with pytest.raises(TypeError, match="region must be a boolean"):
        rms_in_mask([1.0, 2.0], [1.0, 1.0], [0.5, 0.99])


# --------------------------------------------------------------------------- DER_SNR


@pytest.mark.parametrize("function", [der_snr, der_snr_array])
@pytest.mark.parametrize(
    ("flux", "expected"),
    [
        # median 1; second differences 2*2-1-1 = 2, 2*1-1-1 = 0 -> median 1
        ([1.0, 1.0, 2.0, 1.0, 1.0, 1.0], 1.0 / DER_SNR_CONSTANT),
        # sorted 1..6 -> median 3.5; 2*3-1-4 = 1, 2*5-2-6 = 2 -> median 1.5
        ([1.0, 2.0, 3.0, 5.0, 4.0, 6.0], 3.5 / (DER_SNR_CONSTANT * 1.5)),
        # sorted 1,1,2,2,2,3,4 -> median 2; 2*2-1-3 = 0, 2*4-2-2 = 4, 2*3-2-1 = 3 -> median 3
        ([1.0, 2.0, 2.0, 4.0, 3.0, 2.0, 1.0], 2.0 / (DER_SNR_CONSTANT * 3.0)),
        # median 2; 2*1-1-1 = 0, 2*3-3-3 = 0 -> median 0: no noise, infinite S/N
        ([1.0, 3.0, 1.0, 3.0, 1.0, 3.0], np.inf),
    ],
)
def test_der_snr_by_hand(function, flux, expected):
    assert function(flux) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("function", [der_snr, der_snr_array])
def test_der_snr_drops_masked_and_non_finite_pixels(function):
    # pixels 3 (masked) and 5 (NaN) dropped: what remains is the first case above
    flux = np.array([[1.0, 1.0, 2.0, 100.0, 1.0, np.nan, 1.0, 1.0]])
    mask = np.array([False, False, False, True, False, False, False, False])
    assert_allclose(function(flux, mask=mask), [1.0 / DER_SNR_CONSTANT], rtol=1e-12)


@pytest.mark.parametrize("function", [der_snr, der_snr_array])
def test_der_snr_too_few_pixels_is_nan(function):
    flux = np.array([[1.0, 2.0, np.nan, 4.0, np.nan, 5.0], [1.0, 2.0, 3.0, 4.0, np.nan, 7.0]])
    result = function(flux)
    assert math.isnan(result[0])  # 4 finite pixels: undefined
    assert np.isfinite(result[1])  # 5 finite pixels: defined
    assert math.isnan(function([1.0, 2.0, 3.0, 4.0]))


def test_der_snr_agrees_with_specutils_and_vectorised():
    rng = np.random.default_rng(11)
    flux = 1.0 + rng.normal(scale=0.05, size=(6, 40))
    mask = rng.random((6, 40)) < 0.2
    flux[1, 7] = np.nan
    mask[2, :37] = True  # only 3 pixels left: NaN
    fast = der_snr_array(flux, mask=mask)
    assert_array_equal(der_snr(flux, mask=mask), fast)
    for row in (0, 1, 3, 4, 5):
        keep = ~mask[row] & np.isfinite(flux[row])
        spec = Spectrum(flux=flux[row][keep] * u.Jy, spectral_axis=np.arange(keep.sum()) * u.AA)
        assert fast[row] == pytest.approx(snr_derived(spec).value, rel=1e-13)
    assert math.isnan(fast[2])


def test_der_snr_measures_white_noise():
    rng = np.random.default_rng(5)
    flux = 1.0 + rng.normal(scale=0.1, size=(20, 2000))  # S/N 10
    snr = der_snr_array(flux)
    assert np.mean(snr) == pytest.approx(10.0, rel=0.02)
    assert_allclose(snr, 10.0, rtol=0.15)


def test_der_snr_batch_shape():
    flux = np.ones((2, 3, 10)) + np.arange(10) % 3
    assert der_snr_array(flux).shape == (2, 3)
    assert der_snr(flux).shape == (2, 3)


def test_der_snr_bad_input():
    with pytest.raises(TypeError, match="flux must be a real numeric array"):
        der_snr(np.array(["x"] * 6))
    with pytest.raises(ValueError, match="does not broadcast"):
        der_snr_array(np.ones(6), mask=np.zeros(5, bool))


# --------------------------------------------------------------------------- telluric mask


def test_telluric_pixels():
    result = telluric_pixels([1.0, 0.99, 0.989, 0.2, np.nan])
    assert_array_equal(result, [False, False, True, True, False])
    assert_array_equal(telluric_pixels([0.95, 0.85], threshold=0.9), [False, True])


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
def test_telluric_pixels_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold must be in"):
        telluric_pixels([1.0], threshold=threshold)


# --------------------------------------------------------------------------- continuum


def test_estimate_continuum_by_hand():
    flux = np.array([1.0, 0.5, 1.0, 1.0, 2.0, 1.5, 2.0, 2.0])
    # blocks [0:4], [4:8]: 100th percentiles 1 and 2 at mean positions 1.5 and 5.5,
    # joined by a line of slope 1/4, constant outside
    expected = [1.0, 1.0, 1.125, 1.375, 1.625, 1.875, 2.0, 2.0]
    assert_allclose(estimate_continuum(flux, window=4, percentile=100), expected)
    # the 50th percentile of (0.5, 1, 1, 1) is 1 and of (1.5, 2, 2, 2) is 2: same
    assert_allclose(estimate_continuum(flux, window=4, percentile=50), expected)


def test_estimate_continuum_ignores_bad_pixels_and_empty_blocks():
    flux = np.array([[1.0, 9.0, 5.0, 5.0, 3.0, 3.0], [np.nan] * 6])
    mask = np.array([False, True, True, True, False, False])
    # block 0 keeps pixel 0 (level 1 at 0), block 1 is empty, block 2 level 3 at 4.5
    row0 = [1.0, 1.0 + 2 / 4.5, 1.0 + 4 / 4.5, 1.0 + 6 / 4.5, 1.0 + 8 / 4.5, 3.0]
    result = estimate_continuum(flux, mask=mask, window=2, percentile=100)
    assert_allclose(result[0], row0)
    assert np.isnan(result[1]).all()


def test_estimate_continuum_follows_a_line_free_continuum():
    pixels = np.arange(1000)
    continuum = 1.0 + 0.3 * pixels / 1000
    lines = 1 - 0.6 * np.exp(-0.5 * ((pixels[:, None] - np.arange(30, 1000, 60)) / 3) ** 2)
    star = continuum * lines.prod(axis=1)
    estimate = estimate_continuum(star)
    # the 90th percentile of a block on this slope (0.03 per block) sits 0.4 * 0.03
    # above its centre value; the ends, held constant beyond the outer block centres
    # (pixels 49.5 and 949.5), lose up to half a block of slope more
    assert_allclose(estimate[50:950], continuum[50:950], rtol=0.013)
    assert_allclose(estimate, continuum, rtol=0.025)
    assert star.min() < 0.5  # the lines are deep, yet ignored


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window must be a positive integer"),
        ({"window": 2.5}, "window must be a positive integer"),
        ({"window": True}, "window must be a positive integer"),
        ({"percentile": 101.0}, "percentile must be in"),
        ({"percentile": -1.0}, "percentile must be in"),
    ],
)
def test_estimate_continuum_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_continuum(np.ones(10), **kwargs)


# --------------------------------------------------------------------------- Q_t, Q_s

TRUTH = np.array([1.0, 0.5, 1.0, 1.0])  # a stellar line on pixel 1
OBSERVED = np.array([1.0, 0.5, 0.6, 0.8])  # telluric lines on pixels 2 and 3
M_T = np.array([False, False, True, True])
CONTINUUM = np.ones(4)


def test_n_t_by_hand():
    # M_t |S - S~| = |0.6 - 1| + |0.8 - 1| = 0.6
    assert n_t(OBSERVED, TRUTH, M_T) == pytest.approx(0.6)
    assert n_t(OBSERVED, TRUTH, M_T, mask=np.array([False, False, True, False])) == (
        pytest.approx(0.2)
    )


def test_n_s_by_hand():
    # (1 - M_t) |S^ - S~| = |1 - 1| + |1 - 0.5| = 0.5
    assert n_s(CONTINUUM, TRUTH, M_T) == pytest.approx(0.5)


def test_q_t_by_hand():
    pred = np.array([0.0, 0.0, 0.9, 1.0])  # pixels 0, 1 are not telluric: ignored
    # (|0.9 - 1| + |1 - 1|) / 0.6 = 1/6
    assert q_t(pred, OBSERVED, TRUTH, M_T) == pytest.approx(1 / 6)


def test_q_s_by_hand():
    pred = np.array([0.9, 0.7, 5.0, 5.0])  # pixels 2, 3 are telluric: ignored
    # (|0.9 - 1| + |0.7 - 0.5|) / 0.5 = 0.6
    assert q_s(pred, TRUTH, M_T, continuum=CONTINUUM) == pytest.approx(0.6)


def test_q_t_q_s_extremes():
    # the truth itself is perfect on both counts
    assert q_t(TRUTH, OBSERVED, TRUTH, M_T) == 0.0
    assert q_s(TRUTH, TRUTH, M_T, continuum=CONTINUUM) == 0.0
    # doing nothing gives Q_t = 1, removing every stellar line gives Q_s = 1
    assert q_t(OBSERVED, OBSERVED, TRUTH, M_T) == 1.0
    assert q_s(CONTINUUM, TRUTH, M_T, continuum=CONTINUUM) == 1.0


def test_q_t_q_s_clip_at_one():
    pred = np.array([1.0, 1.5, 0.2, 0.2])
    # Q_t: (0.8 + 0.8) / 0.6 = 8/3 -> 1; Q_s: (0 + 1) / 0.5 = 2 -> 1
    assert q_t(pred, OBSERVED, TRUTH, M_T) == 1.0
    assert q_t(pred, OBSERVED, TRUTH, M_T, clip=False) == pytest.approx(8 / 3)
    assert q_s(pred, TRUTH, M_T, continuum=CONTINUUM) == 1.0
    assert q_s(pred, TRUTH, M_T, continuum=CONTINUUM, clip=False) == pytest.approx(2.0)


def test_q_t_batch_and_clip_range():
    pred = np.stack([TRUTH, OBSERVED, np.array([1.0, 1.5, 0.2, 0.2]), [1.0, 1.0, 0.8, 1.0]])
    observed = np.broadcast_to(OBSERVED, pred.shape)
    truth = np.broadcast_to(TRUTH, pred.shape)
    # 0, 1, clipped 8/3, and 0.2 / 0.6
    assert_allclose(q_t(pred, observed, truth, M_T), [0.0, 1.0, 1.0, 1 / 3])


def test_q_t_excludes_a_pixel_from_numerator_and_normaliser_alike():
    pred = np.array([1.0, 0.5, np.nan, 0.9])
    # pixel 2 is NaN in pred: numerator |0.9 - 1| = 0.1 and N_t |0.8 - 1| = 0.2 -> 0.5
    assert q_t(pred, OBSERVED, TRUTH, M_T) == pytest.approx(0.5)
    # the same by masking pixel 2 instead
    pred[2] = 0.0
    assert q_t(pred, OBSERVED, TRUTH, M_T, mask=np.array([0, 0, 1, 0], bool)) == pytest.approx(0.5)


def test_q_t_zero_normaliser():
    no_tellurics = np.zeros(4, bool)
    assert math.isnan(q_t(OBSERVED, OBSERVED, TRUTH, no_tellurics))  # 0 / 0
    # input equal to the truth on M_t, prediction is not: 0.1 / 0 -> inf -> 1
    assert q_t(TRUTH + 0.1, TRUTH, TRUTH, M_T) == 1.0
    assert q_t(TRUTH + 0.1, TRUTH, TRUTH, M_T, clip=False) == np.inf


def test_q_s_default_continuum_is_estimate_continuum():
    rng = np.random.default_rng(2)
    truth = 1.0 - 0.5 * (rng.random((3, 300)) < 0.1)
    pred = truth + rng.normal(scale=0.01, size=truth.shape)
    m_t = rng.random(300) < 0.2
    explicit = q_s(pred, truth, m_t, continuum=estimate_continuum(truth))
    assert_array_equal(q_s(pred, truth, m_t), explicit)
    assert np.all((explicit > 0) & (explicit < 1))


def test_q_s_ignores_telluric_pixels():
    rng = np.random.default_rng(8)
    pred = TRUTH + np.array([0.1, -0.1, 0.0, 0.0])
    changed = pred.copy()
    changed[M_T] = rng.normal(size=M_T.sum())
    assert q_s(changed, TRUTH, M_T, continuum=CONTINUUM) == q_s(
        pred, TRUTH, M_T, continuum=CONTINUUM
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: q_t(TRUTH, OBSERVED[:3], TRUTH, M_T), ValueError, "observed \\(3,\\)"),
        (lambda: q_t(TRUTH, OBSERVED, TRUTH, M_T[:3]), ValueError, "telluric_mask of shape"),
        (lambda: q_t(TRUTH, OBSERVED, TRUTH, M_T * 1.0), TypeError, "telluric_mask must be"),
        (lambda: q_s(TRUTH, TRUTH, M_T, continuum=np.ones(5)), ValueError, "continuum \\(5,\\)"),
        (lambda: n_s(CONTINUUM, TRUTH[:2], M_T), ValueError, "same shape"),
        (lambda: n_t(OBSERVED, TRUTH, M_T, mask=[0, 1, 0, 0]), TypeError, "mask must be a bool"),
    ],
)
def test_telluric_metrics_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- win rates


def test_win_rate_by_hand():
    # win, tie, loss, dropped (NaN): (1 + 0.5 + 0) / 3
    assert win_rate([0.1, 0.2, 0.3, np.nan], [0.2, 0.2, 0.1, 0.1]) == pytest.approx(0.5)
    assert win_rate([0.1, 0.1], [0.2, np.nan]) == 1.0
    assert math.isnan(win_rate([np.nan], [1.0]))


def test_win_rate_is_complementary():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 5, 200).astype(float)  # many ties
    b = rng.integers(0, 5, 200).astype(float)
    assert win_rate(a, b) + win_rate(b, a) == pytest.approx(1.0)


def test_win_rate_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        win_rate([0.1, 0.2], [0.1])


def test_win_rates_by_hand():
    a = [0.1, 0.3, 0.1, 0.1, np.nan]
    b = [0.2, 0.2, 0.2, 0.1, 0.3]
    classes = np.array(["K", "K", "G", "G", "G"])
    # G: win, tie, (NaN dropped) -> 0.75; K: win, loss -> 0.5; keys sorted
    result = win_rates_by(a, b, classes)
    assert list(result) == ["G", "K"]
    assert result == {"G": 0.75, "K": 0.5}
    by_two = win_rates_by(a, b, classes, np.array([5, 10, 5, 5, 5]))
    assert by_two == {("G", 5): 0.75, ("K", 5): 1.0, ("K", 10): 0.0}
    assert all(type(key[1]) is int for key in by_two)  # plain Python labels


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.1, 0.2], [0.2, 0.1]), "at least one array of group labels"),
        (([0.1, 0.2], [0.2, 0.1], ["G"]), r"group labels 0 have shape \(1,\)"),
        (([[0.1, 0.2]], [[0.2, 0.1]], ["G"]), "must be 1-D"),
    ],
)
def test_win_rates_by_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        win_rates_by(*args)


def test_grouped_by_hand():
    values = [1.0, 3.0, 2.0, np.nan, 7.0, np.nan]
    snr = [5, 5, 10, 10, 20, 50]
    # 5: median(1, 3) = 2; 10: NaN dropped -> 2; 20: 7; 50: nothing left -> NaN
    result = grouped(values, snr)
    assert list(result) == [5, 10, 20, 50]
    assert result[5] == 2.0 and result[10] == 2.0 and result[20] == 7.0
    assert math.isnan(result[50])
    assert grouped(values[:3], snr[:3], statistic=np.mean) == {5: 2.0, 10: 2.0}


def test_grouped_bad_input():
    with pytest.raises(ValueError, match="values must be 1-D"):
        grouped(np.ones((2, 2)), [1, 2])
    with pytest.raises(ValueError, match="at least one array"):
        grouped([1.0])


# --------------------------------------------------------------------------- calibration


def test_calibration_by_hand():
    pred = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    sigma = np.array([[0.5, 0.5, 0.1, np.nan], [1.0, 1.0, 1.0, 0.0]])
    truth = np.array([[1.2, 0.4, 1.2, 1.0], [0.5, -2.0, 1.0, 0.0]])
    # row 0: |0.2| < 0.5 yes, |0.6| < 0.5 no, |0.2| < 0.1 no, NaN sigma dropped -> 1/3
    # row 1: 0.5 < 1 yes, 2 < 1 no, 1 < 1 no (strict), 0 < 0 no -> 1/4
    result = calibration(pred, sigma, truth)
    assert isinstance(result, Calibration)
    assert_allclose(result.per_spectrum, [1 / 3, 1 / 4])
    assert result.pooled == pytest.approx(2 / 7)  # pooled pixels, not the mean of rows


def test_calibration_mask_and_empty_spectrum():
    pred, sigma, truth = np.zeros((2, 3)), np.ones((2, 3)), np.array([[0.5, 3.0, 0.5]] * 2)
    mask = np.array([[False, True, False], [True, True, True]])
    result = calibration(pred, sigma, truth, mask=mask)
    assert_array_equal(result.per_spectrum, [1.0, np.nan])
    assert result.pooled == 1.0
    assert math.isnan(calibration([1.0], [1.0], [np.nan]).pooled)


def test_calibration_on_gaussian_draws():
    rng = np.random.default_rng(7)
    pred = rng.normal(size=(100, 1000))
    sigma = rng.uniform(0.01, 0.3, size=pred.shape)
    truth = pred + sigma * rng.normal(size=pred.shape)
    result = calibration(pred, sigma, truth)
    # binomial standard error of the pooled share: sqrt(0.68 * 0.32 / 1e5) = 0.0015
    assert result.pooled == pytest.approx(GAUSSIAN_COVERAGE, abs=0.006)
    assert np.mean(result.per_spectrum) == pytest.approx(GAUSSIAN_COVERAGE, abs=0.006)
    # uncertainties twice too large: erf(2 / sqrt 2) = 0.954
    assert calibration(pred, 2 * sigma, truth).pooled == pytest.approx(0.9545, abs=0.004)


def test_gaussian_coverage_constant():
    assert GAUSSIAN_COVERAGE == pytest.approx(0.682689492137, abs=1e-12)


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="sigma must be non-negative"):
        calibration([0.0, 0.0], [1.0, -1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"sigma \(3,\)"):
        calibration([0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0])


def test_import_does_not_import_torch():
    code = "import sys, specutils_deepclean.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
