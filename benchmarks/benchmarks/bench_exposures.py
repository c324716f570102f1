"""Several exposures of one star in one posterior against one exposure and a co-add.

Stars of one split (default ``test``), each Doppler-shifted by a velocity drawn
uniformly in +-``--vmax`` km/s (the same for all its exposures: one night), observed
through the simulator ``n`` times (``--exposures``, default 2 and 4) at a per-exposure
S/N (``--snr``, default 2, 5 and 10), each exposure with its own noise, sky-subtraction
residual and cosmic-ray hits (the simulator's defaults, its own seed).  The shipped
denoiser fits the velocities (``velocity=None``, range ``--velocity-range``, default
``denoise``'s), as ``denoise`` does, in four ways:

* ``joint``: the n exposures in one posterior (``denoise_arrays`` with a (B, n, P)
  flux: one velocity per exposure, shared (z, C)), the output in the first
  exposure's frame;
* ``equivalent``: one exposure at the co-added S/N, sqrt(n) times the per-exposure
  S/N (its own noise draw);
* ``coadd``: the inverse-variance co-add of the n exposures (sigma from the summed
  weights, cosmics and all), denoised as one spectrum;
* ``single``: the first exposure alone (computed once per S/N).

Per run: the median over the stars of the MSE against the truth in the observed frame
(normalised flux, pixels where both are defined), the calibration of the output
uncertainty (share of pixels with ``|truth - output| < sigma``, pooled and the
median over stars), the median ``|v - v_true|`` of the first exposure, its median
error and the share of stars within it, the share flagged out of distribution and the
seconds; for ``joint``, its win rate against ``equivalent`` and ``coadd`` (share of
stars with a smaller MSE), the ratio of its median MSE to theirs with a bootstrap 90 %
interval over the stars, the median per-star ratio and the ratio of the mean MSEs.

    python benchmarks/benchmarks/bench_exposures.py --split test --threads 1 \
        --json benchmarks/results/exposures_test.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import torch

from _common import header, load_stars, star_parser

from specutils_deepclean import metrics
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.manipulation import DEFAULT_VELOCITY_RANGE
from specutils_deepclean.simulate import Simulator


def coadd(flux: np.ndarray, sigma: np.ndarray, mask: np.ndarray) -> tuple:
    """Inverse-variance co-add of (B, n, P) exposures: flux, sigma and mask (B, P)."""
    weight = np.where(mask, 0.0, 1 / np.where(mask, 1.0, sigma) ** 2)
    total = weight.sum(1)
    gone = total == 0
    safe = np.where(gone, 1.0, total)
    mean = np.where(gone, np.nan, (np.nan_to_num(flux) * weight).sum(1) / safe)
    return mean, np.where(gone, np.nan, 1 / np.sqrt(safe)), gone


def score(out, truth: np.ndarray, v_true: np.ndarray, seconds: float) -> dict:
    """The metrics of one run (``out`` from `denoise_arrays`) against the truth."""
    pred, sigma = out.flux, out.flux_sigma
    bad = ~np.isfinite(truth) | ~np.isfinite(pred) | ~np.isfinite(sigma)
    mse = metrics.mse(np.where(bad, 0, pred), np.where(bad, 0, truth), mask=bad)
    calib = metrics.calibration(
        np.where(bad, 0, pred), np.where(bad, 1, sigma), np.where(bad, 0, truth), mask=bad
    )
    dv = np.abs(out.map.velocity[:, 0] - v_true)
    return {
        "median_mse": float(np.median(mse)),
        "calibration_pooled": float(calib.pooled),
        "calibration_median": float(np.median(calib.per_spectrum)),
        "median_abs_dv": float(np.median(dv)),
        "median_velocity_error": float(np.median(out.map.velocity_error[:, 0])),
        "velocity_within_error": float(np.mean(dv < out.map.velocity_error[:, 0])),
        "ood_flagged": float(np.mean(out.map.ood_flag)),
        "seconds": round(seconds, 1),
        "mse": [float(f"{x:.4g}") for x in mse],
    }


def run(model, flux, sigma, mask, truth, v_true, args) -> dict:
    start = time.perf_counter()
    out = denoise_arrays(
        model,
        flux,
        sigma,
        mask,
        velocity=None,
        velocity_range=args.velocity_range,
        generator=torch.Generator().manual_seed(0),
    )
    return score(out, truth, v_true, time.perf_counter() - start)


def compare(joint: dict, other: dict) -> dict:
    """Win rate and MSE ratios of ``joint`` against ``other``, with the median ratio's
    bootstrap 90 % interval (the stars resampled, 2000 times, a fixed seed)."""
    a, b = np.asarray(joint["mse"]), np.asarray(other["mse"])
    draws = np.random.default_rng(0).integers(0, a.size, (2000, a.size))
    ratios = np.median(a[draws], 1) / np.median(b[draws], 1)
    return {
        "win_rate": float(np.mean(a < b)),
        "median_mse_ratio": joint["median_mse"] / other["median_mse"],
        "median_mse_ratio_90": [float(x) for x in np.percentile(ratios, [5, 95])],
        "median_paired_ratio": float(np.median(a / b)),
        "mean_mse_ratio": float(a.mean() / b.mean()),
    }


def run_all(args, model, sim, truth, valid) -> dict:
    rng = np.random.default_rng(args.seed)
    v_true = rng.uniform(-args.vmax, args.vmax, truth.shape[0])
    clean = np.where(valid, truth, np.nan)
    out = {}
    for i, snr in enumerate(args.snr):
        seed = args.seed + 1000 * (i + 1)
        exposures = [
            sim.observe(clean, snr, seed=seed + j, stellar_rv=v_true)
            for j in range(max(args.exposures))
        ]
        truth_obs = exposures[0].truth
        first = exposures[0]
        entry = {"single": run(model, first.flux, first.sigma, first.mask, truth_obs, v_true, args)}
        for n in args.exposures:
            flux = np.stack([e.flux for e in exposures[:n]], 1)
            sigma = np.stack([e.sigma for e in exposures[:n]], 1)
            mask = np.stack([e.mask for e in exposures[:n]], 1)
            alone = sim.observe(clean, snr * np.sqrt(n), seed=seed + 100 + n, stellar_rv=v_true)
            row = {
                "joint": run(model, flux, sigma, mask, truth_obs, v_true, args),
                "equivalent": run(
                    model, alone.flux, alone.sigma, alone.mask, truth_obs, v_true, args
                ),
                "coadd": run(model, *coadd(flux, sigma, mask), truth_obs, v_true, args),
            }
            row["joint_vs_equivalent"] = compare(row["joint"], row["equivalent"])
            row["joint_vs_coadd"] = compare(row["joint"], row["coadd"])
            entry[f"n{n}"] = row
            summary = {
                k: (v["median_mse"], v["calibration_pooled"], v["median_abs_dv"])
                for k, v in row.items()
                if "median_mse" in v
            }
            print(f"snr {snr} n {n}", json.dumps(summary), flush=True)
        out[str(snr)] = entry
    return out


def main(argv=None) -> int:
    parser = star_parser(__doc__, seed=2031)
    parser.add_argument("--snr", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--exposures", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--velocity-range",
        type=float,
        default=float(DEFAULT_VELOCITY_RANGE.to_value(u.km / u.s)),
        help="the denoiser's velocity search range, km/s",
    )
    args = parser.parse_args(argv)
    if min(args.exposures) < 2 or min(args.snr) <= 0:
        parser.error("--exposures must be >= 2 and --snr positive")
    model, wave, stars, truth, valid = load_stars(args)
    start = time.perf_counter()
    result = {
        **header("bench_exposures.py", argv, args),
        "n_spectra": int(len(stars)),
        "velocity_range_kms": args.velocity_range,
        "note": "seconds measured on a 2-core machine shared with other jobs",
        "snr": run_all(args, model, Simulator(wave, model.medium), truth, valid),
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
