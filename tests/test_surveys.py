"""Arms of a target on one axis, list kinds and the survey media (synthetic spectra)."""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from specutils import Spectrum, SpectrumList

from specutils_deepclean.spectra import _stated_medium
from specutils_deepclean.surveys import (
    combine_arms,
    list_kind,
    resolve_input,
    survey_medium,
)

FLAM = u.erg / u.s / u.cm**2 / u.AA


def arm(start, stop, step, flux, ivar=None, mask=None, unit=FLAM, meta=None, unc=InverseVariance):
    """An arm on ``arange(start, stop, step)`` with flux ``flux(wave)`` (array or callable)."""
    wave = np.arange(start, stop, step)
    if callable(flux):
        values = flux(wave)
    else:
        values = np.array(np.broadcast_to(flux, np.broadcast_shapes(np.shape(flux), wave.shape)))
    uncertainty = None
    if ivar is not None:
        ivar = np.broadcast_to(ivar, values.shape).astype(float)
        if unc is InverseVariance:
            uncertainty = InverseVariance(ivar * unit**-2)
        elif unc is VarianceUncertainty:
            uncertainty = VarianceUncertainty(1 / ivar * unit**2)
        else:
            uncertainty = StdDevUncertainty(ivar**-0.5 * unit)
    return Spectrum(
        flux=values * unit,
        spectral_axis=wave * u.AA,
        uncertainty=uncertainty,
        mask=np.zeros(values.shape, bool) if mask is None else mask,
        meta={"medium": "vacuum"} if meta is None else meta,
    )


def test_overlap_is_the_inverse_variance_mean():
    blue = arm(4000.0, 4100.0, 1.0, 1.0, ivar=4.0)  # 4000..4099
    red = arm(4080.0, 4200.0, 1.0, 3.0, ivar=12.0)  # 4080..4199
    both = combine_arms([red, blue])  # any order
    wave = both.spectral_axis.to_value(u.AA)
    np.testing.assert_allclose(wave, np.arange(4000.0, 4200.0, 1.0))
    overlap = (wave >= 4080) & (wave < 4100)
    flux, ivar = both.flux.to_value(FLAM), both.uncertainty.array
    # w = ivar: (4 * 1 + 12 * 3) / 16 = 2.5, ivar 16
    np.testing.assert_allclose(flux[overlap], 2.5)
    np.testing.assert_allclose(ivar[overlap], 16.0)
    np.testing.assert_allclose(flux[wave < 4080], 1.0)
    np.testing.assert_allclose(ivar[wave < 4080], 4.0)
    np.testing.assert_allclose(flux[wave >= 4100], 3.0)
    assert isinstance(both.uncertainty, InverseVariance) and both.flux.unit == FLAM
    assert not both.mask.any() and both.meta["medium"] == "vacuum"
    assert [a["n_pix"] for a in both.meta["arms"]] == [120, 100]


def test_masked_pixels_leave_the_overlap_to_the_other_arm():
    mask = np.zeros(100, bool)
    mask[85:90] = True  # 4085-4089: blue masked, red alone
    ivar = np.full(100, 4.0)
    ivar[90] = 0.0  # an inverse variance of 0 (DESI's no data) is missing too
    blue = arm(4000.0, 4100.0, 1.0, 1.0, ivar=ivar, mask=mask)
    red_mask = np.zeros(120, bool)
    red_mask[5:7] = True  # 4085, 4086 masked in both arms
    red = arm(4080.0, 4200.0, 1.0, 3.0, ivar=12.0, mask=red_mask)
    both = combine_arms([blue, red])
    wave = both.spectral_axis.to_value(u.AA)
    flux = both.flux.to_value(FLAM)
    both_bad = np.isin(wave, [4085.0, 4086.0])
    assert both.mask[both_bad].all() and np.isnan(flux[both_bad]).all()
    red_only = np.isin(wave, [4087.0, 4088.0, 4089.0, 4090.0])
    np.testing.assert_allclose(flux[red_only], 3.0)
    np.testing.assert_allclose(both.uncertainty.array[red_only], 12.0)
    assert both.mask.sum() == 2


