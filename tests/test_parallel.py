"""Survey runs: batches, failures reported not fatal, resume, Dask workers."""

import sys

import numpy as np
import pytest
from specutils import Spectrum

from specutils_deepclean.files import read_result, read_spectrum
from specutils_deepclean.manipulation import TRANSMISSION_FLOOR, denoise, remove_tellurics
from specutils_deepclean.parallel import RunSummary, clean_files, clean_spectra

from survey_files import write_survey

torch = pytest.importorskip("torch")


def test_clean_files_reports_bad_input_and_resumes(survey, tmp_path):
    paths, bad = survey
    out = tmp_path / "out"
    summary = clean_files([str(tmp_path / "in" / "*.fits")], out, "detelluric", batch_size=3)
    assert sorted(summary.done) == paths and list(summary.failed) == [bad]
    assert "cannot read" in summary.failed[bad] and not summary.ok
    assert "failed 1" in str(summary) and str(bad) in str(summary)
    written = sorted(out.glob("*.fits"))
    assert [p.name for p in written] == [f"star{i:03d}_detelluric.fits" for i in range(4)]
    # The batched (stacked) call gives what one call per spectrum gives, to float32
    # rounding (a batch and a single spectrum take different BLAS paths): the same
    # mask except where T lies at the floor within that rounding.
    single = remove_tellurics(read_spectrum(paths[2]))
    back = read_result(out / "star002_detelluric.fits")
    t_back = back.meta["deepclean"]["transmission"].flux.value
    t_single = single.meta["deepclean"]["transmission"].flux.value
    np.testing.assert_allclose(t_back, t_single, rtol=1e-4, atol=1e-6)
    at_floor = np.abs(t_single - TRANSMISSION_FLOOR) < 1e-4
    np.testing.assert_array_equal(back.mask[~at_floor], single.mask[~at_floor])
    both = ~back.mask & ~single.mask
    np.testing.assert_allclose(back.flux.value[both], single.flux.value[both], rtol=1e-4)
    assert back.meta["header"]["OBJECT"] == "star2"  # each file keeps its own header
    # A rerun does only what is missing: the bad file again, nothing else.
    (out / "star001_detelluric.fits").unlink()
    again = clean_files([str(tmp_path / "in" / "*.fits")], out, "detelluric")
    assert again.done == [paths[1]] and len(again.skipped) == 3 and list(again.failed) == [bad]


def test_one_bad_spectrum_does_not_spoil_its_batch(tmp_path):
    spectra = [read_spectrum(p) for p in write_survey(tmp_path, 3)]
    spectra[1] = Spectrum(
        flux=np.full(spectra[1].shape, np.nan) * spectra[1].flux.unit,
        spectral_axis=spectra[1].spectral_axis,
        meta=spectra[1].meta,
    )
    results, failures = clean_spectra(spectra, "denoise", options={"steps": 3, "n_starts": 1})
    assert list(failures) == [1] and "valid" in failures[1]
    assert results[1] is None and all(isinstance(r, Spectrum) for r in (results[0], results[2]))
    # results own their meta: changing one never reaches the input
    results[0].meta["header"]["OBJECT"] = "changed"
    assert spectra[0].meta["header"]["OBJECT"] == "star0" and "deepclean" not in spectra[0].meta
    alone = denoise(spectra[2], steps=3, n_starts=1)
    np.testing.assert_allclose(results[2].flux.value, alone.flux.value, rtol=1e-4)
    assert results[2].meta["deepclean"]["map_class"] == alone.meta["deepclean"]["map_class"]


