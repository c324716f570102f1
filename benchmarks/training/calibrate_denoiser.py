"""Fit the uncertainty scales of a trained denoiser file on MILES ``val`` and save it.

Runs :func:`specutils_deepclean.training.denoiser.calibrate_uncertainty` (the last fitting
step of the training recipe) on an existing model file: every good ``val`` star
observed at S/N 2, 5, 10, 20 and 50, the two scales of the uncertainty chosen to
bring the calibration closest to 0.683 at the worst S/N.  The scales go into the
file's ``extra["sigma_scales"]``, the calibration per S/N into its provenance
metrics (``val_calibration_fit_snr*``), and the command into its notes.  The test
split is never read.  The shipped model was calibrated with

    python benchmarks/training/calibrate_denoiser.py --seed 4 \
        --json benchmarks/results/denoiser_calibration_val.json
"""

from __future__ import annotations

import sys

from specutils_deepclean.training.denoiser import calibrate_uncertainty

from denoiser_step import run_step


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="calibrate_denoiser.py",
        step=calibrate_uncertainty,
        metrics=lambda summary: {
            f"val_calibration_fit_snr{k}": v for k, v in summary["after"].items()
        },
        note="uncertainty scales fitted by",
        seed=4,
    )


if __name__ == "__main__":
    sys.exit(main())
