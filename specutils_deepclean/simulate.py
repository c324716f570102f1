r"""The observation simulator: noisy, gappy, telluric-absorbed versions of library stars.

Deterministic given a seed: every random term draws from its own generator, spawned
from ``numpy.random.SeedSequence(seed)``, so switching one term off leaves the others
unchanged.  Nothing touches numpy's global random state.

The model of one observed spectrum on the grid (pixels :math:`i`, normalised units,
the star's median flux 1) is

.. math::

    y_i = T_i\,s_i + \sigma_i z_i + f\,S_i + c_i \qquad
    \sigma_i^2 = a\,\bigl(\max(T_i s_i, 0) + S_i + r\,m\bigr)

* :math:`s` -- the library star resampled to the grid (:func:`prepare_truth`),
  Doppler-shifted by the stellar radial velocity (``truth``);
* :math:`T` -- the telluric transmission (``transmission``; ones without tellurics);
* :math:`\sigma` -- what a pipeline reports (``sigma``): photon noise of star and
  sky (variance proportional to their flux) plus read noise (a constant, ``r`` times
  the photon variance at the median flux ``m``); the gain :math:`a` is set per
  spectrum so that the median of :math:`T s / \sigma` over valid pixels is the
  target S/N exactly (over the observed pixels, the gap excluded);
* :math:`z` -- unit-variance Gaussian noise, a mix of white noise and pixel-correlated
  noise (white noise drawn on a finer detector grid and resampled flux-conservingly
  to the grid, rescaled to unit variance per pixel);
* :math:`f\,S` -- the sky-subtraction residual: the real night-sky spectrum on the
  grid (:math:`S`, scaled to a continuum level relative to the star) times a random
  fraction :math:`f` (a few per cent, either sign); its photon noise is in
  :math:`\sigma`, so the residual variance follows the sky spectrum;
* :math:`c` -- cosmic-ray hits: a few per spectrum, 1-3 pixels each, large and
  positive; not in ``sigma`` (a pipeline does not know them), flagged in ``cosmics``.

Finally one gap (a run of missing pixels: mask True, flux NaN) can be cut at the blue
end, the middle or the red end.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
from scipy.ndimage import gaussian_filter1d
from specutils.utils.wcs_utils import air_to_vac, vac_to_air

from .datasets import Library, SkySpectrum, Transmission, load_sky, load_transmission
from .doppler import shift_flux
from .metrics import der_snr_array
from .resample import rebin, rebin_matrix

__all__ = [
    "GAP_WIDTHS",
    "GAP_PLACES",
    "SNR_LEVELS",
    "gap_slice",
    "prepare_truth",
    "Simulator",
    "Observation",
]

#: Gap widths (pixels) of the benchmark protocol.
GAP_WIDTHS = (100, 400, 800)
#: Gap places of the benchmark protocol.
GAP_PLACES = ("blue", "middle", "red")
#: Target S/N levels of the benchmark protocol.
SNR_LEVELS = (2, 5, 10, 20, 50)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_FINE_STEP = 0.05  # Angstrom, sampling of the telluric transmission before convolution
_N_STREAMS = 6  # random streams: rv, white, correlated, sky, cosmics, gap


def _grid(wave) -> np.ndarray:
    wave = u.Quantity(wave, u.AA).to_value(u.AA) if isinstance(wave, u.Quantity) else wave
    wave = np.asarray(wave, dtype=float)
    if wave.ndim != 1 or wave.size < 2 or not np.all(np.diff(wave) > 0):
        raise ValueError("the grid must be 1-D, strictly increasing, with >= 2 pixels")
    return wave


def _medium(medium: str) -> str:
    if medium not in ("air", "vacuum"):
        raise ValueError(f"medium must be 'air' or 'vacuum', got {medium!r}")
    return medium


def _to_medium(wave_aa: np.ndarray, source: str, target: str) -> np.ndarray:
    """Wavelengths converted from one medium to the other (specutils' Morton 2000)."""
    if source == target:
        return wave_aa
    convert = air_to_vac if source == "air" else vac_to_air
    return convert(wave_aa * u.AA).to_value(u.AA)


def prepare_truth(
    library: Library, grid_wave_aa, grid_medium: str = "air"
) -> tuple[np.ndarray, np.ndarray]:
    """Library spectra on a model grid, each divided by its median.

    The library wavelengths are converted to the grid's medium when they differ, the
    spectra resampled flux-conservingly (:func:`~specutils_deepclean.resample.rebin`,
    library mask as missing data) and divided by the median of their valid pixels.

    Parameters
    ----------
    library : `~specutils_deepclean.datasets.Library`
        The stars.
    grid_wave_aa : ndarray or `~astropy.units.Quantity`
        Grid pixel centres (Angstrom when plain numbers), strictly increasing.
    grid_medium : {"air", "vacuum"}
        Medium of the grid wavelengths.

    Returns
    -------
    truth : ndarray, shape (n_star, n_grid)
        Normalised spectra; NaN where not valid.
    valid : ndarray of bool, shape (n_star, n_grid)
        True where the grid pixel is covered by good library pixels.

    Raises
    ------
    ValueError
        If a spectrum has no valid pixel on the grid or a median that is not positive.

    Examples
    --------
    >>> from specutils_deepclean.datasets import load_examples
    >>> grid = np.linspace(3600.0, 7400.0, 3000)
    >>> truth, valid = prepare_truth(load_examples(), grid, "vacuum")
    >>> truth.shape, bool(valid.all())
    ((8, 3000), True)
    >>> np.median(truth, axis=1)  # doctest: +FLOAT_CMP
    array([1., 1., 1., 1., 1., 1., 1., 1.])
    """
    grid = _grid(grid_wave_aa)
    wave = _to_medium(library.wavelength.to_value(u.AA), library.medium, _medium(grid_medium))
    flux, _, missing = rebin(library.flux, wave, grid, missing=library.mask)
    valid = ~missing & np.isfinite(flux)
    scale = np.array(
        [np.median(row[ok]) if ok.any() else np.nan for row, ok in zip(flux, valid, strict=True)]
    )
    unusable = ~(scale > 0)
    if unusable.any():
        ids = library.star_ids[unusable].tolist()
        raise ValueError(f"no valid pixels with a positive median on the grid for {ids}")
    truth = np.where(valid, flux / scale[:, None], np.nan)
    return truth, valid


@dataclass
class Observation:
    """A batch of simulated observations on one grid (all arrays ``(n, n_pix)``).

    Attributes
    ----------
    wavelength : `~astropy.units.Quantity`
        The grid.
    medium : str
        Medium of the grid wavelengths.
    flux : ndarray
        Observed flux: NaN where ``mask``.
    sigma : ndarray
        Per-pixel standard deviation a pipeline would report (photon, read and sky
        photon noise; not the cosmics); NaN where ``mask``.
    mask : ndarray of bool
        True where a pixel is missing (gap, or no valid truth).
    truth : ndarray
        The star as seen without noise and tellurics: normalised, RV-shifted.
    truth_rest : ndarray
        The star in its rest frame (the input truth).
    transmission : ndarray
        Telluric transmission applied (ones without tellurics).
    cosmics : ndarray of bool
        Pixels hit by a cosmic ray.
    snr_target, der_snr : ndarray, shape (n,)
        Target median S/N and the DER_SNR measured on ``flux``.
    gap : ndarray of int, shape (n, 2)
        Start and stop pixel of the gap (equal when there is none).
    airmass : ndarray, shape (n,)
        Airmass of the tellurics (NaN without).
    stellar_rv : ndarray, shape (n,)
        Stellar radial velocity applied (km/s).
    seed : int
        Seed of the simulation.
    """

    wavelength: u.Quantity
    medium: str
    flux: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    truth: np.ndarray
    truth_rest: np.ndarray
    transmission: np.ndarray
    cosmics: np.ndarray
    snr_target: np.ndarray
    der_snr: np.ndarray
    gap: np.ndarray
    airmass: np.ndarray
    stellar_rv: np.ndarray
    seed: int
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.flux.shape[0]

    def to_spectrum(self):
        """The observations as one `~specutils.Spectrum` with a 2-D flux.

        Returns
        -------
        `~specutils.Spectrum`
            Dimensionless flux, `~astropy.nddata.StdDevUncertainty` from ``sigma``,
            ``mask``, and ``meta`` with ``medium`` and ``simulation`` (seed, targets,
            measured DER_SNR, gaps, airmasses, velocities, settings).
        """
        from astropy.nddata import StdDevUncertainty
        from specutils import Spectrum

        meta = {
            "medium": self.medium,
            "simulation": {
                "seed": self.seed,
                "snr_target": self.snr_target.tolist(),
                "der_snr": self.der_snr.tolist(),
                "gap": self.gap.tolist(),
                "airmass": self.airmass.tolist(),
                "stellar_rv_kms": self.stellar_rv.tolist(),
                **self.settings,
            },
        }
        return Spectrum(
            flux=self.flux * u.dimensionless_unscaled,
            spectral_axis=self.wavelength,
            uncertainty=StdDevUncertainty(self.sigma),
            mask=self.mask.copy(),
            meta=meta,
        )

    def write_files(
        self,
        folder,
        *,
        prefix: str = "obs",
        flux_unit: u.Quantity = 1e-17 * u.erg / (u.s * u.cm**2 * u.AA),
    ) -> list:
        """Write each observation to its own ``tabular-fits`` file (a mock survey).

        Parameters
        ----------
        folder : str or path-like
            Output folder (created).
        prefix : str
            File names are ``<prefix>_<row:05d>.fits``.
        flux_unit : `~astropy.units.Quantity`
            The flux and uncertainty are multiplied by this (a physical unit, so
            specutils identifies the columns when reading).

        Returns
        -------
        list of pathlib.Path
            The files, one per observation; each reads back with
            ``Spectrum.read(path, format="tabular-fits")`` (medium in ``WAVEMED``).
        """
        from pathlib import Path

        from astropy.io import fits
        from astropy.nddata import StdDevUncertainty
        from specutils import Spectrum

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for row in range(len(self)):
            header = fits.Header()
            header["WAVEMED"] = self.medium
            header["SIMSEED"] = (self.seed, "simulation seed")
            header["SIMROW"] = (row, "row of the simulated batch")
            header["SNR"] = (float(self.snr_target[row]), "target median S/N")
            spectrum = Spectrum(
                flux=self.flux[row] * flux_unit,
                spectral_axis=self.wavelength,
                uncertainty=StdDevUncertainty(self.sigma[row] * flux_unit),
                mask=self.mask[row].copy(),
                meta={"header": header},
            )
            path = folder / f"{prefix}_{row:05d}.fits"
            spectrum.write(path, format="tabular-fits", overwrite=True)
            paths.append(path)
        return paths


class Simulator:
    """Simulates observations of normalised stars on one model grid.

    Built once per grid: it holds the sky spectrum and the telluric transmission
    converted to the grid's medium, at the library resolution.  See the module notes
    for the model; the parameters below set each term.

    Parameters
    ----------
    grid_wave_aa : ndarray or `~astropy.units.Quantity`
        Grid pixel centres (Angstrom when plain numbers), strictly increasing.
    grid_medium : {"air", "vacuum"}
        Medium of the grid wavelengths.
    fwhm : float or `~astropy.units.Quantity`
        Library resolution (FWHM, Angstrom); the sky and the transmission are
        convolved with a Gaussian of this FWHM (their own resolution, 0.15 A and
        R = 60000, is negligible next to it).
    sky, transmission : optional
        A `~specutils_deepclean.datasets.SkySpectrum` and a
        `~specutils_deepclean.datasets.Transmission`; by default the real ones from
        :func:`~specutils_deepclean.datasets.load_sky` and
        :func:`~specutils_deepclean.datasets.load_transmission`.
    read_fraction : float
        Read-noise variance as a fraction of the photon variance at the median flux.
    sky_level : float
        Median of the sky spectrum on the grid, relative to the star's median flux.
    sky_residual : float
        Largest sky-subtraction error: the fraction ``f`` is uniform in
        ``[-sky_residual, sky_residual]``, one per spectrum.
    correlated_fraction : float
        Share of the Gaussian noise variance that is pixel-correlated (0 to 1).
    oversample : float
        Detector pixels per grid pixel for the correlated noise (> 1; the detector
        grid has a random sub-pixel phase per call).  At 1.5 the lag-1
        autocorrelation of that part is 0.1-0.17.
    cosmics_per_spectrum : (int, int)
        Range (inclusive) of the number of cosmic-ray hits per spectrum.
    cosmic_amplitude : (float, float)
        Range of a hit pixel's excess flux, in units of the spectrum's median sigma.
    rv_range : (float, float)
        Range (km/s) of the uniform random stellar radial velocity.

    Examples
    --------
    >>> from specutils_deepclean.datasets import load_examples
    >>> grid = np.linspace(3600.0, 7400.0, 3000)
    >>> truth, _ = prepare_truth(load_examples(), grid, "air")
    >>> sim = Simulator(grid, "air")
    >>> obs = sim.observe(truth, 20.0, seed=1, gap=(100, "middle"), airmass=1.5)
    >>> obs.flux.shape, obs.gap[0].tolist(), bool(obs.mask[:, 1450:1550].all())
    ((8, 3000), [1450, 1550], True)
    >>> bool(np.all(np.abs(obs.der_snr / 20.0 - 1.0) < 0.3))
    True
    """

    def __init__(
        self,
        grid_wave_aa,
        grid_medium: str = "air",
        *,
        fwhm=2.5,
        sky: SkySpectrum | None = None,
        transmission: Transmission | None = None,
        read_fraction: float = 0.1,
        sky_level: float = 0.1,
        sky_residual: float = 0.05,
        correlated_fraction: float = 0.3,
        oversample: float = 1.5,
        cosmics_per_spectrum: tuple[int, int] = (1, 5),
        cosmic_amplitude: tuple[float, float] = (10.0, 50.0),
        rv_range: tuple[float, float] = (-50.0, 50.0),
    ):
        self.wave = _grid(grid_wave_aa)
        self.medium = _medium(grid_medium)
        self.fwhm = float(u.Quantity(fwhm, u.AA).to_value(u.AA))
        _check_range("read_fraction", read_fraction, 0, np.inf)
        _check_range("sky_level", sky_level, 0, np.inf)
        _check_range("sky_residual", sky_residual, 0, 1)
        _check_range("correlated_fraction", correlated_fraction, 0, 1)
        _check_range("fwhm", self.fwhm, 0, np.inf, low_open=True)
        if not oversample > 1:
            raise ValueError(f"oversample must be > 1, got {oversample}")
        lo, hi = cosmics_per_spectrum
        if not 0 <= lo <= hi:
            raise ValueError(f"cosmics_per_spectrum must be 0 <= low <= high, got {(lo, hi)}")
        self.settings = {
            "fwhm_aa": self.fwhm,
            "read_fraction": float(read_fraction),
            "sky_level": float(sky_level),
            "sky_residual": float(sky_residual),
            "correlated_fraction": float(correlated_fraction),
            "oversample": float(oversample),
            "cosmics_per_spectrum": (int(lo), int(hi)),
            "cosmic_amplitude": tuple(float(a) for a in cosmic_amplitude),
            "rv_range_kms": tuple(float(v) for v in rv_range),
        }
        self.sky = self._sky_on_grid(sky if sky is not None else load_sky()) * sky_level
        transmission = transmission if transmission is not None else load_transmission()
        self._model_transmission = self._crop_transmission(transmission)
        margin = 5 * self.fwhm
        self._fine_wave = np.arange(self.wave[0] - margin, self.wave[-1] + margin, _FINE_STEP)

    @property
    def wavelength(self) -> u.Quantity:
        """The grid (Angstrom)."""
        return self.wave * u.AA

    # ------------------------------------------------------------------ set-up

    def _convolve(self, values: np.ndarray, step: float) -> np.ndarray:
        """Gaussian of the library FWHM on a linear grid of the given step."""
        return gaussian_filter1d(values, self.fwhm * _FWHM_TO_SIGMA / step, mode="nearest")

    def _sky_on_grid(self, sky: SkySpectrum) -> np.ndarray:
        """The sky at the library resolution on the grid, median 1."""
        wave = sky.wavelength.to_value(u.AA)
        step = np.median(np.diff(wave))
        smooth = self._convolve(sky.flux, step)
        wave = _to_medium(wave, _medium(sky.medium), self.medium)
        if wave[0] > self.wave[0] or wave[-1] < self.wave[-1]:
            raise ValueError("the sky spectrum does not cover the grid")
        on_grid, _, _ = rebin(smooth, wave, self.wave)
        on_grid = np.clip(on_grid, 0, None)
        return on_grid / np.median(on_grid)

    def _crop_transmission(self, transmission: Transmission) -> Transmission:
        """The transmission model in the grid's medium, cropped to the grid (+ margin)."""
        wave = _to_medium(
            transmission.wavelength.to_value(u.AA), _medium(transmission.medium), self.medium
        )
        lo, hi = self.wave[0] - 6 * self.fwhm, self.wave[-1] + 6 * self.fwhm
        if wave[0] > lo or wave[-1] < hi:
            raise ValueError("the telluric transmission does not cover the grid")
        keep = (wave > lo) & (wave < hi)
        return Transmission(
            wave[keep] * u.AA, transmission.transmission[keep], transmission.airmass,
            transmission.resolving_power, self.medium,
        )

    def transmission_at(self, airmass: float) -> np.ndarray:
        """Telluric transmission on the grid at an airmass.

        ``T ** (airmass / airmass_model)`` at the model's own sampling, then averaged
        onto a 0.05 A grid, convolved with the library Gaussian and resampled
        flux-conservingly onto the grid.

        Parameters
        ----------
        airmass : float
            Airmass, at least 1.

        Returns
        -------
        ndarray, shape (n_pix,)
        """
        airmass = float(airmass)
        if not airmass >= 1:
            raise ValueError(f"airmass must be >= 1, got {airmass}")
        model = self._model_transmission
        wave = model.wavelength.to_value(u.AA)
        fine, _, _ = rebin(model.at_airmass(airmass), wave, self._fine_wave)
        smooth = self._convolve(fine, _FINE_STEP)
        on_grid, _, _ = rebin(smooth, self._fine_wave, self.wave)
        return np.clip(on_grid, 0, 1)

    # ---------------------------------------------------------------- observing

    def observe(
        self,
        truth: np.ndarray,
        snr,
        *,
        seed: int,
        gap=None,
        airmass=None,
        stellar_rv=None,
        sky: bool = True,
        cosmics: bool = True,
        correlated: bool = True,
    ) -> Observation:
        """Simulate one observation of each star.

        Parameters
        ----------
        truth : ndarray, shape (n, n_pix) or (n_pix,)
            Normalised rest-frame stars on the grid (:func:`prepare_truth`); NaN
            pixels are missing.
        snr : float or ndarray, shape (n,)
            Target median per-pixel S/N (> 0).
        seed : int
            Seed; the same seed gives the same observation.
        gap : None, (width, place) or "random"
            One gap per spectrum: ``width`` pixels at ``place`` ("blue", "middle",
            "red"), or a random width from `GAP_WIDTHS` and place from `GAP_PLACES`.
        airmass : None, float or ndarray, shape (n,)
            Apply tellurics at this airmass (>= 1); None for no tellurics.
        stellar_rv : None, float, ndarray or `~astropy.units.Quantity`
            Stellar radial velocity (km/s, positive = redshift).  None: random in
            ``rv_range`` with tellurics, zero without.
        sky, cosmics, correlated : bool
            Switch the sky residual (and sky photon noise), the cosmic-ray hits and
            the pixel-correlated part of the noise on or off.

        Returns
        -------
        Observation
        """
        truth_rest = _as_truth(truth, self.wave.size)
        n = truth_rest.shape[0]
        snr = _per_spectrum("snr", snr, n)
        if not np.all(snr > 0):
            raise ValueError("snr must be positive")
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(_N_STREAMS)]
        airmass = None if airmass is None else _per_spectrum("airmass", airmass, n)
        rv = self._velocities(stellar_rv, airmass, n, streams[0])
        star = truth_rest if not np.any(rv) else shift_flux(truth_rest, self.wave, rv)[0]
        trans = self._transmissions(airmass, n)
        seen = star * trans
        gaps = _gaps(gap, n, self.wave.size, streams[5])
        mask = ~np.isfinite(seen) | _gap_mask(gaps, self.wave.size)
        if mask.all(axis=1).any():
            rows = np.flatnonzero(mask.all(axis=1)).tolist()
            raise ValueError(f"no valid pixel left in spectra {rows} (truth all NaN?)")
        sky_flux = self.sky if sky else np.zeros_like(self.wave)
        sigma = _sigma(seen, ~mask, sky_flux, snr, self.settings["read_fraction"])
        z = self._unit_noise(n, streams[1], streams[2], correlated)
        flux = seen + sigma * z
        if sky:
            r = self.settings["sky_residual"]
            flux += streams[3].uniform(-r, r, size=(n, 1)) * sky_flux
        hits = np.zeros_like(mask)
        if cosmics:
            hits = self._add_cosmics(flux, sigma, streams[4])
        flux[mask] = np.nan
        sigma = np.where(mask, np.nan, sigma)
        return Observation(
            wavelength=self.wavelength, medium=self.medium, flux=flux, sigma=sigma,
            mask=mask, truth=star, truth_rest=truth_rest, transmission=trans,
            cosmics=hits & ~mask, snr_target=snr,
            der_snr=np.atleast_1d(der_snr_array(flux, mask=mask)), gap=gaps,
            airmass=np.full(n, np.nan) if airmass is None else airmass, stellar_rv=rv,
            seed=int(seed), settings=dict(self.settings),
        )

    def _velocities(self, stellar_rv, airmass, n: int, rng) -> np.ndarray:
        if stellar_rv is not None:
            if isinstance(stellar_rv, u.Quantity):
                stellar_rv = stellar_rv.to_value(u.km / u.s)
            return _per_spectrum("stellar_rv", stellar_rv, n)
        if airmass is None:
            return np.zeros(n)
        return rng.uniform(*self.settings["rv_range_kms"], size=n)

    def _transmissions(self, airmass, n: int) -> np.ndarray:
        out = np.ones((n, self.wave.size))
        if airmass is not None:
            for value in np.unique(airmass):
                out[airmass == value] = self.transmission_at(value)
        return out

    def _unit_noise(self, n: int, white_rng, corr_rng, correlated: bool) -> np.ndarray:
        """Unit-variance noise: white plus (optionally) pixel-correlated."""
        white = white_rng.standard_normal((n, self.wave.size))
        share = self.settings["correlated_fraction"] if correlated else 0.0
        if share == 0:
            return white
        corr = _correlated_noise(n, self.wave.size, self.settings["oversample"], corr_rng)
        return np.sqrt(1 - share) * white + np.sqrt(share) * corr

    def _add_cosmics(self, flux: np.ndarray, sigma: np.ndarray, rng) -> np.ndarray:
        """Add cosmic-ray hits to ``flux`` in place; return the hit pixels."""
        n, n_pix = flux.shape
        lo, hi = self.settings["cosmics_per_spectrum"]
        amp_lo, amp_hi = self.settings["cosmic_amplitude"]
        scale = np.nanmedian(np.where(np.isfinite(flux), sigma, np.nan), axis=1)
        hits = np.zeros(flux.shape, dtype=bool)
        for row, count in enumerate(rng.integers(lo, hi, size=n, endpoint=True)):
            for _ in range(count):
                width = int(rng.integers(1, 3, endpoint=True))
                start = int(rng.integers(0, n_pix - width, endpoint=True))
                excess = rng.uniform(amp_lo, amp_hi, size=width) * scale[row]
                flux[row, start:start + width] += excess
                hits[row, start:start + width] = True
        return hits


