"""Spectrum files in and out: input lists, atomic result files that read back whole."""

import os

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum, SpectrumList

from specutils_deepclean import files
from specutils_deepclean.files import (
    check_output_dir,
    expand_inputs,
    output_path,
    read_result,
    read_spectrum,
    read_targets,
    write_result,
)

from data_needs import data_file, needs_data_file


def result_spectrum(n=50, unit=u.Jy, transmission=True):
    rng = np.random.default_rng(0)
    wave = np.linspace(5000, 5100, n) * u.AA
    info = {
        "operation": "denoise",
        "model": "m",
        "map_class": "G",
        "class_posterior": {"G": 0.75, "K": 0.25},
        "ood_score": 0.5,
        "ood_flag": False,
        "radial_velocity": 12.5 * u.km / u.s,
        "radial_velocity_error": 0.75 * u.km / u.s,
        "z": [0.1, -0.2],
        "filled": np.arange(n) % 7 == 0,
    }
    if transmission:
        info["transmission"] = Spectrum(
            flux=np.linspace(0.5, 1, n) * u.dimensionless_unscaled, spectral_axis=wave
        )
    return Spectrum(
        flux=rng.normal(1, 0.1, n) * unit,
        spectral_axis=wave,
        uncertainty=StdDevUncertainty(np.full(n, 0.1)),
        mask=np.arange(n) % 5 == 0,
        meta={"header": fits.Header({"OBJECT": "HD 1"}), "deepclean": info},
    )


def test_expand_inputs(tmp_path):
    for name in ("a.fits", "b.fits", "c.txt"):
        (tmp_path / name).write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.fits").write_text("x")
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n\nsub/d.fits\n" + str(tmp_path / "a.fits") + "\n")
    got = expand_inputs([str(tmp_path / "*.fits"), f"@{listing}", tmp_path / "missing.fits"])
    assert got == [
        tmp_path / "a.fits",
        tmp_path / "b.fits",
        tmp_path / "sub" / "d.fits",  # a.fits again from the list: kept once
        tmp_path / "missing.fits",  # a plain path that does not exist is the run's failure
    ]
    assert expand_inputs([str(tmp_path / "**" / "*.fits")])[-1] == sub / "d.fits"
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.nothing")])
    with pytest.raises(FileNotFoundError, match="list file"):
        expand_inputs([f"@{tmp_path / 'nolist.txt'}"])


def test_output_path(tmp_path):
    got = output_path("x/spec-1.fits.gz", tmp_path, "denoised")
    assert got == tmp_path / "spec-1_denoised.fits"
    assert output_path("obs.dat", tmp_path, "detelluric") == tmp_path / "obs_detelluric.fits"


def test_read_spectrum_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_spectrum(tmp_path / "nope.fits")
    # a folder is named as one (it was reported as not existing)
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a file: pass its files"):
        read_spectrum(tmp_path)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a spectrum")
    with pytest.raises(ValueError, match="specutils cannot read .*junk.fits.*--format") as info:
        read_spectrum(junk)
    assert "\n" not in str(info.value)  # one line, not specutils' whole format table


def test_result_round_trip(tmp_path):
    spec = result_spectrum()
    path = write_result(spec, tmp_path / "r.fits")
    back = read_result(path)
    np.testing.assert_array_equal(back.flux, spec.flux)
    np.testing.assert_array_equal(back.spectral_axis, spec.spectral_axis)
    np.testing.assert_array_equal(back.uncertainty.array, spec.uncertainty.array)
    np.testing.assert_array_equal(back.mask, spec.mask)
    info = back.meta["deepclean"]
    np.testing.assert_array_equal(info["filled"], spec.meta["deepclean"]["filled"])
    assert info["class_posterior"] == {"G": 0.75, "K": 0.25} and info["z"] == [0.1, -0.2]
    np.testing.assert_array_equal(
        info["transmission"].flux, spec.meta["deepclean"]["transmission"].flux
    )
    header = back.meta["header"]
    assert header["OBJECT"] == "HD 1"  # the input's header survives
    assert header["DCOPER"] == "denoise" and header["DCCLASS"] == "G"
    assert header["DCP_G"] == 0.75 and header["DCOOD"] == 0.5
    assert header["DCOODFLG"] is False and header["DCRV"] == 12.5 and header["DCRVERR"] == 0.75
    assert back.meta["deepclean"]["radial_velocity"] == 12.5  # km/s, as the header says
    # specutils' own reader identifies the columns of a physical-unit result
    plain = Spectrum.read(path, format="tabular-fits")
    np.testing.assert_array_equal(plain.flux, spec.flux)
    np.testing.assert_array_equal(plain.mask, spec.mask)
    assert [p.name for p in tmp_path.iterdir()] == ["r.fits"]  # no temporary left


