"""Fit the PCA projection baseline on MILES ``train`` and ship it as ``miles-pca``.

The grid is the MILES grid clipped to 3600-7400 Angstrom (air), the range of the
PCA floor the project set out to beat. Spectra are divided by the median
of their valid pixels; MASK pixels are missing (imputed while fitting, never used
when projecting). Spectra flagged ``bad`` in the library (zero or negative pixels,
a truncated spectrum) are left out of every split, as for that floor.
For every k in ``--k`` a model is fitted on ``train`` and scored on ``val`` by
the median over spectra of the MSE of projecting the clean spectrum (valid
pixels only); the k with the lowest val score is kept (ties: the smaller k).
``test`` is scored only as a sanity check against that floor and plays no
part in the choice.

Writes ``specutils_deepclean/pretrained/miles-pca.asdf`` and
``benchmarks/results/pca_train.json``::

    python benchmarks/training/train_pca.py [--library ../shared/data/miles/miles.fits]
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from astropy.io import fits

from specutils_deepclean import __version__
from specutils_deepclean.io.models import save_model
from specutils_deepclean.models.baselines import PCADenoiser
from specutils_deepclean.provenance import Provenance, file_sha256

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LIBRARY = REPO.parent / "shared" / "data" / "miles" / "miles.fits"
OUTPUT_MODEL = REPO / "specutils_deepclean" / "pretrained" / "miles-pca.asdf"
OUTPUT_JSON = REPO / "benchmarks" / "results" / "pca_train.json"
WAVE_RANGE = (3600.0, 7400.0)
# The PCA floor the project set out to beat: median MSE of projecting clean MILES test stars.
TARGET_TEST_MSE = {3: 2.2e-3, 5: 6.8e-4, 10: 3.6e-4, 20: 1.5e-4, 40: 8.6e-5}
SEED = 0


def load_library(path: Path):
    """Flux (median-normalised), valid mask, wavelength, split, bad flag and medium."""
    with fits.open(path) as hdul:
        wave = np.asarray(hdul["WAVE"].data, dtype=np.float64)
        keep = (wave >= WAVE_RANGE[0]) & (wave <= WAVE_RANGE[1])
        flux = np.asarray(hdul["FLUX"].data, dtype=np.float64)[:, keep]
        valid = (hdul["MASK"].data[:, keep] == 0) & np.isfinite(flux)
        params = hdul["PARAMS"].data
        split = np.char.strip(np.asarray(params["split"]).astype(str))
        bad = np.asarray(params["bad"]).astype(bool)
        medium = str(hdul["WAVE"].header.get("WAVEMED", "air")).strip().lower()
    scale = np.array([np.median(f[v]) for f, v in zip(flux, valid, strict=True)])
    return flux / scale[:, None], valid, wave[keep], split, bad, medium


def median_projection_mse(model: PCADenoiser, flux: np.ndarray, valid: np.ndarray) -> float:
    """Median over spectra of the MSE (valid pixels) of projecting each clean spectrum."""
    proj = model.reconstruct(flux, ~valid)
    sq = np.where(valid, (proj - flux) ** 2, 0.0)
    return float(np.median(sq.sum(axis=1) / valid.sum(axis=1)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", type=Path, default=DEFAULT_LIBRARY)
    parser.add_argument("--k", type=int, nargs="+", default=sorted(TARGET_TEST_MSE))
    parser.add_argument("--model-out", type=Path, default=OUTPUT_MODEL)
    parser.add_argument("--json-out", type=Path, default=OUTPUT_JSON)
    args = parser.parse_args(argv)

    torch.manual_seed(SEED)  # PCA is deterministic; the seed is recorded for the protocol
    flux, valid, wave, split, bad, medium = load_library(args.library)
    parts = {name: (split == name) & ~bad for name in ("train", "val", "test")}
    start = time.perf_counter()
    models, val_mse, test_mse = {}, {}, {}
    for k in args.k:
        models[k] = PCADenoiser.fit(
            flux[parts["train"]],
            wave * u.AA,
            missing=~valid[parts["train"]],
            n_components=k,
            medium=medium,
            name="miles-pca",
        )
        val_mse[k] = median_projection_mse(models[k], flux[parts["val"]], valid[parts["val"]])
        test_mse[k] = median_projection_mse(models[k], flux[parts["test"]], valid[parts["test"]])
        print(
            f"k={k:3d}  val median MSE {val_mse[k]:.3g}  test {test_mse[k]:.3g}"
            f"  (target test {TARGET_TEST_MSE.get(k, float('nan')):.2g})"
        )
    fit_seconds = time.perf_counter() - start
    best = min(args.k, key=lambda k: (val_mse[k], k))

    library = os.path.relpath(args.library.resolve(), REPO)
    provenance = Provenance(
        data_name="MILES",
        data_path=library,
        data_sha256=file_sha256(args.library),
        data_description=(
            f"MILES v9.1 split 'train' without the spectra flagged bad "
            f"({int(parts['train'].sum())} spectra) on the MILES grid "
            f"clipped to {WAVE_RANGE[0]:.0f}-{WAVE_RANGE[1]:.0f} A ({len(wave)} px, {medium}), "
            "each divided by the median of its valid pixels; MASK pixels missing"
        ),
        split="train",
        seed=SEED,
        script="benchmarks/training/train_pca.py",
        metrics={f"val_median_mse_k{k}": val_mse[k] for k in args.k},
        notes=(
            f"n_components={best} chosen on val (lowest median MSE of projecting clean "
            f"spectra among k in {list(args.k)}); missing pixels imputed iteratively"
        ),
    )
    model = models[best]
    model.provenance = provenance
    save_model(model, args.model_out, overwrite=True)

    result = {
        "benchmark": "pca_train",
        "package_version": __version__,
        "library": library,
        "library_sha256": provenance.data_sha256,
        "wave_range_angstrom": list(WAVE_RANGE),
        "n_pix": len(wave),
        "medium": medium,
        "n_spectra": {name: int(mask.sum()) for name, mask in parts.items()},
        "bad_spectra_excluded": int(bad.sum()),
        "seed": SEED,
        "k": list(args.k),
        "val_median_mse": {str(k): val_mse[k] for k in args.k},
        "test_median_mse_sanity_only": {str(k): test_mse[k] for k in args.k},
        "design_test_median_mse": {str(k): v for k, v in TARGET_TEST_MSE.items()},
        "chosen_k": best,
        "fit_seconds_all_k": round(fit_seconds, 2),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "model_file": os.path.relpath(args.model_out.resolve(), REPO),
        "model_file_bytes": args.model_out.stat().st_size,
        "model_file_sha256": file_sha256(args.model_out),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"chose k={best}; wrote {args.model_out} ({result['model_file_bytes']} bytes) "
        f"and {args.json_out}"
    )
    return result


if __name__ == "__main__":
    main()
