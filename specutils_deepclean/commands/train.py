"""``specutils-deepclean train tellurics|denoiser``: train a model, write an ASDF file.

``tellurics`` trains a Stellar Karaoke model
(:func:`~specutils_deepclean.training.train_karaoke`) on observed spectra (files,
globs or ``@list`` files; no ground truth needed) or on the stars of one split of a
library file; ``denoiser`` trains the deep Bayesian denoiser on a library file in the
MILES layout (:func:`~specutils_deepclean.training.denoiser.train_denoiser`, which
needs the stars' classes and the train/val splits).  Both show a progress bar per
epoch and resume from ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

__all__ = ["main"]

EPILOG = """examples:
  specutils-deepclean train tellurics "night*/*.fits" --medium air --output my-tellurics.asdf \\
      --epochs 60 --checkpoint my-tellurics.ckpt.asdf
  specutils-deepclean train tellurics --library my_library.fits --output t.asdf --epochs 5
  specutils-deepclean train denoiser --library my_library.fits --output my-denoiser.asdf \\
      --checkpoint stages/
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specutils-deepclean train",
        description="Train a telluric model or a denoiser and write it as an ASDF model file "
        "(load it with load_model(path) or --model PATH).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=("tellurics", "denoiser"), help="what to train")
    parser.add_argument("inputs", nargs="*", help="tellurics: spectrum files, globs or @LIST")
    parser.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    parser.add_argument("--library", default=None, help="library file (MILES layout)")
    parser.add_argument("--split", default="train", help="tellurics: library split to train on")
    parser.add_argument("--format", default=None, help="specutils format of the inputs")
    parser.add_argument("--medium", choices=("air", "vacuum"), default=None,
                        help="medium of the wavelengths (default: from the files or library)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs (tellurics: 50; denoiser: generator epochs, 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="tellurics: batch size")
    parser.add_argument("--whitening", type=float, default=30.0,
                        help="tellurics: velocity whitening half-width, km/s")
    parser.add_argument("--latent", type=int, default=None,
                        help="latent size (tellurics 128, denoiser 16)")
    parser.add_argument("--autoencoder", action="store_true",
                        help="tellurics: deterministic autoencoder instead of the VAE")
    parser.add_argument("--no-telluric-layer", action="store_true",
                        help="tellurics: the paper's training, without the telluric layer")
    parser.add_argument("--fwhm", type=float, default=None,
                        help="tellurics: resolution FWHM (Angstrom) for the telluric bands "
                        "(default: the library's, else 2.5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="resume file (tellurics) or stage folder (denoiser)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _spectra(args, parser):
    """The training spectra, their medium (from --medium, the library or the files) and
    their resolution FWHM in Angstrom (from --fwhm, the library, else 2.5)."""
    from ..datasets import load_library
    from ..files import expand_inputs, read_spectrum

    if args.library is not None:
        if args.inputs:
            parser.error("give input files or --library, not both")
        library = load_library(args.library).select(split=args.split, good=True)
        if len(library) == 0:
            parser.error(f"the library has no good stars in split {args.split!r}")
        fwhm = args.fwhm
        if fwhm is None:
            fwhm = 2.5 if library.fwhm is None else library.fwhm.to_value("Angstrom")
        return library.to_spectrum(), args.medium or library.medium, fwhm
    if not args.inputs:
        parser.error("tellurics: give spectrum files (or --library)")
    spectra = [read_spectrum(path, args.format) for path in expand_inputs(args.inputs)]
    return spectra, args.medium or _stated_medium(spectra), args.fwhm or 2.5


def _stated_medium(spectra) -> str:
    """The one medium every file states, else a clear error."""
    from ..spectra import _stated_medium as stated_by

    stated = {stated_by(item.meta) for item in spectra}
    if len(stated) == 1 and None not in stated:
        return stated.pop()
    raise ValueError(
        "the medium (air or vacuum) of the wavelengths is not stated in every file "
        f"(found {sorted(map(str, stated))}); pass --medium"
    )


def _tellurics(args, parser):
    from ..training import train_karaoke

    spectra, medium, fwhm = _spectra(args, parser)
    lines = _reference_lines(spectra, medium, fwhm)
    model = train_karaoke(
        spectra,
        medium=medium,
        epochs=args.epochs or 50,
        batch_size=args.batch_size,
        whitening_kms=args.whitening,
        latent_dim=args.latent or 128,
        variational=not args.autoencoder,
        telluric_lines=None if args.no_telluric_layer else lines,
        seed=args.seed,
        device=None if args.device == "auto" else args.device,
        progress=not args.quiet,
        checkpoint=args.checkpoint,
    )
    if lines is not None:
        model.extra = {**model.extra, "telluric_lines": lines.astype("float32")}
    return model


def _reference_lines(spectra, medium, fwhm):
    """The telluric line transmission on the training grid, None (warned) without the data."""
    import astropy.units as u
    from specutils import Spectrum

    from ..spectra import ModelGrid
    from ..training.karaoke import reference_lines

    first = spectra if isinstance(spectra, Spectrum) else spectra[0]
    grid = ModelGrid(u.Quantity(first.spectral_axis), medium)
    try:
        return reference_lines(grid.wavelength.to_value("Angstrom"), medium, fwhm=fwhm)
    except FileNotFoundError as exc:
        warnings.warn(
            f"the telluric bands could not be computed ({exc}); the model is trained "
            "without the telluric layer and works with remove_tellurics(mode='reconstruct') "
            "only",
            stacklevel=2,
        )
        return None


def _denoiser(args, parser, argv: list[str]):
    from ..datasets import load_library
    from ..training.denoiser import train_denoiser

    if args.inputs:
        parser.error("denoiser: train from a library file (--library), which holds the "
                     "stars' classes and splits; input files are not used")
    model, summary = train_denoiser(
        load_library(args.library),
        latent_dim=args.latent or 16,
        generator_epochs=args.epochs or 600,
        seed=args.seed,
        name=args.output.stem,
        script="specutils-deepclean train " + " ".join(argv),
        checkpoint=args.checkpoint,
        progress=not args.quiet,
    )
    print(f"val scores: {summary['metrics']}")
    return model


def main(argv=None) -> int:
    """``specutils-deepclean train``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} exists (use --overwrite)")
    from ..io.models import save_model

    try:
        if args.kind == "tellurics":
            model = _tellurics(args, parser)
        else:
            model = _denoiser(args, parser, argv)
    except (OSError, ValueError, TypeError) as exc:
        print(f"specutils-deepclean train: error: {exc}", file=sys.stderr)
        return 1
    path = save_model(model, args.output, overwrite=args.overwrite)
    print(path)
    return 0
