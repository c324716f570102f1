"""Several exposures of one star in one posterior against one exposure and a co-add.

Stars of one split (default ``test``), each Doppler-shifted by a velocity drawn
uniformly in +-``--vmax`` km/s (the same for all its exposures: one night), observed
through the simulator ``n`` times (``--exposures``, default 2 and 4) at a per-exposure
S/N (``--snr``, default 2, 5 and 10), each exposure with its own noise, sky-subtraction
residual and cosmic-ray hits (the simulator's defaults, its own seed).  The shipped
denoiser fits the velocities (``velocity=None``, range ``--velocity-range``, default
``denoise``'s; ``--velocity true`` fixes them at the truth, a diagnostic), as
``denoise`` does, in four ways:

* ``joint``: the n exposures in one posterior (``denoise_arrays`` with a (B, n, P)
  flux: one velocity per exposure, shared (z, C)), the output in the first
  exposure's frame;
* ``equivalent``: one exposure at the co-added S/N, sqrt(n) times the per-exposure
  S/N;
* ``coadd``: the inverse-variance co-add of the n exposures (sigma from the summed
  weights, cosmics and all), denoised as one spectrum;
* ``single``: the first exposure alone (computed once per S/N).

Design (``--design``).  ``paired`` (the default): the equivalent exposure's Gaussian
noise and sky-subtraction residual are the mean of those of the n exposures (the
simulator's sigma scales as 1 / S/N, so this mean is exactly a draw of the noise at
sqrt(n) times the S/N: the exposures' exact co-add), its cosmic-ray hits its own
draw at its S/N.  So ``joint``, ``equivalent`` and ``coadd`` see the same noise, and
their ratio measures the method, not the draw; ``coadd`` differs from
``equivalent`` only by the n exposures' hits.  ``independent``: the equivalent
exposure draws its own noise (the design before; the ratio then carries the
difference of two draws, a 90 % interval about +-0.1 on 141 stars).
``--realisations R`` observes every star R times (R independent sets of exposures
and equivalents, seeds 100000 apart; the first set is the one of R = 1); every
statistic runs over the (star, realisation) pairs, and the bootstrap resamples stars
with all their realisations.

Per run: the median over the (star, realisation) pairs of the MSE against the truth in
the observed frame (normalised flux, pixels where both are defined), the calibration
of the output uncertainty (share of pixels with ``|truth - output| < sigma``, pooled
and the median over stars), the median ``|v - v_true|`` of the first exposure, its
median error and the share of stars within it, the share flagged out of distribution
and the seconds; for ``joint``, its win rate against ``equivalent`` and ``coadd``
(share of pairs with a smaller MSE), the ratio of its median MSE to theirs, the
median of the per-pair ratios (with the paired design, the statistic with the
narrowest interval) and the ratio of the mean MSEs, each with a bootstrap 90 %
interval over the stars.

    python benchmarks/benchmarks/bench_exposures.py --split test --threads 1 \
        --realisations 2 --json benchmarks/results/exposures_test.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import torch

from specutils_deepclean import metrics
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.manipulation import DEFAULT_VELOCITY_RANGE
from specutils_deepclean.simulate import Simulator

from _common import header, load_stars, star_parser


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
    velocity = v_true if args.velocity == "true" else None
    start = time.perf_counter()
    out = denoise_arrays(
        model,
        flux,
        sigma,
        mask,
        velocity=velocity,
        velocity_range=args.velocity_range,
        generator=torch.Generator().manual_seed(0),
    )
    return score(out, truth, v_true, time.perf_counter() - start)


def compare(joint: dict, other: dict, n_stars: int) -> dict:
    """Win rate and MSE ratios of ``joint`` against ``other``: of the medians over the
    stars, the median of the per-star (paired) ratios, of the means, each with its
    bootstrap 90 % interval (the stars resampled with all their noise realisations,
    2000 times, a fixed seed)."""
    a = np.asarray(joint["mse"]).reshape(-1, n_stars)
    b = np.asarray(other["mse"]).reshape(-1, n_stars)
    draws = np.random.default_rng(0).integers(0, n_stars, (2000, n_stars))
    a_draws, b_draws = a[:, draws], b[:, draws]  # (realisations, 2000, stars)

    def interval(values):
        return [float(x) for x in np.percentile(values, [5, 95])]

    return {
        "win_rate": float(np.mean(a < b)),
        "median_mse_ratio": joint["median_mse"] / other["median_mse"],
        "median_mse_ratio_90": interval(
            np.median(a_draws, (0, 2)) / np.median(b_draws, (0, 2))
        ),
        "median_paired_ratio": float(np.median(a / b)),
        "median_paired_ratio_90": interval(np.median(a_draws / b_draws, (0, 2))),
        "mean_mse_ratio": float(a.mean() / b.mean()),
        "mean_mse_ratio_90": interval(a_draws.mean((0, 2)) / b_draws.mean((0, 2))),
    }


def observe(sim, clean, snr, v_true, seed: int):
    """An observation of every star (its own noise, sky residual and cosmic-ray hits),
    and its noise without the hits: the same observation without them (same seed, so
    the same Gaussian noise and sky residual) less the truth."""
    hit = sim.observe(clean, snr, seed=seed, stellar_rv=v_true)
    clear = sim.observe(clean, snr, seed=seed, stellar_rv=v_true, cosmics=False)
    return hit, clear.flux - clear.truth


def equivalent(sim, clean, snr, v_true, seed: int, noise) -> list:
    """Flux, sigma and mask of one exposure at S/N ``snr`` (``sqrt(n)`` times the
    exposures'): with ``noise`` (the n exposures' Gaussian noise and sky residuals,
    (n, B, P)), the truth plus their mean, the hits its own; else its own draw."""
    alone, own = observe(sim, clean, snr, v_true, seed)
    flux = alone.flux if noise is None else alone.flux - own + noise.mean(0)
    return [flux, alone.sigma, alone.mask]


def draw(args, sim, clean, snr: float, v_true, seed: int) -> tuple:
    """The exposures of every star, ``args.realisations`` times: a dict of (R B, n, P)
    flux, sigma, mask and the (R B, P) truth, and the equivalent exposures of each n
    (realisation r: rows r B to (r + 1) B - 1, seeds ``seed + 100000 r`` on)."""
    sets = [
        [
            observe(sim, clean, snr, v_true, seed + 100000 * r + j)
            for j in range(max(args.exposures))
        ]
        for r in range(args.realisations)
    ]
    exposures = {
        key: np.concatenate([np.stack([getattr(o, key) for o, _ in one], 1) for one in sets])
        for key in ("flux", "sigma", "mask")
    }
    exposures["truth"] = np.concatenate([one[0][0].truth for one in sets])
    alone = {}
    for n in args.exposures:
        parts = [
            equivalent(
                sim, clean, snr * np.sqrt(n), v_true, seed + 100000 * r + 100 + n,
                np.stack([noise for _, noise in one[:n]]) if args.design == "paired" else None,
            )
            for r, one in enumerate(sets)
        ]
        alone[n] = [np.concatenate(x) for x in zip(*parts, strict=True)]
    return exposures, alone


def run_all(args, model, sim, truth, valid) -> dict:
    rng = np.random.default_rng(args.seed)
    n_stars = truth.shape[0]
    v_star = rng.uniform(-args.vmax, args.vmax, n_stars)
    v_true = np.tile(v_star, args.realisations)
    clean = np.where(valid, truth, np.nan)
    out = {}
    for i, snr in enumerate(args.snr):
        exposures, alone = draw(args, sim, clean, snr, v_star, args.seed + 1000 * (i + 1))
        truth_obs = exposures["truth"]
        flux, sigma, mask = (exposures[key] for key in ("flux", "sigma", "mask"))
        entry = {"single": run(model, flux[:, 0], sigma[:, 0], mask[:, 0], truth_obs, v_true, args)}
        for n in args.exposures:
            some = flux[:, :n], sigma[:, :n], mask[:, :n]
            row = {
                "joint": run(model, *some, truth_obs, v_true, args),
                "equivalent": run(model, *alone[n], truth_obs, v_true, args),
                "coadd": run(model, *coadd(*some), truth_obs, v_true, args),
            }
            row["joint_vs_equivalent"] = compare(row["joint"], row["equivalent"], n_stars)
            row["joint_vs_coadd"] = compare(row["joint"], row["coadd"], n_stars)
            entry[f"n{n}"] = row
            summary = {
                k: (v["median_mse"], v["calibration_pooled"], v["median_abs_dv"])
                for k, v in row.items()
                if "median_mse" in v
            }
            ratio = row["joint_vs_equivalent"]
            print(
                f"snr {snr} n {n}", json.dumps(summary), round(ratio["median_paired_ratio"], 3),
                np.round(ratio["median_paired_ratio_90"], 3).tolist(), flush=True,
            )
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
    parser.add_argument(
        "--design",
        choices=["paired", "independent"],
        default="paired",
        help="the equivalent exposure's noise: the mean of the exposures' (paired) or its own",
    )
    parser.add_argument(
        "--realisations", type=int, default=1, help="noise realisations per star (>= 1)"
    )
    parser.add_argument(
        "--velocity",
        choices=["fitted", "true"],
        default="fitted",
        help="velocities fitted (as denoise does) or fixed at the truth (a diagnostic)",
    )
    args = parser.parse_args(argv)
    if min(args.exposures) < 2 or min(args.snr) <= 0 or args.realisations < 1:
        parser.error("--exposures must be >= 2, --snr positive and --realisations >= 1")
    model, wave, stars, truth, valid = load_stars(args)
    start = time.perf_counter()
    result = {
        **header("bench_exposures.py", argv, args),
        "n_spectra": int(len(stars)),
        "velocity_range_kms": args.velocity_range,
        "design": args.design,
        "realisations": args.realisations,
        "velocity": args.velocity,
        "note": "seconds measured on a 2-core machine shared with other jobs",
        "snr": run_all(args, model, Simulator(wave, model.medium), truth, valid),
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
