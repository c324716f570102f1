"""The stellar model of the physical telluric fit, moved to the observation's velocity."""

import numpy as np
import pytest

from specutils_deepclean.resample import bin_edges
from specutils_deepclean.telluric_fit import fit_transmission, telluric_basis
from specutils_deepclean.telluric_star import MAX_SHIFT_KMS, align_stellar

C_KMS = 299792.458


def _lines(wave, velocity, seed=1, n=150):
    """A continuum with ``n`` Gaussian absorption lines, at ``velocity``."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(wave[0] + 20, wave[-1] - 20, n) * (1 + velocity / C_KMS)
    depth = rng.uniform(0.05, 0.5, n)
    prof = np.exp(-0.5 * ((wave[:, None] - centres[None]) / 1.2) ** 2)
    return (1 + 0.1 * (wave - wave.mean()) / np.ptp(wave)) * np.prod(1 - depth * prof, axis=1)


@pytest.mark.parametrize("velocity", [-140.0, 0.0, 37.0, 260.0])
def test_align_recovers_the_shift(velocity):
    wave = np.arange(4000.0, 7400.0, 0.9)
    rng = np.random.default_rng(2)
    flux = _lines(wave, velocity) * (1 + 0.01 * rng.standard_normal(wave.size))
    model = _lines(wave, 0.0)
    model[:30] = np.nan  # no model there: stays NaN
    shifted, shift = align_stellar(wave, flux[None], model[None], np.ones(wave.size, bool))
    assert abs(shift[0] - velocity) < 3.0
    inner = slice(400, -400)
    # what is left of the ratio: the 1 % noise and the linear interpolation
    assert np.std(flux[inner] / shifted[0, inner]) < 0.015
    if velocity:
        assert np.std(flux[inner] / model[inner]) > 0.04
    assert np.all(np.isnan(shifted[0, :30]))


def test_align_leaves_rows_without_model_or_peak():
    wave = np.arange(4000.0, 7400.0, 0.9)
    flux = np.stack([_lines(wave, 10.0), _lines(wave, 10.0)])
    model = np.stack([np.full(wave.size, np.nan), _lines(wave, 10.0 - 2 * MAX_SHIFT_KMS)])
    shifted, shift = align_stellar(wave, flux, model, np.ones(wave.size, bool))
    assert np.all(np.isnan(shifted[0])) and shift[0] == 0.0
    # the true shift is outside the search: no correlation peak inside, no shift
    assert shift[1] == 0.0 and np.array_equal(shifted[1], model[1])


def test_fit_moves_a_misplaced_stellar_model():
    """A stellar model 120 km/s off (the network draws stars near rest): with the
    alignment the water column is recovered, without it the star's lines bias it."""
    wave = 10 ** np.arange(np.log10(5600.0), np.log10(7400.0), 6e-5)
    edges = bin_edges(wave)
    basis = telluric_basis(edges, "air", 3000.0)
    tau = basis.evaluate(np.array([[1.5, 1.5]]), np.array([0.0]))[0][0].sum(axis=0)
    star = _lines(wave, 120.0, seed=4, n=400)
    flux = star * np.exp(-tau)
    rng = np.random.default_rng(5)
    sigma = flux / 300
    flux = flux + sigma * rng.standard_normal(wave.size)
    rest = _lines(wave, 0.0, seed=4, n=400)
    args = (edges, "air", flux[None], sigma[None], np.ones((1, wave.size), bool), rest[None])
    aligned = fit_transmission(*args, resolving_power=3000.0)
    fixed = fit_transmission(*args, resolving_power=3000.0, align=False)
    assert abs(aligned.stellar_shift[0] - 120.0) < 3.0 and fixed.stellar_shift[0] == 0.0
    assert np.allclose(aligned.depths[0], 1.5, rtol=0.1)
    err_aligned = np.abs(aligned.depths[0] - 1.5).max()
    err_fixed = np.abs(fixed.depths[0] - 1.5).max()
    assert err_aligned < 0.5 * err_fixed
