"""A wide gap's fill held near the training library (`library_pull`), on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with 40 % of the grid missing at the blue
end, in the middle and at the red end (and with the protocol's `WIDTHS` that are wide
gaps, 400 and 800 pixels), and denoised at rest as ``bench_gaps.py`` does, with
`~specutils_deepclean.models.gap_fill.library_pull` off (the class posterior's mean
alone, the fill before) and with each setting (`SETTINGS`; `NARROW` on the narrower
gaps) of its temperature :math:`T`, pull :math:`\\lambda`, largest step :math:`k` (in
sigma) and reach :math:`R` (pixels).  Per run: ``gap_mixture.py``'s
numbers (median and largest MSE over the gap, runaways above 0.1, fills above 0.01,
coverage of the 1-sigma uncertainty over the gap and the observed pixels, median
MSE over the whole grid, the MSE over the gap of every star), the fills above 0.05,
the median MSE over the gap over that without the pull, and the win rate over the
gap against it.  The test split is never read::

    python benchmarks/studies/gap_library.py --json benchmarks/results/gap_library_val.json
"""

from __future__ import annotations

import sys

import numpy as np

from specutils_deepclean import metrics
from specutils_deepclean.models import gap_fill
from specutils_deepclean.spectra import median_normalise

from gap_mixture import _run
from val_study import study_args, val_setup, wide_gaps, write_result

#: (temperature, pull, step, reach) of each setting; pull 0 is the fill without it.
SETTINGS = {
    "off": (10.0, 0.0, 0.5, 0.0),
    "T10_pull0.5_step0.5": (10.0, 0.5, 0.5, 0.0),
    "T10_pull0.5_step1": (10.0, 0.5, 1.0, 0.0),
    "T10_pull0.5_step2": (10.0, 0.5, 2.0, 0.0),
    "T10_pull0.75_step0.5": (10.0, 0.75, 0.5, 0.0),
    "T3_pull0.5_step0.5": (3.0, 0.5, 0.5, 0.0),
    "T30_pull0.5_step0.5": (30.0, 0.5, 0.5, 0.0),
    "T10_pull0.5_step0.5_reach200": (10.0, 0.5, 0.5, 200.0),
    "T10_pull0.5_step0.5_reach500": (10.0, 0.5, 0.5, 500.0),
    "T10_pull0.5_step0.5_reach1000": (10.0, 0.5, 0.5, 1000.0),
}
#: Settings run on the narrower gaps too.
NARROW = ("off", "T10_pull0.5_step0.5", "T10_pull0.5_step0.5_reach200",
          "T10_pull0.5_step0.5_reach500", "T10_pull0.5_step0.5_reach1000")  # fmt: skip
#: Widths (pixels) of the narrower gaps: the protocol's that are wide gaps.
WIDTHS = (400, 800)


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = val_setup(args.model)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    names = ("LIBRARY_TEMPERATURE", "LIBRARY_PULL", "LIBRARY_STEP", "LIBRARY_REACH")
    shipped = [getattr(gap_fill, name) for name in names]
    result = {"settings": SETTINGS, "machine": "shared 2-core CPU", "gaps": {}}
    n_pix = truth.shape[1]
    runs = [(f"{w}", w / n_pix, NARROW) for w in WIDTHS] + [("0.4", 0.4, tuple(SETTINGS))]
    try:
        for width, share, settings in runs:
            for place, obs, in_gap in wide_gaps(sim, truth, valid, args.seed, share):
                row = {}
                for name in settings:
                    for key, value in zip(names, SETTINGS[name], strict=True):
                        setattr(gap_fill, key, value)
                    row[name] = _run(model, obs, truth, valid, in_gap, args.seed)[1]
                    mse = np.asarray(row[name]["mse_in_gap"])
                    base = np.asarray(row["off"]["mse_in_gap"])
                    row[name]["above_0.05"] = int(np.sum(mse > 0.05))
                    row[name]["median_over_off"] = float(np.median(mse) / np.median(base))
                    row[name]["win_rate_vs_off"] = float(metrics.win_rate(mse, base))
                    shown = {k: v for k, v in row[name].items() if k != "mse_in_gap"}
                    print(width, place, name, shown, flush=True)
                result["gaps"][f"{width}_{place}"] = row
    finally:
        for key, value in zip(names, shipped, strict=True):
            setattr(gap_fill, key, value)
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
