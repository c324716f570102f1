"""What makes the denoiser's fill of a wide gap run away, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with 40 % of the grid missing at the blue
end, in the middle and at the red end, and denoised at rest as ``bench_gaps.py`` does,
without and with the template starts
(`~specutils_deepclean.models.level.TEMPLATE_STARTS`).  Per star and run: the MSE over
the gap of the output and of :math:`G(\\hat z)` alone (without the continuum and
residual terms), the factor that took the input to the generator's level over the
star's true one (1: right), the true and the MAP class, the OOD flag and the median
output sigma over the gap.  The unflagged stars whose fill runs away (MSE over the gap
above 0.1) without template starts are denoised again with six KDE-mode starts
(``n_starts=6``).  The test split is never read::

    python benchmarks/studies/gap_runaway.py --json benchmarks/results/gap_runaway_val.json
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.datasets import load_library
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.models import level
from specutils_deepclean.spectra import median_normalise

from val_study import study_args, val_setup, wide_gaps, write_result

RUNAWAY = 0.1


def _run(model, data: tuple, truth, valid, in_gap, seed, **options) -> dict:
    """Denoise ``data`` (flux, sigma, mask) as bench_gaps.py does; the per-star numbers."""
    out = denoise_arrays(
        model, *data, velocity=0.0,
        generator=torch.Generator().manual_seed(seed), **{**MAP_OPTIONS, **options},
    )  # fmt: skip
    fit = out.map
    with torch.no_grad():
        signal = model.generator.generate(torch.as_tensor(fit.z, dtype=model._dtype))
    alone = signal.double().cpu().numpy() * out.scale[:, None]
    outside = ~valid | ~in_gap
    sigma = np.where(outside, np.nan, out.flux_sigma)
    return {
        "mse_in_gap": metrics.mse(out.flux, truth, mask=outside).round(6).tolist(),
        "mse_in_gap_signal_only": metrics.mse(alone, truth, mask=outside).round(6).tolist(),
        "level_over_truth": np.round(out.scale, 4).tolist(),
        "map_class": [fit.class_names[c] for c in fit.map_class],
        "ood_flag": fit.ood_flag.tolist(),
        "median_sigma_in_gap": np.round(np.nanmedian(sigma, axis=1), 4).tolist(),
    }


def _summary(run: dict) -> dict:
    mse, alone = np.asarray(run["mse_in_gap"]), np.asarray(run["mse_in_gap_signal_only"])
    away = mse > RUNAWAY
    return {
        "median_mse_in_gap": float(np.median(mse)),
        "median_mse_in_gap_signal_only": float(np.median(alone)),
        "above_0.01": int(np.sum(mse > 0.01)),
        "runaway": int(away.sum()),
        "runaway_flagged": int(np.sum(away & np.asarray(run["ood_flag"]))),
        "runaway_signal_only_not_better": int(np.sum(away & (alone >= mse))),
    }


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = val_setup(args.model)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    labels = load_library().select(split="val", good=True).labels.tolist()
    width = int(round(0.4 * truth.shape[1]))
    result = {"runaway_mse": RUNAWAY, "width_pixels": width, "labels": labels, "gaps": {}}
    for place, obs, in_gap in wide_gaps(sim, truth, valid, args.seed):
        row = {}
        for starts in (False, True):
            level.TEMPLATE_STARTS = starts
            run = _run(model, (obs.flux, obs.sigma, obs.mask), truth, valid, in_gap, args.seed)
            row["template_starts" if starts else "before"] = {**_summary(run), "stars": run}
        before = row["before"]["stars"]
        away = np.nonzero(
            (np.asarray(before["mse_in_gap"]) > RUNAWAY) & ~np.asarray(before["ood_flag"])
        )[0]
        level.TEMPLATE_STARTS = False
        more = {}
        if away.size:
            sub = (obs.flux[away], obs.sigma[away], obs.mask[away])
            more = _run(model, sub, truth[away], valid[away], in_gap, args.seed, n_starts=6)
        row["runaway_unflagged_n_starts_6"] = {"index": away.tolist(), **more}
        result["gaps"][place] = row
        for name in ("before", "template_starts"):
            print(place, name, {k: v for k, v in row[name].items() if k != "stars"}, flush=True)
    level.TEMPLATE_STARTS = True
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
