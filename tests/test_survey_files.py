"""The real DESI and SDSS files of the shared data: read, combined, cleaned, from the CLI.

Skipped (with the reason) where the data folder is absent, as on a fresh clone.
"""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum, SpectrumList

from specutils_deepclean.datasets import data_dir
from specutils_deepclean.files import read_result, read_targets

torch = pytest.importorskip("torch")

DATA = data_dir()
DESI = None if DATA is None else Path(DATA) / "desi"
SDSS = None if DATA is None else Path(DATA) / "sdss" / "NGC3073_SDSS_DR18.fits"
needs_desi = pytest.mark.skipif(
    DESI is None or not DESI.is_dir(),
    reason="needs the DESI files of the data folder (../shared/data/desi, or set "
    "SPECUTILS_DEEPCLEAN_DATA); a fresh clone has none",
)
needs_sdss = pytest.mark.skipif(
    SDSS is None or not SDSS.is_file(),
    reason="needs the SDSS file of the data folder (../shared/data/sdss, or set "
    "SPECUTILS_DEEPCLEAN_DATA); a fresh clone has none",
)

# The fibres with data (IVAR > 0), per file (the data folder's README).
TARGETS = {
    "coadd-5-169-thru20210419.fits": ["39633300968442591"],
    "spectra-5-169-thru20210419.fits": ["39633300968442591"],
    "coadd-sv3-dark-26065.fits": ["39627866878511337", "39627866878514741"],
    "spectra-sv3-dark-26065.fits": ["39627866878511337"],
}


def quiet_read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)  # specutils: unexpected HDUs
        return SpectrumList.read(path, **kwargs)


@needs_desi
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_desi_files_give_one_spectrum_per_target(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        targets, skipped = read_targets(DESI / name)  # no format: recognised
    assert [t for t, _ in targets] == TARGETS[name]
    assert len(targets) + len(skipped) == 5
    reasons = " ".join(skipped.values())
    assert "unassigned" in reasons
    assert ("sky" in reasons) == name.endswith("26065.fits")
    for target, spectrum in targets:
        assert spectrum.meta["header"]["TARGETID"] == int(target)
        assert spectrum.meta["targetid"] == int(target) and spectrum.meta["medium"] == "vacuum"
        assert spectrum.flux.ndim == 1 and spectrum.spectral_axis.size == 7781
        assert (~spectrum.mask).sum() > 7000


@needs_desi
def test_desi_arms_are_combined_with_inverse_variance_weights():
    """Against the file's own arrays: the b/r overlap is the IVAR-weighted mean."""
    path = DESI / "coadd-sv3-dark-26065.fits"
    from specutils_deepclean.surveys import combine_arms

    both = combine_arms(quiet_read(path, format="DESI coadd"))
    with fits.open(path) as h:
        wave_b, wave_r = h["B_WAVELENGTH"].data, h["R_WAVELENGTH"].data
        flux_b, flux_r = h["B_FLUX"].data[2], h["R_FLUX"].data[2]
        ivar_b, ivar_r = h["B_IVAR"].data[2], h["R_IVAR"].data[2]
        mask_b, mask_r = h["B_MASK"].data[2] != 0, h["R_MASK"].data[2] != 0
    ivar_b = np.where(mask_b, 0.0, ivar_b.astype(float))
    ivar_r = np.where(mask_r, 0.0, ivar_r.astype(float))
    wave = both.spectral_axis.value
    np.testing.assert_allclose(np.diff(wave), 0.8, atol=1e-9)
    for lam in wave_b[wave_b >= wave_r[0]]:
        k = np.argmin(np.abs(wave - lam))
        i, j = np.argmin(np.abs(wave_b - lam)), np.argmin(np.abs(wave_r - lam))
        total = ivar_b[i] + ivar_r[j]
        if total == 0:
            assert both.mask[2, k]
            continue
        expected = (ivar_b[i] * flux_b[i] + ivar_r[j] * flux_r[j]) / total
        np.testing.assert_allclose(both.flux.value[2, k], expected, rtol=1e-5)
        np.testing.assert_allclose(both.uncertainty.array[2, k], total, rtol=1e-5)
    assert both.meta["medium"] == "vacuum" and "fibermap" in both.meta


@needs_desi
def test_functions_take_the_desi_list():
    """Today's main raises on both (a list is taken as exposures of one star) and warns
    that the r arm's medium is unknown."""
    from specutils_deepclean import denoise, remove_tellurics

    arms = quiet_read(DESI / "coadd-5-169-thru20210419.fits", format="DESI coadd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = remove_tellurics(arms)
        remove_tellurics(arms[1])  # the r arm alone: vacuum, from the DESI format
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "medium" in m], messages
    assert out.shape == (5, 7781) and out.meta["deepclean"]["medium"] == "vacuum"
    # at about one count of S/N per pixel there is no measurable telluric signal:
    # the fitted columns are 0 (as in the physical mode) and T is 1; without the
    # column bounds the blind estimate changes the galaxy's pixels
    assert out.meta["deepclean"]["columns"]["H2O"] == [0.0] * 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        blind = remove_tellurics(arms, column_factor=None)
    assert blind.meta["deepclean"]["telluric_pixels"][4] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)  # empty fibres; a galaxy (OOD)
        den = denoise(arms, steps=2, n_starts=1)
    assert den.shape == (5, 7781) and den.meta["deepclean"]["map_class"][4] is not None
    assert np.isfinite(den.flux.value[4][~den.mask[4]]).all()


