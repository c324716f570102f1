"""Denoising benchmark on MILES: see :mod:`specutils_deepclean.benchmarking.denoise`.

    python benchmarks/bench_denoise.py --split test --steps 100 --starts 2 --gaps 12 \
        --json benchmarks/results/denoise_test.json

is ``specutils-deepclean benchmark denoise`` with the same arguments.
"""

import sys

from specutils_deepclean.benchmarking.denoise import main

if __name__ == "__main__":
    sys.exit(main())
