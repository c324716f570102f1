"""``remove_tellurics(mode="divide")`` on MILES ``val``: the ``column_factor`` of its bounds.

The MILES part of ``bench_physical.py`` (every good ``val`` star observed at a random
stellar RV in +-150 km/s, airmass 1-2.5, S/N 20, 50 and 200, the same seed and
draws), corrected by ``divide`` with ``column_factor`` None (no column bounds: the
blind estimate within ``max_column``) and 1.1, 1.25, 1.5 and 2, and a perfect
division (``perfect``: the observation over the true line transmission): per band
and over all telluric pixels the median Q_t (per band not clipped at 1), and at S/N
200 the equivalent-width change of Na D and H alpha against a perfect division.
The test split is never read.  A smaller factor is better at S/N 200 and worse at
S/N 20; the default ``column_factor`` is the one with the lowest Q_t over all
telluric pixels at S/N 200 among those no worse than a perfect division at S/N 20,
from this run::

    python benchmarks/studies/divide_column_factor.py --threads 1 \
        --json benchmarks/results/divide_column_factor_val.json
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from val_study import study_args, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_physical as bp  # noqa: E402

from specutils_deepclean import metrics  # noqa: E402
from specutils_deepclean.datasets import load_library  # noqa: E402
from specutils_deepclean.manipulation import remove_tellurics  # noqa: E402
from specutils_deepclean.simulate import Simulator, prepare_truth  # noqa: E402

FACTORS = (None, 1.1, 1.25, 1.5, 2.0)


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2027, threads=2)
    library = load_library()
    stars = library.select(split="val", good=True)
    wave, medium = library.wavelength.value, library.medium
    truth, valid = prepare_truth(stars, wave, medium)
    truth = np.where(valid, truth, np.nan)
    sim = Simulator(wave, medium, fwhm=2.5, rv_range=(-150.0, 150.0))
    rng = np.random.default_rng(args.seed)
    rows = {}
    for snr in bp.SNRS:
        obs, flux, lines, ideal, mt = bp.observed(sim, truth, snr, rng, wave)
        miss = ~np.isfinite(flux)
        row = {}
        for factor in (*FACTORS, "perfect"):
            if factor == "perfect":
                pred = flux / lines
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = remove_tellurics(bp.spectrum(flux, obs.sigma, wave, medium),
                                           mode="divide", device="cpu", column_factor=factor)
                pred = out.flux.value
            entry = {
                band: float(np.nanmedian(metrics.q_t(
                    pred, flux, ideal, mt & ((wave > lo) & (wave < hi))[None],
                    mask=miss, clip=False)))
                for band, (lo, hi) in bp.BANDS.items()
            }
            entry["all"] = float(np.nanmedian(metrics.q_t(pred, flux, ideal, mt, mask=miss)))
            if snr == 200:
                shift = 1 + obs.stellar_rv / bp.C_KMS
                for name in ("NaD", "Halpha"):
                    ref = bp.ew_per_star(flux / lines, wave, bp.LINES[name], shift)
                    use = np.abs(ref) > 0.3
                    got = bp.ew_per_star(pred, wave, bp.LINES[name], shift)
                    entry[f"ew_change_{name}"] = float(
                        np.median(np.abs(got - ref)[use] / np.abs(ref[use])))
            row[str(factor)] = entry
        rows[str(snr)] = row
        print(snr, row, flush=True)
    write_result(args.json, __file__, argv, {
        "split": "val", "n_spectra": len(stars), "seed": args.seed,
        "metric": "median Q_t per band (not clipped) and over all telluric pixels",
        "snr": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
