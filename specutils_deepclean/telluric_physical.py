r"""``remove_tellurics(mode="physical")``: the stellar model, the fit and the division.

The stellar model of the fit (:mod:`specutils_deepclean.telluric_fit`) inside the
Stellar Karaoke model's range is the network's reconstruction of the star, moved to
the velocity where it matches the observation
(:func:`~specutils_deepclean.telluric_star.align_stellar`).  That reconstruction
misses a star's lines by about 2 % (r.m.s., MILES ``val`` stars, 6300-7400 A), and
inside the water bands a mismatch at the scale of the bands' lines passes for
water.  So the fit is made twice: the first fit's transmission divides the
observation, and in `STELLAR_REGION` the stellar model is replaced by its best
match, in weighted least squares, among combinations of the aligned reconstruction
and the principal components of MILES stars (the shipped ``miles-pca`` model, moved
to the star's velocity), times a smooth polynomial (`refine_stellar`); the second
fit, with that model, gives the transmission whose line part (`line_part`, as in
the other modes: the bands' smooth envelope stays with the continuum) divides the
spectrum.  Pixels
where the first transmission is below ``min_transmission`` are left out of the
least squares, so the components fit the star between and beside the deepest
lines, not the atmosphere.  The first fit runs two rounds of continuum, fit and
rejection, the second two more, started from the first's depths, velocity and
transmission: the mode then costs about 1.3 times the single three-round fit per
CPU-second (``benchmarks/results/physical_speed.json``), and on MILES ``val`` the
transmission is about as good as with three rounds each.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from astropy.utils.exceptions import AstropyUserWarning

from .models.velocity import _keys_weights
from .telluric_fit import _noise, fit_transmission
from .telluric_star import C_KMS, MAX_SHIFT_KMS, align_stellar
from .telluric_template import MOLECULES
from .tellurics import _split, _window_pixels

__all__ = ["STELLAR_BASIS", "STELLAR_REGION", "line_part", "refine_stellar", "remove_physical"]

#: The shipped model whose principal components `remove_tellurics` passes as ``basis``.
STELLAR_BASIS = "miles-pca"
#: Wavelengths (Angstrom, air) where `refine_stellar` corrects the stellar model: the
#: bands inside the Stellar Karaoke model's range (H2O 6500, O2 B, H2O 7200).
STELLAR_REGION = (6300.0, 7400.0)
#: Fewest usable pixels of a spectrum in the region for its model to be corrected.
_MIN_PIXELS = 100


def refine_stellar(
    centres_aa: np.ndarray,
    medium: str,
    flux: np.ndarray,
    sigma: np.ndarray,
    valid: np.ndarray,
    stellar: np.ndarray,
    transmission: np.ndarray,
    basis,
    *,
    region: tuple[float, float] = STELLAR_REGION,
    degree: int = 3,
    min_transmission: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The stellar model corrected by a linear basis of stellar spectra in ``region``.

    Per row, over the pixels of ``region`` (converted to ``medium``) inside the
    basis's range where ``transmission`` is at least ``min_transmission``, the
    observation divided by the transmission is fitted in weighted least squares
    (weights ``(T / sigma)^2``) by :math:`P (b_0 S + \sum_j c_j V_j)`: :math:`S` the
    stellar model, :math:`V_j` the basis's mean and components at the star's
    velocity, :math:`P` a Legendre polynomial of ``degree``, found first from
    :math:`S` alone.  The least squares run on the basis's own pixels, at rest: the
    observation, the weights and the model are moved there (cubic convolution; a
    weight is the smallest of the four pixels it is drawn from), the result back.

    Parameters
    ----------
    centres_aa : ndarray, shape (n_pix,)
        Pixel centres, Angstrom, increasing, in ``medium``.
    medium : {"air", "vacuum"}
    flux, sigma : ndarray, shape (n, n_pix)
        Observed flux and its standard deviation.
    valid : ndarray of bool, shape (n, n_pix)
    stellar : ndarray, shape (n, n_pix)
        Stellar model at the star's velocity (NaN where there is none).
    transmission : ndarray, shape (n, n_pix)
        A first fit's transmission.
    basis : `~specutils_deepclean.models.baselines.PCADenoiser`
        Mean and principal components of stellar spectra at rest (median-normalised).
    region : (float, float)
        Wavelength range, Angstrom, in the basis's medium.
    degree : int
        Degree of the polynomial.
    min_transmission : float
        Pixels absorbed more than this are left out of the least squares.

    Returns
    -------
    refined : ndarray, shape (n, n_pix)
        ``stellar`` with the region replaced (rows with fewer than 100 usable pixels
        there, and the pixels outside it, unchanged).
    velocity : ndarray, shape (n,)
        The star's velocity (km/s) at which the basis was placed, from the
        cross-correlation of its mean with the observation (0 where none).
    """
    from .spectra import _convert_medium

    stellar = np.asarray(stellar, dtype=float)
    refined = stellar.copy()
    n = stellar.shape[0]
    wave = _convert_medium(
        np.asarray(basis.wavelength.to_value("AA"), dtype=float), basis.medium, medium
    )
    lo, hi = _convert_medium(np.asarray(region, dtype=float), basis.medium, medium)
    pix = np.flatnonzero((centres_aa > max(lo, wave[0])) & (centres_aa < min(hi, wave[-1])))
    if pix.size < _MIN_PIXELS:
        return refined, np.zeros(n)
    vectors = np.vstack(
        [basis.mean.detach().cpu().numpy(), basis.components.detach().cpu().numpy()]
    ).astype(np.float32)
    clear = np.asarray(transmission) > 0.999
    mean = np.interp(centres_aa, wave, vectors[0], left=np.nan, right=np.nan)
    _, velocity = align_stellar(centres_aa, flux, np.broadcast_to(mean, flux.shape), valid & clear)
    # The least squares run on the basis's own pixels in the region, at rest: the
    # observation, the weights and the model are moved there (3 arrays per row, not
    # the basis's 41), the fitted model back.
    rest = np.flatnonzero((wave > lo) & (wave < hi))
    doppler = np.log1p(velocity / C_KMS)[:, None]
    # the observed pixels those can move to (align_stellar's largest shift)
    reach = 1.0 + MAX_SHIFT_KMS / C_KMS
    window = np.flatnonzero((centres_aa > wave[rest[0]] / reach - 5.0)
                            & (centres_aa < wave[rest[-1]] * reach + 5.0))
    to_obs = np.interp(np.log(wave[rest])[None, :] + doppler, np.log(centres_aa[window]),
                       np.arange(window.size), left=-np.inf, right=np.inf)
    trans, model = transmission[:, window], stellar[:, window]
    with np.errstate(divide="ignore", invalid="ignore"):
        target = flux[:, window] / trans
        weight = (trans / sigma[:, window]) ** 2
    use = valid[:, window] & (trans >= min_transmission) & np.isfinite(model)
    use &= np.isfinite(target) & np.isfinite(weight)
    target, weight = _cubic(np.where(use, target, 0.0), to_obs, np.where(use, weight, 0.0))
    model, _ = _cubic(np.where(np.isfinite(model), model, 0.0), to_obs)
    legendre = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, rest.size), degree).T
    poly = _least_squares(model[:, None, :] * legendre[None], target, weight) @ legendre
    fitted = _basis_fit(model, vectors[:, rest], poly, target, weight)
    to_rest = np.interp(np.log(centres_aa[pix])[None, :] - doppler, np.log(wave[rest]),
                        np.arange(rest.size), left=-np.inf, right=np.inf)
    back, inside = _cubic(fitted, to_rest, np.ones(fitted.shape))
    rows = (weight > 0).sum(axis=1) >= _MIN_PIXELS
    inside = (inside > 0) & rows[:, None] & np.isfinite(stellar[:, pix])
    refined[:, pix] = np.where(inside, back, stellar[:, pix])
    return refined, velocity


