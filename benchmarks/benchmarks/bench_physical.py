"""Benchmark of ``remove_tellurics(mode="physical")`` against ``divide`` (issue 17).

    python benchmarks/benchmarks/bench_physical.py --split val --json benchmarks/results/physical_val.json
    python benchmarks/benchmarks/bench_physical.py --split test --speed \
        --json benchmarks/results/physical_test.json

1. MILES stars of one split (tune on ``val``, report ``test``) observed through the
   simulator at a random stellar RV in +-150 km/s, airmass uniform in 1-2.5, S/N 20,
   50, 200 (sky residuals, cosmics, correlated noise).  Per band (O2 B, H2O 6500,
   H2O 7200; MILES stops at 7410 A): median Q_t (Sedaghat et al. Eq. 12, not
   clipped at 1) of the input, ``divide``, ``physical``, the physical fit given the
   true star as its stellar model (``physical_true_star``: the template's and the
   fit's share of the error, without the network's), a second physical fit whose
   stellar model is the network's reconstruction of the first fit's corrected
   spectrum (``physical_iterated``), the fit with the reconstruction left where
   the network draws it (``physical_unaligned``), ``physical``'s observation divided
   by the molecules' whole transmission instead of its line part
   (``physical_whole_transmission``: the bands' smooth envelope removed too, as
   before this change), and a perfect division (the
   observation divided by the true line transmission: what is possible; in a weak
   band at low S/N even it is above 1, as dividing amplifies the noise); Q_t over
   all of M_t (clipped, as in the telluric benchmark) and Q_s.  Truth: the star times
   the smooth part of the transmission; M_t: line transmission below 0.99.
   ``physical_meta``: the fraction of spectra with a band left uncorrected, and the
   shift by which the stellar model was moved against the star's velocity.
   Also the same stars without any telluric absorption (S/N 200): the depths the
   fit finds there, the transmission it would divide by and the fraction of spectra
   it changes at all.
2. Stellar lines at S/N 200: equivalent widths (Lick-like windows, shifted with the
   star) of Ca II H&K, Hbeta, Mg b, Na D, Halpha after each method against a perfect
   division (the observation divided by the true line transmission); median over
   stars with |EW| > 0.3 A of |EW - EW_perfect| / |EW_perfect|.
3. The demo M dwarf (``load_examples``) at airmass 1.5, S/N 200: the transmission's
   minimum over Na D.
4. The real SDSS spectrum of NGC 3073 (vacuum, z = 0.00376): Na D, Mg b and Hbeta EWs
   before and after, and the depth of the red bands (O2 B, O2 A, H2O 8200, H2O 9400)
   relative to their neighbours before and after.
5. The DESI coadd targets with data (flux-calibrated, vacuum, to 9824 A): the same
   band depths (H2O 9400 core 9300-9500 A) before and after.
6. The red bands on simulated spectra: the same stars on an SDSS-like vacuum grid
   (log10 step 1e-4, 3600-9800 A, FWHM 4 A), their red part beyond 7410 A
   constructed (a power law with the Ca II triplet, nothing else), observed at S/N
   50 and 200: Q_t per band (O2 B, O2 A, H2O 8200, H2O 9400) of the input,
   ``physical``, the physical fit given the true star (``physical_true_star``) and a
   perfect division, and the Ca II 8544 EW change; ``envelope_left_median_max_depth``:
   the deepest point of the smooth envelope ``physical`` leaves in each band (the
   molecules' whole transmission over the line part it divides by; median over
   stars).  What it cannot show: real red stellar features (TiO, Paschen lines) under the bands, a real
   atmosphere whose water varies apart from its O2, a real line spread function.
7. ``--speed``: spectra per second at batch 256 (MILES grid, S/N 50) for both modes,
   the fastest of 5 alternating repeats after a warm-up call, by the wall clock and
   per CPU-second (``--speed-threads``: the torch threads for this part alone;
   ``--speed-only``: this part alone, e.g. under ``PYTHONPATH=<another checkout>``
   to time that code).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum

from specutils_deepclean import metrics
from specutils_deepclean.datasets import load_examples, load_library
from specutils_deepclean.manipulation import remove_tellurics
from specutils_deepclean.resample import bin_edges
from specutils_deepclean.simulate import Simulator, prepare_truth
from specutils_deepclean.telluric_fit import fit_transmission
from specutils_deepclean.telluric_physical import line_part
from specutils_deepclean.tellurics import split_transmission

C_KMS = 299792.458
SNRS = (20, 50, 200)
BANDS = {"O2_B": (6860, 6935), "H2O_6500": (6470, 6600), "H2O_7200": (7160, 7340)}
# (band, blue continuum, red continuum), rest air Angstrom (Lick-like)
LINES = {
    "CaHK": ((3920, 3980), (3895, 3915), (3985, 4005)),
    "Hbeta": ((4847.9, 4876.6), (4827.9, 4847.9), (4876.6, 4891.6)),
    "Mgb": ((5160.1, 5192.6), (5142.6, 5161.4), (5191.4, 5206.4)),
    "NaD": ((5876.9, 5909.4), (5860.6, 5875.6), (5922.1, 5948.1)),
    "Halpha": ((6548, 6578), (6520, 6540), (6590, 6610)),
}
METHODS = ("divide", "physical")


def ew(flux, wave, line, shift=1.0):
    """Equivalent width (A) per row: linear continuum through the two side bands."""
    band, blue, red = (np.array(x) * shift for x in line)
    flux = np.atleast_2d(flux)
    sb = (wave > blue[0]) & (wave < blue[1])
    sr = (wave > red[0]) & (wave < red[1])
    inb = (wave > band[0]) & (wave < band[1])
    fb, fr = np.nanmedian(flux[:, sb], axis=1), np.nanmedian(flux[:, sr], axis=1)
    wb, wr = wave[sb].mean(), wave[sr].mean()
    cont = fb[:, None] + (fr - fb)[:, None] * (wave[inb] - wb) / (wr - wb)
    step = np.gradient(wave)[inb]
    return np.nansum((1 - flux[:, inb] / cont) * step, axis=1)


def spectrum(flux, sigma, wave, medium):
    return Spectrum(
        flux=flux * u.one, spectral_axis=wave * u.AA, uncertainty=StdDevUncertainty(sigma),
        mask=~np.isfinite(flux), meta={"medium": medium},
    )


def correct(flux, sigma, wave, medium, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = remove_tellurics(spectrum(flux, sigma, wave, medium), mode=mode, device="cpu")
    return out.flux.value, out


def observed(sim, truth, snr, rng, wave):
    """Observe ``truth`` at airmass uniform in 1-2.5 (steps of 0.05) and split what is scored.

    Returns the observation, its flux (NaN where masked), the line transmission, the
    truth (the star times the smooth part of the transmission) and M_t (line
    transmission below 0.99).
    """
    airmass = np.round(rng.uniform(1.0, 2.5, len(truth)) / 0.05) * 0.05
    obs = sim.observe(truth, snr, seed=int(rng.integers(2**31)), airmass=airmass)
    continuum, lines = split_transmission(obs.transmission, wave)
    flux = np.where(obs.mask, np.nan, obs.flux)
    return obs, flux, lines, obs.truth * continuum, lines < 0.99


def with_true_star(flux, obs, wave, medium):
    """The physical fit with the true star as its stellar model instead of the network's
    reconstruction: what the template and the fit do when the star is known."""
    fit = fit_transmission(bin_edges(wave), medium, flux, obs.sigma, np.isfinite(flux), obs.truth)
    return divided(flux, fit.transmission, wave)


def divided(flux, transmission, wave):
    """``flux`` divided as ``remove_tellurics(mode="physical")`` does: by the line part
    of the fitted transmission, pixels whose transmission is below the floor kept."""
    lines = line_part(transmission, wave)
    return flux / np.where(transmission < 0.05, 1.0, lines)  # the floor of remove_tellurics


def refit(flux, obs, wave, medium, first, iterate):
    """The physical fit again, with the network's reconstruction as stellar model.

    ``iterate``: the reconstruction of the observation divided by the first fit's
    transmission (``first``: the corrected spectrum), the iteration the issue
    proposed (``physical_iterated``); else the reconstruction of the observation
    itself, not moved to the star's velocity (``physical_unaligned``: the fit before
    `~specutils_deepclean.telluric_star.align_stellar`).  Both kept to show what
    they do.
    """
    t = first.meta["deepclean"]["transmission"].flux.value
    source = flux / np.where(t < 0.05, 1.0, t) if iterate else flux
    star = correct(source, obs.sigma, wave, medium, "reconstruct")[0]
    fit = fit_transmission(bin_edges(wave), medium, flux, obs.sigma, np.isfinite(flux), star,
                           resolving_power=first.meta["deepclean"]["resolving_power"],
                           align=iterate)
    return divided(flux, fit.transmission, wave)


def whole_transmission(meta):
    """The product of the fitted molecules' transmissions (``meta["deepclean"]``)."""
    return np.prod([m.flux.value for m in meta["transmission_molecules"].values()], axis=0)


