"""Throughput of ``remove_tellurics`` and ``denoise`` against batch size and pixels, CPU.

The public calls, end to end (a `~specutils.Spectrum` in, a Spectrum out, default
settings and shipped models: ``remove_tellurics`` with ``karaoke-miles`` in its
default mode, ``denoise`` with ``denoiser-miles``), on MILES ``val`` stars observed
by the telluric benchmark's simulator at S/N 50 on the library grid:

* ``batch``: one call on a Spectrum of ``batch`` rows, for every ``--batch-sizes``
  (calls repeated up to ``--spectra`` spectra per timing, ``--spectra-1`` at batch 1);
* ``pixels``: the same stars resampled (linear interpolation, flux and uncertainty)
  onto ``--pixels`` log-uniform grids over the library's range, one call on a
  Spectrum of ``--pixel-batch`` rows: the model grid stays the same, the input's
  resampling to and from it grows with the pixels.

Every setting of a sweep is timed in turn (A B C A B C ...), ``--repeats`` times
after one warm-up round, so that other work on the machine slows all settings alike;
the JSON keeps every time and the median's rate (spectra per second).

    python benchmarks/benchmarks/bench_throughput.py --threads 2 \\
        --json benchmarks/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from specutils_deepclean.benchmarking.tellurics import as_spectrum
from specutils_deepclean.manipulation import denoise, remove_tellurics

from _common import interleaved, observations

FUNCTIONS = {"remove_tellurics": remove_tellurics, "denoise": denoise}


def resampled(flux, sigma, wave, n_pix: int):
    """Flux and sigma interpolated onto ``n_pix`` log-uniform pixels over ``wave``'s range."""
    grid = np.geomspace(wave[0], wave[-1], n_pix)

    def interp(values):
        return np.stack([np.interp(grid, wave, row) for row in values])

    return interp(flux), interp(sigma), grid


def calls(function, spectrum, n_calls: int):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. out-of-distribution notes: not timed
            for _ in range(n_calls):
                function(spectrum, device="cpu")

    return run


def rows_of(seconds: dict, spectra: dict, key: str) -> list:
    return [
        {
            key: setting,
            "spectra_per_timing": spectra[setting],
            "seconds": [round(s, 4) for s in seconds[setting]],
            "spectra_per_second": round(spectra[setting] / float(np.median(seconds[setting])), 2),
        }
        for setting in seconds
    ]


def batch_sweep(function, flux, sigma, wave, medium, sizes, n_spectra, repeats) -> list:
    """Rows per batch size; ``n_spectra(batch)``: spectra per timing."""
    jobs, spectra = {}, {}
    for batch in sizes:
        n_calls = max(1, n_spectra(batch) // batch)
        spectrum = as_spectrum(flux[:batch], sigma[:batch], wave, medium)
        jobs[batch], spectra[batch] = calls(function, spectrum, n_calls), batch * n_calls
    return rows_of(interleaved(jobs, repeats), spectra, "batch")


def pixel_sweep(function, flux, sigma, wave, medium, pixels, batch, repeats) -> list:
    jobs, spectra = {}, {}
    for n_pix in pixels:
        f, s, grid = resampled(flux[:batch], sigma[:batch], wave, n_pix)
        jobs[n_pix] = calls(function, as_spectrum(f, s, grid, medium), 1)
        spectra[n_pix] = batch
    return rows_of(interleaved(jobs, repeats), spectra, "pixels")


def _commit() -> str | None:
    try:
        run = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return run.stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument(
        "--spectra", type=int, default=64, help="spectra per timing (at least one call)"
    )
    parser.add_argument(
        "--spectra-1", type=int, default=16, help="spectra per timing at batch 1"
    )
    parser.add_argument(
        "--pixels",
        type=int,
        nargs="*",
        default=[1000, 4300, 16_000, 64_000],
        help="grid sizes of the pixel sweep (none: no sweep)",
    )
    parser.add_argument("--pixel-batch", type=int, default=64)
    parser.add_argument(
        "--functions", nargs="+", choices=sorted(FUNCTIONS), default=sorted(FUNCTIONS)
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--note", default=None, help="a note stored in the JSON")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if min(args.batch_sizes + args.pixels + [args.pixel_batch, args.repeats]) < 1:
        parser.error("batch sizes, pixels, --pixel-batch and --repeats must be positive")
    torch.set_num_threads(args.threads)
    flux, sigma, wave, medium = observations(
        max(args.batch_sizes + [args.pixel_batch]), args.seed
    )
    result = {
        "command": "python benchmarks/benchmarks/bench_throughput.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "data": "MILES val stars, telluric benchmark simulator, S/N 50, library grid",
        "library_pixels": int(wave.size),
        "repeats": args.repeats,
    }
    if args.note:
        result["note"] = args.note
    for name in args.functions:
        function = FUNCTIONS[name]
        def n_spectra(batch):
            return args.spectra_1 if batch == 1 else args.spectra

        result[name] = {
            "batch": batch_sweep(
                function, flux, sigma, wave, medium, args.batch_sizes, n_spectra, args.repeats
            ),
            "pixel_batch": args.pixel_batch,
            "pixels": pixel_sweep(
                function, flux, sigma, wave, medium, args.pixels, args.pixel_batch, args.repeats
            ),
        }
        entry = result[name]
        print(name, json.dumps(entry), flush=True)
    result["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
