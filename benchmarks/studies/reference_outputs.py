"""Fixed-seed outputs of the user functions, to prove a refactor changes no number.

The shipped example stars (:func:`~specutils_deepclean.datasets.load_examples`) are
observed through the simulator as the demo does (S/N 10, a 400-pixel gap in the
middle, tellurics at airmass 1.5, seed = row), then cleaned with
``remove_tellurics`` (``divide`` and ``reconstruct``), ``denoise`` (each star, and
all eight as one batch) and ``denoise`` of the telluric-corrected spectra.  With
``--benchmark N`` the denoising benchmark's code path also runs on the first N good
``val`` stars of the MILES library (``specutils-deepclean benchmark denoise --split
val --limit N``) and its per-spectrum errors are kept.  Everything goes into one
``.npz``; ``--compare OLD.npz`` then says whether every array is bit-identical::

    python benchmarks/studies/reference_outputs.py --out /tmp/before.npz --benchmark 12
    python benchmarks/studies/reference_outputs.py --out /tmp/after.npz --benchmark 12 \\
        --compare /tmp/before.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import astropy.units as u
import numpy as np


def _arrays(prefix: str, spectrum, out: dict) -> None:
    out[f"{prefix}/flux"] = np.asarray(spectrum.flux.value)
    if spectrum.uncertainty is not None:
        out[f"{prefix}/uncertainty"] = np.asarray(spectrum.uncertainty.array)
    if spectrum.mask is not None:
        out[f"{prefix}/mask"] = np.asarray(spectrum.mask)
    for key, value in spectrum.meta.get("deepclean", {}).items():
        try:
            value = np.asarray(value)
        except TypeError:  # a list of Quantities (radial_velocity, one per spectrum)
            value = u.Quantity(value).value
        if value.dtype.kind in "fiub":
            out[f"{prefix}/meta/{key}"] = value


def examples(out: dict) -> None:
    """The demo's observation of every example star, cleaned every way."""
    from specutils_deepclean import denoise, remove_tellurics
    from specutils_deepclean.datasets import load_examples
    from specutils_deepclean.simulate import Simulator, prepare_truth

    library = load_examples()
    grid = library.wavelength.value
    fwhm = 2.5 if library.fwhm is None else library.fwhm
    simulator = Simulator(grid, library.medium, fwhm=fwhm)
    observed = []
    for star in range(len(library)):
        truth, _ = prepare_truth(library.take([star]), grid, library.medium)
        obs = simulator.observe(truth, 10.0, seed=star, gap=(400, "middle"), airmass=1.5)
        spectrum = obs.to_spectrum()[0]
        observed.append(spectrum)
        _arrays(f"observed/{star}", spectrum, out)
        for mode in ("divide", "reconstruct"):
            cleaned = remove_tellurics(spectrum, mode=mode, device="cpu")
            _arrays(f"tellurics_{mode}/{star}", cleaned, out)
        corrected = remove_tellurics(spectrum, device="cpu")
        _arrays(f"denoise_corrected/{star}", denoise(corrected, device="cpu", seed=star), out)
        _arrays(f"denoise/{star}", denoise(spectrum, device="cpu"), out)
    from specutils import Spectrum

    batch = Spectrum(
        flux=np.stack([s.flux.value for s in observed]) * observed[0].flux.unit,
        spectral_axis=observed[0].spectral_axis,
        mask=np.stack([s.mask for s in observed]),
        meta=dict(observed[0].meta),
    )
    _arrays("denoise_batch", denoise(batch, device="cpu", n_starts=3, steps=10), out)
    _arrays("tellurics_batch", remove_tellurics(batch, device="cpu"), out)


def benchmark(out: dict, n: int) -> None:
    """The denoising benchmark's code path on the first ``n`` good val stars."""
    from specutils_deepclean.benchmarking.denoise import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "denoise_val.json"
        main(["--split", "val", "--limit", str(n), "--threads", "1", "--json", str(path)])
        result = json.loads(path.read_text())
    _flatten("benchmark", result, out)


# Keys of the benchmark JSON that change from run to run (timings, the command line).
_UNSTABLE = ("time", "elapsed", "provenance", "command")


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if "second" in key or "speed" in key or key in _UNSTABLE:
                continue
            _flatten(f"{prefix}/{key}", item, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten(f"{prefix}/{i}", item, out)
    else:
        array = np.asarray(value)
        if array.dtype.kind in "fiubU":
            out[prefix] = array


def compare(new: dict, old_path: Path) -> int:
    old = np.load(old_path)
    keys = set(old.files) | set(new)
    differ = [
        key
        for key in sorted(keys)
        if key not in old.files
        or key not in new
        or not np.array_equal(old[key], new[key], equal_nan=old[key].dtype.kind == "f")
    ]
    print(f"{len(keys)} arrays compared, {len(differ)} differ")
    for key in differ[:40]:
        print("  differs:", key)
    return 1 if differ else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--benchmark", type=int, default=0, help="val stars through the benchmark")
    parser.add_argument("--compare", default=None, help="an earlier .npz to compare with")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out: dict = {}
    examples(out)
    if args.benchmark:
        benchmark(out, args.benchmark)
    np.savez(args.out, **out)
    print(f"{len(out)} arrays written to {args.out}")
    return compare(out, Path(args.compare)) if args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
