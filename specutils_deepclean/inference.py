"""Array-level inference: the one path from model-grid arrays to a model's answer.

`denoise_arrays` is what `~specutils_deepclean.denoise` runs once the spectra are on
the model grid, and what the denoising benchmark, the denoiser's training (its
val-tuned steps) and the studies under ``benchmarks/`` run: divide each spectrum by
the median of its valid pixels (the model's training spectra were normalised so),
find the MAP of the deep Bayesian model
(`~specutils_deepclean.models.denoiser.Denoiser.map_estimate`), and put the result
back on the input's scale.  So the benchmarks measure the code users run.

This module imports no torch itself; the model passed in does.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .exposures import exposure_scales
from .spectra import median_normalise

if TYPE_CHECKING:  # pragma: no cover
    from .models.denoiser import Denoiser, MAPResult

__all__ = ["MIN_BLOCK_ROWS", "Denoised", "denoise_arrays"]

#: Fewest rows per thread for `denoise_arrays` to run a batch in row blocks, one per
#: torch thread (``specutils_deepclean.models.blocks``).
MIN_BLOCK_ROWS = 8


@dataclass(frozen=True)
class Denoised:
    """What `denoise_arrays` found: the MAP result and the scale that undoes the
    normalisation.

    Attributes
    ----------
    map : `~specutils_deepclean.models.denoiser.MAPResult`
        The MAP result, in the normalised units (the input divided by ``scale``).
    scale : ndarray, shape (B,)
        Each star's median (of its first exposure; with several exposures, the first
        exposure's throughput times the median of their co-add): the factor back to
        the input's units.
    """

    map: MAPResult
    scale: np.ndarray

    @property
    def flux(self) -> np.ndarray:
        """The denoised spectra in the input's units, shape (B, P)."""
        return self.map.flux * self.scale[:, None]

    @property
    def flux_sigma(self) -> np.ndarray:
        """Their per-pixel standard deviation in the input's units, shape (B, P)."""
        return self.map.flux_sigma * self.scale[:, None]

    @property
    def latent_sigma(self) -> np.ndarray:
        """The part of ``flux_sigma`` from the posterior of z and C alone (before the
        calibration scales and the generator's error), in the input's units."""
        return self.map.latent_sigma * self.scale[:, None]


def denoise_arrays(
    model: Denoiser,
    flux,
    sigma=None,
    missing=None,
    *,
    scale=None,
    **options: Any,
) -> Denoised:
    """Denoise spectra on the model grid: median-normalise, MAP estimate, rescale.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The model.
    flux : array_like, shape (B, P) or (B, E, P)
        Spectra on the model grid (one star per row; E exposures per star for 3-D,
        padded with NaN), in any units.  Non-finite values are missing.
    sigma : array_like, same shape as ``flux``, optional
        Per-pixel standard deviations in the units of ``flux``.
    missing : array_like of bool, same shape as ``flux``, optional
        True where a pixel is missing.
    scale : array_like, shape (B,) or (B, E), optional
        Given when ``flux`` and ``sigma`` are already divided by their medians (as
        `~specutils_deepclean.spectra.to_model_grid` returns them): these medians.
        Without it the medians are computed here
        (`~specutils_deepclean.spectra.median_normalise` of each exposure's valid
        pixels).  Several exposures of a star are then put on one level, that of
        their co-add (`~specutils_deepclean.exposures.exposure_scales`): each one's
        own median is biased by its noise.
    **options
        Passed to `~specutils_deepclean.models.denoiser.Denoiser.map_estimate`
        (``steps``, ``n_starts``, ``tol``, ``class_margin``, ``clip``,
        ``random_starts``, ``generator``, ``velocity`` (km/s; None fits it),
        ``velocity_range``; ``exposures`` is refused).

    Returns
    -------
    Denoised
        ``flux`` and ``flux_sigma`` on the input's scale (each star by the median of
        its first exposure; with several exposures, by the first exposure's share of
        their common level, `~specutils_deepclean.exposures.exposure_scales`);
        ``map`` in the normalised units.

    Raises
    ------
    ValueError
        If ``flux`` is not 2-D or 3-D, ``scale`` does not fit it, or
        ``map_estimate`` refuses the input (a star without a valid pixel...).
    TypeError
        If an option is not one of ``map_estimate``'s.

    Notes
    -----
    On a CPU, when the calling thread has several torch threads and the batch at least
    ``MIN_BLOCK_ROWS`` rows per thread, the MAP runs in row blocks, one per thread, each
    in its own Python thread with one intra-op thread
    (``specutils_deepclean.models.blocks``), and the blocks' results are joined in order:
    the same answer to float rounding, faster.  One torch thread
    (``torch.set_num_threads(1)``) runs the batch as one block.

    Examples
    --------
    >>> from specutils_deepclean.io.models import load_model
    >>> model = load_model("denoiser-miles")  # doctest: +SKIP
    >>> out = denoise_arrays(model, flux, sigma, missing, steps=20)  # doctest: +SKIP
    >>> out.flux.shape == flux.shape  # doctest: +SKIP
    True
    """
    if "exposures" in options:
        raise TypeError("denoise_arrays takes exposures as a 3-D flux (B, E, P), not an index")
    flux = np.asarray(flux, dtype=float)
    if flux.ndim not in (2, 3):
        raise ValueError(f"flux must be 2-D (B, P) or 3-D (B, E, P), got shape {flux.shape}")
    if scale is None:
        flux, scale = median_normalise(flux, missing)
        if sigma is not None:
            sigma = np.asarray(sigma, dtype=float) / scale[..., None]
    else:
        scale = np.asarray(scale, dtype=float)
        if scale.shape != flux.shape[:-1] and scale.shape != flux.shape[:1]:
            raise ValueError(
                f"scale must have shape {flux.shape[:-1]} (one per spectrum), got {scale.shape}"
            )
    if flux.ndim == 3 and flux.shape[1] > 1:  # one level for all exposures of a star
        scale = np.broadcast_to(scale.reshape(len(scale), -1), flux.shape[:2])
        usable = np.isfinite(scale) & (scale > 0)
        factor = exposure_scales(flux, sigma, missing, np.where(usable, scale, 1.0))
        factor = np.where(usable, factor, 1.0)
        flux = flux / factor[..., None]
        sigma = None if sigma is None else np.asarray(sigma, dtype=float) / factor[..., None]
        scale = scale * factor
    from .models.level import relevel  # torch, as the model passed in

    gone = ~np.isfinite(flux) if missing is None else np.asarray(missing) | ~np.isfinite(flux)
    level = relevel(model, flux, sigma, gone)  # 1 unless a wide part of the grid is missing
    if level.ndim == 2:  # the exposures of a star keep their one level
        level = np.broadcast_to(np.median(level, axis=1, keepdims=True), level.shape)
    if np.any(level != 1):
        scale = scale * level if scale.shape == level.shape else scale[:, None] * level
        flux = flux / level[..., None]
        sigma = None if sigma is None else sigma / level[..., None]
    result = _map_estimate(model, flux, sigma, missing, options)
    first = scale if scale.ndim == 1 else scale[:, 0]
    return Denoised(result, first)


