"""Fit the residual term of a trained denoiser file on MILES and save it.

Runs :func:`specutils_deepclean.training.denoiser.fit_residual_basis` (a step of the
training recipe, before the uncertainty calibration) on an existing model file: the
principal directions of the generator's error on the clean ``train`` stars, their
number (0, 40, 80 or 160) chosen on ``val`` observations at S/N 2-50.  The test split
is never read.  The kept size's val median MSE per S/N replaces the file's
``val_median_mse_snr*`` metrics.  Recalibrate the uncertainty afterwards
(``benchmarks/training/calibrate_denoiser.py``).  The shipped model's term was fitted with

    python benchmarks/training/fit_residual_basis.py --seed 5 \
        --json benchmarks/results/denoiser_residual_val.json
"""

from __future__ import annotations

import sys

from specutils_deepclean.training.denoiser import fit_residual_basis

from denoiser_step import run_step


def _metrics(summary: dict) -> dict:
    chosen = summary["val_median_mse"][str(summary["components"])]
    return {
        "val_residual_components": float(summary["components"]),
        **{f"val_median_mse_snr{snr}": value for snr, value in chosen.items()},
    }


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="fit_residual_basis.py",
        step=fit_residual_basis,
        metrics=_metrics,
        note="residual term fitted by",
        seed=5,
    )


if __name__ == "__main__":
    sys.exit(main())
