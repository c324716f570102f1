"""Choose the factor on the denoiser's uncertainty over pixels without data on MILES ``val``.

Runs :func:`specutils_deepclean.training.fill_sigma.calibrate_fill_sigma` on an
existing model file: every good ``val`` star observed at S/N 10 with the benchmark
protocol's gaps (100, 400 and 800 pixels and 40 % of the grid at the blue end, in the
middle and at the red end) and denoised; the factor goes into the file's
``extra["fill_sigma_scale"]`` (that on the stars flagged out of distribution into
``extra["fill_sigma_ood_scale"]``, and into the provenance metric
``val_fill_ood_scale``), the pooled coverage of the filled pixels after (in sample and
held out) into its provenance metrics (``val_fill_coverage_*``), and the command into
its notes.  The test split is never read.  The shipped model was
calibrated with

    python benchmarks/training/calibrate_fill_sigma.py --threads 1 \\
        --json benchmarks/results/fill_sigma_calibration_val.json
"""

from __future__ import annotations

import sys

from specutils_deepclean.training.fill_sigma import calibrate_fill_sigma

from denoiser_step import run_step


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="calibrate_fill_sigma.py",
        step=calibrate_fill_sigma,
        metrics=lambda summary: {
            **{f"val_fill_coverage_{k}": v for k, v in summary["after"].items()},
            **{f"val_fill_coverage_held_out_{k}": v for k, v in summary["held_out"].items()},
            "val_fill_ood_scale": summary["ood_scale"],
        },
        note="fill-sigma factor chosen by",
        seed=2026,
    )


if __name__ == "__main__":
    sys.exit(main())
