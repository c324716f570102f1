"""The denoiser's uncertainty on stars unlike its training library.

Every good star of ``--split`` (default ``test``) as the denoise benchmark has it
(``miles``) and degraded (``degraded``: convolved to 3.4 A FWHM and given a smooth
flux-calibration tilt, `~specutils_deepclean.benchmarking.degrade.degrade`), observed
at S/N 2, 5, 10, 20 and 50 with the denoise benchmark's seeds and MAP settings and
denoised at rest.  Per S/N and kind: the coverage of the 1-sigma uncertainty (pooled
over pixels, and the median per star), the median MSE, the share flagged out of
distribution, the share of stars given the model-error variance and the median
``model_error_scale`` (the model-error term, `~specutils_deepclean.models.model_error`;
``--without-model-error`` leaves it out).  ``miles`` repeats the denoise
benchmark's runs, so its coverage is comparable with ``denoise_test.json``'s.

    python benchmarks/benchmarks/bench_model_error.py --split test --threads 1 \\
        --json benchmarks/results/model_error_test.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import denoise_both
from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import load_model
from specutils_deepclean.simulate import SNR_LEVELS, prepare_truth

from _common import header, select_stars, star_parser


def main(argv=None) -> int:
    parser = star_parser(__doc__, seed=2026)
    parser.add_argument(
        "--without-model-error", action="store_true",
        help="leave the model file's model-error term out (the coverage before it)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.without_model_error:
        model.extra.pop("model_error_terms", None)
    stars = select_stars(load_library(args.library), args)
    truth, valid = prepare_truth(stars, model.wavelength.to_value("Angstrom"), model.medium)
    result = header("bench_model_error.py", argv, args)
    del result["vmax_kms"]
    result.update(
        {
            "n_stars": int(len(truth)),
            "model_error_terms": np.asarray(model.extra.get("model_error_terms", [])).tolist(),
            "degraded": {"fwhm_aa": 3.4, "tilt_sigma": 0.1, "tilt_seed": args.seed + 7},
            "snr": {},
        }
    )
    for snr, kind, clean, out in denoise_both(
        model, truth, valid, SNR_LEVELS, seed=args.seed, tilt_seed=args.seed + 7
    ):
        coverage = metrics.calibration(out.flux, out.flux_sigma, clean, mask=~valid)
        row = {
            "calibration_pooled": float(coverage.pooled),
            "calibration_median": float(np.nanmedian(coverage.per_spectrum)),
            "median_mse": float(np.nanmedian(metrics.mse(out.flux, clean, mask=~valid))),
            "ood_rate": float(np.mean(out.map.ood_flag)),
            "median_model_error_scale": float(np.median(out.map.model_error_scale)),
            "share_widened": float(np.mean(np.nanmax(out.map.model_sigma, axis=1) > 0)),
        }
        result["snr"].setdefault(str(snr), {})[kind] = row
        print(snr, kind, row, flush=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
