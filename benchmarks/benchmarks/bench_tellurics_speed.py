"""Speed of ``remove_tellurics`` and of the Stellar Karaoke network, CPU.

Four timings, each the median of ``--repeats`` runs, the variants of a comparison
run in turn (A B A B ...) in this one process so that a machine whose speed drifts
(other work on it) slows all of them alike:

* ``end_to_end``: ``remove_tellurics`` (default mode, ``divide``) with
  ``karaoke-miles`` on MILES ``val`` stars observed at S/N 50 (the telluric
  benchmark's simulator), one Spectrum of ``batch`` rows per call, for every
  ``--batch-sizes``; ``modules`` runs the same calls with the network through its
  1-D torch modules (``decode(encode(x))``, the code before the channels-last path).
* ``network``: ``KaraokeVAE.reconstruct`` alone on the same spectra, both paths, and
  the largest difference between their outputs.
* ``pixels``: untrained ``KaraokeVAE.from_grid`` networks for ``--pixels`` grid
  lengths (batch 1 and 16): milliseconds per spectrum, both paths.
* ``harps``: at 327,680 pixels (HARPS, batch 1), ``from_grid``'s network (with its
  patch embedding) against the paper's network shape (`PaperShape`: Sedaghat et al.
  2023, Section 3.2, as described in ``KaraokeVAE``'s docstring: 14 stride-2
  convolutions, 16 to 512 channels, kernels 7, 5, 5 then 3, down to 20 pixels, a
  128-dimensional latent code, mirrored transposed convolutions), that shape run by
  plain torch 1-D modules and by the same channels-last runner as ours.  The
  networks are untrained: the timing is of their arithmetic, and says nothing of
  the telluric quality of a patch-embedding network on HARPS spectra.

``--against DIR`` adds ``remove_tellurics`` end to end at batch 256 against another
checkout of the package (the code before a change), each timed by
``time_remove_tellurics.py`` in its own process under ``PYTHONPATH`` = this checkout
or ``DIR``, the two run in turn ``--repeats`` times.

``--quality BEFORE AFTER`` adds the largest change of Q_t and Q_s (medians and means,
``reconstruct`` and ``divide``, every S/N and the gaps run) between two runs of
``specutils-deepclean benchmark tellurics`` (the code before and after a change).

    python benchmarks/benchmarks/bench_tellurics_speed.py --threads 2 \\
        --json benchmarks/results/tellurics_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from torch import nn

from specutils_deepclean.benchmarking.tellurics import as_spectrum
from specutils_deepclean.io.models import load_model
from specutils_deepclean.manipulation import remove_tellurics
from specutils_deepclean.models.karaoke import KaraokeVAE
from specutils_deepclean.models.layers import down_block, run_channels_last, up_block

from _common import interleaved, observations

HARPS_PIXELS = 327_680


class PaperShape(nn.Module):
    """The paper's HARPS network shape (reference for the timing; untrained).

    Encoder: 14 stride-2 convolutions with leaky ReLU, channels
    16, 16, 16, 32, 32, 32, 64, 64, 64, 128, 128, 128, 256, 512, kernels 7, 5, 5 then 3
    (327,680 pixels down to 20); fully connected layers to the latent mean and
    log-variance (128) and back to 512 x 20; decoder: 14 transposed convolutions
    (kernel 4, stride 2) through the same channels in reverse, to one channel.
    The input has the flux and the mask channel, as ours.
    """

    channels = (16, 16, 16, 32, 32, 32, 64, 64, 64, 128, 128, 128, 256, 512)
    kernels = (7, 5, 5) + (3,) * 11

    def __init__(self, latent_dim: int = 128, bottleneck: int = 20):
        super().__init__()
        blocks, previous = [], 2
        for channels, kernel in zip(self.channels, self.kernels, strict=True):
            blocks.append(down_block(previous, channels, kernel))
            previous = channels
        self.encoder = nn.Sequential(*blocks)
        flat = previous * bottleneck
        self.bottleneck = bottleneck
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        outs = self.channels[-2::-1] + (1,)
        self.decoder = nn.Sequential(
            *(up_block(a, b) for a, b in zip(self.channels[::-1], outs, strict=True))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (batch, 1, length) of ``x`` (batch, 2, length) through the mean."""
        mu = self.to_mu(self.encoder(x).flatten(1))
        return self.decoder(self.from_latent(mu).view(x.shape[0], -1, self.bottleneck))

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same through `run_channels_last` (``x``: batch, 2, 1, length)."""
        mu = self.to_mu(run_channels_last(self.encoder, x).flatten(1))
        z = self.from_latent(mu).view(x.shape[0], -1, 1, self.bottleneck)
        return run_channels_last(self.decoder, z.contiguous(memory_format=torch.channels_last))


@contextmanager
def modules_path(model: KaraokeVAE):
    """Run ``model``'s inference through its 1-D torch modules (the earlier code)."""
    model._decode_mean = lambda flux, missing: model.decode(model.encode(flux, missing)[0])
    try:
        yield
    finally:
        del model._decode_mean


