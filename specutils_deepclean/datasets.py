"""Real-data loaders: stellar libraries (MILES), the ESO transmission, the night sky.

The package ships compact copies of the ESO transmission and the Paranal night sky
(:func:`load_transmission`, :func:`load_sky`) and eight MILES example spectra
(:func:`load_examples`).  The full libraries live in one data folder (see
:func:`data_dir`); where that folder is absent, :func:`load_library` builds the MILES
library from the PyPI package that distributes it (``sdss-mangadap``) into the user
cache, once.

Every stellar library is read from one multi-extension FITS file in the *library
layout*: ``FLUX`` (``n_star x n_pix``), ``WAVE`` (``n_pix``, Angstrom), ``MASK``
(1 = bad) and ``PARAMS`` (one table row per spectrum), see :class:`Library`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy import log
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from ._atomic import atomic_path

__all__ = [
    "DATA_ENV",
    "SPLITS",
    "Library",
    "Transmission",
    "SkySpectrum",
    "data_dir",
    "default_cache_dir",
    "load_library",
    "load_examples",
    "download_miles",
    "load_transmission",
    "load_sky",
]

#: Environment variable naming the real-data folder.
DATA_ENV = "SPECUTILS_DEEPCLEAN_DATA"

#: The splits a library row can belong to.
SPLITS = ("train", "val", "test")

_DATA_FILES = {
    "miles": "miles/miles.fits",
    "transmission": "telluric/eso_transmission.fits",
    "sky": "sky/paranal_sky.fits",
}
_REQUIRED_HDUS = ("FLUX", "WAVE", "MASK", "PARAMS")
_REQUIRED_COLUMNS = (
    "star_id", "teff", "logg", "feh", "class", "giant", "label", "split", "bad",
)
_MEDIA = {"air": "air", "vac": "vacuum", "vacuum": "vacuum"}
_EXAMPLES = "data/examples/miles_examples.fits"
# Compact copies shipped with the package (benchmarks/training/make_sky_transmission.py).
_PACKAGED = {
    "transmission": "data/eso_transmission.fits",
    "sky": "data/paranal_sky.fits",
}

# The registry package that ships MILES, and the files taken from it.
MILES_PACKAGE = "sdss-mangadap"
MILES_VERSION = "4.5.0"
_MILES_DIR = "mangadap/data/spectral_templates/miles/"
_MILES_STAR = re.compile(r"(?:omit/)?MILES_res2\.50_star_m(\d{4})V\.fits")
_MILES_PARAMS_DB = "MILES_params.db"
_MILES_PARAMS_TXT = "paramsMILES_v9.1.txt"
_MILES_OMITTED = "omitted by DAP (short range, red-end artifact)"
_MILES_FIT_RANGE = (3575.0, 7400.0)  # Angstrom, the DAP's wave_limit (miles.ini)


# ----------------------------------------------------------------------------- paths


def data_dir() -> Path | None:
    """The real-data folder, or None when there is none.

    Looked up in this order:

    1. the environment variable ``SPECUTILS_DEEPCLEAN_DATA`` (a warning if it names
       no folder, then the search goes on);
    2. ``../shared/data`` relative to the current directory or any of its parents,
       if it holds one of the data files (``miles/miles.fits``,
       ``telluric/eso_transmission.fits``, ``sky/paranal_sky.fits``).

    Returns
    -------
    pathlib.Path or None
    """
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        warnings.warn(
            f"{DATA_ENV}={env!r} is not a folder; ignored", AstropyUserWarning, stacklevel=2
        )
    cwd = Path.cwd().resolve()
    for parent in (cwd, *cwd.parents):
        candidate = parent.parent / "shared" / "data"
        if any((candidate / name).is_file() for name in _DATA_FILES.values()):
            return candidate
    return None


def default_cache_dir() -> Path:
    """The user cache folder of the package (``platformdirs.user_cache_dir``)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("specutils-deepclean"))


