"""The fill of a wide gap: the MAP class's spectrum or the class posterior's mean, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with 40 % of the grid missing at the blue
end, in the middle and at the red end, and denoised at rest as ``bench_gaps.py`` does,
three ways: the MAP class's spectrum (`~specutils_deepclean.models.gap_fill`'s
``CLASS_MIXTURE`` off, the fill before), the mean over classes weighted by the
calibrated class posterior with its floor :math:`\\epsilon / K`, and without it (what
the package does).  Per run: the median and largest MSE over the gap, the fills above
0.1 (runaway) and above 0.01, the win rate over the gap against the MAP class's fill,
the coverage of the 1-sigma uncertainty over the gap and over the observed pixels, the
median MSE over the whole grid, the CPU seconds of the denoising, and the MSE over
the gap of every star.  For the package's fill also: the relative error of the fill's
mean over the `EDGE` gap pixels at the grid's end, per star and its median per true
label; and for each star whose fill runs away, what it is: its label, MAP class and
flag, the KDE log density of its MAP latent (and the median over all stars), the MSE
over the gap of the training star (``G`` at its KDE point) that best fits the observed
pixels, scaled to them by weighted least squares (the prior's best guess), the
truth's own mean square deviation from its `RUNNING`-pixel running median over the
gap, and the fill's RMS error over the gap relative to the truth's RMS there.  The
test split is never read::

    python benchmarks/studies/gap_mixture.py --json benchmarks/results/gap_mixture_val.json
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy.ndimage import median_filter

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.datasets import load_library
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.models import gap_fill, laplace
from specutils_deepclean.spectra import median_normalise

from val_study import study_args, val_setup, wide_gaps, write_result

RUNAWAY = 0.1
#: Gap pixels at the grid's end over which the fill's relative bias is measured.
EDGE = 400
#: Pixels of the running median a noisy truth is compared with.
RUNNING = 9
SHIPPED = laplace.class_mixture


def _floored(model, data, z, posterior, filled):
    """`class_mixture` with the calibrated posterior's floor put back."""
    epsilon = float(np.asarray(model.extra["class_calibration"])[2])
    weight = (1 - epsilon) * posterior + epsilon / posterior.shape[-1]
    return SHIPPED(model, data, z, weight, filled)


def _run(model, obs, truth, valid, in_gap, seed: int) -> tuple[dict, object]:
    """Denoise ``obs`` as bench_gaps.py does; the numbers of one run, and its output."""
    start = time.process_time()
    out = denoise_arrays(
        model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
        generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
    )  # fmt: skip
    seconds = time.process_time() - start
    mse = metrics.mse(out.flux, truth, mask=~valid | ~in_gap)
    return out, {
        "median_mse_in_gap": float(np.median(mse)),
        "max_mse_in_gap": float(mse.max()),
        "runaway": int(np.sum(mse > RUNAWAY)),
        "runaway_index": np.nonzero(mse > RUNAWAY)[0].tolist(),
        "runaway_flagged": int(np.sum((mse > RUNAWAY) & out.map.ood_flag)),
        "above_0.01": int(np.sum(mse > 0.01)),
        "calibration_in_gap": float(
            metrics.calibration(out.flux, out.flux_sigma, truth, mask=~valid | ~in_gap).pooled
        ),
        "calibration_observed": float(
            metrics.calibration(out.flux, out.flux_sigma, truth, mask=~valid | in_gap).pooled
        ),
        "median_mse_whole": float(np.median(metrics.mse(out.flux, truth, mask=~valid))),
        "cpu_seconds": round(seconds, 2),
        "mse_in_gap": [float(f"{v:.4g}") for v in mse],
    }


def _diagnose(model, out, obs, truth, in_gap, place: str, labels: np.ndarray, mse) -> dict:
    """The package fill's bias at the gap's edge and what its runaways are."""
    edge = np.nonzero(in_gap)[0]
    edge = edge[:EDGE] if place == "blue" else edge[-EDGE:]
    bias = out.flux[:, edge].mean(1) / truth[:, edge].mean(1) - 1
    fit = out.map
    z = torch.as_tensor(fit.z, dtype=model._dtype)
    density = model.prior.log_prob(z, c=torch.as_tensor(fit.map_class)).numpy()
    with torch.no_grad():
        points = torch.as_tensor(np.asarray(model.extra["kde_points"]), dtype=model._dtype)
        templates = model.generator.generate(points).double().numpy()
    observed = np.isfinite(obs.flux) & ~obs.mask
    weight = np.where(observed, 1 / np.where(observed, obs.sigma, 1.0) ** 2, 0.0)
    flux = np.where(observed, obs.flux, 0.0)
    cross, power = (weight * flux) @ templates.T, weight @ (templates**2).T
    chi2 = (weight * flux**2).sum(1)[:, None] - cross**2 / power
    stars = []
    for i in np.nonzero(np.asarray(mse) > RUNAWAY)[0]:
        best = chi2[i].argmin()
        fill = cross[i, best] / power[i, best] * templates[best]
        noise = truth[i] - median_filter(truth[i], RUNNING)
        stars.append({
            "index": int(i), "label": str(labels[i]),
            "map_class": fit.class_names[fit.map_class[i]], "ood_flag": bool(fit.ood_flag[i]),
            "kde_log_density": round(float(density[i]), 1),
            "mse_in_gap": float(mse[i]),
            "best_template_mse_in_gap": round(float(np.mean((fill - truth[i])[in_gap] ** 2)), 4),
            "truth_running_median_msd_in_gap": round(float(np.mean(noise[in_gap] ** 2)), 4),
            "relative_rms_error_in_gap": round(
                float(np.sqrt(mse[i] / np.mean(truth[i, in_gap] ** 2))), 3
            ),
        })  # fmt: skip
    return {
        "edge_bias": [round(float(b), 4) for b in bias],
        "edge_bias_median_by_label": {
            str(name): round(float(np.median(bias[labels == name])), 4)
            for name in np.unique(labels)
        },
        "median_kde_log_density": round(float(np.median(density)), 1),
        "runaways": stars,
    }


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = val_setup(args.model)
    labels = np.asarray(load_library().select(split="val", good=True).labels)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    width = int(round(0.4 * truth.shape[1]))
    result = {"runaway_mse": RUNAWAY, "width_pixels": width, "machine": "shared 2-core CPU",
              "gaps": {}}  # fmt: skip
    settings = {
        "map_class": (False, SHIPPED),
        "posterior_with_floor": (True, _floored),
        "posterior": (True, SHIPPED),
    }
    try:
        for place, obs, in_gap in wide_gaps(sim, truth, valid, args.seed):
            row = {}
            outputs = {}
            for name, (on, function) in settings.items():
                gap_fill.CLASS_MIXTURE, laplace.class_mixture = on, function
                outputs[name], row[name] = _run(model, obs, truth, valid, in_gap, args.seed)
            shipped = row["posterior"]
            shipped.update(_diagnose(model, outputs["posterior"], obs, truth, in_gap, place,
                                     labels, shipped["mse_in_gap"]))  # fmt: skip
            base = np.asarray(row["map_class"]["mse_in_gap"])
            for name in settings:
                ours = np.asarray(row[name]["mse_in_gap"])
                row[name]["win_rate_vs_map_class"] = float(metrics.win_rate(ours, base))
                shown = {k: v for k, v in row[name].items() if k not in ("mse_in_gap", "edge_bias")}
                print(place, name, shown, flush=True)
            result["gaps"][place] = row
    finally:
        gap_fill.CLASS_MIXTURE, laplace.class_mixture = True, SHIPPED
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
