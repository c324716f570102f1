"""Telluric benchmark on MILES: see :mod:`specutils_deepclean.benchmarking.tellurics`.

    python benchmarks/bench_tellurics.py --split test --speed \
        --json benchmarks/results/tellurics_test.json

is ``specutils-deepclean benchmark tellurics`` with the same arguments.
"""

import sys

from specutils_deepclean.benchmarking.tellurics import main

if __name__ == "__main__":
    sys.exit(main())