def _cubic(values: np.ndarray, position: np.ndarray, weight: np.ndarray | None = None):
    """Each row of ``values`` (n, n_grid) at fractional grid ``position`` (n, m): cubic
    convolution (Keys 1981, ``a = -1/2``), which unlike linear interpolation keeps a
    line of two pixels' width when it moves by part of a pixel.

    With ``weight`` (n, n_grid), also the smallest weight of the four pixels used
    (0 where ``position`` is not at least one pixel inside the grid)."""
    rows = np.arange(values.shape[0])[:, None]
    finite = np.isfinite(position)
    low = np.clip(np.floor(np.where(finite, position, 0.0)).astype(int), 1, values.shape[1] - 3)
    t = np.clip(np.where(finite, position, 0.0) - low, 0.0, 1.0)
    taps = (-1, 0, 1, 2)
    coefficients = _keys_weights(torch.from_numpy(t)).numpy().transpose(1, 0, 2)
    out = sum(c * values[rows, low + d] for c, d in zip(coefficients, taps, strict=True))
    if weight is None:
        return out, None
    inside = finite & (position >= 1.0) & (position <= values.shape[1] - 2.0)
    least = np.min([weight[rows, low + d] for d in taps], axis=0)
    return out, np.where(inside, least, 0.0)


def _basis_fit(model, vectors, poly, target, weight) -> np.ndarray:
    """Per row, ``poly (b model + c @ vectors)`` with ``b, c`` minimising
    ``sum weight (target - poly (b model + c @ vectors))^2``.

    The normal equations are built blockwise (the basis ``vectors`` (k, m) is the
    same for every row), in single precision for the largest block.
    """
    n = model.shape[0]
    k = vectors.shape[0]
    wp = weight * poly
    wp2 = (wp * poly).astype(np.float32)
    basis32 = vectors.astype(np.float32)
    hess = np.empty((n, k + 1, k + 1))
    hess[:, 1:, 1:] = (basis32[None] * wp2[:, None, :]) @ basis32.T
    hess[:, 0, 1:] = hess[:, 1:, 0] = (model * wp2) @ basis32.T
    hess[:, 0, 0] = np.einsum("nm,nm->n", model * model, wp2)
    grad = np.empty((n, k + 1))
    grad[:, 0] = np.einsum("nm,nm->n", model, wp * target)
    grad[:, 1:] = (wp * target) @ vectors.T
    coef = _ridge_solve(hess, grad)
    return poly * (coef[:, :1] * model + coef[:, 1:] @ vectors)


