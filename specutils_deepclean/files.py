"""Spectrum files in and out: the inputs of a run, reading them, writing results.

Results are written as FITS files that :func:`read_result` reads back whole, and that
specutils reads with ``Spectrum.read(path, format="tabular-fits")`` when the flux has
a physical unit (specutils' table reader recognises the flux column by its unit, so
normalised, dimensionless flux needs :func:`read_result`).  HDU 1 (``DATA``) holds the spectral
axis, the flux, the uncertainty (standard deviation) and the mask as table columns
(specutils' own ``tabular-fits`` writer); the primary header keeps the input file's
primary header (when specutils put it in ``meta["header"]``) plus the scalar entries
of ``meta["deepclean"]`` as ``DC*`` keywords (:data:`HEADER_KEYWORDS`); an extension
``DEEPCLEAN`` holds the whole ``meta["deepclean"]`` as JSON text (class posterior,
latent vector...; the boolean pixel arrays ``filled``, ``rejected`` and ``below_floor``
as the indices where they are True), and for telluric results an extension
``TRANSMISSION`` holds the estimated transmission in the same table layout
(``Spectrum.read(path, format="tabular-fits", hdu=3)``).  Every file is written under a
temporary name in the output folder and renamed when complete, so an interrupted run
never leaves a half-written result.  The result tables are built in memory in the
layout specutils' writer gives; files of known layouts are read without specutils
trying every format it knows on them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits, registry
from astropy.nddata import StdDevUncertainty
from astropy.table import Table
from specutils import Spectrum, SpectrumList

from ._atomic import atomic_path

__all__ = [
    "HEADER_KEYWORDS",
    "LAMOST_FORMAT",
    "check_format",
    "expand_inputs",
    "output_path",
    "read_result",
    "read_spectrum",
    "read_targets",
    "check_output_dir",
    "remove_partial_writes",
    "write_result",
]

#: ``meta["deepclean"]`` entries written as primary-header keywords (all of them are
#: also in the ``DEEPCLEAN`` extension as JSON).
HEADER_KEYWORDS = {
    "operation": "DCOPER",
    "model": "DCMODEL",
    "model_version": "DCMODVER",
    "package_version": "DCVERSIO",
    "mode": "DCMODE",
    "medium": "WAVEMED",
    "map_class": "DCCLASS",
    "ood_score": "DCOOD",
    "ood_flag": "DCOODFLG",
    "converged": "DCCONV",
    "exposures": "DCNEXP",
    "telluric_pixels": "DCNTELL",
}

#: ``format`` name of LAMOST low-resolution files (read by this package: specutils has
#: no LAMOST reader).
LAMOST_FORMAT = "LAMOST LRS"

#: Free disk space (bytes) a run needs before it starts.
MIN_FREE_BYTES = 50 * 2**20


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """The input files named by paths, glob patterns and ``@list`` files.

    Parameters
    ----------
    items : iterable of str or path-like
        Each one a file path, a glob pattern (``"spectra/*.fits"``, ``**`` recurses)
        or ``@FILE``: a text file with one path or pattern per line (blank lines and
        lines starting with ``#`` are skipped; relative paths are relative to the list
        file's folder).

    Returns
    -------
    list of pathlib.Path
        The files, in the order given (patterns sorted), each once.

    Raises
    ------
    FileNotFoundError
        If a list file is missing, or a pattern or path matches no file.
    """
    found: dict[Path, None] = {}
    for item in items:
        text = os.fspath(item)
        if text.startswith("@"):
            listing = Path(text[1:])
            if not listing.is_file():
                raise FileNotFoundError(f"list file {listing} does not exist")
            lines = [line.strip() for line in listing.read_text().splitlines()]
            names = [
                str(listing.parent / line) if not Path(line).is_absolute() else line
                for line in lines
                if line and not line.startswith("#")
            ]
            found.update(dict.fromkeys(expand_inputs(names)))
            continue
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise FileNotFoundError(f"no file matches {text!r}")
            found.update(dict.fromkeys(matches))
        else:
            # A missing plain path is the run's business (reported as a failed input).
            found[Path(text)] = None
    return list(found)


def _formats(cls, path: Path) -> list[str]:
    """The specutils formats that identify ``path`` for reading into ``cls``."""
    try:
        return registry.identify_format("read", cls, str(path), None, [], {})
    except Exception:  # an identifier that chokes on the file counts as no match
        return []


def _readable(format: str, cls) -> bool:
    try:
        registry.get_reader(format, cls)
    except registry.IORegistryError:
        return False
    return True


def check_format(format: str) -> None:
    """Refuse a format name no reader of this package or specutils takes.

    Parameters
    ----------
    format : str
        A specutils format (``Spectrum.read.list_formats()``) or :data:`LAMOST_FORMAT`.

    Raises
    ------
    ValueError
        If no reader is called ``format``.
    """
    if format != LAMOST_FORMAT and not (
        _readable(format, Spectrum) or _readable(format, SpectrumList)
    ):
        raise ValueError(
            f"specutils has no reader called {format!r} (Spectrum.read.list_formats() "
            "lists them)"
        )


def _known_format(path: Path) -> str | None:
    """The format of a file of a layout this package knows, from its headers (one open).

    Recognised: LAMOST LRS files (:data:`LAMOST_FORMAT`), SDSS-III/IV ``spec`` files,
    DESI ``spectra`` and ``coadd`` files (each by specutils' own identifier, run on
    the one open file), and files in the layout of specutils' ``tabular-fits`` writer
    (HDU 1 a table named ``DATA`` whose columns are the spectral axis, ``flux`` and
    optionally ``uncertainty`` and ``mask``: mock surveys and this package's results).
    Anything else gives None: specutils then identifies the file by trying all its
    formats, which opens it once per format.
    """
    from specutils.io.default_loaders.desi import coadd_identify, spectra_identify
    from specutils.io.default_loaders.sdss import spec_identify
    from specutils.io.default_loaders.tabular_fits import identify_tabular_fits

    from .surveys import _lamost_layout

    try:
        with fits.open(path, memmap=False) as hdul:
            telescope = str(hdul[0].header.get("TELESCOP", "")).strip().upper()
            if telescope == "LAMOST":
                return LAMOST_FORMAT if _lamost_layout(hdul) is not None else None
            for name, identify in (
                ("SDSS-III/IV spec", spec_identify),
                ("DESI spectra", spectra_identify),
                ("DESI coadd", coadd_identify),
            ):
                if _identifies(identify, path, hdul):
                    return name
            if _writer_layout(hdul) and _identifies(identify_tabular_fits, path, hdul):
                return "tabular-fits"
    except (OSError, ValueError):
        return None  # not FITS, or damaged: specutils' identification reports it
    return None


def _identifies(identify, path: Path, hdul) -> bool:
    """A specutils identifier's answer for an open file; False where it raises (as the
    registry's identification counts it)."""
    try:
        return bool(identify("read", str(path), hdul))
    except Exception:  # identifiers index headers freely (KeyError, IndexError...)
        return False


#: first column names of specutils' ``tabular-fits`` writer (by the axis' physical type)
_AXIS_COLUMNS = ("wavelength", "frequency", "energy", "wavenumber")


def _writer_layout(hdul) -> bool:
    """Whether HDU 1 is a table as specutils' ``tabular-fits`` writer lays it out."""
    if len(hdul) < 2 or hdul[0].header.get("NAXIS", 0) != 0:
        return False
    table = hdul[1]
    if not isinstance(table, fits.BinTableHDU) or table.header.get("EXTNAME") != "DATA":
        return False
    names = [name.lower() for name in table.columns.names]
    rest = names[2:]
    return (
        len(names) >= 2
        and names[0] in _AXIS_COLUMNS
        and names[1] == "flux"
        and rest in ([], ["uncertainty"], ["mask"], ["uncertainty", "mask"])
    )


def _read(path: Path, format: str | None):
    """``Spectrum.read`` or, for formats specutils reads only as a list, ``SpectrumList.read``
    (LAMOST, which specutils does not read: :func:`~specutils_deepclean.surveys.read_lamost`).
    Without ``format``, a file of a known layout (:func:`_known_format`) is read in that
    format; others are identified by specutils."""
    from .surveys import is_lamost, read_lamost

    if not format:
        format = _known_format(path)
    if format == LAMOST_FORMAT or (not format and is_lamost(path)):
        return read_lamost(path), LAMOST_FORMAT
    if format:
        check_format(format)
        if _readable(format, Spectrum):
            return Spectrum.read(path, format=format), format
        return SpectrumList.read(path, format=format), format
    single = _formats(Spectrum, path)
    only_list = [f for f in _formats(SpectrumList, path) if f not in single]
    if len(only_list) == 1:  # e.g. DESI: read as a list of arms, not by tabular-fits
        return SpectrumList.read(path, format=only_list[0]), only_list[0]
    return Spectrum.read(path), (single[0] if len(single) == 1 else None)


def read_targets(
    path: str | os.PathLike, format: str | None = None
) -> tuple[list[tuple[str | None, Spectrum]], dict[str, str]]:
    """Read a spectrum file with specutils: one spectrum per target.

    Formats specutils reads as a `~specutils.SpectrumList` (DESI ``spectra-*`` and
    ``coadd-*``) are recognised without ``format``, and so are LAMOST
    low-resolution files (:data:`LAMOST_FORMAT`, read by
    :func:`~specutils_deepclean.surveys.read_lamost`).  A DESI file gives one spectrum
    per target, arms combined (:func:`~specutils_deepclean.surveys.desi_targets`);
    another list of arms (spectra of different ranges) gives one spectrum, arms
    combined (:func:`~specutils_deepclean.surveys.combine_arms`).

    Parameters
    ----------
    path : str or path-like
        Any file specutils can read.
    format : str, optional
        A specutils format name (``Spectrum.read``'s or ``SpectrumList.read``'s
        ``format``) or :data:`LAMOST_FORMAT`; default: identify it (SDSS, DESI,
        LAMOST and ``tabular-fits`` files, this package's results among them, from
        their headers in one open; others by specutils, which tries every format).

    Returns
    -------
    targets : list of (str or None, `~specutils.Spectrum`)
        The target's name and its spectrum: the name is None for a file holding one
        spectrum (or one batch on one axis), the ``TARGETID`` for a DESI file.
    skipped : dict
        Target name -> reason, for the fibres of a DESI file that hold no target or
        no data (unassigned, sky, ``IVAR = 0``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    IsADirectoryError
        If the path is a folder.
    ValueError
        If specutils cannot read it (the message says which format it tried, or
        that none matched), or it holds several spectra of the same range.
    """
    from .surveys import desi_targets, is_desi, list_kind

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not a file: pass its files (e.g. '{path / '*.fits'}')"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        spectra, used = _read(path, format)
    except Exception as exc:  # specutils and astropy raise many kinds; report them all
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if format:
            how = f" as {format!r}"
        elif not _formats(SpectrumList, path):
            how = (
                " (no specutils format recognises it: pass one with --format / format=; "
                "Spectrum.read.list_formats() lists them)"
            )
        else:
            how = " (pass the right one with --format / format=)"
        raise ValueError(
            f"specutils cannot read {path}{how}: {type(exc).__name__}: {first_line}"
        ) from exc
    if isinstance(spectra, Spectrum):
        return [(None, spectra)], {}
    if not len(spectra):
        raise ValueError(f"{path} holds no spectrum (read{' as ' + repr(used) if used else ''})")
    if any(is_desi(s.meta) for s in spectra) and any("fibermap" in s.meta for s in spectra):
        targets, skipped = desi_targets(spectra)
        return [(t.meta["target"], t) for t in targets], skipped
    if list_kind(spectra) == "arms":
        from .surveys import combine_arms

        return [(None, combine_arms(spectra))], {}
    if len(spectra) == 1:
        return [(None, spectra[0])], {}
    raise ValueError(
        f"{path} holds {len(spectra)} spectra of the same range; pass a format that reads "
        "one of them"
    )


def read_spectrum(path: str | os.PathLike, format: str | None = None) -> Spectrum:
    """Read one spectrum with specutils (the arms of a target combined).

    Parameters
    ----------
    path : str or path-like
        Any file specutils can read (see :func:`read_targets`).
    format : str, optional
        A specutils format name; default: let specutils identify it.

    Returns
    -------
    `~specutils.Spectrum`

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    IsADirectoryError
        If the path is a folder.
    ValueError
        If specutils cannot read it, or it holds no target with data or several
        targets (use :func:`read_targets` for those).
    """
    targets, skipped = read_targets(path, format)
    if len(targets) == 1:
        return targets[0][1]
    if not targets:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ValueError(f"{path} holds no target with data ({reasons})")
    names = ", ".join(str(name) for name, _ in targets)
    raise ValueError(
        f"{path} holds {len(targets)} targets ({names}): read them with read_targets"
    )


def output_path(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    suffix: str,
    target: str | None = None,
) -> Path:
    """Where a result goes: ``output_dir/<stem>_<suffix>.fits``, or with a target name
    (:func:`read_targets`), ``output_dir/<stem>_<target>_<suffix>.fits``."""
    path = Path(path)
    stem = path.name
    for ext in (".gz", ".bz2", ".fz", ".fits", ".fit", ".fts", ".txt", ".dat", ".csv", ".ecsv"):
        stem = stem.removesuffix(ext)
    if target is not None:
        stem = f"{stem}_{target}"
    return Path(output_dir) / f"{stem}_{suffix}.fits"


def check_output_dir(output_dir: str | os.PathLike, min_free: int = MIN_FREE_BYTES) -> Path:
    """Create ``output_dir`` if needed and check it can take results, before any work.

    Raises
    ------
    PermissionError
        If the folder cannot be created or written to.
    OSError
        If it has less than ``min_free`` bytes free.
    """
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deepclean-probe-"):
            pass
    except OSError as exc:
        raise PermissionError(f"cannot write results to {folder}: {exc.strerror or exc}") from exc
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise OSError(
            f"only {free / 2**20:.1f} MiB free in {folder}; a run needs at least "
            f"{min_free / 2**20:.0f} MiB"
        )
    return folder


def remove_partial_writes(outputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files that interrupted writes of ``outputs`` left behind.

    A process killed inside `write_result` leaves ``.<name>.<random>.part`` beside
    where ``<name>`` would have been; the result file itself is never half written.
    Call this only when no other process is writing these outputs.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    for output in outputs:
        path = Path(output)
        for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _header(spectrum: Spectrum) -> fits.Header:
    header = spectrum.meta.get("header")
    header = header.copy() if isinstance(header, fits.Header) else fits.Header()
    info = spectrum.meta.get("deepclean", {})
    for key, keyword in HEADER_KEYWORDS.items():
        value = info.get(key)
        if isinstance(value, str | bool | int | float | np.integer | np.floating | np.bool_):
            header[keyword] = (value, f"deepclean {key}")
    for key, keyword in (("radial_velocity", "DCRV"), ("radial_velocity_error", "DCRVERR")):
        value = info.get(key)
        if isinstance(value, u.Quantity) and value.isscalar and np.isfinite(value):
            header[keyword] = (float(value.to_value(u.km / u.s)), f"deepclean {key} (km/s)")
    posterior = info.get("class_posterior")
    if isinstance(posterior, dict):  # one spectrum (a batch has a list of them)
        for name, prob in posterior.items():
            header[f"DCP_{name}"[:8]] = (float(prob), f"deepclean p(class={name})")
    return header


def _jsonable(value):
    if isinstance(value, Spectrum):
        return None  # written as its own extension
    if isinstance(value, u.Quantity):  # e.g. radial velocities: numbers in their unit
        return _jsonable(value.value)
    if isinstance(value, np.ndarray) and value.dtype == bool:
        # Boolean pixel masks (``filled``, ``rejected``...) as the indices where True, per row.
        return (
            np.flatnonzero(value).tolist()
            if value.ndim == 1
            else [np.flatnonzero(row).tolist() for row in value]
        )
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _table_hdus(spectrum: Spectrum, header: fits.Header | None) -> list:
    """The HDUs specutils' ``tabular-fits`` writer makes for ``spectrum``, built in memory.

    The same primary header (``header`` less ``NAXIS*``) and ``DATA`` table as
    ``Spectrum.write(path, format="tabular-fits")`` gives (column names, types,
    units, 2-D columns transposed), without its write to a file and read back.
    """
    header = fits.Header() if header is None else header.copy()
    for keyword in ("NAXIS", "NAXIS1", "NAXIS2"):
        header.remove(keyword, ignore_missing=True)
    axis = u.Quantity(spectrum.spectral_axis)
    name = str(axis.unit.physical_type)
    if name == "length":
        name = "wavelength"
    elif "energy" in name:
        name = "energy"
    flux = u.Quantity(spectrum.flux)
    columns, names = [axis, flux], [name, "flux"]
    if spectrum.uncertainty is not None:
        with np.errstate(divide="ignore"):  # an inverse variance of 0 is an infinite sigma
            sigma = spectrum.uncertainty.represent_as(StdDevUncertainty).quantity
        sigma = sigma.to(flux.unit, equivalencies=u.spectral_density(axis))
        columns.append(sigma.astype(flux.dtype))
        names.append("uncertainty")
    if spectrum.mask is not None:
        columns.append(np.asarray(spectrum.mask, dtype=bool))
        names.append("mask")
    columns[1:] = [column.T if column.ndim > 1 else column for column in columns[1:]]
    # Dimensionless columns get no TUNIT, as in results written through a file and read
    # back (astropy drops the empty TUNIT specutils writes).
    columns = [
        column.value if getattr(column, "unit", None) == u.dimensionless_unscaled else column
        for column in columns
    ]
    table = fits.BinTableHDU(data=Table(columns, names=names))
    table.header.update(EXTNAME="DATA")
    return [fits.PrimaryHDU(header=header), table]


def write_result(
    spectrum: Spectrum, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a cleaned spectrum and its ``meta["deepclean"]`` to FITS, atomically.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        A result of `~specutils_deepclean.denoise` or
        `~specutils_deepclean.remove_tellurics` (any Spectrum works).
    path : str or path-like
        The FITS file to write (see the module description for its layout).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite=True / --overwrite)")
    info = spectrum.meta.get("deepclean", {})
    hdus = _table_hdus(spectrum, _header(spectrum))
    text = json.dumps(_jsonable(info))
    hdus.append(
        fits.BinTableHDU.from_columns(
            [fits.Column(name="JSON", format=f"{len(text)}A", array=np.array([text]))],
            name="DEEPCLEAN",
        )
    )
    transmission = info.get("transmission")
    if isinstance(transmission, Spectrum):
        extra = _table_hdus(transmission, None)[1]
        extra.header["EXTNAME"] = "TRANSMISSION"
        hdus.append(extra)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return path


def _table_spectrum(hdu) -> Spectrum:
    table = Table.read(hdu)
    axis, flux = table.columns[0], table["flux"]
    uncertainty = None
    if "uncertainty" in table.colnames:
        uncertainty = StdDevUncertainty(np.asarray(table["uncertainty"]).T, unit=flux.unit)
    mask = np.asarray(table["mask"], dtype=bool).T if "mask" in table.colnames else None
    return Spectrum(
        flux=np.asarray(flux).T * (flux.unit or u.dimensionless_unscaled),
        spectral_axis=np.asarray(axis) * axis.unit,
        uncertainty=uncertainty,
        mask=mask,
    )


def read_result(path: str | os.PathLike) -> Spectrum:
    """Read a result file written by :func:`write_result`, with its ``meta["deepclean"]``.

    Parameters
    ----------
    path : str or path-like
        The result file.

    Returns
    -------
    `~specutils.Spectrum`
        Flux, uncertainty (standard deviation) and mask; ``meta["header"]`` is the
        primary header; ``meta["deepclean"]`` the stored dictionary, with ``filled``,
        ``rejected`` and ``below_floor`` back as boolean arrays and ``transmission`` as a Spectrum
        where present.
    """
    with fits.open(path) as hdul:
        spectrum = _table_spectrum(hdul["DATA"])
        info = json.loads(hdul["DEEPCLEAN"].data["JSON"][0])
        if "TRANSMISSION" in hdul:
            info["transmission"] = _table_spectrum(hdul["TRANSMISSION"])
        spectrum.meta["header"] = hdul[0].header.copy()
    for key in ("filled", "rejected", "below_floor"):
        if isinstance(info.get(key), list):
            info[key] = _pixel_mask(info[key], spectrum.shape)
    spectrum.meta["deepclean"] = info
    return spectrum


def _pixel_mask(indices: list, shape: tuple) -> np.ndarray:
    """The boolean array of ``shape`` that is True at ``indices`` (a list per row for 2-D)."""
    mask = np.zeros(shape, dtype=bool)
    if len(shape) == 1:
        mask[np.asarray(indices, dtype=int)] = True
    else:
        for row, where in enumerate(indices):
            mask[row, np.asarray(where, dtype=int)] = True
    return mask
