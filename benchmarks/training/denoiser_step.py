"""Run one fitting step of the denoiser recipe on a model file and save it.

Shared by ``calibrate_denoiser.py`` and ``fit_residual_basis.py``: the command line
(``--model``, ``--output``, ``--library``, ``--seed``, ``--threads``, ``--json``),
the step on the loaded model, its metrics merged into the file's provenance with the
command logged in its notes, and the step's summary (plus the command) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from specutils_deepclean.datasets import load_library
from specutils_deepclean.io.models import load_model, save_model

SHIPPED = Path(__file__).resolve().parents[2] / "specutils_deepclean/pretrained/denoiser-miles.asdf"


def run_step(
    argv,
    *,
    doc: str,
    script: str,
    step: Callable,
    metrics: Callable[[dict], dict],
    note: str,
    seed: int,
) -> int:
    """Parse ``argv``, run ``step(model, library, seed=...)``, save; returns the exit code.

    ``metrics(summary)`` gives the provenance metrics the step sets; ``note`` starts
    the line logged in the notes (``"<note>: python benchmarks/training/<script> ..."``).
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHIPPED, help="model file")
    parser.add_argument("--output", type=Path, default=None, help="default: --model, replaced")
    parser.add_argument("--library", default=None)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    summary = step(model, load_library(args.library), seed=args.seed)
    command = f"python benchmarks/training/{script} " + " ".join(argv or sys.argv[1:])
    provenance = model.provenance
    model.provenance = dataclasses.replace(
        provenance,
        metrics={**provenance.metrics, **metrics(summary)},
        notes=f"{provenance.notes}\n{note}: {command}".strip(),
    )
    save_model(model, args.output or args.model, overwrite=True)
    summary["command"] = command
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
