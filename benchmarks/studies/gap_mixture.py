"""The fill of a wide gap: the MAP class's spectrum or the class posterior's mean, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with 40 % of the grid missing at the blue
end, in the middle and at the red end, and denoised at rest as ``bench_gaps.py`` does,
three ways: the MAP class's spectrum (`~specutils_deepclean.models.gap_fill`'s
``CLASS_MIXTURE`` off, the fill before), the mean over classes weighted by the
calibrated class posterior with its floor :math:`\\epsilon / K`, and without it (what
the package does).  Per run: the median and largest MSE over the gap, the fills above
0.1 (runaway) and above 0.01, the win rate over the gap against the MAP class's fill,
the coverage of the 1-sigma uncertainty over the gap and over the observed pixels, the
median MSE over the whole grid, the CPU seconds of the denoising, and the MSE over
the gap of every star.  The test split is never read::

    python benchmarks/studies/gap_mixture.py --json benchmarks/results/gap_mixture_val.json
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from val_study import study_args, val_setup, wide_gaps, write_result

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.models import gap_fill, laplace
from specutils_deepclean.spectra import median_normalise

RUNAWAY = 0.1
SHIPPED = laplace.class_mixture


def _floored(model, data, z, posterior, filled):
    """`class_mixture` with the calibrated posterior's floor put back."""
    epsilon = float(np.asarray(model.extra["class_calibration"])[2])
    weight = (1 - epsilon) * posterior + epsilon / posterior.shape[-1]
    return SHIPPED(model, data, z, weight, filled)


def _run(model, obs, truth, valid, in_gap, seed: int) -> dict:
    """Denoise ``obs`` as bench_gaps.py does; the numbers of one run."""
    start = time.process_time()
    out = denoise_arrays(
        model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
        generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
    )  # fmt: skip
    seconds = time.process_time() - start
    mse = metrics.mse(out.flux, truth, mask=~valid | ~in_gap)
    return {
        "median_mse_in_gap": float(np.median(mse)),
        "max_mse_in_gap": float(mse.max()),
        "runaway": int(np.sum(mse > RUNAWAY)),
        "runaway_index": np.nonzero(mse > RUNAWAY)[0].tolist(),
        "runaway_flagged": int(np.sum((mse > RUNAWAY) & out.map.ood_flag)),
        "above_0.01": int(np.sum(mse > 0.01)),
        "calibration_in_gap": float(
            metrics.calibration(out.flux, out.flux_sigma, truth, mask=~valid | ~in_gap).pooled
        ),
        "calibration_observed": float(
            metrics.calibration(out.flux, out.flux_sigma, truth, mask=~valid | in_gap).pooled
        ),
        "median_mse_whole": float(np.median(metrics.mse(out.flux, truth, mask=~valid))),
        "cpu_seconds": round(seconds, 2),
        "mse_in_gap": [float(f"{v:.4g}") for v in mse],
    }


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = val_setup(args.model)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    width = int(round(0.4 * truth.shape[1]))
    result = {"runaway_mse": RUNAWAY, "width_pixels": width, "machine": "shared 2-core CPU",
              "gaps": {}}  # fmt: skip
    settings = {
        "map_class": (False, SHIPPED),
        "posterior_with_floor": (True, _floored),
        "posterior": (True, SHIPPED),
    }
    try:
        for place, obs, in_gap in wide_gaps(sim, truth, valid, args.seed):
            row = {}
            for name, (on, function) in settings.items():
                gap_fill.CLASS_MIXTURE, laplace.class_mixture = on, function
                row[name] = _run(model, obs, truth, valid, in_gap, args.seed)
            base = np.asarray(row["map_class"]["mse_in_gap"])
            for name in settings:
                ours = np.asarray(row[name]["mse_in_gap"])
                row[name]["win_rate_vs_map_class"] = float(metrics.win_rate(ours, base))
                print(place, name, {k: v for k, v in row[name].items() if k != "mse_in_gap"},
                      flush=True)  # fmt: skip
            result["gaps"][place] = row
    finally:
        gap_fill.CLASS_MIXTURE, laplace.class_mixture = True, SHIPPED
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