def test_units_and_uncertainty_classes_are_kept():
    blue = arm(4000.0, 4100.0, 1.0, 2.0, ivar=1.0, unc=StdDevUncertainty)
    # the same flux density (sigma 1) in W / m2 / nm, with a variance, on an axis in nm
    other = u.W / u.m**2 / u.nm
    scale = FLAM.to(other)
    wave = np.arange(4050.0, 4150.0)
    red = Spectrum(
        flux=np.full(wave.size, 2.0 * scale) * other,
        spectral_axis=(wave * u.AA).to(u.nm),
        uncertainty=VarianceUncertainty(np.full(wave.size, scale**2), unit=other**2),
        mask=np.zeros(wave.size, bool),
        meta={},
    )
    both = combine_arms([blue, red])
    assert both.flux.unit == FLAM and isinstance(both.uncertainty, StdDevUncertainty)
    assert both.spectral_axis.unit == u.AA
    wave = both.spectral_axis.to_value(u.AA)
    np.testing.assert_allclose(both.flux.to_value(FLAM), 2.0)
    overlap = (wave > 4049.5) & (wave < 4099.5)
    # two arms of sigma 1 -> sigma 1/sqrt(2)
    np.testing.assert_allclose(both.uncertainty.array[overlap], 2**-0.5)
    np.testing.assert_allclose(both.uncertainty.array[wave < 4049.5], 1.0)


def test_flux_per_unit_frequency_is_converted_per_pixel():
    wave = np.arange(5000.0, 5100.0)
    blue = arm(5000.0, 5100.0, 1.0, 1.0, ivar=1.0)
    fnu = (np.ones(wave.size) * FLAM).to(u.Jy, u.spectral_density(wave * u.AA))
    red = Spectrum(
        flux=fnu,
        spectral_axis=wave * u.AA,
        uncertainty=InverseVariance(np.ones(wave.size) / fnu.value**2 * u.Jy**-2),
        mask=np.zeros(wave.size, bool),
        meta={},
    )
    both = combine_arms([blue, red])
    np.testing.assert_allclose(both.flux.to_value(FLAM), 1.0)
    np.testing.assert_allclose(both.uncertainty.array, 2.0)


def test_finer_arm_is_kept_in_the_overlap_and_a_line_survives():
    def line(w):
        return 1.0 + 1e-3 * (w - 4000.0)

    coarse = arm(4000.0, 4300.0, 2.0, line, ivar=1.0)
    fine = arm(4200.0, 4500.0, 0.5, line, ivar=1.0)
    both = combine_arms([coarse, fine])
    wave = both.spectral_axis.to_value(u.AA)
    assert np.all(np.diff(wave) > 0)
    np.testing.assert_allclose(np.diff(wave)[wave[1:] > 4201.0], 0.5)  # the fine arm's pixels
    np.testing.assert_allclose(wave[wave > 4200.0], np.arange(4200.5, 4500.0, 0.5))
    # flux conserving: each pixel is the mean of the line over its bin (at the junction
    # the bin is not centred on the pixel)
    from specutils_deepclean.resample import bin_edges

    edges = bin_edges(wave)
    expected = line(0.5 * (edges[1:] + edges[:-1]))
    assert not both.mask.any()
    np.testing.assert_allclose(both.flux.to_value(FLAM), expected, rtol=1e-12)
    junction = np.abs(0.5 * (edges[1:] + edges[:-1]) - wave) > 1e-9
    assert junction.sum() == 1 and 4199 < wave[junction][0] < 4201


def test_a_gap_between_arms_is_filled_with_masked_pixels():
    blue = arm(4950.0, 5350.0, 1.0, 1.0, ivar=1.0)
    red = arm(6300.0, 6800.0, 1.0, 2.0, ivar=1.0)
    both = combine_arms([blue, red])
    wave = both.spectral_axis.to_value(u.AA)
    gap = (wave > 5349.5) & (wave < 6299.5)
    assert gap.sum() == 950 and both.mask[gap].all() and np.isnan(both.flux.value[gap]).all()
    np.testing.assert_allclose(np.diff(wave), 1.0)
    assert not both.mask[~gap].any()