def test_write_result_refuses_and_overwrites(tmp_path):
    spec = result_spectrum(transmission=False)
    path = write_result(spec, tmp_path / "r.fits")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_result(spec, path)
    spec.meta["deepclean"]["map_class"] = "K"
    write_result(spec, path, overwrite=True)
    assert read_result(path).meta["header"]["DCCLASS"] == "K"
    assert "transmission" not in read_result(path).meta["deepclean"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    original = fits.HDUList.writeto

    def broken(self, name, **kwargs):
        if not isinstance(name, str | os.PathLike):  # the in-memory table: fine
            return original(self, name, **kwargs)
        with open(name, "wb") as handle:
            handle.write(b"SIMPLE  = half a file")
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(OSError, match="disk full"):
        write_result(result_spectrum(), tmp_path / "r.fits")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_result_files_follow_the_umask(tmp_path, umask, mask):
    """A result is as readable as any file written there (it was 0o600 before)."""
    umask(mask)
    path = write_result(result_spectrum(), tmp_path / "r.fits")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    write_result(result_spectrum(), path, overwrite=True)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_current_umask_does_not_change_it(umask):
    from specutils_deepclean._atomic import current_umask

    umask(0o037)
    assert current_umask() == 0o037
    assert os.umask(0o037) == 0o037


def test_check_output_dir(tmp_path, monkeypatch):
    assert check_output_dir(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot write results to"):
        check_output_dir(blocker / "sub")
    usage = type("usage", (), {"free": 1000, "total": 10**9, "used": 0})
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(OSError, match="MiB free"):
        check_output_dir(tmp_path)
    assert not any(name.startswith(".deepclean-probe") for name in os.listdir(tmp_path))


def test_remove_partial_writes(tmp_path):
    out = tmp_path / "star_detelluric.fits"
    mine = tmp_path / ".star_detelluric.fits.k2j4.part"
    other = tmp_path / ".another_detelluric.fits.k2j4.part"
    for path in (mine, other, out):
        path.write_bytes(b"x")
    assert files.remove_partial_writes([out]) == [mine]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, out.name])


def _specutils_round_trip_hdus(spectrum, header):
    """The HDUs results were built from before the in-memory writer: specutils' own
    ``tabular-fits`` writer into a buffer, read back and copied."""
    import io

    plain = Spectrum(
        flux=spectrum.flux,
        spectral_axis=spectrum.spectral_axis,
        uncertainty=spectrum.uncertainty,
        mask=None if spectrum.mask is None else np.asarray(spectrum.mask, dtype=bool),
        meta={"header": header if header is not None else fits.Header()},
    )
    buffer = io.BytesIO()
    plain.write(buffer, format="tabular-fits")
    buffer.seek(0)
    with fits.open(buffer) as hdul:
        return [hdu.copy() for hdu in hdul]


