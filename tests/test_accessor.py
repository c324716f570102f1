"""The registration mechanism: specutils.manipulation names and the deepclean accessor."""

import subprocess
import sys
import warnings

import astropy.units as u
import numpy as np
import pytest
import specutils.manipulation
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from specutils import Spectrum

import specutils_deepclean
from specutils_deepclean import _accessor
from specutils_deepclean._accessor import DeepCleanAccessor, register_manipulation


@pytest.fixture
def clean_registry():
    """Register test functions, then remove them from every namespace they reached."""
    before = dict(_accessor._REGISTRY)
    yield
    for name in set(_accessor._REGISTRY) - set(before):
        func = _accessor._REGISTRY.pop(name)
        if getattr(specutils.manipulation, name, None) is func:
            delattr(specutils.manipulation, name)


def scale_flux(spectrum, factor=2.0, *, offset=0.0):
    """Return a new Spectrum with ``flux * factor + offset`` (a test function)."""
    return Spectrum(
        flux=spectrum.flux * factor + offset * spectrum.flux.unit,
        spectral_axis=spectrum.spectral_axis,
    )


def make_spectrum():
    return Spectrum(
        flux=np.arange(1.0, 5.0) * u.Jy, spectral_axis=np.arange(4) * u.AA + 5000 * u.AA
    )


def test_register_reaches_both_namespaces(clean_registry):
    assert register_manipulation(scale_flux) is scale_flux
    assert specutils.manipulation.scale_flux is scale_flux
    spec = make_spectrum()
    out = spec.deepclean.scale_flux(3.0, offset=1.0)
    np.testing.assert_array_equal(out.flux.value, spec.flux.value * 3.0 + 1.0)
    assert "scale_flux" in dir(spec.deepclean)
    assert "scale_flux" in specutils_deepclean.registered_manipulations()
    # The bound method keeps the function's documentation.
    assert spec.deepclean.scale_flux.__doc__ == scale_flux.__doc__


def test_register_as_decorator_with_name(clean_registry):
    @register_manipulation(name="triple_flux")
    def _triple(spectrum):
        return scale_flux(spectrum, 3.0)

    assert specutils.manipulation.triple_flux is _triple
    np.testing.assert_array_equal(make_spectrum().deepclean.triple_flux().flux.value, [3, 6, 9, 12])


def test_register_same_function_twice_is_a_no_op(clean_registry):
    register_manipulation(scale_flux)
    register_manipulation(scale_flux)
    assert specutils.manipulation.scale_flux is scale_flux


def test_specutils_name_clash_warns_and_keeps_specutils_function(clean_registry):
    def gaussian_smooth(spectrum):
        return scale_flux(spectrum, 5.0)

    original = specutils.manipulation.gaussian_smooth
    with pytest.warns(AstropyUserWarning, match="already has a 'gaussian_smooth'.*kept"):
        assert register_manipulation(gaussian_smooth) is gaussian_smooth
    assert specutils.manipulation.gaussian_smooth is original
    # The accessor still reaches ours.
    np.testing.assert_array_equal(
        make_spectrum().deepclean.gaussian_smooth().flux.value, [5, 10, 15, 20]
    )


def test_import_survives_specutils_gaining_denoise():
    """A specutils release with its own ``denoise`` must not break ``import``."""
    code = (
        "import warnings, specutils.manipulation\n"
        "def denoise(spectrum): return spectrum\n"
        "specutils.manipulation.denoise = denoise\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import specutils_deepclean\n"
        "from specutils import Spectrum\n"
        "assert specutils.manipulation.denoise is denoise\n"
        "assert Spectrum.deepclean.denoise is specutils_deepclean.denoise\n"
        "assert specutils.manipulation.remove_tellurics is specutils_deepclean.remove_tellurics\n"
        "assert any('already has a' in str(w.message) for w in caught), caught\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("func", "name", "error", "match"),
    [
        (42, None, TypeError, "needs a callable"),
        (scale_flux, "_hidden", ValueError, "public Python identifier"),
        (scale_flux, "not valid", ValueError, "public Python identifier"),
    ],
)
def test_bad_registrations(clean_registry, func, name, error, match):
    with pytest.raises(error, match=match):
        register_manipulation(func, name=name)


def test_unknown_accessor_name_lists_registered(clean_registry):
    register_manipulation(scale_flux)
    with pytest.raises(AttributeError, match=r"no deepclean manipulation named 'nope'.*scale_flux"):
        _ = make_spectrum().deepclean.nope


def test_accessor_on_class_and_instances(clean_registry):
    assert isinstance(Spectrum.deepclean, DeepCleanAccessor)
    register_manipulation(scale_flux)
    assert Spectrum.deepclean.scale_flux is scale_flux
    assert "scale_flux" in repr(make_spectrum().deepclean)


def test_accessor_on_deprecated_spectrum1d(clean_registry):
    from specutils import Spectrum1D

    register_manipulation(scale_flux)
    with pytest.warns(AstropyDeprecationWarning):
        old = Spectrum1D(flux=np.ones(3) * u.Jy, spectral_axis=[1, 2, 3] * u.um)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = old.deepclean.scale_flux(2.0)
    np.testing.assert_array_equal(out.flux.value, [2, 2, 2])


def test_import_does_not_load_torch():
    code = (
        "import sys, specutils_deepclean, specutils_deepclean.spectra, specutils_deepclean.metrics;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
