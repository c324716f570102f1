"""Denoising benchmark on MILES: see :mod:`specutils_deepclean.benchmarking.denoise`.

    python benchmarks/bench_denoise.py --split test --steps 20 --starts 2 --tol 0.05 \
        --gaps 141 --cdae-epochs 20 --threads 2 --json benchmarks/results/denoise_test.json

is ``specutils-deepclean benchmark denoise`` with the same arguments.
"""

import sys

from specutils_deepclean.benchmarking.denoise import main

if __name__ == "__main__":
    sys.exit(main())
