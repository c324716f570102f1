"""The stellar library format: one multi-extension FITS file per library.

*Library layout*: ``FLUX`` (``n_star x n_pix``), ``WAVE`` (``n_pix``, Angstrom),
``MASK`` (1 = bad) and ``PARAMS`` (one table row per spectrum), read into a
`Library`; the shipped example stars (`load_examples`) are one.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Table

__all__ = [
    "SPLITS",
    "Library",
    "load_examples",
]

#: The splits a library row can belong to.
SPLITS = ("train", "val", "test")
_REQUIRED_HDUS = ("FLUX", "WAVE", "MASK", "PARAMS")
_REQUIRED_COLUMNS = (
    "star_id", "teff", "logg", "feh", "class", "giant", "label", "split", "bad",
)
_MEDIA = {"air": "air", "vac": "vacuum", "vacuum": "vacuum"}
_EXAMPLES = "data/examples/miles_examples.fits"


@dataclass
class Library:
    """A stellar library: spectra on one wavelength grid plus a parameter table.

    Parameters
    ----------
    flux : ndarray, shape (n_star, n_pix)
        Flux densities (float32), arbitrary normalisation.
    wavelength : `~astropy.units.Quantity`, shape (n_pix,)
        Strictly increasing wavelengths (Angstrom) in ``medium``.
    mask : ndarray of bool, shape (n_star, n_pix)
        True where a pixel is bad (the file's ``MASK`` or non-finite flux).
    params : `~astropy.table.Table`
        One row per spectrum: at least ``star_id``, ``teff``, ``logg``, ``feh``,
        ``class``, ``giant``, ``label``, ``split``, ``bad``.
    medium : {"air", "vacuum"}
        Medium of the wavelengths.
    fwhm : `~astropy.units.Quantity` or None
        Spectral resolution (FWHM), when the file states it.
    name : str
        Library name (header ``LIBRARY``).
    path : pathlib.Path or None
        File the library was read from.
    meta : dict
        The primary header's other cards (provenance, references).

    Examples
    --------
    >>> from specutils_deepclean.datasets import load_examples
    >>> lib = load_examples()
    >>> len(lib), lib.medium, lib.fwhm
    (8, 'air', <Quantity 2.5 Angstrom>)
    >>> sorted(set(lib.splits.tolist()))
    ['test']
    >>> len(lib.select(cls="K"))
    2
    """

    flux: np.ndarray
    wavelength: u.Quantity
    mask: np.ndarray
    params: Table
    medium: str
    fwhm: u.Quantity | None = None
    name: str = ""
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.flux = np.asarray(self.flux, dtype=np.float32)
        if self.flux.ndim != 2:
            raise ValueError(f"flux must be 2-D (n_star, n_pix), got shape {self.flux.shape}")
        self.wavelength = u.Quantity(self.wavelength, u.AA)
        if self.wavelength.shape != self.flux.shape[1:]:
            raise ValueError(
                f"wavelength has {self.wavelength.size} pixels, flux {self.flux.shape[1]}"
            )
        if not np.all(np.diff(self.wavelength.value) > 0):
            raise ValueError("wavelength must be strictly increasing")
        mask = np.asarray(self.mask, dtype=bool)
        if mask.shape != self.flux.shape:
            raise ValueError(f"mask shape {mask.shape} differs from flux {self.flux.shape}")
        self.mask = mask | ~np.isfinite(self.flux)
        if len(self.params) != self.flux.shape[0]:
            raise ValueError(f"params has {len(self.params)} rows, flux {self.flux.shape[0]}")
        missing = [c for c in _REQUIRED_COLUMNS if c not in self.params.colnames]
        if missing:
            raise ValueError(f"params lacks the columns {missing}")
        if self.medium not in ("air", "vacuum"):
            raise ValueError(f"medium must be 'air' or 'vacuum', got {self.medium!r}")

    def __len__(self) -> int:
        return self.flux.shape[0]

    def __repr__(self) -> str:
        return (
            f"<Library {self.name!r}: {len(self)} spectra x {self.flux.shape[1]} px, "
            f"{self.wavelength[0]:.1f}-{self.wavelength[-1]:.1f} ({self.medium})>"
        )

    @property
    def star_ids(self) -> np.ndarray:
        """``star_id`` of every row."""
        return np.asarray(self.params["star_id"], dtype=str)

    @property
    def classes(self) -> np.ndarray:
        """Class (``O``...``M`` or ``unknown``) of every row."""
        return np.asarray(self.params["class"], dtype=str)

    @property
    def labels(self) -> np.ndarray:
        """Label (class, plus ``_giant`` for giants) of every row."""
        return np.asarray(self.params["label"], dtype=str)

    @property
    def splits(self) -> np.ndarray:
        """Split (``train``, ``val`` or ``test``) of every row."""
        return np.asarray(self.params["split"], dtype=str)

    def select(
        self,
        split: str | Iterable[str] | None = None,
        label: str | Iterable[str] | None = None,
        cls: str | Iterable[str] | None = None,
        good: bool | None = None,
    ) -> Library:
        """The rows that match every given criterion, as a new library.

        Parameters
        ----------
        split : str or iterable of str, optional
            One or more of ``"train"``, ``"val"``, ``"test"``.
        label, cls : str or iterable of str, optional
            Labels (e.g. ``"K_giant"``) or classes (e.g. ``"K"``) to keep.
        good : bool, optional
            True keeps rows not flagged ``bad``, False only the ``bad`` ones.

        Returns
        -------
        Library
        """
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            wanted = _as_names(split, "split")
            unknown = sorted(set(wanted) - set(SPLITS))
            if unknown:
                raise ValueError(f"unknown split {unknown}; choose from {list(SPLITS)}")
            keep &= np.isin(self.splits, wanted)
        if label is not None:
            keep &= np.isin(self.labels, _as_names(label, "label"))
        if cls is not None:
            keep &= np.isin(self.classes, _as_names(cls, "cls"))
        if good is not None:
            if not isinstance(good, bool | np.bool_):
                raise TypeError(f"good must be True, False or None, not {good!r}")
            keep &= np.asarray(self.params["bad"], dtype=bool) != good
        return self.take(np.flatnonzero(keep))

    def take(self, rows) -> Library:
        """The given rows (indices, slice or boolean mask), as a new library."""
        rows = np.arange(len(self))[rows]
        return Library(
            flux=self.flux[rows], wavelength=self.wavelength, mask=self.mask[rows],
            params=self.params[rows], medium=self.medium, fwhm=self.fwhm,
            name=self.name, path=self.path, meta=dict(self.meta),
        )

    def to_spectrum(self, rows=None):
        """The spectra as one `~specutils.Spectrum` with a 2-D flux.

        Parameters
        ----------
        rows : int, slice or array of int or bool, optional
            Rows to take (all by default).

        Returns
        -------
        `~specutils.Spectrum`
            Dimensionless flux ``(n_rows, n_pix)`` (1-D for an integer ``rows``), the
            mask, and ``meta`` with ``medium``, ``star_id`` and ``library``.
        """
        from specutils import Spectrum

        rows = slice(None) if rows is None else rows
        ids = self.star_ids[rows]
        return Spectrum(
            flux=self.flux[rows] * u.dimensionless_unscaled,
            spectral_axis=self.wavelength,
            mask=self.mask[rows],
            meta={"medium": self.medium, "star_id": ids.tolist(), "library": self.name},
        )

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the library in the library layout (see the module docstring).

        Parameters
        ----------
        path : path-like
            Output file (``.fits`` or ``.fits.gz``).
        overwrite : bool
            Replace an existing file.

        Returns
        -------
        pathlib.Path
        """
        path = Path(path)
        _library_hdus(self).writeto(path, overwrite=overwrite, checksum=True)
        return path


def _as_names(value, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        names = list(value)
        if all(isinstance(v, str) for v in names):
            return names
    raise TypeError(f"{what} must be a string or an iterable of strings, not {value!r}")


def _library_hdus(lib: Library) -> fits.HDUList:
    """HDUs of a library in the library layout."""
    wave = lib.wavelength.to_value(u.AA)
    primary = fits.PrimaryHDU()
    for key, value in lib.meta.items():
        primary.header[key] = value
    primary.header["LIBRARY"] = lib.name
    primary.header["NSTAR"] = (len(lib), "number of spectra (rows)")
    primary.header["NPIX"] = (wave.size, "pixels per spectrum")
    primary.header["NBAD"] = (int(np.sum(lib.params["bad"])), "spectra flagged bad in PARAMS")
    primary.header["WAVEMED"] = lib.medium
    primary.header["WAVEMIN"] = (wave[0], "[Angstrom]")
    primary.header["WAVEMAX"] = (wave[-1], "[Angstrom]")
    if lib.fwhm is not None:
        primary.header["FWHM"] = (lib.fwhm.to_value(u.AA), "[Angstrom] resolution FWHM")
    flux = fits.ImageHDU(lib.flux.astype(np.float32), name="FLUX")
    flux.header.update(_spectral_wcs(wave, lib.medium))
    wave_hdu = fits.ImageHDU(wave.astype(np.float64), name="WAVE")
    wave_hdu.header["BUNIT"] = "Angstrom"
    wave_hdu.header["WAVEMED"] = lib.medium
    wave_hdu.header["AIRORVAC"] = "air" if lib.medium == "air" else "vac"
    mask = fits.ImageHDU(lib.mask.astype(np.uint8), name="MASK")
    mask.header["COMMENT"] = "1 = missing data or flux <= 0 / non-finite; 0 = good"
    params = fits.BinTableHDU(Table(lib.params, masked=False), name="PARAMS")
    return fits.HDUList([primary, flux, wave_hdu, mask, params])


def _spectral_wcs(wave: np.ndarray, medium: str) -> dict:
    """FITS cards of a 1-D spectral WCS that reproduces a linear or log grid."""
    ctype = "AWAV" if medium == "air" else "WAVE"
    step = np.diff(wave)
    cards = {"CUNIT1": "Angstrom", "CRPIX1": 1.0, "CRVAL1": wave[0], "WAVEMED": medium}
    if np.allclose(step, step[0], rtol=1e-6, atol=0):
        return {"CTYPE1": ctype, **cards, "CDELT1": step[0]}
    ratio = wave[1:] / wave[:-1]
    if np.allclose(ratio, ratio[0], rtol=1e-9, atol=0):
        return {"CTYPE1": f"{ctype}-LOG", **cards, "CDELT1": wave[0] * np.log(ratio[0])}
    return {"CTYPE1": ctype, "CUNIT1": "Angstrom", "WAVEMED": medium}


def _read_library(path: Path) -> Library:
    """Read and check a library file; ValueError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such library file: {path}")
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as err:
        raise ValueError(f"{path}: not a readable FITS file ({err})") from err
    with hdul:
        names = [hdu.name for hdu in hdul]
        missing = [n for n in _REQUIRED_HDUS if n not in names]
        if missing:
            raise ValueError(f"{path}: missing HDU {missing} (has {names})")
        try:
            lib = Library(
                flux=_image(hdul, "FLUX", path),
                wavelength=_image(hdul, "WAVE", path).astype(np.float64) * u.AA,
                mask=_image(hdul, "MASK", path) != 0,
                params=_params_table(hdul["PARAMS"]),
                medium=_medium(hdul),
                fwhm=_fwhm(hdul[0].header),
                name=str(hdul[0].header.get("LIBRARY", path.name.split(".")[0])).strip(),
                path=path,
                meta=_provenance(hdul[0].header),
            )
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err
    return lib


def _image(hdul: fits.HDUList, name: str, path: Path) -> np.ndarray:
    data = hdul[name].data
    if data is None:
        raise ValueError(f"{path}: HDU {name} holds no data")
    return np.array(data)


def _params_table(hdu) -> Table:
    """The PARAMS table with NaNs kept (not masked) and string columns stripped."""
    if not isinstance(hdu, fits.BinTableHDU):
        raise TypeError("HDU PARAMS is not a binary table")
    table = Table(masked=False)
    for column in hdu.columns:
        # Field access (not the raw record array) decodes logical columns to bool.
        values = np.asarray(hdu.data[column.name])
        if values.dtype.kind in "SU":
            values = np.char.strip(values.astype(str))
        table[column.name] = values
        if column.unit:
            table[column.name].unit = u.Unit(column.unit, parse_strict="silent")
    return table


def _medium(hdul: fits.HDUList) -> str:
    """Air or vacuum, from WAVEMED / AIRORVAC or the FLUX CTYPE1; never guessed."""
    for header in (hdul["WAVE"].header, hdul["FLUX"].header, hdul[0].header):
        for key in ("WAVEMED", "AIRORVAC"):
            value = str(header.get(key, "")).strip().lower()
            if value in _MEDIA:
                return _MEDIA[value]
    ctype = str(hdul["FLUX"].header.get("CTYPE1", "")).strip().upper()
    if ctype.startswith("AWAV"):
        return "air"
    if ctype.startswith("WAVE"):
        return "vacuum"
    raise ValueError("wavelength medium not stated (WAVEMED, AIRORVAC or CTYPE1)")


def _fwhm(header) -> u.Quantity | None:
    value = header.get("FWHM")
    return None if value is None else float(value) * u.AA


def _provenance(header) -> dict:
    skip = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY"}
    return {k: header[k] for k in header if k and k not in skip}


def load_examples() -> Library:
    """The example set shipped with the package: 8 MILES ``test`` spectra.

    One star per label B, A, F, G, K, M, G_giant and K_giant (chosen by
    ``benchmarks/training/make_examples.py``: the good star whose Teff is closest to the
    label's median Teff in the test split).

    Returns
    -------
    Library
    """
    resource = importlib.resources.files("specutils_deepclean").joinpath(_EXAMPLES)
    with importlib.resources.as_file(resource) as path:
        return _read_library(path)
