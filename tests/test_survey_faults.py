"""Faults during survey runs: a Dask worker killed mid-run, a whole run killed and rerun.

(An unwritable or full output folder is refused before any work: tests/test_files.py
and tests/test_parallel.py.)
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from astropy.io import fits

from specutils_deepclean.files import output_path, read_result
from specutils_deepclean.parallel import clean_files

from survey_files import write_survey

torch = pytest.importorskip("torch")

N_FILES = 16


def _results(folder):
    return sorted(folder.glob("*_detelluric.fits"))


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not get going")
        time.sleep(0.01)


def _check_complete(paths, out):
    """Exactly one readable result per input, and nothing else in the folder."""
    expected = sorted(output_path(p, out, "detelluric").name for p in paths)
    assert sorted(p.name for p in out.iterdir()) == expected
    for path in out.iterdir():
        assert read_result(path).flux.ndim == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_killed_dask_worker_loses_nothing(tmp_path):
    distributed = pytest.importorskip("distributed")
    paths = write_survey(tmp_path / "in", N_FILES)
    out = tmp_path / "out"
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    try:
        pids = client.run(os.getpid)
        outcome = {}

        def run():
            outcome["summary"] = clean_files(
                [str(p) for p in paths],
                out,
                "detelluric",
                batch_size=1,
                scheduler=cluster.scheduler_address,
            )

        thread = threading.Thread(target=run)
        thread.start()
        _wait_for(lambda: len(_results(out)) > 0)
        busy = [address for address, keys in client.processing().items() if keys]
        victim = busy[0] if busy else next(iter(pids))
        os.kill(pids[victim], signal.SIGKILL)
        written_at_kill = len(_results(out))
        thread.join(timeout=300)
        assert not thread.is_alive()
    finally:
        client.close()
        cluster.close()
    assert written_at_kill < N_FILES  # the worker died in the middle of the run
    summary = outcome["summary"]
    assert sorted(summary.done) == paths and not summary.failed
    assert len(summary.done) == N_FILES  # each input reported once
    _check_complete(paths, out)


def test_killed_run_is_completed_by_a_rerun(tmp_path):
    paths = write_survey(tmp_path / "in", N_FILES)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "specutils_deepclean.cli", "detelluric"]
    command += [str(p) for p in paths] + ["-o", str(out), "--batch-size", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: len(_results(out)) >= 2 or process.poll() is not None)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    before = {p.name for p in _results(out)}
    assert 2 <= len(before) < N_FILES  # killed in the middle of the run
    for name in before:  # what the killed run wrote is whole
        read_result(out / name)
    summary = clean_files([str(p) for p in paths], out, "detelluric")
    assert {output_path(p, out, "detelluric").name for p in summary.skipped} == before
    assert len(summary.done) == N_FILES - len(before) and not summary.failed
    _check_complete(paths, out)


def test_failed_write_is_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    paths = write_survey(tmp_path / "in", 3)
    out = tmp_path / "out"
    original = fits.HDUList.writeto

    def disk_full_for_star1(self, name, **kwargs):
        if isinstance(name, str | os.PathLike) and "star001" in str(name):
            with open(name, "wb") as handle:
                handle.write(b"SIMPLE  = half a file")
            raise OSError(28, "No space left on device")
        return original(self, name, **kwargs)

    monkeypatch.setattr(fits.HDUList, "writeto", disk_full_for_star1)
    summary = clean_files([str(p) for p in paths], out, "detelluric")
    assert summary.done == [paths[0], paths[2]] and list(summary.failed) == [paths[1]]
    assert "No space left on device" in summary.failed[paths[1]]
    assert sorted(p.name for p in out.iterdir()) == [
        "star000_detelluric.fits",
        "star002_detelluric.fits",
    ]
