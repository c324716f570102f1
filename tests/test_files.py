"""Spectrum files in and out: input lists, atomic result files that read back whole."""

import os

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum

from specutils_deepclean import files
from specutils_deepclean.files import (
    check_output_dir,
    expand_inputs,
    output_path,
    read_result,
    read_spectrum,
    write_result,
)


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
