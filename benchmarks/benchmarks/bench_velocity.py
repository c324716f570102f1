"""Radial velocity in the denoiser: shifted MILES stars, a classical baseline, NGC 3073.

1. Stars of one split (default ``test``) observed through the simulator at S/N 5, 10
   and 20, once at rest and once Doppler-shifted by a velocity drawn uniformly in
   +-``--vmax`` km/s (the same noise seed, so the same noise draws).  The shipped
   denoiser fits the velocity (``denoise_arrays`` with ``velocity=None``, range
   ``--velocity-range``, default ``denoise``'s); at rest it also runs with the velocity
   fixed at 0 (the behaviour
   before velocities were fitted).  Per S/N: the median MSE against the truth in
   the observed frame (pixels where both are defined), shifted and at rest; the
   median and 95th percentile of ``|v - v_true|``; the share of stars with
   ``|v - v_true| < radial_velocity_error`` (0.68 for a calibrated Gaussian error);
   the share flagged out of distribution.
2. The classical baseline: a weighted least-squares fit of the shipped
   ``miles-pca`` basis (mean and the first ``--pca-k`` components, fit on MILES
   train) shifted over a velocity grid (+-``--velocity-range``, 20 km/s steps; pixels the
   shifted basis does not reach at every velocity are left out), the chi^2
   minimum refined by a parabola; the pixels more than 5 sigma above that fit are
   then left out (cosmic-ray hits) and a fine grid (+-20 km/s, 4 km/s steps)
   around it is refined the same way.
3. The SDSS spectrum of NGC 3073 (``--sdss``), read with specutils'
   ``SDSS-III/IV spec`` reader (its float32 axis cast to float64): the fitted
   velocity against c z of its SPECOBJ HDU (c z = 1128 km/s), with the default range
   and with +-1000 and +-2000 km/s; Lick H delta_A, H beta
   and Mg b equivalent widths of the input and of the output.

    python benchmarks/benchmarks/bench_velocity.py --split test --threads 2 \
        --json benchmarks/results/velocity_test.json
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from astropy.io import fits
from specutils import Spectrum

from specutils_deepclean import denoise, metrics
from specutils_deepclean.inference import denoise_arrays
from specutils_deepclean.io.models import load_model
from specutils_deepclean.manipulation import DEFAULT_VELOCITY_RANGE
from specutils_deepclean.models.velocity import C_KMS, DopplerShift, parabola_peak
from specutils_deepclean.simulate import Simulator
from specutils_deepclean.spectra import median_normalise

from _common import header, load_stars, star_parser

SNRS = (5, 10, 20)
#: Lick indices (air, Angstrom): band, blue and red pseudo-continua (Worthey et al. 1994,
#: Worthey & Ottaviani 1997).
LICK = {
    "Hdelta_A": ((4083.500, 4122.250), (4041.600, 4079.750), (4128.500, 4161.000)),
    "Hbeta": ((4847.875, 4876.625), (4827.875, 4847.875), (4876.625, 4891.625)),
    "Mg_b": ((5160.125, 5192.625), (5142.625, 5161.375), (5191.375, 5206.375)),
}


def template_fit(flux, sigma, missing, basis, wave, vrange=1000.0, step=20.0):
    """Velocity (km/s) of each spectrum by the shifted-basis least-squares fit above."""
    n = flux.shape[0]
    y = torch.as_tensor(np.nan_to_num(flux))
    weight = torch.as_tensor(np.where(missing, 0.0, 1 / np.nan_to_num(sigma, nan=1.0) ** 2))
    basis = torch.as_tensor(basis)
    rows = torch.arange(n)
    edges = DopplerShift(wave, np.zeros((n, 1)), margin=vrange + 30).valid[:, 0]
    weight = torch.where(edges, weight, 0.0)

    def chi2(v):
        shifted = DopplerShift(wave, v[:, None]).apply(basis[None].expand(n, -1, -1), rows)[:, 0]
        a = (shifted * weight[:, None]) @ shifted.transpose(1, 2)
        b = shifted @ (weight * y)[..., None]
        eye = 1e-10 * torch.eye(a.shape[-1], dtype=a.dtype)
        coef = torch.linalg.solve(a + eye, b)
        model = (coef.transpose(1, 2) @ shifted)[:, 0]
        return ((y - model).square() * weight).sum(-1).numpy(), model

    def search(centre, offsets):
        values = np.stack([chi2(centre + o)[0] for o in offsets], axis=1)
        best = values.argmin(1)
        inner = np.clip(best, 1, offsets.size - 2)
        near = np.stack([values[rows.numpy(), inner + k] for k in (-1, 0, 1)], axis=1)
        local = offsets[inner][:, None] + np.array([-1, 0, 1]) * (offsets[1] - offsets[0])
        vertex, _ = parabola_peak(
            np.array([-1.0, 0.0, 1.0]) * (offsets[1] - offsets[0]), -near, offsets[1] - offsets[0]
        )
        return centre + np.where(best == inner, local[:, 1] + vertex, offsets[best])

    coarse = search(np.zeros(n), np.arange(-vrange, vrange + step / 2, step))
    _, model = chi2(coarse)
    hits = (y - model) * weight.sqrt() > 5
    weight = torch.where(hits, 0.0, weight)
    return search(coarse, np.arange(-20.0, 20.0 + 2.0, 4.0))


def equivalent_widths(spectrum: Spectrum, z: float, vacuum: bool) -> dict:
    """Lick equivalent widths (Angstrom) of a 1-D spectrum at redshift ``z``."""
    wave = spectrum.spectral_axis.to_value(u.AA).astype(np.float64)
    flux = np.asarray(spectrum.flux.value, dtype=np.float64)
    if spectrum.mask is not None:
        flux = np.where(spectrum.mask, np.nan, flux)
    width = np.gradient(wave)
    factor = (1 + z) * (1.00028 if vacuum else 1.0)  # air bands -> the axis' frame
    out = {}
    for name, (band, blue, red) in LICK.items():

        def inside(limits):
            return (wave >= limits[0] * factor) & (wave <= limits[1] * factor)

        level = [np.mean(flux[inside(side)]) for side in (blue, red)]
        centre = [np.mean(side) * factor for side in (blue, red)]
        sel = inside(band)
        if not np.all(np.isfinite(flux[sel])) or not np.all(np.isfinite(level)):
            out[name] = None
            continue
        continuum = np.interp(wave[sel], centre, level)
        out[name] = float(np.sum((1 - flux[sel] / continuum) * width[sel]))
    return out


def run_stars(args, model, sim, truth, valid, basis, wave) -> dict:
    rng = np.random.default_rng(args.seed)
    v_true = rng.uniform(-args.vmax, args.vmax, truth.shape[0])
    out = {}
    for i, snr in enumerate(SNRS):
        entry = {}
        runs = (("shifted", v_true, None), ("rest", 0.0, None), ("rest_v0", 0.0, 0.0))
        for name, rv, fixed in runs:
            obs = sim.observe(
                np.where(valid, truth, np.nan), snr, seed=args.seed + i, stellar_rv=rv
            )
            start = time.perf_counter()
            out_arrays = denoise_arrays(
                model,
                obs.flux,
                obs.sigma,
                obs.mask,
                velocity=fixed,
                velocity_range=args.velocity_range,
                generator=torch.Generator().manual_seed(0),
            )
            seconds = time.perf_counter() - start
            fit, pred = out_arrays.map, out_arrays.flux
            bad = ~np.isfinite(obs.truth) | ~np.isfinite(pred)
            mse = metrics.mse(np.where(bad, 0, pred), np.where(bad, 0, obs.truth), mask=bad)
            error = fit.velocity[:, 0] - np.broadcast_to(rv, v_true.shape)
            row = {
                "median_mse": float(np.nanmedian(mse)),
                "ood_flagged": float(np.mean(fit.ood_flag)),
                "seconds": round(seconds, 1),
            }
            if fixed is None:
                row.update(
                    median_abs_dv=float(np.median(np.abs(error))),
                    p95_abs_dv=float(np.percentile(np.abs(error), 95)),
                    max_abs_dv=float(np.max(np.abs(error))),
                    within_error=float(np.mean(np.abs(error) < fit.velocity_error[:, 0])),
                    median_error=float(np.nanmedian(fit.velocity_error[:, 0])),
                )
            if name == "shifted":
                start = time.perf_counter()
                flux, scale = median_normalise(obs.flux, obs.mask)
                sigma = obs.sigma / scale[:, None]
                found = template_fit(flux, sigma, obs.mask, basis, wave, vrange=args.velocity_range)
                baseline = np.abs(found - v_true)
                row["template_fit"] = {
                    "median_abs_dv": float(np.median(baseline)),
                    "p95_abs_dv": float(np.percentile(baseline, 95)),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                row["abs_dv"] = [round(float(x), 2) for x in np.abs(error)]
                row["abs_dv_template_fit"] = [round(float(x), 2) for x in baseline]
            entry[name] = row
        entry["mse_ratio_shifted_to_rest"] = (
            entry["shifted"]["median_mse"] / entry["rest"]["median_mse"]
        )
        entry["mse_ratio_shifted_to_rest_v0"] = (
            entry["shifted"]["median_mse"] / entry["rest_v0"]["median_mse"]
        )
        print(snr, json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)}),
              json.dumps({k: {a: b for a, b in v.items() if not isinstance(b, list)}
                          for k, v in entry.items() if isinstance(v, dict)}), flush=True)
        out[str(snr)] = entry
    return out


def run_sdss(path: str) -> dict:
    spec = Spectrum.read(path, format="SDSS-III/IV spec")
    spec = Spectrum(
        flux=spec.flux,
        spectral_axis=spec.spectral_axis.astype(np.float64),
        uncertainty=spec.uncertainty,
        mask=spec.mask,
        meta=spec.meta,
    )
    z = float(fits.getdata(path, "SPECOBJ")["Z"][0])
    out = {"cz_kms": z * C_KMS, "input_ew": equivalent_widths(spec, z, vacuum=True)}
    default = float(DEFAULT_VELOCITY_RANGE.to_value(u.km / u.s))
    out["default_range_kms"] = default
    for vrange in sorted({default, 1000.0, 2000.0}):
        key = f"range_{vrange:.0f}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = denoise(spec, medium="vacuum", velocity_range=vrange * u.km / u.s)
        info = result.meta["deepclean"]
        ew = equivalent_widths(result, z, vacuum=True)
        out[key] = {
            "velocity_range_kms": vrange,
            "radial_velocity_kms": float(info["radial_velocity"].to_value(u.km / u.s)),
            "radial_velocity_error_kms": float(
                info["radial_velocity_error"].to_value(u.km / u.s)
            ),
            "v_minus_cz_kms": float(info["radial_velocity"].to_value(u.km / u.s)) - z * C_KMS,
            "map_class": info["map_class"],
            "ood_flag": bool(info["ood_flag"]),
            "ood_score": info["ood_score"],
            "fit_chi2": info["fit_chi2"],
            "fit_structure": info["fit_structure"],
            "output_ew": ew,
            "ew_ratio": {
                k: (None if ew[k] is None else ew[k] / out["input_ew"][k]) for k in LICK
            },
            "warnings": [str(w.message) for w in caught if "flagged" in str(w.message)],
        }
        print(key, json.dumps(out[key]), flush=True)
    return out


def main(argv=None) -> int:
    parser = star_parser(__doc__, seed=2026)
    parser.add_argument(
        "--velocity-range",
        type=float,
        default=float(DEFAULT_VELOCITY_RANGE.to_value(u.km / u.s)),
        help="the denoiser's (and the template fit's) velocity range for the stars, km/s",
    )
    parser.add_argument("--pca-k", type=int, default=10)
    parser.add_argument(
        "--sdss", default="../shared/data/sdss/NGC3073_SDSS_DR18.fits", help="'' to skip"
    )
    args = parser.parse_args(argv)
    model, wave, stars, truth, valid = load_stars(args)
    pca = load_model("miles-pca")
    basis = np.vstack(
        [pca.mean.double().numpy()[None], pca.components.double().numpy()[: args.pca_k]]
    )
    result = {
        **header("bench_velocity.py", argv, args),
        "n_spectra": int(len(stars)),
        "velocity_range_kms": args.velocity_range,
        "pca_components": args.pca_k,
        "stars": run_stars(args, model, Simulator(wave, model.medium), truth, valid, basis, wave),
    }
    if args.sdss and Path(args.sdss).is_file():
        result["sdss_ngc3073"] = run_sdss(args.sdss)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