@contextlib.contextmanager
def _packaged_or(path: str | os.PathLike | None, resource: str):
    """The given file (it must exist), or the package's own ``resource``."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        yield path
        return
    with importlib.resources.as_file(
        importlib.resources.files("specutils_deepclean").joinpath(resource)
    ) as packaged:
        yield packaged


# --------------------------------------------------------------------------- library


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


def load_library(path: str | os.PathLike | None = None) -> Library:
    """Read a stellar library file in the library layout (MILES by default).

    Parameters
    ----------
    path : path-like, optional
        Library file.  By default MILES, taken from ``miles/miles.fits`` in
        :func:`data_dir`, else from the user cache, else downloaded there once by
        :func:`download_miles` (about 120 MB from PyPI).

    Returns
    -------
    Library

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not in the library layout (the message names the problem).
    """
    if path is not None:
        return _read_library(Path(path))
    root = data_dir()
    if root is not None and (root / _DATA_FILES["miles"]).is_file():
        return _read_library(root / _DATA_FILES["miles"])
    return _read_library(download_miles())


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


# -------------------------------------------------------------------- MILES download


def download_miles(cache_dir: str | os.PathLike | None = None) -> Path:
    """Build the MILES library file from the PyPI package that ships it, once.

    Downloads the ``sdss-mangadap`` 4.5.0 wheel (URL and sha256 from PyPI's JSON
    API), checks its sha256, reads only the MILES files in it
    (``mangadap/data/spectral_templates/miles/``: the 985 star spectra, m0970 from
    ``omit/`` included, ``MILES_params.db`` and ``paramsMILES_v9.1.txt``) and writes
    ``miles.fits`` in the library layout, with the class rule and the fixed
    train/val/test split of the data README.  The file is written under a temporary
    name and renamed, so an interrupted run leaves no partial file.

    Parameters
    ----------
    cache_dir : path-like, optional
        Folder for ``miles.fits``; default :func:`default_cache_dir`.

    Returns
    -------
    pathlib.Path
        The library file (returned at once if it already exists).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / "miles.fits"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    url, sha256 = _wheel_url(MILES_PACKAGE, MILES_VERSION)
    log.info(f"Downloading MILES from {url} (once, into {folder})")
    with tempfile.TemporaryFile(dir=folder) as wheel:
        _download(url, wheel, sha256)
        members = _miles_members(wheel)
    hdul = _library_hdus(_build_miles(members))
    with atomic_path(target, suffix=".fits") as tmp:
        hdul.writeto(tmp, overwrite=True, checksum=True)
    return target


def _wheel_url(package: str, version: str) -> tuple[str, str]:
    """URL and sha256 of a package's pure-Python wheel, from PyPI's JSON API."""
    try:
        files = _pypi_json(f"https://pypi.org/pypi/{package}/{version}/json")["urls"]
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
        # Some mirrors serve only the project document; same file list there.
        files = _pypi_json(f"https://pypi.org/pypi/{package}/json")["releases"][version]
    for item in files:
        if item["packagetype"] == "bdist_wheel" and item["filename"].endswith("-none-any.whl"):
            return item["url"], item["digests"]["sha256"]
    raise ValueError(f"PyPI lists no pure-Python wheel of {package} {version}")


def _pypi_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _download(url: str, out, sha256: str) -> None:
    """Stream ``url`` into the open binary file ``out`` and check its sha256."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        raise ValueError(f"{url}: sha256 {digest.hexdigest()} differs from PyPI's {sha256}")
    out.seek(0)


def _miles_members(wheel) -> dict[str, bytes]:
    """The MILES files of the wheel, by path below the miles folder."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise ValueError(f"the {MILES_PACKAGE} wheel is not a zip file") from err
    with archive:
        wanted = {
            name[len(_MILES_DIR):]: name
            for name in archive.namelist()
            if name.startswith(_MILES_DIR)
            and (
                _MILES_STAR.fullmatch(name[len(_MILES_DIR):])
                or name[len(_MILES_DIR):] in (_MILES_PARAMS_DB, _MILES_PARAMS_TXT)
            )
        }
        return {short: archive.read(name) for short, name in wanted.items()}


