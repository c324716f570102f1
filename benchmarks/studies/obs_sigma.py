"""Coverage of the denoiser's uncertainty over pixels with data, by wavelength, on MILES ``val``.

Every good ``val`` star observed without a gap at each S/N of
`~specutils_deepclean.simulate.SNR_LEVELS` (seed ``seed + i`` for the i-th) and
denoised at rest with the benchmark's MAP options by the model without its
``extra["obs_sigma_scale"]``
(`~specutils_deepclean.training.obs_sigma.observed_parts`).  Per S/N and per bin of
`~specutils_deepclean.training.obs_sigma.N_BINS` equal stretches of the grid: the
share of pixels with data whose error is within the 1-sigma band, without the factor
and with the model's (when it states one; the variance is then :math:`q^2 a + b`
exactly, `~specutils_deepclean.training.obs_sigma`); the median variance of each term
(the calibrated Laplace variance, the generator's error, the linear terms, all three
times the model-error scale, and the additive model-error term); the factor on the
first three that would bring that S/N's bin to 0.683
(`~specutils_deepclean.training.obs_sigma.fit_factor`), and the factor on the whole
variance that would (the 0.683 quantile of the error over the standard deviation).
Tells whether the wavelength pattern is the same at every S/N.  The test split is
never read.

    python benchmarks/studies/obs_sigma.py --threads 1 --json benchmarks/results/obs_sigma_val.json
"""

from __future__ import annotations

import sys

import numpy as np

from specutils_deepclean.metrics import GAUSSIAN_COVERAGE
from specutils_deepclean.simulate import SNR_LEVELS
from specutils_deepclean.training.fill_sigma import bins
from specutils_deepclean.training.obs_sigma import (
    N_BINS,
    fit_factor,
    observed_parts,
    per_bin_coverage,
)

from val_study import study_args, val_setup, write_result


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2026, threads=1)
    model, truth, valid, _ = val_setup(args.model)
    factor = model.extra.pop("obs_sigma_scale", None)
    n_star, n_pix = truth.shape
    per_bin = bins(n_pix, N_BINS)
    result = {
        "model": args.model,
        "seed": args.seed,
        "n_stars": int(n_star),
        "model_factor": factor is not None,
        "snr": {},
    }
    for i, snr in enumerate(SNR_LEVELS):
        parts = observed_parts(model, truth, valid, snr, args.seed + i)
        use = parts.counted
        scale = parts.model_error_scale[:, None]
        base = parts.scaled / scale
        terms = {
            "laplace": parts.latent * scale,
            "generator": parts.generator[None] * scale,
            "linear_terms": (base - parts.latent - parts.generator[None]) * scale,
            "model_error": parts.added,
        }
        ratio = parts.error / np.sqrt(parts.scaled + parts.added)
        entry = {
            "coverage": float(parts.covered().sum() / use.sum()),
            "coverage_per_bin": per_bin_coverage([parts]),
        }
        if factor is not None:
            entry["coverage_with_factor"] = float(parts.covered(factor).sum() / use.sum())
            entry["coverage_per_bin_with_factor"] = per_bin_coverage([parts], factor)
        result["snr"][f"{snr:g}"] = {
            **entry,
            "median_variance_per_bin": {
                name: [float(np.median(value[:, a:b][use[:, a:b]])) for a, b in per_bin]
                for name, value in terms.items()
            },
            "factor_per_bin": fit_factor([parts], np.ones(n_star, bool))[1].round(4).tolist(),
            "factor_on_whole_per_bin": [
                round(float(np.quantile(ratio[:, a:b][use[:, a:b]], GAUSSIAN_COVERAGE)), 4)
                for a, b in per_bin
            ],
        }
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