def _check_range(name: str, value, low, high, *, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not (isinstance(value, numbers.Real) and np.isfinite(value) and ok):
        raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}]")


def _as_truth(truth, n_pix: int) -> np.ndarray:
    truth = np.array(truth, dtype=float, ndmin=2)
    if truth.ndim != 2 or truth.shape[1] != n_pix:
        raise ValueError(f"truth must have shape (n, {n_pix}), got {np.shape(truth)}")
    return truth


def _per_spectrum(name: str, value, n: int) -> np.ndarray:
    value = np.asarray(value, dtype=float)
    if value.ndim > 1 or (value.ndim == 1 and value.size != n):
        raise ValueError(f"{name} must be a scalar or have one value per spectrum ({n})")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} must be finite")
    return np.broadcast_to(value, (n,)).astype(float)


def _sigma(seen, valid, sky_flux, snr, read_fraction) -> np.ndarray:
    """Per-pixel sigma: photon (star + sky) and read terms at the target median S/N."""
    photon = np.clip(np.nan_to_num(seen), 0, None) + sky_flux
    level = np.array([np.median(row[ok]) for row, ok in zip(seen, valid, strict=True)])
    shape = photon + read_fraction * np.clip(level, 0, None)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(valid, seen / np.sqrt(shape), np.nan)
    gain = (np.nanmedian(ratio, axis=1) / snr) ** 2
    return np.sqrt(gain[:, None] * shape)


