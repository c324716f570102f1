"""What drives each remaining runaway fill away, on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with each of the benchmark protocol's gaps
(100, 400 and 800 pixels and 40 % of the grid at the blue end, in the middle and at the
red end) and denoised at rest as ``bench_gaps.py`` does.  A fill runs away when its MSE
over the gap exceeds `RUNAWAY` (units of the whole-grid median flux) or, scale-free,
its RMS error over the gap exceeds `RELATIVE` times the RMS of the true flux there.
For each such star: its label, MAP class, out-of-distribution flag and
``fit_structure`` (the residual's structure over the observed pixels, 1 for noise);
the MSE and relative RMS error over the gap of the output; the coverage of its 1-sigma
uncertainty and its median sigma over the gap; and the MSE over the gap of the parts
of the fill: the MAP class's :math:`G(\\hat z)` alone (without the continuum and
residual terms) and with them, every class's optimum with its own terms (and its
Laplace log evidence relative to the best class's, and its :math:`\\chi^2` over the
observed pixels of the co-add at rest relative to the smallest: how well it fits the
data without the prior), the class posterior's mean before
`~specutils_deepclean.models.gap_fill.library_pull` (the stars missing at least
`~specutils_deepclean.models.level.MIN_MISSING` of the grid) and the training
library's mean it pulls toward, and the share of the gap's pixels where the fill was
below zero before `~specutils_deepclean.models.gap_fill.nonnegative`.  The test split
is never read::

    python benchmarks/studies/gap_runaway_drivers.py \\
        --json benchmarks/results/gap_runaway_drivers_val.json
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.datasets import load_library
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.models import gap_fill, laplace
from specutils_deepclean.models.level import library
from specutils_deepclean.models.observations import rest_weight

from val_study import gap_setup, protocol_gaps, study_args, write_result

RUNAWAY = 0.1
RELATIVE = 0.5


class _Recorder:
    """Wraps `laplace`'s gap-fill steps to keep what they saw and returned."""

    def __init__(self):
        self.seen = {}
        self.mixture, self.pull, self.floor = (
            laplace.class_mixture, laplace.library_pull, laplace.nonnegative,
        )  # fmt: skip

    def __enter__(self):
        def mixture(model, data, z, posterior, filled):
            gap = self.mixture(model, data, z, posterior, filled)
            self.seen.update(data=data, z=z, gap=gap)
            return gap

        def pull(model, data, gap, sigma, filled):
            flux, weight = rest_weight(gap_fill._take(data, gap.rows))
            spectra = library(model).to(device=flux.device, dtype=flux.dtype)
            cross = (weight * flux) @ spectra.T
            scale = cross / (weight @ spectra.square().T)
            chi2 = (weight * flux.square()).sum(-1, keepdim=True) - scale * cross
            share = torch.softmax(-0.5 * chi2 / gap_fill.LIBRARY_TEMPERATURE, dim=-1)
            self.seen["library_mean"] = (share * scale) @ spectra
            return self.pull(model, data, gap, sigma, filled)

        def floor(flux, var, filled):
            self.seen["unfloored"] = flux.clone()
            return self.floor(flux, var, filled)

        laplace.class_mixture, laplace.library_pull, laplace.nonnegative = mixture, pull, floor
        return self

    def __exit__(self, *exc):
        laplace.class_mixture, laplace.library_pull, laplace.nonnegative = (
            self.mixture, self.pull, self.floor,
        )  # fmt: skip


def _star(model, seen, out, j: int, truth, use, names, label: str) -> dict:
    """The numbers of one runaway star (row ``j`` of the batch)."""
    scale = out.scale[j]

    def mse(fill) -> float:
        return round(float(np.mean((np.asarray(fill) * scale - truth)[use] ** 2)), 5)

    z = seen["z"][j]
    k = z.shape[0]
    with torch.no_grad():
        signal = model.generator.generate(z)
        rows = torch.full((k,), j, dtype=torch.int64)
        terms = model._linear_terms(gap_fill._take(seen["data"], rows), signal)[0]
        flux, weight = rest_weight(gap_fill._take(seen["data"], rows[:1]))
        chi2 = (weight * (flux - (signal + terms)).square()).sum(-1).double().numpy()
    signal, terms = signal.double().numpy(), terms.double().numpy()
    evidence = out.map.class_log_evidence[j] - out.map.class_log_evidence[j].max()
    chi2 = chi2 - chi2.min()
    best = int(out.map.map_class[j])
    err = np.mean((out.flux[j] - truth)[use] ** 2)
    row = {
        "label": label,
        "map_class": names[best],
        "ood_flag": bool(out.map.ood_flag[j]),
        "fit_structure": round(float(out.map.fit_structure[j]), 2),
        "mse_in_gap": round(float(err), 5),
        "relative_rms_in_gap": round(float(np.sqrt(err / np.mean(truth[use] ** 2))), 3),
        "calibration_in_gap": round(
            float(np.mean(np.abs(out.flux[j] - truth)[use] < out.flux_sigma[j][use])), 3
        ),
        "median_sigma_in_gap": round(float(np.median(out.flux_sigma[j][use])), 4),
        "truth_rms_in_gap": round(float(np.sqrt(np.mean(truth[use] ** 2))), 4),
        "map_class_signal_only": mse(signal[best]),
        "map_class_with_terms": mse(signal[best] + terms[best]),
        "per_class": {
            names[c]: {"mse_in_gap": mse(signal[c] + terms[c]),
                       "log_evidence": round(float(evidence[c]), 1),
                       "chi2_observed": round(float(chi2[c]), 1)}
            for c in range(k)
        },  # fmt: skip
        "share_below_zero": round(float(np.mean(seen["unfloored"][j].numpy()[use] < 0)), 4),
    }
    gap = seen["gap"]
    if gap is not None and bool((gap.rows == j).any()):
        r = int((gap.rows == j).nonzero()[0, 0])
        row["mixture_before_pull"] = mse(gap.flux[r].double().numpy())
        row["library_mean"] = mse(seen["library_mean"][r].double().numpy())
    return row


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = gap_setup(args.model)
    labels = load_library().select(split="val", good=True).labels.tolist()
    result = {"runaway_mse": RUNAWAY, "runaway_relative_rms": RELATIVE, "gaps": {}}
    for key, obs, in_gap in protocol_gaps(sim, truth, valid, args.seed):
        with _Recorder() as rec:
            out = denoise_arrays(
                model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
                generator=torch.Generator().manual_seed(args.seed), **MAP_OPTIONS,
            )  # fmt: skip
        outside = ~valid | ~in_gap
        mse = metrics.mse(out.flux, truth, mask=outside)
        power = metrics.mse(np.zeros_like(truth), truth, mask=outside)
        away = np.nonzero((mse > RUNAWAY) | (np.sqrt(mse / power) > RELATIVE))[0]
        names = out.map.class_names
        stars = {
            str(i): _star(model, rec.seen, out, int(i), truth[i], valid[i] & in_gap,
                          names, labels[i])
            for i in away
        }  # fmt: skip
        result["gaps"][key] = stars
        print(key, stars, flush=True)
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