def _build_miles(members: dict[str, bytes]) -> Library:
    """The MILES library from the package files (README's rules, split and fixes)."""
    for name in (_MILES_PARAMS_DB, _MILES_PARAMS_TXT):
        if name not in members:
            raise ValueError(f"the {MILES_PACKAGE} wheel lacks {_MILES_DIR}{name}")
    stars = {
        "m" + _MILES_STAR.fullmatch(name).group(1): (name, data)
        for name, data in members.items()
        if _MILES_STAR.fullmatch(name)
    }
    if not stars:
        raise ValueError(f"the {MILES_PACKAGE} wheel holds no MILES spectra")
    ids = sorted(stars)
    wave, flux = _miles_spectra([stars[i][1] for i in ids])
    physical = _miles_params_db(members[_MILES_PARAMS_DB].decode())
    literature = _miles_params_txt(members[_MILES_PARAMS_TXT].decode())
    table = Table()
    table["star_id"] = ids
    table["name"] = [literature.get(i, ("", False, ""))[0] for i in ids]
    table["cluster_star"] = [literature.get(i, ("", False, ""))[1] for i in ids]
    table["sptype_lit"] = [literature.get(i, ("", False, ""))[2] for i in ids]
    nan3 = (np.nan, np.nan, np.nan)
    for k, col in enumerate(("teff", "logg", "feh")):
        table[col] = np.array([physical.get(i, nan3)[k] for i in ids], dtype=np.float32)
    table["teff"].unit = u.K
    classes = [_teff_class(t) for t in table["teff"]]
    giant = np.nan_to_num(np.asarray(table["logg"], float), nan=np.inf) < 3.5
    table["class"] = classes
    table["giant"] = giant
    table["label"] = [c + ("_giant" if g else "") for c, g in zip(classes, giant, strict=True)]
    table["split"] = _miles_split(ids, classes)
    omitted = np.array([stars[i][0].startswith("omit/") for i in ids])
    bad_pix = ~np.isfinite(flux) | (flux <= 0)
    fit = (wave >= _MILES_FIT_RANGE[0]) & (wave <= _MILES_FIT_RANGE[1])
    table["bad"] = bad_pix.any(axis=1) | omitted
    table["n_bad_pix"] = bad_pix.sum(axis=1).astype(np.int16)
    table["frac_good"] = (1 - bad_pix.mean(axis=1)).astype(np.float32)
    table["n_bad_pix_fit"] = bad_pix[:, fit].sum(axis=1).astype(np.int16)
    table["dap_omitted"] = omitted
    table["bad_reason"] = [
        _bad_reason(row, wave, skipped) for row, skipped in zip(flux, omitted, strict=True)
    ]
    meta = {
        "LIBVER": "9.1",
        "SOURCE": f"{MILES_PACKAGE} {MILES_VERSION} (PyPI)",
        "SRCPATH": _MILES_DIR.rstrip("/"),
        "REF1": "Sanchez-Blazquez et al. 2006, MNRAS 371, 703",
        "REF2": "Falcon-Barroso et al. 2011, A&A 532, A95",
        "REF3": "Cenarro et al. 2007, MNRAS 374, 664",
        "SPLITSD": 0,
    }
    return Library(
        flux=flux.astype(np.float32), wavelength=wave * u.AA, mask=bad_pix, params=table,
        medium="air", fwhm=2.5 * u.AA, name="MILES", meta=meta,
    )


