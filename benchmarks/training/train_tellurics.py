"""Train the shipped telluric model (Stellar Karaoke VAE with velocity whitening).

Training data: a simulated topocentric survey of MILES ``train`` stars
(:mod:`specutils_deepclean.training.telluric_data`); validation: MILES ``val`` stars,
observed once each.  A share ``--gap-fraction`` of both lose one gap of the benchmark
protocol (100, 400 or 800 pixels at the blue end, middle or red end), so that the
network learns to reconstruct spectra with missing stretches.  The loss sees the
reconstruction through the telluric layer (the ESO line transmission at airmass 2.5
raised to a fitted power; see ``train_karaoke(telluric_lines=...)``) unless
``--no-telluric-layer`` (the paper's training).  The test split is never touched.
Reproducible from ``--seed``.

    python benchmarks/training/train_tellurics.py --epochs 220 --copies 4 --lr 2e-3 --seed 0 \
        --gap-fraction 0.5 --threads 1 --output specutils_deepclean/pretrained/karaoke-miles.asdf \
        --json benchmarks/results/train_tellurics.json

The ablations (whitening 0 / 15 / 30 km/s, VAE vs AE, with and without the layer;
``benchmarks/studies/ablate_tellurics.sh``) use ``--whitening``, ``--autoencoder`` and
``--no-telluric-layer`` with another ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import save_model
from specutils_deepclean.provenance import Provenance, file_sha256
from specutils_deepclean.training import train_karaoke
from specutils_deepclean.training.karaoke import reference_lines
from specutils_deepclean.training.telluric_data import AIRMASS_RANGE, observe_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--copies", type=int, default=4, help="observations per train star")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--whitening", type=float, default=30.0, help="km/s")
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--autoencoder", action="store_true", help="deterministic AE, no KL")
    parser.add_argument(
        "--no-telluric-layer",
        action="store_true",
        help="the paper's training: the loss sees the reconstruction alone",
    )
    parser.add_argument(
        "--gap-fraction", type=float, default=0.5, help="share of spectra with a gap"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--library", default=None, help="library file (default: MILES)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    library = load_library(args.library)
    wave = library.wavelength
    medium = library.medium
    start = time.perf_counter()
    train = observe_split(
        library.select(split="train", good=True),
        wave.value,
        medium,
        copies=args.copies,
        seed=args.seed,
        gap_fraction=args.gap_fraction,
    )
    val = observe_split(
        library.select(split="val", good=True),
        wave.value,
        medium,
        copies=1,
        seed=args.seed + 1,
        gap_fraction=args.gap_fraction,
    )
    simulated = time.perf_counter() - start
    provenance = Provenance(
        data_name=library.name,
        data_path=str(library.path),
        data_sha256=file_sha256(library.path),
        data_description=(
            f"simulated topocentric survey: {len(train.flux)} observations of the good "
            f"'train' stars ({args.copies} each; airmass 1-2.5, S/N 20-200, random stellar "
            "RV, sky residuals, cosmics, correlated noise; a gap of 100, 400 or 800 pixels at "
            f"the blue end, middle or red end in a random {args.gap_fraction:.0%} of them); "
            "validation: the good 'val' stars once, observed the same way"
        ),
        split="train",
        seed=args.seed,
        script="benchmarks/training/train_tellurics.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    lines = reference_lines(
        wave.value,
        medium,
        airmass=AIRMASS_RANGE[1],
        fwhm=library.fwhm.value if library.fwhm is not None else 2.5,
    )
    model = train_karaoke(
        train.flux,
        wavelength=wave,
        medium=medium,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        whitening_kms=args.whitening,
        latent_dim=args.latent,
        variational=not args.autoencoder,
        telluric_lines=None if args.no_telluric_layer else lines,
        val=val.flux,
        seed=args.seed,
        device="cpu",
        checkpoint=args.checkpoint,
        provenance=provenance,
    )
    trained = time.perf_counter() - start - simulated
    model.extra = {**model.extra, "telluric_lines": lines.astype(np.float32)}
    path = save_model(model, args.output, overwrite=True)
    summary = {
        "output": str(path),
        "seed": args.seed,
        "epochs": args.epochs,
        "whitening_kms": args.whitening,
        "variational": not args.autoencoder,
        "telluric_layer": not args.no_telluric_layer,
        "gap_fraction": args.gap_fraction,
        "n_train": int(len(train.flux)),
        "n_val": int(len(val.flux)),
        "seconds_simulation": round(simulated, 1),
        "seconds_training": round(trained, 1),
        "threads": args.threads,
        "val_metrics": model.provenance.metrics,
        "history": {key: [float(v) for v in values] for key, values in model.history.items()},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
