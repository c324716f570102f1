"""Fit the continuum term of a trained denoiser file on MILES ``val`` and save it.

Runs :func:`specutils_deepclean.training.denoiser.fit_continuum_term` (a step of the
training recipe, after the residual term and before the uncertainty calibration) on
an existing model file: the degree (0, 1, 3 or 5) and prior width (0.03, 0.1 or 0.3)
of the multiplicative Legendre continuum, or no term, chosen on ``val``
observations at S/N 2-50.  The test split is never read.  The kept setting's val
median MSE per S/N replaces the file's ``val_median_mse_snr*`` metrics.  Recalibrate
the uncertainty afterwards (``benchmarks/training/calibrate_denoiser.py``).  The shipped
model's term was fitted with

    python benchmarks/training/fit_continuum_term.py --seed 6 \
        --json benchmarks/results/denoiser_continuum_val.json
"""

from __future__ import annotations

import sys

from specutils_deepclean.training.denoiser import fit_continuum_term

from denoiser_step import run_step


def _metrics(summary: dict) -> dict:
    degree, sigma = summary["degree"], summary["sigma"]
    key = "none" if degree is None else f"D{degree}_sigma{sigma:g}"
    return {
        "val_continuum_degree": float(-1 if degree is None else degree),
        **{f"val_median_mse_snr{snr}": v for snr, v in summary["val_median_mse"][key].items()},
    }


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="fit_continuum_term.py",
        step=fit_continuum_term,
        metrics=_metrics,
        note="continuum term fitted by",
        seed=6,
    )


if __name__ == "__main__":
    sys.exit(main())
