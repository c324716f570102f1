"""The demo writes a PNG and two FITS files (observation, corrected) that specutils reads."""

import subprocess
import sys

import astropy.units as u
import numpy as np
import pytest
from specutils import Spectrum

from specutils_deepclean import demo


def test_demo_main(tmp_path, capsys):
    assert demo.main(["--output", str(tmp_path), "--seed", "3", "--snr", "20"]) == 0
    printed = capsys.readouterr().out.split()
    png, fits = tmp_path / "demo_observation.png", tmp_path / "demo_observation.fits"
    cleaned_path = tmp_path / "demo_detelluric.fits"
    denoised_path, quicklook = tmp_path / "demo_denoised.fits", tmp_path / "demo_denoised.png"
    assert printed == [str(png), str(fits), str(cleaned_path), str(denoised_path), str(quicklook)]
    assert quicklook.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    spec = Spectrum.read(fits, format="wcs1d-fits")
    assert spec.flux.shape == (4300,)
    assert spec.mask[1950:2350].all()  # the middle gap
    assert spec.mask.sum() <= 402  # plus at most an edge pixel the RV shift uncovers
    assert np.isfinite(spec.flux[~spec.mask]).all()
    assert spec.uncertainty is not None
    cleaned = Spectrum.read(cleaned_path, format="wcs1d-fits")
    assert cleaned.flux.shape == (4300,) and cleaned.mask[1950:2350].all()
    changed = cleaned.flux.value != spec.flux.value
    wave = cleaned.spectral_axis.to_value(u.AA)
    # Only pixels in the telluric bands change (none between 3700 and 4700 A); the O2 B
    # band (6867-6920 A) gets flux back (divided by a transmission below 1).
    quiet = (wave > 3700) & (wave < 4700) & ~spec.mask
    assert changed[~spec.mask].any() and not changed[quiet].any()
    band = (wave > 6867) & (wave < 6920) & ~spec.mask
    assert np.mean(cleaned.flux.value[band]) > np.mean(spec.flux.value[band])
    # The denoiser fills the gap (the mask still says the input had no data there)
    # and is smoother than its input.
    denoised = Spectrum.read(denoised_path, format="wcs1d-fits")
    assert np.isfinite(denoised.flux.value[1950:2350]).all() and denoised.mask[1950:2350].all()
    smooth = np.abs(np.diff(denoised.flux.value[quiet], 2)).mean()
    assert smooth < 0.5 * np.abs(np.diff(cleaned.flux.value[quiet], 2)).mean()


def test_demo_default_uncertainty_below_input(tmp_path):
    """README's demo (seed 0, S/N 10): the denoised uncertainty is far below the input's.

    Before the damped Newton step, the selected class of this star stopped at its
    screening point, where its Hessian is near-singular, and the output sigma came out
    7 times the input's.
    """
    assert demo.main(["--output", str(tmp_path)]) == 0
    observed = Spectrum.read(tmp_path / "demo_detelluric.fits", format="wcs1d-fits")
    denoised = Spectrum.read(tmp_path / "demo_denoised.fits", format="wcs1d-fits")
    sigma_in = np.nanmedian(observed.uncertainty.array[~observed.mask])
    assert np.nanmedian(denoised.uncertainty.array) < 0.5 * sigma_in


def test_demo_figures_and_files(tmp_path, monkeypatch):
    """The gap is marked, the legend leaves the B band's transmission visible, both
    figures label their axes alike, and the FITS carry the CLI results' keywords."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from specutils_deepclean import plotting

    figures = {}
    real_plot, real_quicklook = demo._plot, plotting.quicklook

    def keep_plot(*args, **kwargs):
        figures["demo"] = real_plot(*args, **kwargs)
        return figures["demo"]

    def keep_quicklook(*args, **kwargs):
        figures["quicklook"] = real_quicklook(*args, **kwargs)
        return figures["quicklook"]

    monkeypatch.setattr(demo, "_plot", keep_plot)
    monkeypatch.setattr(plotting, "quicklook", keep_quicklook)
    paths = demo.run(tmp_path, seed=1)
    top, zoom = figures["demo"].axes
    assert any("gap" in artist.get_label() for artist in top.patches)
    # the transmission curve inside the O2 B band, in display coordinates
    canvas = FigureCanvasAgg(figures["demo"])
    canvas.draw()
    curve = next(line for line in zoom.lines if "transmission" in line.get_label())
    x, y = curve.get_data()
    band = (x > 6867) & (x < 6920)
    points = zoom.transData.transform(np.column_stack([x[band], y[band]]))
    legend = zoom.get_legend().get_window_extent(canvas.get_renderer())
    inside = (
        (points[:, 0] >= legend.x0) & (points[:, 0] <= legend.x1)
        & (points[:, 1] >= legend.y0) & (points[:, 1] <= legend.y1)
    )
    assert band.sum() > 20 and not inside.any()
    quick = figures["quicklook"].axes
    assert {ax.get_xlabel() for ax in (top, zoom)} == {quick[-1].get_xlabel()}
    assert top.get_ylabel() == zoom.get_ylabel() == quick[0].get_ylabel()
    assert quick[-1].get_xlabel() == "wavelength [Angstrom, air]"
    from astropy.io import fits

    cli_keywords = {"DCOPER", "DCMODEL", "DCMODVER", "DCVERSIO", "WAVEMED"}
    for path in paths[2:4]:  # detelluric, denoised
        header = fits.getheader(path)
        assert cli_keywords <= set(header), path
    assert fits.getheader(paths[2])["DCOPER"] == "remove_tellurics"
    assert fits.getheader(paths[3])["DCOPER"] == "denoise"
    observation = fits.getheader(paths[1])
    assert observation["SIMSEED"] == 1 and observation["WAVEMED"] == "air"


def test_demo_deterministic(tmp_path):
    a = demo.run(tmp_path / "a", seed=5)
    b = demo.run(tmp_path / "b", seed=5)
    for first, second in zip(a[1:4], b[1:4], strict=True):  # observation, detelluric, denoised
        assert np.array_equal(
            Spectrum.read(first, format="wcs1d-fits").flux,
            Spectrum.read(second, format="wcs1d-fits").flux,
            equal_nan=True,
        )


@pytest.mark.parametrize("argv, match", [(["--snr", "0"], "--snr must be positive")])
def test_demo_bad_args(argv, match, capsys):
    with pytest.raises(SystemExit):
        demo.main(argv)
    assert match in capsys.readouterr().err


def test_demo_bad_star(tmp_path):
    with pytest.raises(ValueError, match=r"star must be in 0..7, got 8"):
        demo.run(tmp_path, star=8)


def test_demo_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "specutils_deepclean.demo", "--output", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.split()[0].endswith("demo_observation.png")