def by_whole_transmission(flux, meta):
    """``flux`` divided by the molecules' whole transmission, not its line part
    (``physical_whole_transmission``: the bands' smooth envelope removed too)."""
    whole = whole_transmission(meta)
    return flux / np.where(whole < 0.05, 1.0, whole)


def ew_per_star(flux, wave, line, shift):
    """:func:`ew` of each row, the window of row ``i`` shifted by ``shift[i]``."""
    return np.array([ew(flux[i], wave, line, shift[i])[0] for i in range(len(flux))])


def miles_part(split, seed, limit=None):
    library = load_library()
    stars = library.select(split=split, good=True)
    if limit:
        stars = stars.take(np.arange(min(limit, len(stars))))
    wave, medium = library.wavelength.value, library.medium
    truth, valid = prepare_truth(stars, wave, medium)
    truth = np.where(valid, truth, np.nan)
    sim = Simulator(wave, medium, fwhm=2.5, rv_range=(-150.0, 150.0))
    rng = np.random.default_rng(seed)
    out = {"n_spectra": len(stars), "snr": {}}
    for snr in SNRS:
        obs, flux, lines, ideal, mt = observed(sim, truth, snr, rng, wave)
        preds = {"none": flux, "perfect": flux / lines}
        for mode in METHODS:
            preds[mode], spec = correct(flux, obs.sigma, wave, medium, mode)
        meta = spec.meta["deepclean"]
        preds["physical_true_star"] = with_true_star(flux, obs, wave, medium)
        preds["physical_whole_transmission"] = by_whole_transmission(flux, meta)
        preds["physical_iterated"] = refit(flux, obs, wave, medium, spec, iterate=True)
        preds["physical_unaligned"] = refit(flux, obs, wave, medium, spec, iterate=False)
        shift = np.asarray(meta["stellar_model_shift"])
        row = {"bands": {}, "q_s": {}, "physical_meta": {
            "fraction_with_uncorrected_band": float(np.mean(np.asarray(meta["uncorrected_bands"]) > 0)),
            "stellar_model_shift_vs_stellar_rv": {
                "slope": float(np.polyfit(obs.stellar_rv, shift, 1)[0]),
                "median_abs_difference_kms": float(np.median(np.abs(shift - obs.stellar_rv))),
            },
        }}
        miss = ~np.isfinite(flux)
        for band, (lo, hi) in BANDS.items():
            sel = mt & ((wave > lo) & (wave < hi))[None]
            row["bands"][band] = {}
            for name, pred in preds.items():
                qt = metrics.q_t(pred, flux, ideal, sel, mask=miss, clip=False)
                row["bands"][band][name] = float(np.nanmedian(qt))
        for name, pred in preds.items():
            row["q_t_all"] = row.get("q_t_all", {})
            row["q_t_all"][name] = float(np.nanmedian(metrics.q_t(pred, flux, ideal, mt, mask=miss)))
            row["q_s"][name] = float(np.nanmedian(metrics.q_s(pred, ideal, mt, mask=miss)))
        if snr == 200:
            perfect = flux / lines
            shift = 1 + obs.stellar_rv / C_KMS
            row["ew_change_vs_perfect"] = {}
            for name, line in LINES.items():
                ref = ew_per_star(perfect, wave, line, shift)
                use = np.abs(ref) > 0.3
                row["ew_change_vs_perfect"][name] = {"n_stars": int(use.sum())}
                for mode in ("none",) + METHODS + ("physical_iterated", "physical_unaligned"):
                    got = ew_per_star(preds[mode], wave, line, shift)
                    change = np.abs(got - ref)[use] / np.abs(ref[use])
                    row["ew_change_vs_perfect"][name][mode] = float(np.median(change))
        out["snr"][str(snr)] = row
        print(snr, json.dumps(row, indent=1), flush=True)
    # The same stars without any telluric absorption (S/N 200): what the fit invents.
    obs = sim.observe(truth, 200, seed=int(rng.integers(2**31)), airmass=None,
                      stellar_rv=rng.uniform(-150.0, 150.0, len(stars)))
    flux = np.where(obs.mask, np.nan, obs.flux)
    _, spec = correct(flux, obs.sigma, wave, medium, "physical")
    meta = spec.meta["deepclean"]
    t = meta["transmission"].flux.value
    out["no_tellurics_snr200"] = {
        "median_depth": {m: float(np.median(d)) for m, d in meta["depths"].items()},
        "p90_depth": {m: float(np.percentile(d, 90)) for m, d in meta["depths"].items()},
        "median_min_transmission": float(np.median(np.nanmin(t, axis=1))),
        "median_rms_1_minus_t": float(np.median(np.sqrt(np.nanmean((1 - t) ** 2, axis=1)))),
        "fraction_corrected": float(np.mean(np.nanmin(t, axis=1) < 1 - 1e-6)),
    }
    print("no tellurics", out["no_tellurics_snr200"], flush=True)
    return out


