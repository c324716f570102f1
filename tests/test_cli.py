"""The command line: denoise and detelluric on files, exit codes, help, plots."""

import subprocess
import sys

import pytest

from specutils_deepclean import cli
from specutils_deepclean.files import read_result

torch = pytest.importorskip("torch")


def test_detelluric_files_exit_codes_and_resume(survey, tmp_path, capsys):
    paths, bad = survey
    out = tmp_path / "out"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths[:2]) + "\n")
    args = ["detelluric", f"@{listing}", "--output", str(out), "--quiet", "--mode", "reconstruct"]
    assert cli.main(args) == 0
    assert "done 2, skipped 0" in capsys.readouterr().out
    result = read_result(out / "star000_detelluric.fits")
    assert result.meta["deepclean"]["mode"] == "reconstruct"
    assert result.meta["header"]["DCMODE"] == "reconstruct"
    # a glob with one corrupted file: the others are done, the bad one reported, exit 1
    assert cli.main(["detelluric", str(tmp_path / "in" / "*.fits"), "-o", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "done 2, skipped 2" in printed and f"failed: {bad}" in printed


def test_denoise_with_plots(survey, tmp_path, capsys):
    paths, _ = survey
    out = tmp_path / "out"
    argv = ["denoise", str(paths[3]), "-o", str(out), "--steps", "3", "--quiet", "--plot"]
    assert cli.main([*argv, "--clip", "1e-9"]) == 0  # a silly threshold, to see it arrive
    result = read_result(out / "star003_denoised.fits")
    assert result.meta["deepclean"]["rejected"].sum() > 100
    assert cli.main([*argv, "--no-clip", "--overwrite"]) == 0
    result = read_result(out / "star003_denoised.fits")
    assert not result.meta["deepclean"]["rejected"].any()
    assert result.meta["deepclean"]["operation"] == "denoise"
    assert result.meta["header"]["DCCLASS"] == result.meta["deepclean"]["map_class"]
    assert result.meta["header"]["DCRVERR"] > 0  # the velocity was fitted
    assert cli.main([*argv, "--radial-velocity", "0", "--overwrite"]) == 0
    result = read_result(out / "star003_denoised.fits")
    assert result.meta["header"]["DCRV"] == 0 and result.meta["header"]["DCRVERR"] == 0
    png = out / "star003_denoised.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["detelluric", "x.fits"])  # no --output
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["denoise", "x.fits", "-o", str(tmp_path), "--batch-size", "0"])
    assert info.value.code == 2 and "--batch-size" in capsys.readouterr().err
    for bad in (["--clip", "0"], ["--clip", "3", "--no-clip"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["denoise", "x.fits", "-o", str(tmp_path), *bad])
        assert info.value.code == 2 and "--clip must be" in capsys.readouterr().err
    for bad in (["--velocity-range", "0"], ["--velocity-range", "1e5"], ["--radial-velocity", "nan"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["denoise", "x.fits", "-o", str(tmp_path), *bad])
        assert info.value.code == 2 and bad[0] in capsys.readouterr().err
    assert cli.main(["detelluric", str(tmp_path / "*.none"), "-o", str(tmp_path)]) == 2
    assert "no file matches" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["detelluric", str(blocker), "-o", str(blocker / "out")]) == 2
    assert "cannot write results" in capsys.readouterr().err
    # a model of the other task, an unknown device or format: refused before any work
    # (a traceback, and every file failed alike)
    for bad, message in ((["--model", "karaoke-miles"], "model must be a Denoiser"),
                         (["--device", "tpu"], "device must be"),
                         (["--format", "nosuch"], "no reader called 'nosuch'")):
        assert cli.main(["denoise", str(blocker), "-o", str(tmp_path / "o"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli.main([]) == 2


@pytest.mark.parametrize("command", ["denoise", "detelluric", "demo"])
def test_help_has_examples(command):
    run = subprocess.run(
        [sys.executable, "-m", "specutils_deepclean.cli", command, "--help"],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0 and f"usage: specutils-deepclean {command}" in run.stdout
    assert "examples:" in run.stdout


def test_entry_point_version():
    run = subprocess.run(
        [sys.executable, "-m", "specutils_deepclean.cli", "--version"],
        capture_output=True, text=True, check=False,
    )
    from specutils_deepclean import __version__

    assert run.returncode == 0 and run.stdout.strip() == __version__


def test_detelluric_physical_mode_file(survey, tmp_path, capsys):
    paths, _ = survey
    out = tmp_path / "out"
    args = ["detelluric", str(paths[0]), "--output", str(out), "--quiet", "--mode", "physical"]
    assert cli.main(args) == 0
    result = read_result(out / "star000_detelluric.fits")
    assert result.meta["deepclean"]["mode"] == "physical"
    assert set(result.meta["deepclean"]["depths"]) == {"H2O", "O2"}


def test_plots_read_each_input_file_once(tmp_path, monkeypatch):
    """--plot on a file of many targets (DESI) reads and combines that file once, not per target."""
    from types import SimpleNamespace

    from specutils_deepclean import files, plotting
    from specutils_deepclean.commands.clean import _plots

    reads, drawn = [], []

    def read_targets(path, file_format=None):
        reads.append(path)
        return [(f"{path.stem}-{k}", f"spectrum {path.stem}-{k}") for k in range(3)], {}

    monkeypatch.setattr(files, "read_targets", read_targets)
    monkeypatch.setattr(files, "read_result", lambda path: f"result {path.name}")
    monkeypatch.setattr(
        plotting, "quicklook", lambda result, spectrum, title, path: drawn.append((result, spectrum))
    )
    one, two = tmp_path / "a.fits", tmp_path / "b.fits"
    results = {
        tmp_path / f"{path.stem}-{k}_denoised.fits": (path, f"{path.stem}-{k}")
        for k in (0, 2, 1)
        for path in (two, one)
    }
    _plots(SimpleNamespace(results=results, existing={}), tmp_path, "denoise", None)
    assert sorted(reads) == [one, two]
    assert sorted(drawn) == sorted(
        (f"result {result.name}", f"spectrum {target}") for result, (_, target) in results.items()
    )
