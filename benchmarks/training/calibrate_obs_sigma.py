"""Choose the factor on the denoiser's uncertainty over pixels with data on MILES ``val``.

Runs :func:`specutils_deepclean.training.obs_sigma.calibrate_obs_sigma` on an existing
model file: every good ``val`` star observed without a gap at S/N 5, 10 and 20 and
denoised; the factor goes into the file's ``extra["obs_sigma_scale"]``, the coverage
of the pixels with data after it (in sample and held out, all S/N pooled) into its
provenance metrics (``val_obs_coverage``, ``val_obs_coverage_held_out``), and the
command into its notes.  The test split is never read.  The fill factor
(``calibrate_fill_sigma.py``) does not depend on it, but its JSON reports the coverage
of the pixels with data, so it is rerun after.  The shipped model was calibrated with

    python benchmarks/training/calibrate_obs_sigma.py --threads 1 \\
        --json benchmarks/results/obs_sigma_calibration_val.json
"""

from __future__ import annotations

import sys

from specutils_deepclean.training.obs_sigma import calibrate_obs_sigma

from denoiser_step import run_step


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="calibrate_obs_sigma.py",
        step=calibrate_obs_sigma,
        metrics=lambda summary: {
            "val_obs_coverage": summary["after"]["pooled"]["pooled"],
            "val_obs_coverage_held_out": summary["held_out"]["pooled"]["pooled"],
        },
        note="obs-sigma factor chosen by",
        seed=2026,
    )


if __name__ == "__main__":
    sys.exit(main())
