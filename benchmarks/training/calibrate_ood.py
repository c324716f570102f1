"""Choose the denoiser's out-of-distribution limits on MILES ``val``.

Every good ``val`` star is observed through the simulator at S/N 5, 10, 20 and 50,
Doppler-shifted by a velocity drawn uniformly within the default fitting range
(``DEFAULT_VELOCITY_RANGE``), and fitted with the velocity free
(``denoise_arrays(..., velocity=None)``, as ``denoise`` runs it).
Negatives (`~specutils_deepclean.benchmarking.ood_negatives`: quasars, galaxies built from ``val`` stars, sky-only
noise, stars beyond the range) are observed and fitted the same way.

* ``extra["ood_limits"]`` = (a_chi2, a_structure, p, score_min, snr_min)
  (`~specutils_deepclean.models.ood`): ``fit_chi2 > 1 + a_chi2 snr^p`` or
  ``fit_structure > 1 + a_structure snr^p`` flags.  ``p`` = 1.5 (the upper quantiles
  of both statistics minus 1 grow so with the S/N on val); ``a_chi2`` and
  ``a_structure`` are the ``QUANTILE`` quantiles of ``(statistic - 1) / snr^p`` over the
  ``val`` stars at all four S/N (each rule flags about 1 - ``QUANTILE`` of them); the
  smallest latent ``ood_score`` stays 0.01 (the previous rule); the smallest ``snr`` is
  1 per pixel (a design choice: the model was built for S/N >= 2).

The class posterior's calibration is ``calibrate_class_posterior.py``'s (it uses `fit`).

The limits and the rates of flagged stars and negatives per S/N go to the JSON; the
limits into the model file (``extra``), the rates into its provenance metrics.
The test split is never read.  The shipped model was calibrated with

    python benchmarks/training/calibrate_ood.py --threads 2 \
        --json benchmarks/results/ood_calibration_val.json
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from specutils_deepclean.benchmarking.ood_negatives import KINDS, make
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.manipulation import DEFAULT_VELOCITY_RANGE
from specutils_deepclean.models import ood
from specutils_deepclean.simulate import Simulator, prepare_truth

from denoiser_step import run_step

SNRS = (5, 10, 20, 50)
N_NEGATIVES = 24
QUANTILE = 0.98
POWER = 1.5
SCORE_MIN = 0.01
SNR_MIN = 1.0
VRANGE = float(DEFAULT_VELOCITY_RANGE.to_value("km/s"))


def fit(model, truth, snr, rv, seed):
    """Statistics of ``map_estimate`` (velocity fitted) on simulated observations."""
    sim = Simulator(model.wavelength.to_value("Angstrom"), model.medium)
    obs = sim.observe(truth, snr, seed=seed, stellar_rv=rv)
    result = denoise_arrays(
        model,
        obs.flux,
        obs.sigma,
        obs.mask,
        velocity=None,
        velocity_range=VRANGE,
        generator=torch.Generator().manual_seed(seed),
    ).map
    return {
        "chi2": result.fit_chi2,
        "structure": result.fit_structure,
        "score": result.ood_score,
        "snr": result.snr,
        "beyond": np.abs(result.velocity[:, 0]) > VRANGE,
        "log_evidence": result.class_log_evidence,
        "velocity": result.velocity[:, 0],
        "flag": result.ood_flag,
    }


def flagged(stats, limits) -> np.ndarray:
    """The model's rule (`~specutils_deepclean.models.ood.ood_flag`) with ``limits``."""
    rule = ood.ood_flag(
        {"ood_limits": np.asarray(limits)},
        stats["score"],
        (stats["chi2"], stats["structure"], stats["snr"]),
    )
    return rule | stats["beyond"]


def calibrate_ood(model, library, *, seed: int) -> dict:
    wave = model.wavelength.to_value("Angstrom")
    val = library.select(split="val", good=True)
    truth, valid = prepare_truth(val, wave, model.medium)
    truth = np.where(valid, truth, np.nan)
    rng = np.random.default_rng(seed)
    stars = {}
    for i, snr in enumerate(SNRS):
        rv = rng.uniform(-VRANGE, VRANGE, truth.shape[0])
        stars[snr] = fit(model, truth, snr, rv, seed + i)
        print("val", snr, flush=True)
    pooled = {
        k: np.concatenate([stars[s][k] for s in SNRS]) for k in ("chi2", "structure", "snr")
    }
    grow = np.clip(pooled["snr"], 0.0, None) ** POWER
    limits = (
        float(np.quantile((pooled["chi2"] - 1) / grow, QUANTILE)),
        float(np.quantile((pooled["structure"] - 1) / grow, QUANTILE)),
        POWER,
        SCORE_MIN,
        SNR_MIN,
    )
    negatives = {}
    for j, kind in enumerate(KINDS):
        neg, snr, rv, _ = make(kind, N_NEGATIVES, wave, truth, seed + 100 + j)
        stats = fit(model, neg, snr, rv, seed + 200 + j)
        flags = flagged(stats, limits)
        negatives[kind] = {
            "flagged": float(flags.mean()),
            "flagged_by_snr": {
                str(s): float(flags[snr == s].mean()) for s in np.unique(snr) if kind != "noise"
            },
            "chi2_median": float(np.median(stats["chi2"])),
            "structure_median": float(np.median(stats["structure"])),
        }
        print(kind, negatives[kind], flush=True)
    model.extra["ood_limits"] = np.array(limits, dtype=np.float64)
    return {
        "limits": dict(
            zip(("a_chi2", "a_structure", "power", "score_min", "snr_min"), limits, strict=True)
        ),
        "quantile": QUANTILE,
        "velocity_range_kms": VRANGE,
        "n_val": int(truth.shape[0]),
        "val_flagged": {str(s): float(flagged(stars[s], limits).mean()) for s in SNRS},
        "val_chi2_quantiles": {
            str(s): np.quantile(stars[s]["chi2"], [0.5, 0.95, 0.995]).tolist() for s in SNRS
        },
        "val_structure_quantiles": {
            str(s): np.quantile(stars[s]["structure"], [0.5, 0.95, 0.995]).tolist() for s in SNRS
        },
        "negatives": negatives,
        "n_negatives": N_NEGATIVES,
    }


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="calibrate_ood.py",
        step=calibrate_ood,
        metrics=lambda summary: {
            **{f"val_ood_flagged_snr{k}": v for k, v in summary["val_flagged"].items()},
            **{
                f"val_ood_negative_{k}_flagged": v["flagged"]
                for k, v in summary["negatives"].items()
            },
        },
        note="out-of-distribution limits fitted by",
        seed=16,
    )


if __name__ == "__main__":
    sys.exit(main())
