"""One timing of ``remove_tellurics`` (default mode), printed as JSON.

256 MILES ``val`` stars observed at S/N 50 (the telluric benchmark's simulator, stars
repeated as needed) in one Spectrum, ``karaoke-miles``: one warm-up call, then
``--repeats`` timed calls.  It imports only long-standing public names, so that
``bench_tellurics_speed.py --against DIR`` can run it under another checkout's code
(``PYTHONPATH=DIR``) and compare end to end::

    python benchmarks/benchmarks/time_remove_tellurics.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from specutils_deepclean.benchmarking.tellurics import as_spectrum
from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import load_model
from specutils_deepclean.manipulation import remove_tellurics
from specutils_deepclean.training.telluric_data import observe_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    library = load_library(None)
    stars = library.select(split="val", good=True)
    wave, medium = library.wavelength.value, library.medium
    survey = observe_split(stars, wave, medium, copies=1, seed=args.seed, snr=50)
    rows = np.resize(np.arange(len(survey.flux)), args.batch)
    spectrum = as_spectrum(survey.flux[rows], survey.sigma[rows], wave, medium)
    model = load_model("karaoke-miles")
    remove_tellurics(spectrum, model, device="cpu")
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        remove_tellurics(spectrum, model, device="cpu")
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"spectra_per_s": args.batch / float(np.median(seconds)), "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
