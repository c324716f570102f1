"""Radial velocity in the denoiser (models/velocity.py, map_estimate, denoise) and its OOD flag."""

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

torch = pytest.importorskip("torch")

from specutils_deepclean.doppler import shift_flux  # noqa: E402
from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.manipulation import denoise  # noqa: E402
from specutils_deepclean.models.velocity import DopplerShift, parabola_peak  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_model("denoiser-miles")


def _star(model, velocity, snr=50.0, seed=0):
    """A class-K spectrum drawn from the model's own generator, shifted, with noise."""
    wave = model.wavelength.to_value(u.AA)
    with torch.no_grad():
        z = model.prior.starts(1)[model.prior.class_names.index("K"), 0]
        signal = model.generator.generate(z[None]).double().numpy()[0]
    shifted, gone = shift_flux(signal, wave, velocity)
    rng = np.random.default_rng(seed)
    sigma = np.full(wave.size, np.nanmedian(shifted) / snr)
    return wave, signal, np.where(gone, np.nan, shifted + sigma * rng.normal(size=wave.size)), sigma


def test_doppler_shift_matches_shift_flux():
    wave = np.linspace(5000.0, 5500.0, 500)
    rng = np.random.default_rng(3)
    lines = sum(
        0.4 * np.exp(-0.5 * ((wave - c) / 1.2) ** 2) for c in rng.uniform(5020, 5480, 30)
    )
    flux = 1 - lines
    expected, gone = shift_flux(flux, wave, 237.0)
    shift = DopplerShift(wave, [[237.0]])
    got = shift.apply(torch.as_tensor(flux)[None], torch.arange(1))[0, 0].numpy()
    ok = shift.valid[0, 0].numpy() & ~gone
    assert ok.sum() > 480
    assert np.max(np.abs(got - expected)[ok]) < 5e-3
    # the inverse shift brings it back
    back = shift.inverse().apply(torch.as_tensor(got)[None], torch.arange(1))[0, 0].numpy()
    inner = slice(20, -20)
    assert np.max(np.abs(back - flux)[inner]) < 0.03  # two interpolations; lines 0.4 deep


@pytest.mark.parametrize("n_exp", [1, 2])
def test_doppler_shift_sparse_path_matches_gather(n_exp):
    """Jacobian-sized rows go through a sparse product; one row at a time through the
    per-tap gather: the same numbers, for a subset of stars in any order."""
    wave = np.linspace(4000.0, 4100.0, 200)
    rng = np.random.default_rng(5)
    shift = DopplerShift(wave, rng.uniform(-900, 900, (5, n_exp)), dtype=torch.float64)
    rows = torch.tensor([3, 0, 3, 4])
    x = torch.as_tensor(rng.normal(size=(4, 200, 6))).transpose(1, 2)  # (n, M, P), a view
    together = shift.apply(x, rows)
    assert together.shape == (4, n_exp, 6, 200)
    for m in range(6):
        alone = shift.apply(x[:, m].contiguous(), rows)
        np.testing.assert_allclose(together[:, :, m].numpy(), alone.numpy(), atol=1e-12)
    # all stars in order: no copy of the taps, the same numbers as a subset
    y = torch.as_tensor(rng.normal(size=(5, 200)))
    every = shift.apply(y, torch.arange(5))
    np.testing.assert_allclose(every[rows].numpy(), shift.apply(y[rows], rows).numpy(), atol=1e-12)


def test_doppler_shift_take_is_the_shift_of_those_stars():
    """`DopplerShift.take` slices the arrays: the same shift as one built for the rows,
    margin (its validity) included."""
    wave = np.linspace(4000.0, 4100.0, 200)
    velocity = np.random.default_rng(8).uniform(-900, 900, (5, 2))
    shift = DopplerShift(wave, velocity, margin=30.0, dtype=torch.float64)
    rows = torch.tensor([4, 1])
    taken, built = shift.take(rows), DopplerShift(wave, velocity[[4, 1]], margin=30.0,
                                                  dtype=torch.float64)
    np.testing.assert_array_equal(taken.velocity, built.velocity)
    for name in ("base", "weight", "valid", "index"):
        assert torch.equal(getattr(taken, name), getattr(built, name)), name
    x = torch.as_tensor(np.random.default_rng(9).normal(size=(2, 200)))
    assert torch.equal(taken.apply(x, torch.arange(2)), built.apply(x, torch.arange(2)))
    assert torch.equal(taken.inverse().base, built.inverse().base)


