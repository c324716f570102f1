"""``specutils-deepclean benchmark``: the protocols run end to end on tiny inputs."""

import json
from pathlib import Path

import pytest

from specutils_deepclean import cli

from data_needs import needs_miles

torch = pytest.importorskip("torch")


def test_benchmark_speed_single_process(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["benchmark", "speed", "--files", "6", "--workers", "0", "--batch-size", "4"]
    assert cli.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    single = result["single_process"]
    assert single["files_done"] == 6 and single["files_failed"] == 0
    assert single["files_per_second"] > 0 and single["peak_rss_mib"] > 50
    assert len(single["rss_trace"]["mib"]) >= 1 and "dask_0_workers" not in result


@needs_miles
def test_benchmark_denoise_smoke(tmp_path):
    out = tmp_path / "d.json"
    argv = ["benchmark", "denoise", "--split", "test", "--limit", "3", "--steps", "2",
            "--starts", "1", "--threads", "1", "--gaps", "2", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    gaps = result["gaps_snr10"]
    assert gaps["n_spectra"] == 2 and len(gaps["median_mse"]) == 10
    assert set(gaps["calibration_in_gap"]) == set(gaps["median_mse"]) - {"none"}
    assert all(0 <= c <= 1 for c in gaps["calibration_in_gap"].values())
    assert result["n_spectra"] == 3 and set(result["snr"]) == {"2", "5", "10", "20", "50"}
    assert 0 <= result["snr"]["10"]["win_rate"]["gaussian"] <= 1
    entry = result["snr"]["10"]
    assert len(result["classes"]) == 3 and len(entry["mse_per_spectrum"]["deepclean"]) == 3
    assert len(entry["der_snr_before"]) == len(entry["der_snr_after"]) == 3


def test_benchmark_unknown_protocol(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["benchmark", "sharpness"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@needs_miles
def test_benchmark_denoise_trains_the_cdae_baselines(tmp_path):
    out = tmp_path / "d.json"
    argv = ["benchmark", "denoise", "--split", "test", "--limit", "2", "--steps", "1",
            "--starts", "1", "--threads", "1", "--cdae-epochs", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    trained = result["baseline_settings"]["cdae"]
    assert set(trained) == {"cdae", "cdae_zero_impute"}
    assert all(len(entry["val_history"]) == 2 for entry in trained.values())
    assert {"cdae", "cdae_zero_impute"} <= set(result["snr"]["10"]["win_rate"])


def test_benchmark_tellurics_on_a_library_file(tmp_path):
    import copy
    import shutil

    from specutils_deepclean.datasets import load_examples

    library = load_examples()
    library.params = copy.deepcopy(library.params)
    library.params["split"] = ["test"] * len(library)
    path = library.write(tmp_path / "lib.fits")
    folder = tmp_path / "ablation"
    folder.mkdir()
    shipped = Path(cli.__file__).parent / "pretrained" / "karaoke-miles.asdf"
    shutil.copy(shipped, folder / "layer-N30-s0.asdf")
    out = tmp_path / "t.json"
    argv = ["benchmark", "tellurics", "--library", str(path), "--split", "test",
            "--threads", "1", "--ablation-dir", str(folder), "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["n_spectra"] == len(library) and set(result["snr"]) == {"20", "50", "200"}
    for entry in result["snr"]["50"].values():
        if isinstance(entry, dict):
            assert 0 <= entry["q_t_median"] <= 1 and 0 <= entry["q_s_median"] <= 1
    assert result["snr"]["50"]["none"]["q_t_median"] == 1.0  # no correction: Q_t = 1
    assert set(result["ablation_snr50"]) == {"layer-N30-s0"}
    assert set(result["gaps_snr50"]) == {"none", "reconstruct", "divide"}
    assert result["gaps_snr50"]["none"]["q_t_median"] == 1.0
    with pytest.raises(SystemExit):
        cli.main([*argv[:-4], "--ablation-dir", str(tmp_path), "--json", str(out)])
