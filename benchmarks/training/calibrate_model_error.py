"""Choose the denoiser's model-error term on MILES ``val`` and save it in the file.

Runs :func:`specutils_deepclean.training.model_error.calibrate_model_error` on an
existing model file: every good ``val`` star observed at S/N 2, 5, 10, 20 and 50, as
it is and degraded to 3.4 A FWHM with smooth tilts, and denoised; the term's
``(k, c, L)`` go into the file's ``extra["model_error_terms"]`` (an earlier version's
``extra["model_error"]`` is removed), the coverage after per
S/N and kind into its provenance metrics (``val_model_error_coverage_*``), and the
command into its notes.  The test split is never read.  The shipped model was
calibrated with

    python benchmarks/training/calibrate_model_error.py --seed 2026 --threads 1 \
        --json benchmarks/results/model_error_calibration_val.json
"""

from __future__ import annotations

import sys

from specutils_deepclean.training.model_error import calibrate_model_error

from denoiser_step import run_step


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="calibrate_model_error.py",
        step=calibrate_model_error,
        metrics=lambda summary: {
            f"val_model_error_coverage_{key}": value for key, value in summary["after"].items()
        },
        note="model-error term chosen by",
        seed=2026,
    )


if __name__ == "__main__":
    sys.exit(main())
