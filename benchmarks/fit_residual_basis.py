"""Fit the residual term of a trained denoiser file on MILES and save it.

Runs :func:`specutils_deepclean.denoiser_training.fit_residual_basis` (a step of the
training recipe, before the uncertainty calibration) on an existing model file: the
principal directions of the generator's error on the clean ``train`` stars, their
number (0, 40, 80 or 160) chosen on ``val`` observations at S/N 2-50.  The test split
is never read.  The kept size's val median MSE per S/N replaces the file's
``val_median_mse_snr*`` metrics.  Recalibrate the uncertainty afterwards
(``benchmarks/calibrate_denoiser.py``).  The shipped model's term was fitted with

    python benchmarks/fit_residual_basis.py --seed 5 \
        --json benchmarks/results/denoiser_residual_val.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from specutils_deepclean.datasets import load_library
from specutils_deepclean.denoiser_training import fit_residual_basis
from specutils_deepclean.io.models import load_model, save_model

SHIPPED = Path(__file__).resolve().parents[1] / "specutils_deepclean/pretrained/denoiser-miles.asdf"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHIPPED, help="model file")
    parser.add_argument("--output", type=Path, default=None, help="default: --model, replaced")
    parser.add_argument("--library", default=None)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    summary = fit_residual_basis(model, load_library(args.library), seed=args.seed)
    command = "python benchmarks/fit_residual_basis.py " + " ".join(argv or sys.argv[1:])
    provenance = model.provenance
    notes = f"{provenance.notes}\nresidual term fitted by: {command}".strip()
    chosen = summary["val_median_mse"][str(summary["components"])]
    metrics = {
        **provenance.metrics,
        "val_residual_components": float(summary["components"]),
        **{f"val_median_mse_snr{snr}": value for snr, value in chosen.items()},
    }
    model.provenance = dataclasses.replace(provenance, metrics=metrics, notes=notes)
    save_model(model, args.output or args.model, overwrite=True)
    summary["command"] = command
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
