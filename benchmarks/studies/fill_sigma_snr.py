"""Coverage of the denoiser's uncertainty over filled pixels (gaps) at each S/N, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, observed at each S/N of
`~specutils_deepclean.simulate.SNR_LEVELS` (seed ``seed + i`` for the i-th) with each
gap of the benchmark protocol (100, 400 and 800 pixels and 40 % of the grid at the blue
end, in the middle and at the red end; the same noise draw for every gap at one S/N)
and denoised at rest with the benchmark's MAP options
(`~specutils_deepclean.training.fill_sigma.filled_errors`).  Per S/N and gap: the
share of filled pixels whose error is within the 1-sigma band, without the model's
``fill_sigma_scale`` and ``fill_sigma_ood_scale`` and with them (exactly: both only
multiply the standard deviation of pixels without data), for the stars not flagged out
of distribution and for the flagged ones apart, as ``calibrate_fill_sigma`` counts them;
the number of flagged stars; and, all gaps pooled, the further factor on the model's
that would bring the unflagged stars' filled pixels to 0.683 at that S/N (the 0.683
quantile of :math:`|s - \\hat s| / (r \\sigma)`).  Tells whether the factors, chosen
at one S/N or several, hold at every S/N.  The test split is never read.

    python benchmarks/studies/fill_sigma_snr.py --threads 1 \\
        --json benchmarks/results/fill_sigma_snr_val.json
"""

from __future__ import annotations

import sys

import numpy as np

from specutils_deepclean.metrics import GAUSSIAN_COVERAGE
from specutils_deepclean.simulate import SNR_LEVELS
from specutils_deepclean.training.fill_sigma import filled_errors

from val_study import gap_setup, study_args, write_result


def _span(coverage: dict) -> list:
    """[min, max] of a gap-to-coverage dict, rounded to 4 digits."""
    return [round(min(coverage.values()), 4), round(max(coverage.values()), 4)]


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2026, threads=1)
    model, truth, valid, _ = gap_setup(args.model)
    scale = np.asarray(model.extra.get("fill_sigma_scale", 1.0), np.float64)
    ood = float(np.asarray(model.extra.get("fill_sigma_ood_scale", 1.0)).reshape(-1)[0])
    result = {
        "model": args.model,
        "seed": args.seed,
        "n_stars": int(truth.shape[0]),
        "model_factors": "fill_sigma_scale" in model.extra,
        "ood_scale": ood,
        "snr": {},
    }
    for i, snr in enumerate(SNR_LEVELS):
        errors = filled_errors(model, truth, valid, snr, args.seed + i)
        unflagged = errors.coverage(scale, ood, flagged=False)
        flagged = errors.coverage(scale, ood, flagged=True)
        everyone = errors.coverage(scale, ood)
        ratio = np.concatenate(
            [(errors.ratio[k] / scale)[errors.pixels[k] & ~errors.flagged[k]] for k in errors.ratio]
        )
        result["snr"][f"{snr:g}"] = {
            "unflagged": {
                "before": errors.coverage(flagged=False),
                "after": unflagged,
                "after_span": _span(unflagged),
                "after_pooled": float(np.mean(ratio < 1.0)),
                "further_factor": round(float(np.quantile(ratio, GAUSSIAN_COVERAGE)), 4),
            },
            "flagged": {
                "n_stars": {k: int(f.any(1).sum()) for k, f in errors.flagged.items()},
                "before": errors.coverage(flagged=True),
                "after": flagged,
                "after_span": _span(flagged) if flagged else None,
            },
            "all_after": everyone,
            "all_after_span": _span(everyone),
        }
        print(snr, result["snr"][f"{snr:g}"]["unflagged"]["after_span"], flush=True)
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
