"""Docs table and figure of a survey speed benchmark JSON (``benchmark speed --json``).

    python benchmarks/figures/speed_figure.py
    python benchmarks/figures/speed_figure.py benchmarks/results/memory_10000.json \\
        --stem memory_10000

write ``docs/_generated/<stem>_table.rst`` and ``docs/_static/<stem>_memory.png``
(default: ``benchmarks/results/speed.json``, stem ``speed``).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _pairs(result: dict) -> list[str]:
    """The paired runs of ``--repeats`` (one process and Dask, in the order run) and the
    speed-up of each pair; nothing for a JSON without them."""
    if "speedup" not in result:
        return []
    speedup = result["speedup"]
    rows = [
        "",
        f".. list-table:: Paired runs: one process against {speedup['workers']} Dask workers "
        f"(median speed-up {speedup['median']:.2f})",
        "   :header-rows: 1",
        "",
        "   * - pair",
        "     - run (in the order run)",
        "     - wall time (s)",
        "     - load average before, after",
        "     - machine CPU busy",
    ]
    for run in result["runs"]:
        load = ", ".join(f"{value:.1f}" for value in run["load_average_1min_before_after"])
        rows += [
            f"   * - {run['pair'] + 1}",
            f"     - {run['run'].replace('_', ' ')}",
            f"     - {run['seconds']:.1f}",
            f"     - {load}",
            f"     - {100 * run['machine_cpu_busy_fraction']:.0f} %",
        ]
    rows += ["", "Speed-up per pair: " + ", ".join(f"{r:.2f}" for r in speedup["per_pair"]) + "."]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    default = ROOT / "benchmarks/results/speed.json"
    parser.add_argument("json", nargs="?", type=Path, default=default, help="benchmark JSON")
    parser.add_argument("--stem", default="speed", help="name stem of the table and figure")
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text())
    runs = {k: v for k, v in result.items() if isinstance(v, dict) and "rss_trace" in v}
    rows = [
        ".. list-table:: {} files, task {}, batch {}, {} CPU cores{}".format(
            result["n_files"], result["task"], result["batch_size"], result["cpu_count"],
            " (the first pair of runs)" if "runs" in result else "",
        ),
        "   :header-rows: 1",
        "",
        "   * - run",
        "     - files/s",
        "     - wall time (s)",
        "     - peak memory (MiB, all processes)",
        "     - memory trend, 2nd half (MiB per 1000 files)",
    ]
    for name, run in runs.items():
        rows += [
            f"   * - {name.replace('_', ' ')}",
            f"     - {run['files_per_second']:.1f}",
            f"     - {run['seconds']:.0f}",
            f"     - {run['peak_rss_mib']:.0f}",
            f"     - {run['rss_trend_mib_per_1000_files']:+.1f}",
        ]
    rows += _pairs(result)
    (ROOT / f"docs/_generated/{args.stem}_table.rst").write_text("\n".join(rows) + "\n")
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    for name, run in runs.items():
        ax.plot(run["rss_trace"]["seconds"], run["rss_trace"]["mib"], label=name.replace("_", " "))
    ax.set_xlabel("time since the run started [s]")
    ax.set_ylabel("resident memory [MiB]")
    ax.set_title(f"{result['n_files']} files, {result['task']}")
    ax.legend()
    fig.savefig(ROOT / f"docs/_static/{args.stem}_memory.png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
