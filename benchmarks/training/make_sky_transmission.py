"""Build the compact sky and transmission files shipped with the package, and measure them.

The observation simulator needs the Paranal night-sky spectrum and the ESO
atmospheric transmission.  The package ships compact copies of both, so that it
works on a machine without the data folder:

* ``specutils_deepclean/data/eso_transmission.fits``: the ESO LBLRTM transmission
  (Cerro Paranal, airmass 3.0, R = 60000, vacuum, 3000-11000 Angstrom) on its own
  log-uniform grid (every pixel kept: binning would break the airmass scaling
  ``T ** (x / 3)`` in the saturated lines), with the columns ``transmission``,
  ``mnstrans`` and ``plstrans`` (dry and wet H2O variants) stored as 16-bit integers
  with the standard FITS column scaling (``TSCALn`` = 1/65535: any FITS reader gets
  the transmission back, quantised to 1.5e-5, values clipped to 0..1) and the
  ``wavelength`` column as float32, as in the source;
* ``specutils_deepclean/data/paranal_sky.fits``: the observed sky spectrum with the
  source's constant padding below 3141 Angstrom removed, averaged over pairs of
  pixels (0.05 -> 0.10 Angstrom; the sky lines are 0.12 Angstrom FWHM, the simulator
  convolves them to the library resolution of 2.5 Angstrom); flux float32,
  wavelengths float64.

With ``--json`` it measures what the compaction changes: the simulator's sky and
transmission on the MILES grid (air, 2.5 Angstrom FWHM) and on a 3600-10000
Angstrom vacuum grid (0.8 Angstrom pixels, the range of the telluric work), at
airmass 1 to 3, and the inputs of the telluric benchmark (``observe_split`` at
S/N 50 on the MILES ``val`` split: flux, sigma, line transmission and telluric
mask), each from the full source files and from the compact copies.

Run from the repository root, with the data folder (``SPECUTILS_DEEPCLEAN_DATA`` or
``../shared/data``) holding the source files::

    python benchmarks/training/make_sky_transmission.py \\
        --json benchmarks/results/compact_sky_transmission.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
from astropy.io import fits

from specutils_deepclean import datasets, simulate
from specutils_deepclean.datasets import load_library, load_sky, load_transmission
from specutils_deepclean.simulate import Simulator
from specutils_deepclean.tellurics import split_transmission
from specutils_deepclean.training.telluric_data import observe_split

PACKAGE_DATA = Path(__file__).resolve().parents[2] / "specutils_deepclean" / "data"
TRANSMISSION_COLUMNS = ("transmission", "mnstrans", "plstrans")
LEVELS = 65535  # 16-bit quantisation of the transmission
SKY_BIN = 2  # source pixels averaged per shipped sky pixel
AIRMASSES = (1.0, 1.5, 2.0, 2.5, 3.0)

TRANSMISSION_ACK = (
    "ESO Sky Model (SkyCalc, Cerro Paranal Advanced Sky Model): cite Noll et al. 2012, "
    "A&A 543, A92 and Jones et al. 2013, A&A 560, A91; LBLRTM: Clough et al. 2005, "
    "JQSRT 91, 233; Moehler et al. 2014, A&A 568, A9. Distributed in the PyPI "
    "package splat 1.14 (MIT)."
)
SKY_ACK = (
    "Paranal night-sky spectrum from PypeIt: cite Prochaska et al. 2020, JOSS 5, 2308. "
    "Distributed in the PyPI package pypeit 2.0.1 (BSD-3-Clause)."
)


def _comments(header: fits.Header, text: str) -> None:
    """Add ``text`` to a header as COMMENT cards of at most 70 characters."""
    words, line = text.split(), ""
    for word in words:
        if line and len(line) + 1 + len(word) > 70:
            header["COMMENT"] = line
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        header["COMMENT"] = line


def compact_transmission(source: Path, output: Path) -> Path:
    """Write the 16-bit copy of the ESO transmission file ``source`` to ``output``."""
    with fits.open(source) as hdul:
        primary = hdul[0].header.copy()
        table = hdul["TRANSMISSION"].data
        wave = np.asarray(table["wavelength"], dtype=np.float32)
        counts = {
            name: np.round(np.clip(np.asarray(table[name], dtype=float), 0, 1) * LEVELS)
            for name in TRANSMISSION_COLUMNS
        }
    columns = [fits.Column("wavelength", format="E", unit="Angstrom", array=wave)]
    columns += [
        fits.Column(name, format="I", array=(value - 32768).astype(np.int16))
        for name, value in counts.items()
    ]
    header = fits.Header()
    for key in ("SOURCE", "SRCFILE", "SRCDATE", "MODEL", "SKYMODEL", "SITE", "AIRMASS",
                "RESOLVPW", "SAMPLING", "WAVEMED", "WAVEMIN", "WAVEMAX", "CROP"):
        if key in primary:
            header[key] = (primary[key], primary.comments[key])
    for key in (k for k in primary if k.startswith("REF")):
        header[key] = (primary[key], primary.comments[key])
    header["QUANT"] = (LEVELS, "transmission columns: integers 0..QUANT / QUANT")
    header["SCRIPT"] = ("benchmarks/training/make_sky_transmission.py", "made by")
    _comments(header, "Compact copy shipped with specutils-deepclean: every pixel of the "
              "source file (log-uniform, lambda/dlambda = 60000, vacuum); the columns "
              "transmission, mnstrans (drier) and plstrans (wetter) clipped to 0..1 and "
              "stored as 16-bit integers with TSCALn/TZEROn (step 1/65535).")
    _comments(header, "Acknowledge: " + TRANSMISSION_ACK)
    table_hdu = fits.BinTableHDU.from_columns(columns, name="TRANSMISSION")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_suffix(".unscaled.fits")
    fits.HDUList([fits.PrimaryHDU(header=header), table_hdu]).writeto(staging, overwrite=True)
    # The scaling is set on the file after writing, so the stored integers are kept
    # as they are (astropy rescales data it has loaded).
    for index, _ in enumerate(TRANSMISSION_COLUMNS, start=2):
        fits.setval(staging, f"TSCAL{index}", value=1.0 / LEVELS, ext=1, after=f"TFORM{index}")
        fits.setval(staging, f"TZERO{index}", value=32768.0 / LEVELS, ext=1,
                    after=f"TSCAL{index}")
    with fits.open(staging) as hdul:
        hdul.writeto(output, overwrite=True, checksum=True)
    staging.unlink()
    with fits.open(output) as hdul:
        for name, value in counts.items():
            back = np.asarray(hdul["TRANSMISSION"].data[name]) * LEVELS
            if np.max(np.abs(back - value)) > 1e-6:
                raise RuntimeError(f"{output}: column {name} does not read back")
    return output


def compact_sky(source: Path, output: Path) -> Path:
    """Write the padding-free, pairwise-averaged copy of the sky file ``source``."""
    full = load_sky(source)
    wave = full.wavelength.value
    n = wave.size // SKY_BIN * SKY_BIN
    flux = full.flux[:n].reshape(-1, SKY_BIN).mean(axis=1)
    wave = wave[:n].reshape(-1, SKY_BIN).mean(axis=1)
    primary = fits.PrimaryHDU(flux.astype(np.float32))
    header = primary.header
    header["EXTNAME"] = "FLUX"
    header["BUNIT"] = ("", "relative intensity (dimensionless)")
    header["SOURCE"] = ("pypeit 2.0.1 (PyPI)", "package that distributes the file")
    header["SRCFILE"] = ("pypeit/data/sky_spec/paranal_sky.fits", "source file")
    header["WAVEMED"] = ("vacuum", "wavelength medium")
    header["BINNED"] = (SKY_BIN, "source pixels averaged per pixel")
    header["SCRIPT"] = ("benchmarks/training/make_sky_transmission.py", "made by")
    _comments(header, "Observed Paranal night-sky emission spectrum, compact copy shipped "
              "with specutils-deepclean: the source's constant padding below 3141 "
              f"Angstrom removed, {SKY_BIN} source pixels (0.05 Angstrom) averaged per "
              "pixel; flux float32, wavelengths float64.")
    _comments(header, "Acknowledge: " + SKY_ACK)
    wave_hdu = fits.ImageHDU(wave, name="WAVELENGTH")
    wave_hdu.header["BUNIT"] = "Angstrom"
    output.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, wave_hdu]).writeto(output, overwrite=True, checksum=True)
    return output


# --------------------------------------------------------------------- measurement


def _grid_differences(grid, medium, full, compact) -> dict:
    """Sky and transmission of the simulator on one grid, full vs compact sources."""
    reference = Simulator(grid, medium, sky=full[0], transmission=full[1])
    shipped = Simulator(grid, medium, sky=compact[0], transmission=compact[1])
    out = {
        "grid": f"{grid[0]:.1f}-{grid[-1]:.1f} A, {grid.size} px, {medium}",
        "sky_max_abs": float(np.max(np.abs(shipped.sky - reference.sky))),
        "sky_median_abs": float(np.median(np.abs(shipped.sky - reference.sky))),
        "sky_max_relative": float(np.max(np.abs(shipped.sky / reference.sky - 1.0))),
        "sky_note": "the simulator's sky on the grid: median 0.1 (sky_level), star median 1",
        "transmission": {},
    }
    for airmass in AIRMASSES:
        t_ref, t_new = reference.transmission_at(airmass), shipped.transmission_at(airmass)
        lines_ref = split_transmission(t_ref, grid)[1]
        lines_new = split_transmission(t_new, grid)[1]
        out["transmission"][str(airmass)] = {
            "max_abs": float(np.max(np.abs(t_new - t_ref))),
            "telluric_mask_pixels_changed": int(np.sum((lines_ref < 0.99) != (lines_new < 0.99))),
        }
    return out


def _benchmark_inputs(full, compact, seed: int = 0) -> dict:
    """``observe_split`` on the MILES val split at S/N 50, full vs compact sources."""
    library = load_library()
    stars = library.select(split="val", good=True)
    wave, medium = library.wavelength.value, library.medium
    surveys = []
    for sky, transmission in (full, compact):
        with mock.patch.object(simulate, "load_sky", lambda sky=sky: sky), \
                mock.patch.object(simulate, "load_transmission", lambda t=transmission: t):
            surveys.append(observe_split(stars, wave, medium, copies=1, seed=seed, snr=50))
    ref, new = surveys
    ok = np.isfinite(ref.flux) & np.isfinite(new.flux)
    pull = np.abs(new.flux - ref.flux)[ok] / ref.sigma[ok]
    mask_ref, mask_new = ref.lines < 0.99, new.lines < 0.99
    return {
        "spectra": int(ref.flux.shape[0]),
        "split": "val",
        "snr": 50,
        "seed": seed,
        "flux_change_over_sigma_max": float(pull.max()),
        "flux_change_over_sigma_median": float(np.median(pull)),
        "sigma_relative_change_max": float(
            np.max(np.abs(new.sigma[ok] / ref.sigma[ok] - 1.0))
        ),
        "line_transmission_max_abs": float(np.max(np.abs(new.lines - ref.lines))),
        "telluric_mask_pixels": int(mask_ref.sum()),
        "telluric_mask_pixels_changed": int(np.sum(mask_ref != mask_new)),
    }


def measure(sources: tuple[Path, Path], outputs: tuple[Path, Path]) -> dict:
    """What the compaction changes in the simulator and the telluric benchmark inputs."""
    full = (load_sky(sources[0]), load_transmission(sources[1]))
    compact = (load_sky(outputs[0]), load_transmission(outputs[1]))
    miles = load_library()
    return {
        "files": {path.name: path.stat().st_size for path in outputs},
        "source_files": {path.name: path.stat().st_size for path in sources},
        "simulator_miles_grid": _grid_differences(
            miles.wavelength.value, miles.medium, full, compact
        ),
        "simulator_3600_10000_vacuum": _grid_differences(
            np.arange(3600.0, 10000.0, 0.8), "vacuum", full, compact
        ),
        "telluric_benchmark_inputs": _benchmark_inputs(full, compact),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = datasets.data_dir()
    parser.add_argument(
        "--sky", type=Path,
        default=None if root is None else root / "sky" / "paranal_sky.fits",
        help="source sky file (default: sky/paranal_sky.fits in the data folder)",
    )
    parser.add_argument(
        "--transmission", type=Path,
        default=None if root is None else root / "telluric" / "eso_transmission.fits",
        help="source transmission (default: telluric/eso_transmission.fits in the data folder)",
    )
    parser.add_argument("--output-dir", type=Path, default=PACKAGE_DATA)
    parser.add_argument("--json", type=Path, help="write the measurement here")
    args = parser.parse_args(argv)
    if args.sky is None or args.transmission is None:
        parser.error("no data folder found: pass --sky and --transmission")
    outputs = (
        compact_sky(args.sky, args.output_dir / "paranal_sky.fits"),
        compact_transmission(args.transmission, args.output_dir / "eso_transmission.fits"),
    )
    for path in outputs:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if args.json is not None:
        result = {"command": "python benchmarks/training/make_sky_transmission.py "
                  + " ".join(argv if argv is not None else sys.argv[1:])}
        result.update(measure((args.sky, args.transmission), outputs))
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