def _map_estimate(model: Denoiser, flux, sigma, missing, options: dict) -> MAPResult:
    """``model.map_estimate`` of the batch; on a CPU with several torch threads, in row
    blocks run concurrently, one thread each (``specutils_deepclean.models.blocks``).

    A star's MAP does not depend on the other rows of its batch, so the blocks' results
    joined in order are the batch's (to float rounding).  Not split: random starts (they
    are drawn for the whole batch from one generator) and batches under
    `MIN_BLOCK_ROWS` rows per thread.  A block that refuses its rows or options
    (ValueError, TypeError) has the whole batch run as one, so that the error names
    the batch's rows.
    """
    from .models.blocks import build_caches, row_blocks, run_single_threaded

    blocks = row_blocks(len(flux), model.device, MIN_BLOCK_ROWS)
    if len(blocks) == 1 or options.get("random_starts", 0):
        return model.map_estimate(flux, sigma, missing, **options)
    tasks = [
        functools.partial(
            model.map_estimate,
            flux[block],
            None if sigma is None else sigma[block],
            None if missing is None else np.asarray(missing)[block],
            **_block_options(options, block, len(flux)),
        )
        for block in blocks
    ]
    try:
        build_caches(model, flux.shape[-1], _searched(model, options))
        parts = run_single_threaded(tasks)
    except (ValueError, TypeError):
        parts = None
    if parts is None:  # another thread's batch is running in blocks, or a block refused
        return model.map_estimate(flux, sigma, missing, **options)
    return _joined(parts)


def _searched(model: Denoiser, options: dict) -> float | None:
    """The velocity search's range when ``options`` fit the velocities, else None."""
    if "velocity" not in options or options["velocity"] is not None:
        return None
    default = inspect.signature(model.map_estimate).parameters["velocity_range"].default
    return options.get("velocity_range", default)


def _block_options(options: dict, block: slice, n_rows: int) -> dict:
    """``options`` for the rows ``block``: per-star velocities (B,) or (B, E) sliced."""
    velocity = options.get("velocity")
    if np.ndim(velocity) >= 1 and np.shape(velocity)[0] == n_rows:
        return {**options, "velocity": np.asarray(velocity)[block]}
    return options


def _joined(parts: list) -> MAPResult:
    """The blocks' `MAPResult` joined along the stars (arrays) in order; the batch-wide
    fields (``class_names``, ``flow``, ``sigma_estimated``) are the same in every block."""
    joined = {}
    for field in dataclasses.fields(parts[0]):
        values = [getattr(part, field.name) for part in parts]
        if isinstance(values[0], np.ndarray):
            joined[field.name] = np.concatenate(values)
        elif any(value != values[0] for value in values[1:]):
            raise RuntimeError(f"the row blocks disagree on {field.name}: {values}")
        else:
            joined[field.name] = values[0]
    return type(parts[0])(**joined)
