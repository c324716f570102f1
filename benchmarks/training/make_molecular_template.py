"""Build the shipped per-molecule telluric template from the ESO LBLRTM transmission.

    python benchmarks/training/make_molecular_template.py \
        --output specutils_deepclean/data/telluric/molecular_template.fits

Reads the transmission with ``specutils_deepclean.datasets.load_transmission`` (it
needs the drier/wetter variants, the ESO file's ``mnstrans``/``plstrans`` columns),
separates water from the dry gases (``specutils_deepclean.telluric_template``) over
3500-10500 Angstrom and writes float32 optical depths at airmass 1.  Prints the water
scale and the file size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specutils_deepclean.datasets import load_transmission
from specutils_deepclean.telluric_template import build_molecular_template


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transmission", default=None, help="ESO transmission file")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    template = build_molecular_template(load_transmission(args.transmission))
    path = template.write(args.output, overwrite=True)
    print(f"water scale {template.meta['WSCALE']:.4f}; {path}: {Path(path).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
