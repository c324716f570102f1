"""End-to-end survey speed: files per second and memory, one process vs Dask workers.

A mock survey of ``n_files`` FITS files is written by the simulator
(:meth:`~specutils_deepclean.simulate.Observation.write_files`: the shipped example
stars cycled, S/N 20-100, airmass 1-2.5, random stellar velocities) and cleaned with
:func:`~specutils_deepclean.parallel.clean_files`, in this process and on a local Dask
cluster of ``workers`` processes (the cluster's start and close included), the two
runs in pairs, ``repeats`` pairs alternating which runs first, so that load from
other programs falls on both alike.  For each run: wall time, files per second, the
load average and the fraction of the machine's CPU time in use (by anything) during
the run, and the resident memory of this process and its children (the Dask workers)
sampled every 0.25 s, whose peak and whose trend over the second half of the run
(MiB per 1,000 files) show whether memory stays flat.  The speed-up is the median
over pairs of one-process time / Dask time.  ``cpu_seconds`` (user and system time of this process and
its children, the Dask workers) is the run's work whatever the load: on an idle
machine, a Dask run whose CPU seconds match the one-process run's spreads them over
its workers.

    specutils-deepclean benchmark speed --files 1000 --workers 2 --repeats 3 --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "run"]


def _tree_rss() -> float:
    """Resident memory (MiB) of this process and all its children."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # a child that just ended
            continue
    return total / 2**20


class _Sampler(threading.Thread):
    def __init__(self, every: float = 0.25):
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()
        self._start_time = time.perf_counter()

    def run(self):
        while not self._halt.is_set():
            self.samples.append((time.perf_counter() - self._start_time, _tree_rss()))
            self._halt.wait(self.every)

    def stop(self) -> np.ndarray:
        self._halt.set()
        self.join()
        return np.array(self.samples)


def _survey(folder: Path, n_files: int, seed: int) -> list[Path]:
    from ..datasets import load_examples
    from ..simulate import Simulator, prepare_truth

    library = load_examples()
    grid = library.wavelength.value
    truth, _ = prepare_truth(library, grid, library.medium)
    simulator = Simulator(grid, library.medium, fwhm=library.fwhm.value)
    rng = np.random.default_rng(seed)
    rows = np.arange(n_files) % len(library)
    obs = simulator.observe(
        truth[rows], rng.uniform(20, 100, n_files), seed=seed, airmass=rng.uniform(1, 2.5, n_files)
    )
    return obs.write_files(folder, prefix="survey")


def _busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    import psutil

    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle, sum(times)


def _timed(files, output: Path, task: str, options: dict, **kwargs) -> dict:
    from ..parallel import clean_files

    load_before = os.getloadavg()[0]
    busy_before = _busy()
    cpu_before = os.times()
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    summary = clean_files([str(p) for p in files], output, task, options=options, **kwargs)
    seconds = time.perf_counter() - start
    samples = sampler.stop()
    busy_after = _busy()
    cpu_after = os.times()  # children: the Dask workers, joined when the cluster closed
    cpu = sum(b - a for a, b in zip(cpu_before[:4], cpu_after[:4], strict=True))
    shutil.rmtree(output, ignore_errors=True)  # the next run writes all files again
    late = samples[samples[:, 0] > samples[-1, 0] / 2]
    slope = np.polyfit(late[:, 0], late[:, 1], 1)[0] if len(late) > 3 else float("nan")
    rate = len(summary.done) / seconds
    return {
        "files_done": len(summary.done),
        "files_failed": len(summary.failed),
        "seconds": round(seconds, 2),
        "files_per_second": round(rate, 2),
        "peak_rss_mib": round(float(samples[:, 1].max()), 1),
        "rss_trend_mib_per_1000_files": round(float(slope / rate * 1000), 2),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_seconds": round(cpu, 1),
        "machine_cpu_busy_fraction": round(
            (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1e-9), 3
        ),
        "rss_trace": {
            "seconds": np.round(samples[:, 0], 2).tolist(),
            "mib": np.round(samples[:, 1], 1).tolist(),
        },
    }


