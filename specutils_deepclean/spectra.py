"""Spectrum <-> model-grid arrays: resampling, normalisation, masks, uncertainties.

Data flow: a `~specutils.Spectrum` goes through `to_model_grid` to plain arrays on a
model's wavelength grid (`GridSpectra`), a model works on those arrays, and
`from_model_grid` puts the model's arrays back on the input's spectral axis as a new
`~specutils.Spectrum`.  Models never see specutils.

All resampling is flux conserving and linear in the flux
(:mod:`specutils_deepclean.resample`); Doppler shifts are in
:mod:`specutils_deepclean.doppler`.  ``bin_edges``, ``rebin_matrix``, ``rebin``,
``shift_flux`` and ``doppler_shift`` still import from here, with a deprecation
warning.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
from astropy.nddata import (
    InverseVariance,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum
from specutils.utils.wcs_utils import air_to_vac, vac_to_air

from ._deprecated import moved
from .checks import check_linear_flux, no_overlap_hint, unusable_reason
from .resample import _resample
from .resample import bin_edges as _bin_edges

__all__ = [
    "ModelGrid",
    "GridSpectra",
    "to_model_grid",
    "from_model_grid",
    "grid_to_input",
    "spectrum_like",
    "median_normalise",
    "median_denormalise",
]

_MEDIA = ("air", "vacuum")
_UNCERTAINTY_TYPES = (StdDevUncertainty, VarianceUncertainty, InverseVariance)


# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------


def median_normalise(flux: np.ndarray, missing: np.ndarray | None = None):
    """Divide every spectrum by the median of its valid pixels.

    Parameters
    ----------
    flux : ndarray, shape (..., n)
        Spectra, last axis spectral.
    missing : ndarray of bool, shape (..., n), optional
        True where a pixel is missing; non-finite pixels are missing too.

    Returns
    -------
    normalised : ndarray, shape (..., n)
        ``flux / scale`` for every pixel (missing ones included); all NaN for a
        spectrum whose scale is NaN.
    scale : ndarray, shape (...)
        The median of each spectrum's valid pixels; NaN for a spectrum with no valid
        pixel or a median that is not positive.

    See Also
    --------
    median_denormalise : the inverse.

    Examples
    --------
    >>> norm, scale = median_normalise(np.array([[1.0, 2.0, 4.0], [2.0, np.nan, 6.0]]))
    >>> scale  # doctest: +FLOAT_CMP
    array([2., 4.])
    >>> norm
    array([[0.5, 1. , 2. ],
           [0.5, nan, 1.5]])
    """
    flux = np.asarray(flux, dtype=float)
    bad = ~np.isfinite(flux)
    if missing is not None:
        bad |= np.broadcast_to(np.asarray(missing, dtype=bool), flux.shape)
    scale = _valid_median(flux.reshape(-1, flux.shape[-1]), bad.reshape(-1, flux.shape[-1]))
    scale = scale.reshape(flux.shape[:-1])
    scale[~(scale > 0)] = np.nan
    return flux / scale[..., None], scale


def _valid_median(flux: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Median of each row's valid pixels (NaN for none), as `numpy.nanmedian` gives it.

    Rows with the same number of valid pixels are partitioned together (bad pixels
    set to +inf sort last), not row by row.
    """
    filled = np.where(bad, np.inf, flux)
    count = flux.shape[-1] - bad.sum(axis=-1)
    scale = np.full(flux.shape[0], np.nan)
    for n in np.unique(count[count > 0]):
        rows = np.flatnonzero(count == n)
        lo, hi = (n - 1) // 2, n // 2
        part = np.partition(filled[rows], [lo, hi] if hi > lo else hi, axis=-1)
        scale[rows] = part[:, hi] if hi == lo else (part[:, lo] + part[:, hi]) / 2
    return scale


