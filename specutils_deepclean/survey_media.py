"""The medium (air or vacuum) a survey file format implies.

Kept apart from :mod:`specutils_deepclean.surveys` (which re-exports both functions)
so that :mod:`specutils_deepclean.spectra` can consult it without an import cycle.
"""

from __future__ import annotations

__all__ = ["is_desi", "survey_medium"]

# Keys specutils' DESI reader puts in every arm's meta.
_DESI_ARM_KEYS = ("band", "int_mask", "resolution_data")
# TELESCOP values (prefixes) of survey files whose wavelengths are in vacuum.
_VACUUM_TELESCOPES = ("SDSS", "LAMOST")


# ---------------------------------------------------------------------------- medium


def is_desi(meta) -> bool:
    """Whether ``meta`` is what specutils' DESI reader (``DESI spectra``/``DESI coadd``) sets.

    The first arm carries the file's tables (``fibermap`` and ``bands``), every arm
    its ``band``, ``int_mask`` and ``resolution_data``.

    Parameters
    ----------
    meta : dict-like
        A spectrum's ``meta``.

    Returns
    -------
    bool
    """
    if not meta:
        return False
    if "fibermap" in meta and "bands" in meta:
        return True
    return all(key in meta for key in _DESI_ARM_KEYS)


def survey_medium(meta) -> str | None:
    """The medium of the wavelengths a known survey format implies, or None.

    DESI files (recognised by the ``meta`` specutils' DESI reader sets, see
    :func:`is_desi`), and files whose primary header (``meta["header"]``) has
    ``TELESCOP`` starting with ``SDSS`` or ``LAMOST``, are in vacuum: the three
    surveys publish vacuum wavelengths.  An explicit statement (``meta["medium"]``,
    a ``WAVEMED``, ``AIRORVAC`` or ``VACUUM`` keyword) takes precedence over this
    (see :func:`~specutils_deepclean.spectra.to_model_grid`).

    Parameters
    ----------
    meta : dict-like
        A spectrum's ``meta``.

    Returns
    -------
    {"vacuum"} or None

    Examples
    --------
    >>> from astropy.io import fits
    >>> survey_medium({"header": fits.Header({"TELESCOP": "LAMOST"})})
    'vacuum'
    >>> survey_medium({}) is None
    True
    """
    if is_desi(meta):
        return "vacuum"
    header = meta.get("header") if meta else None
    if header is None:
        return None
    try:
        telescope = header.get("TELESCOP")
    except (AttributeError, TypeError):
        return None
    if isinstance(telescope, str) and telescope.strip().upper().startswith(_VACUUM_TELESCOPES):
        return "vacuum"
    return None
