"""Telluric benchmark protocol: Q_t, Q_s and RMS inside the telluric mask.

Stars of one split of a library file are observed through the simulator
(:mod:`specutils_deepclean.training.telluric_data`: random stellar RV, airmass uniform
in [1, 2.5], sky, cosmics, correlated noise) at S/N 20, 50 and 200, then corrected by:

* ``none``: the observation itself;
* ``reconstruct``: ``remove_tellurics(mode="reconstruct")``, the paper's output;
* ``divide``: ``remove_tellurics(mode="divide")``;
* ``template_fit``: the physics reference: the known line transmission raised to a
  power and shifted (both fitted per spectrum by least squares inside the telluric
  region, with the VAE reconstruction as the stellar model), divided out.

The truth is the star times the smooth (continuum) part of the transmission; the
telluric mask M_t is where the line transmission of that spectrum is below 0.99
(see ``specutils_deepclean.tellurics``).  Q_t and Q_s follow Sedaghat et al. 2023,
Eqs. 12-15 (``specutils_deepclean.metrics``); lower is better.  ``gaps_snr50``:
the same at S/N 50 with one gap of the benchmark protocol in every spectrum (100, 400
or 800 pixels at the blue end, middle or red end, drawn per spectrum; gap pixels are
not scored).

    specutils-deepclean benchmark tellurics --split test --json tellurics_test.json

``--ablation LABEL=MODEL ...`` (or ``--ablation-dir DIR``: every model file in it,
labelled by its name) adds Q_t / Q_s at S/N 50 for other model files (whitening
0/15/30 km/s, VAE vs AE, with and without the telluric layer; the models of
``benchmarks/studies/ablate_tellurics.sh``).  ``--speed`` adds the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from specutils import Spectrum

from .. import metrics
from ..datasets import load_library
from ..doppler import shift_flux
from ..io.models import load_model
from ..manipulation import remove_tellurics
from ..models.karaoke import KaraokeVAE
from ..simulate import Simulator
from ..tellurics import split_transmission, telluric_region
from ..training.telluric_data import observe_split

SNRS = (20, 50, 200)
POWERS = np.arange(0.5, 3.01, 0.05)
VELOCITIES = np.arange(-3.0, 3.01, 1.5)


def as_spectrum(flux, sigma, wave, medium):
    from astropy.nddata import StdDevUncertainty

    return Spectrum(
        flux=flux * u.one,
        spectral_axis=wave * u.AA,
        uncertainty=StdDevUncertainty(sigma),
        mask=~np.isfinite(flux),
        meta={"medium": medium},
    )


def template_fit(flux, sigma, recon, lines_1, region, wave):
    """Divide by lines_1 ** p shifted by v, (p, v) fitted per spectrum against recon * T."""
    shifted = np.stack([shift_flux(lines_1[None], wave, np.array([v]))[0][0] for v in VELOCITIES])
    shifted = np.where(np.isfinite(shifted), shifted, 1.0)
    best = np.full(len(flux), np.inf)
    out = flux.copy()
    weight = np.where(np.isfinite(flux) & np.isfinite(sigma) & region, 1.0 / sigma**2, 0.0)
    obs = np.nan_to_num(flux)
    for template in shifted:
        for p in POWERS:
            t = template**p
            chi2 = np.sum(weight * (obs - recon * t) ** 2, axis=1)
            better = chi2 < best
            best[better] = chi2[better]
            out[better] = flux[better] / t
    return out


def score(pred, survey, mt):
    mask = ~np.isfinite(survey.flux)
    qt = metrics.q_t(pred, survey.flux, survey.truth, mt, mask=mask)
    qs = metrics.q_s(pred, survey.truth, mt, mask=mask)
    rms = metrics.rms_in_mask(pred, survey.truth, mt, mask=mask)
    return {
        "q_t_median": float(np.nanmedian(qt)),
        "q_s_median": float(np.nanmedian(qs)),
        "rms_in_mask_median": float(np.nanmedian(rms)),
        "q_t_mean": float(np.nanmean(qt)),
        "q_s_mean": float(np.nanmean(qs)),
    }


def methods(model, survey, wave, medium, smooth=1.0):
    """The observation and the two modes of ``remove_tellurics`` with ``model``."""
    spec = as_spectrum(survey.flux, survey.sigma, wave, medium)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = remove_tellurics(spec, model, mode="reconstruct", device="cpu").flux.value
        div = remove_tellurics(
            spec, model, mode="divide", device="cpu", smooth_pixels=smooth
        ).flux.value
    return {
        "none": survey.flux,
        "reconstruct": rec,
        "divide": div,
    }


def speed(model, wave, medium, survey) -> dict:
    rows = np.resize(np.arange(len(survey.flux)), 256)
    spec = as_spectrum(survey.flux[rows], survey.sigma[rows], wave, medium)
    remove_tellurics(spec, model, device="cpu")  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        remove_tellurics(spec, model, device="cpu")
        times.append(time.perf_counter() - start)
    net_times = []
    flux = np.nan_to_num(survey.flux[rows], nan=1.0)
    for _ in range(3):
        start = time.perf_counter()
        model.reconstruct(flux)
        net_times.append(time.perf_counter() - start)
    harps = KaraokeVAE.from_grid(np.linspace(3800.0, 6900.0, 327_680) * u.AA, medium="air")
    one = np.ones((1, 327_680))
    harps.reconstruct(one)
    harps_times = []
    for _ in range(5):
        start = time.perf_counter()
        harps.reconstruct(one)
        harps_times.append(time.perf_counter() - start)
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "remove_tellurics_spectra_per_s_batch256": 256 / float(np.median(times)),
        "network_only_spectra_per_s_batch256": 256 / float(np.median(net_times)),
        "harps_327680px_ms_per_spectrum_untrained": 1000 * float(np.median(harps_times)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None) -> int:
    """``specutils-deepclean benchmark tellurics``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean benchmark tellurics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--library", default=None, help="library file in the MILES layout")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="karaoke-miles")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--ablation", nargs="*", default=[], metavar="LABEL=MODEL")
    parser.add_argument(
        "--ablation-dir",
        default=None,
        help="add every *.asdf in this folder to --ablation, labelled by its file name",
    )
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--smooth", type=float, default=1.0, help="divide: smooth_pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    library = load_library(args.library)
    stars = library.select(split=args.split, good=True)
    wave, medium = library.wavelength.value, library.medium
    fwhm = library.fwhm.value if library.fwhm is not None else 2.5
    lines_1 = split_transmission(Simulator(wave, medium, fwhm=fwhm).transmission_at(1.0), wave)[1]
    model = load_model(args.model)
    region = telluric_region(np.asarray(model.extra["telluric_lines"], dtype=float))
    result = {
        "command": "specutils-deepclean benchmark tellurics "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "library": str(library.path),
        "split": args.split,
        "n_spectra": len(stars),
        "model": args.model,
        "seed": args.seed,
        "smooth_pixels": args.smooth,
        "snr": {},
    }
    for k, snr in enumerate(SNRS):
        survey = observe_split(stars, wave, medium, copies=1, seed=args.seed + k, snr=snr)
        mt = survey.lines < 0.99
        preds = methods(model, survey, wave, medium, args.smooth)
        preds["template_fit"] = template_fit(
            survey.flux, survey.sigma, preds["reconstruct"], lines_1, region, wave
        )
        result["snr"][str(snr)] = {name: score(pred, survey, mt) for name, pred in preds.items()}
        result["snr"][str(snr)]["telluric_pixels_median"] = float(np.median(mt.sum(axis=1)))
        print(snr, json.dumps(result["snr"][str(snr)], indent=1))
    survey = observe_split(
        stars, wave, medium, copies=1, seed=args.seed + len(SNRS), snr=50, gap_fraction=1.0
    )
    preds = methods(model, survey, wave, medium, args.smooth)
    result["gaps_snr50"] = {
        name: score(pred, survey, survey.lines < 0.99) for name, pred in preds.items()
    }
    print("gaps", json.dumps(result["gaps_snr50"], indent=1))
    if args.ablation_dir is not None:
        found = sorted(Path(args.ablation_dir).glob("*.asdf"))
        if not found:
            parser.error(f"no .asdf model file in {args.ablation_dir}")
        args.ablation += [f"{path.stem}={path}" for path in found]
    if args.ablation:
        survey = observe_split(stars, wave, medium, copies=1, seed=args.seed + 1, snr=50)
        mt = survey.lines < 0.99
        result["ablation_snr50"] = {}
        for item in args.ablation:
            label, path = item.split("=", 1)
            other = load_model(path)
            preds = methods(other, survey, wave, medium, args.smooth)
            result["ablation_snr50"][label] = {
                "model": path,
                "reconstruct": score(preds["reconstruct"], survey, mt),
                "divide": score(preds["divide"], survey, mt),
            }
            print(label, json.dumps(result["ablation_snr50"][label], indent=1))
    if args.speed:
        survey = observe_split(stars, wave, medium, copies=1, seed=args.seed, snr=50)
        result["speed"] = speed(model, wave, medium, survey)
        print(json.dumps(result["speed"], indent=1))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
