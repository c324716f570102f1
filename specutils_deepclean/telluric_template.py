r"""Per-molecule telluric templates: the atmosphere's optical depth, molecule by molecule.

The transmission of the atmosphere is a product over absorbers,
:math:`T(\lambda) = \prod_s T_s(\lambda)^{a_s}`, where :math:`T_s` is the transmission of
molecule :math:`s` for a reference column and :math:`a_s` scales that column (the
airmass for a well-mixed gas such as O\ :sub:`2`, airmass times precipitable water
for H\ :sub:`2`\ O).  Between 3600 and 10000 Angstrom two absorbers matter:

``"H2O"``
    The water bands (5900-6000, 6470-6600, 6900-7400, 7850-8500 and 8900-9900
    Angstrom; the last two are the deepest in this range).
``"O2"``
    Everything that does not vary with the water column: the O\ :sub:`2` A (7590-7700
    Angstrom), B (6860-6930) and :math:`\gamma` (6270-6330) bands and the weak lines of
    the other dry gases.  Ozone absorbs here only through the smooth Chappuis band,
    which is continuum (below), so it gets no component of its own.

The components are separated with the three variants of the ESO LBLRTM model
(:func:`~specutils_deepclean.datasets.load_transmission`: nominal, drier and wetter;
the dry gases are the same in all three).  First the nominal model's smooth continuum
(Rayleigh scattering, the ozone Chappuis band, the water continuum) is divided out with
:func:`~specutils_deepclean.tellurics.split_transmission` (55 Angstrom window, as
everywhere in the package): a median-normalised spectrum cannot tell it from the
star's continuum, and left in, it would be given to whichever molecule owns a pixel
(a water line pixel then carries the Rayleigh and ozone depth too, and the water
template is too deep by that much where its lines are weak).  With line optical depths
:math:`\tau = -\ln T_{\rm lines}`, the water term is proportional to the wet-minus-dry
difference, :math:`\tau_{\rm H_2O} = c\,(\tau_{\rm wet} - \tau_{\rm dry})`, where the
scale :math:`c` (the nominal water column over the wet-minus-dry difference of
columns) is the median of :math:`\tau / (\tau_{\rm wet} - \tau_{\rm dry})` over
unsaturated pixels dominated by water.  At the model's resolution (R = 60000) the
lines are not resolved, so the ratio is not linear in the column within a saturating
line; each model pixel is therefore given wholly to water, where
:math:`f = c\,(\tau_{\rm wet} - \tau_{\rm dry})/\tau > 0.5`, or wholly to the dry
gases (the water and O\ :sub:`2` lines barely share pixels):
:math:`\tau_{\rm H_2O} = \tau` or :math:`\tau_{\rm O_2} = \tau`.  Where the model
saturates (any variant below ``1e-3``) the difference carries no information and the
pixel takes its neighbours' assignment.  The optical depths are divided by the
model's airmass (3), so a template holds them at airmass 1.

A compact template built this way ships with the package
(:func:`load_molecular_template`; made by ``benchmarks/training/make_molecular_template.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits

__all__ = [
    "MOLECULES",
    "MolecularTemplate",
    "build_molecular_template",
    "load_molecular_template",
    "molecule_labels",
]

#: The template's components, in this order everywhere.
MOLECULES = ("H2O", "O2")

#: Transmission below which a model pixel is saturated (its depth is a lower bound).
_SATURATED = 1e-3
#: Smallest transmission kept in the logarithm.
_T_MIN = 1e-5
_SHIPPED = Path(__file__).parent / "data" / "telluric" / "molecular_template.fits"


@dataclass
class MolecularTemplate:
    """Optical depth of each absorber at airmass 1 on a log-uniform vacuum grid.

    Parameters
    ----------
    wavelength : ndarray
        Pixel centres, Angstrom, log-uniform, increasing.
    optical_depth : dict of str to ndarray
        ``{"H2O": tau, "O2": tau}``: line optical depth at airmass 1 for the
        template's water column (``-ln`` of the transmission).
    resolving_power : float
        Resolving power of the model the template comes from.
    medium : {"air", "vacuum"}
        Medium of ``wavelength``.
    meta : dict
        Provenance (source, water scale, ...).
    """

    wavelength: np.ndarray
    optical_depth: dict
    resolving_power: float = 60000.0
    medium: str = "vacuum"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.wavelength = np.asarray(u.Quantity(self.wavelength, u.AA).value, dtype=float)
        if set(self.optical_depth) != set(MOLECULES):
            raise ValueError(
                f"optical_depth must have the keys {MOLECULES}, got {sorted(self.optical_depth)}"
            )
        for name in MOLECULES:
            tau = np.asarray(self.optical_depth[name], dtype=float)
            if tau.shape != self.wavelength.shape:
                raise ValueError(f"optical depth {name!r} and wavelength differ in shape")
            self.optical_depth[name] = tau
        if not np.all(np.diff(self.wavelength) > 0):
            raise ValueError("template wavelengths must increase")

    @property
    def log_step(self) -> float:
        """Pixel step in ``ln(lambda)``."""
        return float(np.log(self.wavelength[-1] / self.wavelength[0]) / (self.wavelength.size - 1))

    def transmission(self, depths: dict | None = None) -> dict:
        """Each molecule's transmission ``exp(-a_s tau_s)`` at the template's sampling.

        Parameters
        ----------
        depths : dict of str to float, optional
            ``a_s`` per molecule (default 1: airmass 1, the template's water column).

        Returns
        -------
        dict of str to ndarray
        """
        depths = {} if depths is None else depths
        return {m: np.exp(-float(depths.get(m, 1.0)) * self.optical_depth[m]) for m in MOLECULES}

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the template as FITS (float32 optical depths, log-uniform grid in the header)."""
        header = fits.Header()
        header["WAVE0"] = (float(self.wavelength[0]), "first pixel centre, Angstrom")
        header["LOGSTEP"] = (self.log_step, "pixel step in ln(lambda)")
        header["NPIX"] = self.wavelength.size
        header["WAVEMED"] = self.medium
        header["RESOLVPW"] = self.resolving_power
        header["AIRMASS"] = (1.0, "optical depths at airmass 1")
        for key, value in self.meta.items():
            header[key[:8].upper()] = value
        columns = [
            fits.Column(name=m, format="E", array=self.optical_depth[m].astype(np.float32))
            for m in MOLECULES
        ]
        hdul = fits.HDUList(
            [fits.PrimaryHDU(header=header), fits.BinTableHDU.from_columns(columns, name="TAU")]
        )
        path = Path(path)
        hdul.writeto(path, overwrite=overwrite)
        return path


def build_molecular_template(
    transmission,
    *,
    wave_range: tuple[float, float] = (3500.0, 10500.0),
    continuum_window_aa: float = 55.0,
) -> MolecularTemplate:
    """Separate a line-by-line transmission into water and dry-gas optical depths.

    Parameters
    ----------
    transmission : `~specutils_deepclean.datasets.Transmission`
        With its ``drier`` and ``wetter`` variants (the ESO model's ``mnstrans`` and
        ``plstrans``), e.g. from :func:`~specutils_deepclean.datasets.load_transmission`.
    wave_range : (float, float)
        Range to keep, Angstrom (within the model's coverage).
    continuum_window_aa : float
        Window of the model's continuum (Rayleigh, ozone, water continuum), see the
        module notes.

    Returns
    -------
    MolecularTemplate
        On a log-uniform grid at the model's resolving power, at airmass 1.

    Raises
    ------
    ValueError
        If the transmission has no drier/wetter variants or does not cover
        ``wave_range``.
    """
    from .tellurics import split_transmission

    drier = getattr(transmission, "drier", None)
    wetter = getattr(transmission, "wetter", None)
    if drier is None or wetter is None:
        raise ValueError(
            "the transmission has no drier/wetter variants (the ESO model's mnstrans and "
            "plstrans columns): water cannot be separated from the dry gases"
        )
    wave = u.Quantity(transmission.wavelength, u.AA).value.astype(float)
    lo, hi = (float(x) for x in wave_range)
    if not (wave[0] <= lo < hi <= wave[-1]):
        raise ValueError(
            f"the transmission covers {wave[0]:.0f}-{wave[-1]:.0f} Angstrom, not {lo:.0f}-{hi:.0f}"
        )
    power = float(transmission.resolving_power)
    n = int(np.floor(np.log(hi / lo) * power)) + 1
    grid = lo * np.exp(np.arange(n) / power)
    on_grid = [
        np.interp(np.log(grid), np.log(wave), np.asarray(t, dtype=float))
        for t in (transmission.transmission, drier, wetter)
    ]
    saturated = np.min(on_grid, axis=0) < _SATURATED
    # Line part of the nominal model: its smooth continuum (Rayleigh, the ozone
    # Chappuis band, the water continuum) is no molecule's line.
    lines = split_transmission(
        np.clip(on_grid[0], _T_MIN, 1.0), grid, window_aa=continuum_window_aa
    )[1]
    tau = -np.log(np.clip(lines, _T_MIN, 1.0))
    tau_dry, tau_wet = (-np.log(np.clip(t, _T_MIN, 1.0)) for t in on_grid[1:])
    diff = tau_wet - tau_dry
    usable = ~saturated & (diff > 0.02) & (tau > 0.02) & (tau < 1.0)
    if usable.sum() < 100:
        raise ValueError("too few unsaturated water pixels to scale the water component")
    scale = float(np.median(tau[usable] / diff[usable]))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (scale * diff / tau > 0.5).astype(float)
    known = ~saturated & (tau > 1e-6)
    filled = np.interp(np.arange(n), np.flatnonzero(known), share[known])
    share = np.where(known, share, np.round(filled))
    airmass = float(transmission.airmass)
    return MolecularTemplate(
        wavelength=grid,
        optical_depth={"H2O": share * tau / airmass, "O2": (1 - share) * tau / airmass},
        resolving_power=power,
        medium=transmission.medium,
        meta={"WSCALE": scale, "SRCAIRM": airmass},
    )


_LOADED: dict = {}


def load_molecular_template(path: str | os.PathLike | None = None) -> MolecularTemplate:
    """Read a template written by `MolecularTemplate.write` (default: the shipped one).

    The shipped template comes from the ESO LBLRTM model (Cerro Paranal; Noll et al.
    2012, Jones et al. 2013, Clough et al. 2005, Moehler et al. 2014), 3500-10500
    Angstrom, vacuum.

    Parameters
    ----------
    path : path-like, optional
        A template file.

    Returns
    -------
    MolecularTemplate
    """
    path = Path(_SHIPPED if path is None else path)
    key = os.fspath(path.resolve())
    if key not in _LOADED:
        if not path.is_file():
            raise FileNotFoundError(f"no molecular template at {path}")
        with fits.open(path) as hdul:
            header = hdul[0].header
            table = hdul["TAU"].data
            n = int(header["NPIX"])
            wave = float(header["WAVE0"]) * np.exp(np.arange(n) * float(header["LOGSTEP"]))
            tau = {m: np.asarray(table[m], dtype=float) for m in MOLECULES}
            _LOADED[key] = MolecularTemplate(
                wavelength=wave,
                optical_depth=tau,
                resolving_power=float(header["RESOLVPW"]),
                medium=str(header["WAVEMED"]).strip(),
                meta={"WSCALE": float(header.get("WSCALE", np.nan))},
            )
    return _LOADED[key]


_LABELS: dict = {}


def molecule_labels(wave_aa: np.ndarray, medium: str) -> np.ndarray:
    """Index (into `MOLECULES`) of the molecule whose lines dominate each pixel.

    From the shipped template (`load_molecular_template`): each molecule's optical
    depth averaged over the pixel, smoothed by a Gaussian of one pixel (line wings
    at a resolution like the model's), the largest wins.  Pixels
    beyond the template or without any line get the first molecule.  Cached per grid.

    Parameters
    ----------
    wave_aa : ndarray, shape (n_pix,)
        Pixel centres, Angstrom, increasing.
    medium : {"air", "vacuum"}
        Medium of ``wave_aa``.

    Returns
    -------
    ndarray of int, shape (n_pix,)
    """
    from scipy.ndimage import gaussian_filter1d

    from .resample import bin_edges

    wave_aa = np.asarray(wave_aa, dtype=float)
    key = (wave_aa.tobytes(), medium)
    if key not in _LABELS:
        template = load_molecular_template()
        wave = template.wavelength
        if medium != template.medium:
            from specutils.utils.wcs_utils import air_to_vac, vac_to_air

            convert = vac_to_air if medium == "air" else air_to_vac
            wave = convert(wave * u.AA).to_value(u.AA)
        index = np.searchsorted(wave, bin_edges(wave_aa))
        count = np.maximum(np.diff(index), 1)
        depth = []
        for name in MOLECULES:
            total = np.concatenate([[0.0], np.cumsum(template.optical_depth[name])])
            depth.append(gaussian_filter1d(np.diff(total[index]) / count, 1.0, mode="nearest"))
        if len(_LABELS) > 16:
            _LABELS.clear()
        _LABELS[key] = np.argmax(np.array(depth), axis=0)
    return _LABELS[key]