def _correlated_noise(n: int, n_pix: int, oversample: float, rng) -> np.ndarray:
    """Unit-variance noise from white detector pixels resampled onto the grid.

    Detector pixels are ``1 / oversample`` grid pixels wide, with a random sub-pixel
    phase; the resampling (pixel index space, flux conserving) averages the detector
    pixels each grid pixel overlaps, which correlates neighbours sharing a detector
    pixel.  Each grid pixel is rescaled to unit variance.
    """
    phase = rng.uniform()
    n_det = int(np.floor(n_pix * oversample - phase))
    det_edges = -0.5 + (np.arange(n_det + 1) + phase) / oversample
    grid_edges = np.arange(n_pix + 1) - 0.5
    weights = rebin_matrix(det_edges, grid_edges)
    total = np.asarray(weights.sum(axis=1)).ravel()
    std = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel()) / total
    noise = rng.standard_normal((n, n_det))
    return np.asarray(weights @ noise.T).T / total / std


def _gaps(gap, n: int, n_pix: int, rng) -> np.ndarray:
    """Start and stop pixel of each spectrum's gap."""
    out = np.zeros((n, 2), dtype=int)
    if gap is None:
        return out
    if isinstance(gap, str) and gap == "random":
        widths = rng.choice(GAP_WIDTHS, size=n)
        places = rng.choice(GAP_PLACES, size=n)
    elif isinstance(gap, tuple) and len(gap) == 2:
        widths, places = np.full(n, gap[0]), np.full(n, gap[1], dtype=object)
    else:
        raise ValueError(f"gap must be None, 'random' or (width, place), got {gap!r}")
    for row, (width, place) in enumerate(zip(widths, places, strict=True)):
        if not (isinstance(width, numbers.Integral) and 0 < width < n_pix):
            raise ValueError(f"gap width must be an integer in 1..{n_pix - 1}, got {width!r}")
        if place not in GAP_PLACES:
            raise ValueError(f"gap place must be one of {GAP_PLACES}, got {place!r}")
        bounds = gap_slice(width, place, n_pix)
        out[row] = bounds.start, bounds.stop
    return out


def gap_slice(width: int, place: str, n_pix: int) -> slice:
    """The pixels of a ``width``-pixel gap at ``place`` ("blue", "middle", "red").

    Examples
    --------
    >>> gap_slice(400, "middle", 4300)
    slice(1950, 2350, None)
    """
    start = {"blue": 0, "middle": (n_pix - width) // 2, "red": n_pix - width}[place]
    return slice(start, start + width)


def _gap_mask(gaps: np.ndarray, n_pix: int) -> np.ndarray:
    pixels = np.arange(n_pix)
    return (pixels >= gaps[:, :1]) & (pixels < gaps[:, 1:])
