"""The tables of the denoising docs page, from ``benchmarks/results/denoise_test.json``
and ``benchmarks/results/denoise_speed.json``.

    python benchmarks/figures/denoise_table.py

Writes ``docs/_generated/denoise_table.rst``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ("gaussian", "median", "wavelet", "pca", "cdae", "cdae_zero_impute")


def class_table(result: dict, baseline: str) -> list[str]:
    """Win rate against one baseline per stellar class (rows) and S/N (columns)."""
    snrs = list(result["snr"])
    classes = sorted(result["snr"][snrs[0]]["win_rate_by_class"][baseline])
    lines = [
        f".. list-table:: Win rate of deepclean against {baseline} per true stellar class",
        "   :header-rows: 1",
        "",
        "   * - class",
        *[f"     - S/N {snr}" for snr in snrs],
    ]
    for name in classes:
        lines.append(f"   * - {name}")
        lines += [
            f"     - {result['snr'][snr]['win_rate_by_class'][baseline][name]:.2f}" for snr in snrs
        ]
    return lines


def table(result: dict) -> str:
    title = f"MILES test ({result['n_spectra']} stars): median MSE and win rate per S/N"
    first = next(iter(result["snr"].values()))
    names = [name for name in BASELINES if name in first["median_mse"]]
    lines = [
        f".. list-table:: {title}",
        "   :header-rows: 1",
        "",
        "   * - S/N",
        "     - noisy",
        "     - deepclean",
        *[f"     - {name} (win rate)" for name in names],
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
        lines += [f"     - {mse[name]:.2e} ({entry['win_rate'][name]:.2f})" for name in names]
        lines += [
            f"     - {entry['calibration_pooled']:.2f}",
            f"     - {entry['class_accuracy']:.2f}",
        ]
    if "cdae" in names:
        lines += ["", *class_table(result, "cdae")]
    lines += [
        "",
        f"MAP budget: at most {result['steps']} Newton steps, {result['starts']} starts per class; "
        f"{result['spectra_per_second']:.2f} spectra per second on {result['cpu_count']} cores "
        f"({result['torch_threads']} torch threads, the whole benchmark run, whatever else the "
        "host was running: the speed measurement is the next table).",
    ]
    return "\n".join(lines) + "\n"


def speed_table(speed: dict) -> str:
    lines = [
        f".. list-table:: MAP speed, batch {speed['batch']}, {speed['cpu_count']} cores, "
        f"{speed['torch_threads']} torch threads "
        "(``benchmarks/benchmarks/bench_denoise_speed.py``)",
        "   :header-rows: 1",
        "",
        "   * - S/N",
        "     - spectra per second",
        "     - (star, class) pairs refined after screening",
        "     - mean Newton steps of those",
    ]
    for snr, run in speed["snr"].items():
        lines += [
            f"   * - {snr}",
            f"     - {run['spectra_per_second']:.1f}",
            f"     - {run['refined_pairs_share_last_batch']:.0%}",
            f"     - {run['mean_newton_steps_refined_last_batch']:.1f}",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    result = json.loads((ROOT / "benchmarks/results/denoise_test.json").read_text())
    speed = json.loads((ROOT / "benchmarks/results/denoise_speed.json").read_text())
    text = table(result) + "\n" + speed_table(speed)
    (ROOT / "docs/_generated/denoise_table.rst").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
