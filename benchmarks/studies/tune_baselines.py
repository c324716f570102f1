"""Tune the classical denoising baselines on MILES ``val`` (never ``test``), per S/N.

For each S/N of the protocol (2, 5, 10, 20, 50) the ``val`` stars (flagged-bad
spectra left out) are observed once with the simulator (its defaults: sky
residuals, cosmic rays, correlated noise; no gap, no tellurics; seed
``SEED + index of the S/N``) on the MILES grid clipped to 3600-7400 Angstrom
(air), and every setting of a grid search is scored by the median over spectra
of the MSE against the truth over its valid pixels:

* Gaussian smoothing: kernel standard deviation (pixels);
* median smoothing: window (pixels, odd);
* wavelet shrinkage (sym8, soft, all levels): multiple of the universal threshold.

The setting with the lowest score wins (ties: the first in the grid). With
``--cdae-epochs N`` a small convolutional denoising autoencoder (the generator's
architecture) is also trained on MILES ``train`` with fresh simulated noise
(S/N 2-50, random gaps) for N epochs, with and without zero-imputed gaps, and
scored on the same ``val`` observations; the best val epoch (of the mixed-S/N
val set) is kept.

Writes ``benchmarks/results/baselines_val.json``::

    python benchmarks/studies/tune_baselines.py [--library ../shared/data/miles/miles.fits]
        [--cdae-epochs 40] [--cdae-lr 1e-3] [--latent-dim 16] [--threads 1]
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
from specutils_deepclean.benchmarking.denoise import train_cdaes
from specutils_deepclean.datasets import load_library
from specutils_deepclean.metrics import mse
from specutils_deepclean.models.classical import (
    gaussian_smooth_baseline,
    median_smooth_baseline,
    wavelet_denoise,
)
from specutils_deepclean.simulate import SNR_LEVELS, Simulator, prepare_truth

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LIBRARY = REPO.parent / "shared" / "data" / "miles" / "miles.fits"
OUTPUT_JSON = REPO / "benchmarks" / "results" / "baselines_val.json"
WAVE_RANGE = (3600.0, 7400.0)
SEED = 0

#: Parameter grids: name -> (function, keyword, values).
GRIDS = {
    "gaussian": (
        lambda flux, missing, value: gaussian_smooth_baseline(flux, missing, value),
        "width",
        [
            0.5,
            0.75,
            1.0,
            1.5,
            2.0,
            3.0,
            4.0,
            6.0,
            8.0,
            12.0,
            16.0,
            24.0,
            32.0,
            48.0,
            64.0,
            96.0,
            128.0,
            192.0,
            256.0,
        ],
    ),
    "median": (
        lambda flux, missing, value: median_smooth_baseline(flux, missing, value),
        "width",
        [3, 5, 7, 9, 11, 15, 21, 31, 41, 61, 81, 121, 161, 241, 321, 481],
    ),
    "wavelet": (
        lambda flux, missing, value: wavelet_denoise(flux, missing, threshold_scale=value),
        "threshold_scale",
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0],
    ),
}


def median_mse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Median over spectra of the MSE against the truth on its valid (finite) pixels."""
    return float(np.median(mse(pred, truth)))


def observe_val(sim: Simulator, truth: np.ndarray) -> dict:
    """One observation of every val star at each protocol S/N."""
    return {snr: sim.observe(truth, snr, seed=SEED + i) for i, snr in enumerate(SNR_LEVELS)}


def tune(observations: dict) -> dict:
    """Grid-search every classical baseline at every S/N."""
    result = {}
    for name, (function, keyword, values) in GRIDS.items():
        start = time.perf_counter()
        per_snr = {}
        for snr, obs in observations.items():
            curve = [median_mse(function(obs.flux, obs.mask, v), obs.truth) for v in values]
            best = int(np.argmin(curve))
            per_snr[str(snr)] = {
                keyword: values[best],
                "val_median_mse": curve[best],
                "curve": curve,
            }
            print(
                f"{name:8s} S/N {snr:3g}: {keyword}={values[best]!s:5s} "
                f"median MSE {curve[best]:.3g}"
            )
        result[name] = {
            "parameter": keyword,
            "grid": values,
            "per_snr": per_snr,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return result


def train_cdae(lib, grid, medium, sim, observations, epochs, latent_dim, lr) -> dict:
    """Train both CDAE variants on ``train`` and score them on the val observations."""
    train_truth, _ = prepare_truth(lib.select(split="train", good=True), grid, medium)
    mixed = [observations[snr] for snr in SNR_LEVELS]
    val = tuple(
        np.concatenate([getattr(obs, key) for obs in mixed]) for key in ("flux", "mask", "truth")
    )
    trained = train_cdaes(
        train_truth, sim, val, epochs=epochs, latent_dim=latent_dim, lr=lr, seed=SEED
    )
    out = {}
    for key, (model, seconds) in trained.items():
        scores = {
            str(snr): median_mse(model.reconstruct(obs.flux, obs.mask), obs.truth)
            for snr, obs in observations.items()
        }
        print(f"{key}: {scores}")
        out[key] = {
            "latent_dim": latent_dim,
            "architecture": {k: v for k, v in model.config.items() if k != "architecture"},
            "epochs": epochs,
            "lr": lr,
            "best_epoch": model.best_epoch,
            "history": model.history,
            "val_median_mse": scores,
            "train_seconds": round(seconds, 1),
        }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", type=Path, default=DEFAULT_LIBRARY)
    parser.add_argument("--json-out", type=Path, default=OUTPUT_JSON)
    parser.add_argument("--cdae-epochs", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--cdae-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    lib = load_library(args.library)
    wave = lib.wavelength.value
    grid = wave[(wave >= WAVE_RANGE[0]) & (wave <= WAVE_RANGE[1])]
    val_lib = lib.select(split="val", good=True)
    truth, _ = prepare_truth(val_lib, grid, lib.medium)
    sim = Simulator(grid, lib.medium, fwhm=lib.fwhm)
    observations = observe_val(sim, truth)
    result = {
        "benchmark": "baselines_val",
        "package_version": __version__,
        "library": os.path.relpath(args.library.resolve(), REPO),
        "split": "val",
        "n_spectra": len(val_lib),
        "wave_range_angstrom": list(WAVE_RANGE),
        "n_pix": len(grid),
        "medium": lib.medium,
        "seed": SEED,
        "observations": "simulator defaults (sky residual, cosmics, correlated noise), "
        "no gap, no tellurics; seed SEED + index of the S/N",
        "score": "median over val spectra of the MSE against the truth on valid pixels",
        "snr": list(SNR_LEVELS),
        "noisy_val_median_mse": {
            str(snr): median_mse(obs.flux, obs.truth) for snr, obs in observations.items()
        },
        "wavelet_settings": {"wavelet": "sym8", "mode": "soft", "level": "max"},
        "baselines": tune(observations),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    if args.cdae_epochs:
        result["baselines"].update(
            train_cdae(
                lib,
                grid,
                lib.medium,
                sim,
                observations,
                args.cdae_epochs,
                args.latent_dim,
                args.cdae_lr,
            )
        )
    result["chosen"] = {
        name: {snr: entry[keyword] for snr, entry in result["baselines"][name]["per_snr"].items()}
        for name, (_, keyword, _) in GRIDS.items()
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")
    return result


if __name__ == "__main__":
    main()
