"""The setup and the JSON file of the studies on simulated MILES ``val`` observations.

Shared by ``clip_val.py``, ``gap_library.py``, ``gap_library_range.py``,
``gap_mixture.py``, ``gap_nonnegative.py``, ``gap_runaway.py``,
``gap_runaway_drivers.py``, ``map_convergence.py`` and ``normalisation_level.py`` (the
options of all but the last two too): every good ``val`` star on a model's grid
(`~specutils_deepclean.simulate.prepare_truth`), the simulator on that grid, the
observations at each S/N of `~specutils_deepclean.simulate.SNR_LEVELS` (seed ``seed +
i`` for the i-th), with a wide gap at each place (`wide_gaps`) or with each gap of the
benchmark protocol (`protocol_gaps`), and the JSON file that starts with the command
that wrote it.  The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import load_model
from specutils_deepclean.simulate import (
    GAP_PLACES,
    GAP_WIDTHS,
    SNR_LEVELS,
    Observation,
    Simulator,
    gap_slice,
    prepare_truth,
)
from specutils_deepclean.spectra import median_normalise


def study_args(doc: str | None, argv, *, seed: int, threads: int) -> argparse.Namespace:
    """The options of a study (``--model``, ``--seed``, ``--threads``, ``--json``), parsed
    from ``argv``, with torch's threads set."""
    import torch

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="denoiser-miles")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def val_setup(model_name: str) -> tuple[object, np.ndarray, np.ndarray, Simulator]:
    """The model, the ``val`` truth and its valid pixels on its grid, and the simulator.

    Parameters
    ----------
    model_name : str
        A pretrained model's name or an ASDF file (`~specutils_deepclean.io.models.load_model`).

    Returns
    -------
    model : `~specutils_deepclean.models.base.DeepCleanModel`
    truth, valid : `~numpy.ndarray`
        Every good ``val`` star on the model's grid, median-normalised, and its valid
        pixels (`~specutils_deepclean.simulate.prepare_truth`).
    sim : `~specutils_deepclean.simulate.Simulator`
        The simulator on the model's grid and medium.
    """
    model = load_model(model_name)
    wave = model.wavelength.to_value("Angstrom")
    truth, valid = prepare_truth(
        load_library().select(split="val", good=True), wave, model.medium
    )
    return model, truth, valid, Simulator(wave, model.medium)


def gap_setup(model_name: str) -> tuple[object, np.ndarray, np.ndarray, Simulator]:
    """`val_setup` with the truth divided by its whole-grid median (the units of
    ``bench_gaps.py``'s MSE)."""
    model, truth, valid, sim = val_setup(model_name)
    _, whole = median_normalise(truth, ~valid)
    return model, truth / whole[:, None], valid, sim


def protocol_gaps(
    sim: Simulator, truth: np.ndarray, valid: np.ndarray, seed: int
) -> Iterator[tuple[str, Observation, np.ndarray]]:
    """``(key, observation, in_gap)`` of the truth at S/N 10 with each gap of the
    benchmark protocol (`~specutils_deepclean.simulate.GAP_WIDTHS` pixels and 40 % of
    the grid at each place; the same noise draw, seed ``seed``, for each), keyed as in
    ``bench_gaps.py``'s JSON (``"400_blue"``, ``"0.4_red"``)."""
    n_pix = truth.shape[1]
    for width in (*GAP_WIDTHS, 0.4):
        pixels = int(round(width * n_pix)) if width < 1 else width
        for place in GAP_PLACES:
            gap = (pixels, place)
            obs = sim.observe(np.where(valid, truth, np.nan), 10.0, seed=seed, gap=gap)
            in_gap = np.zeros(n_pix, bool)
            in_gap[gap_slice(pixels, place, n_pix)] = True
            yield f"{width:g}_{place}", obs, in_gap


def observations(
    sim: Simulator, truth: np.ndarray, valid: np.ndarray, seed: int
) -> Iterator[tuple[float, Observation]]:
    """``(snr, observation)`` of the truth (NaN where not valid) at each S/N level."""
    for i, snr in enumerate(SNR_LEVELS):
        yield snr, sim.observe(np.where(valid, truth, np.nan), snr, seed=seed + i)


def wide_gaps(
    sim: Simulator, truth: np.ndarray, valid: np.ndarray, seed: int, share: float = 0.4
) -> Iterator[tuple[str, Observation, np.ndarray]]:
    """``(place, observation, in_gap)`` of the truth at S/N 10 with ``share`` of the grid
    missing at each place of `~specutils_deepclean.simulate.GAP_PLACES` (the same
    noise draw, seed ``seed``, for each), as ``bench_gaps.py`` observes it."""
    n_pix = truth.shape[1]
    width = int(round(share * n_pix))
    for place in GAP_PLACES:
        obs = sim.observe(np.where(valid, truth, np.nan), 10.0, seed=seed, gap=(width, place))
        in_gap = np.zeros(n_pix, bool)
        in_gap[gap_slice(width, place, n_pix)] = True
        yield place, obs, in_gap


def write_result(path: str, script: str, argv, result: dict) -> None:
    """Write ``{"command": "python benchmarks/studies/<script> <argv>", **result}``."""
    command = f"python benchmarks/studies/{Path(script).name} " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    Path(path).write_text(json.dumps({"command": command, **result}, indent=2) + "\n")
