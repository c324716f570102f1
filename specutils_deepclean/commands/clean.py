"""``specutils-deepclean denoise`` and ``specutils-deepclean detelluric``: clean files.

Both read spectra with specutils, clean them in batches
(:func:`specutils_deepclean.parallel.clean_files`) and write one FITS result per
input (:mod:`specutils_deepclean.files`), with a progress bar and a summary.
Exit codes: 0 all inputs done or skipped, 1 some inputs failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import astropy.constants as const
import astropy.units as u

__all__ = ["denoise_main", "detelluric_main"]

_EXAMPLES = {
    "denoise": """examples:
  specutils-deepclean denoise star.fits --output cleaned/
  specutils-deepclean denoise "survey/**/*.fits" --format tabular-fits --output out/ --workers 2
  specutils-deepclean denoise @files.txt --output out/ --model my-denoiser.asdf --plot
  specutils-deepclean denoise "desi/coadd-*.fits" --output out/
  specutils-deepclean denoise "rest/*.fits" --radial-velocity 0 --output out/
""",
    "detelluric": """examples:
  specutils-deepclean detelluric star.fits --output cleaned/
  specutils-deepclean detelluric "night1/*.fits" --mode reconstruct --output out/ --overwrite
  specutils-deepclean detelluric @files.txt --output out/ --scheduler tcp://head:8786
""",
}

_SURVEYS = (
    " Survey files are recognised without --format: SDSS spec/spec-lite, LAMOST LRS, "
    "DESI spectra-*/coadd-* (one result per target, <name>_<TARGETID>_<suffix>.fits, arms "
    "combined; unassigned, sky and empty fibres are reported as skipped)."
)

_DESCRIPTION = {
    "denoise": "Denoise spectra with the deep Bayesian model; one FITS result per input "
    "(<name>_denoised.fits), readable with Spectrum.read(path, format='tabular-fits')."
    + _SURVEYS,
    "detelluric": "Remove telluric absorption with the Stellar Karaoke model; one FITS result "
    "per input (<name>_detelluric.fits, the transmission in HDU 2), readable with "
    "Spectrum.read(path, format='tabular-fits')." + _SURVEYS,
}


def _parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"specutils-deepclean {task}",
        description=_DESCRIPTION[task],
        epilog=_EXAMPLES[task],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", help="files, glob patterns (quote them) or @LIST (one path per line)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--format", default=None,
        help="specutils format of the inputs (default: identified per file)",
    )
    parser.add_argument("--model", default=None, help="shipped model name or model file")
    if task == "detelluric":
        parser.add_argument(
            "--mode", choices=("divide", "reconstruct", "physical"), default="divide", help="output mode"
        )
    else:
        parser.add_argument("--steps", type=int, default=None, help="MAP optimisation steps")
        parser.add_argument(
            "--clip", type=float, default=None,
            help="outlier threshold in noise units (default 5; cosmic-ray hits)",
        )
        parser.add_argument("--no-clip", action="store_true", help="keep every pixel")
        parser.add_argument(
            "--radial-velocity", type=float, default=None, metavar="KMS",
            help="every spectrum's radial velocity, km/s (e.g. 0 for spectra at rest); "
            "default: fitted per spectrum",
        )
        parser.add_argument(
            "--velocity-range", type=float, default=None, metavar="KMS",
            help="search the radial velocity within +-KMS km/s (default 2000)",
        )
    parser.add_argument(
        "--medium", choices=("air", "vacuum"), default=None,
        help="medium of the wavelengths when the files do not state it (it overrides "
        "theirs, with a warning when they differ)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, help="files per batch")
    parser.add_argument("--overwrite", action="store_true", help="redo existing results")
    parser.add_argument("--workers", type=int, default=0, help="local Dask worker processes")
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    parser.add_argument("--plot", action="store_true", help="also write a PNG quicklook per result")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _options(task: str, args) -> dict:
    options = {"model": args.model, "device": args.device, "medium": args.medium}
    if task == "detelluric":
        options["mode"] = args.mode
    else:
        if args.steps is not None:
            options["steps"] = args.steps
        if args.no_clip:
            options["clip"] = None
        elif args.clip is not None:
            options["clip"] = args.clip
        kms = u.km / u.s
        if args.radial_velocity is not None:
            options["radial_velocity"] = args.radial_velocity * kms
        if args.velocity_range is not None:
            options["velocity_range"] = args.velocity_range * kms
    return options


def _run(task: str, argv) -> int:
    parser = _parser(task)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        parser.error(f"--workers must be at least 0, got {args.workers}")
    if task == "denoise" and args.steps is not None and args.steps < 0:
        parser.error(f"--steps must be at least 0, got {args.steps}")
    if task == "denoise" and args.clip is not None and (args.no_clip or not args.clip > 0):
        parser.error(f"--clip must be a positive number without --no-clip, got {args.clip}")
    if task == "denoise":
        c_kms = const.c.to_value(u.km / u.s)
        if args.velocity_range is not None and not 0 < args.velocity_range < 0.1 * c_kms:
            parser.error(
                f"--velocity-range must be positive and below 0.1 c, got {args.velocity_range}"
            )
        if args.radial_velocity is not None and not abs(args.radial_velocity) < c_kms:
            parser.error(
                "--radial-velocity must be finite and below the speed of light, got "
                f"{args.radial_velocity}"
            )
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            # Before any work: a run that writes the results and then cannot plot would
            # leave results a rerun skips, without their figures.
            print(
                f"specutils-deepclean {task}: error: --plot needs matplotlib "
                "(pip install 'specutils-deepclean[plot]'); nothing was written",
                file=sys.stderr,
            )
            return 2
    from ..parallel import clean_files

    try:
        summary = clean_files(
            args.inputs,
            args.output,
            task,
            options=_options(task, args),
            file_format=args.format,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=not args.quiet,
        )
    # before any work: folder, setting, model (TypeError: one of the other task), dask
    except (OSError, ValueError, TypeError, ImportError) as exc:
        print(f"specutils-deepclean {task}: error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        _plots(summary, args.output, task, args.format)
    print(summary)
    return 0 if summary.ok else 1


def _plots(summary, output: Path, task: str, file_format: str | None) -> None:
    """A quicklook per result written now, and per existing result that has none yet."""
    from ..files import read_targets
    from ..plotting import _quicklook_target

    missing = {
        result: source
        for result, source in summary.existing.items()
        if not result.with_suffix(".png").exists()
    }
    # Grouped by input file, each read once (a DESI file holds hundreds of targets).
    todo = sorted({**summary.results, **missing}.items(), key=lambda item: str(item[1][0]))
    read, found = None, {}
    for result, (path, target) in todo:
        if path != read:
            read, found = path, dict(read_targets(path, file_format)[0])
        _quicklook_target(found, path, result, result.with_suffix(".png"), target)


def denoise_main(argv=None) -> int:
    """``specutils-deepclean denoise``; returns the exit code."""
    return _run("denoise", argv)


def detelluric_main(argv=None) -> int:
    """``specutils-deepclean detelluric``; returns the exit code."""
    return _run("detelluric", argv)
