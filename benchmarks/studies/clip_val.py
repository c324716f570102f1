"""Outlier rejection of the denoiser on MILES ``val``: ``clip`` against knowing the hits.

Every good ``val`` star is observed through the simulator (cosmic-ray hits, sky
residuals, correlated noise) at S/N 2, 5, 10, 20 and 50 and denoised by the shipped
model (``map_estimate``, 20 steps, 2 starts) four ways: every pixel kept
(``clip=None``), the simulator's cosmic-ray pixels masked by hand (the oracle), and
``clip`` = 5 and 8.  The JSON holds the median MSE of each and, per threshold, the
hits found, the other pixels rejected and the hits missed.  The test split is never
read.  The default ``clip=5`` of ``Denoiser.map_estimate`` was chosen from this run::

    python benchmarks/studies/clip_val.py --json benchmarks/results/denoise_val_clip.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from specutils_deepclean import metrics
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.spectra import median_normalise

from val_study import observations, study_args, val_setup, write_result

CLIPS = (5.0, 8.0)


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=901, threads=2)
    model, truth, valid, sim = val_setup(args.model)
    rows = {}
    for snr, obs in observations(sim, truth, valid, args.seed):
        # normalised once, by the medians of the pixels the observation itself masks
        flux, scale = median_normalise(obs.flux, obs.mask)
        sigma = obs.sigma / scale[:, None]

        def median_mse(missing, clip, flux=flux, sigma=sigma, scale=scale):
            result = denoise_arrays(
                model, flux, sigma, missing, scale=scale, steps=20, n_starts=2, clip=clip
            )
            mse = metrics.mse(result.flux, truth, mask=~valid)
            return float(np.median(mse)), result.map.rejected

        row = {
            "keep_all": median_mse(obs.mask, None)[0],
            "hits_masked": median_mse(obs.mask | obs.cosmics, None)[0],
            "hits": int((obs.cosmics & ~obs.mask).sum()),
        }
        for clip in CLIPS:
            mse, rejected = median_mse(obs.mask, clip)
            row[f"clip{clip:g}"] = {
                "median_mse": mse,
                "hits_found": int((rejected & obs.cosmics).sum()),
                "other_rejected": int((rejected & ~obs.cosmics).sum()),
                "hits_missed": int((~rejected & obs.cosmics & ~obs.mask).sum()),
            }
        rows[f"{snr:g}"] = row
        print(snr, json.dumps(row), flush=True)
    write_result(
        args.json,
        __file__,
        argv,
        {"model": args.model, "split": "val", "n_spectra": int(len(truth)), "snr": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
