"""Figures of the denoising docs page from ``benchmarks/results/denoise_test.json``.

In the style of Kang et al.: Fig. 9 (per-spectrum MSE of the denoising autoencoder
against deepclean's, per class) and Fig. 10 (MSE against S/N; DER_SNR before and
after denoising).  Fig. 6 (MSE against gap width and position) is drawn by
``gaps_figures.py`` from ``bench_gaps.py``'s JSON.

    python benchmarks/figures/denoise_figures.py

writes ``docs/_static/denoise_vs_cdae.png`` and ``denoise_snr.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "docs/_static"


def _values(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def cdae_figure(result: dict, snr: str = "10") -> Figure:
    entry = result["snr"][snr]["mse_per_spectrum"]
    ours, cdae = _values(entry["deepclean"]), _values(entry["cdae"])
    classes = np.array(result["classes"])
    names = sorted(set(classes))
    fig = Figure(figsize=(9, 5), layout="constrained")
    axes = fig.subplots(2, (len(names) + 1) // 2, squeeze=False).ravel()
    low, high = np.nanmin([ours, cdae]) / 2, np.nanmax([ours, cdae]) * 2
    for ax, name in zip(axes, names, strict=False):
        pick = classes == name
        wins = np.mean(ours[pick] < cdae[pick])
        ax.loglog(ours[pick], cdae[pick], ".", color="tab:orange")
        ax.plot([low, high], [low, high], "k-", lw=0.8)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_title(f"{name}: win rate {wins:.2f} (n={pick.sum()})", fontsize=9)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("deepclean MSE")
    fig.supylabel("denoising autoencoder MSE")
    fig.suptitle(f"S/N {snr}: points above the line are spectra deepclean denoised better")
    return fig


def snr_figure(result: dict) -> Figure:
    snrs = list(result["snr"])
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    data = [_values(result["snr"][s]["mse_per_spectrum"]["deepclean"]) for s in snrs]
    left.boxplot([d[np.isfinite(d)] for d in data], tick_labels=snrs, showfliers=False)
    left.set_yscale("log")
    left.set_xlabel("S/N of the observation")
    left.set_ylabel("deepclean MSE")
    for s in snrs:
        before = _values(result["snr"][s]["der_snr_before"])
        after = _values(result["snr"][s]["der_snr_after"])
        right.loglog(before, after, ".", ms=3, label=f"S/N {s}")
    right.minorticks_off()
    right.set_xticks([float(s) for s in snrs], snrs)
    right.set_xlabel("DER_SNR before")
    right.set_ylabel("DER_SNR after")
    right.legend(fontsize=8)
    return fig


def main() -> int:
    result = json.loads((ROOT / "benchmarks/results/denoise_test.json").read_text())
    cdae_figure(result).savefig(STATIC / "denoise_vs_cdae.png", dpi=110)
    snr_figure(result).savefig(STATIC / "denoise_snr.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
