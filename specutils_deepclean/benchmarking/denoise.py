"""Denoising benchmark protocol: the shipped denoiser against the baselines.

Stars of one split of a library file (MILES layout) are put on the denoiser's grid,
median-normalised (the truth), and observed through the simulator at S/N 2, 5, 10,
20, 50 (heteroscedastic noise, sky residuals, cosmics, correlated noise).  Methods:

* ``deepclean``: the deep Bayesian model, MAP of (z, C) (``Denoiser.map_estimate``,
  at most ``--steps`` Newton steps per class, ``--starts`` starts per class,
  ``--tol``, ``--margin`` and ``--clip`` its ``tol``, ``class_margin`` and ``clip``);
* ``gaussian``, ``median``, ``wavelet``: the classical baselines with the widths /
  thresholds chosen on ``val`` (``--baselines``, by default
  ``benchmarks/results/baselines_val.json`` of the repository);
* ``pca``: projection onto the shipped ``miles-pca`` components (fit on train), the
  number of components chosen here per S/N on ``val`` observations.

* with ``--cdae-epochs N``: ``cdae`` and ``cdae_zero_impute``, the paper's
  convolutional denoising autoencoder (`~specutils_deepclean.training.cdae.train_cdae`,
  the generator's architecture and latent size) and its zero-imputed-gap variant,
  trained here on ``train`` for N epochs with the best epoch on simulated ``val``
  observations kept (:func:`train_cdaes`).

Per spectrum: MSE against the truth over valid pixels; per class and
S/N the win rate of ``deepclean`` against each baseline; median MSE; DER_SNR before
and after; calibration of the denoiser's uncertainty; MAP class accuracy.  The
per-spectrum MSE of every method and DER_SNR before/after are kept in the JSON (for
the figures of ``benchmarks/figures/denoise_figures.py``), with each star's class.  With
``--gaps N``, the median MSE at S/N 10 for every gap width and place on N stars, and
the calibration of the uncertainty over the gap's pixels (the filled ones).

    specutils-deepclean benchmark denoise --split test --json denoise_test.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..datasets import load_library
from ..inference import denoise_arrays
from ..io.models import load_model
from ..models.classical import (
    gaussian_smooth_baseline,
    median_smooth_baseline,
    wavelet_denoise,
)
from ..simulate import (
    GAP_PLACES,
    GAP_WIDTHS,
    SNR_LEVELS,
    Simulator,
    gap_slice,
    prepare_truth,
)
from ..spectra import median_normalise
from .grouping import win_rates_by

PCA_K = (3, 5, 10, 20, 40)


def observe(sim, truth, valid, snr, seed, gap=None):
    obs = sim.observe(np.where(valid, truth, np.nan), snr, seed=seed, gap=gap)
    return obs.flux, obs.sigma, obs.mask


def deepclean(model, flux, sigma, missing, args):
    """MAP denoising as `~specutils_deepclean.denoise` runs it (`denoise_arrays`)."""
    out = denoise_arrays(
        model,
        flux,
        sigma,
        missing,
        steps=args.steps,
        n_starts=args.starts,
        tol=args.tol,
        class_margin=args.margin,
        clip=args.clip or None,
        generator=torch.Generator().manual_seed(args.seed),
        # the benchmark's stars are at rest; the speed benchmark may fit the velocity
        velocity=None if getattr(args, "fit_velocity", False) else 0.0,
    )
    return out.map, out.flux, out.flux_sigma


def baselines(flux, missing, snr, chosen, pca, pca_k, cdaes=None):
    key = str(int(snr))
    out = {
        "gaussian": gaussian_smooth_baseline(flux, missing, float(chosen["gaussian"][key])),
        "median": median_smooth_baseline(flux, missing, int(chosen["median"][key])),
        "wavelet": wavelet_denoise(flux, missing, threshold_scale=float(chosen["wavelet"][key])),
        "pca": pca.truncate(pca_k).reconstruct(flux, missing),
    }
    for name, cdae in (cdaes or {}).items():
        normalised, scale = median_normalise(flux, missing)
        out[name] = cdae.reconstruct(normalised, missing) * scale[:, None]
    return out


def train_cdaes(train_truth, sim, val, *, epochs: int, latent_dim: int, lr: float, seed: int):
    """The paper's baseline, both variants, on ``train``; the best epoch on ``val`` kept.

    Parameters
    ----------
    train_truth : ndarray, shape (n, P)
        Clean median-normalised train stars (NaN where not valid).
    sim : `~specutils_deepclean.simulate.Simulator`
        The observation simulator (fresh noise every epoch).
    val : tuple
        ``(flux, missing, truth)`` of fixed val observations.
    epochs, latent_dim, lr, seed
        As for `~specutils_deepclean.training.cdae.train_cdae`.

    Returns
    -------
    dict
        ``"cdae"`` and ``"cdae_zero_impute"`` (the Section 4.2 variant): (model, seconds).
    """
    from ..training.cdae import train_cdae

    out = {}
    for zero_impute in (False, True):
        start = time.perf_counter()
        model = train_cdae(
            train_truth,
            simulator=sim,
            latent_dim=latent_dim,
            snr_range=(2.0, 50.0),
            epochs=epochs,
            batch_size=32,
            lr=lr,
            seed=seed,
            val=val,
            zero_impute=zero_impute,
            device="cpu",
        )
        name = "cdae_zero_impute" if zero_impute else "cdae"
        out[name] = (model, time.perf_counter() - start)
    return out


def _rounded(values) -> list:
    """Per-spectrum values for the JSON: 4 significant digits, NaN as None."""
    return [None if not np.isfinite(v) else float(f"{v:.4g}") for v in np.asarray(values)]


def choose_pca_k(sim, pca, val_truth, val_valid, seed) -> dict:
    best = {}
    for i, snr in enumerate(SNR_LEVELS):
        flux, _, missing = observe(sim, val_truth, val_valid, snr, seed + 100 + i)
        scores = {
            k: float(
                np.nanmedian(
                    metrics.mse(
                        pca.truncate(k).reconstruct(flux, missing), val_truth, mask=~val_valid
                    )
                )
            )
            for k in PCA_K
        }
        best[str(snr)] = min(scores, key=scores.get)
    return best


def main(argv=None) -> int:
    """``specutils-deepclean benchmark denoise``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean benchmark denoise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--library", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="denoiser-miles")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--tol", type=float, default=5e-2, help="map_estimate tol (nats)")
    parser.add_argument("--margin", type=float, default=10.0, help="map_estimate class_margin")
    parser.add_argument(
        "--clip", type=float, default=5.0, help="map_estimate clip (0: keep every pixel)"
    )
    parser.add_argument("--gaps", type=int, default=0, help="stars for the gap runs (0: none)")
    parser.add_argument(
        "--cdae-epochs", type=int, default=0, help="train the CDAE baselines (0: leave out)"
    )
    parser.add_argument("--cdae-lr", type=float, default=1e-4, help="CDAE Adam learning rate")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--limit", type=int, default=0, help="first N stars only (smoke tests)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--baselines",
        default="benchmarks/results/baselines_val.json",
        help="JSON of the classical baselines' settings tuned on val (tune_baselines.py)",
    )
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    library = load_library(args.library)
    wave = model.wavelength.to_value("Angstrom")
    stars = library.select(split=args.split, good=True)
    if args.limit:
        stars = stars.take(np.arange(min(args.limit, len(stars))))
    truth, valid = prepare_truth(stars, wave, model.medium)
    merges = dict(model.prior.merges)
    labels = np.array([merges.get(c, c) for c in np.asarray(stars.params["class"]).astype(str)])
    val = library.select(split="val", good=True)
    val_truth, val_valid = prepare_truth(val, wave, model.medium)
    sim = Simulator(wave, model.medium)
    pca = load_model("miles-pca")
    if not np.allclose(pca.wavelength.to_value("Angstrom"), wave):
        raise ValueError("miles-pca and the denoiser must share their grid")
    if not Path(args.baselines).is_file():
        raise FileNotFoundError(
            f"{args.baselines} not found: the classical baselines' settings tuned on val, "
            "written by benchmarks/studies/tune_baselines.py (pass --baselines)"
        )
    chosen = json.loads(Path(args.baselines).read_text())["chosen"]
    pca_k = choose_pca_k(sim, pca, val_truth, val_valid, args.seed)
    cdaes, cdae_info = {}, {}
    if args.cdae_epochs:
        train_truth, _ = prepare_truth(
            library.select(split="train", good=True), wave, model.medium
        )
        observed = [
            sim.observe(np.where(val_valid, val_truth, np.nan), snr, seed=args.seed + 200 + i)
            for i, snr in enumerate(SNR_LEVELS)
        ]
        val_set = tuple(
            np.concatenate([getattr(obs, key) for obs in observed])
            for key in ("flux", "mask", "truth")
        )
        trained = train_cdaes(
            train_truth,
            sim,
            val_set,
            epochs=args.cdae_epochs,
            latent_dim=model.latent_dim,
            lr=args.cdae_lr,
            seed=args.seed,
        )
        for name, (cdae, seconds) in trained.items():
            cdaes[name] = cdae
            cdae_info[name] = {
                "epochs": args.cdae_epochs,
                "lr": args.cdae_lr,
                "latent_dim": model.latent_dim,
                "best_epoch": cdae.best_epoch,
                "val_history": cdae.history["val"],
                "train_seconds": round(seconds, 1),
            }

    result = {
        "command": "specutils-deepclean benchmark denoise "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "library": str(library.path),
        "split": args.split,
        "n_spectra": int(len(stars)),
        "model": args.model,
        "steps": args.steps,
        "starts": args.starts,
        "tol": args.tol,
        "margin": args.margin,
        "clip": args.clip or None,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "baseline_settings": {**chosen, "pca_components": pca_k, "cdae": cdae_info},
        "classes": labels.tolist(),
        "snr": {},
    }
    seconds, count = 0.0, 0
    for i, snr in enumerate(SNR_LEVELS):
        flux, sigma, missing = observe(sim, truth, valid, snr, args.seed + i)
        start = time.perf_counter()
        fit, pred, pred_sigma = deepclean(model, flux, sigma, missing, args)
        seconds += time.perf_counter() - start
        count += len(flux)
        errors = {"deepclean": metrics.mse(pred, truth, mask=~valid)}
        for name, values in baselines(
            flux, missing, snr, chosen, pca, pca_k[str(snr)], cdaes
        ).items():
            errors[name] = metrics.mse(values, truth, mask=~valid)
        calib = metrics.calibration(pred, pred_sigma, truth, mask=~valid)
        predicted = np.array(fit.class_names)[fit.map_class]
        entry = {
            "median_mse": {k: float(np.nanmedian(v)) for k, v in errors.items()},
            "noisy_median_mse": float(
                np.nanmedian(metrics.mse(flux, truth, mask=~valid | missing))
            ),
            "win_rate": {
                k: float(metrics.win_rate(errors["deepclean"], v))
                for k, v in errors.items()
                if k != "deepclean"
            },
            "win_rate_by_class": {
                k: {
                    c: float(w)
                    for c, w in win_rates_by(errors["deepclean"], v, labels).items()
                }
                for k, v in errors.items()
                if k != "deepclean"
            },
            "der_snr_before_median": float(np.nanmedian(metrics.der_snr_array(flux, mask=missing))),
            "der_snr_after_median": float(np.nanmedian(metrics.der_snr_array(pred))),
            "calibration_pooled": float(calib.pooled),
            "calibration_median": float(np.nanmedian(calib.per_spectrum)),
            "class_accuracy": float(np.mean(predicted == labels)),
            "mse_per_spectrum": {k: _rounded(v) for k, v in errors.items()},
            "der_snr_before": _rounded(metrics.der_snr_array(flux, mask=missing)),
            "der_snr_after": _rounded(metrics.der_snr_array(pred)),
        }
        result["snr"][str(snr)] = entry
        print(
            snr,
            json.dumps(
                {
                    k: entry[k]
                    for k in ("median_mse", "win_rate", "calibration_pooled", "class_accuracy")
                }
            ),
            flush=True,
        )
    result["spectra_per_second"] = count / seconds
    if args.gaps:
        rows = np.linspace(0, len(stars) - 1, min(args.gaps, len(stars))).astype(int)
        sub_truth, sub_valid = truth[rows], valid[rows]
        flux, sigma, missing = observe(sim, sub_truth, sub_valid, 10, args.seed + 50)
        _, pred, _ = deepclean(model, flux, sigma, missing, args)
        gaps = {"none": float(np.nanmedian(metrics.mse(pred, sub_truth, mask=~sub_valid)))}
        inside = {}
        for width in GAP_WIDTHS:
            for place in GAP_PLACES:
                flux, sigma, missing = observe(
                    sim, sub_truth, sub_valid, 10, args.seed + 50, gap=(width, place)
                )
                _, pred, pred_sigma = deepclean(model, flux, sigma, missing, args)
                key = f"{width}_{place}"
                gaps[key] = float(np.nanmedian(metrics.mse(pred, sub_truth, mask=~sub_valid)))
                in_gap = np.zeros(wave.size, bool)
                in_gap[gap_slice(width, place, wave.size)] = True
                inside[key] = metrics.calibration(
                    pred, pred_sigma, sub_truth, mask=~sub_valid | ~in_gap
                ).pooled
                print(width, place, gaps[key], inside[key], flush=True)
        result["gaps_snr10"] = {
            "n_spectra": int(len(rows)),
            "median_mse": gaps,
            "calibration_in_gap": inside,
        }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
