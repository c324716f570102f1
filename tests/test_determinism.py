"""Determinism and thread safety of `remove_tellurics` and `denoise` on the CPU.

Same input and model: bitwise-identical results across calls, across a
save -> load round trip of the model, and when two threads share one loaded model
(`concurrent.futures.ThreadPoolExecutor`).  GPU results are reproducible only to
float32 rounding (see ``docs/reliability.rst``), so this module runs on the CPU.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.io.models import load_model, save_model
from specutils_deepclean.manipulation import denoise, remove_tellurics

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings(
    # The example M dwarf is flagged as unusual by the cheap denoise setting: a
    # diagnostic, not what is tested here.
    "ignore:spectra .* are flagged as unlike the model.s stars:astropy.utils.exceptions.AstropyUserWarning"
)


@pytest.fixture(scope="module")
def spectra():
    """The eight example stars, one Spectrum each."""
    library = load_examples()
    return [library.to_spectrum(row) for row in range(len(library))]


NAMES = {"tellurics": "karaoke-miles", "denoise": "denoiser-miles"}


@pytest.fixture(scope="module")
def models():
    return {task: load_model(name) for task, name in NAMES.items()}


def clean(task: str, spectrum, model):
    if task == "tellurics":
        return remove_tellurics(spectrum, model, device="cpu")
    return denoise(spectrum, model, device="cpu", steps=5, n_starts=1)


def assert_identical(a, b):
    """Bitwise-equal flux, mask, uncertainty and transmission (NaN where NaN)."""
    pairs = [(a.flux.value, b.flux.value), (a.mask, b.mask)]
    if a.uncertainty is not None or b.uncertainty is not None:
        pairs.append((a.uncertainty.array, b.uncertainty.array))
    if "transmission" in a.meta["deepclean"]:
        pairs.append(
            (a.meta["deepclean"]["transmission"].flux, b.meta["deepclean"]["transmission"].flux)
        )
    for x, y in pairs:
        np.testing.assert_array_equal(x, y, strict=True)


@pytest.mark.parametrize("task", ["tellurics", "denoise"])
def test_two_calls_are_identical(spectra, models, task):
    first = clean(task, spectra[3], models[task])
    assert_identical(first, clean(task, spectra[3], models[task]))
    # ...and the same as through the cached shipped model, by name.
    assert_identical(first, clean(task, spectra[3], NAMES[task]))


@pytest.mark.parametrize("task", ["tellurics", "denoise"])
def test_save_load_round_trip_is_identical(spectra, models, task, tmp_path):
    loaded = load_model(save_model(models[task], tmp_path / "copy.asdf"))
    assert_identical(clean(task, spectra[3], models[task]), clean(task, spectra[3], loaded))


def test_threads_sharing_one_model_match_serial_calls(spectra, models):
    jobs = [(task, spectrum) for spectrum in spectra[:4] for task in ("tellurics", "denoise")]
    serial = [clean(task, spectrum, models[task]) for task, spectrum in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        # Twice over, so that calls of both tasks overlap on the shared models.
        futures = [pool.submit(clean, task, s, models[task]) for task, s in jobs + jobs]
        threaded = [future.result() for future in futures]
    for expected, a, b in zip(serial, threaded[: len(jobs)], threaded[len(jobs) :], strict=True):
        assert_identical(expected, a)
        assert_identical(expected, b)
    assert not any(model.training for model in models.values())
