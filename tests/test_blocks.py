"""A batch's MAP in row blocks on torch's threads (models/blocks.py, inference.py): the
same results as one block, the caller's thread settings left as they were."""

import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_denoiser_model import FAST, N_PIX, draw, make_model  # noqa: E402

from specutils_deepclean import inference  # noqa: E402
from specutils_deepclean.inference import denoise_arrays  # noqa: E402
from specutils_deepclean.io.models import load_model  # noqa: E402
from specutils_deepclean.models import blocks  # noqa: E402
from specutils_deepclean.models.blocks import row_blocks, run_single_threaded  # noqa: E402


def fresh_thread_count():
    """What a thread started now begins with (torch's process-wide setting)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return out[0]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 8 rows (the tests' batch sizes assume it, whatever the shipped threshold)."""
    monkeypatch.setattr(inference, "MIN_BLOCK_ROWS", 8)


@pytest.fixture
def two_threads():
    """torch at 2 threads in this thread and process-wide (the autouse fixture restores)."""
    torch.set_num_threads(2)


@pytest.mark.parametrize(
    ("n_rows", "threads", "min_rows", "sizes"),
    [(16, 2, 8, [8, 8]), (15, 2, 8, [15]), (17, 2, 8, [8, 9]), (30, 3, 4, [10, 10, 10]),
     (7, 4, 2, [2, 2, 3]), (100, 1, 8, [100]), (0, 2, 8, [0])],
)
def test_row_blocks(n_rows, threads, min_rows, sizes):
    torch.set_num_threads(threads)
    blocks = row_blocks(n_rows, torch.device("cpu"), min_rows)
    assert [b.stop - b.start for b in blocks] == sizes
    assert blocks[0].start == 0 and blocks[-1].stop == n_rows
    assert all(a.stop == b.start for a, b in zip(blocks[:-1], blocks[1:], strict=True))


def test_row_blocks_gpu_and_bad_min_rows(two_threads):
    assert row_blocks(64, "cuda", 8) == [slice(0, 64)]
    with pytest.raises(ValueError, match="min_rows must be at least 1"):
        row_blocks(64, "cpu", 0)


def test_each_task_in_its_own_thread_with_one_thread(two_threads):
    """Every task runs in its own thread at one intra-op thread; the caller's own count
    and the count new threads start with are as before."""
    seen = []
    barrier = threading.Barrier(3)  # all three at once: three threads

    def task(i):
        barrier.wait(timeout=30)
        # once the process-wide value is back, this thread still has its one thread,
        # also after its first parallel operation (when torch reads that value)
        for _ in range(3000):
            if fresh_thread_count() == 2:
                break
            time.sleep(0.01)
        torch.ones((64, 64)) @ torch.ones((64, 64))
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return i * 10

    assert run_single_threaded([lambda i=i: task(i) for i in range(3)]) == [0, 10, 20]
    assert len({ident for ident, _ in seen}) == 3
    assert all(count == 1 for _, count in seen)
    assert torch.get_num_threads() == 2
    assert fresh_thread_count() == 2


def test_settings_restored_after_a_failure():
    """A failing task: its error reaches the caller, every task ran to its end, and the
    settings are back: the caller's own (2) and the process-wide one (3), which differ."""
    torch.set_num_threads(2)
    setter = threading.Thread(target=torch.set_num_threads, args=(3,))
    setter.start()
    setter.join()
    assert torch.get_num_threads() == 2 and fresh_thread_count() == 3
    ended = []

    def fail():
        raise ValueError("block failed")

    def slow():
        ended.append(sum(torch.ones(100).tolist()))

    with pytest.raises(ValueError, match="block failed"):
        run_single_threaded([fail, slow])
    assert ended == [100.0]
    assert torch.get_num_threads() == 2
    assert fresh_thread_count() == 3