def test_parabola_peak():
    offsets = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    values = -3.0 * (offsets - 0.4) ** 2
    vertex, curvature = parabola_peak(offsets, np.stack([values, -values]), bound=1.0)
    assert vertex[0] == pytest.approx(0.4) and curvature[0] == pytest.approx(6.0)
    assert vertex[1] in (-2.0, 2.0) and np.isnan(curvature[1])  # opens upwards: best sample


def test_velocity_recovered_and_fixed_velocity(shipped):
    wave, signal, flux, sigma = _star(shipped, 310.0)
    fitted = shipped.map_estimate(flux / np.nanmedian(flux), sigma / np.nanmedian(flux),
                                  velocity=None)
    assert abs(fitted.velocity[0, 0] - 310.0) < 5.0
    floor = shipped.extra["velocity_error"][1]  # the calibration's km/s in quadrature
    assert floor <= fitted.velocity_error[0, 0] < floor + 5.0
    assert not fitted.ood_flag[0]
    # the output is in the observed frame: close to the shifted truth
    truth = shift_flux(signal, wave, 310.0)[0] / np.nanmedian(flux)
    good = np.isfinite(truth) & np.isfinite(fitted.flux[0])
    assert np.sqrt(np.mean((fitted.flux[0] - truth)[good] ** 2)) < 0.01
    # the velocity given, not fitted
    fixed = shipped.map_estimate(flux / np.nanmedian(flux), sigma / np.nanmedian(flux),
                                 velocity=310.0)
    assert fixed.velocity[0, 0] == 310.0 and fixed.velocity_error[0, 0] == 0.0
    # fixed at zero, a shifted star is fitted worse: its lines are not where the model's are
    rest = shipped.map_estimate(flux / np.nanmedian(flux), sigma / np.nanmedian(flux))
    assert rest.velocity[0, 0] == 0.0 and rest.fit_chi2[0] > 2 * fitted.fit_chi2[0]


def test_velocity_zero_is_the_rest_path(shipped):
    _, _, flux, sigma = _star(shipped, 0.0, snr=20.0)
    scale = np.nanmedian(flux)
    default = shipped.map_estimate(flux / scale, sigma / scale)
    zeros = shipped.map_estimate(flux / scale, sigma / scale, velocity=np.zeros(1))
    np.testing.assert_array_equal(default.flux, zeros.flux)
    np.testing.assert_array_equal(default.flux_sigma, zeros.flux_sigma)
    assert np.all(np.isfinite(default.flux))


def test_bad_velocity_options(shipped):
    _, _, flux, sigma = _star(shipped, 0.0)
    with pytest.raises(ValueError, match="velocity_range"):
        shipped.map_estimate(flux, sigma, velocity=None, velocity_range=-5.0)
    with pytest.raises(ValueError, match="velocity must be"):
        shipped.map_estimate(flux, sigma, velocity=np.zeros(3))
    spec = Spectrum(flux=flux * u.Jy, spectral_axis=shipped.wavelength,
                    uncertainty=StdDevUncertainty(sigma), meta={"medium": "air"})
    with pytest.raises(TypeError, match="radial_velocity must be a Quantity"):
        denoise(spec, shipped, radial_velocity=3.0)
    with pytest.raises(ValueError, match="velocity_range"):
        denoise(spec, shipped, velocity_range=[1, 2] * u.km / u.s)


def test_exposures_have_their_own_velocities(shipped):
    """Two exposures of one star at different velocities share (z, C), each its own v."""
    exposures, sigmas = [], []
    for seed, v in enumerate((150.0, -220.0)):
        _, _, flux, sigma = _star(shipped, v, snr=30.0, seed=seed)
        exposures.append(flux / np.nanmedian(flux))
        sigmas.append(sigma / np.nanmedian(flux))
    result = shipped.map_estimate(np.stack(exposures)[None], np.stack(sigmas)[None],
                                  velocity=None)
    assert result.velocity.shape == (1, 2)
    np.testing.assert_allclose(result.velocity[0], [150.0, -220.0], atol=5.0)
    assert np.all(result.velocity_error[0] > 0) and not result.ood_flag[0]


