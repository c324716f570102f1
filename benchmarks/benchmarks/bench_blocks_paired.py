"""The denoiser's MAP in row blocks (one per torch thread) against one block, paired.

``denoise_arrays`` runs a batch's MAP in row blocks, one per torch thread, each block
in its own Python thread with one intra-op thread
(`specutils_deepclean.models.blocks`); with ``inference.MIN_BLOCK_ROWS`` set beyond the
batch it runs the batch as one block, as the code before did (``map_estimate`` itself
is unchanged), so the two are timed in one process, in turn (blocks, one block,
blocks, ...), ``--repeats`` times after a warm-up round, and the ratio of each pair is
kept:

* ``denoise``: the public call end to end, as ``bench_throughput.py`` times it
  (MILES ``val`` stars, S/N 50, library grid), at each ``--batch-sizes``, calls
  repeated up to ``--spectra`` spectra per timing;
* ``map``: the MAP alone, as ``bench_denoise_speed.py --fit-velocity`` times it (stars
  of the model grid observed at ``--snr``), a batch of ``--map-batch``.

Both answers are compared too (the largest difference of the denoised flux relative to
its scale, and the share of stars with the same MAP class).

    python benchmarks/benchmarks/bench_blocks_paired.py --threads 2 \\
        --json benchmarks/results/blocks_paired.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from specutils_deepclean import inference
from specutils_deepclean.benchmarking.denoise import deepclean
from specutils_deepclean.benchmarking.tellurics import as_spectrum
from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import load_model
from specutils_deepclean.manipulation import denoise

from _common import interleaved, observations
from bench_denoise_speed import simulated
from bench_throughput import _commit

BLOCK_ROWS = inference.MIN_BLOCK_ROWS


def in_blocks(run, blocks: bool):
    """``run`` with the batch in row blocks (the default) or as one block; its last
    answer is kept in ``run.answer``."""

    def job():
        inference.MIN_BLOCK_ROWS = BLOCK_ROWS if blocks else sys.maxsize
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. out-of-distribution notes: not timed
                job.answer = run()
        finally:
            inference.MIN_BLOCK_ROWS = BLOCK_ROWS

    return job


def paired(runs: dict, spectra: int, repeats: int) -> dict:
    """Timings of ``runs`` (label -> callable) with and without blocks, the pairs' ratios
    and how far the answers differ."""
    jobs = {}
    for label, run in runs.items():
        jobs[f"{label} blocks"], jobs[f"{label} one"] = in_blocks(run, True), in_blocks(run, False)
    seconds = interleaved(jobs, repeats)
    out = {}
    for label in runs:
        new, old = seconds[f"{label} blocks"], seconds[f"{label} one"]
        ratios = [o / n for n, o in zip(new, old, strict=True)]
        a, b = jobs[f"{label} blocks"].answer, jobs[f"{label} one"].answer
        out[label] = {
            "seconds_blocks": [round(s, 4) for s in new],
            "seconds_one_block": [round(s, 4) for s in old],
            "spectra_per_second_blocks": round(spectra / float(np.median(new)), 2),
            "spectra_per_second_one_block": round(spectra / float(np.median(old)), 2),
            "speedup_per_pair": [round(r, 3) for r in ratios],
            "speedup_median": round(float(np.median(ratios)), 3),
            **compare(a, b),
        }
        print(label, json.dumps(out[label]), flush=True)
    return out


def compare(a, b) -> dict:
    """Largest |flux difference| / max |flux| and the share of equal MAP classes."""
    if isinstance(a, tuple):  # deepclean: (MAPResult, flux, flux_sigma)
        flux_a, flux_b = a[1], b[1]
        same = float(np.mean(a[0].map_class == b[0].map_class))
    else:  # a Spectrum
        flux_a, flux_b = a.flux.value, b.flux.value
        classes = (np.atleast_1d(a.meta["deepclean"]["map_class"]),
                   np.atleast_1d(b.meta["deepclean"]["map_class"]))
        same = float(np.mean(classes[0] == classes[1]))
    diff = np.nanmax(np.abs(flux_a - flux_b)) / np.nanmax(np.abs(flux_b))
    return {"max_relative_flux_difference": float(diff), "same_map_class_share": same}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--spectra", type=int, default=256, help="spectra per timing")
    parser.add_argument("--spectra-1", type=int, default=16, help="spectra per timing at batch 1")
    parser.add_argument("--map-batch", type=int, default=256, help="0: no MAP timing")
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--note", default=None, help="a note stored in the JSON")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if min(args.batch_sizes + [args.repeats, args.spectra, args.spectra_1]) < 1:
        parser.error("batch sizes, --repeats and the spectra per timing must be positive")
    torch.set_num_threads(args.threads)
    result = {
        "command": "python benchmarks/benchmarks/bench_blocks_paired.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "min_block_rows": BLOCK_ROWS,
        "repeats": args.repeats,
    }
    if args.note:
        result["note"] = args.note
    flux, sigma, wave, medium = observations(max(args.batch_sizes), args.seed)
    runs = {}
    for batch in args.batch_sizes:
        n_calls = max(1, (args.spectra_1 if batch == 1 else args.spectra) // batch)
        spectrum = as_spectrum(flux[:batch], sigma[:batch], wave, medium)

        def run(spectrum=spectrum, n_calls=n_calls):
            for _ in range(n_calls):
                out = denoise(spectrum, device="cpu")
            return out

        runs[f"denoise batch {batch}"] = run
        result.setdefault("spectra_per_timing", {})[f"denoise batch {batch}"] = batch * n_calls
    for label, run in runs.items():
        result[label] = paired({label: run}, result["spectra_per_timing"][label], args.repeats)[
            label
        ]
    if args.map_batch:
        model = load_model("denoiser-miles")
        f, s, m = simulated(model, load_library(None), args.map_batch, args.snr, args.seed)
        options = Namespace(
            steps=20, starts=2, tol=5e-2, margin=10.0, clip=5.0, seed=args.seed, fit_velocity=True
        )
        label = f"map batch {args.map_batch} S/N {args.snr:g} velocity fitted"
        result[label] = paired(
            {label: lambda: deepclean(model, f, s, m, options)}, args.map_batch, args.repeats
        )[label]
    result["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
