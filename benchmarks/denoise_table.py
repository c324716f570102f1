"""The tables of the denoising docs page, from ``benchmarks/results/denoise_test.json``.

    python benchmarks/denoise_table.py

Writes ``docs/_generated/denoise_table.rst``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("gaussian", "median", "wavelet", "pca")


def table(result: dict) -> str:
    title = f"MILES test ({result['n_spectra']} stars): median MSE and win rate per S/N"
    lines = [
        f".. list-table:: {title}",
        "   :header-rows: 1",
        "",
        "   * - S/N",
        "     - noisy",
        "     - deepclean",
        *[f"     - {name} (win rate)" for name in BASELINES],
        "     - calibration",
        "     - class accuracy",
    ]
    for snr, entry in result["snr"].items():
        mse = entry["median_mse"]
        lines += [
            f"   * - {snr}",
            f"     - {entry['noisy_median_mse']:.2e}",
            f"     - {mse['deepclean']:.2e}",
        ]
        lines += [f"     - {mse[name]:.2e} ({entry['win_rate'][name]:.2f})" for name in BASELINES]
        lines += [
            f"     - {entry['calibration_pooled']:.2f}",
            f"     - {entry['class_accuracy']:.2f}",
        ]
    if "gaps_snr10" in result:
        gaps = result["gaps_snr10"]
        lines += [
            "",
            f".. list-table:: Median MSE at S/N 10 with one gap ({gaps['n_spectra']} test stars)",
            "   :header-rows: 1",
            "",
            "   * - gap",
            "     - median MSE",
        ]
        for name, value in gaps["median_mse"].items():
            lines += [f"   * - {name.replace('_', ' px, ')}", f"     - {value:.2e}"]
    lines += [
        "",
        f"MAP budget: at most {result['steps']} Newton steps, {result['starts']} starts per class; "
        f"{result['spectra_per_second']:.2f} spectra per second on {result['cpu_count']} cores "
        f"({result['torch_threads']} torch threads).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    result = json.loads((ROOT / "benchmarks/results/denoise_test.json").read_text())
    (ROOT / "docs/_generated/denoise_table.rst").write_text(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