def test_batches_combine_row_by_row():
    rng = np.random.default_rng(3)
    blue_flux, red_flux = rng.normal(5, 1, (3, 100)), rng.normal(5, 1, (3, 120))
    blue_ivar, red_ivar = rng.uniform(1, 4, (3, 100)), rng.uniform(1, 4, (3, 120))
    batch = combine_arms(
        [
            arm(4000.0, 4100.0, 1.0, blue_flux, ivar=blue_ivar, meta={"medium": "air"}),
            arm(4080.0, 4200.0, 1.0, red_flux, ivar=red_ivar, meta={"medium": "air"}),
        ]
    )
    assert batch.shape == (3, 200) and batch.meta["medium"] == "air"
    for row in range(3):
        one = combine_arms(
            [
                arm(4000.0, 4100.0, 1.0, blue_flux[row], ivar=blue_ivar[row], meta={}),
                arm(4080.0, 4200.0, 1.0, red_flux[row], ivar=red_ivar[row], meta={}),
            ]
        )
        np.testing.assert_allclose(batch.flux.value[row], one.flux.value, rtol=1e-12)
        np.testing.assert_allclose(batch.uncertainty.array[row], one.uncertainty.array)


def test_meta_keeps_what_the_arms_share_and_each_arms_own():
    header = fits.Header({"TELESCOP": "SDSS 2.5-M", "OBJECT": "x"})
    blue = arm(4000.0, 4100.0, 1.0, 1.0, ivar=1.0, meta={"header": header, "band": "b"})
    red = arm(4080.0, 4200.0, 1.0, 1.0, ivar=1.0, meta={"band": "r"})
    both = combine_arms([blue, red])
    assert both.meta["header"]["OBJECT"] == "x" and "band" not in both.meta
    assert [a["meta"]["band"] for a in both.meta["arms"]] == ["b", "r"]
    assert both.meta["medium"] == "vacuum"  # SDSS: vacuum, from the first arm's header
    assert blue.meta == {"header": header, "band": "b"}  # inputs untouched


@pytest.mark.parametrize(
    ("arms", "error", "match"),
    [
        (lambda: "b", TypeError, "list"),
        (lambda: [], ValueError, "empty"),
        (lambda: [arm(4000.0, 4100.0, 1.0, 1.0), np.ones(3)], TypeError, r"arms\[1\] is a ndarray"),
        (
            lambda: [arm(4000.0, 4100.0, 1.0, 1.0, ivar=1.0), arm(4080.0, 4200.0, 1.0, 1.0)],
            ValueError,
            "no uncertainty",
        ),
        (
            lambda: [
                arm(4000.0, 4100.0, 1.0, 1.0, meta={"medium": "air"}),
                arm(4080.0, 4200.0, 1.0, 1.0),
            ],
            ValueError,
            "different media",
        ),
        (
            lambda: [
                arm(4000.0, 4100.0, 1.0, np.ones((2, 100))),
                arm(4080.0, 4200.0, 1.0, np.ones((3, 120))),
            ],
            ValueError,
            "batch shapes",
        ),
        (
            lambda: [arm(4000.0, 4100.0, 1.0, 1.0), arm(4080.0, 4200.0, 1.0, 1.0, unit=u.s)],
            u.UnitsError,
            "cannot be converted",
        ),
        (  # a dimensionless arm is named (its unit printed as an empty string)
            lambda: [
                arm(4000.0, 4100.0, 1.0, 1.0, unit=u.one),
                arm(4080.0, 4200.0, 1.0, 1.0, unit=u.s),
            ],
            u.UnitsError,
            r"flux units Unit\(\"s\"\) and Unit\(dimensionless\) cannot",
        ),
    ],
)
def test_combine_arms_refuses_bad_input(arms, error, match):
    with pytest.raises(error, match=match):
        combine_arms(arms())


