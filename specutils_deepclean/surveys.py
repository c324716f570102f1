"""Survey formats: the arms of a target on one axis, per-target spectra, the medium.

specutils' readers return survey files in several shapes: one
`~specutils.Spectrum` for an SDSS ``spec``/``spec-lite`` file, a
`~specutils.SpectrumList` of arms for DESI ``spectra-*`` and ``coadd-*`` files
(``b``, ``r``, ``z``; each arm a 2-D batch with one row per fibre, the file's primary
header and fibre map in the first arm's ``meta``).  This module turns them into what
`~specutils_deepclean.denoise` and `~specutils_deepclean.remove_tellurics` clean:

* :func:`combine_arms` puts the arms of one target (or of a batch of targets) on one
  spectral axis, averaging with inverse-variance weights where arms overlap;
* :func:`desi_targets` splits a DESI file into one spectrum per target, with its
  ``TARGETID`` and fibre in ``meta`` (and in ``meta["header"]``), and says why the
  fibres it leaves out (unassigned, sky, no data) are left out;
* :func:`survey_medium` gives the medium a survey format implies: SDSS, DESI and
  LAMOST wavelengths are in vacuum;
* :func:`read_lamost` reads LAMOST low-resolution spectra, for which specutils has
  no reader.

A list of spectra passed to the cleaning functions is read by :func:`list_kind`:
spectra covering different wavelength ranges are the arms of one target (combined
with :func:`combine_arms`), spectra covering the same range are exposures of one
star (`~specutils_deepclean.denoise` fits them jointly).
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Sequence

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

from .checks import check_linear_flux
from .survey_media import is_desi, survey_medium

__all__ = [
    "ARM_OVERLAP_LIMIT",
    "combine_arms",
    "desi_targets",
    "is_desi",
    "is_lamost",
    "list_kind",
    "read_lamost",
    "resolve_input",
    "survey_medium",
]

#: Spectra of a list overlap by less than this share of the narrower one's range:
#: arms (see :func:`list_kind`).
ARM_OVERLAP_LIMIT = 0.5

# Coverage of a pixel of the common axis that counts as full (rounding allowed).
_FULL = 1.0 - 1e-9
def _medium_of(spectrum: Spectrum) -> str | None:
    from .spectra import _stated_medium

    return _stated_medium(spectrum.meta)


# ---------------------------------------------------------------------------- lists


def _check_spectra(spectra, name: str) -> list[Spectrum]:
    if isinstance(spectra, Spectrum | str | bytes) or not isinstance(spectra, Sequence):
        raise TypeError(
            f"{name} must be a list (e.g. a SpectrumList) of specutils Spectrum, "
            f"got {type(spectra).__name__}"
        )
    spectra = list(spectra)
    if not spectra:
        raise ValueError(f"{name} is empty")
    for i, item in enumerate(spectra):
        if not isinstance(item, Spectrum):
            raise TypeError(f"{name}[{i}] is a {type(item).__name__}, not a specutils Spectrum")
    return spectra


def _wavelengths(spectrum: Spectrum) -> np.ndarray:
    """Pixel centres in Angstrom (float64, as given: no medium conversion)."""
    unit = spectrum.spectral_axis.unit
    if not unit.is_equivalent(u.AA, equivalencies=u.spectral()):
        raise u.UnitsError(f"the spectral axis unit {unit} cannot be converted to a wavelength")
    return u.Quantity(spectrum.spectral_axis, dtype=float).to_value(u.AA, u.spectral())


def _range(spectrum: Spectrum) -> tuple[float, float]:
    wave = _wavelengths(spectrum)
    return float(np.min(wave)), float(np.max(wave))


def list_kind(spectra: Sequence[Spectrum]) -> str:
    """Whether a list of spectra holds the arms of a target or exposures of one star.

    Two spectra overlap by the length of the common part of their wavelength ranges
    divided by the narrower range.  When every pair overlaps by less than
    :data:`ARM_OVERLAP_LIMIT` (DESI's ``b``, ``r``, ``z`` arms overlap by 2-5 %), the
    spectra are arms; when every pair overlaps by at least that, they are
    exposures.  A list of one spectrum is ``"exposures"``.

    Parameters
    ----------
    spectra : list of `~specutils.Spectrum`
        E.g. a `~specutils.SpectrumList` from ``SpectrumList.read``.

    Returns
    -------
    {"arms", "exposures"}

    Raises
    ------
    TypeError
        If ``spectra`` is not a list of Spectrum objects.
    ValueError
        If it is empty, or mixes arms and exposures (e.g. two exposures of two
        arms: combine the arms of each exposure with :func:`combine_arms` first).

    Examples
    --------
    >>> import astropy.units as u
    >>> blue = Spectrum(flux=np.ones(50) * u.Jy, spectral_axis=np.linspace(4000, 5000, 50) * u.AA)
    >>> red = Spectrum(flux=np.ones(50) * u.Jy, spectral_axis=np.linspace(4950, 6000, 50) * u.AA)
    >>> list_kind([blue, red]), list_kind([blue, blue])
    ('arms', 'exposures')
    """
    spectra = _check_spectra(spectra, "spectra")
    ranges = [_range(s) for s in spectra]
    arms = exposures = 0
    for i in range(len(ranges)):
        for j in range(i + 1, len(ranges)):
            (lo1, hi1), (lo2, hi2) = ranges[i], ranges[j]
            common = max(0.0, min(hi1, hi2) - max(lo1, lo2))
            narrower = min(hi1 - lo1, hi2 - lo2)
            share = common / narrower if narrower > 0 else 1.0
            if share < ARM_OVERLAP_LIMIT:
                arms += 1
            else:
                exposures += 1
    if arms and exposures:
        text = ", ".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in ranges)
        raise ValueError(
            f"the list mixes spectra of different ranges (arms) with spectra of the same "
            f"range (exposures): ranges {text} Angstrom. Combine the arms of each exposure "
            "with combine_arms first, or pass one spectrum at a time"
        )
    return "arms" if arms else "exposures"


# ---------------------------------------------------------------------------- combining


def _union_axis(axes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The common axis of arms with pixel centres ``axes`` (Angstrom, increasing).

    Arms are taken from the finest median sampling to the coarsest; each keeps the
    pixels whose bins lie outside the ranges already covered, so in an overlap the
    finer arm's pixels are kept.  A gap between arms is filled with pixels at the
    sampling of the arm below it.  Returns the centres and a mask of the gap pixels.
    """
    from .resample import bin_edges

    edges = [bin_edges(axis) for axis in axes]
    steps = [float(np.median(np.diff(e))) for e in edges]
    order = sorted(range(len(axes)), key=lambda k: (steps[k], edges[k][0]))
    covered: list[tuple[float, float]] = []
    kept: list[np.ndarray] = []
    for k in order:
        lo, hi = edges[k][:-1], edges[k][1:]
        free = np.ones(lo.size, dtype=bool)
        slack = 1e-3 * steps[k]  # edges of two arms on one lattice differ by rounding
        for start, stop in covered:
            free &= (hi <= start + slack) | (lo >= stop - slack)
        kept.append(axes[k][free])
        covered.append((edges[k][0], edges[k][-1]))
    centres = np.sort(np.concatenate(kept))
    gap = np.zeros(centres.size, dtype=bool)
    # Holes between the covered ranges: pixels at the sampling of the arm below.
    spans = sorted(zip(covered, (steps[k] for k in order), strict=True))
    fill = []
    reach = spans[0][0][1]
    for (start, stop), _ in spans[1:]:
        if start > reach:
            below = max((s for s in spans if s[0][1] <= start), key=lambda s: s[0][1])
            n = max(1, int(round((start - reach) / below[1])))
            fill.append(reach + (np.arange(n) + 0.5) * (start - reach) / n)
        reach = max(reach, stop)
    if fill:
        centres = np.concatenate([centres, *fill])
        gap = np.concatenate([gap, np.ones(sum(f.size for f in fill), dtype=bool)])
        order_all = np.argsort(centres, kind="stable")
        centres, gap = centres[order_all], gap[order_all]
    return centres, gap


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _combined_meta(spectra: list[Spectrum], ranges: list) -> dict:
    """Top-level meta of combined arms; each arm's own meta in ``meta["arms"]``."""
    meta: dict = {}
    per_arm: set = set()
    for spectrum in spectra:
        for key, value in (spectrum.meta or {}).items():
            if key in per_arm:
                continue
            if key in meta and not _same(meta[key], value):
                per_arm.add(key)
                del meta[key]
            elif key not in meta:
                meta[key] = value
    meta = copy.deepcopy(meta)
    meta["arms"] = [
        {
            "range": u.Quantity(r, u.AA),
            "n_pix": int(s.spectral_axis.size),
            "meta": copy.deepcopy(dict(s.meta or {})),
        }
        for s, r in zip(spectra, ranges, strict=True)
    ]
    return meta


def _arm_arrays(spectrum: Spectrum, unit: u.UnitBase, wave: np.ndarray):
    """Flux, variance (or None) and missing, ``(n_batch, n_pix)``, in ``unit``."""
    from .spectra import _input_variance

    axis = spectrum.spectral_axis_index
    n_pix = spectrum.spectral_axis.size
    flux_q = spectrum.flux
    try:
        factor = np.full(n_pix, flux_q.unit.to(unit))
    except u.UnitConversionError:
        try:
            factor = (np.ones(n_pix) * flux_q.unit).to_value(
                unit, u.spectral_density(wave * u.AA)
            )
        except u.UnitConversionError:
            raise u.UnitsError(
                f"the arms' flux units {flux_q.unit!r} and {unit!r} cannot be converted"
            ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)
        try:
            variance, _ = _input_variance(spectrum)
        except AstropyUserWarning as exc:
            raise ValueError(f"an arm's uncertainty cannot be used: {exc}") from None

    def last(values):
        values = np.moveaxis(np.asarray(values), axis, -1)
        return values.reshape(-1, n_pix)

    flux = last(flux_q.value).astype(float) * factor
    missing = ~np.isfinite(flux)
    if spectrum.mask is not None:
        missing |= last(np.broadcast_to(np.asarray(spectrum.mask, dtype=bool), flux_q.shape))
    if variance is not None:
        variance = last(np.broadcast_to(variance, flux_q.shape)) * factor**2
        missing |= ~np.isfinite(variance)
    return flux, variance, missing


def combine_arms(arms: Sequence[Spectrum], *, medium: str | None = None) -> Spectrum:
    """Put the arms of one target (or of a batch of targets) on one spectral axis.

    Every arm is resampled (flux conserving,
    :func:`~specutils_deepclean.resample.rebin`) onto a common axis, and where
    several arms cover a pixel their values are averaged with inverse-variance
    weights.

    Parameters
    ----------
    arms : list of `~specutils.Spectrum`
        The arms, e.g. ``SpectrumList.read(path, format="DESI coadd")``: any order,
        any wavelength or frequency unit, flux units convertible to the first arm's
        (a flux per unit frequency is converted per pixel).  N-D arms are batches and
        must share their batch shape (row ``i`` of every arm is one target).  Masked
        pixels, non-finite flux and pixels whose uncertainty is not positive (DESI's
        ``IVAR = 0``) are missing data.
    medium : {"air", "vacuum"}, optional
        Medium of the wavelengths.  By default the medium stated by the arms' meta
        (``meta["medium"]``, a header keyword, or the survey format, see
        :func:`survey_medium`); arms stating different media are refused.

    Returns
    -------
    `~specutils.Spectrum`
        Flux in the first arm's unit and batch shape, spectral axis last.  The
        spectral axis is the union of the arms' pixels in the first arm's length unit
        (Angstrom for a frequency or energy axis), increasing: where arms overlap,
        the pixels of the arm with the finest median sampling are kept; a gap between
        arms is filled with pixels at the sampling of the arm below it, masked (NaN
        flux).  Uncertainty: ``1 / sum(w)`` with ``w = 1 / variance`` of the arms
        covering the pixel, in the first arm's uncertainty class (none when no arm
        has one).  Flux: ``sum(w f) / sum(w)``, the plain mean of the valid arms when
        none has an uncertainty.  Mask: True where no arm has a valid value (flux
        NaN there).  ``meta``: the entries the arms agree on (specutils' readers put
        the file's header and tables in the first arm's meta), ``meta["medium"]``
        when known, and ``meta["arms"]``: per arm, its ``range`` (Angstrom),
        ``n_pix`` and its own ``meta``.

    Raises
    ------
    TypeError
        If ``arms`` is not a list of Spectrum objects.
    ValueError
        If the arms have different batch shapes, state different media, some but not
        all have an uncertainty, or an uncertainty cannot be used.
    astropy.units.UnitsError
        If an axis is not spectral or the flux units cannot be converted.

    Notes
    -----
    A pixel of the common axis takes the values of the arms whose valid pixels cover
    its whole bin; where no arm does (at the end of an arm, next to masked pixels),
    of the arms covering at least half of it.  At a junction between arms of
    different sampling the common axis's bin (between the midpoints of neighbouring
    pixel centres) can be wider on one side than the arm's own; the flux there is
    the mean over that bin (flux conserving).  The variance is propagated through the
    resampling without the covariance it creates between neighbouring pixels
    (arms sampled on one lattice, as DESI's, are not resampled at all).

    Examples
    --------
    >>> import astropy.units as u
    >>> from astropy.nddata import InverseVariance
    >>> wave = np.arange(4000.0, 4010.0)
    >>> blue = Spectrum(flux=np.full(10, 1.0) * u.Jy, spectral_axis=wave * u.AA,
    ...                 uncertainty=InverseVariance(np.full(10, 1.0) / u.Jy**2))
    >>> red = Spectrum(flux=np.full(10, 2.0) * u.Jy, spectral_axis=(wave + 8) * u.AA,
    ...                uncertainty=InverseVariance(np.full(10, 3.0) / u.Jy**2))
    >>> both = combine_arms([blue, red], medium="air")
    >>> both.spectral_axis.size, float(both.flux[9].value), float(both.uncertainty.array[9])
    (18, 1.75, 4.0)
    """
    arms = _check_spectra(arms, "arms")
    shapes = {
        tuple(np.delete(s.flux.shape, s.spectral_axis_index)) for s in arms
    }
    if len(shapes) > 1:
        raise ValueError(
            f"the arms have different batch shapes {sorted(shapes)}: row i of every arm "
            "must be the same target"
        )
    batch = shapes.pop()
    if medium is None:
        stated = {m for m in map(_medium_of, arms) if m is not None}
        if len(stated) > 1:
            raise ValueError(f"the arms state different media: {sorted(stated)}")
        medium = stated.pop() if stated else None
    else:
        from .spectra import _parse_medium

        medium = _parse_medium(medium, "medium")
    with_unc = [s.uncertainty is not None for s in arms]
    if any(with_unc) and not all(with_unc):
        raise ValueError(
            f"arms {[i for i, w in enumerate(with_unc) if not w]} have no uncertainty and "
            "the others have one: the weights of the overlap are undefined"
        )
    unit = arms[0].flux.unit
    waves = [_wavelengths(s) for s in arms]
    ascending = [w if w[-1] > w[0] else w[::-1] for w in waves]
    centres, gap = _union_axis(ascending)
    from .resample import rebin

    n_rows = int(np.prod(batch)) if batch else 1
    # Sums over the arms that cover a pixel fully (first) and at least half (fallback).
    sums = {cover: np.zeros((3, n_rows, centres.size)) for cover in (_FULL, 0.5)}
    for spectrum, wave, up in zip(arms, waves, ascending, strict=True):
        flux, variance, missing = _arm_arrays(spectrum, unit, wave)
        if up is not wave:
            flux, missing = flux[:, ::-1], missing[:, ::-1]
            variance = None if variance is None else variance[:, ::-1]
        for cover, (num, den, count) in sums.items():
            out, var_out, miss_out = rebin(
                flux, up, centres, variance=variance, missing=missing, min_coverage=cover
            )
            valid = ~miss_out & np.isfinite(out)
            if var_out is not None:
                valid &= np.isfinite(var_out) & (var_out > 0)
                weight = np.where(valid, 1.0 / np.where(valid, var_out, 1.0), 0.0)
            else:
                weight = valid.astype(float)
            num += np.where(valid, weight * np.where(valid, out, 0.0), 0.0)
            den += weight
            count += valid
    full = sums[_FULL][2] > 0
    num, den, count = np.where(full, sums[_FULL], sums[0.5])
    good = (count > 0) & ~gap
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(good, num / den, np.nan)
        variance = np.where(good, 1.0 / den, np.nan)
    shape = (*batch, centres.size)
    uncertainty = None
    if all(with_unc):
        uncertainty = _uncertainty_like(arms[0].uncertainty, variance.reshape(shape), unit)
    axis_unit = arms[0].spectral_axis.unit
    if not axis_unit.is_equivalent(u.AA):
        axis_unit = u.AA
    meta = _combined_meta(arms, [(float(w[0]), float(w[-1])) for w in ascending])
    if medium is not None:
        meta["medium"] = medium
    return Spectrum(
        flux=flux.reshape(shape) * unit,
        spectral_axis=(centres * u.AA).to(axis_unit),
        uncertainty=uncertainty,
        mask=~good.reshape(shape),
        meta=meta,
    )


def _uncertainty_like(template, variance: np.ndarray, unit: u.UnitBase):
    """``variance`` (in ``unit**2``) as an uncertainty of ``template``'s class."""
    if isinstance(template, InverseVariance):
        with np.errstate(divide="ignore"):
            inverse = np.where(np.isfinite(variance), 1.0 / variance, 0.0)
        return InverseVariance(inverse, unit=unit**-2)
    if isinstance(template, VarianceUncertainty):
        return VarianceUncertainty(variance, unit=unit**2)
    return StdDevUncertainty(np.sqrt(variance), unit=unit)


# ---------------------------------------------------------------------------- DESI


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value).strip()