def _least_squares(design: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per row, the coefficients minimising ``sum weight (target - c @ design)^2``.

    ``design`` (n, p, m), ``target`` and ``weight`` (n, m); a tiny ridge keeps rows
    without data (all weights 0) solvable.
    """
    weighted = design * weight[:, None, :]
    hess = weighted @ design.transpose(0, 2, 1)
    return _ridge_solve(hess, (weighted @ target[..., None])[..., 0])


def _ridge_solve(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Per row, ``hess^-1 grad`` (n, p, p) and (n, p), with a ridge of 1e-9 of the
    trace (and a tiny floor) so rows without data stay solvable."""
    ridge = 1e-9 * np.trace(hess, axis1=1, axis2=2)[:, None, None] + 1e-300
    return np.linalg.solve(hess + ridge * np.eye(hess.shape[-1]), grad[..., None])[..., 0]


def _resolving_power(resolution, centre_aa: float) -> float | None:
    """A resolving power from ``resolution`` (R, or a FWHM Quantity), or None."""
    if resolution is None:
        return None
    import astropy.units as u

    if isinstance(resolution, u.Quantity):
        fwhm = resolution.to_value(u.AA, u.spectral())
        if not fwhm > 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        return float(centre_aa / fwhm)
    value = float(resolution)
    if not value > 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return value


def remove_physical(
    spectrum,
    net,
    *,
    medium: str | None = None,
    resolution=None,
    batch_size: int = 256,
    floor: float = 0.05,
    info: dict | None = None,
    basis=None,
):
    """``remove_tellurics(mode="physical")``: fit the molecular transmission and divide.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
    net : `~specutils_deepclean.models.karaoke.KaraokeVAE`
        Its reconstruction is the stellar model inside its range.
    medium : {"air", "vacuum"}, optional
    resolution : float or `~astropy.units.Quantity`, optional
        Resolving power, or a FWHM (converted at the spectrum's middle); None:
        ``meta["resolving_power"]`` if present, else fitted.
    batch_size : int
    floor : float
        Whole transmission below which a pixel is masked (saturated: no stellar flux
        gets through); it is returned unchanged.  The other pixels are divided by the
        transmission's line part (`line_part`).
    info : dict
        Entries for ``meta["deepclean"]``.
    basis : `~specutils_deepclean.models.baselines.PCADenoiser`, optional
        Stellar spectra that correct the reconstruction in `STELLAR_REGION` before a
        second fit (`refine_stellar`); None: one fit with the reconstruction.

    Returns
    -------
    `~specutils.Spectrum`
    """
    import astropy.units as u
    from specutils import Spectrum

    from .spectra import (
        ModelGrid,
        _axis_edges,
        _from_last,
        _input_medium,
        _input_variance,
        _to_last,
        grid_to_input,
        spectrum_like,
        to_model_grid,
    )

    info = dict(info or {})
    grid = ModelGrid(net.wavelength, net.medium)
    raw = _axis_edges(spectrum)
    source = _input_medium(spectrum, medium, grid)
    descending = raw[-1] < raw[0]
    edges = raw[::-1] if descending else raw
    axis = spectrum.spectral_axis_index
    flux = _to_last(spectrum.flux.value.astype(float), axis, descending)
    valid = np.isfinite(flux)
    if spectrum.mask is not None:
        mask = np.broadcast_to(np.asarray(spectrum.mask, dtype=bool), spectrum.shape)
        valid &= ~_to_last(mask, axis, descending)
    variance, _ = _input_variance(spectrum)
    sigma = None if variance is None else np.sqrt(_to_last(variance, axis, descending))
    stellar = None
    grid_edges = np.array([grid.edges[0], grid.edges[-1]])
    if source != grid.medium:
        from .spectra import _convert_medium

        grid_edges = _convert_medium(grid_edges, grid.medium, source)
    if edges[-1] > grid_edges[0] and edges[0] < grid_edges[-1]:
        with warnings.catch_warnings():  # a medium= contradicting the meta: named above
            warnings.filterwarnings("ignore", "medium=.* overrides", AstropyUserWarning)
            gs = to_model_grid(spectrum, grid, medium=source)
        recon = net.reconstruct(gs.flux, gs.missing, batch_size=batch_size)
        stellar = _to_last(grid_to_input(gs, recon)[0], axis, descending)
    if resolution is None and spectrum.meta and spectrum.meta.get("resolving_power") is not None:
        resolution = float(spectrum.meta["resolving_power"])
    power = _resolving_power(resolution, float(np.median(edges)))
    refine = basis is not None and stellar is not None
    # with a second fit to come, two rounds suffice for the first (as good on val)
    fit = fit_transmission(edges, source, flux, sigma, valid, stellar, resolving_power=power,
                           n_iter=2 if refine else 3)
    shift = fit.stellar_shift
    if refine:
        centres = 0.5 * (edges[1:] + edges[:-1])
        defined = np.isfinite(stellar)
        refined, _ = refine_stellar(
            centres, source, flux, _noise(flux, sigma, valid), valid,
            np.where(defined, fit.stellar, np.nan), fit.transmission, basis,
        )
        fit = fit_transmission(
            edges, source, flux, sigma, valid, np.where(defined, refined, np.nan),
            resolving_power=fit.resolving_power, align=False, start=fit, n_iter=2,
        )
    # saturated where the whole transmission is below the floor; divided by its line part
    below = fit.transmission < floor
    trans = line_part(fit.transmission, 0.5 * (edges[1:] + edges[:-1]))
    factor = np.where(below, 1.0, trans)
    out_flux = flux / factor
    mask_out = ~valid | below
    var_out = None
    if variance is not None:
        var_in = _to_last(variance, axis, descending)
        var_out = var_in / factor**2 + (out_flux * fit.sigma_ln_transmission) ** 2

    def back(values):
        return _from_last(values, axis, descending, spectrum.shape)

    unc = None
    if var_out is not None:
        from astropy.nddata import VarianceUncertainty

        unc = VarianceUncertainty(back(var_out), unit=spectrum.flux.unit**2)
        unc = _as_type(unc, type(spectrum.uncertainty))

    def as_spectrum(values):
        return Spectrum(
            flux=u.Quantity(back(values), u.dimensionless_unscaled),
            spectral_axis=spectrum.spectral_axis,
            spectral_axis_index=axis,
        )

    scalar = spectrum.flux.ndim == 1

    batch_shape = tuple(np.delete(np.array(spectrum.shape), axis))

    def per_row(values):
        values = np.asarray(values, dtype=float)
        return float(values[0]) if scalar else values.reshape(batch_shape).tolist()

    info.update(
        {
            "transmission": as_spectrum(trans),
            "transmission_molecules": {
                m: as_spectrum(fit.molecules[:, k]) for k, m in enumerate(MOLECULES)
            },
            "depths": {m: per_row(fit.depths[:, k]) for k, m in enumerate(MOLECULES)},
            "depth_uncertainty": {
                m: per_row(fit.depth_sigma[:, k]) for k, m in enumerate(MOLECULES)
            },
            "o2_airmass": per_row(fit.depths[:, MOLECULES.index("O2")]),
            "h2o_column": per_row(_water_per_airmass(fit.depths)),
            "telluric_velocity": per_row(fit.velocity),
            "stellar_model_shift": per_row(shift),
            "stellar_basis": None if basis is None else basis.name,
            "resolving_power": fit.resolving_power,
            "reduced_chi2": per_row(fit.chi2),
            "uncorrected_bands": per_row(fit.uncorrected_bands),
            "telluric_pixels": (
                np.count_nonzero(trans < 0.999, axis=1).reshape(batch_shape).tolist()
            ),
            "medium": source,
            "masked": {
                "transmission_below_floor": np.count_nonzero(below, axis=1)
                .reshape(batch_shape)
                .tolist()
            },
            "transmission_floor": floor,
            "below_floor": back(below),
        }
    )
    return spectrum_like(spectrum, back(out_flux) * spectrum.flux.unit, unc, back(mask_out), info)


def line_part(transmission: np.ndarray, centres_aa: np.ndarray) -> np.ndarray:
    """The line part of a fitted transmission, as everywhere in the package.

    :func:`~specutils_deepclean.tellurics.split_transmission` on the spectrum's own
    pixels, run only over the rows and the stretch of pixels where ``transmission``
    is below 1 (with a margin of two filter windows: beyond it the split of a
    transmission of 1 is 1).  At the spectrum's resolution the blended lines of a
    broad band (H2O 9400, the O2 A band's P branch) form a smooth envelope that the
    split counts as continuum, like the Rayleigh and ozone absorption: it is left in
    the corrected spectrum, which is the star times the atmosphere's smooth
    continuum, as in the ``divide`` and ``reconstruct`` modes.

    Parameters
    ----------
    transmission : ndarray, shape (n, n_pix)
    centres_aa : ndarray, shape (n_pix,)
        Pixel centres, Angstrom, increasing.

    Returns
    -------
    ndarray, shape (n, n_pix)
        ``transmission`` over its smooth continuum (at most 1).
    """
    out = np.ones_like(transmission)
    rows = np.flatnonzero((transmission < 1.0).any(axis=1))
    if rows.size == 0:
        return out
    absorbs = np.flatnonzero((transmission[rows] < 1.0).any(axis=0))
    # the window in pixels from the whole grid (its median step), as for the full rows
    size = _window_pixels(centres_aa, 55.0)
    lo, hi = max(absorbs[0] - 2 * size, 0), min(absorbs[-1] + 2 * size + 1, centres_aa.size)
    part = _split(transmission[rows, lo:hi], size)[1]
    out[rows, lo:hi] = part
    return out


def _water_per_airmass(depths: np.ndarray) -> np.ndarray:
    """The water column over the O2 column (airmass); NaN where O2 is not detected."""
    o2 = depths[:, MOLECULES.index("O2")]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(o2 > 0, depths[:, MOLECULES.index("H2O")] / o2, np.nan)


def _as_type(variance, kind):
    """A VarianceUncertainty converted to the input's uncertainty class."""
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    if kind is StdDevUncertainty:
        return StdDevUncertainty(np.sqrt(variance.array), unit=variance.unit**0.5)
    if kind is InverseVariance:
        with np.errstate(divide="ignore"):
            return InverseVariance(1.0 / variance.array, unit=variance.unit**-1)
    return VarianceUncertainty(variance.array, unit=variance.unit)
