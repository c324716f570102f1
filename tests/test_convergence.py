"""`denoise` reports a MAP that did not converge: a warning naming the rows, the flag
per row in ``meta["deepclean"]``, and the count in the command line's summary.

Non-convergence is forced with ``steps=0``: no Newton step is taken, so a class has
converged only where its screened start already has a Newton decrement below ``tol``.
"""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.manipulation import ConvergenceWarning, denoise

pytest.importorskip("torch")


def _examples(snr: float = 20.0) -> Spectrum:
    """The eight example stars as a batch, with noise at S/N ``snr``."""
    library = load_examples()
    flux = library.flux.astype(float)
    noise = np.nan_to_num(flux, nan=1.0) / snr
    rng = np.random.default_rng(1)
    return Spectrum(
        flux=(flux + noise * rng.normal(size=flux.shape)) * u.one,
        spectral_axis=library.wavelength,
        uncertainty=StdDevUncertainty(noise),
        mask=~np.isfinite(flux),
        meta={"medium": "air"},
    )


def _denoise_recording(spectrum, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = denoise(spectrum, **options)
    return result, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_warning_names_the_rows_that_did_not_converge():
    result, caught = _denoise_recording(_examples(), steps=0)
    converged = result.meta["deepclean"]["converged"]
    rows = [i for i, ok in enumerate(converged) if not ok]
    assert len(rows) >= 4  # seven of the eight stop short of their optimum here
    assert all(isinstance(ok, bool) for ok in converged)
    (warning,) = caught
    assert issubclass(warning.category, AstropyUserWarning)
    assert f"spectra {rows} did not converge" in str(warning.message)
    # the per-class flags: the selected class's is the row's flag
    info = result.meta["deepclean"]
    for row, ok in enumerate(converged):
        assert info["class_converged"][row][info["map_class"][row]] is ok


def test_single_spectrum_flag_is_a_bool():
    batch = _examples()
    single = Spectrum(
        flux=batch.flux[5],
        spectral_axis=batch.spectral_axis,
        uncertainty=batch.uncertainty[5],
        mask=batch.mask[5],
        meta={"medium": "air"},
    )
    result, caught = _denoise_recording(single, steps=0)
    assert result.meta["deepclean"]["converged"] is False
    assert "spectra [0] did not converge" in str(caught[0].message)


def test_cli_summary_counts_files_that_did_not_converge(survey, tmp_path, capsys):
    from specutils_deepclean import cli
    from specutils_deepclean.files import read_result

    paths, bad = survey
    bad.unlink()
    out = tmp_path / "out"
    argv = ["denoise", str(tmp_path / "in" / "*.fits"), "-o", str(out), "--quiet"]
    assert cli.main([*argv, "--steps", "0"]) == 0
    flags = [read_result(p).meta["header"]["DCCONV"] for p in sorted(out.glob("*.fits"))]
    assert len(flags) == 4 and not all(flags)
    text = capsys.readouterr().out
    assert f"done 4 ({flags.count(False)} did not converge)" in text
    assert "did not converge" in text.split("\n", 1)[1]  # the warning, naming its files