RED_GRID = (3600.0, 9800.0, 1e-4)  # SDSS-like: log10 step 1e-4, vacuum
RED_FWHM = 4.0  # Angstrom: R 1500-2450 over the grid
RED_BANDS_SIM = {
    "O2_B": (6865, 6940), "O2_A": (7590, 7700), "H2O_8200": (8100, 8400),
    "H2O_9400": (8900, 9800),
}
CAT = ((8500.4, 0.3), (8544.4, 0.5), (8664.5, 0.4))  # vacuum centre, relative depth


def red_stars(stars, wave):
    """MILES stars on a vacuum grid to 9800 A, their red part constructed.

    Beyond the library's last valid pixel: a power law fitted to log flux over
    6500-7350 A, with the three Ca II triplet lines as Gaussians (sigma 1.5 A; depths
    0.3, 0.5, 0.4).  Nothing else: no TiO, no Paschen lines, no real red spectrum.
    """
    truth, valid = prepare_truth(stars, wave, "vacuum")
    fit = (wave > 6500) & (wave < 7350)
    out = truth.copy()
    for i in range(len(truth)):
        use = fit & valid[i]
        slope, level = np.polyfit(np.log(wave[use]), np.log(truth[i, use]), 1)
        red = wave > wave[valid[i]].max()
        cont = np.exp(level + slope * np.log(wave[red]))
        lines = sum(d * np.exp(-0.5 * ((wave[red] - c) / 1.5) ** 2) for c, d in CAT)
        out[i, red] = cont * (1 - lines)
    good = np.isfinite(out).all(axis=1)
    return out[good], good


