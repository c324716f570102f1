"""Demo: simulate an observation of a shipped example star, clean it, plot it.

Run ``specutils-deepclean demo [--output DIR] [--seed N] [--snr S]`` (or
``python -m specutils_deepclean.demo``).  It takes a star of the example set
(:func:`~specutils_deepclean.datasets.load_examples`; by default row 3, the G dwarf),
simulates an observation (noise at the target S/N, a 400-pixel gap in the middle,
tellurics at airmass 1.5, a random stellar radial velocity), removes the tellurics
with the shipped model (`~specutils_deepclean.manipulation.remove_tellurics`), denoises
the corrected spectrum with the shipped denoiser (`~specutils_deepclean.denoise`, which
also fills the gap), and writes a PNG (truth, observation, corrected spectrum and the
estimated transmission), three FITS files readable by
``Spectrum.read(path, format="wcs1d-fits")`` (the observation, the telluric-corrected
and the denoised spectrum) and a quicklook PNG of the denoised result
(:func:`~specutils_deepclean.plotting.quicklook`).  It prints the paths.  Everything it
needs ships with the package.  The corrected and denoised FITS files carry the
provenance keywords of the command line's results (``DCOPER``, ``DCMODEL``,
``DCMODVER``, ``DCVERSIO``, ...; :data:`~specutils_deepclean.files.HEADER_KEYWORDS`),
the observation the simulation's (seed, S/N, airmass, radial velocity, star).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .datasets import load_examples
from .simulate import Simulator, prepare_truth

__all__ = ["main", "run"]

_GAP = (400, "middle")
_AIRMASS = 1.5


def run(
    output: Path, *, seed: int = 0, snr: float = 10.0, star: int = 3
) -> tuple[Path, ...]:
    """Simulate one observation of an example star, clean it with both models, write the files.

    Parameters
    ----------
    output : pathlib.Path
        Folder for ``demo_observation.png``, ``demo_observation.fits``,
        ``demo_detelluric.fits``, ``demo_denoised.fits`` and ``demo_denoised.png``
        (created).
    seed : int
        Simulation seed.
    snr : float
        Target median S/N.
    star : int
        Row of the example set (1 is an A star, 3 the G dwarf).

    Returns
    -------
    png, observation_fits, corrected_fits, denoised_fits, denoised_png : pathlib.Path
    """
    from .manipulation import denoise, remove_tellurics
    from .plotting import quicklook

    library = load_examples()
    if not 0 <= star < len(library):
        raise ValueError(f"star must be in 0..{len(library) - 1}, got {star}")
    grid = library.wavelength.value
    truth, _ = prepare_truth(library.take([star]), grid, library.medium)
    simulator = Simulator(grid, library.medium, fwhm=2.5 if library.fwhm is None else library.fwhm)
    obs = simulator.observe(truth, snr, seed=seed, gap=_GAP, airmass=_AIRMASS)
    output.mkdir(parents=True, exist_ok=True)
    png = output / "demo_observation.png"
    fits_path = output / "demo_observation.fits"
    cleaned_path = output / "demo_detelluric.fits"
    denoised_path, denoised_png = output / "demo_denoised.fits", output / "demo_denoised.png"
    observed = obs.to_spectrum()[0]
    cleaned = remove_tellurics(observed, device="cpu")
    denoised = denoise(cleaned, device="cpu")
    name = f"{library.star_ids[star]} ({library.labels[star]})"
    _plot(png, grid, obs, cleaned, name)
    quicklook(
        denoised, cleaned, title=f"{name}: tellurics removed, then denoised", path=denoised_png
    )
    simulation = {
        "SIMSEED": (obs.seed, "simulation seed"),
        "SNR": (float(obs.snr_target[0]), "target median S/N"),
        "AIRMASS": (float(obs.airmass[0]), "airmass of the simulated tellurics"),
        "SIMRV": (float(obs.stellar_rv[0]), "[km/s] simulated stellar radial velocity"),
        "STARID": (str(library.star_ids[star]), "MILES star (shipped example set)"),
    }
    _write_fits(fits_path, grid, observed, obs.medium, simulation)
    _write_fits(cleaned_path, grid, cleaned, obs.medium, simulation)
    _write_fits(denoised_path, grid, denoised, obs.medium, simulation)
    return png, fits_path, cleaned_path, denoised_path, denoised_png


def _write_fits(path: Path, grid: np.ndarray, spec, medium: str, extra: dict) -> None:
    """A 1-D spectrum as a ``wcs1d-fits`` file (linear grid, medium in CTYPE1), with the
    provenance keywords of the command line's results plus ``extra`` cards."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from specutils import Spectrum

    from .files import _header

    step = np.diff(grid)
    if not np.allclose(step, step[0], rtol=1e-6, atol=0):
        raise ValueError("the demo writes wcs1d-fits, which needs a linear grid")
    wcs = WCS(header={
        "CTYPE1": "AWAV" if medium == "air" else "WAVE", "CUNIT1": "Angstrom",
        "CRPIX1": 1.0, "CRVAL1": float(grid[0]), "CDELT1": float(step[0]),
    })
    out = Spectrum(flux=spec.flux, wcs=wcs, uncertainty=spec.uncertainty, mask=spec.mask)
    out.write(path, format="wcs1d-fits", overwrite=True)
    cards = _header(spec)
    cards["WAVEMED"] = (medium, "wavelength medium")
    cards.update(extra)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header.update(cards)