@needs_sdss
def test_sdss_file_is_identified_and_in_vacuum():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's unit string
        targets, skipped = read_targets(SDSS)
        reference = Spectrum.read(SDSS, format="SDSS-III/IV spec")
    assert skipped == {} and [t for t, _ in targets] == [None]
    spectrum = targets[0][1]
    np.testing.assert_array_equal(spectrum.flux, reference.flux)
    from specutils_deepclean.spectra import _stated_medium

    assert _stated_medium(spectrum.meta) == "vacuum"


@needs_desi
@needs_sdss
# the SDSS file's unit string: astropy's note, not this package's to fix
@pytest.mark.filterwarnings("ignore:.*multiple slashes:astropy.units.UnitsWarning")
@pytest.mark.parametrize("task", ["detelluric", "denoise"])
def test_cli_on_every_desi_file_and_sdss(task, tmp_path, capsys):
    """Today's main exits 1 on every DESI file ('specutils cannot read ...')."""
    from specutils_deepclean import cli

    out = tmp_path / "out"
    argv = [task, str(DESI / "*.fits"), str(SDSS), "-o", str(out), "--quiet"]
    if task == "denoise":
        argv += ["--steps", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    suffix = "denoised" if task == "denoise" else "detelluric"
    expected = {f"NGC3073_SDSS_DR18_{suffix}.fits"} | {
        f"{name.removesuffix('.fits')}_{target}_{suffix}.fits"
        for name, targets in TARGETS.items()
        for target in targets
    }
    assert {p.name for p in out.glob("*.fits")} == expected
    for path in out.glob("*_3*.fits"):  # the DESI results
        result = read_result(path)
        assert str(result.meta["header"]["TARGETID"]) in path.name
        assert result.meta["header"]["WAVEMED"] == "vacuum"
        assert np.isfinite(result.flux.value[~result.mask]).all() and (~result.mask).sum() > 3000
    assert printed.count("skipped: ") == 15 and "unassigned fibre 2500" in printed
    assert "sky fibre 1570" in printed and "no valid pixel in any arm" in printed
    # a rerun skips every file: all its targets' results exist
    assert cli.main(argv) == 0
    assert "done 0, skipped 5" in capsys.readouterr().out


@needs_desi
def test_cli_with_a_list_format(tmp_path, capsys):
    """Today's main: IORegistryError (a SpectrumList reader named for a Spectrum)."""
    from specutils_deepclean import cli

    path = DESI / "coadd-sv3-dark-26065.fits"
    argv = ["detelluric", str(path), "-o", str(tmp_path), "--quiet", "--format", "DESI coadd"]
    plots = importlib.util.find_spec("matplotlib") is not None
    assert cli.main(argv + (["--plot"] if plots else [])) == 0
    assert len(list(tmp_path.glob("coadd-sv3-dark-26065_*_detelluric.fits"))) == 2
    if plots:  # one quicklook per target, of that target's input
        assert len(list(tmp_path.glob("coadd-sv3-dark-26065_*_detelluric.png"))) == 2
    with pytest.raises(ValueError, match="no reader called 'DESI nonsense'"):
        read_targets(path, "DESI nonsense")
