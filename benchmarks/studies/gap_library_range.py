"""Whether the training library bounds a wide gap's fill, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with 40 % of the grid missing at the blue
end, in the middle and at the red end, and denoised at rest as ``bench_gaps.py`` does
without `~specutils_deepclean.models.gap_fill.library_pull` (the fill before it).
The training stars' spectra as the model draws them
(`~specutils_deepclean.models.level.library`) are scaled to each star's observed
pixels by weighted least squares (weights 1 / sigma^2).  Per gap: the median MSE over
the gap and the runaways (above 0.1) of the fill, of the fill clamped at each pixel
to the range the scaled library spans there, and of the library's mean weighted by
:math:`\\exp(-\\chi^2_i / (2 T))` with `~specutils_deepclean.models.gap_fill`'s
temperature; per star whose fill runs away: its MSE over the gap under each, and the
share of its gap pixels where the fill and where the truth lie outside the range.
The test split is never read::

    python benchmarks/studies/gap_library_range.py \\
        --json benchmarks/results/gap_library_range_val.json
"""

from __future__ import annotations

import sys

import numpy as np

from specutils_deepclean import metrics
from specutils_deepclean.models import gap_fill, level
from specutils_deepclean.spectra import median_normalise

from gap_mixture import RUNAWAY, _run
from val_study import study_args, val_setup, wide_gaps, write_result


def _summary(mse: np.ndarray) -> dict:
    return {"median_mse_in_gap": float(np.median(mse)), "runaway": int(np.sum(mse > RUNAWAY))}


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = val_setup(args.model)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    spectra = level.library(model).numpy()
    result = {"temperature": gap_fill.LIBRARY_TEMPERATURE, "gaps": {}}
    shipped, gap_fill.LIBRARY_PULL = gap_fill.LIBRARY_PULL, 0.0
    try:
        for place, obs, in_gap in wide_gaps(sim, truth, valid, args.seed):
            out = _run(model, obs, truth, valid, in_gap, args.seed)[0]
            seen = np.isfinite(obs.flux) & ~obs.mask
            weight = np.where(seen, 1 / np.where(seen, obs.sigma, 1.0) ** 2, 0.0)
            flux = np.where(seen, obs.flux, 0.0)
            cross, power = (weight * flux) @ spectra.T, weight @ (spectra**2).T
            scale = cross / power
            chi2 = (weight * flux**2).sum(1)[:, None] - scale * cross
            share = np.exp(-0.5 * (chi2 - chi2.min(1, keepdims=True)) / result["temperature"])
            mean = (share * scale / share.sum(1, keepdims=True)) @ spectra
            low = np.empty_like(truth)
            high = np.empty_like(truth)
            for i in range(len(truth)):  # one star at a time: (N, P) each
                scaled = scale[i, :, None] * spectra
                low[i], high[i] = scaled.min(0), scaled.max(0)
            outside = ~valid | ~in_gap
            clamped = np.clip(out.flux, low, high)
            fills = {"fill": out.flux, "clamped": clamped, "library_mean": mean}
            mse = {name: metrics.mse(f, truth, mask=outside) for name, f in fills.items()}
            row = {name: _summary(m) for name, m in mse.items()}
            stars = []
            for i in np.nonzero(mse["fill"] > RUNAWAY)[0]:
                gap = in_gap & valid[i]
                stars.append({
                    "index": int(i),
                    **{f"mse_{name}": round(float(m[i]), 4) for name, m in mse.items()},
                    "fill_outside_range": round(float(np.mean(
                        (out.flux[i, gap] < low[i, gap]) | (out.flux[i, gap] > high[i, gap]))), 3),
                    "truth_outside_range": round(float(np.mean(
                        (truth[i, gap] < low[i, gap]) | (truth[i, gap] > high[i, gap]))), 3),
                })  # fmt: skip
            row["runaways"] = stars
            result["gaps"][place] = row
            print(place, row, flush=True)
    finally:
        gap_fill.LIBRARY_PULL = shipped
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
