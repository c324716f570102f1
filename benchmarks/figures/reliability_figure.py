"""The class posterior's reliability diagram of the denoising docs page, from ``bench_ood.py``.

Reads ``benchmarks/results/ood_test.json``: left, the reliability diagram at S/N 10
(per confidence bin of the top class: its accuracy against its mean confidence, the
marker's area the bin's count; the flagged spectra, uniform, sit at 1/6, right a
sixth of the time); right, the expected calibration error per S/N with its 5-95 %
interval over stars, and the uncalibrated one.

    python benchmarks/figures/reliability_figure.py

writes ``docs/_static/class_reliability.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "benchmarks/results/ood_test.json"
TARGET = ROOT / "docs/_static/class_reliability.png"


def figure(result: dict) -> Figure:
    """The two panels from ``bench_ood.py``'s JSON."""
    stars = result["stars"]
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    diagram = stars["10"]["reliability_diagram"]
    total = sum(row["count"] for row in diagram)
    left.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfectly calibrated")
    left.scatter(
        [row["confidence"] for row in diagram],
        [row["accuracy"] for row in diagram],
        s=[2000 * row["count"] / total for row in diagram],
        color="tab:blue",
        alpha=0.7,
        label="confidence bins (area: count)",
    )
    for row in diagram:
        left.annotate(
            str(row["count"]), (row["confidence"], row["accuracy"]),
            textcoords="offset points", xytext=(6, -12), fontsize=7,
        )  # fmt: skip
    left.set(
        xlim=(0, 1.02), ylim=(-0.02, 1.02), xlabel="mean confidence of the top class",
        ylabel="accuracy",
        title=f"S/N 10, {stars['n_stars']} {result['split']} stars x {stars['realisations']}",
    )  # fmt: skip
    left.legend(loc="upper left", fontsize=8, markerscale=0.3)
    snrs = [key for key in stars if key.isdigit()]
    x = [float(s) for s in snrs]
    ece = [stars[s]["ece"] for s in snrs]
    low = [stars[s]["ece"] - stars[s]["ece_interval"][0] for s in snrs]
    high = [stars[s]["ece_interval"][1] - stars[s]["ece"] for s in snrs]
    right.errorbar(x, ece, yerr=[low, high], fmt="o-", capsize=3, label="calibrated (5-95 %)")
    right.plot(x, [stars[s]["ece_uncalibrated"] for s in snrs], "s--", color="0.5",
               label="uncalibrated")  # fmt: skip
    right.axhline(0.05, color="tab:red", lw=1, ls=":", label="target at S/N 10")
    right.set(xscale="log", xlabel="S/N per pixel", ylabel="expected calibration error")
    right.minorticks_off()
    right.set_xticks(x, [str(s) for s in snrs])
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    return fig


def main() -> int:
    result = json.loads(SOURCE.read_text())
    figure(result).savefig(TARGET, dpi=110)
    print("wrote", TARGET.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
