"""Wide gaps: the denoiser's fill of a missing stretch against PCA-10's, and its uncertainty.

``--n-stars`` good stars of ``--split`` (spread evenly over it; 0: all), each divided
by its whole-grid median, are observed through
the simulator at S/N ``--snr`` (default 10) without a gap and with a gap of each
width in ``--widths`` (pixels; default the protocol's 100, 400, 800 and 40 % of the
grid) at each place (blue end, middle, red end), the same noise draw for every
gap.  Each is denoised as ``denoise`` does (``denoise_arrays``, at rest, velocity
fixed to 0; the ``denoise`` benchmark's MAP settings) and filled by ``pca``, the
shipped ``miles-pca`` truncated to 10 components (fit on train).  With ``--vmax V``
the stars are Doppler-shifted by velocities drawn uniformly in +-V km/s and the
velocity is fitted.

Per gap: the median over stars of the MSE over valid pixels (whole spectrum) and
over the gap's pixels only, for both methods, and the largest; the denoiser's
median MSE over the no-gap one; the win rate against PCA-10 over the gap's pixels;
the number of stars whose fill runs away (MSE over the gap above ``--runaway``, in
units of the whole-grid median flux), for both methods, and how many of the
denoiser's are flagged out of distribution; the same count scale-free (``--relative``,
0.5, fixed before any run: the RMS error over the gap above that share of the RMS of
the true flux there, which the median normalisation does not inflate where the gap is
bright) and every star's relative RMS error; the MSE over the gap of every star;
the coverage of the denoiser's 1-sigma uncertainty over the gap's pixels (pooled
and the median per star) and over the observed ones; the share flagged out of
distribution.  ``--min-missing`` sets `~specutils_deepclean.models.level.MIN_MISSING`
for the run (a study on ``val``); above 1 no spectrum is re-levelled: the denoiser
sees the input divided by the median of its observed pixels, as before
`~specutils_deepclean.models.level` existed.  ``--library-pull`` sets
`~specutils_deepclean.models.gap_fill.LIBRARY_PULL` (0: a wide gap's fill is not held
near the training library, as before `~specutils_deepclean.models.gap_fill.library_pull`
existed).

    python benchmarks/benchmarks/bench_gaps.py --split test --threads 1 \\
        --json benchmarks/results/gaps_test.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.datasets import load_library
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.io.models import load_model
from specutils_deepclean.models import gap_fill, level
from specutils_deepclean.simulate import GAP_PLACES, GAP_WIDTHS, Simulator, gap_slice, prepare_truth
from specutils_deepclean.spectra import median_normalise

from _common import header, star_parser


def denoised(model, obs, velocity, seed: int):
    """flux, sigma (input units) and the MAP result of one batch of observations."""
    out = denoise_arrays(
        model, obs.flux, obs.sigma, obs.mask, velocity=velocity,
        generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
    )  # fmt: skip
    return out.flux, out.flux_sigma, out.map


def _rounded(values) -> list:
    return [float(f"{v:.4g}") for v in np.asarray(values)]


def _median(values) -> float:
    return float(np.nanmedian(values))


def measure(model, pca, sim, truth, valid, rv, gap, args) -> dict:
    """The numbers of one gap (or none) over all stars."""
    obs = sim.observe(
        np.where(valid, truth, np.nan), args.snr, seed=args.seed, gap=gap, stellar_rv=rv
    )
    velocity = None if args.vmax else 0.0
    flux, sigma, fit = denoised(model, obs, velocity, args.seed)
    filled = pca.reconstruct(obs.flux, obs.mask)
    in_gap = np.zeros(truth.shape[1], bool)
    if gap is not None:
        in_gap[gap_slice(gap[0], gap[1], truth.shape[1])] = True
    row = {
        "median_mse": {
            "deepclean": _median(metrics.mse(flux, truth, mask=~valid)),
            "pca10": _median(metrics.mse(filled, truth, mask=~valid)),
        },
        "max_mse": {
            "deepclean": float(np.nanmax(metrics.mse(flux, truth, mask=~valid))),
            "pca10": float(np.nanmax(metrics.mse(filled, truth, mask=~valid))),
        },
        "calibration_observed": float(
            metrics.calibration(flux, sigma, truth, mask=~valid | in_gap).pooled
        ),
        "ood_rate": float(np.mean(fit.ood_flag)),
    }
    if gap is None:
        return row
    ours = metrics.mse(flux, truth, mask=~valid | ~in_gap)
    theirs = metrics.mse(filled, truth, mask=~valid | ~in_gap)
    power = metrics.mse(np.zeros_like(truth), truth, mask=~valid | ~in_gap)
    ours_rel, theirs_rel = np.sqrt(ours / power), np.sqrt(theirs / power)
    inside = metrics.calibration(flux, sigma, truth, mask=~valid | ~in_gap)
    row.update(
        {
            "median_mse_in_gap": {"deepclean": _median(ours), "pca10": _median(theirs)},
            "max_mse_in_gap": {
                "deepclean": float(np.nanmax(ours)),
                "pca10": float(np.nanmax(theirs)),
            },
            "win_rate_in_gap_vs_pca10": float(metrics.win_rate(ours, theirs)),
            "runaway": {"deepclean": int(np.sum(ours > args.runaway)),
                        "pca10": int(np.sum(theirs > args.runaway))},
            "runaway_flagged": int(np.sum((ours > args.runaway) & fit.ood_flag)),
            "runaway_relative": {"deepclean": int(np.sum(ours_rel > args.relative)),
                                 "pca10": int(np.sum(theirs_rel > args.relative))},
            "calibration_in_gap": float(inside.pooled),
            "calibration_in_gap_median": _median(inside.per_spectrum),
            "mse_in_gap_per_star": {"deepclean": _rounded(ours), "pca10": _rounded(theirs)},
            "relative_rms_in_gap_per_star": {
                "deepclean": _rounded(ours_rel), "pca10": _rounded(theirs_rel)
            },
        }
    )
    return row


def main(argv=None) -> int:
    parser = star_parser(__doc__, seed=2076)
    parser.set_defaults(vmax=0.0)
    parser.add_argument("--n-stars", type=int, default=30, help="0: every star of the split")
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument(
        "--widths", default="100,400,800,0.4",
        help="gap widths: pixels, or a share of the grid below 1",
    )  # fmt: skip
    parser.add_argument(
        "--runaway", type=float, default=0.1, help="a fill runs away above this MSE in the gap"
    )
    parser.add_argument(
        "--relative", type=float, default=0.5,
        help="a fill runs away (scale-free) above this RMS error over the gap's true RMS flux",
    )  # fmt: skip
    parser.add_argument(
        "--min-missing", type=float, default=level.MIN_MISSING,
        help="share of the grid missing from which the level is re-estimated (above 1: never)",
    )  # fmt: skip
    parser.add_argument(
        "--library-pull", type=float, default=gap_fill.LIBRARY_PULL,
        help="share of the way a wide gap's fill moves toward the training library (0: none)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    level.MIN_MISSING = args.min_missing
    gap_fill.LIBRARY_PULL = args.library_pull
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pca = load_model("miles-pca").truncate(10)
    wave = model.wavelength.to_value("Angstrom")
    stars = load_library(args.library).select(split=args.split, good=True)
    count = min(args.n_stars, len(stars)) if args.n_stars else len(stars)
    rows = np.linspace(0, len(stars) - 1, count).astype(int)
    truth, valid = prepare_truth(stars.take(rows), wave, model.medium)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, the units of the MSE
    sim = Simulator(wave, model.medium)
    rng = np.random.default_rng(args.seed)
    rv = rng.uniform(-args.vmax, args.vmax, len(rows)) if args.vmax else None
    widths = [float(w) if float(w) < 1 else int(w) for w in args.widths.split(",")]
    result = header("bench_gaps.py", argv, args)
    result.update(
        {
            "n_stars": int(len(rows)),
            "snr": args.snr,
            "min_missing": args.min_missing,
            "library_pull": args.library_pull,
            "map_options": MAP_OPTIONS,
            "runaway_mse": args.runaway,
            "runaway_relative_rms": args.relative,
            "protocol_widths": list(GAP_WIDTHS),
            "gaps": {},
        }
    )
    result["gaps"]["none"] = measure(model, pca, sim, truth, valid, rv, None, args)
    print("none", result["gaps"]["none"], flush=True)
    base = result["gaps"]["none"]["median_mse"]["deepclean"]
    for width in widths:
        pixels = int(round(width * wave.size)) if isinstance(width, float) else width
        for place in GAP_PLACES:
            row = measure(model, pca, sim, truth, valid, rv, (pixels, place), args)
            row["width_pixels"] = pixels
            row["mse_over_no_gap"] = row["median_mse"]["deepclean"] / base
            key = f"{width:g}_{place}" if isinstance(width, float) else f"{width}_{place}"
            result["gaps"][key] = row
            print(key, json.dumps(row), flush=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