def red_part(split, seed):
    """Simulated survey-like spectra 3600-9800 A with constructed red parts."""
    library = load_library()
    stars = library.select(split=split, good=True)
    wave = 10 ** np.arange(np.log10(RED_GRID[0]), np.log10(RED_GRID[1]), RED_GRID[2])
    truth, _ = red_stars(stars, wave)
    sim = Simulator(wave, "vacuum", fwhm=RED_FWHM, rv_range=(-150.0, 150.0))
    rng = np.random.default_rng(seed)
    out = {"n_spectra": len(truth), "grid": "vacuum, log10 step 1e-4, 3600-9800 A",
           "fwhm_aa": RED_FWHM, "snr": {}}
    for snr in (50, 200):
        obs, flux, lines, ideal, mt = observed(sim, truth, snr, rng, wave)
        phys, spec = correct(flux, obs.sigma, wave, "vacuum", "physical")
        meta = spec.meta["deepclean"]
        # the molecules' whole transmission over the line part divided: the smooth
        # envelope of the bands left in the corrected spectrum
        envelope = whole_transmission(meta) / meta["transmission"].flux.value
        preds = {"none": flux, "perfect": flux / lines, "physical": phys,
                 "physical_true_star": with_true_star(flux, obs, wave, "vacuum"),
                 "physical_whole_transmission": by_whole_transmission(flux, meta)}
        miss = ~np.isfinite(flux)
        row = {"bands": {}}
        for band, (lo, hi) in RED_BANDS_SIM.items():
            sel = mt & ((wave > lo) & (wave < hi))[None]
            row["bands"][band] = {
                name: float(np.nanmedian(metrics.q_t(p, flux, ideal, sel, mask=miss, clip=False)))
                for name, p in preds.items()
            }
        row["q_t_all"] = {
            name: float(np.nanmedian(metrics.q_t(p, flux, ideal, mt, mask=miss)))
            for name, p in preds.items()
        }
        row["envelope_left_median_max_depth"] = {
            band: float(np.median(1 - envelope[:, (wave > lo) & (wave < hi)].min(axis=1)))
            for band, (lo, hi) in RED_BANDS_SIM.items()
        }
        shift = 1 + obs.stellar_rv / C_KMS
        cat = ((8533.0, 8556.0), (8515.0, 8530.0), (8560.0, 8575.0))  # the 8544 line
        ref = ew_per_star(preds["perfect"], wave, cat, shift)
        got = ew_per_star(phys, wave, cat, shift)
        raw = ew_per_star(flux, wave, cat, shift)
        row["ew_change_vs_perfect_CaT8544"] = {
            "none": float(np.median(np.abs(raw - ref) / np.abs(ref))),
            "physical": float(np.median(np.abs(got - ref) / np.abs(ref))),
        }
        out["snr"][str(snr)] = row
        print("red", snr, json.dumps(row, indent=1), flush=True)
    return out


