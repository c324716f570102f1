"""The specutils-facing functions: ``remove_tellurics`` (and, later, ``denoise``).

This layer only checks arguments, moves spectra onto the model grid and back
(:mod:`specutils_deepclean.spectra`) and assembles the result; the networks live in
:mod:`specutils_deepclean.models`.  Torch is imported only when a function runs.
"""

from __future__ import annotations

import numbers
import os
import threading
import warnings

import astropy.constants as const
import astropy.units as u
import numpy as np
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

from .checks import context_rows, drop_fill_values, floor_sigma
from .provenance import package_version
from .spectra import ModelGrid, from_model_grid, grid_to_input, spectrum_like, to_model_grid
from .surveys import resolve_input
from .telluric_star import align_stellar
from .telluric_template import MOLECULES, molecule_labels
from .tellurics import column_bounds, estimate_transmission, telluric_region

__all__ = [
    "denoise",
    "remove_tellurics",
    "DEFAULT_DENOISER_MODEL",
    "DEFAULT_TELLURIC_MODEL",
    "TELLURIC_MODES",
    "MIN_COVERAGE",
    "MAX_FLUX_EXCESS",
    "MIN_SIGMA",
    "TRANSMISSION_FLOOR",
    "MAX_COLUMN",
    "COLUMN_FACTOR",
    "ConvergenceWarning",
]

#: Name of the shipped telluric model used when ``model`` is not given.
DEFAULT_TELLURIC_MODEL = "karaoke-miles"
#: Name of the shipped denoiser used when ``model`` is not given.
DEFAULT_DENOISER_MODEL = "denoiser-miles"
#: Smallest share of the model's pixels a spectrum must cover with valid data (`denoise`,
#: `remove_tellurics`).
MIN_COVERAGE = 0.2
#: `denoise` takes a pixel whose flux on the model grid exceeds this many times the 90th
#: percentile of its spectrum's absolute flux as missing data, with a warning: no star
#: has such a pixel, but unmasked fill values (-9999, 1e30) do, and they threw the
#: networks' float32 arithmetic into overflow.
MAX_FLUX_EXCESS = 1e3
#: `denoise` raises an uncertainty below this fraction of the spectrum's median flux (a
#: signal-to-noise ratio above 1e4 per pixel) to it, with a warning: the model's own
#: error is far larger, and S/N 1e5-1e6 overflowed the noise model's float32 arithmetic.
MIN_SIGMA = 1e-4
#: `remove_tellurics` (``divide``) masks the pixels whose transmission is below this.
TRANSMISSION_FLOOR = 0.05
#: `remove_tellurics` (``divide``) keeps the transmission at or above the model's
#: reference line transmission (airmass 2.5) to this power: three times its column.
MAX_COLUMN = 3.0
#: `remove_tellurics` (``divide``) holds the transmission between the reference line
#: transmission at the fitted column divided and multiplied by this.
COLUMN_FACTOR = 1.1
#: `denoise` fits radial velocities within plus or minus this by default.
DEFAULT_VELOCITY_RANGE = 2000.0 * u.km / u.s
_C_KMS = float(const.c.to_value(u.km / u.s))
#: Output modes of `remove_tellurics`.
TELLURIC_MODES = ("divide", "reconstruct", "physical")


class ConvergenceWarning(AstropyUserWarning):
    """`denoise`: the MAP optimisation of a spectrum's selected class did not converge."""


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _parse_device(device):
    """``device`` as a torch device (None for "auto"/None), its availability unchecked."""
    import torch

    if device in (None, "auto"):
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from exc


def _device(device):
    import torch

    device = _parse_device(device)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available")
    return device


def _model(model, expected: type, default: str, device):
    """A loaded model of class ``expected`` on ``device`` (name/path loads are cached)."""
    from .io.models import load_model

    if model is None:
        model = default
    if isinstance(model, str | os.PathLike):
        key = (os.fspath(model), str(device))
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = load_model(model, device=device)
            model = _CACHE[key]
    if not isinstance(model, expected):
        raise TypeError(
            f"model must be a {expected.__name__} (or its name or file), got {type(model).__name__}"
        )
    if model.device != device:
        model = model.to(device)
    return model


def _check_spectrum(spectrum) -> None:
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be a specutils Spectrum, got {type(spectrum).__name__}")


def _check_sampling(gs, grid: ModelGrid) -> None:
    """Warn when the input's pixels are far coarser or finer than the model's."""
    edges = gs.input_edges
    inside = (edges[:-1] >= grid.edges[0]) & (edges[1:] <= grid.edges[-1])
    if not inside.any():
        return
    ratio = np.median(np.diff(edges)[inside]) / np.median(np.diff(grid.edges))
    if ratio > 2 or ratio < 0.25:
        warnings.warn(
            f"the spectrum's pixels are {ratio:.2g} times the model's "
            f"({np.median(np.diff(grid.edges)):.3g} Angstrom): the model was trained at its "
            "own resolution and the telluric estimate may not match this spectrum's; "
            "train a model on your own spectra (train_karaoke) for such data",
            AstropyUserWarning,
            stacklevel=3,
        )


