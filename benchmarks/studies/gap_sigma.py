"""The coverage of a wide gap's uncertainty against a factor on it, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with a gap of 400 and 800 pixels and 40 %
of the grid at the blue end, in the middle and at the red end, and denoised at rest
as ``bench_gaps.py`` does (the package as it is).  Per gap and pooled over all: the
share of the filled pixels whose truth lies within ``c`` times the output sigma, for
each ``c`` in `FACTORS`.  The test split is never read::

    python benchmarks/studies/gap_sigma.py --json benchmarks/results/gap_sigma_val.json
"""

from __future__ import annotations

import sys

import numpy as np
from gap_mixture import _run
from val_study import study_args, val_setup, wide_gaps, write_result

from specutils_deepclean.spectra import median_normalise

FACTORS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
#: Widths (pixels, or a share of the grid below 1) of the wide gaps.
WIDTHS = (400, 800, 0.4)


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = val_setup(args.model)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    n_pix = truth.shape[1]
    result = {"factors": FACTORS, "gaps": {}}
    inside = np.zeros(len(FACTORS))
    total = 0
    for width in WIDTHS:
        share = width if width < 1 else width / n_pix
        for place, obs, in_gap in wide_gaps(sim, truth, valid, args.seed, share):
            out = _run(model, obs, truth, valid, in_gap, args.seed)[0]
            pixels = valid & in_gap & np.isfinite(out.flux_sigma)
            error = np.abs(out.flux - truth)[pixels]
            sigma = out.flux_sigma[pixels]
            hits = np.array([np.sum(error < c * sigma) for c in FACTORS])
            inside += hits
            total += error.size
            result["gaps"][f"{width:g}_{place}"] = (hits / error.size).round(4).tolist()
            print(width, place, result["gaps"][f"{width:g}_{place}"], flush=True)
    result["pooled"] = (inside / total).round(4).tolist()
    print("pooled", result["pooled"])
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