def mdwarf_part():
    lib = load_examples()
    rows = np.flatnonzero(np.char.strip(np.asarray(lib.labels, dtype=str)) == "M")
    wave = lib.wavelength.value
    truth, _ = prepare_truth(lib, wave, lib.medium)
    obs = Simulator(wave, lib.medium, fwhm=2.5).observe(truth[rows], 200, seed=5, airmass=1.5)
    nad = (wave > 5880) & (wave < 5905)
    out = {}
    for mode in METHODS:
        _, spec = correct(obs.flux, obs.sigma, wave, lib.medium, mode)
        t = spec.meta["deepclean"]["transmission"].flux.value
        out[mode] = float(np.nanmin(np.atleast_2d(t)[:, nad]))
    return out


SDSS_Z = 0.00376
SDSS_LINES = {  # vacuum rest
    "NaD": ((5878.5, 5911.0), (5862.2, 5877.2), (5923.7, 5949.7)),
    "Mgb": ((5161.6, 5194.2), (5144.1, 5162.9), (5192.9, 5207.9)),
    "Hbeta": ((4849.2, 4878.0), (4829.2, 4849.2), (4878.0, 4893.0)),
}
RED_BANDS = {  # band core, neighbours (vacuum, observed frame)
    "O2_B": ((6868, 6885), [(6830, 6860), (6940, 6960)]),
    "O2_A": ((7595, 7625), [(7550, 7585), (7700, 7730)]),
    "H2O_8200": ((8130, 8250), [(8040, 8090), (8300, 8340)]),
    "H2O_9400": ((8950, 9180), [(8700, 8800)]),  # the file stops at 9204 A
}


def sdss_part(path):
    spec = Spectrum.read(path, format="SDSS-III/IV spec")
    # SDSS is vacuum (header VACUUM = T); stated explicitly.
    spec = Spectrum(
        flux=spec.flux, spectral_axis=spec.spectral_axis,
        uncertainty=spec.uncertainty, mask=spec.mask, meta={"medium": "vacuum"},
    )
    wave = spec.spectral_axis.to_value(u.AA)
    out = {"ew": {}, "band_depth": {}}
    results = {"input": spec}
    for mode in METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[mode] = remove_tellurics(spec, mode=mode, device="cpu")
    for name, line in SDSS_LINES.items():
        out["ew"][name] = {
            k: float(ew(np.where(s.mask, np.nan, s.flux.value) if s.mask is not None
                        else s.flux.value, wave, line, 1 + SDSS_Z)[0])
            for k, s in results.items()
        }
    for band, (core, neigh) in RED_BANDS.items():
        out["band_depth"][band] = {}
        for k, s in results.items():
            f = s.flux.value.astype(float)
            if s.mask is not None:
                f = np.where(s.mask, np.nan, f)
            if np.isfinite(f[(wave > core[0]) & (wave < core[1])]).sum() == 0:
                out["band_depth"][band][k] = None  # masked
                continue
            c = np.nanmedian(f[(wave > core[0]) & (wave < core[1])])
            n = np.nanmedian(np.concatenate([f[(wave > a) & (wave < b)] for a, b in neigh]))
            depth = 1 - c / n
            out["band_depth"][band][k] = float(depth) if np.isfinite(depth) else None
    meta = results["physical"].meta["deepclean"]
    out["physical_fit"] = {
        k: meta[k] for k in ("depths", "telluric_velocity", "resolving_power", "reduced_chi2")
    }
    out["physical_fit"]["masked"] = meta["masked"]
    print(json.dumps(out, indent=1), flush=True)
    return out


DESI_FILES = ("coadd-5-169-thru20210419.fits", "coadd-sv3-dark-26065.fits")
DESI_BANDS = dict(RED_BANDS, H2O_9400=((9300, 9500), [(9000, 9100), (9650, 9750)]))


