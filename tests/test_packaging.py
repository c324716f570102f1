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


_UNSHIPPED = re.compile(r"DESIGN\.md|CONVENTIONS\.md|design notes|\.\./shared/(?!data)", re.I)


def test_docs_and_help_cite_no_file_outside_the_repository():
    """Users have neither the project brief nor ``../shared``: no page or docstring cites them."""
    files = [*ROOT.glob("specutils_deepclean/**/*.py"), *ROOT.glob("docs/*.rst"), ROOT / "README.rst"]
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if _UNSHIPPED.search(line)
    ]
    assert not cited, cited


@pytest.mark.parametrize("protocol", ["denoise", "tellurics", "speed"])
def test_benchmark_help_cites_no_file_outside_the_repository(protocol):
    result = subprocess.run(
        [sys.executable, "-m", "specutils_deepclean.cli", "benchmark", protocol, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage:" in result.stdout
    assert not _UNSHIPPED.search(result.stdout), result.stdout
