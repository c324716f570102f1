"""remove_tellurics: the specutils contract, both modes, on a tiny trained model."""

import copy
import warnings

import astropy.units as u
import numpy as np
import pytest
import specutils.manipulation
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from specutils import Spectrum

import specutils_deepclean  # noqa: F401  (registers the functions)
from specutils_deepclean.manipulation import COLUMN_FACTOR, remove_tellurics

torch = pytest.importorskip("torch")

WAVE = np.linspace(6800.0, 7030.0, 256)
BAND = (WAVE > 6880) & (WAVE < 6920)


def star(rng, n):
    """Smooth continua with two stellar lines at random depths."""
    slope = rng.uniform(-0.2, 0.2, size=(n, 1))
    x = (WAVE - WAVE.mean()) / np.ptp(WAVE)
    flux = 1 + slope * x
    for centre in (6850.0, 6990.0):
        depth = rng.uniform(0.1, 0.4, size=(n, 1))
        flux = flux * (1 - depth * np.exp(-0.5 * ((WAVE - centre) / 2.0) ** 2))
    return flux


def tellurics(depth):
    return 1 - depth * np.exp(-0.5 * ((WAVE - 6900.0) / 4.0) ** 2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from specutils_deepclean.io.models import save_model
    from specutils_deepclean.training import train_karaoke

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    flux = star(rng, 64) * tellurics(0.3) + 0.01 * rng.normal(size=(64, WAVE.size))
    net = train_karaoke(
        flux,
        wavelength=WAVE * u.AA,
        medium="air",
        epochs=3,
        batch_size=16,
        latent_dim=4,
        progress=False,
        model_options={"base_channels": 4, "bottleneck_length": 16},
    )
    net.extra = {**net.extra, "telluric_lines": tellurics(0.3).astype(np.float32)}
    path = tmp_path_factory.mktemp("model") / "tiny.asdf"
    save_model(net, path)
    return path


def make_spectrum(rng, n=None, uncertainty=StdDevUncertainty, **kwargs):
    shape = (WAVE.size,) if n is None else (n, WAVE.size)
    flux = (star(rng, 1 if n is None else n) * tellurics(0.2)).reshape(shape)
    flux = flux + 0.01 * rng.normal(size=shape)
    unc = None
    if uncertainty is StdDevUncertainty:
        unc = StdDevUncertainty(np.full(shape, 0.01))
    elif uncertainty is VarianceUncertainty:
        unc = VarianceUncertainty(np.full(shape, 1e-4))
    elif uncertainty is InverseVariance:
        unc = InverseVariance(np.full(shape, 1e4))
    kwargs.setdefault("meta", {"medium": "air", "source": "test"})
    return Spectrum(
        flux=flux * u.erg / u.s / u.cm**2 / u.AA,
        spectral_axis=WAVE * u.AA,
        uncertainty=unc,
        **kwargs,
    )


@pytest.mark.parametrize(
    "uncertainty", [StdDevUncertainty, VarianceUncertainty, InverseVariance, None]
)
def test_divide_leaves_pixels_outside_the_bands_untouched(model, uncertainty):
    spec = make_spectrum(np.random.default_rng(2), uncertainty=uncertainty)
    out = remove_tellurics(spec, model, mode="divide", device="cpu")
    factor = out.meta["deepclean"]["transmission"].flux.value
    outside = factor == 1.0
    assert outside.sum() > 150 and (~outside).sum() > 10
    assert not np.any(factor[~outside & ~out.mask] > 1.0)
    np.testing.assert_array_equal(out.flux.value[outside], spec.flux.value[outside])
    # Far from the band nothing changes; inside it the flux goes up (T <= 1).
    assert np.all(outside[np.abs(WAVE - 6900) > 40])
    assert np.all(out.flux.value[~outside & ~out.mask] >= spec.flux.value[~outside & ~out.mask])
    if uncertainty is None:
        assert out.uncertainty is None
    else:
        assert type(out.uncertainty) is uncertainty
        np.testing.assert_array_equal(
            out.uncertainty.array[outside], spec.uncertainty.array[outside]
        )


def test_divide_corrects_the_band(model):
    rng = np.random.default_rng(3)
    clean = star(rng, 1)[0]
    spec = Spectrum(
        flux=clean * tellurics(0.3) * u.one, spectral_axis=WAVE * u.AA, meta={"medium": "air"}
    )
    out = remove_tellurics(spec, model, device="cpu", smooth_pixels=0)
    in_band = BAND & ~out.mask
    before = np.abs(spec.flux.value - clean)[in_band].mean()
    after = np.abs(out.flux.value - clean)[in_band].mean()
    assert after < 0.5 * before


C_KMS = 299792.458


def lined_star(velocity, lines):
    """A sloped continuum with Gaussian lines ``(centre, depth)`` at ``velocity``."""
    flux = 1 + 0.1 * (WAVE - WAVE.mean()) / np.ptp(WAVE)
    for centre, depth in lines:
        centre = centre * (1 + velocity / C_KMS)
        flux = flux * (1 - depth * np.exp(-0.5 * ((WAVE - centre) / 1.5) ** 2))
    return flux


# lines outside the telluric region (to measure the shift by) and one inside it
CLEAR_LINES = [(6815, 0.3), (6835, 0.4), (6852, 0.25), (6960, 0.4), (6985, 0.3), (7010, 0.35)]
BAND_LINE = (6905.0, 0.4)


def with_reconstruction(model, reconstruction):
    """The tiny model, its reconstruction replaced by a given (rest-frame) star."""
    from specutils_deepclean.io.models import load_model

    net = load_model(model)
    net.reconstruct = lambda flux, missing, batch_size=256: np.broadcast_to(
        reconstruction, np.shape(flux)
    ).copy()
    return net


@pytest.mark.parametrize("velocity", [-120.0, 90.0])
def test_divide_moves_the_reconstruction_to_the_star(model, velocity):
    """The network draws the star near rest: divided unmoved, the line of a star at
    ``velocity`` inside the band would enter T; moved, T is the atmosphere's."""
    lines = CLEAR_LINES + [BAND_LINE]
    observed = lined_star(velocity, lines) * tellurics(0.2)
    spec = Spectrum(flux=observed * u.one, spectral_axis=WAVE * u.AA, meta={"medium": "air"})
    net = with_reconstruction(model, lined_star(0.0, lines))
    out = remove_tellurics(spec, net, device="cpu", smooth_pixels=0, max_column=None)
    info = out.meta["deepclean"]
    assert abs(info["stellar_model_shift"] - velocity) < 5.0
    t = info["transmission"].flux.value
    line = np.abs(WAVE - BAND_LINE[0] * (1 + velocity / C_KMS)) < 4.0
    # unmoved, the ratio there is off by tens of per cent; moved, what is left is
    # the linear interpolation of a 1.5 A line on 0.9 A pixels
    unmoved = np.abs(observed / lined_star(0.0, lines) - tellurics(0.2))[line].max()
    moved = np.abs(t - tellurics(0.2))[line].max()
    assert unmoved > 0.1 and moved < 0.04 and moved < 0.25 * unmoved
    # reconstruct returns the network's output as it is
    rec = remove_tellurics(spec, net, mode="reconstruct", device="cpu")
    np.testing.assert_allclose(rec.flux.value, lined_star(0.0, lines) * np.median(observed),
                               rtol=1e-6)
    assert "stellar_model_shift" not in rec.meta["deepclean"]


def test_divide_transmission_no_deeper_than_the_atmosphere(model):
    """A stellar line the reconstruction lacks, where the atmosphere's lines are weak:
    T stays above the reference line transmission to the power ``max_column``."""
    weak = (6910.0, 0.3)  # reference line transmission 0.987 there
    observed = lined_star(0.0, CLEAR_LINES + [weak]) * tellurics(0.2)
    spec = Spectrum(flux=observed * u.one, spectral_axis=WAVE * u.AA, meta={"medium": "air"})
    net = with_reconstruction(model, lined_star(0.0, CLEAR_LINES))
    near = np.abs(WAVE - weak[0]) < 3.0
    free = remove_tellurics(spec, net, device="cpu", smooth_pixels=0, max_column=None,
                            column_factor=None)
    deepest = np.nanmin(free.meta["deepclean"]["transmission"].flux.value[near])
    assert deepest < 0.85
    for max_column in (1.0, 3.0):
        out = remove_tellurics(spec, net, device="cpu", smooth_pixels=0, max_column=max_column,
                               column_factor=None)
        t = out.meta["deepclean"]["transmission"].flux.value
        assert out.meta["deepclean"]["max_column"] == max_column
        assert np.all(t >= tellurics(0.3) ** max_column - 1e-6)  # float32 reference
        assert np.nanmin(t[near]) > deepest + 0.05


def test_divide_transmission_within_the_fitted_column(model):
    """The same missing stellar line: with the column bounds (the default) T follows
    the atmosphere at the column fitted over the band, not the stellar line, and the
    column is in the meta; where the fitted column is zero, T is exactly 1."""
    weak = (6910.0, 0.3)
    observed = lined_star(0.0, CLEAR_LINES + [weak]) * tellurics(0.2)
    spec = Spectrum(flux=observed * u.one, spectral_axis=WAVE * u.AA, meta={"medium": "air"})
    net = with_reconstruction(model, lined_star(0.0, CLEAR_LINES))
    near = np.abs(WAVE - weak[0]) < 3.0
    out = remove_tellurics(spec, net, device="cpu", smooth_pixels=0)
    info = out.meta["deepclean"]
    t = info["transmission"].flux.value
    reference = tellurics(0.3)
    # the band is O2 B: the true column is ln(0.8)/ln(0.7) = 0.63-0.67 of the
    # reference's (the ratio varies across the line); the missing line and the
    # noiseless fit's rejections pull it a little lower
    factor = info["column_factor"]
    assert factor == COLUMN_FACTOR and 0.55 < info["columns"]["O2"] < 0.75
    column = info["columns"]["O2"]
    assert np.all(t >= reference ** (factor * column) - 1e-6)
    changed = t < 1  # the telluric region
    assert changed[near].all() and np.all((t <= reference ** (column / factor) + 1e-6)[changed])
    assert np.max(np.abs(t - tellurics(0.2))[near]) < 0.02
    # no atmosphere in the observation: column 0, T = 1 everywhere
    clear = Spectrum(flux=lined_star(0.0, CLEAR_LINES) * u.one, spectral_axis=WAVE * u.AA,
                     meta={"medium": "air"})
    out = remove_tellurics(clear, net, device="cpu", smooth_pixels=0)
    assert out.meta["deepclean"]["columns"]["O2"] == 0.0
    np.testing.assert_array_equal(out.meta["deepclean"]["transmission"].flux.value, 1.0)
    with pytest.raises(ValueError, match="column_factor"):
        remove_tellurics(spec, net, device="cpu", column_factor=0.5)


@pytest.mark.parametrize("mode", ["divide", "reconstruct"])
def test_contract(model, mode):
    rng = np.random.default_rng(4)
    spec = make_spectrum(rng, mask=np.zeros(WAVE.size, dtype=bool))
    spec.mask[10:20] = True
    before = copy.deepcopy((spec.flux, spec.uncertainty.array, spec.mask, spec.meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = remove_tellurics(spec, model, mode=mode, device="cpu")
    assert type(out) is Spectrum and out is not spec
    assert out.spectral_axis is spec.spectral_axis or np.all(
        out.spectral_axis == spec.spectral_axis
    )
    assert out.flux.unit == spec.flux.unit and out.shape == spec.shape
    assert out.mask.dtype == bool and out.mask[10:20].all()
    assert out.meta["source"] == "test"
    info = out.meta["deepclean"]
    assert info["mode"] == mode and info["model"] == "KaraokeVAE"
    assert info["operation"] == "remove_tellurics"
    # The input is never modified.
    np.testing.assert_array_equal(spec.flux, before[0])
    np.testing.assert_array_equal(spec.uncertainty.array, before[1])
    np.testing.assert_array_equal(spec.mask, before[2])
    assert spec.meta == before[3] and "deepclean" not in spec.meta


def test_reconstruct_mode_returns_the_reconstruction(model):
    spec = make_spectrum(np.random.default_rng(5))
    out = remove_tellurics(spec, model, mode="reconstruct", device="cpu")
    assert np.all(np.isfinite(out.flux.value[~out.mask]))
    assert np.all(out.uncertainty.array[~out.mask] > 0)
    # A reconstruction is smoother than the noisy input.
    assert np.std(np.diff(out.flux.value[~out.mask])) < np.std(np.diff(spec.flux.value))


def test_batch_equals_loop(model):
    spec = make_spectrum(np.random.default_rng(6), n=3)
    batch = remove_tellurics(spec, model, device="cpu")
    for row in range(3):
        single = Spectrum(
            flux=spec.flux[row],
            spectral_axis=spec.spectral_axis,
            uncertainty=StdDevUncertainty(spec.uncertainty.array[row]),
            meta={"medium": "air"},
        )
        one = remove_tellurics(single, model, device="cpu")
        np.testing.assert_allclose(batch.flux.value[row], one.flux.value, rtol=1e-5)
    assert batch.meta["deepclean"]["transmission"].shape == spec.shape


def test_accessor_and_specutils_namespace(model):
    spec = make_spectrum(np.random.default_rng(7))
    direct = remove_tellurics(spec, model, device="cpu")
    via_accessor = spec.deepclean.remove_tellurics(model, device="cpu")
    np.testing.assert_array_equal(direct.flux, via_accessor.flux)
    assert specutils.manipulation.remove_tellurics is remove_tellurics


def test_spectrum1d_input(model):
    from specutils import Spectrum1D

    spec = make_spectrum(np.random.default_rng(8))
    with pytest.warns(AstropyDeprecationWarning):
        old = Spectrum1D(flux=spec.flux, spectral_axis=spec.spectral_axis, meta={"medium": "air"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = remove_tellurics(old, model, device="cpu")
    assert type(out) is Spectrum


def test_partial_overlap_masks_uncovered_pixels(model):
    wave = np.linspace(6700.0, 6950.0, 300)
    spec = Spectrum(flux=np.ones(300) * u.one, spectral_axis=wave * u.AA, meta={"medium": "air"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        out = remove_tellurics(spec, model, device="cpu")
    assert out.mask[wave < 6790].all()
    np.testing.assert_array_equal(out.flux.value[wave < 6790], 1.0)  # kept, but masked


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "subtract"}, ValueError, "mode must be one of"),
        ({"device": "tpu"}, ValueError, "device must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"max_column": 0.0}, ValueError, "max_column must be positive"),
        ({"smooth_pixels": float("nan")}, ValueError, "smooth_pixels must be a finite"),
        ({"smooth_pixels": -1.0}, ValueError, "smooth_pixels must be a finite"),
        ({"smooth_pixels": 1e9}, ValueError, r"at most \d+ \(the model's pixels\)"),
        ({"smooth_pixels": "1"}, ValueError, "smooth_pixels must be a finite"),
        ({"region_threshold": 2.0}, ValueError, r"region_threshold must be in \(0, 1\]"),
        ({"region_threshold": float("nan")}, ValueError, "region_threshold must be in"),
        ({"region_threshold": 0.0}, ValueError, "region_threshold must be in"),
    ],
)
def test_bad_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        remove_tellurics(make_spectrum(np.random.default_rng(9)), model, **kwargs)


def test_bad_inputs(model, tmp_path):
    with pytest.raises(TypeError, match="spectrum must be a specutils Spectrum"):
        remove_tellurics(np.ones(10), model)
    spec = make_spectrum(np.random.default_rng(9))
    # not a model, name or path (was an AttributeError on .device)
    for bad in (3, spec):
        with pytest.raises(TypeError, match=f"KaraokeVAE .*, got {type(bad).__name__}"):
            remove_tellurics(spec, bad)
    far = Spectrum(
        flux=np.ones(10) * u.one,
        spectral_axis=np.linspace(9000, 9100, 10) * u.AA,
        meta={"medium": "air"},
    )
    with pytest.raises(ValueError, match="no overlap"):
        remove_tellurics(far, model, device="cpu")
    from specutils_deepclean.io.models import load_model

    pca = load_model("miles-pca")
    with pytest.raises(TypeError, match="model must be a KaraokeVAE"):
        remove_tellurics(make_spectrum(np.random.default_rng(10)), pca, device="cpu")


def test_coarse_sampling_warns(model):
    wave = np.linspace(6800.0, 7030.0, 40)
    spec = Spectrum(flux=np.ones(40) * u.one, spectral_axis=wave * u.AA, meta={"medium": "air"})
    with pytest.warns(AstropyUserWarning, match="times the model's"):
        remove_tellurics(spec, model, device="cpu")
