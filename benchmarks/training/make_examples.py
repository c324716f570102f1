"""Build the example set shipped with the package (deterministic).

Rule: from the MILES ``test`` split, good spectra only (``bad`` False, known Teff),
one star per label in ``LABELS``: the one whose Teff is closest to the median Teff
of that label's good test stars (ties: the smaller ``star_id``).  The result is
written in the library layout to
``specutils_deepclean/data/examples/miles_examples.fits``.

Run from the repository root::

    python benchmarks/training/make_examples.py [--library PATH] [--output PATH]
"""

import argparse
from pathlib import Path

import numpy as np

from specutils_deepclean.datasets import load_library

LABELS = ("B", "A", "F", "G", "K", "M", "G_giant", "K_giant")
OUTPUT = (
    Path(__file__).resolve().parents[2]
    / "specutils_deepclean" / "data" / "examples" / "miles_examples.fits"
)


def choose_rows(library) -> list[int]:
    """Row of the chosen star for every label in ``LABELS``."""
    teff = np.asarray(library.params["teff"], dtype=float)
    ok = (
        (library.splits == "test")
        & ~np.asarray(library.params["bad"], dtype=bool)
        & np.isfinite(teff)
    )
    rows = []
    for label in LABELS:
        candidates = np.flatnonzero(ok & (library.labels == label))
        if candidates.size == 0:
            raise ValueError(f"no good test star with label {label}")
        distance = np.abs(teff[candidates] - np.median(teff[candidates]))
        order = np.lexsort((library.star_ids[candidates], distance))
        rows.append(int(candidates[order[0]]))
    return rows


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", help="library file (default: MILES)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    library = load_library(args.library)
    examples = library.take(choose_rows(library))
    examples.meta["COMMENT"] = (
        "specutils-deepclean example set (benchmarks/training/make_examples.py)"
    )
    examples.write(args.output, overwrite=True)
    for row in examples.params:
        print(f"{row['star_id']}  {row['label']:8s} Teff={row['teff']:.0f} K  {row['name']}")
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")
    return args.output


if __name__ == "__main__":
    main()