def _fibre_status(row) -> int | None:
    for name in ("COADD_FIBERSTATUS", "FIBERSTATUS"):
        if name in row.colnames:
            return int(row[name])
    return None


def desi_targets(
    spectra: Sequence[Spectrum], *, keep_sky: bool = False
) -> tuple[list[Spectrum], dict[str, str]]:
    """One spectrum per target of a DESI ``spectra-*`` or ``coadd-*`` file, arms combined.

    Parameters
    ----------
    spectra : `~specutils.SpectrumList`
        What ``SpectrumList.read(path, format="DESI coadd")`` (or ``"DESI
        spectra"``) returns: one 2-D Spectrum per arm, a row per fibre, the file's
        ``header``, ``fibermap`` (and ``scores``, ``exp_fibermap``) in the first
        arm's meta.
    keep_sky : bool
        Also return sky fibres (``OBJTYPE = SKY``) that have data.

    Returns
    -------
    targets : list of `~specutils.Spectrum`
        One 1-D spectrum per fibre with a target and data, in file order, arms
        combined by :func:`combine_arms` (vacuum wavelengths, ``meta["medium"]``).
        ``meta``: ``target`` (the name used for result files: the ``TARGETID``, with
        ``-<EXPID>`` or ``-row<N>`` appended when the ``TARGETID`` occurs in several
        rows), ``targetid``, ``fiber``, ``row`` (0-based row in the file),
        ``fibermap`` (its row, a one-row Table), ``scores`` and ``exp_fibermap``
        (its rows, when the file has them), ``header`` (the file's primary header
        plus ``TARGETID``, ``FIBER`` and, for single exposures, ``EXPID``) and
        ``arms`` (each arm's own meta, per-fibre arrays cut to this fibre).
    skipped : dict
        Target name (``"row <N>"`` for unassigned fibres) -> reason, for the fibres
        left out: unassigned (``TARGETID < 0``), sky fibres (unless ``keep_sky``),
        and fibres without a valid pixel in any arm (``IVAR = 0`` or masked
        everywhere); the reason gives the ``FIBERSTATUS``.

    Raises
    ------
    TypeError, ValueError
        If ``spectra`` is not a list of arms with a DESI fibre map whose rows match
        the arms' rows.

    Examples
    --------
    >>> from specutils import SpectrumList
    >>> arms = SpectrumList.read("coadd-sv3-dark-26065.fits", format="DESI coadd")  # doctest: +SKIP
    >>> targets, skipped = desi_targets(arms)  # doctest: +SKIP
    >>> [t.meta["targetid"] for t in targets]  # doctest: +SKIP
    [39627866878511337, 39627866878514741]
    """
    spectra = _check_spectra(spectra, "spectra")
    fibermap = next((s.meta["fibermap"] for s in spectra if "fibermap" in (s.meta or {})), None)
    if fibermap is None or "TARGETID" not in getattr(fibermap, "colnames", ()):
        raise ValueError(
            "no DESI fibre map (meta['fibermap'] with a TARGETID column) in the arms: "
            "read the file with SpectrumList.read(path, format='DESI coadd') or 'DESI spectra'"
        )
    combined = combine_arms(spectra, medium="vacuum")
    if combined.flux.ndim != 2 or combined.flux.shape[0] != len(fibermap):
        raise ValueError(
            f"the arms hold {combined.flux.shape[:-1]} spectra but the fibre map has "
            f"{len(fibermap)} rows"
        )
    n_rows = len(fibermap)
    ids = [int(t) for t in fibermap["TARGETID"]]
    repeats = Counter(ids)
    has_expid = "EXPID" in fibermap.colnames
    header = combined.meta.get("header")
    exp_fibermap = combined.meta.get("exp_fibermap")
    targets, skipped = [], {}
    for row in range(n_rows):
        entry = fibermap[row]
        targetid = ids[row]
        fiber = _fibre(entry, fibermap, exp_fibermap, targetid)
        status = _fibre_status(entry)
        state = "" if status is None else f", FIBERSTATUS {status}"
        if repeats[targetid] == 1:
            name = str(targetid)
        elif has_expid:
            name = f"{targetid}-{int(entry['EXPID'])}"
        else:
            name = f"{targetid}-row{row}"
        objtype = _text(entry["OBJTYPE"]) if "OBJTYPE" in fibermap.colnames else ""
        where = f"fibre {fiber}" if fiber is not None else f"row {row}"
        if targetid < 0:
            skipped[f"row {row}"] = f"unassigned {where} (TARGETID {targetid}{state})"
            continue
        if objtype == "SKY" and not keep_sky:
            skipped[name] = f"sky {where} (OBJTYPE SKY{state})"
            continue
        mask = np.asarray(combined.mask[row], dtype=bool)
        if mask.all():
            skipped[name] = (
                f"no valid pixel in any arm ({where}: IVAR 0 or masked everywhere{state})"
            )
            continue
        targets.append(
            _desi_target(combined, row, name, targetid, fiber, header, has_expid, n_rows)
        )
    return targets, skipped


