"""``specutils-deepclean benchmark denoise|tellurics|speed``: the benchmark protocols.

``denoise`` and ``tellurics`` run the benchmark protocols (described in the docs' pages
on denoising and tellurics) on one split of any library file in the MILES layout
(:mod:`specutils_deepclean.benchmarking.denoise`,
:mod:`specutils_deepclean.benchmarking.tellurics`); ``speed`` times a whole mock
survey of files, in one process and on Dask
(:mod:`specutils_deepclean.benchmarking.speed`).  Each writes JSON with ``--json``;
``specutils-deepclean benchmark <protocol> --help`` lists its options.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["main"]

PROTOCOLS = {
    "denoise": "specutils_deepclean.benchmarking.denoise",
    "tellurics": "specutils_deepclean.benchmarking.tellurics",
    "speed": "specutils_deepclean.benchmarking.speed",
}

EPILOG = """examples:
  specutils-deepclean benchmark denoise --library miles.fits --split test --json denoise.json
  specutils-deepclean benchmark tellurics --split test --speed --json tellurics.json
  specutils-deepclean benchmark speed --files 1000 --workers 2 --json speed.json
"""


def main(argv=None) -> int:
    """``specutils-deepclean benchmark``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean benchmark",
        description="Run a benchmark protocol and write its results as JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("protocol", choices=sorted(PROTOCOLS), help="which benchmark")
    argv = list(argv or [])
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(PROTOCOLS[args.protocol])
    return int(module.main(argv[1:]) or 0)
