"""Calibrate the denoiser's class posterior on MILES ``val`` (``extra["class_calibration"]``).

Every good ``val`` star is observed through the simulator ``REALISATIONS`` times at
each S/N of ``SNRS`` (each time its own noise and a velocity drawn uniformly within
+-``VMAX`` km/s, the range of ``bench_ood.py``) and fitted with the velocity free
(``calibrate_ood.fit``, as ``denoise`` runs it): the Laplace log evidences of the
classes, the ``snr`` statistic and the out-of-distribution flag of each fit.  One
noise draw per star left the expected calibration error (ECE) of ~140 stars noisy by
itself; the realisations average the noise out (the stars themselves remain a sample:
`~specutils_deepclean.benchmarking.ood_negatives.ece_interval` gives the spread).

Three families of `~specutils_deepclean.models.ood.class_posterior` are fitted by the
negative log likelihood (NLL) of the true classes over the unflagged fits (flagged
rows are returned uniform whatever the calibration):

* ``temperature_floor``: (T0, gamma, floor), alpha = 1;
* ``temperature_floor_power``: (T0, gamma, floor, alpha), the evidence gaps raised to
  the power alpha;
* ``temperature_floor_power_score``: (T0, gamma, floor, alpha, beta), the temperature
  also growing as the latent's ``ood_score`` drops.

Each is judged by ``FOLDS``-fold cross-validation over the stars (all realisations of a
star in one fold): the held-out NLL and, from the held-out posteriors pooled over the
folds, the ECE per S/N.  The chosen family (`choose`) has the lowest held-out ECE
averaged over the S/N among those whose held-out NLL is above the lowest by less than
the standard error of their paired per-star difference; it is refitted on all ``val``
stars and written into the model file.  The test split is never read; the OOD
limits (``calibrate_ood.py``) are not touched.  The shipped model was calibrated with

    python benchmarks/training/calibrate_class_posterior.py --threads 1 \
        --json benchmarks/results/class_calibration_val.json
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit

from specutils_deepclean.benchmarking.ood_negatives import ece_interval, reliability
from specutils_deepclean.models import ood
from specutils_deepclean.simulate import prepare_truth

from calibrate_ood import fit
from denoiser_step import run_step

SNRS = (5, 10, 20, 50)
REALISATIONS = 16
VMAX = 600.0
FOLDS = 5
#: The statistics of each fit kept (``calibrate_ood.fit``'s names).
STATISTICS = ("log_evidence", "snr", "flag", "score")
FAMILIES = {
    "temperature_floor": 3,
    "temperature_floor_power": 4,
    "temperature_floor_power_score": 5,
}
#: Starting (log T0, gamma, logit floor) of the optimiser; log alpha and beta start at 0.
STARTS = ((0.0, 0.2, -4.0), (1.4, 0.2, -4.0), (2.8, 0.2, -2.0))


def observe_classes(model, truth, *, seed: int) -> dict:
    """Per S/N: log evidences (R, N, K), ``snr`` (R, N) and flags (R, N) of the fits."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, snr in enumerate(SNRS):
        rows = []
        for r in range(REALISATIONS):
            rv = rng.uniform(-VMAX, VMAX, truth.shape[0])
            rows.append(fit(model, truth, snr, rv, seed + 100 * r + i))
        out[snr] = {k: np.stack([row[k] for row in rows]) for k in STATISTICS}
        print("val", snr, flush=True)
    return out


def calibration(theta: np.ndarray) -> np.ndarray:
    """``class_calibration`` from the optimiser's unconstrained parameters:
    (log T0, gamma, logit floor[, log alpha[, beta]])."""
    values = [np.exp(theta[0]), theta[1], expit(theta[2])]
    return np.array(values + ([np.exp(theta[3])] if theta.size >= 4 else []) + list(theta[4:]))


def posterior(value, log_evidence: np.ndarray, snr: np.ndarray, score: np.ndarray) -> np.ndarray:
    """`~specutils_deepclean.models.ood.class_posterior` with calibration ``value`` (None:
    uncalibrated), over any leading shape of ``log_evidence`` (..., K), ``snr`` and
    ``score`` (...)."""
    k = log_evidence.shape[-1]
    result = ood.class_posterior(
        {} if value is None else {"class_calibration": value},
        torch.as_tensor(log_evidence.reshape(-1, k), dtype=torch.float64),
        torch.as_tensor(snr.reshape(-1), dtype=torch.float64),
        torch.as_tensor(score.reshape(-1), dtype=torch.float64),
    )
    return result.numpy().reshape(log_evidence.shape)


def nll(value, log_evidence, snr, score, labels) -> float:
    """Mean negative log probability of ``labels`` (M,) under ``posterior`` (M, K)."""
    p = posterior(value, log_evidence, snr, score)[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.clip(p, 1e-300, None))))


def fit_family(size: int, log_evidence, snr, score, labels) -> np.ndarray:
    """The calibration of ``size`` numbers with the least `nll`, by Nelder-Mead from
    each of `STARTS` (restarted once from its end)."""

    def objective(theta):
        return nll(calibration(theta), log_evidence, snr, score, labels)

    best = None
    for start in STARTS:
        theta = np.array(start + (0.0,) * (size - 3))
        for _ in range(2):
            result = minimize(
                objective, theta, method="Nelder-Mead",
                options={"maxiter": 3000, "xatol": 1e-3, "fatol": 1e-7},
            )  # fmt: skip
            theta = result.x
        if best is None or result.fun < best.fun:
            best = result
    return calibration(best.x)