@pytest.mark.parametrize("unit", [u.Jy, u.dimensionless_unscaled])
@pytest.mark.parametrize("rows", [None, 3])
@pytest.mark.parametrize("parts", ["all", "no uncertainty", "no mask"])
def test_in_memory_table_matches_specutils_writer(unit, rows, parts, tmp_path):
    """The result table HDUs built in memory write the same bytes as specutils'
    ``tabular-fits`` writer's HDUs read back (today's result files)."""
    spec = result_spectrum(unit=unit)
    if rows:  # a batch: 2-D flux, uncertainty and mask
        spec = Spectrum(
            flux=np.tile(spec.flux, (rows, 1)),
            spectral_axis=spec.spectral_axis,
            uncertainty=StdDevUncertainty(np.tile(spec.uncertainty.array, (rows, 1))),
            mask=np.tile(spec.mask, (rows, 1)),
            meta=spec.meta,
        )
    if parts == "no uncertainty":
        spec.uncertainty = None
    if parts == "no mask":
        spec.mask = None
    header = files._header(spec)
    header["NAXIS"] = 0  # an input header's structural keyword, dropped by both
    ours = fits.HDUList(files._table_hdus(spec, header))
    theirs = fits.HDUList(_specutils_round_trip_hdus(spec, header))
    ours.writeto(tmp_path / "ours.fits")
    theirs.writeto(tmp_path / "theirs.fits")
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "theirs.fits").read_bytes()


def _same_spectrum(a, b):
    np.testing.assert_array_equal(a.spectral_axis, b.spectral_axis)
    assert a.spectral_axis.unit == b.spectral_axis.unit and a.flux.unit == b.flux.unit
    np.testing.assert_array_equal(a.flux, b.flux)
    assert type(a.uncertainty) is type(b.uncertainty)
    if a.uncertainty is not None:
        np.testing.assert_array_equal(a.uncertainty.array, b.uncertainty.array)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert set(a.meta) == set(b.meta)
    assert repr(a.meta.get("header")) == repr(b.meta.get("header"))


def _specutils_read(path):
    """specutils' reader, identifying the format among all it knows."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDSS unit strings
        return Spectrum.read(path)


def test_known_layouts_read_as_specutils_identifies_them(tmp_path):
    """Results (physical and dimensionless flux) and a mock survey file are recognised
    from their headers and read exactly as specutils' identification reads them."""
    from specutils_deepclean.datasets import load_examples
    from specutils_deepclean.simulate import Simulator, prepare_truth

    result = write_result(result_spectrum(), tmp_path / "r.fits")
    normalised = write_result(result_spectrum(unit=u.dimensionless_unscaled), tmp_path / "n.fits")
    library = load_examples()
    truth, _ = prepare_truth(library, library.wavelength.value, library.medium)
    simulator = Simulator(library.wavelength.value, library.medium, fwhm=library.fwhm.value)
    (mock,) = simulator.observe(truth[:1], [50.0], seed=1).write_files(tmp_path / "mock")
    for path in (result, mock):
        assert files._known_format(path) == "tabular-fits"
        (name, fast), = read_targets(path)[0]
        assert name is None
        _same_spectrum(fast, _specutils_read(path))
    # specutils cannot read dimensionless flux from a table (no unit to find it by);
    # the layout is still recognised and the reading fails with the format named
    assert files._known_format(normalised) == "tabular-fits"
    with pytest.raises(ValueError, match="specutils cannot read"):
        read_spectrum(normalised)


@needs_data_file("sdss/NGC3073_SDSS_DR18.fits")
def test_sdss_file_read_as_specutils_identifies_it():
    import warnings

    path = data_file("sdss/NGC3073_SDSS_DR18.fits")
    assert files._known_format(path) == "SDSS-III/IV spec"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = read_spectrum(path)
    _same_spectrum(fast, _specutils_read(path))


@pytest.mark.parametrize(
    "name, kind",
    [("spectra-5-169-thru20210419.fits", "DESI spectra"), ("coadd-sv3-dark-26065.fits", "DESI coadd")],
)
def test_desi_files_are_recognised(name, kind):
    path = data_file(f"desi/{name}")
    if path is None:
        pytest.skip(f"needs desi/{name} of the data folder")
    assert files._known_format(path) == kind
    assert files._formats(SpectrumList, path) == ["tabular-fits", kind]  # list-only: kind


def test_unknown_files_fall_back_to_identification(tmp_path):
    """A FITS file of no known layout, and a text file: no format from the headers."""
    image = tmp_path / "image.fits"
    fits.PrimaryHDU(np.ones((5, 5))).writeto(image)
    text = tmp_path / "spec.txt"
    text.write_text("1 2\n")
    assert files._known_format(image) is None and files._known_format(text) is None
