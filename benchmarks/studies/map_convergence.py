"""How often the denoiser's MAP stops without converging, on MILES ``val``.

Every good ``val`` star is observed through the simulator at S/N 2, 5, 10, 20 and 50,
median-normalised and put through ``Denoiser.map_estimate`` with `denoise`'s defaults
(`specutils_deepclean.inference.denoise_arrays`, as `specutils_deepclean.denoise`
does).  Counted per S/N: the stars whose selected (MAP) class did not converge
(`denoise` warns about them) and those where no class converged.  The test split is never read::

    python benchmarks/studies/map_convergence.py \\
        --json benchmarks/results/map_convergence_val.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from specutils_deepclean.inference import denoise_arrays

from val_study import observations, val_setup, write_result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="denoiser-miles")
    parser.add_argument("--steps", type=int, default=20, help="denoise's default")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, truth, valid, sim = val_setup(args.model)
    rows = {}
    for snr, obs in observations(sim, truth, valid, args.seed):
        result = denoise_arrays(
            model,
            obs.flux,
            obs.sigma,
            obs.mask,
            steps=args.steps,
            generator=torch.Generator().manual_seed(0),
        ).map
        stars = np.arange(len(obs.flux))
        selected = result.converged[stars, result.map_class]
        rows[f"{snr:g}"] = {
            "selected_not_converged": int(np.sum(~selected)),
            "no_class_converged": int(np.sum(~result.converged.any(axis=1))),
            "selected_steps_median": float(np.median(result.steps[stars, result.map_class])),
        }
        print(snr, rows[f"{snr:g}"], flush=True)
    write_result(
        args.json,
        __file__,
        argv,
        {
            "split": "val",
            "model": args.model,
            "steps": args.steps,
            "n_spectra": int(len(truth)),
            "snr": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
