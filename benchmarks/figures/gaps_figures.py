"""The gap figure and table of the denoising docs page, from ``bench_gaps.py``'s JSON.

Reads ``benchmarks/results/gaps_test.json`` (the shipped code) and
``benchmarks/results/gaps_test_before.json`` (the same run with ``--min-missing 2``:
no spectrum re-levelled, as before `~specutils_deepclean.models.level`).

    python benchmarks/figures/gaps_figures.py

writes ``docs/_static/denoise_gaps.png`` and ``docs/_generated/gaps_table.rst``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks/results"
PLACES = ("blue", "middle", "red")


def _widths(gaps: dict, place: str) -> list[tuple[int, str]]:
    """(pixels, key) of every gap at ``place``, narrowest first."""
    return sorted((row["width_pixels"], key) for key, row in gaps.items() if key.endswith(place))


def figure(now: dict, before: dict) -> Figure:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for place, colour in zip(PLACES, ("tab:blue", "tab:green", "tab:red"), strict=True):
        rows = _widths(now["gaps"], place)
        pixels = [w for w, _ in rows]
        mse = [now["gaps"][k]["median_mse"]["deepclean"] for _, k in rows]
        pca = [now["gaps"][k]["median_mse"]["pca10"] for _, k in rows]
        left.plot(pixels, mse, "o-", color=colour, label=f"deepclean, {place}")
        left.plot(pixels, pca, "s:", color=colour, alpha=0.6, label=f"PCA-10, {place}")
        old = [(w, before["gaps"][k]["median_mse"]["deepclean"]) for w, k in rows
               if k in before["gaps"]]  # fmt: skip
        left.plot(*zip(*old, strict=True), "x--", color=colour, alpha=0.5, label=f"before, {place}")
        cover = [now["gaps"][k]["calibration_in_gap"] for _, k in rows]
        right.plot(pixels, cover, "o-", color=colour, label=place)
    none = now["gaps"]["none"]["median_mse"]["deepclean"]
    left.axhline(none, color="k", ls="--", lw=0.8, label="no gap")
    left.axhline(2 * none, color="grey", ls=":", lw=0.8, label="2 x no gap")
    left.set_yscale("log")
    left.set_xlabel("gap width [pixels]")
    left.set_ylabel(f"median MSE, S/N {now['snr']:g}")
    left.legend(fontsize=6, ncol=2)
    right.axhspan(0.60, 0.76, color="grey", alpha=0.2, label="0.60-0.76")
    right.axhline(0.683, color="k", lw=0.8)
    right.set_xlabel("gap width [pixels]")
    right.set_ylabel("1-sigma coverage over the gap")
    right.legend(fontsize=8)
    fig.suptitle(f"Missing flux ({now['n_stars']} {now['split']} stars)")
    return fig


def table(now: dict, before: dict) -> str:
    none = now["gaps"]["none"]["median_mse"]["deepclean"]
    lines = [
        f".. list-table:: One gap at S/N {now['snr']:g}, {now['n_stars']} {now['split']} "
        "stars (``benchmarks/results/gaps_test.json``; before: ``gaps_test_before.json``)",
        "   :header-rows: 1",
        "",
        "   * - gap [pixels]",
        "     - median MSE (ratio to no gap)",
        "     - before (ratio)",
        "     - PCA-10",
        "     - in the gap: deepclean / PCA-10, win rate",
        "     - runaway (MSE > 0.1 in the gap): deepclean / PCA-10",
        f"     - runaway, scale-free (RMS error > {now['runaway_relative_rms']:g} x the true "
        "flux's RMS in the gap): deepclean / PCA-10",
        "     - coverage in the gap",
        "     - OOD flagged",
    ]
    for place in PLACES:
        for pixels, key in _widths(now["gaps"], place):
            row = now["gaps"][key]
            mse, inside = row["median_mse"], row["median_mse_in_gap"]
            scale_free = row["runaway_relative"]
            old = before["gaps"].get(key)
            was = (
                f"{old['median_mse']['deepclean']:.2e} "
                f"({old['median_mse']['deepclean'] / before['gaps']['none']['median_mse']['deepclean']:.1f})"
                if old
                else "same"
            )
            lines += [
                f"   * - {pixels}, {place}",
                f"     - {mse['deepclean']:.2e} ({mse['deepclean'] / none:.1f})",
                f"     - {was}",
                f"     - {mse['pca10']:.2e}",
                f"     - {inside['deepclean']:.2e} / {inside['pca10']:.2e}, "
                f"{row['win_rate_in_gap_vs_pca10']:.2f}",
                f"     - {row['runaway']['deepclean']} / {row['runaway']['pca10']}",
                f"     - {scale_free['deepclean']} / {scale_free['pca10']}",
                f"     - {row['calibration_in_gap']:.2f}",
                f"     - {row['ood_rate']:.2f}",
            ]
    lines += ["", f"No gap: median MSE {none:.2e}, PCA-10 "
              f"{now['gaps']['none']['median_mse']['pca10']:.2e}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    now = json.loads((RESULTS / "gaps_test.json").read_text())
    before = json.loads((RESULTS / "gaps_test_before.json").read_text())
    figure(now, before).savefig(ROOT / "docs/_static/denoise_gaps.png", dpi=110)
    (ROOT / "docs/_generated/gaps_table.rst").write_text(table(now, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
