"""Latent size of the isometric generator: reconstruction floor against PCA on MILES.

For every latent size L in ``--latent`` an `IsometricAutoencoder` is trained with
`train_generator` on the clean MILES ``train`` stars (best ``val`` epoch kept) and
scored on the clean ``val`` stars by the median over spectra of the per-pixel MSE
of ``G(E(y))``; PCA with ``k = L`` components fit on ``train`` is scored the same
way. The grid is the MILES grid clipped to 3600-7400 Angstrom (air), spectra are
median-normalised (`~specutils_deepclean.simulate.prepare_truth`); stars flagged
bad are left out. The test split is never read.

Writes ``benchmarks/results/latent_size.json`` and prints the curve::

    python benchmarks/studies/latent_size.py [--latent 3 8 16 32] [--epochs 100] [--threads 1]

One torch thread by default: on the shared 2-core machine, two OpenMP threads
slowed the small convolutions of a training step by 10-100x whenever another
process held a core (threads waiting on each other at every barrier), while
one thread ran at full speed either way.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from specutils_deepclean import __version__
from specutils_deepclean.datasets import load_library
from specutils_deepclean.simulate import prepare_truth
from specutils_deepclean.training.generator import train_generator

REPO = Path(__file__).resolve().parents[2]
OUTPUT_JSON = REPO / "benchmarks" / "results" / "latent_size.json"
WAVE_RANGE = (3600.0, 7400.0)
SEED = 0
#: PCA sizes also scored on val, as the floors the generator is compared with.
PCA_REFERENCE = (10, 20, 40)
#: Training settings shared by every latent size (see docs/generator.rst).
SETTINGS = {
    "batch_size": 32,
    "lr": 2e-3,
    "isometry_weight": 1.0,
    "delta": 0.1,
    "noise_augment": 0.02,
    "tilt_augment": 0.05,
}


def split_truth(library, wave):
    """Normalised clean spectra and missing masks of the good train and val stars."""
    out = {}
    for split in ("train", "val"):
        truth, valid = prepare_truth(library.select(split=split, good=True), wave, library.medium)
        out[split] = (truth, ~valid)
    return out


def pca_score(train, val, k: int) -> float:
    """Median per-pixel MSE of projecting the val spectra on the top-k train components."""
    mean = train.mean(0)
    _, _, vh = np.linalg.svd(train - mean, full_matrices=False)
    basis = vh[:k]
    centred = val - mean
    residual = centred - centred @ basis.T @ basis
    return float(np.median(np.mean(residual**2, axis=1)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latent", type=int, nargs="+", default=[3, 8, 16, 32])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (see the module docstring)"
    )
    parser.add_argument("--json-out", type=Path, default=OUTPUT_JSON)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    library = load_library()
    wave = library.wavelength.value
    wave = wave[(wave >= WAVE_RANGE[0]) & (wave <= WAVE_RANGE[1])]
    data = split_truth(library, wave)
    for split, (_, missing) in data.items():
        if missing.any():  # the grid sits inside MILES coverage; keep the PCA score honest
            raise ValueError(f"{split} has missing pixels on the grid; PCA scoring assumes none")
    rows = []
    for latent in args.latent:
        start = time.perf_counter()
        model = train_generator(
            *data["train"],
            latent_dim=latent,
            val=data["val"],
            epochs=args.epochs,
            seed=SEED,
            device="cpu",
            progress=False,
            **SETTINGS,
        )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "latent_dim": latent,
                "generator_val_median_mse": min(model.history["val"]),
                "pca_val_median_mse": pca_score(data["train"][0], data["val"][0], latent),
                "untrained_val_median_mse": model.history["val"][0],
                "best_epoch": model.best_epoch,
                "final_isometry_term": model.history["isometry"][-1],
                "train_seconds": seconds,
            }
        )
        print(
            "L={latent_dim:3d}  generator {generator_val_median_mse:.3e}  "
            "PCA {pca_val_median_mse:.3e}  best epoch {best_epoch}  "
            "isometry {final_isometry_term:.2e}  {train_seconds:.0f} s".format(**rows[-1]),
            flush=True,
        )
    result = {
        "benchmark": "latent_size",
        "package_version": __version__,
        "library": os.path.relpath(library.path, REPO),
        "wave_range_angstrom": list(WAVE_RANGE),
        "n_pix": int(wave.size),
        "n_spectra": {split: int(truth.shape[0]) for split, (truth, _) in data.items()},
        "seed": SEED,
        "epochs": args.epochs,
        "settings": SETTINGS,
        "architecture": model.config | {"latent_dim": "varies"},
        "score": "median over val spectra of the per-pixel MSE (normalised flux)",
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "curve": rows,
        "pca_reference_val_median_mse": {
            str(k): pca_score(data["train"][0], data["val"][0], k) for k in PCA_REFERENCE
        },
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