def _miles_spectra(files: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Common wavelength grid and flux array of the MILES star files."""
    grid = None
    flux = []
    for data in files:
        with fits.open(io.BytesIO(data)) as hdul:
            header = hdul[0].header
            this = (header["CRVAL1"], header["CDELT1"], header["NAXIS1"], header.get("CRPIX1", 1))
            if grid is None:
                grid = this
            elif this != grid:
                raise ValueError(f"MILES spectra on different grids: {grid} and {this}")
            flux.append(np.asarray(hdul[0].data, dtype=np.float64))
    crval, cdelt, npix, crpix = grid
    wave = crval + cdelt * (np.arange(npix) + 1 - crpix)
    return wave, np.array(flux)


def _miles_id(token: str) -> str | None:
    """``mNNNN`` from a MILES number (the ``022.`` typo is m0221, README)."""
    token = "0221" if token == "022." else token
    return f"m{token}" if re.fullmatch(r"\d{4}", token) else None


def _miles_params_db(text: str) -> dict[str, tuple[float, float, float]]:
    """Teff, logg, [Fe/H] by star id; 99999 / 9999 placeholders become NaN."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or line.lstrip().startswith("#"):
            continue
        star = _miles_id(parts[0])
        if star is None:
            continue
        values = [float(p) for p in parts[1:]]
        out[star] = tuple(np.nan if v in (99999.0, 9999.0) else v for v in values)
    return out


def _miles_params_txt(text: str) -> dict[str, tuple[str, bool, str]]:
    """Name, cluster flag and literature spectral type by star id (fixed columns)."""
    out = {}
    for line in text.splitlines():
        star = _miles_id(line[22:27].strip()) if len(line) > 27 else None
        if star is not None:
            out[star] = (line[:18].strip(), line[18:22].strip() == "Cl", line[34:48].strip())
    return out


def _teff_class(teff: float) -> str:
    """Class from Teff (data README): O > 30000 K, B, A, F, G, K, M < 3700 K."""
    if not np.isfinite(teff):
        return "unknown"
    if teff > 30000:
        return "O"
    for name, lower in (("B", 10000), ("A", 7500), ("F", 6000), ("G", 5200), ("K", 3700)):
        if teff >= lower:
            return name
    return "M"


def _miles_split(star_ids: Sequence[str], classes: Sequence[str], seed: int = 0) -> np.ndarray:
    """The fixed 70/15/15 split stratified by class (data README, exactly)."""
    order = np.argsort(star_ids)
    classes = np.asarray(classes)[order]
    rng = np.random.default_rng(seed)
    split = np.full(len(classes), "train", dtype="<U5")
    for name in sorted(set(classes)):
        idx = np.flatnonzero(classes == name)
        perm = rng.permutation(idx)
        n = int(np.floor(0.15 * len(idx) + 0.5))
        split[perm[:n]] = "test"
        split[perm[n:2 * n]] = "val"
    out = np.empty_like(split)
    out[order] = split
    return out


def _bad_reason(flux: np.ndarray, wave: np.ndarray, omitted: bool) -> str:
    """E.g. ``"zero:3 px 7408-7410A; neg:2 px 7406-7407A"``."""
    parts = []
    for kind, bad in (("zero", flux == 0), ("neg", flux < 0)):
        if bad.any():
            w = wave[bad]
            parts.append(f"{kind}:{bad.sum()} px {w.min():.0f}-{w.max():.0f}A")
    if omitted:
        parts.append(_MILES_OMITTED)
    return "; ".join(parts)


# ------------------------------------------------------------------ tellurics and sky


@dataclass
class Transmission:
    """An atmospheric transmission spectrum at one airmass.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity`
        Wavelengths (Angstrom) in ``medium``.
    transmission : ndarray
        Transmission, 0 to 1.
    airmass : float
        Airmass of ``transmission``.
    resolving_power : float
        Resolving power of the model.
    medium : {"air", "vacuum"}
        Medium of the wavelengths.
    drier, wetter : ndarray, optional
        The same atmosphere with less and with more water vapour (the ESO file's
        ``mnstrans`` and ``plstrans`` columns), when known; they separate the water
        bands from the rest (:mod:`specutils_deepclean.telluric_template`).

    Examples
    --------
    >>> import astropy.units as u
    >>> t = Transmission([5000.0, 5001.0] * u.AA, np.array([0.81, 1.0]))
    >>> t.at_airmass(1.5)  # doctest: +FLOAT_CMP
    array([0.9, 1. ])
    """

    wavelength: u.Quantity
    transmission: np.ndarray
    airmass: float = 3.0
    resolving_power: float = 60000.0
    medium: str = "vacuum"
    drier: np.ndarray | None = None
    wetter: np.ndarray | None = None

    def __post_init__(self):
        self.wavelength = u.Quantity(self.wavelength, u.AA)
        self.transmission = np.asarray(self.transmission, dtype=float)
        if self.transmission.shape != self.wavelength.shape:
            raise ValueError("transmission and wavelength differ in shape")
        for name in ("drier", "wetter"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=float)
                if value.shape != self.wavelength.shape:
                    raise ValueError(f"{name} and wavelength differ in shape")
                setattr(self, name, value)
        if not self.airmass > 0:
            raise ValueError(f"airmass must be positive, got {self.airmass}")

    def at_airmass(self, airmass: float) -> np.ndarray:
        """Transmission at another airmass, ``T ** (airmass / self.airmass)``."""
        airmass = float(airmass)
        if not airmass > 0:
            raise ValueError(f"airmass must be positive, got {airmass}")
        return np.clip(self.transmission, 0, None) ** (airmass / self.airmass)


@dataclass
class SkySpectrum:
    """A night-sky emission spectrum (relative intensity).

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity`
        Wavelengths (Angstrom) in ``medium``.
    flux : ndarray
        Relative sky intensity.
    medium : {"air", "vacuum"}
        Medium of the wavelengths.
    """

    wavelength: u.Quantity
    flux: np.ndarray
    medium: str = "vacuum"

    def __post_init__(self):
        self.wavelength = u.Quantity(self.wavelength, u.AA)
        self.flux = np.asarray(self.flux, dtype=float)
        if self.flux.shape != self.wavelength.shape:
            raise ValueError("flux and wavelength differ in shape")


def load_transmission(path: str | os.PathLike | None = None) -> Transmission:
    """The ESO LBLRTM transmission (Cerro Paranal, airmass 3, R = 60000, vacuum).

    By default the copy shipped with the package (3000-11000 Angstrom, every pixel of
    the source on its log-uniform grid, the transmission stored to 1.5e-5; see
    :doc:`/data`), so it works without the data folder.

    Parameters
    ----------
    path : path-like, optional
        A transmission file in the same layout (HDU ``TRANSMISSION`` with the columns
        ``wavelength`` and ``transmission``), e.g. the full
        ``telluric/eso_transmission.fits`` of the data folder; default the shipped
        copy.

    Returns
    -------
    Transmission

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file lacks the ``TRANSMISSION`` HDU.

    Examples
    --------
    >>> trans = load_transmission()
    >>> trans.airmass, trans.medium, bool(trans.wavelength.min() < 3600 * u.AA)
    (3.0, 'vacuum', True)
    """
    with _packaged_or(path, _PACKAGED["transmission"]) as path:
        with fits.open(path) as hdul:
            if "TRANSMISSION" not in hdul:
                raise ValueError(f"{path}: missing HDU 'TRANSMISSION'")
            table = hdul["TRANSMISSION"].data
            header = hdul[0].header
            return Transmission(
                wavelength=np.asarray(table["wavelength"], dtype=float) * u.AA,
                transmission=np.asarray(table["transmission"], dtype=float),
                airmass=float(header.get("AIRMASS", 3.0)),
                resolving_power=float(header.get("RESOLVPW", 60000.0)),
                medium=_MEDIA[str(header.get("WAVEMED", "vacuum")).strip().lower()],
                drier=_optional_column(table, "mnstrans"),
                wetter=_optional_column(table, "plstrans"),
            )


def _optional_column(table, name: str) -> np.ndarray | None:
    return np.asarray(table[name], dtype=float) if name in table.names else None


def load_sky(path: str | os.PathLike | None = None) -> SkySpectrum:
    """The observed Paranal night-sky spectrum (vacuum), padding removed.

    By default the copy shipped with the package (3141-10000 Angstrom, 0.1 Angstrom
    pixels; see :doc:`/data`), so it works without the data folder.  A file's leading
    run of constant values (the source's padding below 3142 Angstrom, no data) is
    dropped.

    Parameters
    ----------
    path : path-like, optional
        A sky file in the same layout (HDUs ``FLUX`` and ``WAVELENGTH``), e.g. the
        full ``sky/paranal_sky.fits`` of the data folder; default the shipped copy.

    Returns
    -------
    SkySpectrum

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file lacks one of the HDUs.

    Examples
    --------
    >>> sky = load_sky()
    >>> sky.medium, bool(3141 < sky.wavelength[0].value < 3142)
    ('vacuum', True)
    """
    with _packaged_or(path, _PACKAGED["sky"]) as path:
        with fits.open(path) as hdul:
            for name in ("FLUX", "WAVELENGTH"):
                if name not in hdul:
                    raise ValueError(f"{path}: missing HDU {name!r}")
            flux = np.asarray(hdul["FLUX"].data, dtype=float)
            wave = np.asarray(hdul["WAVELENGTH"].data, dtype=float)
    changes = np.flatnonzero(flux != flux[0])
    # A leading run of two or more equal values is padding; a lone first value is data.
    start = int(changes[0]) if changes.size and changes[0] > 1 else 0
    return SkySpectrum(wavelength=wave[start:] * u.AA, flux=flux[start:], medium="vacuum")
