"""The atmosphere: the ESO telluric transmission and the Paranal night sky."""

from __future__ import annotations

import os
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.io import fits

from .library import _MEDIA
from .paths import _packaged_or

__all__ = [
    "Transmission",
    "SkySpectrum",
    "load_transmission",
    "load_sky",
]

# Compact copies shipped with the package (benchmarks/training/make_sky_transmission.py).
_PACKAGED = {
    "transmission": "data/eso_transmission.fits",
    "sky": "data/paranal_sky.fits",
}


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
