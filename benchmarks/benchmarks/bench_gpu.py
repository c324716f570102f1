"""A device (GPU) against the CPU, and spectra per second on that device.

One script for a machine with a GPU, for the speed issue's GPU targets (at MILES
size >= 20,000 telluric-corrected and >= 2,000 denoised spectra per second, a
HARPS-size spectrum through the telluric network in <= 2 ms).  On MILES ``val``
stars observed at S/N 50 (the telluric benchmark's simulator, `_common.observations`):

* ``agreement``: ``remove_tellurics`` (default mode) and ``denoise`` (default
  settings) on ``--n-check`` stars, on ``--device`` and on the CPU: the largest
  difference of the cleaned flux and of its uncertainty in units of the input's
  uncertainty (median and maximum over pixels), the largest difference of the
  transmission, the share of stars given the same MAP class and the same
  out-of-distribution flag, and the largest radial-velocity difference (km/s).
* ``throughput``: the public calls on the device, one Spectrum of ``batch`` rows
  per call (``batch_size=batch`` for ``remove_tellurics``), for every
  ``--telluric-batches`` and ``--denoise-batches``; median of ``--repeats`` calls
  after one warm-up call, the device synchronised before and after each call.
* ``harps``: the telluric network alone (``KaraokeVAE.from_grid`` at 327,680
  pixels, untrained: the timing is of its arithmetic) at batch 1 and 16,
  milliseconds per spectrum, in float32 and, with ``--amp``, under
  ``torch.autocast`` in bfloat16 (with the largest output difference to float32).

``--device cpu`` runs all of it on the CPU against itself: a check of the script
(the agreement is then exact), not a GPU measurement.

    python benchmarks/benchmarks/bench_gpu.py --amp --json benchmarks/results/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import astropy.units as u
import numpy as np
import torch

from specutils_deepclean.benchmarking.tellurics import as_spectrum
from specutils_deepclean.manipulation import denoise, remove_tellurics
from specutils_deepclean.models.karaoke import KaraokeVAE

from _common import observations
from bench_tellurics_speed import HARPS_PIXELS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call, repeats: int, device: torch.device) -> tuple[list, object]:
    """Seconds of ``repeats`` calls after one warm-up call (model load, kernels, caches),
    the device synchronised before and after each; the last call's result."""
    seconds, result = [], None
    for repeat in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        result = call()
        _sync(device)
        if repeat:
            seconds.append(time.perf_counter() - start)
    return seconds, result


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-distribution notes: not measured here
        return function(*args, **kwargs)


def _in_sigma(a, b, sigma) -> dict:
    ratio = np.abs(np.asarray(a) - np.asarray(b)) / sigma
    ratio = ratio[np.isfinite(ratio)]
    return {"median": float(np.median(ratio)), "max": float(np.max(ratio))}


def agreement(spectrum, sigma, device: torch.device) -> dict:
    """Differences between the results on ``device`` and on the CPU."""
    result = {}
    here = _quiet(remove_tellurics, spectrum, device=device)
    cpu = _quiet(remove_tellurics, spectrum, device="cpu")
    result["remove_tellurics"] = {
        "flux_in_input_sigma": _in_sigma(here.flux.value, cpu.flux.value, sigma),
        "uncertainty_in_input_sigma": _in_sigma(
            here.uncertainty.array, cpu.uncertainty.array, sigma
        ),
        "transmission_max_abs": float(
            np.nanmax(
                np.abs(
                    here.meta["deepclean"]["transmission"].flux.value
                    - cpu.meta["deepclean"]["transmission"].flux.value
                )
            )
        ),
        "mask_equal": bool(np.array_equal(here.mask, cpu.mask)),
    }
    here = _quiet(denoise, spectrum, device=device)
    cpu = _quiet(denoise, spectrum, device="cpu")
    a, b = here.meta["deepclean"], cpu.meta["deepclean"]
    velocity = [  # a list per star: a Quantity, None for a star that was skipped
        abs((v - w).to_value(u.km / u.s))
        for v, w in zip(a["radial_velocity"], b["radial_velocity"], strict=True)
        if v is not None and w is not None
    ]
    result["denoise"] = {
        "flux_in_input_sigma": _in_sigma(here.flux.value, cpu.flux.value, sigma),
        "uncertainty_in_input_sigma": _in_sigma(
            here.uncertainty.array, cpu.uncertainty.array, sigma
        ),
        "same_map_class": float(np.mean(np.asarray(a["map_class"]) == np.asarray(b["map_class"]))),
        "same_ood_flag": float(np.mean(np.asarray(a["ood_flag"]) == np.asarray(b["ood_flag"]))),
        "radial_velocity_max_abs_kms": float(np.max(velocity)),
    }
    return result