def _fibre(entry, fibermap, exp_fibermap, targetid: int) -> int | None:
    """The fibre of a fibre-map row (healpix coadds keep it in ``exp_fibermap`` only)."""
    if "FIBER" in fibermap.colnames:
        return int(entry["FIBER"])
    if exp_fibermap is not None and {"FIBER", "TARGETID"} <= set(exp_fibermap.colnames):
        fibres = np.unique(exp_fibermap["FIBER"][np.asarray(exp_fibermap["TARGETID"]) == targetid])
        if fibres.size == 1:
            return int(fibres[0])
    return None


def _cut_rows(value, row: int, n_rows: int):
    """``value`` cut to one row when it is a per-fibre array or table."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n_rows:
        return value[row]
    return value


def _desi_target(combined, row, name, targetid, fiber, header, has_expid, n_rows) -> Spectrum:
    meta = combined.meta
    fibermap = meta["fibermap"]
    target_meta = {
        key: value
        for key, value in meta.items()
        if key not in ("fibermap", "scores", "exp_fibermap", "header", "arms")
    }
    target_meta = copy.deepcopy(target_meta)
    target_meta.update(target=name, targetid=targetid, fiber=fiber, row=row)
    target_meta["fibermap"] = fibermap[row : row + 1]
    if meta.get("scores") is not None and len(meta["scores"]) == n_rows:
        target_meta["scores"] = meta["scores"][row : row + 1]
    exp = meta.get("exp_fibermap")
    if exp is not None and "TARGETID" in exp.colnames:
        target_meta["exp_fibermap"] = exp[np.asarray(exp["TARGETID"]) == targetid]
    head = header.copy() if isinstance(header, fits.Header) else fits.Header()
    head["TARGETID"] = (targetid, "DESI target id")
    if fiber is not None:
        head["FIBER"] = (fiber, "DESI fibre")
    if has_expid:
        head["EXPID"] = (int(fibermap[row]["EXPID"]), "DESI exposure id")
    target_meta["header"] = head
    target_meta["arms"] = [
        {
            **{k: v for k, v in arm.items() if k != "meta"},
            "meta": {
                k: _cut_rows(v, row, n_rows)
                for k, v in arm["meta"].items()
                if k not in ("fibermap", "scores", "exp_fibermap", "header")
            },
        }
        for arm in meta["arms"]
    ]
    uncertainty = combined.uncertainty
    return Spectrum(
        flux=combined.flux[row],
        spectral_axis=combined.spectral_axis,
        uncertainty=None if uncertainty is None else uncertainty[row],
        mask=np.asarray(combined.mask[row], dtype=bool),
        meta=target_meta,
    )


# ---------------------------------------------------------------------------- inputs


def resolve_input(spectrum, function: str, *, exposures: bool) -> Spectrum | list:
    """The input of a cleaning function with a list of arms combined.

    A `~specutils.Spectrum` is returned as it is.  A list whose spectra are arms
    (:func:`list_kind`) is combined with :func:`combine_arms` (a DESI file gives a
    batch with one row per fibre).  A list of exposures is returned as a list when
    ``exposures`` is True (``denoise``), else a list of one spectrum gives that
    spectrum and a longer one is refused.  Lists holding other objects are returned
    unchanged when ``exposures`` is True (the caller reports them).

    Parameters
    ----------
    spectrum : `~specutils.Spectrum` or list of `~specutils.Spectrum`
        The input of the cleaning function.
    function : str
        The function's name, for messages.
    exposures : bool
        Whether the function takes a list of exposures of one star.

    Returns
    -------
    `~specutils.Spectrum` or list of `~specutils.Spectrum`

    Raises
    ------
    TypeError
        If ``spectrum`` is neither a Spectrum nor a list of them (``exposures``
        False).
    ValueError
        For a list of several exposures when ``exposures`` is False, or a list
        mixing arms and exposures.
    astropy.units.UnitsError
        If a spectrum's flux is in magnitudes, dex or decibels.
    """
    if isinstance(spectrum, Spectrum):
        check_linear_flux(spectrum)
        return spectrum
    for item in spectrum if isinstance(spectrum, list | tuple) else ():
        if isinstance(item, Spectrum):
            check_linear_flux(item)
    if not isinstance(spectrum, list | tuple):  # SpectrumList is a list
        if exposures:
            return spectrum
        raise TypeError(
            f"spectrum must be a specutils Spectrum (or a list of the arms of one target), "
            f"got {type(spectrum).__name__}"
        )
    if not spectrum or not all(isinstance(item, Spectrum) for item in spectrum):
        if exposures:
            return spectrum
        _check_spectra(spectrum, "spectrum")
    if list_kind(spectrum) == "arms":
        return combine_arms(spectrum)
    if exposures:
        return spectrum
    if len(spectrum) == 1:
        return spectrum[0]
    raise ValueError(
        f"{function} cleans one spectrum (or a batch on one axis, or the arms of one "
        f"target): this list holds {len(spectrum)} spectra covering the same range "
        "(exposures); call it on each, or stack them in one 2-D Spectrum"
    )


# ---------------------------------------------------------------------------- LAMOST


def is_lamost(path) -> bool:
    """Whether ``path`` is a LAMOST low-resolution (LRS) spectrum file.

    The primary header has ``TELESCOP = LAMOST`` and the spectrum is either the
    primary image (5 rows: flux, inverse variance, wavelength, and-mask, or-mask;
    data releases up to DR7) or a one-row binary table in HDU 1 with array columns
    ``FLUX`` and ``WAVELENGTH`` (DR8 on).
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            if str(hdul[0].header.get("TELESCOP", "")).strip().upper() != "LAMOST":
                return False
            return _lamost_layout(hdul) is not None
    except (OSError, ValueError):
        return False