def test_default_range_reaches_beyond_1000_kms(shipped):
    """NGC 3073 (c z = 1128 km/s) is why the default range is 2000 km/s."""
    _, _, flux, sigma = _star(shipped, 1300.0, snr=30.0)
    scale = np.nanmedian(flux)
    result = shipped.map_estimate(flux / scale, sigma / scale, velocity=None)
    assert abs(result.velocity[0, 0] - 1300.0) < 5.0 and not result.ood_flag[0]


def test_denoise_meta_units_and_flagged_rows(shipped):
    """A sky-only row (S/N 0.3 per pixel) between two shifted stars: only it is flagged,
    named by the warning, with a uniform class posterior; the stars keep their velocity."""
    wave, _, flux, sigma = _star(shipped, -250.0, snr=30.0)
    rng = np.random.default_rng(5)
    noise = 1.0 + 3.0 * rng.normal(size=wave.size)
    spec = Spectrum(
        flux=np.vstack([flux, noise, flux]) * u.Jy,
        spectral_axis=shipped.wavelength,
        uncertainty=StdDevUncertainty(np.vstack([sigma, np.full(wave.size, 3.0), sigma])),
        meta={"medium": "air"},
    )
    with pytest.warns(AstropyUserWarning, match=r"spectra \[1\] are flagged"):
        out = denoise(spec, shipped)
    info = out.meta["deepclean"]
    assert info["ood_flag"] == [False, True, False]
    for key in ("radial_velocity", "radial_velocity_error"):
        assert len(info[key]) == 3 and all(v.unit == u.km / u.s for v in info[key])
    assert abs(info["radial_velocity"][0].value + 250.0) < 5.0
    assert info["class_posterior"][1] == pytest.approx(dict.fromkeys(shipped.classes, 1 / 6))
    assert max(info["class_posterior"][0].values()) > 0.5
    single = denoise(spec[0], shipped, radial_velocity=-250 * u.km / u.s)
    assert single.meta["deepclean"]["radial_velocity"] == -250 * u.km / u.s
    assert single.meta["deepclean"]["radial_velocity_error"] == 0 * u.km / u.s
    assert single.meta["deepclean"]["ood_flag"] is False


def test_run_summary_counts_flagged_inputs(tmp_path):
    from specutils_deepclean.parallel import RunSummary

    summary = RunSummary(done=[tmp_path / "a.fits", tmp_path / "b.fits"],
                         flagged=[tmp_path / "b.fits"])
    text = str(summary)
    assert "out of distribution" in text and "1: " in text and "b.fits" in text
    assert "out of distribution" not in str(RunSummary(done=[tmp_path / "a.fits"]))


def test_ood_rule_and_class_calibration_follow_the_signal():
    from specutils_deepclean.models import ood

    extra = {"ood_limits": np.array([0.02, 0.3, 1.5, 0.01, 1.0]),
             "class_calibration": np.array([5.0, 1.0, 0.06])}
    snr = np.array([5.0, 50.0, 50.0, 0.5, 20.0])
    chi2 = np.array([1.3, 1.3, 9.0, 1.0, 1.0])  # limits 1.22 at S/N 5, 8.07 at S/N 50
    structure = np.ones(5)
    score = np.array([0.5, 0.5, 0.5, 0.5, 0.001])
    flags = ood.ood_flag(extra, score, (chi2, structure, snr))
    assert flags.tolist() == [True, False, True, True, True]
    log_evidence = torch.tensor([[0.0, 10.0, 5.0]]).expand(5, 3)
    got = ood.class_posterior(extra, log_evidence, torch.as_tensor(snr, dtype=torch.float32))
    expected = torch.softmax(log_evidence / torch.tensor([2.5, 25, 25, 0.5, 10])[:, None], -1)
    torch.testing.assert_close(got, 0.94 * expected + 0.02)
    torch.testing.assert_close(ood.class_posterior({}, log_evidence, None),
                               torch.softmax(log_evidence, -1))
    assert ood.ood_flag({}, score, (chi2, structure, snr)).tolist() == [False] * 4 + [True]
    for bad in ({"ood_limits": np.ones(4)}, {"ood_limits": -np.ones(5)},
                {"class_calibration": np.array([0.0, 1.0, 0.0])},
                {"class_calibration": np.array([1.0, 1.0, 1.0])}):
        with pytest.raises(ValueError, match="ood_limits|class_calibration"):
            ood.check_extra(bad)


