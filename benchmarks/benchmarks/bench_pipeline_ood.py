"""Out-of-distribution score of the denoiser after telluric removal (the composed pipeline).

Each star of the shipped example set (:func:`~specutils_deepclean.datasets.load_examples`)
is observed through the simulator as the demo does (S/N 10, tellurics at airmass 1.5, a
400-pixel gap in the middle; seeds 0, 1, 2), then denoised with the shipped denoiser in
four ways: the observation as it is (tellurics left in), after
``remove_tellurics(mode="divide")``, after ``mode="reconstruct"``, and the observation
with the pixels ``divide`` changed masked.  The JSON holds each run's OOD score and flag
(``meta["deepclean"]["ood_score"]`` and ``["ood_flag"]``; ``denoise`` warns when flagged)::

    python benchmarks/benchmarks/bench_pipeline_ood.py --json benchmarks/results/pipeline_ood.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from specutils import Spectrum

from specutils_deepclean.datasets import load_examples
from specutils_deepclean.manipulation import denoise, remove_tellurics
from specutils_deepclean.simulate import Simulator, prepare_truth

SNR, AIRMASS, GAP, SEEDS = 10.0, 1.5, (400, "middle"), (0, 1, 2)


def _ood(spectrum: Spectrum) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = denoise(spectrum, device="cpu")
    info = result.meta["deepclean"]
    return {"score": float(np.ravel(info["ood_score"])[0]), "flag": bool(np.ravel(info["ood_flag"])[0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    library = load_examples()
    grid = library.wavelength.value
    simulator = Simulator(grid, library.medium, fwhm=library.fwhm)
    rows = []
    for star in range(len(library)):
        truth, _ = prepare_truth(library.take([star]), grid, library.medium)
        for seed in SEEDS:
            obs = simulator.observe(truth, SNR, seed=seed, gap=GAP, airmass=AIRMASS)
            observed = obs.to_spectrum()[0]
            divided = remove_tellurics(observed, device="cpu")
            changed = divided.meta["deepclean"]["transmission"].flux.value != 1.0
            masked = Spectrum(
                flux=observed.flux, spectral_axis=observed.spectral_axis,
                uncertainty=observed.uncertainty, mask=observed.mask | changed,
                meta=observed.meta,
            )
            rows.append({
                "star": str(library.star_ids[star]), "label": str(library.labels[star]),
                "seed": seed,
                "observed": _ood(observed),
                "divide": _ood(divided),
                "reconstruct": _ood(remove_tellurics(observed, mode="reconstruct", device="cpu")),
                "observed_corrected_pixels_masked": _ood(masked),
            })
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": "python benchmarks/benchmarks/bench_pipeline_ood.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"snr": SNR, "airmass": AIRMASS, "gap": list(GAP), "seeds": list(SEEDS)},
        "runs": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