def test_combine_arms_without_uncertainties_takes_the_mean():
    both = combine_arms([arm(4000.0, 4100.0, 1.0, 1.0), arm(4080.0, 4200.0, 1.0, 3.0)])
    assert both.uncertainty is None
    wave = both.spectral_axis.to_value(u.AA)
    np.testing.assert_allclose(both.flux.value[(wave >= 4080) & (wave < 4100)], 2.0)


def test_list_kind():
    blue, red = arm(3600.0, 5800.0, 0.8, 1.0), arm(5760.0, 7620.0, 0.8, 1.0)
    assert list_kind(SpectrumList([blue, red])) == "arms"
    assert list_kind([blue, blue, blue]) == "exposures"
    assert list_kind([blue]) == "exposures"
    with pytest.raises(ValueError, match="mixes spectra of different ranges"):
        list_kind([blue, blue, red])


def test_resolve_input_for_the_cleaning_functions():
    blue, red = arm(4000.0, 4100.0, 1.0, 1.0, ivar=1.0), arm(4080.0, 4200.0, 1.0, 1.0, ivar=1.0)
    combined = resolve_input(SpectrumList([blue, red]), "remove_tellurics", exposures=False)
    assert isinstance(combined, Spectrum) and combined.spectral_axis.size == 200
    assert resolve_input([blue], "remove_tellurics", exposures=False) is blue
    assert resolve_input([blue, blue], "denoise", exposures=True) == [blue, blue]
    with pytest.raises(ValueError, match="holds 2 spectra covering the same range"):
        resolve_input([blue, blue], "remove_tellurics", exposures=False)
    with pytest.raises(TypeError, match="got int"):
        resolve_input(3, "remove_tellurics", exposures=False)


def test_survey_formats_state_vacuum():
    assert survey_medium({"header": fits.Header({"TELESCOP": "LAMOST"})}) == "vacuum"
    assert survey_medium({"header": fits.Header({"TELESCOP": "SDSS 2.5-M"})}) == "vacuum"
    assert survey_medium({"header": fits.Header({"TELESCOP": "VLT"})}) is None
    # what specutils' DESI reader puts in an arm's meta (the r and z arms carry no header)
    desi_arm = {"band": "r", "int_mask": np.zeros((1, 3)), "resolution_data": np.zeros((1, 11, 3))}
    assert survey_medium(desi_arm) == "vacuum" and _stated_medium(desi_arm) == "vacuum"
    # an explicit statement wins over the format
    air = {"header": fits.Header({"TELESCOP": "SDSS 2.5-M", "WAVEMED": "air"})}
    assert _stated_medium(air) == "air"


def test_a_desi_like_arm_alone_needs_no_medium():
    """Today's main warns 'medium unknown, assuming air' for a DESI r arm."""
    from specutils_deepclean.spectra import ModelGrid, to_model_grid

    meta = {"band": "r", "int_mask": np.zeros((2, 50)), "resolution_data": np.zeros((2, 11, 50))}
    spec = arm(5760.0, 5800.0, 0.8, np.ones((2, 50)), ivar=1.0, meta=meta)
    grid = ModelGrid(np.linspace(5700, 5900, 100) * u.AA, "air")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gs = to_model_grid(spec, grid)
    assert gs.medium == "vacuum"


@pytest.fixture(scope="module")
def example_arms():
    """A shipped example star cut into two overlapping arms, with noise and an uncertainty."""
    from specutils_deepclean.datasets import load_examples

    library = load_examples()
    wave = library.wavelength.to_value(u.AA)
    truth = library.flux[0] / np.nanmedian(library.flux[0])
    sigma = 0.02 * np.ones_like(truth)
    flux = truth + sigma * np.random.default_rng(5).normal(size=truth.shape)
    arms = []
    for lo, hi in ((wave[0], 5600.0), (5500.0, wave[-1] + 1)):
        cut = (wave >= lo) & (wave < hi)
        arms.append(
            Spectrum(
                flux=flux[cut] * FLAM,
                spectral_axis=wave[cut] * u.AA,
                uncertainty=StdDevUncertainty(sigma[cut] * FLAM),
                mask=~np.isfinite(flux[cut]),
                meta={"medium": library.medium},
            )
        )
    return SpectrumList(arms)


