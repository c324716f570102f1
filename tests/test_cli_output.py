"""What a command-line run leaves and prints: plots, warnings, progress, ``-m``."""

import subprocess
import sys

import astropy.units as u
import pytest

from specutils_deepclean import cli, parallel
from specutils_deepclean.parallel import clean_files

torch = pytest.importorskip("torch")

MULTI_SLASH_UNIT = "1E-17 erg/cm^2/s/Angstrom"  # as SDSS writes it; astropy warns


def test_plot_without_matplotlib_fails_before_writing(survey, tmp_path, monkeypatch, capsys):
    paths, _ = survey
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    argv = ["detelluric", str(paths[0]), "-o", str(out), "--quiet", "--plot"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "specutils-deepclean[plot]" in err
    assert not out.exists() or not any(out.iterdir())


def test_plot_rerun_makes_the_missing_figures(survey, tmp_path, capsys):
    paths, _ = survey
    out = tmp_path / "out"
    argv = ["detelluric", str(paths[0]), "-o", str(out), "--quiet"]
    assert cli.main(argv) == 0
    png = out / "star000_detelluric.png"
    assert not png.exists()
    assert cli.main([*argv, "--plot"]) == 0  # the result exists: skipped, but plotted
    assert "skipped 1" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_dash_m_runs_the_command_line():
    run = subprocess.run(
        [sys.executable, "-m", "specutils_deepclean", "--version"],
        capture_output=True, text=True, check=False,
    )
    from specutils_deepclean import __version__

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == __version__


def test_a_warning_of_every_file_is_reported_once(survey, tmp_path, monkeypatch):
    """Four files whose reading warns (astropy on an SDSS-style unit), one per batch: one
    summary line, and no warning escapes to be printed once per file."""
    paths, _ = survey
    real_read = parallel.read_targets

    def read_like_sdss(*args, **kwargs):
        u.Unit(MULTI_SLASH_UNIT)  # astropy's UnitsWarning, as the SDSS reader gets it
        return real_read(*args, **kwargs)

    monkeypatch.setattr(parallel, "read_targets", read_like_sdss)
    summary = clean_files(paths, tmp_path / "out", "detelluric", batch_size=1)
    assert summary.ok and len(summary.done) == 4
    about_units = [w for w in summary.warnings if "multiple slashes" in w]
    assert len(about_units) == 1 and about_units[0].endswith("and 3 more]")


def test_progress_off_a_terminal_prints_no_last_line_twice(capsys):
    bar = parallel._progress(4, True)  # pytest's captured stderr is not a terminal
    bar.interval = 0.0
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"progress: {k}/4 spectra" + lines[k - 1].split("spectra", 1)[1]
                     for k in (1, 2, 3)]
    assert not any("4/4" in line for line in lines)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_local_dask_cluster_starts_when_the_dashboard_port_is_taken():
    """Another Dask cluster on the machine holds port 8787: no warning, no failure."""
    import socket

    pytest.importorskip("distributed")
    holder = socket.socket()
    try:
        try:
            holder.bind(("", 8787))
            holder.listen()
        except OSError:
            pass  # taken already: the situation under test
        client, cluster = parallel._client(1, None)
        client.close()
        cluster.close()
    finally:
        holder.close()