def throughput(function, flux, sigma, wave, medium, batches, repeats, device) -> list:
    """Spectra per second of ``function`` on ``device`` for every batch size."""
    rows = []
    for batch in batches:
        spectrum = as_spectrum(flux[:batch], sigma[:batch], wave, medium)
        kwargs = {"batch_size": batch} if function is remove_tellurics else {}
        seconds, _ = _timed(
            lambda spectrum=spectrum, kwargs=kwargs: _quiet(
                function, spectrum, device=device, **kwargs
            ),
            repeats,
            device,
        )
        rows.append(
            {
                "batch": batch,
                "seconds": [round(s, 5) for s in seconds],
                "spectra_per_second": batch / float(np.median(seconds)),
            }
        )
        print(function.__name__, rows[-1], flush=True)
    return rows


def harps(device: torch.device, repeats: int, amp: bool) -> list:
    """Milliseconds per HARPS-size spectrum through the telluric network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = KaraokeVAE.from_grid(np.linspace(3800.0, 6900.0, HARPS_PIXELS) * u.AA, medium="air")
    net = net.to(device)
    precisions = {"float32": nullcontext}
    if amp:
        precisions["bfloat16"] = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    rows = []
    for batch in (1, 16):
        flux = torch.ones(batch, net.n_pix, device=device)
        flux += 0.01 * torch.randn(flux.shape, generator=torch.Generator().manual_seed(1)).to(device)
        missing = torch.zeros(batch, net.n_pix, dtype=torch.bool, device=device)
        outputs = {}
        for name, context in precisions.items():

            def run(context=context, flux=flux, missing=missing):
                with torch.inference_mode(), context():
                    return net._decode_mean(flux, missing)

            seconds, out = _timed(run, repeats, device)
            outputs[name] = out.float()
            rows.append(
                {
                    "batch": batch,
                    "precision": name,
                    "ms_per_spectrum": 1000 * float(np.median(seconds)) / batch,
                }
            )
            if name != "float32":
                rows[-1]["max_abs_difference_to_float32"] = float(
                    (outputs[name] - outputs["float32"]).abs().max()
                )
            print("harps", rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-check", type=int, default=64, help="stars compared with the CPU")
    parser.add_argument("--telluric-batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--denoise-batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="also time the network in bfloat16")
    parser.add_argument("--no-harps", action="store_true", help="skip the HARPS-size timing")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CPU side)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if min(args.telluric_batches + args.denoise_batches + [args.n_check, args.repeats]) < 1:
        parser.error("batch sizes, --n-check and --repeats must be positive")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    n = max(args.telluric_batches + args.denoise_batches + [args.n_check])
    flux, sigma, wave, medium = observations(n, args.seed)
    result = {
        "command": "python benchmarks/benchmarks/bench_gpu.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "stars": "MILES val observed at S/N 50, repeated as needed",
    }
    check = as_spectrum(flux[: args.n_check], sigma[: args.n_check], wave, medium)
    result["agreement"] = agreement(check, sigma[: args.n_check], device)
    print("agreement", result["agreement"], flush=True)
    result["remove_tellurics"] = throughput(
        remove_tellurics, flux, sigma, wave, medium, args.telluric_batches, args.repeats, device
    )
    result["denoise"] = throughput(
        denoise, flux, sigma, wave, medium, args.denoise_batches, args.repeats, device
    )
    if not args.no_harps:
        result["harps"] = harps(device, args.repeats, args.amp)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
