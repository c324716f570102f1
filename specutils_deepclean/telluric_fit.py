r"""Fit of the per-molecule atmospheric transmission to observed spectra.

The model of each observed spectrum (one row of a batch, one exposure) is

.. math::

    y(\lambda) = S(\lambda)\, C(\lambda) \prod_s T_s(\lambda (1 - v/c);\, a_s, R)

with :math:`T_s` the transmission of molecule :math:`s`
(:mod:`specutils_deepclean.telluric_template`) for a column :math:`a_s` times the
template's at airmass 1, convolved to the resolving power :math:`R` and averaged over
each pixel; :math:`v` a velocity of the atmosphere relative to the spectrum's frame
(zero in the topocentric frame; the barycentric correction of a survey spectrum, up
to about 30 km/s, otherwise), :math:`S` the stellar model and :math:`C` a smooth
continuum.  Inside the Stellar Karaoke model's range :math:`S` is its reconstruction
of the star (:mod:`specutils_deepclean.models.karaoke`), moved to the velocity where
it matches the observation (:mod:`specutils_deepclean.telluric_star`: the network
draws the star near its rest wavelengths); outside it (and for spectra
that do not reach it) :math:`S = 1` and :math:`C` alone, a Gaussian-smoothed continuum
that iteratively rejects stellar features, is the star.

For each spectrum :math:`a_{\rm H_2O}`, :math:`a_{\rm O_2}` and :math:`v` are fitted by
Gauss-Newton on the flux (pixels where the atmosphere absorbs, weighted by their
inverse variance plus a model error), alternating with :math:`C`; :math:`R` is given or chosen from
a grid by the smallest :math:`\chi^2`.  Each molecule has one depth for all its bands,
so the transmission is deep only where the atmosphere has lines: a stellar line
(Na D, H\ :math:`\alpha`, Mg b, Ca H and K) can change the fit only through its
overlap with telluric lines, never become part of the transmission.  The velocity
has a Gaussian prior (`VELOCITY_PRIOR_KMS`).

Two tests keep the correction to what the data show.  A molecule whose column is
below `MIN_SIGNIFICANCE` standard deviations is set to 0: the stellar model's
mismatch alone buys a small, always positive, column on a spectrum without
tellurics.  A band (the stretches between `BAND_CUTS`) whose absorption has a
squared signal-to-noise ratio below `MIN_BAND_CHI2` is left uncorrected: at low
S/N, dividing a weak band even by the true transmission raises its noise more than
it removes absorption.

The non-linearity of unresolved saturated lines is kept: the template is convolved
at a grid of column powers (`POWERS`) and velocities (`VELOCITIES`) and interpolated
between them.  Molecules are convolved separately (the product of the convolved
transmissions stands for the convolved product; their bands barely overlap).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, uniform_filter1d

from .telluric_star import align_stellar
from .telluric_template import MOLECULES, MolecularTemplate, load_molecular_template

__all__ = [
    "BAND_CUTS",
    "MIN_BAND_CHI2",
    "MIN_SIGNIFICANCE",
    "POWERS",
    "VELOCITIES",
    "VELOCITY_PRIOR_KMS",
    "RESOLVING_POWERS",
    "TelluricBasis",
    "TelluricFit",
    "telluric_basis",
    "fit_transmission",
]

C_KMS = 299792.458
#: Column powers (times the template's at airmass 1) at which the template is convolved.
POWERS = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0])
#: Velocities (km/s) at which the template is shifted; the fit interpolates between them.
VELOCITIES = np.arange(-60.0, 60.01, 5.0)
#: Candidate resolving powers when the resolution is fitted.
RESOLVING_POWERS = tuple(int(round(500 * 2 ** (k / 4))) for k in range(24))
#: Relative model error added to the noise in the weights (stellar model mismatch).
MODEL_ERROR = 0.005
#: Pixels where the fitted transmission's line optical depth (largest column) is above this
#: are fitted.
_FIT_TAU = 1e-2

#: Optical depth scale of the continuum weights ``exp(-tau / _CLEAR_TAU)``.
_CLEAR_TAU = 0.02
#: Pixels clearer than this (continuum weight) are rejected at ``clip``, the others at
#: ``clip * _BAND_CLIP``.
_REJECT_CLEAR = 0.5
_BAND_CLIP = 3.0

#: Standard deviation (km/s) of the Gaussian prior on the atmosphere's velocity: the
#: barycentric correction of a survey spectrum reaches 30 km/s, but without it a
#: spectrum with no telluric line would find one in its noise somewhere in +-60 km/s.
VELOCITY_PRIOR_KMS = 20.0
#: A molecule whose fitted column is below this many standard deviations is set to 0.
MIN_SIGNIFICANCE = 3.0
#: A band whose absorption's squared signal-to-noise ratio is below this stays uncorrected.
MIN_BAND_CHI2 = 2.0
#: Wavelengths (Angstrom) between the bands: each stretch between two is one band for
#: the per-band test (H2O 5900, O2 gamma, H2O 6500, O2 B, H2O 7200, O2 A, H2O 8200,
#: H2O 9400); they fall where the atmosphere is clear, in air or vacuum alike.
BAND_CUTS = (6100.0, 6400.0, 6800.0, 7000.0, 7500.0, 7800.0, 8600.0)

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class TelluricBasis:
    """Effective optical depths of each molecule on one pixel grid.

    Attributes
    ----------
    centres : ndarray, shape (n_pix,)
        Pixel centres, Angstrom, in the spectrum's medium.
    tau : ndarray, shape (n_velocity, n_molecule, n_power, n_pix)
        ``-ln`` of the pixel-averaged, convolved transmission ``exp(-a tau_s)`` for
        each velocity of `VELOCITIES` and column of `POWERS`.
    covered : ndarray of bool, shape (n_pix,)
        Pixels inside the template's range (elsewhere ``tau`` is 0).
    resolving_power : float
    """

    centres: np.ndarray
    tau: np.ndarray
    covered: np.ndarray
    resolving_power: float

    def subset(self, pixels) -> TelluricBasis:
        """The basis on a subset of its pixels (cached per subset)."""
        key = np.asarray(pixels).tobytes()
        cache = self.__dict__.setdefault("_subsets", {})
        if key not in cache:
            cache[key] = self._subset(pixels)
        return cache[key]

    def _subset(self, pixels) -> TelluricBasis:
        return TelluricBasis(
            self.centres[pixels], np.ascontiguousarray(self.tau[..., pixels]),
            self.covered[pixels], self.resolving_power,
        )

    def evaluate(
        self, depths: np.ndarray, velocity: np.ndarray, pixels=None, derivatives: bool = True
    ):
        """Optical depths and their derivatives at per-row depths and velocity.

        Parameters
        ----------
        depths : ndarray, shape (n, n_molecule)
        velocity : ndarray, shape (n,)
        pixels : index array, optional
            Subset of pixels.
        derivatives : bool
            Whether to compute the derivatives (else they are None).

        Returns
        -------
        tau, d_tau_d_depth, d_tau_d_velocity : ndarray, shape (n, n_molecule, n_pix)
        """
        table = self.tau if pixels is None else self.tau[..., pixels]
        n_mol = table.shape[1]
        x = (np.clip(velocity, VELOCITIES[0], VELOCITIES[-1]) - VELOCITIES[0]) / (
            VELOCITIES[1] - VELOCITIES[0]
        )
        iv = np.clip(np.floor(x).astype(int), 0, VELOCITIES.size - 2)
        fv = (x - iv).astype(np.float32)[:, None, None]
        a = np.clip(depths, POWERS[0], POWERS[-1])
        ik = np.clip(np.searchsorted(POWERS, a, side="right") - 1, 0, POWERS.size - 2)
        step = (POWERS[ik + 1] - POWERS[ik])[:, :, None]
        fa = ((a - POWERS[ik])[:, :, None] / step).astype(np.float32)
        mol = np.arange(n_mol)[None, :]
        lo_v, hi_v = iv[:, None], iv[:, None] + 1
        t00, t01 = table[lo_v, mol, ik], table[lo_v, mol, ik + 1]
        t10, t11 = table[hi_v, mol, ik], table[hi_v, mol, ik + 1]
        at_lo = t00 + fa * (t01 - t00)
        at_hi = t10 + fa * (t11 - t10)
        tau = at_lo + fv * (at_hi - at_lo)
        if not derivatives:
            return tau, None, None
        d_depth = ((1 - fv) * (t01 - t00) + fv * (t11 - t10)) / step.astype(np.float32)
        d_velocity = (at_hi - at_lo) / np.float32(VELOCITIES[1] - VELOCITIES[0])
        return tau, d_depth, d_velocity


def _template_in_medium(template: MolecularTemplate, medium: str) -> np.ndarray:
    wave = template.wavelength
    if medium == template.medium:
        return wave
    from astropy import units as u
    from specutils.utils.wcs_utils import air_to_vac, vac_to_air

    convert = vac_to_air if medium == "air" else air_to_vac
    return convert(wave * u.AA).to_value(u.AA)


def telluric_basis(
    edges_aa: np.ndarray,
    medium: str,
    resolving_power: float,
    template: MolecularTemplate | None = None,
) -> TelluricBasis:
    """The template convolved to ``resolving_power`` and averaged over a spectrum's pixels.

    Cached per grid, medium, resolving power and template.

    Parameters
    ----------
    edges_aa : ndarray, shape (n_pix + 1,)
        Pixel edges, Angstrom, increasing, in ``medium``.
    medium : {"air", "vacuum"}
    resolving_power : float
        Resolving power of the spectrum (Gaussian line spread function of FWHM
        ``lambda / R``).
    template : MolecularTemplate, optional
        Default: the shipped one.

    Returns
    -------
    TelluricBasis
    """
    from .resample import bin_edges, rebin_matrix

    template = load_molecular_template() if template is None else template
    edges_aa = np.asarray(edges_aa, dtype=float)
    resolving_power = float(resolving_power)
    if not resolving_power > 0:
        raise ValueError(f"resolving_power must be positive, got {resolving_power}")
    key = (edges_aa.tobytes(), medium, resolving_power, id(template))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    # the entry holds its template, so its id cannot pass to another object meanwhile
    if cached is not None and cached[0] is template:
        return cached[1]
    centres = 0.5 * (edges_aa[1:] + edges_aa[:-1])
    wave = _template_in_medium(template, medium)
    margin = 1 + 80.0 / C_KMS + 5.0 / resolving_power
    keep = (wave > edges_aa[0] / margin) & (wave < edges_aa[-1] * margin)
    n_v, n_m, n_k = VELOCITIES.size, len(MOLECULES), POWERS.size
    tau = np.zeros((n_v, n_m, n_k, centres.size))
    covered = (centres > wave[0]) & (centres < wave[-1])
    if keep.sum() > 10:
        sub = wave[keep]
        sigma_pix = template.resolving_power / (resolving_power * 2.0 * np.sqrt(2.0 * np.log(2.0)))
        stack = np.empty((n_m * n_k, sub.size))
        for m, name in enumerate(MOLECULES):
            depth = template.optical_depth[name][keep]
            for k, power in enumerate(POWERS):
                stack[m * n_k + k] = gaussian_filter1d(
                    np.exp(-power * depth), sigma_pix, mode="nearest"
                )
        sub_edges = bin_edges(sub)
        width = np.diff(edges_aa)
        for j, v in enumerate(VELOCITIES):
            matrix = rebin_matrix(sub_edges * (1 + v / C_KMS), edges_aa)
            cover = np.asarray(matrix.sum(axis=1)).ravel()
            full = cover > 0.999 * width
            mean = (matrix @ stack.T) / np.where(full, cover, 1.0)[:, None]
            mean = np.where(full[:, None], mean, 1.0)
            tau[j] = -np.log(np.clip(mean.T, 1e-6, 1.0)).reshape(n_m, n_k, -1)
    basis = TelluricBasis(centres, tau.astype(np.float32), covered, resolving_power)
    with _CACHE_LOCK:
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[key] = (template, basis)
    return basis


@dataclass
class TelluricFit:
    """The fitted atmosphere of each spectrum of a batch (pixels in increasing wavelength).

    Attributes
    ----------
    depths : ndarray, shape (n, n_molecule)
        Column of each molecule (`~specutils_deepclean.telluric_template.MOLECULES`
        order) relative to the template's at airmass 1: ``O2`` is an airmass proxy,
        ``H2O`` the slant water column (airmass times the water column relative
        to the template's).
    depth_sigma : ndarray, shape (n, n_molecule)
    velocity, velocity_sigma : ndarray, shape (n,)
        Velocity of the telluric lines in the spectrum's frame, km/s.
    resolving_power : float
    molecules : ndarray, shape (n, n_molecule, n_pix)
        Each molecule's transmission.
    transmission : ndarray, shape (n, n_pix)
        Their product.
    sigma_ln_transmission : ndarray, shape (n, n_pix)
        Standard deviation of ``ln(transmission)`` from the depths' and velocity's
        covariance.
    stellar : ndarray, shape (n, n_pix)
        The fitted telluric-free spectrum ``S * C`` (NaN where not defined).
    rejected : ndarray of bool, shape (n, n_pix)
        Pixels left out of the continuum and the fit (stellar features, outliers).
    chi2 : ndarray, shape (n,)
        Reduced chi-square over the fitted pixels.
    fitted : ndarray of bool, shape (n,)
        Spectra with enough telluric pixels to fit (the others get ``T = 1``).
    uncorrected_bands : ndarray of int, shape (n,)
        Bands (stretches between `BAND_CUTS`) with some absorption weaker than
        their noise (``min_band_chi2``): there ``T = 1``.
    stellar_shift : ndarray, shape (n,)
        Velocity (km/s) by which the stellar model was moved to match the
        observation (0 where it was not).
    """

    depths: np.ndarray
    depth_sigma: np.ndarray
    velocity: np.ndarray
    velocity_sigma: np.ndarray
    resolving_power: float
    molecules: np.ndarray
    transmission: np.ndarray
    sigma_ln_transmission: np.ndarray
    stellar: np.ndarray
    rejected: np.ndarray
    chi2: np.ndarray
    fitted: np.ndarray
    uncorrected_bands: np.ndarray
    stellar_shift: np.ndarray


def _blur(values, sigma_pix):
    """Three running means: a Gaussian of ``sigma_pix`` to a few per cent, at O(n) cost."""
    width = max(1, int(round(np.sqrt(4.0 * sigma_pix**2 + 1.0))))
    for _ in range(3):
        values = uniform_filter1d(values, width, axis=-1, mode="nearest")
    return values


def _smooth(values, weight, sigma_pix):
    num = _blur(np.where(weight > 0, values * weight, 0.0), sigma_pix)
    den = _blur(weight, sigma_pix)
    out = np.full_like(values, np.nan)
    np.divide(num, den, out=out, where=den > 1e-4)
    return out


def _fill(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Fill non-finite values inside ``where`` by linear interpolation per row."""
    out = values.copy()
    x = np.arange(values.shape[1])
    holes = (where & ~np.isfinite(values)).any(axis=1)
    for i in np.flatnonzero(holes):
        good = np.isfinite(values[i]) & where[i]
        if good.any():
            out[i] = np.where(where[i] & ~good, np.interp(x, x[good], values[i, good]), out[i])
    return out


def _continuum(ratio, usable, segments, sigma_pix):
    """Smooth ``ratio`` over ``usable`` pixels, separately in each segment."""
    out = np.full_like(ratio, np.nan)
    for seg, width in zip(segments, sigma_pix, strict=True):
        if not seg.any():
            continue
        weight = np.where(seg, usable, 0.0)
        smooth = _smooth(np.where(weight > 0, ratio, 0.0), weight, width)
        out = np.where(seg, smooth, out)
    return _fill(out, np.any(segments, axis=0))


def _noise(flux, sigma, valid):
    """The given sigma; for rows without one, a robust estimate from the point-to-point
    scatter of the log flux."""
    if sigma is None:
        sigma = np.full(flux.shape, np.nan)
    with np.errstate(invalid="ignore"):
        sigma = np.where(valid & np.isfinite(sigma) & (sigma > 0), sigma, np.nan)
    missing = ~np.isfinite(sigma).any(axis=1)
    if missing.any():  # the estimate only for the rows that need it
        with np.errstate(divide="ignore", invalid="ignore"):
            log = np.where(valid[missing] & (flux[missing] > 0), np.log(flux[missing]), np.nan)
        relative = 1.4826 * _row_nanmedian(np.abs(np.diff(log, axis=1))) / np.sqrt(2.0)
        sigma[missing] = np.abs(flux[missing]) * np.nan_to_num(relative, nan=0.01)[:, None]
    return sigma


def _row_nanmedian(values: np.ndarray) -> np.ndarray:
    """Median of the finite values of each row; NaN for a row without any (no warning)."""
    out = np.full(values.shape[0], np.nan)
    finite = np.isfinite(values).any(axis=1)
    if finite.any():
        out[finite] = np.nanmedian(values[finite], axis=1)
    return out


def _model_jacobian(basis, depths, velocity, base):
    """Model ``base * exp(-sum tau)`` and its derivatives in (depths, velocity)."""
    tau, d_a, d_v = basis.evaluate(depths, velocity)
    model = base * np.exp(-tau.sum(axis=1))
    jac = -model[:, None, :] * np.concatenate([d_a, d_v.sum(axis=1, keepdims=True)], axis=1)
    return model, jac


def _solve(jac, weight, err, velocity=None):
    """Gauss-Newton step; with ``velocity`` (the last parameter), its Gaussian prior
    (`VELOCITY_PRIOR_KMS`) is added."""
    hess = np.einsum("npk,nqk,nk->npq", jac, jac, weight)
    grad = np.einsum("npk,nk,nk->np", jac, weight, err)
    if velocity is not None:
        hess[:, -1, -1] += VELOCITY_PRIOR_KMS**-2
        grad[:, -1] += velocity / VELOCITY_PRIOR_KMS**2
    damp = 1e-6 * np.trace(hess, axis1=1, axis2=2)[:, None, None] + 1e-30
    hess = hess + damp * np.eye(jac.shape[1])[None]
    return -np.linalg.solve(hess, grad[..., None])[..., 0], hess


def _gauss_newton(basis, depths, velocity, obs, base, weight, n_step=3):
    """Minimise sum w (obs - base exp(-sum_m tau_m(a, v)))^2 over (a, v) per row.

    In flux, not in its logarithm: unbiased at low S/N, where the logarithm of a noisy
    flux (and the pixels below zero it has to leave out) would pull the depths.
    """
    n_mol = depths.shape[1]
    hess = None
    for _ in range(n_step):
        model, jac = _model_jacobian(basis, depths, velocity, base)
        delta, hess = _solve(jac, weight, model - obs, velocity)
        depths = np.clip(depths + delta[:, :n_mol], POWERS[0], POWERS[-1])
        velocity = np.clip(velocity + delta[:, n_mol], VELOCITIES[0], VELOCITIES[-1])
    tau = basis.evaluate(depths, velocity, derivatives=False)[0]
    chi2 = np.einsum("nk,nk->n", weight, (base * np.exp(-tau.sum(axis=1)) - obs) ** 2)
    return depths, velocity, np.linalg.inv(hess), chi2


def _velocity_start(basis, depths, obs, base, weight):
    """Per row, the velocity node with the smallest chi2 (depths refitted linearly)."""
    n, n_mol = depths.shape
    best = np.full(n, np.inf)
    start = np.zeros(n)
    for v in VELOCITIES[::3]:
        velocity = np.full(n, v)
        model, jac = _model_jacobian(basis, depths, velocity, base)
        err = model - obs
        delta, _ = _solve(jac[:, :n_mol], weight, err)
        err = err + np.einsum("npk,np->nk", jac[:, :n_mol], delta)
        chi2 = np.einsum("nk,nk->n", weight, err**2) + (v / VELOCITY_PRIOR_KMS) ** 2
        better = chi2 < best
        best[better], start[better] = chi2[better], v
    return start


def _active(basis: TelluricBasis) -> np.ndarray:
    """Pixels where the largest column of `POWERS` has an optical depth above 1e-4."""
    cache = basis.__dict__.setdefault("_subsets", {})
    if "active" not in cache:
        cache["active"] = np.flatnonzero(basis.tau[:, :, -1].max(axis=(0, 1)) > 1e-4)
    return cache["active"]


def _transmission(basis, depths, velocity, active, shape):
    """The total transmission, computed on the ``active`` pixels only (1 elsewhere)."""
    trans = np.ones(shape)
    if active.size:
        depth = basis.evaluate(depths, velocity, derivatives=False)[0].sum(axis=1)
        trans[:, active] = np.exp(-depth)
    return trans


def _fit_once(basis, flux, noise, valid, stellar, n_iter, clip, smooth_aa, start=None):
    """Continuum, fit and rejection rounds; ``start``: (depths, velocity) to start from
    instead of unit depths and the velocity search."""
    n, n_pix = flux.shape
    n_mol = len(MOLECULES)
    star_seg = np.isfinite(stellar)
    base = np.where(star_seg, stellar, 1.0)
    segments = np.stack([star_seg, ~star_seg], axis=0)
    segments = np.broadcast_to(segments, (2, n, n_pix))
    step = float(np.median(np.diff(basis.centres)))
    widths = [smooth_aa[0] / step, smooth_aa[1] / step]
    strongest = basis.tau[VELOCITIES.size // 2, :, np.searchsorted(POWERS, 3.0)].sum(axis=0)
    pixels = np.flatnonzero(strongest > _FIT_TAU)
    active = _active(basis)
    on_active, on_fit = basis.subset(active), basis.subset(pixels)
    # The continuum leans on pixels the atmosphere leaves clear even at a large column,
    # so that it cannot take up the broad envelope of a band.
    clear = np.exp(-strongest / _CLEAR_TAU)[None, :]
    depths = np.ones((n, n_mol)) if start is None else np.where(start[0] > 0, start[0], 1.0)
    velocity = np.zeros(n) if start is None else np.asarray(start[1], dtype=float).copy()
    rejected = np.zeros((n, n_pix), dtype=bool)
    usable = valid & np.isfinite(noise)
    cov = np.zeros((n, n_mol + 1, n_mol + 1))
    chi2 = np.zeros(n)
    n_used = np.zeros(n)
    fitted = np.zeros(n, dtype=bool)
    # the first continuum: no absorption assumed, or the starting fit's
    trans = np.ones((n, n_pix))
    if start is not None:
        trans = _transmission(on_active, start[0], velocity, active, (n, n_pix))
    for it in range(n_iter):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = flux / (base * trans)
        cont = _continuum(ratio, np.where(usable & ~rejected, clear, 0.0), segments, widths)
        model0 = base * cont
        if pixels.size:
            sub = np.s_[:, pixels]
            expected = model0[sub] * trans[sub]
            sig = np.sqrt(noise[sub] ** 2 + (MODEL_ERROR * expected) ** 2)
            use = usable[sub] & ~rejected[sub] & (trans[sub] > 0.1) & (model0[sub] > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                weight = np.nan_to_num(np.where(use, 1.0 / sig**2, 0.0))
            obs = np.where(use, flux[sub], 0.0)
            base_fit = np.where(use, model0[sub], 0.0)
            n_used = (weight > 0).sum(axis=1)
            fitted = n_used >= 10
            if it == 0 and start is None:
                velocity = _velocity_start(on_fit, depths, obs, base_fit, weight)
            depths, velocity, cov, chi2 = _gauss_newton(
                on_fit, depths, velocity, obs, base_fit, weight
            )
            depths[~fitted] = 0.0
        trans = _transmission(on_active, depths, velocity, active, (n, n_pix))
        model = model0 * trans
        sig_all = np.sqrt(noise**2 + (MODEL_ERROR * np.abs(model)) ** 2)
        with np.errstate(invalid="ignore"):
            z = np.where(usable, (flux - model) / sig_all, 0.0)
            z = np.nan_to_num(z)
        scale = 1.4826 * np.median(np.abs(np.where(usable, z, np.nan)), axis=1, keepdims=True)
        scale = np.where(np.isfinite(scale), np.maximum(scale, 1.0), 1.0)
        # Inside the bands only gross outliers are rejected: a wrong first depth must
        # not throw out the pixels that tell the right one.
        limit = clip * scale * np.where(clear > _REJECT_CLEAR, 1.0, _BAND_CLIP)
        rejected = usable & (np.abs(z) > limit)
    return depths, velocity, cov, chi2 / np.maximum(n_used - n_mol - 1, 1), model0, rejected, fitted


def fit_transmission(
    edges_aa: np.ndarray,
    medium: str,
    flux: np.ndarray,
    sigma: np.ndarray | None,
    valid: np.ndarray,
    stellar: np.ndarray | None = None,
    *,
    resolving_power: float | None = None,
    template: MolecularTemplate | None = None,
    n_iter: int = 3,
    clip: float = 3.0,
    smooth_aa: tuple[float, float] = (60.0, 40.0),
    min_significance: float = MIN_SIGNIFICANCE,
    min_band_chi2: float = MIN_BAND_CHI2,
    align: bool = True,
    start: TelluricFit | None = None,
) -> TelluricFit:
    """Fit the molecular depths, the velocity and (optionally) the resolution per spectrum.

    Two tests keep the correction to what the data show: a molecule whose column is
    below ``min_significance`` standard deviations gets column 0, and a band (the
    stretches between `BAND_CUTS`) whose absorption has a squared signal-to-noise
    ratio below ``min_band_chi2`` is left uncorrected (``T = 1``): at low S/N a weak band
    divided by even the true transmission comes out worse than it went in.

    Parameters
    ----------
    edges_aa : ndarray, shape (n_pix + 1,)
        Pixel edges, Angstrom, increasing, in ``medium``.
    medium : {"air", "vacuum"}
    flux : ndarray, shape (n, n_pix)
        Observed flux (any positive scale).
    sigma : ndarray, shape (n, n_pix) or None
        Its standard deviation; None: estimated from the point-to-point scatter.
    valid : ndarray of bool, shape (n, n_pix)
    stellar : ndarray, shape (n, n_pix), optional
        Stellar model (any scale, e.g. a VAE reconstruction); NaN where there is none
        (there a smooth continuum is the star).
    resolving_power : float, optional
        Resolving power of the spectra; None: chosen from `RESOLVING_POWERS` (those
        the sampling can carry) by the smallest chi-square.
    template : MolecularTemplate, optional
        Default: the shipped one.
    n_iter : int
        Continuum / fit / rejection rounds.
    clip : float
        Rejection threshold, in units of the row's robust residual scatter.
    smooth_aa : (float, float)
        Gaussian sigma (Angstrom) of the continuum with and without a stellar model.
    min_significance : float
        Smallest column, in standard deviations, that is kept.
    min_band_chi2 : float
        Smallest squared signal-to-noise ratio of a band's absorption for which it
        is corrected.
    align : bool
        Move the stellar model to the velocity where it matches the observation
        best (:func:`~specutils_deepclean.telluric_star.align_stellar`) before the fit.
    start : TelluricFit, optional
        A fit of the same spectra whose depths (unit depth where it found none) and
        velocities start this one, in place of the search over `VELOCITIES`.

    Returns
    -------
    TelluricFit
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=float))
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), flux.shape) & np.isfinite(flux)
    edges_aa = np.asarray(edges_aa, dtype=float)
    if edges_aa.size != flux.shape[1] + 1:
        raise ValueError(f"edges_aa has {edges_aa.size} values for {flux.shape[1]} pixels")
    stellar = (
        np.full(flux.shape, np.nan)
        if stellar is None
        else np.broadcast_to(np.asarray(stellar, dtype=float), flux.shape)
    )
    noise = _noise(flux, None if sigma is None else np.asarray(sigma, dtype=float), valid)
    stellar_shift = np.zeros(flux.shape[0])
    if align and np.isfinite(stellar).any():
        clear = _clear_pixels(edges_aa, medium, resolving_power, template)
        centres = 0.5 * (edges_aa[1:] + edges_aa[:-1])
        stellar, stellar_shift = align_stellar(centres, flux, stellar, valid & clear[None, :])
    if resolving_power is None:
        resolving_power = _choose_resolution(
            edges_aa, medium, flux, noise, valid, stellar, template, clip, smooth_aa
        )
    basis = telluric_basis(edges_aa, medium, resolving_power, template)
    depths, velocity, cov, chi2, model0, rejected, fitted = _fit_once(
        basis, flux, noise, valid, stellar, n_iter, clip, smooth_aa,
        None if start is None else (start.depths, start.velocity),
    )
    cov = cov * np.maximum(chi2, 1.0)[:, None, None]
    n_mol = len(MOLECULES)
    depth_sigma = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2)[:, :n_mol], 0))
    # A column the data do not detect is no column: the stellar model's mismatch
    # alone can buy a small one (always positive: depths cannot be negative).
    depths = np.where(depths > min_significance * depth_sigma, depths, 0.0)
    # no absorption, no velocity of it
    velocity = np.where(depths.any(axis=1), velocity, 0.0)
    n, n_pix = flux.shape
    active = _active(basis)
    tau = np.zeros((n, n_mol, n_pix))
    var = np.zeros((n, n_pix))
    if active.size:
        t_a, d_a, d_v = (x.astype(float) for x in basis.subset(active).evaluate(depths, velocity))
        jac = np.concatenate([d_a, d_v.sum(axis=1, keepdims=True)], axis=1)
        tau[:, :, active] = t_a
        var[:, active] = np.einsum("npk,npq,nqk->nk", jac, cov, jac)
    off = _undetected_bands(
        basis.centres, flux, noise, valid & ~rejected, model0, np.exp(-tau.sum(axis=1)),
        min_band_chi2,
    )
    tau[off[:, None, :].repeat(n_mol, axis=1)] = 0.0
    var[off] = 0.0
    return TelluricFit(
        depths=depths,
        depth_sigma=depth_sigma,
        velocity=velocity,
        velocity_sigma=np.sqrt(np.maximum(cov[:, n_mol, n_mol], 0)),
        resolving_power=float(resolving_power),
        molecules=np.exp(-tau),
        transmission=np.exp(-tau.sum(axis=1)),
        sigma_ln_transmission=np.sqrt(np.maximum(var, 0)),
        stellar=model0,
        rejected=rejected,
        chi2=chi2,
        fitted=fitted,
        uncorrected_bands=_count_bands(basis.centres, off),
        stellar_shift=stellar_shift,
    )


def _clear_pixels(edges_aa, medium, resolving_power, template) -> np.ndarray:
    """Pixels the atmosphere leaves clear (optical depth below `_FIT_TAU` at 3 airmasses);
    at the candidate resolving power nearest the sampling's limit if none is given."""
    if resolving_power is None:
        centres = 0.5 * (edges_aa[1:] + edges_aa[:-1])
        nyquist = float(np.median(centres / (2.0 * np.diff(edges_aa))))
        resolving_power = min(RESOLVING_POWERS, key=lambda r: abs(np.log(r / nyquist)))
    basis = telluric_basis(edges_aa, medium, resolving_power, template)
    return basis.tau[VELOCITIES.size // 2, :, np.searchsorted(POWERS, 3.0)].sum(axis=0) < _FIT_TAU


def _band_index(centres: np.ndarray) -> np.ndarray:
    """Index of each pixel's band: the stretches between `BAND_CUTS`."""
    return np.searchsorted(np.asarray(BAND_CUTS), centres)


def _undetected_bands(centres, flux, noise, usable, model0, trans, min_chi2):
    """Pixels of the bands whose absorption is weaker than their noise, per row.

    For each band with some absorption (``T < 0.999``), the chi-square that tells
    the fitted absorption from none, ``sum((model0 (1 - T))^2 / sigma^2)`` (``sigma``:
    the noise plus `MODEL_ERROR`), is the band's squared signal-to-noise ratio:
    below ``min_chi2`` the band is weaker than its noise, and dividing by it adds
    the noise it amplifies more than it removes.  (The data's own chi-square gain
    would also count the stellar model's mismatch, which H alpha, inside the 6500 A
    band, dominates.)
    """
    band = _band_index(centres)
    sig2 = noise**2 + (MODEL_ERROR * np.abs(model0 * trans)) ** 2
    use = usable & np.isfinite(model0) & np.isfinite(sig2) & (sig2 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(use, (model0 * (1.0 - trans)) ** 2 / sig2, 0.0)
    off = np.zeros(flux.shape, dtype=bool)
    absorbs = trans < 0.999
    for b in np.unique(band[absorbs.any(axis=0)]):
        pix = band == b
        fails = absorbs[:, pix].any(axis=1) & (gain[:, pix].sum(axis=1) < min_chi2)
        off[np.ix_(fails, pix)] = True
    return off


def _count_bands(centres, off):
    """Per row, the number of bands with pixels in ``off``."""
    band = _band_index(centres)
    return np.array([np.unique(band[row]).size for row in off], dtype=int)


def _choose_resolution(edges_aa, medium, flux, noise, valid, stellar, template, clip, smooth_aa):
    """The candidate resolving power with the smallest chi2 on up to 4 spectra.

    Candidates: `RESOLVING_POWERS` between ``0.4`` and ``1.2`` times the sampling's
    Nyquist limit (a line spread function of 1.7 to 5 pixels FWHM).
    """
    centres = 0.5 * (edges_aa[1:] + edges_aa[:-1])
    nyquist = float(np.median(centres / (2.0 * np.diff(edges_aa))))
    candidates = [r for r in RESOLVING_POWERS if 0.4 * nyquist <= r <= 1.2 * nyquist]
    if not candidates:
        candidates = [min(RESOLVING_POWERS, key=lambda r: abs(np.log(r / nyquist)))]
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = _row_nanmedian(np.where(valid, flux / noise, np.nan))
    rows = np.argsort(-np.nan_to_num(snr, nan=-np.inf))[:4]
    best, choice = np.inf, candidates[0]
    for power in candidates:
        basis = telluric_basis(edges_aa, medium, power, template)
        result = _fit_once(
            basis, flux[rows], noise[rows], valid[rows], stellar[rows], 2, clip, smooth_aa
        )
        total = float(np.sum(result[3]))
        if total < best:
            best, choice = total, power
    return float(choice)