def desi_part(folder):
    """The DESI coadd targets with data: residual band depths before and after."""
    from specutils import SpectrumList

    from specutils_deepclean.surveys import desi_targets

    out = {}
    for name in DESI_FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            targets, _ = desi_targets(SpectrumList.read(Path(folder) / name, format="DESI coadd"))
            for spec in targets:
                res = remove_tellurics(spec, mode="physical", device="cpu")
                wave = spec.spectral_axis.to_value(u.AA)
                row = {"band_depth": {}}
                for band, (core, neigh) in DESI_BANDS.items():
                    row["band_depth"][band] = {}
                    for k, s in (("input", spec), ("physical", res)):
                        f = np.where(s.mask, np.nan, s.flux.value) if s.mask is not None else s.flux.value
                        c = np.nanmedian(f[(wave > core[0]) & (wave < core[1])])
                        n = np.nanmedian(np.concatenate([f[(wave > a) & (wave < b)] for a, b in neigh]))
                        row["band_depth"][band][k] = float(1 - c / n)
                meta = res.meta["deepclean"]
                row["fit"] = {k: meta[k] for k in ("depths", "telluric_velocity", "resolving_power")}
                out[f"{name}:{spec.meta.get('target')}"] = row
    print(json.dumps(out, indent=1), flush=True)
    return out


def speed_part(threads=None):
    lib = load_library()
    stars = lib.select(split="val", good=True)
    wave = lib.wavelength.value
    truth, _ = prepare_truth(stars, wave, lib.medium)
    truth = np.nan_to_num(truth, nan=1.0)
    rows = np.resize(np.arange(len(stars)), 256)
    obs = Simulator(wave, lib.medium, fwhm=2.5).observe(truth[rows], 50, seed=9, airmass=1.5)
    spec = spectrum(obs.flux, obs.sigma, wave, lib.medium)
    if threads:
        import torch

        torch.set_num_threads(threads)
    times = {mode: [] for mode in METHODS}
    for mode in METHODS:
        remove_tellurics(spec, mode=mode, device="cpu")  # warm-up (model, bases)
    # Alternating repeats, fastest of each: the machine is shared, and a load spike
    # must not land on one mode only.
    cpu = {mode: [] for mode in METHODS}
    for _ in range(5):
        for mode in METHODS:
            start, start_cpu = time.perf_counter(), time.process_time()
            remove_tellurics(spec, mode=mode, device="cpu")
            times[mode].append(time.perf_counter() - start)
            cpu[mode].append(time.process_time() - start_cpu)
    out = {f"{mode}_spectra_per_s_batch256": 256 / min(t) for mode, t in times.items()}
    # per CPU-second (all threads): what a quiet machine's single thread would do,
    # far less moved by other jobs than the wall clock
    out.update({f"{mode}_spectra_per_cpu_s_batch256": 256 / min(t) for mode, t in cpu.items()})
    out["cost_ratio_physical_over_divide"] = min(times["physical"]) / min(times["divide"])
    if threads:
        out["threads"] = threads
    print(out, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--sdss", default="../shared/data/sdss/NGC3073_SDSS_DR18.fits")
    parser.add_argument("--desi", default="../shared/data/desi")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N stars of the split (development)")
    parser.add_argument("--miles-only", action="store_true",
                        help="only part 1-2 (MILES stars; development)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed-only", action="store_true",
                        help="only part 7 (timing; also under another checkout's PYTHONPATH)")
    parser.add_argument("--speed-threads", type=int, default=None,
                        help="torch threads for --speed only (default: --threads)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = {
        "command": "python benchmarks/benchmarks/bench_physical.py " + " ".join(argv or sys.argv[1:]),
        "split": args.split,
        "code": str(Path(remove_tellurics.__code__.co_filename).parent),  # the checkout timed
    }
    if not args.speed_only:
        result["miles"] = miles_part(args.split, args.seed, args.limit)
    if not (args.miles_only or args.speed_only):
        result["red_simulated"] = red_part(args.split, args.seed + 1)
        result["mdwarf_nad_min_transmission"] = mdwarf_part()
        print(result["mdwarf_nad_min_transmission"])
        result["sdss_ngc3073"] = sdss_part(args.sdss)
        result["desi"] = desi_part(args.desi)
    if args.speed or args.speed_only:
        result["speed"] = speed_part(args.speed_threads)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
