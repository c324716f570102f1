"""Docs table and figure of the throughput sweep (``bench_throughput.py --json``).

    python benchmarks/figures/throughput_figure.py

reads ``benchmarks/results/throughput.json`` and writes
``docs/_generated/throughput_table.rst`` and ``docs/_static/throughput.png``: spectra
per second of ``remove_tellurics`` and ``denoise`` against the batch size and against
the pixels per input spectrum.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("remove_tellurics", "denoise")


def table(result: dict, sweep: str, heading: str) -> list[str]:
    """An rst list-table of one sweep: a row per setting, a column per function."""
    functions = [name for name in FUNCTIONS if name in result]
    settings = [row[sweep] for row in result[functions[0]][sweep]]
    rate = {
        name: {row[sweep]: row["spectra_per_second"] for row in result[name][sweep]}
        for name in functions
    }
    lines = [f".. list-table:: {heading}", "   :header-rows: 1", "", f"   * - {sweep}"]
    lines += [f"     - ``{name}`` (spectra/s)" for name in functions]
    for setting in settings:
        lines.append(f"   * - {setting:,}")
        lines += [f"     - {rate[name][setting]:.1f}" for name in functions]
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    default = ROOT / "benchmarks/results/throughput.json"
    parser.add_argument("json", nargs="?", type=Path, default=default, help="sweep JSON")
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text())
    machine = result["machine"]
    functions = [name for name in FUNCTIONS if name in result]
    pixel_batch = result[functions[0]]["pixel_batch"]
    threads = machine["torch_threads"]
    where = (
        f"{machine['cpu_count']} CPU cores, torch {machine['torch']}, {threads} torch "
        f"thread{'s' if threads != 1 else ''}, load average "
        f"{machine['load_average_1min_at_start']:.1f} at the start, "
        f"{machine['load_average_1min_at_end']:.1f} at the end"
    )
    rows = table(result, "batch", f"Spectra per second against the batch size ({where})")
    rows += table(
        result, "pixels",
        f"Spectra per second against the pixels per input spectrum, batch {pixel_batch} "
        f"({where})",
    )
    (ROOT / "docs/_generated/throughput_table.rst").write_text("\n".join(rows))
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    by_batch, by_pixels = fig.subplots(1, 2, sharey=True)
    for name in functions:
        for ax, sweep in ((by_batch, "batch"), (by_pixels, "pixels")):
            points = result[name][sweep]
            ax.plot(
                [row[sweep] for row in points],
                [row["spectra_per_second"] for row in points],
                marker="o",
                label=name,
            )
    by_batch.set_xlabel("spectra per call (batch)")
    by_pixels.set_xlabel(f"pixels per input spectrum (batch {pixel_batch})")
    by_batch.set_ylabel("spectra per second")
    for ax in (by_batch, by_pixels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    by_batch.legend()
    fig.suptitle(where, fontsize="small")
    fig.savefig(ROOT / "docs/_static/throughput.png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
