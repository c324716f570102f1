"""How far the median normalisation of a noisy spectrum misses the true level, on MILES ``val``.

Every good ``val`` star is observed through the simulator at S/N 2, 5, 10, 20 and 50
and divided by its median as `specutils_deepclean.denoise` does; the level error is
that median over the clean spectrum's median, minus one.  The generator cannot change
a spectrum's level, so before the continuum term this error went straight into the
denoised spectrum (see the denoising docs).  The test split is never read::

    python benchmarks/studies/normalisation_level.py \\
        --json benchmarks/results/normalisation_level_val.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from specutils_deepclean.spectra import median_normalise

from val_study import observations, val_setup, write_result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="denoiser-miles", help="sets the grid and medium")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    _, truth, valid, sim = val_setup(args.model)
    _, true_level = median_normalise(truth, ~valid)
    rows = {}
    for snr, obs in observations(sim, truth, valid, args.seed):
        _, level = median_normalise(obs.flux, obs.mask)
        error = level / true_level - 1
        rows[f"{snr:g}"] = {
            "median_abs_error": float(np.median(np.abs(error))),
            "mean_error": float(np.mean(error)),
            "p90_abs_error": float(np.percentile(np.abs(error), 90)),
        }
        print(snr, rows[f"{snr:g}"], flush=True)
    write_result(
        args.json, __file__, argv, {"split": "val", "n_spectra": int(len(truth)), "snr": rows}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