@pytest.mark.parametrize("task", ["remove_tellurics", "denoise"])
def test_cleaning_functions_combine_a_list_of_arms(example_arms, task):
    """A list of arms gives the result of the combined spectrum (before, denoise took
    the arms for exposures of one star and remove_tellurics refused the list)."""
    pytest.importorskip("torch")
    from specutils_deepclean import denoise, remove_tellurics
    from specutils_deepclean.manipulation import ConvergenceWarning

    function, options = {
        "remove_tellurics": (remove_tellurics, {"device": "cpu"}),
        "denoise": (denoise, {"device": "cpu", "steps": 2, "n_starts": 1}),
    }[task]
    combined = combine_arms(example_arms)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # two Newton steps keep the test fast; that they may not converge is not its point
        warnings.simplefilter("ignore", ConvergenceWarning)
        from_list = function(example_arms, **options)
        direct = function(combined, **options)
    assert from_list.spectral_axis.size == combined.spectral_axis.size == 4300
    np.testing.assert_array_equal(from_list.flux, direct.flux)
    np.testing.assert_array_equal(from_list.mask, direct.mask)
    assert from_list.meta["deepclean"]["medium"] == "air"


def write_lamost(path, layout, wave, flux, ivar, and_mask):
    """A file in the LAMOST LRS layout (as documented by LAMOST; no real file is at hand)."""
    header = fits.Header({"TELESCOP": "LAMOST", "OBSID": 123})
    if layout == "image":
        rows = np.stack([flux, ivar, wave, and_mask, np.zeros_like(flux)]).astype(np.float32)
        fits.HDUList([fits.PrimaryHDU(rows, header=header)]).writeto(path)
        return
    columns = [
        fits.Column(name=name, format=f"{wave.size}E", array=values[None])
        for name, values in (
            ("FLUX", flux), ("IVAR", ivar), ("WAVELENGTH", wave),
            ("ANDMASK", and_mask), ("ORMASK", np.zeros_like(flux)),
        )
    ]
    fits.HDUList(
        [fits.PrimaryHDU(header=header), fits.BinTableHDU.from_columns(columns)]
    ).writeto(path)


@pytest.mark.parametrize("layout", ["image", "table"])
def test_lamost_files_are_read_in_vacuum(tmp_path, layout):
    from specutils_deepclean.files import read_targets
    from specutils_deepclean.surveys import is_lamost, read_lamost

    wave = np.linspace(3700.0, 9000.0, 300)
    flux = 1 + 0.1 * np.sin(wave / 50)
    ivar = np.full(wave.size, 100.0)
    ivar[10] = 0.0
    and_mask = np.zeros(wave.size)
    and_mask[20] = 4
    path = tmp_path / "spec-55859-F5902_sp01-001.fits"
    write_lamost(path, layout, wave, flux, ivar, and_mask)
    assert is_lamost(path)
    spectrum = read_lamost(path)
    np.testing.assert_allclose(spectrum.spectral_axis.value, wave, rtol=1e-6)
    np.testing.assert_allclose(spectrum.flux.value, flux, rtol=1e-6)
    assert isinstance(spectrum.uncertainty, InverseVariance)
    assert np.flatnonzero(spectrum.mask).tolist() == [10, 20]
    assert _stated_medium(spectrum.meta) == "vacuum"
    targets, skipped = read_targets(path)  # recognised without a format
    assert [name for name, _ in targets] == [None] and skipped == {}
    np.testing.assert_array_equal(targets[0][1].flux, spectrum.flux)
    other = tmp_path / "other.fits"
    fits.HDUList([fits.PrimaryHDU(np.ones((5, 3)))]).writeto(other)
    assert not is_lamost(other)
    with pytest.raises(ValueError, match="not a LAMOST LRS file"):
        read_lamost(other)
