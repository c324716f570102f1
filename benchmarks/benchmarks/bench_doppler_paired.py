"""In-process paired timing of ``denoise``'s MAP with an older tree's classes.

For each ``--swap MODULE:CLASS`` (default ``velocity:DopplerShift``; repeatable, for
example ``generator:IsometricAutoencoder`` and ``noiseflow:NoiseFlow``), the baseline
tree's ``specutils_deepclean/models/MODULE.py`` (``--baseline``, for example a
detached worktree of main) is loaded as a separate module and its class's methods
and attributes swapped into this checkout's class for the baseline's runs (so
objects already built, such as the loaded model's networks, run the older code);
everything else is this checkout's code.  ``denoise``'s MAP (`denoise_arrays` with its defaults,
velocity fitted) runs on the same simulated batch (``bench_denoise_speed.simulated``:
MILES ``val``) with each class in turn, the order alternating per pair, after one
warm-up call.  Both sides share the
process, so other work on a shared machine slows them alike: the medians of the CPU
seconds per call and of the per-pair ratios are the figures to trust.  Also checks
that both give the same flux and MAP class.

    python benchmarks/benchmarks/bench_doppler_paired.py --baseline /tmp/main \\
        --json benchmarks/results/doppler_paired.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_denoise_speed import simulated  # noqa: E402

_NOT_SWAPPED = ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__")


def baseline_class(tree: Path, swap: str) -> tuple[type, type]:
    """This checkout's class and ``tree``'s (its module loaded as its own) for ``MODULE:CLASS``."""
    module_name, _, class_name = swap.partition(":")
    path = tree / "specutils_deepclean" / "models" / f"{module_name}.py"
    if not path.is_file():
        raise SystemExit(f"--baseline has no {path}")
    spec = importlib.util.spec_from_file_location(
        f"specutils_deepclean.models._{module_name}_base", path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = importlib.import_module(f"specutils_deepclean.models.{module_name}")
    return getattr(current, class_name), getattr(module, class_name)


def members(cls: type) -> dict:
    """The attributes a class defines itself (methods, properties, constants)."""
    return {k: v for k, v in vars(cls).items() if k not in _NOT_SWAPPED}


def install(cls: type, attributes: dict) -> None:
    """Make ``cls`` define exactly ``attributes`` (besides `_NOT_SWAPPED`)."""
    for name in set(members(cls)) - set(attributes):
        delattr(cls, name)
    for name, value in attributes.items():
        setattr(cls, name, value)


def main(argv=None) -> dict:
    """Run the comparison and write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="source tree of the older code")
    parser.add_argument(
        "--swap",
        action="append",
        metavar="MODULE:CLASS",
        help="a class of specutils_deepclean.models to run as the baseline's "
        "(repeatable; default velocity:DopplerShift)",
    )
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--note", default="", help="written into the JSON (the machine...)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    from specutils_deepclean.benchmarking.denoise import deepclean
    from specutils_deepclean.datasets import load_library
    from specutils_deepclean.io.models import load_model

    torch.set_num_threads(args.threads)
    swaps = args.swap or ["velocity:DopplerShift"]
    classes = [baseline_class(Path(args.baseline), swap) for swap in swaps]
    sides = {
        "baseline": [(cls, members(old)) for cls, old in classes],
        "new": [(cls, members(cls)) for cls, _ in classes],
    }
    model = load_model("denoiser-miles")
    flux, sigma, missing = simulated(model, load_library(None), args.batch, args.snr, args.seed)

    settings = argparse.Namespace(
        steps=20, starts=2, tol=5e-2, margin=10.0, clip=5.0, seed=args.seed, fit_velocity=True
    )

    def run(name: str):
        for cls, attributes in sides[name]:
            install(cls, attributes)
        start = time.process_time()
        result = deepclean(model, flux, sigma, missing, settings)
        return time.process_time() - start, result

    run("new")  # warm-up
    cpu = {name: [] for name in sides}
    results = {}
    for pair in range(args.pairs):
        for name in sides if pair % 2 == 0 else list(sides)[::-1]:
            seconds, results[name] = run(name)
            cpu[name].append(seconds)
    for cls, attributes in sides["new"]:
        install(cls, attributes)
    (old, old_flux, _), (new, new_flux, _) = results["baseline"], results["new"]
    ratios = [b / n for b, n in zip(cpu["baseline"], cpu["new"], strict=True)]
    report = {
        "command": "python " + " ".join(map(shlex.quote, [sys.argv[0], *(argv or sys.argv[1:])])),
        "baseline": args.baseline,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "note", "swap")},
        "swapped": swaps,
        "note": args.note,
        "cpu_seconds": cpu,
        "speedup_per_pair": ratios,
        "speedup_median": statistics.median(ratios),
        "spectra_per_cpu_second_median": {
            name: args.batch / statistics.median(v) for name, v in cpu.items()
        },
        "max_abs_flux_difference": float(np.nanmax(np.abs(old_flux - new_flux))),
        "same_map_class": float(np.mean(old.map_class == new.map_class)),
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    out = main()
    print(json.dumps({k: out[k] for k in ("speedup_per_pair", "speedup_median")}))
