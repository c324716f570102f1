"""Fixed-seed tiny trainings of every trainer, to prove a refactor changes no weight.

Trains, on the shipped example stars (and noise drawn from a fixed generator), the
telluric VAE (with validation, and once more stopped after one epoch and resumed
from its checkpoint), the generator, the NoiseFlow, the CDAE, the KDE prior and a
whole tiny denoiser (`train_denoiser` on the example stars eight times over), each
for a few epochs, and saves every weight and history to one ``.npz``;
``--compare OLD.npz`` says whether every array is bit-identical::

    python benchmarks/studies/reference_training.py --out /tmp/train_after.npz \\
        --compare /tmp/train_before.npz
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np


def _first(*places):
    """The first ``module:name`` of ``places`` that imports (new layout, then old)."""
    for place in places:
        module, _, name = place.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {places} imports")


def _weights(prefix: str, model, out: dict) -> None:
    for key, value in model.state_dict().items():
        out[f"{prefix}/state/{key}"] = value.detach().cpu().numpy()
    for key, value in (getattr(model, "history", None) or {}).items():
        out[f"{prefix}/history/{key}"] = np.asarray(value, dtype=float)
    if getattr(model, "best_epoch", None) is not None:
        out[f"{prefix}/best_epoch"] = np.asarray(model.best_epoch)


def run(out: dict, folder: Path) -> None:
    import astropy.units as u
    import torch

    from specutils_deepclean.datasets import load_examples
    from specutils_deepclean.simulate import Simulator, prepare_truth

    library = load_examples()
    wave = library.wavelength.value
    truth, _ = prepare_truth(library, wave, library.medium)
    truth = np.tile(truth, (4, 1))
    rng = np.random.default_rng(7)
    noisy = truth * rng.uniform(0.97, 1.03, (len(truth), 1)) + rng.normal(0, 0.02, truth.shape)
    small = {"channels": 2, "bottleneck_length": 8, "hidden": 8, "block": 4}

    train_karaoke = _first("specutils_deepclean.training:train_karaoke")
    options = {"base_channels": 4, "bottleneck_length": 8}
    kwargs = dict(wavelength=wave * u.AA, medium=library.medium, batch_size=8, latent_dim=4,
                  progress=False, model_options=options, device="cpu")
    model = train_karaoke(noisy[:24], epochs=2, val=noisy[24:], **kwargs)
    _weights("karaoke", model, out)
    checkpoint = folder / "karaoke.asdf"
    train_karaoke(noisy[:24], epochs=1, val=noisy[24:], checkpoint=checkpoint, **kwargs)
    model = train_karaoke(noisy[:24], epochs=2, val=noisy[24:], checkpoint=checkpoint, **kwargs)
    _weights("karaoke_resumed", model, out)

    train_generator = _first(
        "specutils_deepclean.training.generator:train_generator",
        "specutils_deepclean.models.generator:fit_generator",
    )
    generator = train_generator(noisy[:24], latent_dim=3, val=(noisy[24:], None), epochs=3,
                                device="cpu", progress=False, noise_augment=0.02,
                                tilt_augment=0.05, **small)
    _weights("generator", generator, out)

    train_noiseflow = _first(
        "specutils_deepclean.training.noiseflow:train_noiseflow",
        "specutils_deepclean.models.noiseflow:fit_noiseflow",
    )
    eps = rng.normal(0, 0.05, truth.shape)
    sigma = np.full(truth.shape, 0.05)
    flow = train_noiseflow(eps[:24], sigma[:24], context=3, channels=4, hidden=[4], epochs=3,
                           device="cpu", val=(eps[24:], sigma[24:], None))
    _weights("noiseflow", flow, out)

    train_cdae = _first(
        "specutils_deepclean.training.cdae:train_cdae",
        "specutils_deepclean.models.cdae:fit_cdae",
    )
    sim = Simulator(wave, library.medium)
    obs = sim.observe(truth[24:], 10.0, seed=3)
    cdae = train_cdae(truth[:24], simulator=sim, latent_dim=3, epochs=2, gaps=(100,),
                      val=(obs.flux, obs.mask, obs.truth), device="cpu", **small)
    _weights("cdae", cdae, out)

    train_kde = _first(
        "specutils_deepclean.training.kde:train_kde", "specutils_deepclean.kde:fit_kde"
    )
    latents = rng.normal(size=(60, 3))
    labels = np.repeat(["A", "F", "G"], 20)
    prior = train_kde(latents, labels, bandwidth="cv", val_latents=latents[::3] + 0.1,
                      val_labels=labels[::3])
    _weights("kde", prior, out)

    train_denoiser = _first(
        "specutils_deepclean.training.denoiser:train_denoiser",
        "specutils_deepclean.denoiser_training:train_denoiser",
    )
    tiny = library.take(np.tile(np.arange(len(library)), 8))
    tiny.params = copy.deepcopy(tiny.params)
    tiny.flux = tiny.flux * rng.uniform(0.95, 1.05, size=(len(tiny), 1)).astype(np.float32)
    tiny.params["split"] = ["train"] * 48 + ["val"] * 16
    torch.set_num_threads(1)
    denoiser, summary = train_denoiser(tiny, latent_dim=3, generator_epochs=2, flow_epochs=1,
                                       flow_copies=1, val_count=8, progress=False)
    _weights("denoiser", denoiser, out)
    for key, value in denoiser.provenance.metrics.items():
        out[f"denoiser/metrics/{key}"] = np.asarray(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--compare", default=None, help="an earlier .npz to compare with")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        run(out, Path(tmp))
    np.savez(args.out, **out)
    print(f"{len(out)} arrays written to {args.out}")
    if args.compare is None:
        return 0
    old = np.load(args.compare)
    keys = set(old.files) | set(out)
    differ = [
        key
        for key in sorted(keys)
        if key not in old.files or key not in out or not np.array_equal(old[key], out[key])
    ]
    print(f"{len(keys)} arrays compared, {len(differ)} differ")
    for key in differ[:40]:
        print("  differs:", key)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
