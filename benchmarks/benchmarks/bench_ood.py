"""The denoiser's out-of-distribution flag and class posterior, measured after calibration.

``training/calibrate_ood.py`` chose the limits and the class calibration on MILES ``val``; this script
measures them on data it never saw:

1. every good star of ``--split`` (default ``test``) observed through the simulator at
   S/N 5, 10, 20 and 50, ``--realisations`` times (default 8; each its own noise and a
   velocity drawn uniformly in +-``--vmax`` km/s, default 600) and denoised as
   ``denoise`` does (``denoise_arrays`` with the velocity fitted): per S/N the share
   flagged (``flagged``: the first realisation, the same draws as the runs with one
   realisation; ``flagged_all_realisations``), and, over all realisations pooled, the
   expected calibration error (ECE, 10 confidence bins of the top class) of the class
   posterior as returned (flagged rows uniform) with its 5-95 % interval over stars
   drawn with replacement (`~specutils_deepclean.benchmarking.ood_negatives.ece_interval`),
   of the unflagged rows, and of the uncalibrated posterior (the softmax of
   ``class_log_evidence``), and that of the first realisation alone; the reliability
   diagram (per bin: count of star realisations, mean confidence, accuracy) at S/N 10;
2. negatives (`~specutils_deepclean.benchmarking.ood_negatives`) built from MILES ``train`` stars with other seeds
   than the calibration's: the share of each kind flagged;
3. every target of the DESI files in ``--desi`` (``SpectrumList.read(path,
   format="DESI coadd")`` or ``"DESI spectra"``, one spectrum per target,
   ``specutils_deepclean.surveys.desi_targets``) through ``denoise``: its flag, score,
   fit statistics, velocity and the largest class probability;
4. the example stars observed as the demo does (S/N 10, airmass 1.5, a 400-pixel
   gap, seed = row) through ``denoise``: their flags.

    python benchmarks/benchmarks/bench_ood.py --split test --threads 1 \
        --json benchmarks/results/ood_test.json
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from specutils import SpectrumList

from specutils_deepclean import denoise
from specutils_deepclean.benchmarking.ood_negatives import (
    KINDS,
    ece_interval,
    make,
    reliability,
)
from specutils_deepclean.datasets import load_examples, load_library
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.io.models import load_model
from specutils_deepclean.simulate import Simulator, prepare_truth
from specutils_deepclean.surveys import desi_targets

from _common import header, select_stars, star_parser

SNRS = (5, 10, 20, 50)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def run(model, truth, snr, rv, seed):
    sim = Simulator(model.wavelength.to_value("Angstrom"), model.medium)
    obs = sim.observe(truth, snr, seed=seed, stellar_rv=rv)
    return denoise_arrays(
        model, obs.flux, obs.sigma, obs.mask, velocity=None,
        generator=torch.Generator().manual_seed(seed),
    ).map  # fmt: skip


def stars(model, library, args) -> dict:
    wave = model.wavelength.to_value("Angstrom")
    split = select_stars(library, args)
    truth, valid = prepare_truth(split, wave, model.medium)
    truth = np.where(valid, truth, np.nan)
    classes = np.asarray(split.params["class"]).astype(str)
    labels = np.array([model.prior.class_index(c) for c in classes])
    n_real = args.realisations
    pooled = np.tile(labels, n_real)
    rng = np.random.default_rng(args.seed)
    more = np.random.default_rng((args.seed, 1))  # the realisations after the first
    out = {"n_stars": int(truth.shape[0]), "realisations": n_real}
    for i, snr in enumerate(SNRS):
        fits, velocities = [], []
        for r in range(n_real):
            draw = rng if r == 0 else more
            velocities.append(draw.uniform(-args.vmax, args.vmax, truth.shape[0]))
            fits.append(run(model, truth, snr, velocities[-1], args.seed + i + 1000 * r))
        flag = np.concatenate([f.ood_flag for f in fits])
        posterior = np.stack([f.class_posterior for f in fits])
        flat = posterior.reshape(-1, posterior.shape[-1])
        evidence = np.concatenate([f.class_log_evidence for f in fits])
        error = np.concatenate([f.velocity[:, 0] for f in fits]) - np.concatenate(velocities)
        ece, diagram = reliability(flat, pooled)
        row = {
            "flagged": float(fits[0].ood_flag.mean()),
            "flagged_all_realisations": float(flag.mean()),
            "ece": ece,
            "ece_interval": ece_interval(posterior, labels, seed=args.seed),
            "ece_first_realisation": reliability(posterior[0], labels)[0],
            "ece_unflagged": reliability(flat[~flag], pooled[~flag])[0],
            "ece_uncalibrated": reliability(_softmax(evidence), pooled)[0],
            "accuracy": float(np.mean(flat.argmax(1) == pooled)),
            "median_abs_dv": float(np.median(np.abs(error))),
            "max_class_probability_flagged": float(flat[flag].max()) if flag.any() else None,
        }
        if snr == 10:
            row["reliability_diagram"] = diagram
        print(args.split, snr, {k: v for k, v in row.items() if k != "reliability_diagram"},
              flush=True)  # fmt: skip
        out[str(snr)] = row
    return out


def negatives(model, library, args) -> dict:
    wave = model.wavelength.to_value("Angstrom")
    train = library.select(split="train", good=True)
    truth, valid = prepare_truth(train, wave, model.medium)
    truth = np.where(valid, truth, np.nan)
    out = {}
    for j, kind in enumerate(KINDS):
        neg, snr, rv, _ = make(kind, args.negatives, wave, truth, args.seed + 300 + j)
        fit = run(model, neg, snr, rv, args.seed + 400 + j)
        out[kind] = {
            "n": int(neg.shape[0]),
            "flagged": float(fit.ood_flag.mean()),
            "max_class_probability_flagged": (
                float(fit.class_posterior[fit.ood_flag].max()) if fit.ood_flag.any() else None
            ),
        }
        print(kind, out[kind], flush=True)
    return out


def _denoised(spectrum) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = denoise(spectrum)
    info = result.meta["deepclean"]
    return {
        "ood_flag": bool(info["ood_flag"]),
        "ood_score": info["ood_score"],
        "fit_chi2": info["fit_chi2"],
        "fit_structure": info["fit_structure"],
        "snr": info["snr"],
        "radial_velocity_kms": float(info["radial_velocity"].to_value(u.km / u.s)),
        "map_class": info["map_class"],
        "max_class_probability": max(info["class_posterior"].values()),
    }


def desi(folder: str) -> dict:
    out = {}
    for path in sorted(Path(folder).glob("*.fits")):
        kind = "DESI coadd" if path.name.startswith("coadd") else "DESI spectra"
        targets, _ = desi_targets(SpectrumList.read(path, format=kind))
        for target in targets:
            row = _denoised(target)
            fibermap = target.meta["fibermap"]
            for column in ("OBJTYPE", "DESI_TARGET", "SV3_DESI_TARGET", "BGS_TARGET"):
                if column in fibermap.colnames:
                    value = fibermap[column][0]
                    row[column.lower()] = value.strip() if isinstance(value, str) else int(value)
            out[f"{path.name} {target.meta['target']}"] = row
            print(path.name, target.meta["target"], row, flush=True)
    return out


def examples() -> dict:
    library = load_examples()
    grid = library.wavelength.value
    sim = Simulator(grid, library.medium, fwhm=2.5 if library.fwhm is None else library.fwhm)
    out = {}
    for star in range(len(library)):
        truth, _ = prepare_truth(library.take([star]), grid, library.medium)
        spec = sim.observe(truth, 10.0, seed=star, gap=(400, "middle"), airmass=1.5)
        row = _denoised(spec.to_spectrum()[0])
        names = library.params.colnames
        out[str(library.params["name"][star]) if "name" in names else str(star)] = row
    print("examples", {k: v["ood_flag"] for k, v in out.items()}, flush=True)
    return out


def main(argv=None) -> int:
    parser = star_parser(__doc__, seed=1616)
    parser.add_argument("--negatives", type=int, default=30, help="spectra per negative kind")
    parser.add_argument(
        "--realisations", type=int, default=8, help="noise and velocity draws per star and S/N"
    )
    parser.add_argument("--desi", default="../shared/data/desi", help="'' to skip")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    library = load_library(args.library)
    result = {
        **header("bench_ood.py", argv, args),
        "ood_limits": np.asarray(model.extra.get("ood_limits", [])).tolist(),
        "class_calibration": np.asarray(model.extra.get("class_calibration", [])).tolist(),
        "stars": stars(model, library, args),
        "negatives_from_train": negatives(model, library, args),
        "examples_demo_observation": examples(),
    }
    if args.desi and Path(args.desi).is_dir():
        result["desi"] = desi(args.desi)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