def run(
    n_files: int = 1000,
    *,
    workers: int = 2,
    task: str = "detelluric",
    batch_size: int = 64,
    options: dict | None = None,
    seed: int = 0,
    repeats: int = 1,
    workdir: str | os.PathLike | None = None,
) -> dict:
    """Write the mock survey and time the runs; returns the results as a dict.

    Parameters
    ----------
    n_files : int
        Files in the mock survey.
    workers : int
        Dask worker processes of the second run of each pair (0: one-process runs only).
    task : {"detelluric", "denoise"}
        What to run on every file.
    batch_size : int
        Files per batch.
    options : dict, optional
        Keyword arguments of the cleaning function.
    seed : int
        Simulation seed.
    repeats : int
        Pairs of runs (odd pairs run the Dask run first).
    workdir : str or path-like, optional
        Folder for the files (default: a temporary folder, removed afterwards).

    Returns
    -------
    dict
        ``single_process`` and ``dask_<workers>_workers``: the first pair's runs (with
        their memory traces); ``runs``: every run without its trace, in the order run;
        ``speedup``: per pair and the median (with ``workers``).
    """
    import torch

    dask_name = f"dask_{workers}_workers"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        files = _survey(tmp / "in", n_files, seed)
        written = time.perf_counter() - start
        results = {
            "n_files": n_files,
            "task": task,
            "batch_size": batch_size,
            "options": options or {},
            "seconds_writing_files": round(written, 1),
            "cpu_count": os.cpu_count(),
            "torch_threads_single": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "repeats": repeats,
        }
        runs = []
        for pair in range(repeats):
            kinds = ["single_process"] + ([dask_name] if workers else [])
            for kind in kinds[::-1] if pair % 2 else kinds:
                extra = {"workers": workers} if kind == dask_name else {}
                record = _timed(
                    files, tmp / "out", task, options or {}, batch_size=batch_size, **extra
                )
                runs.append({"run": kind, "pair": pair, **record})
                results.setdefault(kind, record)
    results["runs"] = [_without_trace(record) for record in runs]
    if workers:
        seconds = {
            kind: [r["seconds"] for r in runs if r["run"] == kind]
            for kind in ("single_process", dask_name)
        }
        ratios = [
            a / b for a, b in zip(seconds["single_process"], seconds[dask_name], strict=True)
        ]
        results["speedup"] = {
            "workers": workers,
            "per_pair": [round(r, 3) for r in ratios],
            "median": round(float(np.median(ratios)), 3),
        }
    return results


def _without_trace(value):
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "rss_trace"}
    if isinstance(value, list):
        return [_without_trace(v) for v in value]
    return value


def main(argv=None) -> int:
    """``specutils-deepclean benchmark speed``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean benchmark speed",
        description=__doc__.split("\n\n")[1],
        epilog="example:\n  specutils-deepclean benchmark speed --files 1000 --workers 2 "
        "--repeats 3 --json speed.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=1000, help="files in the mock survey")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (0: skip)")
    parser.add_argument("--task", choices=("detelluric", "denoise"), default="detelluric")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="denoise: MAP steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="pairs of runs, one process and Dask"
    )
    parser.add_argument("--note", default=None, help="a note stored in the JSON")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.files < 1 or args.workers < 0 or args.batch_size < 1 or args.repeats < 1:
        parser.error(
            "--files, --batch-size and --repeats must be positive, --workers at least 0"
        )
    options = {"device": "cpu"}
    if args.steps is not None:
        options["steps"] = args.steps
    results = run(
        args.files, workers=args.workers, task=args.task, batch_size=args.batch_size,
        options=options, seed=args.seed, repeats=args.repeats,
    )
    if args.note:
        results["note"] = args.note
    results["command"] = "specutils-deepclean benchmark speed " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    brief = {key: _without_trace(value) for key, value in results.items()}  # traces: JSON only
    print(json.dumps(brief, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