def test_settings_are_checked_before_work(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        clean_files([], tmp_path, "sharpen")
    with pytest.raises(ValueError, match="batch_size"):
        clean_files([], tmp_path, batch_size=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError):
        clean_files([str(blocker)], blocker / "out")


def test_run_summary_text():
    summary = RunSummary(done=["a"], failed={"b": "broken"}, warnings=["w"], seconds=2.0)
    text = str(summary)
    assert "done 1" in text and "0.50 spectra/s" in text and "b: broken" in text
    assert "warning: w" in text and not summary.ok


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dask_workers_finish_and_report(survey, tmp_path):
    pytest.importorskip("distributed")
    paths, bad = survey
    summary = clean_files(
        [str(p) for p in [*paths, bad]], tmp_path / "out", "detelluric", batch_size=2, workers=2
    )
    assert sorted(summary.done) == paths and list(summary.failed) == [bad]
    local = clean_files([str(paths[0])], tmp_path / "local", "detelluric")
    assert local.done == [paths[0]]
    a = read_result(tmp_path / "out" / "star000_detelluric.fits")
    b = read_result(tmp_path / "local" / "star000_detelluric.fits")
    # same numbers on a worker (float32 network: batch 2 there, 1 here)
    np.testing.assert_allclose(a.flux.value, b.flux.value, rtol=1e-5)


def _has_loaded_models():
    from specutils_deepclean import manipulation

    return sorted(name for name, _ in manipulation._CACHE)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers forked on Linux")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_local_workers_start_with_the_model_loaded():
    """On Linux the local workers are forked after the model is loaded here: each one
    holds it before its first batch (spawned workers start with an empty cache)."""
    pytest.importorskip("distributed")
    from specutils_deepclean.parallel import _client

    client, cluster = _client(2, None, "detelluric", {"device": "cpu"})
    try:
        models = client.run(_has_loaded_models)
    finally:
        client.close()
        cluster.close()
    assert len(models) == 2  # (earlier calls here may have loaded other models too)
    assert all("karaoke-miles" in names for names in models.values())


def test_row_a_batch_call_masks_is_reported_as_failed(tmp_path):
    """A spectrum that covers too little of the model fails alone; in a stacked call denoise
    would only mask its row: the runner must still report it failed, with its own reason."""
    spectra = [read_spectrum(p) for p in write_survey(tmp_path, 3)]
    flux = spectra[1].flux.value.copy()
    flux[200:] = np.nan  # a few per cent of the model's range left
    spectra[1] = Spectrum(
        flux=flux * spectra[1].flux.unit,
        spectral_axis=spectra[1].spectral_axis,
        uncertainty=spectra[1].uncertainty,
        meta=spectra[1].meta,
    )
    with pytest.raises(ValueError, match="cover"):
        denoise(spectra[1], steps=3, n_starts=1)
    results, failures = clean_spectra(spectra, "denoise", options={"steps": 3, "n_starts": 1})
    assert list(failures) == [1] and "cover" in failures[1] and results[1] is None
    assert all(isinstance(results[i], Spectrum) for i in (0, 2))


def test_batched_results_keep_earlier_deepclean_entries(tmp_path):
    """Stacked or alone, a result keeps the input's earlier meta["deepclean"] entries."""
    detelluric = [remove_tellurics(read_spectrum(p)) for p in write_survey(tmp_path, 2)]
    # 6 steps: the fitted velocity's MAP runs one Newton ascent of at most ``steps``
    # (it ran two before the velocity was refined after the screening)
    results, failures = clean_spectra(detelluric, "denoise", options={"steps": 6, "n_starts": 1})
    alone = denoise(detelluric[0], steps=6, n_starts=1)
    assert not failures
    for result in results:
        assert set(alone.meta["deepclean"]) == set(result.meta["deepclean"])
        assert "transmission" in result.meta["deepclean"]
        assert result.meta["deepclean"]["operation"] == "denoise"


@pytest.mark.parametrize(
    "task, options, error, match",
    [
        ("detelluric", {"mode": "bogus"}, ValueError, "mode must be one of"),
        ("denoise", {"stepz": 3}, ValueError, "invalid options for denoise"),
        ("detelluric", {"model": "nosuch"}, ValueError, "unknown model name"),
        ("denoise", {"model": "nosuch.asdf"}, FileNotFoundError, "not found"),
        # these failed every input alike, one by one
        ("detelluric", {"device": "tpu"}, ValueError, "device must be"),
        ("denoise", {"model": "karaoke-miles"}, TypeError, "model must be a Denoiser"),
        ("denoise", {"model": "EMPTY"}, ValueError, "not an ASDF file"),
    ],
)
def test_bad_options_are_refused_before_work(survey, tmp_path, task, options, error, match):
    paths, _ = survey
    if options.get("model") == "EMPTY":
        options = {"model": tmp_path / "empty.asdf"}
        options["model"].touch()
    with pytest.raises(error, match=match):
        clean_files([str(p) for p in paths], tmp_path / "out", task, options=options)
    assert not (tmp_path / "out").exists()
    with pytest.raises(error, match=match):
        clean_spectra([read_spectrum(paths[0])], task, options=options)


@pytest.mark.parametrize("item", ["spectrum.fits", None], ids=["str", "None"])
def test_clean_spectra_refuses_what_is_not_a_spectrum(survey, item):
    """Before any work, naming the index: a str came back as its own failure text, and
    None as a result of None without a failure."""
    paths, _ = survey
    with pytest.raises(TypeError, match=rf"spectra\[1\] is a {type(item).__name__}, not a"):
        clean_spectra([read_spectrum(paths[0]), item], "detelluric")