def _plot(path: Path, grid: np.ndarray, obs, cleaned, title: str):
    """The demo's figure (returned, and written to ``path``)."""
    import astropy.units as u
    from matplotlib.figure import Figure

    from .plotting import _flux_label, _spans, _wavelength_label

    fig = Figure(figsize=(10, 7.5), layout="constrained")
    ax, zoom = fig.subplots(2, 1, height_ratios=[1.2, 1])
    _spans(ax, grid, obs.mask[0], color="0.85", alpha=0.6, label="gap (no data)")
    ax.plot(grid, obs.flux[0], lw=0.5, color="0.6", label="simulated observation")
    ax.plot(grid, obs.truth[0] * obs.transmission[0], lw=0.8, color="C1",
            label=f"truth x tellurics (airmass {obs.airmass[0]:g})")
    ax.plot(grid, obs.truth[0], lw=0.8, color="C0", label="truth")
    ax.set_xlabel(_wavelength_label(u.AA, obs.medium))
    ax.set_ylabel(_flux_label(u.dimensionless_unscaled))
    ax.set_title(
        f"{title}: S/N {obs.snr_target[0]:g} (DER_SNR {obs.der_snr[0]:.1f}), "
        f"RV {obs.stellar_rv[0]:+.1f} km/s, seed {obs.seed}"
    )
    finite = obs.flux[0][np.isfinite(obs.flux[0])]
    ax.set_ylim(min(0.0, np.percentile(finite, 0.5)), np.percentile(finite, 99.5) * 1.1)
    ax.legend(loc="upper right", fontsize="small")
    near = (grid > 6840) & (grid < 7340)
    transmission = cleaned.meta["deepclean"]["transmission"].flux.value
    zoom.plot(grid[near], obs.flux[0][near], lw=0.6, color="0.6", label="observation")
    zoom.plot(grid[near], obs.truth[0][near], lw=0.8, color="C0", label="truth")
    zoom.plot(grid[near], cleaned.flux.value[near], lw=0.8, color="C3",
              label="remove_tellurics (divide)")
    zoom.plot(grid[near], transmission[near] * np.nanmedian(obs.truth[0][near]) * 0.6,
              lw=0.8, color="C2", label="estimated transmission (scaled)")
    zoom.set_xlabel(_wavelength_label(u.AA, obs.medium))
    zoom.set_ylabel(_flux_label(u.dimensionless_unscaled))
    zoom.set_title("telluric bands: O2 B band and H2O, corrected with the shipped model")
    # Beside the panel: inside, any corner hides a band (B at the left, H2O at the right).
    zoom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean demo",
        epilog="examples:\n  specutils-deepclean demo --output demo-output\n"
        "  specutils-deepclean demo --snr 30 --star 4 --output demo-k-dwarf\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Simulate an observation of an example star, remove its tellurics and denoise "
            "it with the shipped models; write PNG and FITS files."
        ),
    )
    parser.add_argument("--output", type=Path, default=Path.cwd(), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--snr", type=float, default=10.0, help="target median S/N")
    parser.add_argument("--star", type=int, default=3, help="row of the example set")
    args = parser.parse_args(argv)
    if not args.snr > 0:
        parser.error(f"--snr must be positive, got {args.snr}")
    try:
        paths = run(args.output, seed=args.seed, snr=args.snr, star=args.star)
    except FileNotFoundError as exc:  # a broken installation: a shipped file is missing
        print(f"specutils-deepclean demo: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
