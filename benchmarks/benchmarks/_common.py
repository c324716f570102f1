"""Options, star selection and JSON header shared by the OOD, velocity and exposure
benchmarks."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch


def star_parser(doc: str | None, *, seed: int) -> argparse.ArgumentParser:
    """Options of a benchmark on simulated observations of MILES stars of one split."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--library", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="denoiser-miles")
    parser.add_argument("--vmax", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    return parser


def select_stars(library, args: argparse.Namespace):
    """The good stars of ``args.split``, the first ``args.limit`` of them if set."""
    stars = library.select(split=args.split, good=True)
    if args.limit:
        stars = stars.take(np.arange(min(args.limit, len(stars))))
    return stars


def header(script: str, argv: list[str] | None, args: argparse.Namespace) -> dict:
    """The command line, the run's settings and the machine, for the JSON."""
    return {
        "command": f"python benchmarks/benchmarks/{script} "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "split": args.split,
        "vmax_kms": args.vmax,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def load_stars(args: argparse.Namespace):
    """Torch threads set; the model, its grid (Angstrom), the stars of ``args.split`` and
    their truth on the grid with its valid pixels (`select_stars`, ``prepare_truth``)."""
    from specutils_deepclean.datasets import load_library
    from specutils_deepclean.io.models import load_model
    from specutils_deepclean.simulate import prepare_truth

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    wave = model.wavelength.to_value("AA")
    stars = select_stars(load_library(args.library), args)
    truth, valid = prepare_truth(stars, wave, model.medium)
    return model, wave, stars, truth, valid


def interleaved(jobs: dict, repeats: int) -> dict:
    """Seconds of every job (name -> callable), run in turn ``repeats`` times after
    one warm-up round, so that other work on the machine slows all of them alike."""
    for job in jobs.values():
        job()
    seconds = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def observations(n: int, seed: int):
    """``n`` observations (flux, sigma, wavelength, medium) of the MILES val stars at
    S/N 50 (the telluric benchmark's simulator), repeated as needed."""
    from specutils_deepclean.datasets import load_library
    from specutils_deepclean.training.telluric_data import observe_split

    library = load_library(None)
    stars = library.select(split="val", good=True)
    wave, medium = library.wavelength.value, library.medium
    survey = observe_split(stars, wave, medium, copies=1, seed=seed, snr=50)
    rows = np.resize(np.arange(len(survey.flux)), n)
    return survey.flux[rows], survey.sigma[rows], wave, medium
