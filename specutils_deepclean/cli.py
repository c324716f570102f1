"""The ``specutils-deepclean`` command line.

Each sub-command is a function ``main(argv) -> int`` in its own module; this module
only dispatches, so ``specutils-deepclean <command> --help`` is the command's own help.
Exit codes: 0 success, 1 some inputs failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

#: sub-command -> ("module:function" taking ``argv`` and returning the exit code, help)
COMMANDS = {
    "demo": (
        "specutils_deepclean.demo:main",
        "clean a simulated observation of a shipped example star with both models",
    ),
    "denoise": (
        "specutils_deepclean.commands.clean:denoise_main",
        "denoise spectrum files with the deep Bayesian model",
    ),
    "detelluric": (
        "specutils_deepclean.commands.clean:detelluric_main",
        "remove telluric absorption from spectrum files",
    ),
    "train": (
        "specutils_deepclean.commands.train:main",
        "train a telluric model or a denoiser; write an ASDF model file",
    ),
    "benchmark": (
        "specutils_deepclean.commands.benchmark:main",
        "run a benchmark protocol (denoise, tellurics, speed) and write JSON",
    ),
}

EPILOG = """examples:
  specutils-deepclean demo --output demo-output
  specutils-deepclean detelluric "night1/*.fits" --output cleaned/ --workers 2
  specutils-deepclean denoise star.fits --output cleaned/ --plot
  specutils-deepclean <command> --help
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean",
        description="Clean stellar spectra with deep models (specutils plugin).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "command",
        nargs="?",
        choices=sorted(COMMANDS),
        metavar="command",
        help="one of: " + "; ".join(f"{name}: {text}" for name, (_, text) in COMMANDS.items()),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # Everything after the command belongs to the command's own parser.
    split = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    args = parser.parse_args(argv[: split + 1])
    if args.version:
        from specutils_deepclean import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    module, function = COMMANDS[args.command][0].split(":")
    status = getattr(importlib.import_module(module), function)(argv[split + 1 :])
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
