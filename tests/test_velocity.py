"""Radial velocity in the denoiser (models/velocity.py, map_estimate, denoise) and its OOD flag."""

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

torch = pytest.importorskip("torch")

from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.manipulation import denoise  # noqa: E402
from specutils_deepclean.models.velocity import DopplerShift, parabola_peak  # noqa: E402
from specutils_deepclean.doppler import shift_flux  # noqa: E402


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
    assert 0 < fitted.velocity_error[0, 0] < 5.0
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
