"""How far the level of a spectrum with a wide gap misses, on MILES ``val``: the median
of its observed pixels against `~specutils_deepclean.models.level.template_level`.

Every good ``val`` star is observed at S/N 10 (seed ``--seed``) with no gap and with a
gap of 400, 800 and 1689 pixels (40 % of the grid) at the blue end, middle and red
end, at rest and Doppler-shifted by 600 km/s (the template level runs before the
velocity search).  The level error of each is the factor that puts the median-
normalised spectrum on the whole-grid median of the clean star, over the estimate,
minus one: for the median of the observed pixels (what ``denoise`` used before) and
for the template level with each smoothing width (`SMOOTHING`) and number of best
templates (`TOPS`), whose median and 90th percentile of the absolute error are
kept.  ``models/level.py`` takes the choice with the smallest mean 90th percentile
over the shifted gaps.  The test split is never read::

    python benchmarks/studies/gap_level.py --json benchmarks/results/gap_level_val.json
"""

from __future__ import annotations

import sys

import numpy as np

from specutils_deepclean.models import level
from specutils_deepclean.spectra import median_normalise

from val_study import study_args, val_setup, write_result

SMOOTHING = (5.0, 15.0)
TOPS = (1, 5)
GAPS = (None, (400, "blue"), (800, "red"), (1689, "blue"), (1689, "middle"), (1689, "red"))


def _summary(error: np.ndarray) -> dict:
    error = np.abs(error)
    return {"median": float(np.median(error)), "p90": float(np.percentile(error, 90))}


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=2)
    model, truth, valid, sim = val_setup(args.model)
    _, whole = median_normalise(truth, ~valid)
    rows = {}
    for gap in GAPS:
        for velocity in (0.0, 600.0):
            obs = sim.observe(np.where(valid, truth, np.nan), 10, seed=args.seed, gap=gap,
                              stellar_rv=velocity)  # fmt: skip
            flux, observed = median_normalise(obs.flux, obs.mask)
            needed = whole / observed  # what divides `flux` to the whole-grid level
            gone = obs.mask | ~np.isfinite(flux)
            weight = np.where(gone, 0.0, 1 / np.where(gone, 1.0, obs.sigma / observed[:, None]) ** 2)
            row = {"median_of_observed": _summary(1 / needed - 1)}
            for smooth in SMOOTHING:
                for top in TOPS:
                    level.SMOOTH_PIXELS, level.TOP = smooth, top
                    level._TEMPLATES.clear()
                    found = level.template_level(model, np.where(gone, 0.0, flux), weight)
                    row[f"template_s{smooth:g}_top{top}"] = _summary(found / needed - 1)
            key = "none" if gap is None else f"{gap[0]}_{gap[1]}"
            rows[f"{key}_v{velocity:g}"] = row
            print(key, velocity, row, flush=True)
    write_result(args.json, "gap_level.py", argv, {"snr": 10, "n_stars": len(truth),
                                                   "errors": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
