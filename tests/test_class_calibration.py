"""The class posterior's calibration (models/ood.py ``class_posterior``, extra["class_calibration"])
and the ECE interval of the OOD benchmark."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.benchmarking.ood_negatives import ece_interval, reliability  # noqa: E402
from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.models import ood  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_model("denoiser-miles")


def _reference(log_evidence, snr, t0, gamma, floor, alpha, beta=0.0, score=None):
    """The docstring's formula in NumPy."""
    temperature = t0 * (np.maximum(snr, 1.0) / 10) ** gamma
    if beta:
        temperature = temperature * np.maximum(score, ood.DEFAULT_SCORE_LIMIT) ** -beta
    gap = log_evidence.max(1, keepdims=True) - log_evidence
    weight = np.exp(-((gap / temperature[:, None]) ** alpha))
    return (1 - floor) * weight / weight.sum(1, keepdims=True) + floor / log_evidence.shape[1]


def test_power_family_follows_the_formula():
    rng = np.random.default_rng(3)
    log_evidence = rng.normal(0, 30, (7, 6))
    snr = np.array([0.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0])
    value = (2.9, 0.24, 0.011, 0.74)
    got = ood.class_posterior(
        {"class_calibration": np.array(value)},
        torch.as_tensor(log_evidence),
        torch.as_tensor(snr),
    ).numpy()
    np.testing.assert_allclose(got, _reference(log_evidence, snr, *value), rtol=1e-10)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)
    assert (got.argmax(1) == log_evidence.argmax(1)).all()  # the MAP class is kept
    # three numbers: alpha = 1, i.e. the softmax of log Z / T
    three = ood.class_posterior(
        {"class_calibration": np.array(value[:3])},
        torch.as_tensor(log_evidence),
        torch.as_tensor(snr),
    ).numpy()
    np.testing.assert_allclose(three, _reference(log_evidence, snr, *value[:3], 1.0), rtol=1e-10)
    # alpha < 1 lifts the classes far behind more than those close behind
    far = np.array([[0.0, -2.0, -60.0]])
    one, power = (
        ood.class_posterior(
            {"class_calibration": np.array([3.0, 0.0, 0.0, alpha])},
            torch.as_tensor(far),
            torch.tensor([10.0]),
        ).numpy()[0]
        for alpha in (1.0, 0.5)
    )
    assert power[2] / power[1] > 100 * one[2] / one[1]


def test_score_power_warms_the_sparse_latents():
    """Five numbers: the temperature grows as the ood_score drops (floored at its limit)."""
    log_evidence = np.tile(np.random.default_rng(4).normal(0, 20, 6), (5, 1))
    snr = np.full(5, 10.0)
    score = np.array([0.0, 0.005, 0.05, 0.5, 1.0])
    value = (1.9, 0.27, 0.002, 0.68, 0.5)
    extra = {"class_calibration": np.array(value)}
    got = ood.class_posterior(
        extra, torch.as_tensor(log_evidence), torch.as_tensor(snr), torch.as_tensor(score)
    ).numpy()
    np.testing.assert_allclose(
        got, _reference(log_evidence, snr, *value, score=score), rtol=1e-10
    )
    assert (got.argmax(1) == log_evidence.argmax(1)).all()
    np.testing.assert_allclose(got[0], got[1], rtol=1e-12)  # both below the limit
    assert np.all(np.diff(got.max(1)[1:]) > 0)  # less sure where the latent is sparser
    with pytest.raises(ValueError, match="ood_score"):
        ood.class_posterior(extra, torch.as_tensor(log_evidence), torch.as_tensor(snr))


