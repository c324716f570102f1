"""Quality guard of a faster denoiser: this checkout's results against an older tree's.

The good stars of one MILES split (default ``val``; never tune on ``test``) are put on
the denoiser's grid, Doppler-shifted by a velocity drawn uniformly in +-``--vmax``
km/s and observed through the simulator at each ``--snr``; `denoise_arrays` fits the
velocity (``velocity=None``, as `~specutils_deepclean.denoise` does by default).  The
same observations go through the package of the ``--baseline`` source tree (a
subprocess with ``PYTHONPATH`` set to it, for example ``git archive main | tar -x -C
DIR``) and through this checkout's.  Per S/N: the median MSE against the truth in the
observed frame (pixels where both are defined) of both and its ratio, the share of
stars whose MAP class is the same, the median ``|v - v_true|`` of both and the median
per-star change of the velocity, and the issue-16 measures of both: the class
posterior's ECE against the stars' classes (10 confidence bins,
`~specutils_deepclean.benchmarking.ood_negatives.reliability`), the share of pixels
within one ``flux_sigma`` of the truth (0.683 when calibrated) and the share of stars
whose velocity is within one ``velocity_error`` of the truth.

    python benchmarks/benchmarks/bench_denoise_quality.py --baseline /tmp/main \\
        --json benchmarks/results/denoise_quality_val.json
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_stars, star_parser  # noqa: E402

HERE = Path(__file__).resolve().parents[2]


def run(args) -> dict:
    """Per S/N: each star's MSE, MAP class and velocity error (arrays) with the package
    on ``sys.path``."""
    from specutils_deepclean import metrics
    from specutils_deepclean.benchmarking.ood_negatives import reliability
    from specutils_deepclean.inference import denoise_arrays
    from specutils_deepclean.simulate import Simulator

    model, wave, stars, truth, valid = load_stars(args)
    classes = np.asarray(stars.params["class"]).astype(str)
    labels = np.array([model.prior.class_index(c) for c in classes])
    sim = Simulator(wave, model.medium)
    v_true = np.random.default_rng(args.seed).uniform(-args.vmax, args.vmax, truth.shape[0])
    out = {}
    for i, snr in enumerate(args.snr):
        obs = sim.observe(
            np.where(valid, truth, np.nan), snr, seed=args.seed + i, stellar_rv=v_true
        )
        result = denoise_arrays(
            model, obs.flux, obs.sigma, obs.mask, velocity=None,
            generator=torch.Generator().manual_seed(0),
        )
        pred = result.flux
        bad = ~np.isfinite(obs.truth) | ~np.isfinite(pred)
        mse = metrics.mse(np.where(bad, 0, pred), np.where(bad, 0, obs.truth), mask=bad)
        within = np.abs(pred - obs.truth) <= result.flux_sigma
        out[f"{snr:g}"] = {
            "mse": np.asarray(mse, dtype=np.float64),
            "map_class": np.asarray(result.map.map_class),
            "velocity": result.map.velocity[:, 0] - v_true,
            "velocity_error": result.map.velocity_error[:, 0],
            "ece": np.array(reliability(result.map.class_posterior, labels)[0]),
            "coverage": np.array(within[~bad].mean()),
        }
    return out


def compare(old: dict, new: dict) -> dict:
    """The summary per S/N of the baseline's and this checkout's arrays."""
    out = {}
    for snr, a in old.items():
        b = new[snr]
        med = [float(np.nanmedian(x["mse"])) for x in (a, b)]
        dv = [float(np.median(np.abs(x["velocity"]))) for x in (a, b)]
        out[snr] = {
            "median_mse_baseline": med[0],
            "median_mse": med[1],
            "median_mse_ratio": med[1] / med[0],
            "same_map_class": float(np.mean(a["map_class"] == b["map_class"])),
            "median_abs_dv_baseline": dv[0],
            "median_abs_dv": dv[1],
            "median_abs_dv_change": dv[1] - dv[0],
            "median_abs_velocity_change_per_star": float(
                np.median(np.abs(b["velocity"] - a["velocity"]))
            ),
        }
        for name in ("ece", "coverage"):
            out[snr][f"{name}_baseline"], out[snr][name] = float(a[name]), float(b[name])
        within = [float(np.mean(np.abs(x["velocity"]) <= x["velocity_error"])) for x in (a, b)]
        out[snr]["velocity_within_error_baseline"], out[snr]["velocity_within_error"] = within
    return out


def main(argv=None) -> int:
    parser = star_parser(__doc__, seed=2027)
    parser.set_defaults(split="val", threads=1)
    parser.add_argument("--snr", type=float, nargs="+", default=[2.0, 10.0, 50.0])
    parser.add_argument("--baseline", help="source tree of the older code")
    parser.add_argument("--arrays", help="(internal) write one side's arrays here and stop")
    args = parser.parse_args(argv)
    if args.arrays:  # one side of the comparison, in its own process
        arrays = run(args)
        np.savez(args.arrays, **{f"{s}/{k}": v for s, d in arrays.items() for k, v in d.items()})
        return 0
    if not args.baseline:
        parser.error("--baseline is required")
    baseline = Path(args.baseline).resolve()
    if not (baseline / "specutils_deepclean").is_dir():
        parser.error(f"{baseline} has no specutils_deepclean package")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "old.npz"
        forwarded = argv if argv is not None else sys.argv[1:]
        command = [sys.executable, __file__, *forwarded, "--arrays", str(path)]
        env = {**os.environ, "PYTHONPATH": str(baseline)}
        subprocess.run(command, env=env, cwd=HERE, check=True)
        with np.load(path) as saved:
            old = {}
            for key in saved.files:
                snr, name = key.split("/")
                old.setdefault(snr, {})[name] = saved[key]
    new = run(args)
    out = {
        "command": "python benchmarks/benchmarks/bench_denoise_quality.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "baseline": str(baseline),
        "split": args.split,
        "n_stars": int(len(next(iter(new.values()))["mse"])),
        "vmax_kms": args.vmax,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "snr": compare(old, new),
    }
    print(json.dumps(out, indent=2))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
