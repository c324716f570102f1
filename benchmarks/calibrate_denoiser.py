"""Fit the uncertainty scales of a trained denoiser file on MILES ``val`` and save it.

Runs :func:`specutils_deepclean.denoiser_training.calibrate_uncertainty` (the last fitting
step of the training recipe) on an existing model file: every good ``val`` star
observed at S/N 2, 5, 10, 20 and 50, the two scales of the uncertainty chosen to
bring the calibration closest to 0.683 at the worst S/N.  The scales go into the
file's ``extra["sigma_scales"]``, the calibration per S/N into its provenance
metrics (``val_calibration_fit_snr*``), and the command into its notes.  The test
split is never read.  The shipped model was calibrated with

    python benchmarks/calibrate_denoiser.py --seed 4 \
        --json benchmarks/results/denoiser_calibration_val.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from specutils_deepclean.datasets import load_library
from specutils_deepclean.denoiser_training import calibrate_uncertainty
from specutils_deepclean.io.models import load_model, save_model

SHIPPED = Path(__file__).resolve().parents[1] / "specutils_deepclean/pretrained/denoiser-miles.asdf"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHIPPED, help="model file to calibrate")
    parser.add_argument("--output", type=Path, default=None, help="default: --model, replaced")
    parser.add_argument("--library", default=None)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    summary = calibrate_uncertainty(model, load_library(args.library), seed=args.seed)
    command = "python benchmarks/calibrate_denoiser.py " + " ".join(argv or sys.argv[1:])
    provenance = model.provenance
    metrics = {
        **provenance.metrics,
        **{f"val_calibration_fit_snr{k}": v for k, v in summary["after"].items()},
    }
    notes = f"{provenance.notes}\nuncertainty scales fitted by: {command}".strip()
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