def test_exposures_at_one_velocity_are_pooled(shipped):
    """Three noisy exposures of a star at one velocity: their fitted velocities agree
    better than those of the exposures fitted alone, with smaller errors (pooled where
    they agree within their errors, `~specutils_deepclean.exposures.pool_velocities`)."""
    exposures, sigmas = [], []
    for seed in range(3):
        _, _, flux, sigma = _star(shipped, 150.0, snr=5.0, seed=10 + seed)
        exposures.append(flux / np.nanmedian(flux))
        sigmas.append(sigma / np.nanmedian(flux))
    flux, sigma = np.stack(exposures), np.stack(sigmas)
    alone = shipped.map_estimate(flux, sigma, velocity=None)
    joint = shipped.map_estimate(flux[None], sigma[None], velocity=None)
    assert np.ptp(joint.velocity[0]) < 0.5 * np.ptp(alone.velocity[:, 0])
    assert np.all(joint.velocity_error[0] < alone.velocity_error[:, 0])
    np.testing.assert_allclose(joint.velocity[0], 150.0, atol=10.0)


def test_exposure_likelihood_in_chunks_is_one_pass():
    """The velocity refinement sends a whole batch to the exposure likelihood, which runs
    it in chunks: the same numbers as one pass of the flow over every row."""
    from test_denoiser_model import LATENT, draw, make_model

    from specutils_deepclean.models.denoiser import _EVAL_CHUNK

    model = make_model()
    n = _EVAL_CHUNK + 9
    _, _, _, flux, sigma = draw(model, n, seed=5)
    data = model._prepare(flux, sigma, None, None)
    rows = torch.arange(n).flip(0)  # stars in any order
    with torch.no_grad():
        observed = model.generator.generate(torch.zeros(n, LATENT))[:, None]
        got = model._exposure_likelihood(observed, rows, data)
        whitened = ((data.flux[rows] - observed) * data.inv_unit[rows]).reshape(n, -1)
        want = model.flows[data.flow].log_likelihood(whitened, data.counted[rows].reshape(n, -1))
    assert got.shape == (n, 1)
    np.testing.assert_allclose(got[:, 0].numpy(), want.numpy(), rtol=1e-6)


def test_velocity_error_calibration_from_the_model_file(shipped, saved_with_extra):
    """extra["velocity_error"] = (a, f) gives sqrt((a sigma_L)^2 + f^2); without it sigma_L."""
    _, _, flux, sigma = _star(shipped, 310.0, snr=20.0)
    scale = np.nanmedian(flux)
    errors = {}
    for name, value in (("bare", None), ("calibrated", np.array([2.0, 3.0]))):
        model = load_model(saved_with_extra(shipped, "velocity_error", value, name))
        fit = model.map_estimate(flux / scale, sigma / scale, velocity=None,
                                 generator=torch.Generator().manual_seed(0))
        errors[name] = fit.velocity_error[0, 0], fit.velocity[0, 0]
    (bare, v_bare), (calibrated, v_calibrated) = errors["bare"], errors["calibrated"]
    assert v_calibrated == pytest.approx(v_bare, abs=1e-6)
    assert 0 < bare < 5.0
    assert calibrated == pytest.approx(np.hypot(2 * bare, 3.0), rel=1e-6)


@pytest.mark.parametrize(
    "bad", [[1.0], [0.0, 1.0], [-1.0, 1.0], [1.0, -0.5], [np.nan, 1.0], [1.0, np.inf]]
)
def test_check_velocity_error_refuses(bad):
    from specutils_deepclean.models.velocity import check_velocity_error

    with pytest.raises(ValueError, match="velocity_error"):
        check_velocity_error({"velocity_error": bad})
    check_velocity_error({"velocity_error": [1.2, 2.5]})
    check_velocity_error({})


def test_bad_velocity_error_refused_on_load(shipped, saved_with_extra):
    path = saved_with_extra(shipped, "velocity_error", np.array([1.0, -2.0]), "bad")
    with pytest.raises(ValueError, match="velocity_error"):
        load_model(path)
