"""Train the shipped deep Bayesian denoiser (Kang et al.) on MILES.

The recipe is :func:`specutils_deepclean.training.denoiser.train_denoiser` (also
``specutils-deepclean train denoiser``): every component fitted on the good MILES
``train`` stars and tuned on ``val`` (the test split is never read), on the MILES grid
clipped to 3600-7400 Angstrom (air); the val scores go into the model file.

    python benchmarks/training/train_denoiser.py --seed 0 \
        --output specutils_deepclean/pretrained/denoiser-miles.asdf \
        --json benchmarks/results/train_denoiser.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import save_model
from specutils_deepclean.training.denoiser import train_denoiser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--generator-epochs", type=int, default=600)
    parser.add_argument("--isometry-weight", type=float, default=30.0)
    parser.add_argument("--flow-epochs", type=int, default=15)
    parser.add_argument("--flow-copies", type=int, default=3)
    parser.add_argument("--val-snr", type=float, default=10.0)
    parser.add_argument("--val-count", type=int, default=40, help="val stars scored at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--library", default=None)
    parser.add_argument("--output", required=True)
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint", default=None, help="folder for the stage files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, summary = train_denoiser(
        load_library(args.library),
        latent_dim=args.latent,
        generator_epochs=args.generator_epochs,
        isometry_weight=args.isometry_weight,
        flow_epochs=args.flow_epochs,
        flow_copies=args.flow_copies,
        val_snr=args.val_snr,
        val_count=args.val_count,
        seed=args.seed,
        name="denoiser-miles",
        script="benchmarks/training/train_denoiser.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        checkpoint=args.checkpoint,
        progress=False,
    )
    path = save_model(model, args.output, overwrite=True)
    summary = {"output": str(path), **summary, "threads": args.threads}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