def _pooled(fits: dict, stars: np.ndarray, labels: np.ndarray) -> tuple:
    """Unflagged (log evidence, snr, score, label) rows of ``stars`` over all S/N and
    realisations."""
    parts = []
    for snr in SNRS:
        ok = ~fits[snr]["flag"][:, stars]
        true = np.broadcast_to(labels[stars], ok.shape)
        parts.append(
            tuple(fits[snr][k][:, stars][ok] for k in ("log_evidence", "snr", "score"))
            + (true[ok],)
        )
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


def returned(value, part: dict) -> np.ndarray:
    """The posterior as ``denoise`` returns it (R, N, K): uniform where flagged."""
    p = posterior(value, part["log_evidence"], part["snr"], part["score"])
    return np.where(part["flag"][..., None], 1 / p.shape[-1], p)


def cross_validate(
    size: int, fits: dict, labels: np.ndarray, seed: int
) -> tuple[dict, np.ndarray]:
    """Held-out NLL (unflagged rows) and, per S/N, ECE of the held-out posteriors as
    returned, pooled over the `FOLDS` folds of stars; and each star's held-out NLL
    (N,), nan for a star flagged in every fit."""
    n = labels.size
    folds = np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)
    held = {snr: np.zeros(fits[snr]["log_evidence"].shape) for snr in SNRS}
    for fold in folds:
        value = fit_family(size, *_pooled(fits, np.setdiff1d(np.arange(n), fold), labels))
        for snr in SNRS:
            part = {k: v[:, fold] for k, v in fits[snr].items()}
            held[snr][:, fold] = returned(value, part)
    # -log p(true class) of the unflagged rows (flagged ones are uniform whatever the
    # calibration), summed and counted per star
    loss, count = np.zeros(n), np.zeros(n)
    for snr in SNRS:
        ok = ~fits[snr]["flag"]
        true = held[snr][:, np.arange(n), labels]
        loss += np.where(ok, -np.log(np.clip(true, 1e-300, None)), 0.0).sum(0)
        count += ok.sum(0)
    summary = {
        "nll": float(loss.sum() / count.sum()),
        "ece": {str(s): _ece(held[s], labels) for s in SNRS},
    }
    return summary, np.where(count > 0, loss / np.maximum(count, 1), np.nan)


def choose(families: dict, per_star: dict) -> str:
    """The family with the lowest held-out ECE averaged over the S/N, among those whose
    held-out NLL is above the lowest by less than the standard error of their paired
    per-star difference (``families[name]["nll_excess"]``, ``["nll_excess_error"]``,
    set here)."""
    best = min(families, key=lambda name: families[name]["cross_validated"]["nll"])
    for name in families:
        diff = per_star[name] - per_star[best]
        diff = diff[np.isfinite(diff)]
        families[name]["nll_excess"] = float(diff.mean())
        families[name]["nll_excess_error"] = float(diff.std(ddof=1) / np.sqrt(diff.size))
    eligible = [
        name for name, row in families.items()
        if name == best or row["nll_excess"] < row["nll_excess_error"]
    ]  # fmt: skip
    return min(
        eligible,
        key=lambda name: np.mean(list(families[name]["cross_validated"]["ece"].values())),
    )


def _ece(p: np.ndarray, labels: np.ndarray) -> float:
    """`reliability`'s ECE of (R, N, K) posteriors, all realisations pooled."""
    return reliability(p.reshape(-1, p.shape[-1]), np.tile(labels, p.shape[0]))[0]


def calibrate_class_posterior(model, library, *, seed: int) -> dict:
    wave = model.wavelength.to_value("Angstrom")
    val = library.select(split="val", good=True)
    truth, valid = prepare_truth(val, wave, model.medium)
    truth = np.where(valid, truth, np.nan)
    classes = np.asarray(val.params["class"]).astype(str)
    labels = np.array([model.prior.class_index(c) for c in classes])
    fits = observe_classes(model, truth, seed=seed)
    families, per_star = {}, {}
    for name, size in FAMILIES.items():
        summary, per_star[name] = cross_validate(size, fits, labels, seed)
        families[name] = {"cross_validated": summary}
        print(name, families[name], flush=True)
    chosen = choose(families, per_star)
    value = fit_family(FAMILIES[chosen], *_pooled(fits, np.arange(labels.size), labels))
    fitted = {s: returned(value, fits[s]) for s in SNRS}
    model.extra.pop("class_temperature", None)
    model.extra["class_calibration"] = value
    return {
        "n_val": int(labels.size),
        "realisations": REALISATIONS,
        "snrs": list(SNRS),
        "vmax_kms": VMAX,
        "folds": FOLDS,
        "families": families,
        "chosen": chosen,
        "class_calibration": dict(
            zip(("T0", "gamma", "floor", "alpha", "beta"), value.tolist(), strict=True)
        ),
        "val_nll": nll(value, *_pooled(fits, np.arange(labels.size), labels)),
        "val_ece": {str(s): _ece(fitted[s], labels) for s in SNRS},
        "val_ece_uncalibrated": {str(s): _ece(returned(None, fits[s]), labels) for s in SNRS},
        "val_ece_interval": {str(s): ece_interval(fitted[s], labels, seed=seed) for s in SNRS},
        "val_accuracy": {
            str(s): float(np.mean(fits[s]["log_evidence"].argmax(-1) == labels)) for s in SNRS
        },
    }


def main(argv=None) -> int:
    return run_step(
        argv,
        doc=__doc__,
        script="calibrate_class_posterior.py",
        step=calibrate_class_posterior,
        metrics=lambda summary: {
            f"val_class_ece_snr{k}": v for k, v in summary["val_ece"].items()
        },
        note="class posterior calibrated by",
        seed=161,
    )


if __name__ == "__main__":
    sys.exit(main())