def test_one_dispatch_at_a_time(two_threads):
    """A call made while another's blocks run returns None (run as one block there)."""
    inner = run_single_threaded([lambda: run_single_threaded([lambda: 1, lambda: 2]), lambda: 0])
    assert inner == [None, 0]
    assert run_single_threaded([lambda: 1, lambda: 2]) == [1, 2]


@pytest.fixture
def dispatches(monkeypatch):
    """The number of blocks of each batch run in blocks."""
    calls = []

    def counted(tasks):
        calls.append(len(tasks))
        return run_single_threaded(tasks)

    monkeypatch.setattr(blocks, "run_single_threaded", counted)
    return calls


def assert_same(parallel, serial):
    """Two MAPResults equal to float rounding (float32 model), field by field."""
    for name, value in vars(serial).items():
        other = getattr(parallel, name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            scale = np.nanmax(np.abs(value)) if np.isfinite(value).any() else 1.0
            np.testing.assert_allclose(other, value, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value, err_msg=name)
        else:
            assert other == value, name


def serial(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(inference, "MIN_BLOCK_ROWS", 10**9)
        return denoise_arrays(*args, **kwargs)


@pytest.mark.parametrize("with_sigma", [True, False])
def test_blocks_give_the_batch_result(monkeypatch, two_threads, dispatches, with_sigma):
    """Two exposures per star, a gap, per-star velocities: in blocks as in one batch."""
    model = make_model()
    _, _, _, flux, sigma = draw(model, 2 * inference.MIN_BLOCK_ROWS + 1, seed=5, n_exp=2)
    missing = np.zeros(flux.shape, bool)
    missing[3, 0, 10:30] = True
    velocity = np.linspace(-3.0, 3.0, len(flux))
    sigma = sigma if with_sigma else None
    options = {**FAST, "velocity": velocity}
    parallel = denoise_arrays(model, flux, sigma, missing, **options)
    assert dispatches == [2]
    assert_same(parallel.map, serial(monkeypatch, model, flux, sigma, missing, **options).map)
    assert parallel.map.flux.shape == (len(flux), N_PIX)


def test_shipped_model_velocity_fitted(monkeypatch, two_threads, dispatches):
    """The shipped model, velocities fitted (its caches built before the blocks run)."""
    model = load_model("denoiser-miles")
    rng = np.random.default_rng(7)
    with torch.no_grad():
        modes = model.prior.starts(1)[:, 0]
        z = modes[torch.arange(2 * inference.MIN_BLOCK_ROWS) % len(modes)]
        signal = model.generator.generate(z).double().numpy()
    sigma = np.full(signal.shape, 0.05)
    flux = signal + sigma * rng.normal(size=signal.shape)
    options = {"steps": 20, "velocity": None, "velocity_range": 500.0}
    parallel = denoise_arrays(model, flux, sigma, **options)
    assert dispatches == [2]
    assert_same(parallel.map, serial(monkeypatch, model, flux, sigma, **options).map)


def test_random_starts_run_as_one_block(two_threads, dispatches):
    """Random starts are drawn for the whole batch from one generator: not split."""
    model = make_model()
    _, _, _, flux, sigma = draw(model, 2 * inference.MIN_BLOCK_ROWS, seed=8)
    options = {**FAST, "random_starts": 1, "generator": torch.Generator().manual_seed(1)}
    denoise_arrays(model, flux[:, 0], sigma[:, 0], **options)
    assert dispatches == []


def test_a_refused_row_is_named_in_the_batch(two_threads, dispatches):
    """A block refusing a row: the error names the row's index in the whole batch."""
    model = make_model()
    _, _, _, flux, sigma = draw(model, 2 * inference.MIN_BLOCK_ROWS, seed=6)
    flux[12] = np.nan
    with pytest.raises(ValueError, match="spectrum 12 has no valid pixel"):
        denoise_arrays(model, flux[:, 0], sigma[:, 0], scale=np.ones(len(flux)), **FAST)
    assert dispatches == [2]
    assert torch.get_num_threads() == 2 and fresh_thread_count() == 2
