"""The MILES library: found in the data folder, or built once into the user cache from
the PyPI package that distributes it (``sdss-mangadap``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy import log
from astropy.io import fits
from astropy.table import Table

from .._atomic import atomic_path
from .library import Library, _library_hdus, _read_library
from .paths import _DATA_FILES, data_dir, default_cache_dir

__all__ = [
    "load_library",
    "download_miles",
]

# The registry package that ships MILES, and the files taken from it.
MILES_PACKAGE = "sdss-mangadap"
MILES_VERSION = "4.5.0"
_MILES_DIR = "mangadap/data/spectral_templates/miles/"
_MILES_STAR = re.compile(r"(?:omit/)?MILES_res2\.50_star_m(\d{4})V\.fits")
_MILES_PARAMS_DB = "MILES_params.db"
_MILES_PARAMS_TXT = "paramsMILES_v9.1.txt"
_MILES_OMITTED = "omitted by DAP (short range, red-end artifact)"
_MILES_FIT_RANGE = (3575.0, 7400.0)  # Angstrom, the DAP's wave_limit (miles.ini)


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
