"""Cleaning many spectra: batches of files or Spectrum objects, in one process or on Dask.

:func:`clean_files` runs `~specutils_deepclean.denoise` or
`~specutils_deepclean.remove_tellurics` over a list of files and writes one result
file per input (:func:`specutils_deepclean.files.write_result`); :func:`clean_spectra`
does the same for Spectrum objects in memory.  Both cut the inputs into batches; in a
batch, spectra that share one spectral axis (same values, units, flux unit and
uncertainty class) are stacked and cleaned in one model call.  A spectrum that fails
(unreadable file, no valid pixel, no overlap with the model...) is reported with its
reason and skipped; the others go on.

Parallel runs use ``dask.distributed`` (``pip install "dask[distributed]"``): with
``workers=N`` a `~distributed.LocalCluster` of N single-threaded worker processes, or
with ``scheduler="tcp://host:8786"`` any running Dask scheduler (so the same call runs
on dask-jobqueue or Kubernetes clusters; the workers must see the input and output
paths).  A model named by its shipped name or path is loaded once per worker process
and reused by every batch that worker runs; a loaded model object is sent to every
worker once.  On Linux, with the model on the CPU, the local cluster's workers are
forked from the calling process after it loaded the model, so they start with it.

Files are written under a temporary name and renamed when complete; before a run,
inputs whose result file exists are skipped (unless ``overwrite``), so rerunning an
interrupted command completes only what is missing.  If Dask loses a worker, its
batches are run again elsewhere; a result an earlier attempt already wrote is kept,
so every input ends with exactly one result file, and the temporary files of
interrupted writes are removed at the end of the run.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

from .files import (
    check_format,
    check_output_dir,
    expand_inputs,
    output_path,
    read_targets,
    remove_partial_writes,
    write_result,
)
from .spectra import _stated_medium

__all__ = ["TASKS", "RunSummary", "clean_files", "clean_spectra"]

#: task name -> suffix of its result files
TASKS = {"denoise": "denoised", "detelluric": "detelluric"}


@dataclass
class RunSummary:
    """What a :func:`clean_files` run did.

    Attributes
    ----------
    done : list of pathlib.Path
        Inputs whose results were written by this run (for a file of several
        targets: every target with data, at least one of them by this run).
    skipped : list of pathlib.Path
        Inputs whose results existed before the run.
    failed : dict
        Input -> reason, for inputs that could not be cleaned; for a target of a
        file of several targets the key is ``"<path> [target <name>]"``.
    not_converged : list
        Results done whose denoising MAP did not converge (for some spectrum of the
        file), labelled as in ``failed``; their results are written, with ``DCCONV = F``.
    warnings : list of str
        Warnings raised while cleaning (each naming its files).
    flagged : list
        Inputs (``pathlib.Path``; for a target of a file of several targets
        ``"<path> [target <name>]"``) with a spectrum flagged out of distribution by
        ``denoise`` (``meta["deepclean"]["ood_flag"]``): written, but not to be trusted.
    seconds : float
        Wall-clock time of the run.
    results : dict
        Result file written by this run -> (input file, target name or None).
    existing : dict
        Result file that existed before the run (its input skipped) -> (input file,
        target name or None).
    skipped_targets : dict
        ``"<path> [target <name>]"`` -> reason, for the fibres of a survey file that
        hold no target or no data (unassigned, sky, no valid pixel); not failures.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    not_converged: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    flagged: list = field(default_factory=list)
    seconds: float = 0.0
    results: dict = field(default_factory=dict)
    skipped_targets: dict = field(default_factory=dict)
    existing: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def __str__(self) -> str:
        n = len(self.results) or len(self.done)  # spectra cleaned (targets of survey files)
        rate = n / self.seconds if self.seconds > 0 else float("nan")
        unconverged = (
            f" ({len(self.not_converged)} did not converge)" if self.not_converged else ""
        )
        lines = [
            f"done {len(self.done)}{unconverged}, skipped {len(self.skipped)} (result exists), "
            f"failed {len(self.failed)} in {self.seconds:.1f} s ({rate:.2f} spectra/s)"
        ]
        if n != len(self.done) or self.skipped_targets:  # survey files of several targets
            lines.append(
                f"  {n} result files written; {len(self.skipped_targets)} fibres skipped "
                "(no target or no data)"
            )
        if self.flagged:
            lines.append(
                f"  out of distribution (ood_flag, results not to be trusted): "
                f"{len(self.flagged)}: " + ", ".join(str(path) for path in self.flagged)
            )
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed.items()]
        lines += [f"  skipped: {name}: {reason}" for name, reason in self.skipped_targets.items()]
        lines += [f"  warning: {text}" for text in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- one batch


def _function(task: str) -> Callable:
    from .manipulation import denoise, remove_tellurics

    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return denoise if task == "denoise" else remove_tellurics


def _check_options(task: str, options: dict) -> None:
    """Refuse bad cleaning options before any work (else every file would fail alike).

    A model named by a name or path is loaded here, on the CPU (about 0.5 s; a run in
    this process reuses it there): a file that is not a model, or a model of the
    other task, would fail every input alike.  A device is checked for its form
    only: Dask workers may have the GPU this process lacks.

    Raises
    ------
    ValueError
        For an option the cleaning function does not take, an unknown telluric
        mode, device or shipped model name, or a file that is not a model.
    FileNotFoundError
        For a model file that does not exist.
    TypeError
        For a model of the other task.
    """
    import torch

    from .manipulation import TELLURIC_MODES, _model, _parse_device

    function = _function(task)
    try:
        inspect.signature(function).bind(None, **options)
    except TypeError as exc:
        raise ValueError(f"invalid options for {task}: {exc}") from None
    if task == "detelluric" and options.get("mode", "divide") not in TELLURIC_MODES:
        raise ValueError(f"mode must be one of {TELLURIC_MODES}, got {options['mode']!r}")
    _parse_device(options.get("device"))
    if isinstance(options.get("model"), str | os.PathLike):
        _model(options["model"], *_model_kind(task), torch.device("cpu"))


def _model_kind(task: str) -> tuple[type, str]:
    """The model class ``task``'s function takes and its default model name."""
    from . import manipulation

    if task == "denoise":
        from .models.denoiser import Denoiser

        return Denoiser, manipulation.DEFAULT_DENOISER_MODEL
    from .models.karaoke import KaraokeVAE

    return KaraokeVAE, manipulation.DEFAULT_TELLURIC_MODEL


def _axis_key(spectrum: Spectrum) -> tuple:
    """Spectra with equal keys can be stacked into one 2-D Spectrum."""
    axis = spectrum.spectral_axis
    return (
        str(axis.unit),
        axis.value.tobytes(),
        str(spectrum.flux.unit),
        type(spectrum.uncertainty).__name__,
        spectrum.flux.ndim,
        _medium_key(spectrum),
    )


def _medium_key(spectrum: Spectrum) -> str:
    try:
        return str(_stated_medium(spectrum.meta))
    except ValueError:  # an unreadable statement: the cleaning call reports it
        return f"invalid-{id(spectrum)}"


def _stack(spectra: Sequence[Spectrum]) -> Spectrum:
    """1-D spectra on one spectral axis as one 2-D Spectrum (row i = spectrum i)."""
    first = spectra[0]
    uncertainty = None
    if first.uncertainty is not None:
        uncertainty = type(first.uncertainty)(
            np.stack([s.uncertainty.array for s in spectra]), unit=first.uncertainty.unit
        )
    masks = [
        np.zeros(s.shape, bool) if s.mask is None else np.asarray(s.mask, bool) for s in spectra
    ]
    return Spectrum(
        flux=np.stack([s.flux.value for s in spectra]) * first.flux.unit,
        spectral_axis=first.spectral_axis,
        uncertainty=uncertainty,
        mask=np.stack(masks),
        meta={key: value for key, value in first.meta.items() if key != "deepclean"},
    )


def _row_meta(info: dict, row: int, n_rows: int) -> dict:
    """Row ``row`` of a batch result's ``meta["deepclean"]``."""
    out = {}
    for key, value in info.items():
        if isinstance(value, Spectrum) and value.flux.ndim == 2:
            value = _row(value, row)
        elif isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[0] == n_rows:
            value = value[row]
        elif isinstance(value, list) and len(value) == n_rows:
            value = value[row]
        out[key] = value
    return out


def _row(spectrum: Spectrum, row: int, meta: dict | None = None) -> Spectrum:
    return Spectrum(
        flux=spectrum.flux[row],
        spectral_axis=spectrum.spectral_axis,
        uncertainty=None if spectrum.uncertainty is None else spectrum.uncertainty[row],
        mask=None if spectrum.mask is None else spectrum.mask[row],
        meta=meta,
    )


def _unstack(result: Spectrum, originals: Sequence[Spectrum]) -> list[Spectrum]:
    """One result per input: a copy of its input's meta with its row's entries merged
    into ``meta["deepclean"]``, as a call on that spectrum alone gives."""
    info = result.meta.get("deepclean", {})
    out = []
    for row, original in enumerate(originals):
        meta = copy.deepcopy(dict(original.meta))
        meta["deepclean"] = {
            **(meta.get("deepclean") or {}),
            **_row_meta(info, row, len(originals)),
        }
        out.append(_row(result, row, meta))
    return out


def _clean_group(function, spectra, options) -> tuple[list, list[str]]:
    """Clean spectra sharing one axis: one stacked call, else one by one.

    A stacked call that raises, or that returns a row fully masked (the cleaning
    functions mask a batch row they cannot clean), is redone one spectrum at a time,
    so that each bad input fails with its own reason and each warning names its file.

    Returns the results (a Spectrum or the error message per input) and the warnings.
    """
    caught: list[str] = []
    if len(spectra) > 1 and spectra[0].flux.ndim == 1:
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                result = function(_stack(spectra), **options)
            if result.mask is None or not np.asarray(result.mask).all(axis=-1).any():
                caught += [str(w.message) for w in record]
                return _unstack(result, spectra), caught
        except (ValueError, TypeError):
            pass  # one bad spectrum spoils the stacked call: find it below
    results = []
    for spectrum in spectra:
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                results.append(function(spectrum, **options))
            caught += [str(w.message) for w in record]
        except (ValueError, TypeError) as exc:
            results.append(f"{type(exc).__name__}: {exc}")
    return results, caught


def _clean_batch(function, spectra: list, options: dict) -> tuple[list, list[str]]:
    """Results (Spectrum or error text) for a list of spectra (or error texts), in order."""
    results: list = list(spectra)
    caught: list[str] = []
    groups: dict[tuple, list[int]] = {}
    for i, spectrum in enumerate(spectra):
        if isinstance(spectrum, Spectrum):
            groups.setdefault(_axis_key(spectrum), []).append(i)
    for members in groups.values():
        cleaned, messages = _clean_group(function, [spectra[i] for i in members], options)
        for i, value in zip(members, cleaned, strict=True):
            results[i] = value
        caught += messages
    return results, caught


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _read_file(path: str, out: str, folder: str, task: str, file_format, overwrite: bool):
    """Entries (target, output, Spectrum or error text) and report lines for one file."""
    try:
        targets, skipped = read_targets(path, file_format)
    except (OSError, ValueError) as exc:
        return [(None, out, f"{type(exc).__name__}: {exc}")], []
    report = [(path, "skipped", reason, name) for name, reason in skipped.items()]
    entries = []
    for name, spectrum in targets:
        target_out = out if name is None else str(output_path(path, folder, TASKS[task], name))
        if name is not None and os.path.exists(target_out) and not overwrite:
            report.append((path, "exists", target_out, name))
        else:
            entries.append((name, target_out, spectrum))
    return entries, report


def _file_batch(
    task: str,
    paths: list[str],
    outputs: list[str],
    options: dict,
    file_format: str | None,
    overwrite: bool,
    threads: int | None,
) -> list[tuple[str, str, str, str | None]]:
    """Read, clean and write a batch of files.

    Returns (path, status, message, target) per result: status ``done`` (message:
    the result file), ``exists`` (a target's result existed), ``failed`` (message:
    the reason), ``skipped`` (a fibre without target or data; message: the reason)
    or ``warning`` (path: the batch's file names); a ``done`` result whose denoising
    did not converge is also reported as ``not converged``.
    """
    _set_threads(threads)
    function = _function(task)
    report: list = []
    entries: list = []  # (path, target, output, Spectrum or error text)
    # Reading and writing warn too (units a file spells oddly, ...): recorded like the
    # cleaning's warnings, so the run reports each once instead of printing it per file.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for path, out in zip(paths, outputs, strict=True):
            found, lines = _read_file(
                path, out, str(Path(out).parent), task, file_format, overwrite
            )
            report += lines
            entries += [(path, *entry) for entry in found]
    caught = [str(w.message) for w in record]
    results, cleaning = _clean_batch(function, [entry[3] for entry in entries], options)
    caught += cleaning
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for (path, name, out, _), result in zip(entries, results, strict=True):
            if isinstance(result, str):
                report.append((path, "failed", result, name))
                continue
            if os.path.exists(out) and not overwrite:
                # Written by an earlier attempt of this batch (a lost worker): keep it.
                report.append((path, "done", out, name))
                continue
            try:
                write_result(result, out, overwrite=overwrite)
                report.append((path, "done", out, name))
            except OSError as exc:
                report.append((path, "failed", f"cannot write {out}: {exc}", name))
                continue
            if not _converged(result):
                report.append((path, "not converged", out, name))
            if np.any(result.meta.get("deepclean", {}).get("ood_flag") or False):
                report.append((path, "flagged", "", name))
    caught += [str(w.message) for w in record]
    names = ", ".join(Path(p).name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    report += [(names, "warning", message, None) for message in dict.fromkeys(caught)]
    return report


def _note_warning(summary: RunSummary, seen: dict, message: str, batch: str) -> None:
    """Add a batch's warning to the summary, once per message; repeats are counted."""
    if message not in seen:
        seen[message] = [len(summary.warnings), batch, 0]
        summary.warnings.append(f"{message} [batch: {batch}]")
        return
    entry = seen[message]
    entry[2] += 1
    summary.warnings[entry[0]] = f"{message} [batch: {entry[1]}; and {entry[2]} more]"


def _converged(result: Spectrum) -> bool:
    """False when `denoise` says a spectrum of ``result`` did not converge."""
    converged = result.meta.get("deepclean", {}).get("converged")
    rows = converged if isinstance(converged, list) else [converged]
    return not any(ok is False for ok in rows)


def _spectra_batch(task, spectra, options, threads):
    _set_threads(threads)
    return _clean_batch(_function(task), list(spectra), options)


# ---------------------------------------------------------------------------- runners


def _batches(items: Sequence, size: int) -> list:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _warm_parent(task: str, options: dict) -> bool:
    """Import the cleaning code and load the model ``options`` names here, for workers
    forked from this process; False (nothing done) when the model runs on a GPU, which
    a forked process cannot use."""
    from . import manipulation

    try:
        device = manipulation._device(options.get("device"))
    except ValueError:  # every batch reports it
        return False
    if device.type != "cpu":
        return False
    if task == "denoise":
        from . import inference  # noqa: F401  (imported by denoise on its first call)
    expected, default = _model_kind(task)
    model = options.get("model")
    if model is None or isinstance(model, str | os.PathLike):
        try:
            manipulation._model(model, expected, default, device)
        except (ValueError, TypeError):  # a bad model file: every batch reports it
            pass
    return True


def _client(workers: int | None, scheduler: str | None, task: str = "", options=None):
    """A Dask client (and the cluster it owns, or None); (None, None) for in-process runs.

    On Linux, with the model on the CPU, the local cluster's workers are forked from
    this process after it imported the cleaning code and loaded the model
    (:func:`_warm_parent`): they start with both, where spawned workers each import
    torch, astropy and specutils and load the model again (seconds each, which on a
    2-core machine cost a 1,000-file run what two workers saved).  A ``distributed.worker.multiprocessing-method`` other than Dask's
    default (``spawn``) set in the Dask configuration is kept.
    """
    if not workers and scheduler is None:
        return None, None
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(
            "parallel runs need dask.distributed: pip install 'dask[distributed]'"
        ) from exc
    if scheduler is not None:
        return Client(scheduler), None
    method = dask.config.get("distributed.worker.multiprocessing-method")
    linux = sys.platform.startswith("linux")
    if method == "spawn" and linux and task and _warm_parent(task, options or {}):
        method = "fork"
    with dask.config.set({"distributed.worker.multiprocessing-method": method}):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    return Client(cluster), cluster


def _run(client, function, jobs: list[tuple], on_result: Callable) -> None:
    """Run ``function(*job)`` for every job, in process or on Dask; feed results as they come."""
    if client is None:
        for job in jobs:
            on_result(job, function(*job))
        return
    from distributed import as_completed

    futures = {client.submit(function, *job, pure=False): job for job in jobs}
    for future in as_completed(futures):
        on_result(futures[future], future.result())


def _model_option(client, options: dict) -> dict:
    """Send a loaded model to the workers once (names and paths load on each worker)."""
    model = options.get("model")
    if client is None or model is None or isinstance(model, str | os.PathLike):
        return options
    return {**options, "model": client.scatter(model, broadcast=True)}


def _check_batching(batch_size: int, workers: int | None) -> None:
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if workers is not None and not (isinstance(workers, int) and workers >= 0):
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")


def clean_files(
    inputs: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    task: str = "detelluric",
    *,
    options: dict | None = None,
    file_format: str | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> RunSummary:
    """Clean spectrum files, writing one result file per input.

    Parameters
    ----------
    inputs : iterable of str or path-like
        Files, glob patterns or ``@list`` files
        (:func:`~specutils_deepclean.files.expand_inputs`).
    output_dir : str or path-like
        Folder of the results, ``<input stem>_<suffix>.fits`` with the suffix of
        :data:`TASKS`, or ``<input stem>_<target>_<suffix>.fits`` per target of a
        survey file holding several (a DESI file: the ``TARGETID``; see
        :func:`~specutils_deepclean.files.read_targets`) (created; checked writable
        before any work).
    task : {"detelluric", "denoise"}
        `~specutils_deepclean.remove_tellurics` or `~specutils_deepclean.denoise`.
    options : dict, optional
        Keyword arguments of the cleaning function (``model``, ``mode``,
        ``device``...).
    file_format : str, optional
        specutils format of the inputs (default: identified per file).
    batch_size : int
        Files per batch (per Dask task).
    overwrite : bool
        Redo inputs whose result exists (default: skip them).
    workers : int, optional
        Start a local Dask cluster of this many worker processes (0/None: run here).
    scheduler : str, optional
        Address of a running Dask scheduler (overrides ``workers``).
    threads : int, optional
        Torch threads per batch (default: 1 on Dask workers, torch's default here).
    progress : bool
        Show a progress bar (tqdm) with spectra per second.

    Returns
    -------
    RunSummary

    Raises
    ------
    ValueError
        If ``task``, ``file_format``, a setting or an option (unknown keyword,
        telluric mode, device or model name, a file that is not a model) is
        invalid: raised before any work is done.
    TypeError
        If the model is one of the other task (before any work).
    FileNotFoundError
        If a pattern or list file matches nothing, or the model file is missing.
    PermissionError, OSError
        If ``output_dir`` cannot be written or is (nearly) full: raised before any
        work is done.
    """
    _check_options(task, options or {})
    _check_batching(batch_size, workers)
    if file_format:
        check_format(file_format)
    start = time.perf_counter()
    paths = expand_inputs(inputs)
    folder = check_output_dir(output_dir)
    summary = RunSummary()
    todo = []
    for path in paths:
        out = output_path(path, folder, TASKS[task])
        if out.exists() and not overwrite:
            summary.skipped.append(path)
            summary.existing[out] = (path, None)
        else:
            todo.append((str(path), str(out)))
    client, cluster = _client(workers, scheduler, task, options)
    if threads is None and client is not None:
        threads = 1
    try:
        opts = _model_option(client, dict(options or {}))
        jobs = [
            (task, [p for p, _ in batch], [o for _, o in batch], opts, file_format, overwrite)
            + (threads,)
            for batch in _batches(todo, batch_size)
        ]
        bar = _progress(len(todo), progress)
        seen: dict = {}

        def collect(job, report):
            state: dict[str, set] = {path: set() for path in job[1]}
            for path, status, message, target in report:
                if status == "warning":
                    _note_warning(summary, seen, message, path)
                    continue
                state[path].add(status)
                label = Path(path) if target is None else f"{path} [target {target}]"
                if status == "done":
                    summary.results[Path(message)] = (Path(path), target)
                elif status == "failed":
                    summary.failed[label] = message
                elif status == "skipped":
                    summary.skipped_targets[label] = message
                elif status == "not converged":
                    summary.not_converged.append(label)
                elif status == "exists":
                    summary.existing[Path(message)] = (Path(path), target)
                elif status == "flagged":
                    summary.flagged.append(label)
            for path, statuses in state.items():
                if "failed" in statuses:
                    continue
                if "done" in statuses:
                    summary.done.append(Path(path))
                elif "exists" in statuses:
                    summary.skipped.append(Path(path))
                else:  # a survey file without any target with data
                    summary.done.append(Path(path))
            bar.update(len(job[1]))

        _run(client, _file_batch, jobs, collect)
        bar.close()
        # a worker killed while writing leaves a temporary file; its batch ran again
        remove_partial_writes([*(out for _, out in todo), *summary.results])
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    summary.seconds = time.perf_counter() - start
    return summary


def clean_spectra(
    spectra: Sequence[Spectrum],
    task: str = "detelluric",
    *,
    options: dict | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
) -> tuple[list, dict]:
    """Clean Spectrum objects in batches, in this process or on Dask.

    Parameters
    ----------
    spectra : sequence of `~specutils.Spectrum`
        1-D spectra (each its own star); any spectral axes.
    task, options, batch_size, workers, scheduler, threads
        As for :func:`clean_files`.

    Returns
    -------
    results : list
        The cleaned Spectrum per input, in order; None where it failed.
    failures : dict
        Input index -> reason, for those that failed.

    Raises
    ------
    ValueError, FileNotFoundError
        For a bad task, setting or option, as :func:`clean_files`, before any work.
    TypeError
        For an item that is not a Spectrum (None came back as a result without a
        failure), or a model of the other task, before any work.
    """
    _check_options(task, options or {})
    _check_batching(batch_size, workers)
    spectra = list(spectra)
    for i, item in enumerate(spectra):  # else a str came back as its own failure text
        if not isinstance(item, Spectrum):
            raise TypeError(f"spectra[{i}] is a {type(item).__name__}, not a specutils Spectrum")
    results: list = [None] * len(spectra)
    failures: dict[int, str] = {}
    client, cluster = _client(workers, scheduler, task, options)
    if threads is None and client is not None:
        threads = 1
    try:
        opts = _model_option(client, dict(options or {}))
        index = _batches(range(len(spectra)), batch_size)
        jobs = [(task, [spectra[i] for i in rows], opts, threads) for rows in index]
        order = {id(job): rows for job, rows in zip(jobs, index, strict=True)}

        def collect(job, output):
            cleaned, caught = output
            for i, value in zip(order[id(job)], cleaned, strict=True):
                if isinstance(value, str):
                    failures[i] = value
                else:
                    results[i] = value
            for message in dict.fromkeys(caught):
                warnings.warn(message, AstropyUserWarning, stacklevel=3)

        _run(client, _spectra_batch, jobs, collect)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return results, failures


class _LogProgress:
    """Progress for a log file (standard error not a terminal): a plain line at most
    every ``interval`` seconds, nothing at the end (the run's summary says it)."""

    def __init__(self, total: int, interval: float = 60.0, stream=None):
        self.total, self.interval = total, interval
        self.stream = sys.stderr if stream is None else stream
        self.count = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last >= self.interval and self.count < self.total:
            rate = self.count / (now - self.start)
            print(f"progress: {self.count}/{self.total} spectra ({rate:.2f} spectra/s)",
                  file=self.stream, flush=True)
            self.last = now

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    """A tqdm bar on a terminal; off a terminal, periodic plain lines (a bar there
    prints its last state twice, on the final update and on close)."""
    isatty = getattr(sys.stderr, "isatty", None)
    if enabled and not (isatty is not None and isatty()):
        return _LogProgress(total)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="spectrum", disable=not enabled, smoothing=0.1)
