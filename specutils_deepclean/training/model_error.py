r"""Choose the denoiser's model-error term on MILES ``val`` (`calibrate_model_error`).

The term (`~specutils_deepclean.models.model_error`) multiplies the uncertainty's
variance by :math:`f^2 = 1 + k \max(0, S - 1 - c\, q^p)`.  Every good ``val`` star
is observed at S/N 2, 5, 10, 20 and 50 as it is and degraded
(`~specutils_deepclean.benchmarking.degrade.degrade`: 3.4 A FWHM and smooth tilts)
and denoised once without the term; the coverage of the uncertainty for any
:math:`(k, c, p)` follows from that run without another MAP.  :math:`p` is one of
`P_GRID`, :math:`c` one of the quantiles `C_QUANTILES` of :math:`(S - 1) / q^p`
over the MILES ``val`` runs at S/N 5 and above, :math:`k` one of `K_GRID`.  Among
those that raise the MILES coverage by at most `MAX_SHIFT` at every S/N, the one
whose degraded coverage is closest to 0.683 at its worst S/N of 5-50 wins (at S/N 2 it is already
above 0.683, and a wider uncertainty can only raise it).  The ``test`` split is
never read.
"""

from __future__ import annotations

import numpy as np

from ..benchmarking.degrade import denoise_both
from ..datasets import Library
from ..metrics import GAUSSIAN_COVERAGE
from ..simulate import SNR_LEVELS, prepare_truth

__all__ = ["C_QUANTILES", "K_GRID", "MAX_SHIFT", "P_GRID", "calibrate_model_error"]

#: Candidate k.
K_GRID = tuple(np.round(np.arange(0.0, 8.01, 0.2), 2))
#: Quantiles of the MILES val runs' (chi2 - 1) / snr^p that are candidate c.
C_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: Candidate p.
P_GRID = (0.0, 0.5, 1.0, 1.5)
#: Largest change of the MILES val coverage allowed at any S/N.
MAX_SHIFT = 0.015
#: S/N levels whose degraded coverage is brought near 0.683.
_TARGET_SNR = (5, 10, 20, 50)


def calibrate_model_error(model, library: Library, *, seed: int = 0) -> dict:
    """Choose ``extra["model_error"]`` = (k, c, p) of ``model`` on MILES ``val``.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    seed : int
        Seed of the observations (S/N i: ``seed + i``) and of the tilts (``seed + 7``).

    Returns
    -------
    dict
        ``model_error`` [k, c, p], ``n_stars``, the candidate ``c`` values, and per
        S/N and kind the pooled coverage ``before`` (no term) and ``after``.
    """
    wave = model.wavelength.to_value("Angstrom")
    truth, valid = prepare_truth(library.select(split="val", good=True), wave, model.medium)
    model.extra.pop("model_error", None)
    runs = {}
    for snr, kind, clean, out in denoise_both(
        model, truth, valid, SNR_LEVELS, seed=seed, tilt_seed=seed + 7
    ):
        runs[(snr, kind)] = {
            "error": np.where(valid, np.abs(out.flux - clean), np.nan) / out.flux_sigma,
            "structure": out.map.fit_structure,
            "snr": np.clip(out.map.snr, 0, None),
        }

    def coverage(run, k, c, p) -> float:
        excess = np.clip(run["structure"] - 1 - c * run["snr"] ** p, 0, None)
        inside = run["error"] < np.sqrt(1 + k * excess)[:, None]
        return float(np.mean(inside[np.isfinite(run["error"])]))

    miles = {s: r for (s, kind), r in runs.items() if kind == "miles"}
    before = {f"{s}_{kind}": coverage(r, 0.0, 0.0, 0.0) for (s, kind), r in runs.items()}
    best, best_worst, candidates = (0.0, 0.0, 0.0), np.inf, {}
    for p in P_GRID:
        ratios = np.concatenate(
            [(r["structure"] - 1) / np.maximum(r["snr"], 1e-6) ** p for s, r in miles.items()
             if s >= min(_TARGET_SNR)]
        )  # fmt: skip
        candidates[str(p)] = [float(np.quantile(ratios, q)) for q in C_QUANTILES]
        for c in candidates[str(p)]:
            for k in K_GRID:
                if any(coverage(r, k, c, p) - before[f"{s}_miles"] > MAX_SHIFT
                       for s, r in miles.items()):  # fmt: skip
                    continue
                worst = max(
                    abs(coverage(runs[(s, "degraded")], k, c, p) - GAUSSIAN_COVERAGE)
                    for s in _TARGET_SNR
                )
                if worst < best_worst - 1e-9:
                    best, best_worst = (float(k), c, p), worst
    k, c, p = best
    model.extra["model_error"] = np.array([k, c, p])
    after = {f"{s}_{kind}": coverage(r, k, c, p) for (s, kind), r in runs.items()}
    return {
        "model_error": [k, c, p],
        "n_stars": int(len(truth)),
        "c_quantiles": list(C_QUANTILES),
        "c_candidates": candidates,
        "max_miles_shift": MAX_SHIFT,
        "before": before,
        "after": after,
    }