def median_denormalise(normalised: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of `median_normalise`: multiply every spectrum by its scale.

    Parameters
    ----------
    normalised : ndarray, shape (..., n)
        Normalised spectra.
    scale : ndarray, shape (...)
        Per-spectrum scales from `median_normalise`.

    Returns
    -------
    ndarray, shape (..., n)
        ``normalised * scale``; equal to the original flux to within one unit in
        the last place.

    Examples
    --------
    >>> flux = np.array([1.0, 2.0, 4.0])
    >>> median_denormalise(*median_normalise(flux))  # doctest: +FLOAT_CMP
    array([1., 2., 4.])
    """
    return np.asarray(normalised, dtype=float) * np.asarray(scale, dtype=float)[..., None]


# --------------------------------------------------------------------------------------
# Model grid and the spectra on it
# --------------------------------------------------------------------------------------


def _parse_medium(value: Any, source: str) -> str:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "air":
            return "air"
        if text in ("vacuum", "vac"):
            return "vacuum"
    raise ValueError(f"{source} must be 'air' or 'vacuum', got {value!r}")


@dataclass(frozen=True, eq=False)
class ModelGrid:
    """The wavelength grid of a model and the medium its wavelengths are given in.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity`
        1-D, strictly increasing pixel centres with a length unit (stored in
        Angstrom).
    medium : {"air", "vacuum"}
        The medium of the wavelengths.

    Examples
    --------
    >>> import astropy.units as u
    >>> grid = ModelGrid(np.linspace(3540.5, 7409.6, 4300) * u.AA, "air")
    >>> grid.range_str
    '3540.5-7409.6 Angstrom (air)'
    """

    wavelength: u.Quantity
    medium: str

    def __post_init__(self):
        wave = u.Quantity(self.wavelength)
        if not wave.unit.is_equivalent(u.AA):
            raise u.UnitsError(f"the model grid needs a length unit, got {wave.unit!r}")
        wave = wave.to(u.AA).astype(float)
        if wave.ndim != 1 or wave.size < 2:
            raise ValueError("the model grid must be 1-D with at least two pixels")
        if not np.all(np.diff(wave.value) > 0):
            raise ValueError("the model grid must be strictly increasing")
        wave.flags.writeable = False
        object.__setattr__(self, "wavelength", wave)
        object.__setattr__(self, "medium", _parse_medium(self.medium, "medium"))

    @property
    def wave_aa(self) -> np.ndarray:
        """Pixel centres in Angstrom (float64, read-only)."""
        return self.wavelength.value

    @functools.cached_property
    def edges(self) -> np.ndarray:
        """Bin edges in Angstrom, shape ``(n_grid + 1,)``."""
        return _bin_edges(self.wave_aa)

    @property
    def range_str(self) -> str:
        """The range of the pixel centres as text, with the medium."""
        return _range_str(self.wave_aa[0], self.wave_aa[-1], self.medium)

    def __len__(self) -> int:
        return self.wave_aa.size


def _range_str(lo: float, hi: float, medium: str) -> str:
    return f"{lo:.1f}-{hi:.1f} Angstrom ({medium})"


@dataclass
class GridSpectra:
    """Spectra put on a model grid by `to_model_grid`, with what is needed to go back.

    Missing grid pixels (masked, non-finite flux or uncertainty, or not covered by
    enough valid input) have ``missing`` True and NaN ``flux`` and ``sigma``.

    Attributes
    ----------
    flux : ndarray, shape (n_spec, n_grid)
        Median-normalised flux (float64); NaN where missing.
    sigma : ndarray, shape (n_spec, n_grid)
        Normalised standard deviation; NaN where missing or unknown.
    missing : ndarray of bool, shape (n_spec, n_grid)
        True where a grid pixel is missing.
    scale : ndarray, shape (n_spec,)
        Per-spectrum medians in ``flux_unit``: ``flux * scale[:, None]`` is the
        physical flux.  NaN for an unusable spectrum (no valid grid pixel or a median
        that is not positive), whose pixels are all missing.
    has_uncertainty : bool
        Whether the input carried a usable uncertainty.
    grid : ModelGrid
        The model grid.
    spectrum : `~specutils.Spectrum`
        The input spectrum (a reference; never modified).
    medium : str
        The medium of the input's wavelengths.
    input_edges : ndarray, shape (n_in + 1,)
        The input's bin edges in Angstrom in the model's medium, increasing.
    descending : bool
        Whether the input axis runs towards shorter wavelengths (its pixels are
        reversed internally).
    spectral_axis_index : int
        The input's spectral axis.
    shape : tuple of int
        The input's flux shape.
    flux_unit : `~astropy.units.Unit`
        The input's flux unit.
    uncertainty_type : type
        The uncertainty class returned by `from_model_grid`.
    min_coverage : float
        The coverage threshold used for resampling onto the grid.
    density_factor : ndarray or None
        For a flux per unit frequency (e.g. Jy), the factor ``(lambda_ref/lambda)**2``
        per input pixel (increasing wavelength) that turned it into the shape of a flux
        per unit wavelength before resampling; None for any other flux unit.
    """

    flux: np.ndarray
    sigma: np.ndarray
    missing: np.ndarray
    scale: np.ndarray
    has_uncertainty: bool
    grid: ModelGrid
    spectrum: Spectrum
    medium: str
    input_edges: np.ndarray
    descending: bool
    spectral_axis_index: int
    shape: tuple
    flux_unit: u.UnitBase
    uncertainty_type: type
    min_coverage: float
    density_factor: np.ndarray | None = None

    @property
    def n_spec(self) -> int:
        """Number of spectra."""
        return self.flux.shape[0]

    @property
    def usable(self) -> np.ndarray:
        """True for each spectrum with a valid normalisation (finite ``scale``)."""
        return np.isfinite(self.scale)

    def tensors(self, device=None, dtype=None, *, fill: float | None = None):
        """The arrays as torch tensors ``(flux, sigma, missing)``.

        Parameters
        ----------
        device : str or torch.device, optional
            Where to put the tensors (default: CPU).
        dtype : torch.dtype, optional
            Floating dtype of ``flux`` and ``sigma`` (default ``torch.float32``).
        fill : float, optional
            Value for missing ``flux`` and ``sigma`` pixels; by default they stay
            NaN, so that a model must use ``missing`` rather than the values.

        Returns
        -------
        flux, sigma : torch.Tensor, shape (n_spec, n_grid)
        missing : torch.Tensor of bool, shape (n_spec, n_grid)
        """
        import torch

        dtype = torch.float32 if dtype is None else dtype
        flux, sigma = self.flux, self.sigma
        if fill is not None:
            flux = np.where(self.missing, fill, flux)
            sigma = np.where(self.missing, fill, sigma)
        return (
            torch.as_tensor(flux, dtype=dtype, device=device),
            torch.as_tensor(sigma, dtype=dtype, device=device),
            torch.as_tensor(self.missing, dtype=torch.bool, device=device),
        )


def _check_spectrum(spectrum, name="spectrum"):
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"{name} must be a specutils Spectrum, got {type(spectrum).__name__}")


def _header_value(header, key):
    for k in (key, key.lower()):
        try:
            if k in header:
                return header[k]
        except TypeError:
            return None
    return None


def _stated_medium(meta) -> str | None:
    """The medium stated in a spectrum's meta, or None."""
    if not meta:
        return None
    if meta.get("medium") is not None:
        return _parse_medium(meta["medium"], "meta['medium']")
    header = meta.get("header")
    if header is None:
        header = {}
    for key in ("WAVEMED", "AIRORVAC"):
        value = _header_value(header, key)
        if value is not None:
            return _parse_medium(value, f"header keyword {key}")
    vacuum = _header_value(header, "VACUUM")
    if vacuum is not None:
        if isinstance(vacuum, str):
            vacuum = vacuum.strip().upper() in ("T", "TRUE", "1")
        return "vacuum" if vacuum else "air"
    from .survey_media import survey_medium  # SDSS, DESI, LAMOST: vacuum

    return survey_medium(meta)


def _input_medium(spectrum: Spectrum, medium: str | None, grid: ModelGrid) -> str:
    """The medium of the spectrum's wavelengths (see `to_model_grid`)."""
    if not spectrum.spectral_axis.unit.is_equivalent(u.AA):
        if medium is not None and _parse_medium(medium, "medium") == "air":
            raise ValueError(
                f"a spectral axis in {spectrum.spectral_axis.unit} converts to vacuum "
                "wavelengths; medium='air' does not apply to it"
            )
        return "vacuum"
    stated = _stated_medium(spectrum.meta)
    if medium is not None:
        medium = _parse_medium(medium, "medium")
        if stated is not None and stated != medium:
            warnings.warn(
                f"medium={medium!r} overrides the {stated} wavelengths the spectrum's meta "
                "(or its file's header or format) states",
                AstropyUserWarning,
                stacklevel=3,
            )
        return medium
    if stated is not None:
        return stated
    warnings.warn(
        "the medium (air or vacuum) of the spectrum's wavelengths is unknown; assuming "
        f"the model's medium ({grid.medium}). State it with medium='air' or "
        "medium='vacuum', or set spectrum.meta['medium']",
        AstropyUserWarning,
        stacklevel=3,
    )
    return grid.medium


def _axis_edges(spectrum: Spectrum) -> np.ndarray:
    """The spectrum's bin edges in Angstrom (as given: vacuum for non-length units)."""
    unit = spectrum.spectral_axis.unit
    if not unit.is_equivalent(u.AA, equivalencies=u.spectral()):
        raise u.UnitsError(f"the spectral axis unit {unit} cannot be converted to a wavelength")
    native = np.asarray(spectrum.spectral_axis.value)
    if native.size < 2:
        raise ValueError(
            f"the spectral axis has {native.size} pixel: at least 2 are needed"
        )
    centres = native.astype(np.float64)
    steps = np.diff(centres)
    repeated = np.flatnonzero(steps == 0)
    if repeated.size:
        raise ValueError(
            f"the spectral axis repeats values ({repeated.size} pixel(s) share a value with "
            f"their neighbour, first at index {repeated[0]}): it must be strictly monotonic"
        )
    given = np.asarray(spectrum.spectral_axis.bin_edges.value)
    if centres.size > 1 and np.array_equal(given, _midpoint_edges(native)):
        # specutils derived the edges from the centres, in the axis's own precision
        # (float32 for SDSS files): derive them again from the centres in float64.
        given = _midpoint_edges(centres)
    edges = (given.astype(np.float64) * unit).to_value(u.AA, u.spectral())
    step = np.diff(edges)
    if not (np.all(step > 0) or np.all(step < 0)) or not np.all(np.isfinite(edges)):
        raise ValueError("the spectral axis must be finite and strictly monotonic")
    return edges


def _midpoint_edges(centres: np.ndarray) -> np.ndarray:
    """Bin edges from centres as specutils derives them, in the centres' dtype.

    Midpoints between neighbours and outer edges half a pixel beyond the ends, for an
    increasing or decreasing axis (`~specutils_deepclean.resample.bin_edges` computes the
    same in float64 for an increasing one).
    """
    before = np.insert(centres, 0, 2 * centres[0] - centres[1])
    after = np.append(centres, 2 * centres[-1] - centres[-2])
    return (before + after) / 2


def _convert_medium(edges: np.ndarray, source: str, target: str) -> np.ndarray:
    if source == target:
        return edges
    convert = air_to_vac if source == "air" else vac_to_air
    return convert(edges * u.AA).to_value(u.AA)


def _to_last(values: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """Move the spectral axis last, flatten the batch and sort by wavelength."""
    values = np.moveaxis(values, axis, -1)
    values = values.reshape(-1, values.shape[-1])
    return values[:, ::-1] if descending else values


def _from_last(values: np.ndarray, axis: int, descending: bool, shape: tuple) -> np.ndarray:
    """Inverse of `_to_last`."""
    if descending:
        values = values[:, ::-1]
    moved = tuple(np.moveaxis(np.empty(shape, dtype=bool), axis, -1).shape)
    return np.ascontiguousarray(np.moveaxis(values.reshape(moved), -1, axis))


def _frequency_density_factor(spectrum: Spectrum, edges: np.ndarray) -> np.ndarray | None:
    """``(lambda_ref / lambda)**2`` per pixel for a flux per unit frequency, else None.

    The models learn the shape of a flux per unit *wavelength*; a flux per unit
    frequency (F_nu, e.g. Jy or Jy/sr) differs from it by ``c / lambda**2``, so it is
    multiplied by this factor on the way in and divided by it on the way back.
    """
    unit = spectrum.flux.unit
    if not (unit.is_equivalent(u.Jy) or unit.is_equivalent(u.Jy / u.sr)):
        return None
    centres = 0.5 * (edges[1:] + edges[:-1])
    return (np.median(centres) / centres) ** 2


def _input_arrays(spectrum: Spectrum, descending: bool) -> tuple:
    """Flux, missing pixels (non-finite or masked) and variance (None without an
    uncertainty) of ``spectrum``, spectral axis last and increasing, and the
    uncertainty's class."""
    axis = spectrum.spectral_axis_index
    flux = _to_last(spectrum.flux.value.astype(float), axis, descending)
    missing = ~np.isfinite(flux)
    if spectrum.mask is not None:
        mask = np.broadcast_to(np.asarray(spectrum.mask, dtype=bool), spectrum.shape)
        missing |= _to_last(mask, axis, descending)
    variance, unc_type = _input_variance(spectrum)
    if variance is not None:
        variance = _to_last(variance, axis, descending)
    return flux, missing, variance, unc_type


def _input_variance(spectrum: Spectrum):
    """Variance in flux_unit**2 (NaN where unusable) and the class to return, or None."""
    unc = spectrum.uncertainty
    if unc is None:
        return None, StdDevUncertainty
    if not isinstance(unc, _UNCERTAINTY_TYPES):
        warnings.warn(
            f"uncertainty of type {type(unc).__name__} is not supported (use "
            "StdDevUncertainty, VarianceUncertainty or InverseVariance); it is ignored",
            AstropyUserWarning,
            stacklevel=3,
        )
        return None, StdDevUncertainty
    flux_unit = spectrum.flux.unit
    values = np.asarray(unc.array, dtype=float)
    if isinstance(unc, StdDevUncertainty):
        unit = unc.unit if unc.unit is not None else flux_unit
        values = (values * unit).to_value(flux_unit)
        values = np.where(values > 0, values, np.nan) ** 2
    elif isinstance(unc, VarianceUncertainty):
        unit = unc.unit if unc.unit is not None else flux_unit**2
        values = (values * unit).to_value(flux_unit**2)
    else:
        unit = unc.unit if unc.unit is not None else flux_unit**-2
        with np.errstate(divide="ignore"):
            values = 1.0 / (values * unit).to_value(flux_unit**-2)
    return np.where(values > 0, values, np.nan), type(unc)


def to_model_grid(
    spectrum: Spectrum,
    grid: ModelGrid,
    *,
    medium: str | None = None,
    min_coverage: float = 0.5,
) -> GridSpectra:
    """Resample a spectrum (or a batch on one axis) onto a model grid and normalise it.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        1-D or N-D flux; axes other than ``spectrum.spectral_axis_index`` are a batch.
        Any flux unit; a spectral axis in any unit convertible to wavelength
        (Angstrom, nm, um, Hz, eV, 1/cm), ascending or descending.
    grid : ModelGrid
        The model's grid.
    medium : {"air", "vacuum"}, optional
        The medium of the spectrum's wavelengths (it overrides what the meta
        states, with a warning when they differ).  Without it, ``meta["medium"]`` is
        used, else a FITS header in ``meta["header"]`` (``WAVEMED`` air/vacuum,
        ``AIRORVAC`` air/vac, ``VACUUM`` T/F), else the survey format
        (SDSS, DESI and LAMOST are vacuum:
        :func:`~specutils_deepclean.surveys.survey_medium`); if none is found, the
        model's medium is assumed, with a warning.  Frequency, energy and wavenumber axes convert to
        vacuum wavelengths.
    min_coverage : float
        Smallest valid fraction of a grid bin for that grid pixel to be valid,
        in (0, 1].  (On the way back, `from_model_grid` needs full coverage.)

    Returns
    -------
    GridSpectra
        Median-normalised flux, sigma and missing pixels on the grid, and the context
        needed by `from_model_grid`.

    Raises
    ------
    TypeError
        If ``spectrum`` is not a Spectrum or ``grid`` not a ModelGrid.
    astropy.units.UnitsError
        If the spectral axis does not convert to wavelength.
    ValueError
        If the axis is not strictly monotonic, the spectrum and the grid do not
        overlap (the message names both ranges), no spectrum has a valid grid pixel
        with a positive median, or ``medium``/``min_coverage`` are invalid.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        If the medium is unknown (the model's is assumed), the uncertainty type is not
        supported (it is ignored), or some (not all) spectra of a batch are unusable.

    Notes
    -----
    Missing pixels: ``mask`` True, non-finite flux or uncertainty, a standard
    deviation or variance that is not positive, or an inverse variance that is not
    positive (zero inverse variance means no information).  They carry no weight in
    the resampling.  A grid pixel is missing when less than ``min_coverage`` of its
    bin is covered by valid input.  Each spectrum is divided by the median of its
    valid grid pixels; a spectrum without valid grid pixels or with a median that is
    not positive is kept with ``scale`` NaN and all pixels missing.

    A flux per unit frequency (convertible to Jy or Jy/sr) is multiplied by
    ``(lambda_ref / lambda)**2`` first, so the model sees the shape of a flux per unit
    wavelength, as it was trained on; `from_model_grid` undoes it.  Other units
    (F_lambda, counts, relative flux) are used as they are: the models expect a
    flux-calibrated or relative F_lambda spectrum.

    Examples
    --------
    >>> import astropy.units as u
    >>> from specutils import Spectrum
    >>> grid = ModelGrid(np.arange(5000.0, 5010.0, 0.5) * u.AA, "air")
    >>> spec = Spectrum(flux=np.full(30, 3.0) * u.erg / u.s / u.cm**2 / u.AA,
    ...                 spectral_axis=np.arange(4995.0, 5025.0) * u.AA)
    >>> gs = to_model_grid(spec, grid, medium="air")
    >>> gs.flux.shape, gs.scale
    ((1, 20), array([3.]))
    """
    _check_spectrum(spectrum)
    if not isinstance(grid, ModelGrid):
        raise TypeError(f"grid must be a ModelGrid, got {type(grid).__name__}")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    check_linear_flux(spectrum)
    raw_edges = _axis_edges(spectrum)
    source = _input_medium(spectrum, medium, grid)
    descending = raw_edges[-1] < raw_edges[0]
    edges = _convert_medium(raw_edges[::-1] if descending else raw_edges, source, grid.medium)
    if edges[-1] <= grid.edges[0] or edges[0] >= grid.edges[-1]:
        lo, hi = np.sort([raw_edges[0], raw_edges[-1]])
        raise ValueError(
            f"spectrum covers {_range_str(lo, hi, source)}, the model covers "
            f"{grid.range_str}: no overlap{no_overlap_hint(lo, hi, grid.edges)}"
        )
    axis = spectrum.spectral_axis_index
    flux, missing, variance, unc_type = _input_arrays(spectrum, descending)
    density_factor = _frequency_density_factor(spectrum, edges)
    if density_factor is not None:
        flux = flux * density_factor
        if variance is not None:
            variance = variance * density_factor**2
    out, var_out, miss_out = _resample(
        flux, edges, grid.edges, variance=variance, missing=missing, min_coverage=min_coverage
    )
    normalised, scale = median_normalise(out, miss_out)
    _check_usable(scale, lambda: unusable_reason(missing, variance, unc_type))
    miss_out |= ~np.isfinite(scale)[:, None]
    sigma = np.full_like(normalised, np.nan)
    if var_out is not None:
        sigma = np.sqrt(var_out) / scale[:, None]
    return GridSpectra(
        flux=np.where(miss_out, np.nan, normalised),
        sigma=np.where(miss_out, np.nan, sigma),
        missing=miss_out,
        scale=scale,
        has_uncertainty=variance is not None,
        grid=grid,
        spectrum=spectrum,
        medium=source,
        input_edges=edges,
        descending=bool(descending),
        spectral_axis_index=axis,
        shape=tuple(spectrum.shape),
        flux_unit=spectrum.flux.unit,
        uncertainty_type=unc_type,
        min_coverage=float(min_coverage),
        density_factor=density_factor,
    )


def _check_usable(scale: np.ndarray, reason: Callable[[], str]) -> None:
    """Refuse an input without a usable spectrum (``reason()`` says why), warn about
    single unusable rows."""
    bad = int(np.sum(~np.isfinite(scale)))
    if bad == scale.size:
        raise ValueError(
            "no spectrum has a valid pixel on the model grid with a positive median "
            f"flux: nothing to normalise ({reason()})"
        )
    if bad:
        warnings.warn(
            f"{bad} of {scale.size} spectra have no valid pixel on the model grid or a "
            "median flux that is not positive; they are returned fully masked",
            AstropyUserWarning,
            stacklevel=3,
        )


def _as_numpy(values, name: str, shape: tuple, dtype=float) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=dtype)
    if values.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {values.shape}")
    return values


def _output_uncertainty(variance: np.ndarray, unc_type: type, unit: u.UnitBase):
    with np.errstate(divide="ignore", invalid="ignore"):
        if unc_type is VarianceUncertainty:
            return VarianceUncertainty(variance * unit**2)
        if unc_type is InverseVariance:
            return InverseVariance(1.0 / variance * unit**-2)
        return StdDevUncertainty(np.sqrt(variance) * unit)


def from_model_grid(
    grid_spectra: GridSpectra,
    flux,
    sigma=None,
    *,
    missing=None,
    meta: dict | None = None,
) -> Spectrum:
    """Put a model's output on the model grid back on the input's spectral axis.

    Parameters
    ----------
    grid_spectra : GridSpectra
        The result of `to_model_grid` for the input.
    flux : array-like, shape (n_spec, n_grid)
        Normalised model flux (numpy array or CPU/GPU torch tensor).
    sigma : array-like, shape (n_spec, n_grid), optional
        Normalised standard deviation of ``flux``; a pixel with non-finite sigma is
        missing.
    missing : array-like of bool, shape (n_spec, n_grid), optional
        Grid pixels the model has no value for; non-finite values are missing too.
    meta : dict, optional
        Merged into ``meta["deepclean"]`` of the result.

    Returns
    -------
    `~specutils.Spectrum`
        Same spectral axis object, shape, ``spectral_axis_index`` and flux unit as the
        input; normalisation undone; uncertainty in the input's class
        (`~astropy.nddata.StdDevUncertainty` when it had none), or None without
        ``sigma``; ``mask`` = input mask | pixels not fully covered by valid model
        pixels | non-finite output (uncovered pixels have NaN flux); ``meta`` a deep
        copy of the input's plus ``meta["deepclean"]``.

    Notes
    -----
    An input pixel only partly covered by the model grid is masked: the mean over
    the covered part is not the pixel's value.

    Examples
    --------
    >>> import astropy.units as u
    >>> from specutils import Spectrum
    >>> grid = ModelGrid(np.arange(5000.0, 5010.0, 0.5) * u.AA, "air")
    >>> spec = Spectrum(flux=np.full(30, 3.0) * u.Jy,
    ...                 spectral_axis=np.arange(4995.0, 5025.0) * u.AA)
    >>> gs = to_model_grid(spec, grid, medium="air")
    >>> back = from_model_grid(gs, gs.flux, meta={"model": "identity"})
    >>> back.flux[5:8], back.mask[5:8]  # 5000 Angstrom is only half covered
    (<Quantity [nan,  3.,  3.] Jy>, array([ True, False, False]))
    >>> back.meta["deepclean"]
    {'model': 'identity'}
    """
    if not isinstance(grid_spectra, GridSpectra):
        raise TypeError(f"grid_spectra must be a GridSpectra, got {type(grid_spectra).__name__}")
    gs = grid_spectra
    shape = gs.flux.shape
    flux = _as_numpy(flux, "flux", shape)
    bad = ~np.isfinite(flux) | ~gs.usable[:, None]
    if missing is not None:
        bad |= _as_numpy(missing, "missing", shape, dtype=bool)
    variance = None
    if sigma is not None:
        variance = (_as_numpy(sigma, "sigma", shape) * gs.scale[:, None]) ** 2
    physical = median_denormalise(flux, gs.scale)
    out, var_out, uncovered = _resample(
        physical,
        gs.grid.edges,
        gs.input_edges,
        variance=variance,
        missing=bad,
        min_coverage=1.0,
    )
    if gs.density_factor is not None:
        out = out / gs.density_factor
        if var_out is not None:
            var_out = var_out / gs.density_factor**2
    axis = gs.spectral_axis_index
    out = _from_last(out, axis, gs.descending, gs.shape)
    mask = _from_last(uncovered, axis, gs.descending, gs.shape) | ~np.isfinite(out)
    spectrum = gs.spectrum
    if spectrum.mask is not None:
        mask |= np.broadcast_to(np.asarray(spectrum.mask, dtype=bool), gs.shape)
    uncertainty = None
    if var_out is not None:
        var_out = _from_last(var_out, axis, gs.descending, gs.shape)
        uncertainty = _output_uncertainty(var_out, gs.uncertainty_type, gs.flux_unit)
    return spectrum_like(spectrum, out * gs.flux_unit, uncertainty, mask, meta)


def grid_to_input(grid_spectra: GridSpectra, values, *, missing=None):
    """Resample per-grid-pixel values onto the input's spectral axis, as they are.

    Unlike `from_model_grid` nothing is de-normalised and no Spectrum is built: this
    is for dimensionless quantities on the model grid, such as a transmission.

    Parameters
    ----------
    grid_spectra : GridSpectra
        The result of `to_model_grid` for the input.
    values : array-like, shape (n_spec, n_grid)
        Values on the model grid (numpy array or torch tensor).
    missing : array-like of bool, shape (n_spec, n_grid), optional
        Grid pixels without a value; non-finite values are missing too.

    Returns
    -------
    values : ndarray
        In the input's flux shape and axis order; NaN where not covered.
    uncovered : ndarray of bool
        Input pixels not fully covered by valid grid pixels.

    Examples
    --------
    >>> import astropy.units as u
    >>> from specutils import Spectrum
    >>> grid = ModelGrid(np.arange(5000.0, 5010.0, 0.5) * u.AA, "air")
    >>> spec = Spectrum(flux=np.ones(30) * u.one, spectral_axis=np.arange(4995.0, 5025.0) * u.AA)
    >>> gs = to_model_grid(spec, grid, medium="air")
    >>> values, uncovered = grid_to_input(gs, np.full((1, 20), 0.5))
    >>> values[4:8]
    array([nan, nan, 0.5, 0.5])
    """
    if not isinstance(grid_spectra, GridSpectra):
        raise TypeError(f"grid_spectra must be a GridSpectra, got {type(grid_spectra).__name__}")
    gs = grid_spectra
    shape = gs.flux.shape
    values = _as_numpy(values, "values", shape)
    bad = ~np.isfinite(values) | ~gs.usable[:, None]
    if missing is not None:
        bad |= _as_numpy(missing, "missing", shape, dtype=bool)
    out, _, uncovered = _resample(
        values, gs.grid.edges, gs.input_edges, missing=bad, min_coverage=1.0
    )
    axis = gs.spectral_axis_index
    return (
        _from_last(out, axis, gs.descending, gs.shape),
        _from_last(uncovered, axis, gs.descending, gs.shape),
    )


def spectrum_like(spectrum: Spectrum, flux, uncertainty, mask, extra_meta: dict | None) -> Spectrum:
    """A new Spectrum on ``spectrum``'s axis, with its meta plus ``meta["deepclean"]``.

    The input's ``spectral_axis`` object, ``spectral_axis_index``, velocity
    convention and rest value are passed through; ``meta`` is a deep copy of the
    input's with ``extra_meta`` merged into its ``"deepclean"`` entry.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        The input spectrum (not modified).
    flux : `~astropy.units.Quantity`
        The new flux, in the input's shape.
    uncertainty : `~astropy.nddata.NDUncertainty` or None
        The new uncertainty.
    mask : ndarray of bool
        The new mask (always passed explicitly).
    extra_meta : dict or None
        Entries for ``meta["deepclean"]``.

    Returns
    -------
    `~specutils.Spectrum`
    """
    meta = copy.deepcopy(dict(spectrum.meta)) if spectrum.meta else {}
    deepclean = dict(meta.get("deepclean") or {})
    deepclean.update(copy.deepcopy(extra_meta) if extra_meta else {})
    meta["deepclean"] = deepclean
    return Spectrum(
        flux=flux,
        spectral_axis=spectrum.spectral_axis,
        spectral_axis_index=spectrum.spectral_axis_index,
        uncertainty=uncertainty,
        mask=mask,
        meta=meta,
        velocity_convention=spectrum.velocity_convention,
        rest_value=spectrum.rest_value,
    )


__getattr__ = moved(
    __name__,
    {
        "bin_edges": "specutils_deepclean.resample",
        "rebin_matrix": "specutils_deepclean.resample",
        "rebin": "specutils_deepclean.resample",
        "shift_flux": "specutils_deepclean.doppler",
        "doppler_shift": "specutils_deepclean.doppler",
    },
)
