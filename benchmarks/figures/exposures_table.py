"""The several-exposures table of the denoising docs page, from
``benchmarks/results/exposures_test.json`` (``bench_exposures.py``).

    python benchmarks/figures/exposures_table.py

Writes ``docs/_generated/exposures_table.rst``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _interval(entry: dict, key: str, digits: int) -> str:
    low, high = entry[f"{key}_90"]
    return f"{entry[key]:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def table(result: dict) -> str:
    """The list-table: one column per (S/N per exposure, exposures)."""
    columns = [
        (f"{float(snr):g}, {name[1:]}", runs[name], runs["single"])
        for snr, runs in result["snr"].items()
        for name in sorted(k for k in runs if k.startswith("n"))
    ]
    rows = [
        ("one exposure (1e-4)", lambda run, single: f"{1e4 * single['median_mse']:.2f}"),
        ("joint posterior (1e-4)", lambda run, _: f"{1e4 * run['joint']['median_mse']:.2f}"),
        (
            "one exposure at the co-added S/N (1e-4)",
            lambda run, _: f"{1e4 * run['equivalent']['median_mse']:.2f}",
        ),
        ("co-add denoised (1e-4)", lambda run, _: f"{1e4 * run['coadd']['median_mse']:.2f}"),
        (
            "joint / co-added S/N, median per-star ratio (90 %)",
            lambda run, _: _interval(run["joint_vs_equivalent"], "median_paired_ratio", 3),
        ),
        (
            "joint / co-added S/N, ratio of the medians (90 %)",
            lambda run, _: _interval(run["joint_vs_equivalent"], "median_mse_ratio", 2),
        ),
        (
            "joint / co-added S/N, ratio of the means (90 %)",
            lambda run, _: _interval(run["joint_vs_equivalent"], "mean_mse_ratio", 2),
        ),
        (
            "joint wins against the co-added S/N",
            lambda run, _: f"{run['joint_vs_equivalent']['win_rate']:.2f}",
        ),
        (
            "joint / co-add, median per-star ratio",
            lambda run, _: f"{run['joint_vs_coadd']['median_paired_ratio']:.3f}",
        ),
        (
            "calibration, joint (pooled)",
            lambda run, _: f"{run['joint']['calibration_pooled']:.2f}",
        ),
        (
            "calibration, co-added S/N (pooled)",
            lambda run, _: f"{run['equivalent']['calibration_pooled']:.2f}",
        ),
        (
            r"median :math:`|v - v_\mathrm{true}|`, joint (km/s)",
            lambda run, _: f"{run['joint']['median_abs_dv']:.1f}",
        ),
        (
            r"median :math:`|v - v_\mathrm{true}|`, co-added S/N (km/s)",
            lambda run, _: f"{run['equivalent']['median_abs_dv']:.1f}",
        ),
        (
            "velocity within its error, joint",
            lambda run, _: f"{run['joint']['velocity_within_error']:.2f}",
        ),
        (
            "velocity within its error, co-added S/N",
            lambda run, _: f"{run['equivalent']['velocity_within_error']:.2f}",
        ),
    ]
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - S/N per exposure, exposures"]
    lines += [f"     - {header}" for header, _, _ in columns]
    for label, cell in rows:
        lines.append(f"   * - {label}")
        lines += [f"     - {cell(run, single)}" for _, run, single in columns]
    return "\n".join(lines) + "\n"


def main() -> int:
    result = json.loads((ROOT / "benchmarks/results/exposures_test.json").read_text())
    out = ROOT / "docs/_generated/exposures_table.rst"
    out.write_text(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
