"""A batch's rows in blocks run concurrently on torch's CPU threads, one thread each.

The denoiser's MAP is many small torch operations, which two intra-op threads
share poorly; the same rows in two blocks run side by side in two Python threads,
each with one intra-op thread, go faster (`~specutils_deepclean.inference.denoise_arrays`
uses this; the *Performance* documentation page gives the measurement).

How torch's thread setting behaves (its OpenMP build, ``ATen/ParallelOpenMP.cpp``):
``torch.set_num_threads(n)`` sets the OpenMP thread count of the *calling* thread only
(OpenMP keeps it per thread) and stores ``n`` as the process-wide value that every
thread reads into its own count at its first parallel operation (or its first
``torch.get_num_threads()``), whenever that comes.  So a worker thread that sets one
thread for itself also changes what threads started later begin with.
`run_single_threaded` therefore reads that process-wide value first, has each worker
read it into its own count and then set one thread, and puts the process-wide value
back as soon as every worker has done so (as their work starts, so also when the work
fails); the calling thread's own setting is never touched.  One dispatch at a time
runs in a process: a call made while another thread's batch runs in blocks runs as one
block, with its own thread's setting, so several user threads (or threaded Dask
workers) never stack blocks on top of each other's threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["build_caches", "row_blocks", "run_single_threaded"]

#: Held while a batch runs in blocks (non-blocking: another call runs as one block).
_DISPATCH = threading.Lock()


def row_blocks(n_rows: int, device, min_rows: int) -> list[slice]:
    """The row blocks to run ``n_rows`` rows in: one per intra-op thread of the calling
    thread, each of at least ``min_rows`` rows; one block on a GPU or a single thread.

    Parameters
    ----------
    n_rows : int
        Rows of the batch.
    device : `torch.device`
        Where the model runs: only the CPU is split.
    min_rows : int
        Fewest rows in a block (>= 1).

    Returns
    -------
    list of slice
        Contiguous blocks covering ``range(n_rows)`` in order, sizes differing by at
        most one.
    """
    if min_rows < 1:
        raise ValueError(f"min_rows must be at least 1, got {min_rows}")
    n_blocks = 1
    if torch.device(device).type == "cpu":
        n_blocks = max(1, min(torch.get_num_threads(), n_rows // min_rows))
    edges = [n_rows * i // n_blocks for i in range(n_blocks + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def run_single_threaded(tasks: list[Callable[[], Any]]) -> list | None:
    """Run ``tasks`` concurrently, each in its own thread with one intra-op torch thread.

    Parameters
    ----------
    tasks : list of callable
        Functions of no argument.

    Returns
    -------
    list or None
        Their results, in order; None (nothing run) when another thread's tasks are
        running: the caller then runs its work as one block.

    Raises
    ------
    Exception
        The first failing task's exception, once every task has ended.

    Notes
    -----
    The calling thread's torch thread count is never changed; the process-wide value
    (what new threads start with) is put back once every task's thread has set its own
    count, as the tasks start.
    """
    if not _DISPATCH.acquire(blocking=False):
        return None
    try:
        default = _process_threads()
        ready = threading.Semaphore(0)

        def run(task: Callable[[], Any]) -> Any:
            try:
                # torch reads the process-wide value into a thread's own count at the
                # thread's first parallel operation: done now, before it is put back,
                # so that this thread keeps the one thread set here
                torch.get_num_threads()
                torch.set_num_threads(1)  # this thread's, and the process-wide value
            finally:
                ready.release()
            return task()

        with ThreadPoolExecutor(len(tasks), thread_name_prefix="deepclean-block") as pool:
            futures = [pool.submit(run, task) for task in tasks]
            for _ in tasks:
                ready.acquire()
            _in_fresh_thread(torch.set_num_threads, default)  # the process-wide value back
            return [future.result() for future in futures]
    finally:
        _DISPATCH.release()


def build_caches(model, n_pix: int, velocity_range: float | None) -> None:
    """Build the parts a denoiser's MAP makes on first use, before its blocks run: the
    blocks then only read them (two blocks building one part at once would build it twice).

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The model.
    n_pix : int
        Pixels of the batch (the linear terms' parts are per grid size).
    velocity_range : float or None
        The velocity search's range (km/s) when the velocities are fitted, else None.
    """
    from .level import library
    from .linear_terms import has_terms, model_term_parts

    with torch.no_grad():
        if velocity_range is not None:
            model._velocity_bank(float(velocity_range))
        if has_terms(model.extra):
            model_term_parts(model, n_pix, model._dtype, model.device)
        if "kde_points" in model.extra:  # also the generator's phase kernels
            library(model)


def _process_threads() -> int:
    """The thread count a thread started now begins with (torch's process-wide value)."""
    return _in_fresh_thread(torch.get_num_threads)


def _in_fresh_thread(function: Callable[..., Any], *args) -> Any:
    """``function(*args)`` in a new thread (so the calling thread's settings stay)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(function(*args)))
    thread.start()
    thread.join()
    return out[0]