def _lamost_layout(hdul) -> str | None:
    data = hdul[0].data
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[0] == 5:
        return "image"
    if len(hdul) > 1 and isinstance(hdul[1], fits.BinTableHDU):
        names = {name.upper() for name in hdul[1].columns.names}
        if {"FLUX", "WAVELENGTH"} <= names:
            return "table"
    return None


def read_lamost(path) -> Spectrum:
    """Read a LAMOST low-resolution (LRS) spectrum file (specutils has no reader).

    Parameters
    ----------
    path : str or path-like
        A LAMOST LRS ``spec-*.fits`` file in either layout of :func:`is_lamost`.

    Returns
    -------
    `~specutils.Spectrum`
        Flux in the file's ``BUNIT`` (dimensionless when absent: LAMOST fluxes are
        relatively calibrated), `~astropy.nddata.InverseVariance` uncertainty, mask
        True where the and-mask is set or the inverse variance is not positive,
        wavelengths in Angstrom (vacuum, heliocentric, as LAMOST publishes them:
        ``meta["medium"] = "vacuum"``), ``meta["header"]`` the primary header.

    Raises
    ------
    ValueError
        If the file is not a LAMOST LRS file of a known layout.
    """
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header.copy()
        layout = _lamost_layout(hdul)
        if str(header.get("TELESCOP", "")).strip().upper() != "LAMOST" or layout is None:
            raise ValueError(
                f"{path} is not a LAMOST LRS file (TELESCOP = LAMOST with a 5-row primary "
                "image, or FLUX and WAVELENGTH columns in HDU 1)"
            )
        if layout == "image":
            rows = np.asarray(hdul[0].data, dtype=float)
            flux, ivar, wave, and_mask = rows[0], rows[1], rows[2], rows[3]
        else:
            table = hdul[1].data
            names = {name.upper(): name for name in hdul[1].columns.names}

            def column(name, default=None):
                if name not in names:
                    return default
                return np.asarray(table[names[name]][0], dtype=float)

            flux, wave = column("FLUX"), column("WAVELENGTH")
            ivar = column("IVAR")
            and_mask = column("ANDMASK", np.zeros_like(flux))
    unit = u.dimensionless_unscaled
    if header.get("BUNIT"):
        try:
            unit = u.Unit(str(header["BUNIT"]), parse_strict="silent")
        except ValueError:
            unit = u.dimensionless_unscaled
        if isinstance(unit, u.UnrecognizedUnit):
            unit = u.dimensionless_unscaled
    mask = (and_mask != 0) | ~np.isfinite(flux)
    uncertainty = None
    if ivar is not None:
        mask |= ~(ivar > 0)
        uncertainty = InverseVariance(np.where(np.isfinite(ivar), ivar, 0.0), unit=unit**-2)
    return Spectrum(
        flux=flux * unit,
        spectral_axis=wave * u.AA,
        uncertainty=uncertainty,
        mask=mask,
        meta={"header": header, "medium": "vacuum"},
    )
