"""Packaging promises: README commands, CI script, command line dispatch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from specutils_deepclean import cli

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"Install and run the tests::\n\n\s+(.+)\n", readme)
    assert match, "README.rst lost its test command"
    test_command = match.group(1).split("&&")[-1].strip()
    assert test_command == "python -m pytest"
    assert re.search(rf"^{re.escape(test_command)}$", ci, flags=re.M)
    # CI installs the on-disk CPU torch before the package can pull a CUDA build.
    assert ci.index("torch==2.13.0") < ci.index('-e ".[test')


def test_readme_main_job_is_a_real_command():
    readme = (ROOT / "README.rst").read_text()
    match = re.search(r"specutils-deepclean (\w+)", readme)
    assert match and match.group(1) in cli.COMMANDS


def test_cli_without_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "usage: specutils-deepclean" in capsys.readouterr().out


def test_cli_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_cli_version(capsys):
    from specutils_deepclean import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "specutils_deepclean.cli", command, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