@pytest.mark.parametrize(
    "bad",
    [
        [3.0, 0.2, 0.01, 0.0],
        [3.0, 0.2, 0.01, -0.5],
        [3.0, 0.2, 0.01, np.nan],
        [3.0, 0.2, 1.0, 0.7],
        [0.0, 0.2, 0.01, 0.7],
        [3.0, 0.2, 0.01, 0.7, 1.0, 0.5],
        [3.0, 0.2, 0.01, 0.7, np.inf],
        [3.0, 0.2],
    ],
)
def test_check_extra_refuses_bad_calibration(bad):
    with pytest.raises(ValueError, match="class_calibration"):
        ood.check_extra({"class_calibration": np.array(bad)})


def test_calibration_from_the_model_file_is_applied(shipped, saved_with_extra):
    """map_estimate's class_posterior is class_posterior(extra) of its log evidences."""
    sim_rng = np.random.default_rng(1)
    wave = shipped.wavelength.to_value("AA")
    with torch.no_grad():
        z = shipped.prior.starts(1)[shipped.prior.class_names.index("G"), 0]
        # off the class's densest latent, so that the score power (five numbers) acts
        z = z + 0.5 * torch.as_tensor(np.random.default_rng(2).normal(size=z.shape)).to(z)
        signal = shipped.generator.generate(z[None]).double().numpy()[0]
    sigma = np.full(wave.size, np.median(signal) / 8.0)
    flux = signal + sigma * sim_rng.normal(size=wave.size)
    posteriors = {}
    for name, value in (
        ("bare", None),
        ("three", np.array([4.0, 0.2, 0.02])),
        ("four", np.array([2.9, 0.24, 0.011, 0.74])),
        ("five", np.array([2.9, 0.24, 0.011, 0.74, 2.0])),
    ):
        model = load_model(saved_with_extra(shipped, "class_calibration", value, name))
        fit = model.map_estimate(flux, sigma, generator=torch.Generator().manual_seed(0))
        assert not fit.ood_flag[0] and 0.1 < fit.ood_score[0] < 0.9
        extra = {} if value is None else {"class_calibration": value}
        want = ood.class_posterior(
            extra,
            torch.as_tensor(fit.class_log_evidence),
            torch.as_tensor(fit.snr),
            torch.as_tensor(fit.ood_score),
        ).numpy()
        np.testing.assert_allclose(fit.class_posterior, want, rtol=1e-5, atol=1e-7)
        posteriors[name] = fit.class_posterior[0]
    assert posteriors["four"].max() < 1 - 0.011 * 5 / 6 + 1e-6  # the floor
    assert not np.allclose(posteriors["three"], posteriors["four"], atol=1e-3)
    assert not np.allclose(posteriors["four"], posteriors["five"], atol=1e-3)


def test_bad_calibration_refused_on_load(shipped, saved_with_extra):
    bad = np.array([3.0, 0.2, 0.01, -1.0])
    path = saved_with_extra(shipped, "class_calibration", bad, "bad")
    with pytest.raises(ValueError, match="class_calibration"):
        load_model(path)


def test_ece_interval():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    sure = np.zeros((2, 40, 3))
    sure[:, np.arange(40), labels] = 1.0
    assert ece_interval(sure, labels, draws=50) == [0.0, 0.0]
    noisy = rng.dirichlet(np.ones(3), (4, 40))
    low, high = ece_interval(noisy, labels, draws=200, seed=1)
    point = reliability(noisy.reshape(-1, 3), np.tile(labels, 4))[0]
    assert 0 <= low < high and low <= point + 0.05
    with pytest.raises(ValueError, match="posterior must be"):
        ece_interval(noisy[0], labels)


def test_reliability_counts_a_tie_as_a_random_pick():
    """A uniform (flagged) posterior is right 1/K of the time, whatever the label's index."""
    labels = np.array([0, 1, 2, 2])
    posterior = np.full((4, 3), 1 / 3)
    ece, diagram = reliability(posterior, labels)
    assert diagram[0]["accuracy"] == pytest.approx(1 / 3)
    assert ece == pytest.approx(0.0, abs=1e-12)
    # a tie between two classes: right half the time when the label is one of them
    two = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    assert reliability(two, np.array([1, 2]))[1][0]["accuracy"] == pytest.approx(0.25)
