"""Paired speed comparison of the denoiser: this checkout against an older one.

Runs this checkout's ``bench_denoise_speed.py`` (the MAP) on the package of the
``--baseline`` source tree (a checkout of the older code, for example ``git archive
<commit> | tar -x -C DIR``) and on this checkout's, in turn, baseline first, ``--pairs``
times, each in a fresh process with ``PYTHONPATH`` set to its tree and the same settings
(``--threads``, ``--snr``, ``--batch``, ``--repeats``, ``--fit-velocity``).  With
``--public`` the runs are ``bench_throughput.py``'s instead: the public ``denoise`` on a
Spectrum of ``--batch`` rows (its S/N 50 stars, the velocity fitted as ``denoise``
does; ``--snr`` and ``--fit-velocity`` do not apply), the median of ``--repeats``
timings, no CPU time.  On a machine shared with other work, the ratio of each pair
(new / baseline, taken back to back) is the figure to trust, and with ``--threads 1``
the ratio of spectra per CPU second (the work done) more than that of the wall time;
the medians of the ratios and of both are reported.

    python benchmarks/benchmarks/bench_denoise_speed_paired.py --baseline /tmp/old \\
        --threads 2 --snr 10 --pairs 5 --json benchmarks/results/denoise_speed_paired.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
SCRIPT = Path("benchmarks/benchmarks/bench_denoise_speed.py")
PUBLIC = Path("benchmarks/benchmarks/bench_throughput.py")


def run_once(tree: Path, settings: list[str], public: bool) -> tuple[float, float | None]:
    """Spectra per wall and per CPU second (None with ``public``) of one run of
    ``bench_denoise_speed.py``, or with ``public`` of ``bench_throughput.py``, with
    ``tree``'s package."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        script = PUBLIC if public else SCRIPT
        command = [sys.executable, str(HERE / script), *settings, "--json", str(out)]
        subprocess.run(command, env=env, cwd=HERE, check=True, capture_output=True)
        result = json.loads(out.read_text())
    if public:
        (run,) = result["denoise"]["batch"]
        return float(run["spectra_per_second"]), None
    (run,) = result["snr"].values()
    return float(run["spectra_per_second"]), float(run["spectra_per_cpu_second"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="source tree of the older code")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--snr", default="10", help="one S/N")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="per run, the best kept")
    parser.add_argument("--fit-velocity", action="store_true")
    parser.add_argument(
        "--public", action="store_true", help="time the public denoise (bench_throughput.py)"
    )
    parser.add_argument("--note", default="", help="written into the JSON (the machine...)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    baseline = Path(args.baseline).resolve()
    if not (baseline / "specutils_deepclean").is_dir():
        parser.error(f"{baseline} has no specutils_deepclean package")
    if args.public:
        settings = [
            f"--threads={args.threads}",
            "--functions=denoise",
            f"--batch-sizes={args.batch}",
            f"--spectra={args.n}",
            "--pixels",
            f"--repeats={args.repeats}",
        ]
    else:
        settings = [
            f"--threads={args.threads}",
            f"--snr={args.snr}",
            f"--batch={args.batch}",
            f"--n={args.n}",
            f"--repeats={args.repeats}",
        ] + ["--fit-velocity"] * args.fit_velocity
    old, new = [], []
    for _ in range(args.pairs):
        old.append(run_once(baseline, settings, args.public))
        new.append(run_once(HERE, settings, args.public))
    out = {
        "command": "python benchmarks/benchmarks/bench_denoise_speed_paired.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "baseline": str(baseline),
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "note": args.note,
    }
    for i, name in enumerate(("spectra_per_second", "spectra_per_cpu_second")[: 2 - args.public]):
        before, after = [run[i] for run in old], [run[i] for run in new]
        ratios = [b / a for a, b in zip(before, after, strict=True)]
        out[name] = {
            "baseline": before,
            "new": after,
            "ratio_per_pair": ratios,
            "baseline_median": statistics.median(before),
            "new_median": statistics.median(after),
            "ratio_median": statistics.median(ratios),
        }
    print(json.dumps(out, indent=2))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
