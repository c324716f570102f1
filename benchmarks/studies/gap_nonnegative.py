"""A gap's fill held at or above zero flux (`nonnegative`), on MILES ``val``.

Every good ``val`` star, divided by its whole-grid median, is observed at S/N 10
(seed ``--seed``, that of ``bench_gaps.py``) with each of the benchmark protocol's gaps
(100, 400 and 800 pixels and 40 % of the grid at the blue end, in the middle and at the
red end; the same noise draw for each) and without one, and denoised at rest as
``bench_gaps.py`` does, in each of `VARIANTS`: ``off`` (the fill before,
`~specutils_deepclean.models.gap_fill.NONNEGATIVE` False), ``clamp_keep_sigma``
(negative fills set to zero, the uncertainty kept), ``truncated`` (the fill and its
variance read as a normal posterior, truncated at zero: its mean and variance) and
``clamp`` (negative fills set to zero, their variance :math:`\\sigma^2 + \\mu^2`: what
the package does).  Per gap and variant: the median and largest MSE over
the gap, the fills that run away (MSE over the gap above `RUNAWAY` in units of the
whole-grid median flux, and scale-free: the RMS error over the gap above `RELATIVE`
times the RMS of the true flux there), the coverage of the 1-sigma uncertainty over
the gap and over the observed pixels, the share of the gap's pixels whose fill was
below zero before, the median MSE over the whole grid, and the MSE and relative RMS
error over the gap of every star; without a gap, whether the output is the same bit
for bit in every variant.  The uncertainty carries the model file's factor on pixels
without data as it was calibrated before (on the ``off`` fills).  The test split is
never read::

    python benchmarks/studies/gap_nonnegative.py --json benchmarks/results/gap_nonnegative_val.json
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from specutils_deepclean import metrics
from specutils_deepclean.benchmarking.degrade import MAP_OPTIONS
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.models import gap_fill, laplace

from val_study import gap_setup, protocol_gaps, study_args, write_result

#: A fill runs away above this MSE over the gap (``bench_gaps.py``'s ``--runaway``).
RUNAWAY = 0.1
#: ... or, scale-free, above this RMS error over the gap's true RMS flux (``--relative``).
RELATIVE = 0.5
SHIPPED = laplace.nonnegative


def _keep(flux, var, filled):
    """Negative fills set to zero, the variance kept."""
    return torch.where(filled, flux.clamp_min(0), flux), var


def _truncated(flux, var, filled):
    """The normal posterior (fill, variance) truncated at zero: its mean and variance."""
    use = filled & (var > 0)
    mu, sd = flux[use].double(), var[use].double().sqrt()
    a = -mu / sd
    ratio = (2 / torch.pi) ** 0.5 / torch.special.erfcx(a / 2**0.5)  # phi(a) / (1 - Phi(a))
    flux, var = flux.clone(), var.clone()
    flux[use] = (mu + sd * ratio).to(flux.dtype)
    var[use] = (sd.square() * (1 + a * ratio - ratio.square()).clamp(0, 1)).to(var.dtype)
    return flux, var


#: Each variant's function in place of `~specutils_deepclean.models.gap_fill.nonnegative`.
VARIANTS = {"off": None, "clamp_keep_sigma": _keep, "truncated": _truncated, "clamp": SHIPPED}


def _denoise(model, obs, seed: int, variant: str):
    gap_fill.NONNEGATIVE = variant != "off"
    laplace.nonnegative = VARIANTS[variant] or SHIPPED
    try:
        return denoise_arrays(
            model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
            generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
        )  # fmt: skip
    finally:
        gap_fill.NONNEGATIVE, laplace.nonnegative = True, SHIPPED


def _numbers(out, truth, valid, in_gap, below) -> dict:
    outside = ~valid | ~in_gap
    mse = metrics.mse(out.flux, truth, mask=outside)
    power = metrics.mse(np.zeros_like(truth), truth, mask=outside)
    relative = np.sqrt(mse / power)
    return {
        "median_mse_in_gap": float(np.median(mse)),
        "max_mse_in_gap": float(mse.max()),
        "runaway": int(np.sum(mse > RUNAWAY)),
        "runaway_relative": int(np.sum(relative > RELATIVE)),
        "runaway_index": np.nonzero(mse > RUNAWAY)[0].tolist(),
        "runaway_relative_index": np.nonzero(relative > RELATIVE)[0].tolist(),
        "calibration_in_gap": float(
            metrics.calibration(out.flux, out.flux_sigma, truth, mask=outside).pooled
        ),
        "calibration_observed": float(
            metrics.calibration(out.flux, out.flux_sigma, truth, mask=~valid | in_gap).pooled
        ),
        "share_below_zero_before": below,
        "median_mse_whole": float(np.median(metrics.mse(out.flux, truth, mask=~valid))),
        "mse_in_gap": [float(f"{v:.4g}") for v in mse],
        "relative_rms_in_gap": [float(f"{v:.4g}") for v in relative],
    }


def main(argv=None) -> int:
    args = study_args(__doc__, argv, seed=2076, threads=1)
    model, truth, valid, sim = gap_setup(args.model)
    result = {
        "runaway_mse": RUNAWAY,
        "runaway_relative_rms": RELATIVE,
        "variants": list(VARIANTS),
        "machine": "shared 2-core CPU",
        "gaps": {},
    }
    obs = sim.observe(np.where(valid, truth, np.nan), 10.0, seed=args.seed)
    outs = {name: _denoise(model, obs, args.seed, name) for name in VARIANTS}
    result["no_gap_identical"] = all(
        np.array_equal(outs[name].flux, outs["off"].flux)
        and np.array_equal(outs[name].flux_sigma, outs["off"].flux_sigma)
        for name in VARIANTS
    )
    print("no gap identical:", result["no_gap_identical"], flush=True)
    for key, obs, in_gap in protocol_gaps(sim, truth, valid, args.seed):
        row, below = {}, None
        for name in VARIANTS:
            out = _denoise(model, obs, args.seed, name)
            if below is None:
                below = float(np.mean(out.flux[:, in_gap][valid[:, in_gap]] < 0))
            row[name] = _numbers(out, truth, valid, in_gap, below)
            lists = ("mse_in_gap", "relative_rms_in_gap")
            shown = {k: v for k, v in row[name].items() if k not in lists}
            print(key, name, shown, flush=True)
        result["gaps"][key] = row
    write_result(args.json, __file__, argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
