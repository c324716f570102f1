"""The coverage of the denoiser's uncertainty with and without its factor on pixels with data.

The denoise benchmark's runs of the shipped denoiser (``specutils-deepclean benchmark
denoise``: every good star of ``--split`` observed at S/N 2, 5, 10, 20 and 50 with
its seeds, denoised at rest with its MAP settings,
`~specutils_deepclean.benchmarking.denoise.deepclean`), once as shipped and once
without ``extra["obs_sigma_scale"]`` (`~specutils_deepclean.models.fill_sigma`).
Per S/N and each way: the coverage of the 1-sigma uncertainty over the valid pixels
(pooled and the median per star, as the denoise benchmark's ``calibration_pooled``
and ``calibration_median``) and per bin of
`~specutils_deepclean.training.obs_sigma.N_BINS` equal stretches of the grid.  The
baselines and the gap runs are left out (the factor changes neither the flux nor a
gap's uncertainty).

    python benchmarks/benchmarks/bench_obs_sigma.py --split test --threads 1 \\
        --json benchmarks/results/obs_sigma_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.benchmarking.denoise import deepclean, observe
from specutils_deepclean.io.models import load_model
from specutils_deepclean.simulate import SNR_LEVELS, Simulator
from specutils_deepclean.training.fill_sigma import per_bin
from specutils_deepclean.training.obs_sigma import N_BINS

from _common import header, load_stars, star_parser


def main(argv=None) -> int:
    args = star_parser(__doc__, seed=2026).parse_args(argv)
    shipped, wave, _, truth, valid = load_stars(args)
    if "obs_sigma_scale" not in shipped.extra:
        raise ValueError(f"{args.model} states no extra['obs_sigma_scale']")
    plain = load_model(args.model)
    plain.extra.pop("obs_sigma_scale")
    options = argparse.Namespace(
        steps=MAP_OPTIONS["steps"], starts=MAP_OPTIONS["n_starts"], tol=MAP_OPTIONS["tol"],
        margin=MAP_OPTIONS["class_margin"], clip=MAP_OPTIONS["clip"], seed=args.seed,
    )  # fmt: skip
    sim = Simulator(wave, shipped.medium)
    result = header("bench_obs_sigma.py", argv, args)
    del result["vmax_kms"]
    result.update({"n_stars": int(len(truth)), "n_bins": N_BINS, "snr": {}})
    for i, snr in enumerate(SNR_LEVELS):
        flux, sigma, missing = observe(sim, truth, valid, snr, args.seed + i)
        row = {}
        for name, model in (("without", plain), ("with", shipped)):
            _, pred, pred_sigma = deepclean(model, flux, sigma, missing, options)
            coverage = metrics.calibration(pred, pred_sigma, truth, mask=~valid)
            use = valid & np.isfinite(pred) & np.isfinite(pred_sigma)
            row[name] = {
                "calibration_pooled": float(coverage.pooled),
                "calibration_median": float(np.nanmedian(coverage.per_spectrum)),
                "coverage_per_bin": per_bin(
                    (np.abs(pred - truth) < pred_sigma) & use, use, N_BINS
                ),
            }
        result["snr"][f"{snr:g}"] = row
        print(snr, {k: v["calibration_pooled"] for k, v in row.items()}, flush=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
