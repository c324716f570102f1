"""Train the shipped deep Bayesian denoiser (Kang et al.) on MILES.

Every component is fitted on the good MILES ``train`` stars and tuned on ``val``
(the test split is never read), on the MILES grid clipped to 3600-7400 Angstrom (air):

1. the isometric autoencoder generator (``fit_generator``, Eq. 10) on the clean,
   median-normalised train spectra, best val epoch kept;
2. one Gaussian KDE per stellar class of the train latents (``fit_kde``), bandwidth
   by held-out likelihood on the val latents; classes with too few stars merged;
3. the sigma-whitened NoiseFlow (``fit_noiseflow``) on simulator residuals
   ``(y - truth)`` of train stars at S/N 2-50 (sky residuals, cosmics, correlated
   noise), validated on val stars;
4. the assembled ``Denoiser``, with the generator's per-pixel RMS error on clean val
   spectra (``extra["generator_sigma"]``, added to its uncertainty), scored on
   simulated val observations (median MSE, class accuracy, calibration) and written
   with the scores in its provenance.

    python benchmarks/train_denoiser.py --seed 0 \
        --output specutils_deepclean/pretrained/denoiser-miles.asdf \
        --json benchmarks/results/train_denoiser.json
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
from specutils_deepclean.kde import fit_kde
from specutils_deepclean.metrics import calibration, mse
from specutils_deepclean.models.denoiser import Denoiser
from specutils_deepclean.models.generator import fit_generator
from specutils_deepclean.models.noiseflow import fit_noiseflow
from specutils_deepclean.provenance import Provenance, file_sha256
from specutils_deepclean.simulate import SNR_LEVELS, Simulator, prepare_truth

WAVE_RANGE = (3600.0, 7400.0)


def split_data(library, wave, split):
    stars = library.select(split=split, good=True)
    truth, valid = prepare_truth(stars, wave, library.medium)
    labels = np.asarray(stars.params["class"]).astype(str)
    return truth, ~valid, labels


def residuals(sim, truth, missing, *, copies, seed):
    """Whitened-flow training data: (y - truth, sigma, missing) over the S/N levels."""
    flux, sigma, miss = [], [], []
    rng = np.random.default_rng(seed)
    clean = np.where(missing, np.nan, truth)
    for _ in range(copies):
        snr = rng.choice(SNR_LEVELS, size=len(truth)).astype(float)
        obs = sim.observe(clean, snr, seed=int(rng.integers(2**31)))
        flux.append(obs.flux - obs.truth)
        sigma.append(obs.sigma)
        miss.append(obs.mask)
    return np.concatenate(flux), np.concatenate(sigma), np.concatenate(miss)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--generator-epochs", type=int, default=150)
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = {}

    library = load_library(args.library)
    full = library.wavelength.value
    keep = (full >= WAVE_RANGE[0]) & (full <= WAVE_RANGE[1])
    wave = full[keep]
    train = split_data(library, wave, "train")
    val = split_data(library, wave, "val")

    start = time.perf_counter()
    gen = fit_generator(
        train[0],
        train[1],
        latent_dim=args.latent,
        val=(val[0], val[1]),
        epochs=args.generator_epochs,
        batch_size=32,
        lr=2e-3,
        isometry_weight=args.isometry_weight,
        delta=0.1,
        seed=args.seed,
        noise_augment=0.02,
        tilt_augment=0.05,
        progress=False,
    )
    times["generator_s"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        z_train = gen.encode(
            torch.as_tensor(np.nan_to_num(train[0], nan=1.0)), torch.as_tensor(train[1])
        ).numpy()
        z_val = gen.encode(
            torch.as_tensor(np.nan_to_num(val[0], nan=1.0)), torch.as_tensor(val[1])
        ).numpy()
    prior = fit_kde(z_train, train[2], bandwidth="cv", val_latents=z_val, val_labels=val[2])
    times["kde_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sim = Simulator(wave, library.medium)
    res_train = residuals(sim, *train[:2], copies=args.flow_copies, seed=args.seed + 1)
    res_val = residuals(sim, *val[:2], copies=1, seed=args.seed + 2)
    flow = fit_noiseflow(
        res_train[0],
        res_train[1],
        res_train[2],
        epochs=args.flow_epochs,
        seed=args.seed,
        val=res_val,
    )
    times["noiseflow_s"] = time.perf_counter() - start

    provenance = Provenance(
        data_name=library.name,
        data_path=str(library.path),
        data_sha256=file_sha256(library.path),
        data_description=(
            f"good MILES stars, grid {wave[0]:.1f}-{wave[-1]:.1f} Angstrom ({library.medium}); "
            "generator and KDE on clean train spectra, NoiseFlow on simulator residuals of "
            "train stars at S/N 2-50; tuned on val"
        ),
        split="train",
        seed=args.seed,
        script="benchmarks/train_denoiser.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    # The generator's own error on clean val spectra, per pixel: added in quadrature
    # to the latent-posterior uncertainty at inference (honest error bars at high S/N).
    with torch.no_grad():
        recon, _ = gen(torch.as_tensor(np.nan_to_num(val[0], nan=1.0)), torch.as_tensor(val[1]))
    residual = np.where(val[1], np.nan, recon.double().numpy() - val[0])
    generator_sigma = np.sqrt(np.nanmean(residual**2, axis=0))
    model = Denoiser.from_parts(
        gen,
        prior,
        {"whitened": flow},
        wavelength=wave * library.wavelength.unit,
        medium=library.medium,
        provenance=provenance,
        name="denoiser-miles",
        extra={"generator_sigma": generator_sigma.astype(np.float32)},
    )

    start = time.perf_counter()
    # An evenly spaced subset of val keeps the final scoring cheap (MAP is slow on a CPU).
    rows = np.linspace(0, len(val[0]) - 1, min(args.val_count, len(val[0]))).astype(int)
    val = tuple(part[rows] for part in val)
    obs = sim.observe(np.where(val[1], np.nan, val[0]), args.val_snr, seed=args.seed + 3)
    result = model.map_estimate(obs.flux, obs.sigma, obs.mask, steps=100, n_starts=2)
    times["val_inference_s"] = time.perf_counter() - start
    truth_mask = val[1]
    val_mse = float(np.nanmedian(mse(result.flux, val[0], mask=truth_mask)))
    val_calibration = calibration(result.flux, result.flux_sigma, val[0], mask=truth_mask).pooled
    names = np.array(result.class_names)
    accuracy = float(np.mean(names[result.map_class] == val[2]))
    metrics = {
        f"val_median_mse_snr{args.val_snr:g}": val_mse,
        f"val_class_accuracy_snr{args.val_snr:g}": accuracy,
        "val_spectra_scored": float(len(rows)),
        f"val_calibration_snr{args.val_snr:g}": float(val_calibration),
        "val_generator_floor_mse": float(min(gen.history["val"])),
        "val_noiseflow_nll": float(min(flow.history["val"])),
    }
    model.provenance = Provenance(**{**provenance.to_dict(), "metrics": metrics})
    path = save_model(model, args.output, overwrite=True)
    summary = {
        "output": str(path),
        "seed": args.seed,
        "latent_dim": args.latent,
        "classes": list(prior.class_names),
        "merges": dict(prior.merges),
        "n_train": int(len(train[0])),
        "n_val": int(len(val[0])),
        "metrics": metrics,
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "threads": args.threads,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
