"""Quicklook figures of a cleaning result (needs matplotlib: ``pip install ".[plot]"``).

:func:`quicklook` draws, for one spectrum: the input, the cleaned spectrum with its
±1σ band, the input's masked pixels and the pixels the model filled in (shaded), the
MAP class and the class posterior in the legend (denoising), and the estimated
telluric transmission in a lower panel (telluric removal).  :func:`quicklook_file`
does the same from a result file written by the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import astropy.units as u
import numpy as np
from specutils import Spectrum

__all__ = ["quicklook", "quicklook_file"]


def _row(values, row: int):
    values = np.asarray(values)
    return values[row] if values.ndim == 2 else values


def _spans(ax, x: np.ndarray, flags: np.ndarray, **style) -> None:
    """Shade the runs of True in ``flags`` (first span labelled)."""
    flags = np.asarray(flags, dtype=bool)
    if not flags.any():
        return
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    label = style.pop("label", None)
    for start, stop in zip(starts, stops, strict=True):
        ax.axvspan(x[start], x[stop], lw=0, label=label, **style)
        label = None


def _posterior_text(info: dict, row: int) -> str | None:
    posterior = info.get("class_posterior")
    if isinstance(posterior, list):
        posterior = posterior[row]
    if not isinstance(posterior, dict):
        return None
    top = sorted(posterior.items(), key=lambda item: -item[1])[:3]
    return "p(class): " + ", ".join(f"{name} {p:.2f}" for name, p in top)


def _wavelength_label(unit, medium: str | None = None) -> str:
    """Axis label of a spectral axis: ``wavelength [Angstrom, air]`` and the like.

    Parameters
    ----------
    unit : `~astropy.units.Unit`
        Unit of the axis.
    medium : {"air", "vacuum"}, optional
        Medium of the wavelengths, when known.

    Returns
    -------
    str

    Examples
    --------
    >>> import astropy.units as u
    >>> _wavelength_label(u.AA, "air")
    'wavelength [Angstrom, air]'
    >>> _wavelength_label(u.GHz)
    'spectral axis [GHz]'
    """
    unit = u.Unit(unit)
    if not unit.is_equivalent(u.AA):
        return f"spectral axis [{unit}]"
    return f"wavelength [{unit}{', ' + medium if medium else ''}]"


def _flux_label(unit) -> str:
    """Axis label of a flux: ``normalised flux`` when dimensionless, else ``flux [unit]``.

    Examples
    --------
    >>> import astropy.units as u
    >>> _flux_label(u.dimensionless_unscaled), _flux_label(u.Jy)
    ('normalised flux', 'flux [Jy]')
    """
    unit = u.Unit(unit)
    return "normalised flux" if unit == u.dimensionless_unscaled else f"flux [{unit}]"


def _value(info: dict, key: str, row: int):
    value = info.get(key)
    return value[row] if isinstance(value, list) else value


def quicklook(
    result: Spectrum,
    original: Spectrum | None = None,
    *,
    row: int = 0,
    title: str | None = None,
    path: str | os.PathLike | None = None,
):
    """A figure of a cleaning result.

    Parameters
    ----------
    result : `~specutils.Spectrum`
        The output of `~specutils_deepclean.denoise` or
        `~specutils_deepclean.remove_tellurics` (its ``meta["deepclean"]`` is used).
    original : `~specutils.Spectrum`, optional
        The input spectrum (drawn in grey, its masked pixels shaded).
    row : int
        Row of a batch (2-D) result to draw.
    title : str, optional
        Figure title (default: the operation and the model).
    path : str or path-like, optional
        Write the figure there (PNG, PDF... from the suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    info = result.meta.get("deepclean", {})
    transmission = info.get("transmission")
    has_t = isinstance(transmission, Spectrum)
    fig = Figure(figsize=(10, 6.5 if has_t else 4.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1]) if has_t else [fig.subplots()]
    ax = axes[0]
    unit = result.spectral_axis.unit
    if unit.is_equivalent(u.AA):
        unit = u.AA
    x = result.spectral_axis.to_value(unit)
    if original is not None:
        density = u.spectral_density(original.spectral_axis)
        ax.plot(
            original.spectral_axis.to_value(unit, u.spectral()),
            _row(original.flux.to_value(result.flux.unit, density), row),
            lw=0.5, color="0.55", label="input",
        )
        same_axis = original.spectral_axis.shape == result.spectral_axis.shape
        if original.mask is not None and same_axis:
            masked = _row(original.mask, row)
            _spans(ax, x, masked, color="0.85", alpha=0.6, label="masked in input")
    flux = _row(result.flux.value, row)
    label = f"{info.get('operation', 'result')}"
    if "map_class" in info:
        label += f" (MAP class {_value(info, 'map_class', row)})"
    ax.plot(x, flux, lw=0.8, color="C3", label=label)
    if result.uncertainty is not None:
        from astropy.nddata import StdDevUncertainty

        sigma = _row(result.uncertainty.represent_as(StdDevUncertainty).array, row)
        ax.fill_between(x, flux - sigma, flux + sigma, color="C3", alpha=0.25, lw=0, label="±1σ")
    filled = info.get("filled")
    if filled is not None and np.shape(filled)[-1:] == x.shape:
        _spans(ax, x, _row(filled, row), color="C2", alpha=0.15, label="filled by the model")
    text = _posterior_text(info, row)
    if text:
        ax.plot([], [], " ", label=text)
    ood = _value(info, "ood_score", row)
    if ood is not None:
        ax.plot([], [], " ", label=f"OOD score {float(ood):.3g}")
    ax.set_ylabel(_flux_label(result.flux.unit))
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or f"{info.get('operation', '')} with {info.get('model', 'a model')}")
    if has_t:
        axes[1].plot(
            transmission.spectral_axis.to_value(unit, u.spectral()),
            _row(transmission.flux.value, row), lw=0.8, color="C0",
        )
        axes[1].set_ylabel("transmission")
        axes[1].set_ylim(-0.05, 1.1)
    medium = info.get("medium") or result.meta.get("medium")
    axes[-1].set_xlabel(_wavelength_label(unit, medium if medium in ("air", "vacuum") else None))
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def quicklook_file(
    input_path: str | os.PathLike,
    result_path: str | os.PathLike,
    png_path: str | os.PathLike,
    *,
    file_format: str | None = None,
    target: str | None = None,
) -> Path:
    """:func:`quicklook` of a result file (written by the command line) and its input.

    Parameters
    ----------
    input_path : str or path-like
        The input spectrum file.
    result_path : str or path-like
        Its result (:func:`specutils_deepclean.files.write_result` layout).
    png_path : str or path-like
        The figure to write.
    file_format : str, optional
        specutils format of the input.
    target : str, optional
        The target of a file holding several
        (:func:`~specutils_deepclean.files.read_targets`).

    Returns
    -------
    pathlib.Path
        ``png_path``.
    """
    from .files import read_targets

    targets, _ = read_targets(input_path, file_format)
    return _quicklook_target(dict(targets), input_path, result_path, png_path, target)


def _quicklook_target(found: dict, input_path, result_path, png_path, target) -> Path:
    """:func:`quicklook_file` with the input file's targets (name -> spectrum) read."""
    from .files import read_result

    if target not in found:
        raise ValueError(f"{input_path} has no target {target!r} (it has {list(found)})")
    result = read_result(result_path)
    title = Path(input_path).name + ("" if target is None else f" [{target}]")
    quicklook(result, found[target], title=title, path=png_path)
    return Path(png_path)