def _divided_uncertainty(uncertainty, factor):
    """The input's uncertainty divided by ``factor`` (same class), or None."""
    if uncertainty is None or not isinstance(
        uncertainty, StdDevUncertainty | VarianceUncertainty | InverseVariance
    ):
        return None
    array = np.asarray(uncertainty.array, dtype=float)
    if isinstance(uncertainty, StdDevUncertainty):
        array = array / factor
    elif isinstance(uncertainty, VarianceUncertainty):
        array = array / factor**2
    else:
        array = array * factor**2
    return type(uncertainty)(array, unit=uncertainty.unit)


def _local_scatter(residual: np.ndarray, use: np.ndarray, half_width: int = 25) -> np.ndarray:
    """Running robust RMS (1.4826 MAD) of ``residual`` over pixels where ``use``."""
    from scipy.ndimage import median_filter

    values = np.where(use, np.abs(residual), np.nan)
    size = (1, 2 * half_width + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        local = median_filter(
            np.nan_to_num(values, nan=np.nanmedian(values)), size=size, mode="nearest"
        )
    return 1.4826 * local


def remove_tellurics(
    spectrum: Spectrum,
    model=None,
    *,
    mode: str = "divide",
    device=None,
    medium: str | None = None,
    smooth_pixels: float = 1.0,
    region_threshold: float = 0.995,
    batch_size: int = 256,
    resolution=None,
    max_column: float | None = MAX_COLUMN,
    column_factor: float | None = COLUMN_FACTOR,
) -> Spectrum:
    """Remove telluric absorption from a spectrum with a Stellar Karaoke model.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum` or list of `~specutils.Spectrum`
        One spectrum, or a batch (N-D flux) on one spectral axis, in the
        topocentric frame (as observed: the telluric lines at their rest
        wavelengths).  Masked and non-finite pixels are missing data.  A list
        (e.g. a `~specutils.SpectrumList`) of spectra covering different ranges
        holds the arms of one target, or of a batch (a DESI file: one row per
        fibre): they are put on one axis by
        :func:`~specutils_deepclean.surveys.combine_arms` first, and the result is
        on that axis (:func:`~specutils_deepclean.surveys.list_kind`).
    model : str, path or `~specutils_deepclean.models.karaoke.KaraokeVAE`, optional
        A shipped model name, a model file, or a loaded model; default
        ``"karaoke-miles"``.
    mode : {"divide", "reconstruct", "physical"}
        ``"physical"`` fits a per-molecule transmission (H2O and O2 depths, a
        velocity of the atmosphere, the resolution) with the network's
        reconstruction as the star inside the model's range and a smooth continuum
        outside it, and divides by it wherever the atmosphere has lines, over the
        whole input (3500-10500 Angstrom); inside 6300-7400 Angstrom the stellar model
        is corrected by the MILES principal components (``miles-pca``) and the fit made
        again; see :mod:`specutils_deepclean.telluric_fit` and
        :mod:`specutils_deepclean.telluric_physical`.
        ``"reconstruct"`` returns the network's reconstruction (the paper's output);
        ``"divide"`` moves the reconstruction to the velocity where it matches the
        observation (:func:`~specutils_deepclean.telluric_star.align_stellar`: the
        network draws stars near rest), estimates the transmission
        ``T = observed / reconstruction`` only where the atmosphere can absorb,
        smooths it, clips it to at most 1 (and to at least the atmosphere's bound,
        ``max_column``) and divides the observed spectrum by it: outside the
        telluric bands the spectrum comes back unchanged, inside them it keeps its
        own detail and noise.
    device : str, optional
        ``"auto"``/None (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    medium : {"air", "vacuum"}, optional
        Medium of the spectrum's wavelengths when its meta does not state it; it
        overrides the meta, with a warning when they differ (see
        :func:`~specutils_deepclean.spectra.to_model_grid`).
    smooth_pixels : float
        ``divide``: Gaussian sigma (model pixels) used to smooth ``T``.
    region_threshold : float
        ``divide``: the telluric region is where the model's reference line
        transmission (airmass 2.5) is below this value.
    batch_size : int
        Spectra per network call.
    resolution : float or `~astropy.units.Quantity`, optional
        ``physical``: the resolving power, or a FWHM; default
        ``meta["resolving_power"]``, else fitted.
    max_column : float or None
        ``divide``: the largest telluric column accepted, in units of the model's
        reference (the line transmission at airmass 2.5): ``T`` is kept at or above
        that transmission raised to ``max_column`` (default `MAX_COLUMN`), so a
        stellar line the reconstruction misses cannot pass for absorption deeper
        than the atmosphere's lines at that wavelength.  None: no bound.
    column_factor : float or None
        ``divide``: a column of the reference line transmission is fitted per
        spectrum and molecule (H2O, O2) and ``T`` is held between that transmission
        at the column times and divided by ``column_factor`` (default
        `COLUMN_FACTOR`): ``T`` can then only be deep where the atmosphere has lines,
        is 1 where it has none, and a band whose expected absorption is below the
        noise keeps ``T = 1`` (:func:`~specutils_deepclean.tellurics.column_bounds`).
        None: no such bounds (the paper's blind estimate within ``max_column``).

    Returns
    -------
    `~specutils.Spectrum`
        A new spectrum on the input's spectral axis, in its units.
        ``meta["deepclean"]`` holds ``transmission`` (a Spectrum on the input's axis,
        ``divide`` only), ``mode``, ``model``, ``model_version``, ``telluric_pixels``
        (pixels changed per spectrum) and the package version; ``divide`` also
        ``transmission_floor``, ``below_floor`` (bool, the input's shape: pixels
        masked because their transmission is below the floor),
        ``stellar_model_shift`` (km/s, the shift applied to the reconstruction, per
        spectrum), ``max_column``, ``column_factor`` and ``columns`` (per molecule,
        the fitted column relative to the reference at airmass 2.5, per spectrum;
        absent when ``column_factor`` is None).

    Raises
    ------
    TypeError
        If ``spectrum`` is not a Spectrum or ``model`` not a telluric model.
    ValueError
        If ``mode`` or ``device`` is unknown, ``max_column`` is not positive,
        ``smooth_pixels`` is not a finite number of model pixels or
        ``region_threshold`` not in (0, 1], the spectrum does not overlap the
        model's wavelength range (the message names both), has no valid pixel, or
        covers less than `MIN_COVERAGE` of the model's pixels with valid data (for
        a batch: if no row does); for a list
        holding several exposures (spectra of the same range), or mixing arms and
        exposures.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        If the spectrum is sampled far more coarsely or finely than the model, or
        its medium is unknown.  If some rows of a batch have no valid pixel or
        cover less than `MIN_COVERAGE`: they are returned fully masked (``divide``:
        with their input flux, ``T`` NaN; ``reconstruct``: NaN).

    Notes
    -----
    ``divide``: pixels outside the telluric region are returned exactly as they came
    in (flux, uncertainty, mask; a non-finite flux is masked).  Inside it, flux and
    uncertainty are divided by ``T``; where ``T`` cannot be estimated or falls below
    `TRANSMISSION_FLOOR` (0.05: saturated lines), on the model grid or on the input's
    axis after resampling, the pixel is returned unchanged but masked, so no pixel is
    amplified more than 20 times.  Input pixels outside the model's range are
    returned unchanged but masked.  ``reconstruct``: the uncertainty is
    the local robust scatter of the observation about the reconstruction (outside
    the telluric region, over 51 pixels): an upper bound on the reconstruction's
    error, as it contains the observation's noise.

    References
    ----------
    Sedaghat, N. et al. 2023, MNRAS 526, "Stellar Karaoke: deep blind separation of
    terrestrial atmospheric effects out of stellar spectra by velocity whitening".
    """
    spectrum = resolve_input(spectrum, "remove_tellurics", exposures=False)
    _check_spectrum(spectrum)
    if mode not in TELLURIC_MODES:
        raise ValueError(f"mode must be one of {TELLURIC_MODES}, got {mode!r}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_column is not None and not max_column > 0:
        raise ValueError(f"max_column must be positive or None, got {max_column!r}")
    if column_factor is not None and not column_factor >= 1:
        raise ValueError(f"column_factor must be at least 1 or None, got {column_factor!r}")
    if not (isinstance(region_threshold, numbers.Real) and 0 < region_threshold <= 1):
        raise ValueError(f"region_threshold must be in (0, 1], got {region_threshold!r}")
    from .models.karaoke import KaraokeVAE

    device = _device(device)
    net = _model(model, KaraokeVAE, DEFAULT_TELLURIC_MODEL, device)
    n_model = len(net.wavelength)
    if not (isinstance(smooth_pixels, numbers.Real) and 0 <= smooth_pixels <= n_model):
        raise ValueError(
            "smooth_pixels must be a finite number of model pixels, at least 0 and at most "
            f"{n_model} (the model's pixels), got {smooth_pixels!r}"
        )
    if mode == "physical":
        from .models.baselines import PCADenoiser
        from .telluric_physical import STELLAR_BASIS, remove_physical

        info = {"operation": "remove_tellurics", "mode": mode, "model": net.name,
                "model_version": net.version, "package_version": package_version()}
        basis = _model(STELLAR_BASIS, PCADenoiser, STELLAR_BASIS, device)
        return remove_physical(spectrum, net, medium=medium, resolution=resolution,
                               batch_size=batch_size, floor=TRANSMISSION_FLOOR, info=info,
                               basis=basis)
    grid = ModelGrid(net.wavelength, net.medium)
    gs = to_model_grid(spectrum, grid, medium=medium)
    _drop_rows(gs, ~_covered_rows([gs], len(grid), "remove_tellurics"))
    _check_sampling(gs, grid)
    recon = net.reconstruct(gs.flux, gs.missing, batch_size=batch_size)
    if "telluric_lines" not in net.extra:
        raise ValueError(
            f"model {net.name} has no 'telluric_lines' array: it cannot locate the bands"
        )
    lines = np.asarray(net.extra["telluric_lines"], dtype=float)
    region = telluric_region(lines, threshold=region_threshold)
    info = {
        "operation": "remove_tellurics",
        "mode": mode,
        "model": net.name,
        "model_version": net.version,
        "package_version": package_version(),
        "medium": gs.medium,
    }
    if mode == "reconstruct":
        return _reconstruct_result(gs, recon, region, info)
    recon, shift = _aligned_reconstruction(gs, recon, region)
    info["stellar_model_shift"] = _per_spectrum(gs, shift)
    info["max_column"] = max_column
    lower = None if max_column is None else np.clip(lines, 0.0, 1.0) ** max_column
    upper = None
    info["column_factor"] = column_factor
    if column_factor is not None:
        low, upper, columns = column_bounds(
            gs.flux, recon, lines, region, molecule_labels(grid.wave_aa, grid.medium),
            wave_aa=grid.wave_aa, sigma=gs.sigma, factor=column_factor, max_column=max_column,
        )
        lower = low if lower is None else np.maximum(lower, low)
        info["columns"] = {name: _per_spectrum(gs, columns[:, m]) for m, name in enumerate(MOLECULES)}
    return _divide_result(spectrum, gs, recon, region, smooth_pixels, (lower, upper), info)


def _aligned_reconstruction(gs, recon: np.ndarray, region: np.ndarray):
    """The reconstruction moved to the velocity where it matches the observation.

    The network draws a star near its rest wavelengths whatever its velocity
    (:mod:`specutils_deepclean.telluric_star`); unmoved, its lines sit beside the
    observed ones and ``divide`` takes the difference for transmission.  The shift
    is measured on the valid pixels outside the telluric region.  The few pixels at
    the grid's ends that the move leaves without a model keep the unmoved one.
    """
    use = ~gs.missing & ~region[None, :]
    moved, shift = align_stellar(gs.grid.wave_aa, gs.flux, recon, use)
    return np.where(np.isfinite(moved), moved, recon), shift


def _per_spectrum(gs, values: np.ndarray):
    """A float for a single spectrum, else a nested list in the input's batch shape."""
    axis = gs.spectral_axis_index % len(gs.shape)
    batch_shape = tuple(n for i, n in enumerate(gs.shape) if i != axis)
    values = np.asarray(values, dtype=float)
    return float(values[0]) if not batch_shape else values.reshape(batch_shape).tolist()


def _reconstruct_result(gs, recon, region, info) -> Spectrum:
    residual = gs.flux - recon
    use = ~gs.missing & ~region[None, :]
    sigma = _local_scatter(residual, use)
    info["telluric_pixels"] = int(region.sum())
    return from_model_grid(gs, recon, sigma, meta=info)


def _divide_result(spectrum, gs, recon, region, smooth_pixels, bounds, info) -> Spectrum:
    t_grid, unusable = estimate_transmission(
        gs.flux,
        recon,
        region,
        missing=gs.missing,
        smooth_pixels=smooth_pixels,
        floor=TRANSMISSION_FLOOR,
        lower=bounds[0],
        upper=bounds[1],
    )
    # Resample T - 1: exactly zero outside the bands, so those pixels stay untouched.
    # Input pixels overlapping a grid pixel without a usable T are uncovered.
    delta, uncovered = grid_to_input(gs, t_grid - 1.0, missing=unusable)
    # Of those, the ones whose grid pixels have a T below the floor (none unknown).
    saturated = uncovered & ~grid_to_input(gs, t_grid - 1.0)[1]
    transmission = 1.0 + delta
    # The flux-conserving resampling can overshoot at band edges, above 1 (clipped)
    # and below the floor, even below 0: the floor must hold on the input's axis.
    below = ~uncovered & ~(transmission >= TRANSMISSION_FLOOR)
    factor = np.where(uncovered | below, 1.0, np.minimum(transmission, 1.0))
    flux = spectrum.flux / factor
    mask = (
        np.zeros(spectrum.shape, dtype=bool)
        if spectrum.mask is None
        else np.array(spectrum.mask, dtype=bool)
    )
    mask = np.broadcast_to(mask, spectrum.shape) | uncovered | below | ~np.isfinite(flux.value)
    info["telluric_pixels"] = np.count_nonzero(
        factor != 1.0, axis=spectrum.spectral_axis_index
    ).tolist()
    info["transmission_floor"] = TRANSMISSION_FLOOR
    info["below_floor"] = saturated | below
    info["transmission"] = Spectrum(
        flux=u.Quantity(
            np.where(uncovered, np.nan, np.where(below, transmission, factor)),
            u.dimensionless_unscaled,
        ),
        spectral_axis=spectrum.spectral_axis,
        mask=uncovered | below,
        spectral_axis_index=spectrum.spectral_axis_index,
    )
    return spectrum_like(
        spectrum, flux, _divided_uncertainty(spectrum.uncertainty, factor), mask, info
    )


def _exposures(spectrum) -> list[Spectrum]:
    """A list of exposures of one star, or [spectrum] for a single Spectrum."""
    if isinstance(spectrum, Spectrum):
        return [spectrum]
    if isinstance(spectrum, list | tuple):  # SpectrumList is a list
        if not spectrum:
            raise ValueError("denoise needs at least one exposure, got an empty list")
        for i, item in enumerate(spectrum):
            if not isinstance(item, Spectrum):
                raise TypeError(
                    f"exposure {i} is a {type(item).__name__}, not a specutils Spectrum"
                )
            if item.flux.ndim != 1:
                raise ValueError(
                    f"exposure {i} has a {item.flux.ndim}-D flux: a list of exposures must hold "
                    "1-D spectra of one star (pass a 2-D Spectrum for a batch of stars)"
                )
        units = {item.flux.unit.physical_type for item in spectrum}
        if len(units) > 1:
            raise ValueError(
                f"the exposures have incompatible flux units: {sorted(map(str, units))}"
            )
        return list(spectrum)
    raise TypeError(
        "spectrum must be a specutils Spectrum or a list of Spectrum exposures, "
        f"got {type(spectrum).__name__}"
    )


def _exposure_on_grid(spectrum: Spectrum, index: int, count: int, grid, medium):
    """`to_model_grid` of exposure ``index`` of ``count``; its refusal (ValueError) names
    the exposure when there are several."""
    try:
        return to_model_grid(spectrum, grid, medium=medium)
    except ValueError as exc:
        if count == 1 or type(exc) is not ValueError:
            raise
        raise ValueError(f"exposure {index} of {count}: {exc}") from exc


def _covered_rows(gs_list, n_pix: int, operation: str = "denoise") -> np.ndarray:
    """Which stars cover at least `MIN_COVERAGE` of the grid; warn about the others.

    Raises ValueError when none does (a single spectrum or a whole batch).  Rows with
    no usable pixel at all were already reported by `to_model_grid`: the warning here
    names only the partly covered ones.  ``operation`` names the caller in messages.
    """
    covered = np.sum([(~gs.missing).sum(axis=1) for gs in gs_list], axis=0) / n_pix
    good = covered >= MIN_COVERAGE

    def message(rows: np.ndarray) -> str:
        return (
            f"spectra {rows.tolist()} cover {np.round(covered[rows], 3).tolist()} of the "
            f"model's range with valid pixels; {operation} needs at least {MIN_COVERAGE:.0%}"
        )

    if not good.any():
        raise ValueError(message(np.flatnonzero(~good)))
    partly = np.flatnonzero(~good & (covered > 0))
    if partly.size:
        warnings.warn(
            f"{message(partly)}: they are returned fully masked", AstropyUserWarning, stacklevel=3
        )
    return good


def _drop_rows(gs, rows: np.ndarray) -> None:
    """Make the rows ``rows`` (bool) of ``gs`` unusable, in place: they come back masked."""
    if rows.any():
        gs.scale[rows] = np.nan
        gs.missing[rows] = True
        gs.flux[rows] = np.nan
        gs.sigma[rows] = np.nan


def denoise(
    spectrum,
    model=None,
    *,
    device=None,
    medium: str | None = None,
    steps: int = 20,
    n_starts: int = 2,
    clip: float | None = 5.0,
    seed: int = 0,
    radial_velocity=None,
    velocity_range=DEFAULT_VELOCITY_RANGE,
) -> Spectrum:
    """Denoise stellar spectra with the deep Bayesian model (Kang et al.).

    Parameters
    ----------
    spectrum : `~specutils.Spectrum` or list of `~specutils.Spectrum`
        One spectrum, a batch (N-D flux: one star per row), or a list (e.g. a
        `~specutils.SpectrumList`) of 1-D exposures of ONE star, which share one
        posterior (Eq. 7 sums their likelihoods; each exposure has its own
        throughput and velocity, pooled where the exposures agree: the documentation
        page *Denoising*, section Several exposures).  Masked and non-finite pixels are
        missing data.  A list of spectra covering different ranges is not
        exposures but the arms of one target, or of a batch (a DESI file: one row
        per fibre): they are put on one axis by
        :func:`~specutils_deepclean.surveys.combine_arms` first, and the result is
        on that axis (:func:`~specutils_deepclean.surveys.list_kind` tells the
        two apart).
    model : str, path or `~specutils_deepclean.models.denoiser.Denoiser`, optional
        A shipped model name, a model file or a loaded model; default
        ``"denoiser-miles"``.
    device : str, optional
        ``"auto"``/None (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    medium : {"air", "vacuum"}, optional
        Medium of the wavelengths when the meta does not state it; it overrides the
        meta, with a warning when they differ.
    steps, n_starts : int
        MAP optimisation budget: the largest number of Newton steps per class and
        the starts per class (see
        `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`).
    clip : float or None
        Outlier rejection: pixels more than ``clip`` times their noise above the
        model's first guess (cosmic-ray hits, sky-line residuals) are left out of
        the fit; None keeps every pixel.
    seed : int
        Seed of the optimisation's random starts (results are deterministic).
    radial_velocity : `~astropy.units.Quantity`, optional
        The star's line-of-sight velocity in the frame of the input's spectral
        axis (positive: redshift, the convention of
        `~specutils_deepclean.doppler.doppler_shift`), when it is known: a scalar,
        or one per row of a batch (or per exposure of a list).  By default (None)
        it is fitted with the spectrum: a search over ``velocity_range`` against
        the model's spectra, refined with the MAP spectrum (see
        `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`).
        ``0 km/s`` treats the spectra as at rest, as versions before 0.2 did.
    velocity_range : `~astropy.units.Quantity`
        The fit searches velocities within plus or minus this (default 2000 km/s: as
        accurate as 1000 km/s on MILES val stars, and it reaches NGC 3073 at 1128 km/s).

    Returns
    -------
    `~specutils.Spectrum`
        The denoised spectrum ``G(z_MAP)`` on the input's axis (the first
        exposure's for a list), in the input's units, with the model's per-pixel
        uncertainty (Laplace covariance of ``z`` pushed through ``G``, mixed over
        the class posterior) in the input's uncertainty class, in the observed frame
        (the model is shifted to the star's velocity; pixels the shifted model does
        not reach, at the ends of its range, are masked).
        ``meta["deepclean"]`` holds ``map_class``, ``class_posterior`` (class ->
        probability), ``z``, ``radial_velocity`` and ``radial_velocity_error``
        (Quantity, km/s: fitted or as given, error 0 when given; one per exposure
        for a list), ``ood_score``, ``ood_flag`` (True: the spectrum is not like the
        model's stars, its result is not to be trusted and its class posterior is
        uniform), ``fit_chi2``, ``fit_structure`` and ``snr`` (the statistics of the
        flag, see `~specutils_deepclean.models.ood`), ``model_error_share`` (the
        median share of the uncertainty's variance that is the model's own error on
        a spectrum unlike its training stars, `~specutils_deepclean.models.model_error`;
        0 for most) and ``model_error_scale`` (the factor, at most 1, on the variance
        of a star the model fits better than its noise budget assumes),
        ``filled`` (input pixels that were
        missing and now carry model values), ``rejected`` (input pixels left out
        as outliers, in any exposure), ``converged`` (whether the MAP class's
        optimisation converged), ``class_converged`` (class -> the same for each
        class; False also for classes dropped after screening) and the model's
        name and version; one entry per row for a batch.

    Raises
    ------
    TypeError
        If the input is not a Spectrum or a list of them, ``model`` is not a
        denoiser or ``seed`` not an integer.
    ValueError
        If a spectrum does not overlap the model's range, has no valid pixel, or
        covers less than `MIN_COVERAGE` of the model's pixels with valid data, or
        has no run of valid pixels as long as the noise model's context plus one (a
        mask with a hole every few pixels) (for a batch: if no row passes); for a
        list mixing arms and exposures.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        If spectra are flagged as unlike the model's stars (``ood_flag``: a
        galaxy, a quasar, a star beyond ``velocity_range``, a spectrum with too
        little signal...; the message names the rows); their results are returned
        but should not be trusted.  If some rows of a batch have no valid pixel,
        cover less than `MIN_COVERAGE` or have no such run of valid pixels: they
        are returned fully masked (NaN flux)
        and their ``meta["deepclean"]`` entries are None.
    ConvergenceWarning
        (an `~astropy.utils.exceptions.AstropyUserWarning`) naming the spectra whose
        selected class's MAP optimisation did not converge (``converged`` False).

    Notes
    -----
    Pixels the input masked keep ``mask`` True in the result (the input said they
    were bad) but carry the model's values: ``meta["deepclean"]["filled"]`` marks
    them.

    On a CPU with several torch threads, a batch's rows are denoised in blocks run at
    once, one per thread (`~specutils_deepclean.inference.denoise_arrays`; the
    documentation page *Performance*): the same results, faster.

    References
    ----------
    Kang, X. et al., "A novel stellar spectrum denoising method based on deep
    Bayesian modeling".
    """
    exposures = _exposures(resolve_input(spectrum, "denoise", exposures=True))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if not -(2**63) <= seed < 2**64:  # what torch.Generator.manual_seed takes
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed}")
    from .models.denoiser import Denoiser

    torch_device = _device(device)
    net = _model(model, Denoiser, DEFAULT_DENOISER_MODEL, torch_device)
    grid = ModelGrid(net.wavelength, net.medium)
    gs_list = [
        _exposure_on_grid(item, i, len(exposures), grid, medium)
        for i, item in enumerate(exposures)
    ]
    for gs in gs_list:
        drop_fill_values(gs, MAX_FLUX_EXCESS)
        floor_sigma(gs, MIN_SIGMA)
    good = _covered_rows(gs_list, len(grid))
    good = context_rows(gs_list, max(flow.context for flow in net.flows.values()), good)
    import torch

    from .inference import denoise_arrays

    velocity, searched = _velocity_option(radial_velocity, velocity_range, good, len(exposures))
    flux = np.stack([gs.flux for gs in gs_list], axis=1)[good]
    sigma = np.stack([gs.sigma for gs in gs_list], axis=1)[good]
    missing = np.stack([gs.missing for gs in gs_list], axis=1)[good]
    scale = np.stack([gs.scale for gs in gs_list], axis=1)[good]
    if not all(gs.has_uncertainty for gs in gs_list):
        sigma = None
    # to_model_grid normalised the spectra (scale), from_model_grid undoes it on the
    # input's axis: the MAP result is taken in the normalised units
    result = denoise_arrays(
        net,
        flux,
        sigma,
        missing,
        scale=scale,
        steps=steps,
        n_starts=n_starts,
        clip=clip,
        generator=torch.Generator().manual_seed(seed),
        velocity=velocity,
        velocity_range=searched,
    ).map
    # Row of each star in `result`, None for a star without enough coverage.
    rows = np.cumsum(good) - 1
    index = [int(row) if ok else None for row, ok in zip(rows, good, strict=True)]
    ood_score = _per_star(index, lambda i: float(result.ood_score[i]))
    ood_flag = _per_star(index, lambda i: bool(result.ood_flag[i]))
    _warn_ood(ood_flag)
    selected = result.converged[np.arange(len(result.map_class)), result.map_class]
    converged = _per_star(index, lambda i: bool(selected[i]))
    _warn_convergence(converged, steps)
    many = len(exposures) > 1
    kms = u.km / u.s
    first = gs_list[0]
    filled, rejected = (
        np.nan_to_num(grid_to_input(first, _all_stars(mask, good, False).astype(float))[0]) > 0
        for mask in (result.filled, result.rejected)
    )
    names = list(result.class_names)
    info = {
        "operation": "denoise",
        "model": net.name,
        "model_version": net.version,
        "package_version": package_version(),
        "medium": first.medium,
        "exposures": len(exposures),
        "map_class": _per_star(index, lambda i: names[result.map_class[i]]),
        "class_posterior": _per_star(
            index,
            lambda i: dict(zip(names, map(float, result.class_posterior[i]), strict=True)),
        ),
        "z": _per_star(index, lambda i: result.z[i].tolist()),
        "radial_velocity": _per_star(
            index, lambda i: (result.velocity[i] if many else result.velocity[i, 0]) * kms
        ),
        "radial_velocity_error": _per_star(
            index,
            lambda i: (result.velocity_error[i] if many else result.velocity_error[i, 0]) * kms,
        ),
        "ood_score": ood_score,
        "ood_flag": ood_flag,
        "fit_chi2": _per_star(index, lambda i: float(result.fit_chi2[i])),
        "fit_structure": _per_star(index, lambda i: float(result.fit_structure[i])),
        "snr": _per_star(index, lambda i: float(result.snr[i])),
        "model_error_share": _per_star(index, lambda i: _model_error_share(result, i)),
        "model_error_scale": _per_star(index, lambda i: float(result.model_error_scale[i])),
        "converged": converged,
        "class_converged": _per_star(
            index,
            lambda i: dict(zip(names, map(bool, result.converged[i]), strict=True)),
        ),
        "filled": filled,
        "rejected": rejected,
    }
    if first.n_spec == 1 and exposures[0].flux.ndim == 1:
        info = {key: (value[0] if key in _PER_ROW else value) for key, value in info.items()}
    return from_model_grid(
        first,
        _all_stars(result.flux, good, np.nan),
        _all_stars(result.flux_sigma, good, np.nan),
        meta=info,
    )


def _model_error_share(result, i: int) -> float:
    """Median over star ``i``'s pixels of ``model_sigma^2 / flux_sigma^2`` (0 if none)."""
    share = np.square(result.model_sigma[i] / result.flux_sigma[i])
    share = share[np.isfinite(share)]
    return float(np.median(share)) if share.size else 0.0


def _per_star(index: list, value) -> list:
    """``value(i)`` for each star's row ``i`` in the MAP result, None for skipped stars."""
    return [None if i is None else value(i) for i in index]


def _all_stars(values: np.ndarray, good: np.ndarray, fill) -> np.ndarray:
    """Rows of the MAP result put back among all stars, ``fill`` for skipped stars."""
    values = np.asarray(values)
    out = np.full((good.size, *values.shape[1:]), fill, dtype=np.result_type(values, fill))
    out[good] = values
    return out


_PER_ROW = (
    "map_class",
    "class_posterior",
    "z",
    "radial_velocity",
    "radial_velocity_error",
    "ood_score",
    "ood_flag",
    "fit_chi2",
    "fit_structure",
    "snr",
    "model_error_share",
    "model_error_scale",
    "converged",
    "class_converged",
)


def _warn_convergence(converged: list, steps: int) -> None:
    """Warn about the rows whose selected class did not converge (None: skipped rows)."""
    rows = [i for i, ok in enumerate(converged) if ok is False]
    if rows:
        warnings.warn(
            f"spectra {rows} did not converge: the MAP optimisation of their selected "
            f"class stopped (at most {steps} Newton steps) before its Newton decrement "
            "fell below tol; their result may be far from the posterior's mode "
            "(meta['deepclean']['converged'] is False for them)",
            ConvergenceWarning,
            stacklevel=3,
        )


def _velocity_option(radial_velocity, velocity_range, good: np.ndarray, n_exposures: int):
    """``denoise``'s velocity options checked: the velocity (None: fit; else km/s for the
    MAP's stars) and the search range in km/s."""
    if not isinstance(velocity_range, u.Quantity) or not (
        velocity_range.unit.is_equivalent(u.km / u.s) and velocity_range.isscalar
    ):
        raise ValueError(f"velocity_range must be one velocity (Quantity), got {velocity_range!r}")
    searched = float(velocity_range.to_value(u.km / u.s))
    if not 0 < searched < 0.1 * _C_KMS:
        raise ValueError(f"velocity_range must be positive and below 0.1 c, got {velocity_range}")
    if radial_velocity is None:
        return None, searched
    if not isinstance(radial_velocity, u.Quantity) or not radial_velocity.unit.is_equivalent(
        u.km / u.s
    ):
        raise TypeError(
            f"radial_velocity must be a Quantity in velocity units, got {radial_velocity!r}"
        )
    value = radial_velocity.to_value(u.km / u.s)
    if not np.all(np.isfinite(value) & (np.abs(value) < _C_KMS)):
        raise ValueError("radial_velocity must be finite and below the speed of light")
    if value.ndim == 0:
        return float(value), searched
    if n_exposures > 1:
        if value.shape != (n_exposures,):
            raise ValueError(
                f"radial_velocity must be one velocity or {n_exposures} (one per exposure), "
                f"got shape {value.shape}"
            )
        return value[None], searched
    if value.shape != good.shape:
        raise ValueError(
            f"radial_velocity must be one velocity or {good.size} (one per spectrum), got "
            f"shape {value.shape}"
        )
    return value[good], searched


def _warn_ood(flags: list) -> None:
    rows = [i for i, flag in enumerate(flags) if flag]
    if rows:
        warnings.warn(
            f"spectra {rows} are flagged as unlike the model's stars (meta['deepclean']"
            "['ood_flag']): a galaxy, a quasar, a star beyond velocity_range, too little "
            "signal or a very unusual star? Their results should not be trusted",
            AstropyUserWarning,
            stacklevel=3,
        )