def medians(functions: dict, repeats: int) -> dict:
    """Median seconds of every function, run in turn (`_common.interleaved`)."""
    return {name: float(np.median(v)) for name, v in interleaved(functions, repeats).items()}


def end_to_end(model, flux, sigma, wave, medium, batch_sizes, repeats) -> list:
    rows = []
    for batch in batch_sizes:
        spec = as_spectrum(flux[:batch], sigma[:batch], wave, medium)
        calls = max(1, 64 // batch)

        def run(spec=spec, calls=calls, batch=batch):
            for _ in range(calls):
                remove_tellurics(spec, model, device="cpu", batch_size=batch)

        def run_modules(run=run):
            with modules_path(model):
                run()

        med = medians({"channels_last": run, "modules": run_modules}, repeats)
        rows.append(
            {
                "batch": batch,
                "calls_per_timing": calls,
                **{f"{k}_spectra_per_s": batch * calls / v for k, v in med.items()},
                "speed_up": med["modules"] / med["channels_last"],
            }
        )
        print("end_to_end", rows[-1], flush=True)
    return rows


def network(model, flux, batch_sizes, repeats) -> list:
    normalised = np.nan_to_num(flux / np.nanmedian(flux, axis=1, keepdims=True), nan=1.0)
    rows = []
    for batch in batch_sizes:
        part = normalised[:batch]
        calls = max(1, 64 // batch)

        def run(part=part, calls=calls, batch=batch):
            for _ in range(calls):
                model.reconstruct(part, batch_size=batch)

        def run_modules(run=run):
            with modules_path(model):
                run()

        med = medians({"channels_last": run, "modules": run_modules}, repeats)
        fast = model.reconstruct(part)
        with modules_path(model):
            slow = model.reconstruct(part)
        rows.append(
            {
                "batch": batch,
                **{f"{k}_spectra_per_s": batch * calls / v for k, v in med.items()},
                "speed_up": med["modules"] / med["channels_last"],
                "max_abs_difference": float(np.max(np.abs(fast - slow))),
            }
        )
        print("network", rows[-1], flush=True)
    return rows


def _timed_net(model: KaraokeVAE, batch: int):
    flux = torch.ones(batch, model.n_pix)
    missing = torch.zeros(batch, model.n_pix, dtype=torch.bool)

    def fast():
        with torch.inference_mode():
            model._decode_mean(flux, missing)

    def modules():
        with torch.inference_mode():
            model.decode(model.encode(flux, missing)[0])

    return fast, modules


def pixels(lengths, repeats) -> list:
    rows = []
    for n_pix in lengths:
        model = KaraokeVAE.from_grid(np.linspace(3800.0, 6900.0, n_pix) * u.AA, medium="air")
        for batch in (1, 16):
            fast, modules = _timed_net(model, batch)
            med = medians({"channels_last": fast, "modules": modules}, repeats)
            rows.append(
                {
                    "n_pix": n_pix,
                    "batch": batch,
                    "patch_stride": model.config["patch_stride"],
                    **{f"{k}_ms_per_spectrum": 1000 * v / batch for k, v in med.items()},
                }
            )
            print("pixels", rows[-1], flush=True)
    return rows


def harps(repeats) -> dict:
    ours = KaraokeVAE.from_grid(np.linspace(3800.0, 6900.0, HARPS_PIXELS) * u.AA, medium="air")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        paper = PaperShape().eval()
    x = torch.ones(1, 2, HARPS_PIXELS)
    x_last = x[:, :, None].contiguous(memory_format=torch.channels_last)
    fast, modules = _timed_net(ours, 1)

    def paper_modules():
        with torch.inference_mode():
            paper(x)

    def paper_channels_last():
        with torch.inference_mode():
            paper.forward_channels_last(x_last)

    med = medians(
        {
            "ours": fast,
            "ours_modules": modules,
            "paper_modules": paper_modules,
            "paper_channels_last": paper_channels_last,
        },
        repeats,
    )
    parameters = {
        "ours": sum(p.numel() for p in ours.parameters()),
        "paper": sum(p.numel() for p in paper.parameters()),
    }
    result = {
        "n_pix": HARPS_PIXELS,
        "batch": 1,
        "ours_config": {k: v for k, v in ours.config.items() if k != "n_pix"},
        "parameters": parameters,
        **{f"{k}_ms": 1000 * v for k, v in med.items()},
        "ratio_ours_to_paper_modules": med["ours"] / med["paper_modules"],
        "ratio_ours_to_paper_channels_last": med["ours"] / med["paper_channels_last"],
        "untrained": True,
    }
    print("harps", result, flush=True)
    return result


def quality(before: Path, after: Path) -> dict:
    """Largest |change| of Q_t / Q_s between two telluric benchmark JSONs."""
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    runs = {f"snr{snr}": (old["snr"][snr], new["snr"][snr]) for snr in old["snr"]}
    runs["gaps_snr50"] = (old["gaps_snr50"], new["gaps_snr50"])
    changes = {}
    for run, (a, b) in runs.items():
        for mode in ("reconstruct", "divide"):
            for key in ("q_t_median", "q_s_median", "q_t_mean", "q_s_mean"):
                changes[f"{run}/{mode}/{key}"] = abs(a[mode][key] - b[mode][key])
    worst = max(changes, key=changes.get)
    return {
        "before": str(before),
        "before_command": old["command"],
        "after": str(after),
        "after_command": new["command"],
        "max_abs_change": changes[worst],
        "max_abs_change_at": worst,
        "abs_change": changes,
    }


def against(other: Path, threads: int, repeats: int) -> dict:
    """``time_remove_tellurics.py`` under this checkout and ``other``, in turn."""
    timer = Path(__file__).with_name("time_remove_tellurics.py")
    paths = {"this": Path(__file__).resolve().parents[2], "against": other.resolve()}
    runs = {label: [] for label in paths}
    for _ in range(repeats):
        for label, path in paths.items():
            env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": str(threads)}
            command = [sys.executable, str(timer), "--threads", str(threads), "--repeats", "3"]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            runs[label].append(json.loads(done.stdout.splitlines()[-1])["spectra_per_s"])
            print("against", label, runs[label][-1], flush=True)
    commits = {
        label: subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        for label, path in paths.items()
    }
    ratios = [a / b for a, b in zip(runs["this"], runs["against"], strict=True)]
    return {
        "batch": 256,
        "commits": commits,
        "spectra_per_s": runs,
        "median_spectra_per_s": {k: float(np.median(v)) for k, v in runs.items()},
        "median_ratio_this_to_against": float(np.median(ratios)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument(
        "--pixels", type=int, nargs="+", default=[4300, 16_384, 65_536, 131_072, HARPS_PIXELS]
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quality", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. the machine's load)")
    parser.add_argument("--against", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--only-against", action="store_true", help="with --against: skip the other timings"
    )
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("karaoke-miles")
    flux, sigma, wave, medium = observations(max(args.batch_sizes), args.seed)
    result = {
        "command": "python benchmarks/benchmarks/bench_tellurics_speed.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "note": args.note,
        "model": "karaoke-miles",
        "n_pix": model.n_pix,
        "mode": "divide",
        "data": "MILES val stars, telluric benchmark simulator, S/N 50",
        "repeats": args.repeats,
    }
    if not args.only_against:
        result["end_to_end"] = end_to_end(
            model, flux, sigma, wave, medium, args.batch_sizes, args.repeats
        )
        result["network"] = network(model, flux, args.batch_sizes, args.repeats)
        result["pixels"] = pixels(args.pixels, args.repeats)
        result["harps"] = harps(args.repeats)
    if args.against is not None:
        result["against"] = against(args.against, args.threads, args.repeats)
    if args.quality:
        result["quality"] = quality(*args.quality)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
