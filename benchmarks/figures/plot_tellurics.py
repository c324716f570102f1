"""Figures and tables of the telluric docs page, from the benchmark JSON and the shipped model.

    python benchmarks/figures/plot_tellurics.py --json benchmarks/results/tellurics_test.json

Writes ``docs/_static/tellurics_example.png`` (like Sedaghat et al. Fig. 5: one test
star at S/N 200 and airmass 2.5 around three telluric bands: observation, truth,
``reconstruct`` and ``divide``), ``docs/_static/tellurics_whitening.png`` (like their
Fig. 7: Q_t against the whitening level, from the ablation, with and without the
telluric layer) and
``docs/_generated/tellurics_table.rst`` (the numbers of the page).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import astropy.units as u
import matplotlib
import numpy as np
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum

from specutils_deepclean.datasets import load_library
from specutils_deepclean.manipulation import remove_tellurics
from specutils_deepclean.training.telluric_data import observe_split

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = Path(__file__).resolve().parents[2]
BANDS = ((6270.0, 6330.0), (6860.0, 6960.0), (7160.0, 7330.0))
METHODS = ("none", "reconstruct", "divide", "template_fit")


def example_figure(path: Path, star_index: int) -> None:
    library = load_library()
    stars = library.select(split="test", good=True).take([star_index])
    wave, medium = library.wavelength.value, library.medium
    survey = observe_split(stars, wave, medium, copies=1, seed=5, snr=200.0, airmass=2.5)
    spec = Spectrum(
        flux=survey.flux[0] * u.one,
        spectral_axis=wave * u.AA,
        uncertainty=StdDevUncertainty(survey.sigma[0]),
        meta={"medium": medium},
    )
    rec = remove_tellurics(spec, mode="reconstruct", device="cpu").flux.value
    div = remove_tellurics(spec, mode="divide", device="cpu").flux.value
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (lo, hi) in zip(axes, BANDS, strict=True):
        sel = (wave > lo) & (wave < hi)
        ax.plot(wave[sel], survey.flux[0][sel], color="0.6", lw=1, label="observed")
        ax.plot(wave[sel], survey.truth[0][sel], color="k", lw=1.2, label="truth")
        ax.plot(wave[sel], rec[sel], color="tab:blue", lw=1, label="reconstruct")
        ax.plot(wave[sel], div[sel], color="tab:red", lw=1, ls="--", label="divide")
        ax.set_xlabel("wavelength [Angstrom, air]")
    axes[0].set_ylabel("normalised flux")
    axes[0].legend(fontsize=8)
    name = str(stars.params["star_id"][0]).strip()
    fig.suptitle(f"MILES test star {name}, S/N 200, airmass 2.5 (topocentric)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ablation_groups(ablation: dict) -> dict:
    """``{(variant, whitening): [entries of each seed]}`` from labels like ``layer-N30-s1``."""
    groups: dict = {}
    for label, entry in ablation.items():
        variant, setting, _ = label.split("-")
        if setting.startswith("N"):
            groups.setdefault((variant, int(setting[1:])), []).append(entry)
    return groups


def whitening_figure(path: Path, ablation: dict) -> None:
    """Median Q_t against N for each training variant and mode; a dot per seed."""
    groups = _ablation_groups(ablation)
    levels = sorted({n for _, n in groups})
    variants = sorted({v for v, _ in groups}, key=lambda v: (v.rstrip("0123456789"), len(v)))
    bars = [(variant, mode) for variant in variants for mode in ("reconstruct", "divide")]
    width = 0.84 / len(bars)
    colours = plt.get_cmap("tab20").colors
    x = np.arange(len(levels))
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for k, (variant, mode) in enumerate(bars):
        offset = (k - (len(bars) - 1) / 2) * width
        for i, level in enumerate(levels):
            values = [e[mode]["q_t_median"] for e in groups.get((variant, level), [])]
            if not values:
                continue
            ax.bar(x[i] + offset, np.mean(values), width=width * 0.95, color=colours[k],
                   label=f"{variant}, {mode}" if i == 0 else None)
            ax.plot([x[i] + offset] * len(values), values, "k.", ms=4)
    ax.set_xticks(x, [f"{n} km/s" for n in levels])
    ax.set_xlabel("velocity whitening N")
    ax.set_ylabel("median Q_t (lower is better)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title("Whitening ablation, MILES test, S/N 50\n(bar: seed mean, dots: seeds; "
                 "paper / layer: 40 epochs, paper120 / layer120: 120)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(result: dict) -> str:
    lines = [
        ".. list-table:: Median Q_t, Q_s and RMS inside the telluric mask, MILES test "
        f"({result['n_spectra']} stars; lower is better)",
        "   :header-rows: 1",
        "",
        "   * - S/N",
        "     - method",
        "     - Q_t",
        "     - Q_s",
        "     - RMS in M_t",
    ]
    for snr, methods in result["snr"].items():
        for method in METHODS:
            m = methods[method]
            lines += [
                f"   * - {snr}",
                f"     - {method}",
                f"     - {m['q_t_median']:.3f}",
                f"     - {m['q_s_median']:.3f}",
                f"     - {m['rms_in_mask_median']:.4f}",
            ]
    if "gaps_snr50" in result:
        lines += [
            "",
            ".. list-table:: S/N 50, one gap of 100, 400 or 800 pixels at the blue end, middle "
            "or red end in every spectrum (gap pixels not scored)",
            "   :header-rows: 1",
            "",
            "   * - method",
            "     - Q_t",
            "     - Q_s",
            "     - RMS in M_t",
        ]
        for method, m in result["gaps_snr50"].items():
            lines += [
                f"   * - {method}",
                f"     - {m['q_t_median']:.3f}",
                f"     - {m['q_s_median']:.3f}",
                f"     - {m['rms_in_mask_median']:.4f}",
            ]
    if "ablation_snr50" in result:
        lines += [
            "",
            ".. list-table:: Ablation at S/N 50 (40-epoch models, 120 for paper120 / layer120; "
            "1 copy per star)",
            "   :header-rows: 1",
            "",
            "   * - model",
            "     - mode",
            "     - Q_t",
            "     - Q_s",
        ]
        for label, entry in result["ablation_snr50"].items():
            for mode in ("reconstruct", "divide"):
                lines += [
                    f"   * - {label}",
                    f"     - {mode}",
                    f"     - {entry[mode]['q_t_median']:.3f}",
                    f"     - {entry[mode]['q_s_median']:.3f}",
                ]
    if "speed" in result:
        s = result["speed"]
        lines += [
            "",
            f"Speed on this machine ({s['cpu_count']} cores, {s['torch_threads']} torch "
            f"threads): ``remove_tellurics`` {s['remove_tellurics_spectra_per_s_batch256']:.0f} "
            f"spectra/s (batch of 256, MILES size; the network alone "
            f"{s['network_only_spectra_per_s_batch256']:.0f}/s); "
            f"{s['harps_327680px_ms_per_spectrum_untrained']:.0f} ms per 327,680-pixel "
            "spectrum (untrained weights).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/tellurics_test.json"))
    parser.add_argument("--star", type=int, default=0, help="index among the good test stars")
    args = parser.parse_args(argv)
    result = json.loads(Path(args.json).read_text())
    example_figure(ROOT / "docs/_static/tellurics_example.png", args.star)
    if "ablation_snr50" in result:
        whitening_figure(ROOT / "docs/_static/tellurics_whitening.png", result["ablation_snr50"])
    (ROOT / "docs/_generated/tellurics_table.rst").write_text(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
