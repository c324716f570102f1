"""Shared test fixtures."""

import pytest
from hypothesis import settings

from survey_files import write_survey

# "ci" (the default): the same 15 examples on every run, so CI is reproducible.
# "campaign" (``pytest --hypothesis-profile=campaign``): 200 fresh random examples.
settings.register_profile("ci", max_examples=15, derandomize=True, database=None)
settings.register_profile("campaign", max_examples=200, derandomize=False, database=None)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run torch on one thread: tiny tensors run fastest so, and CI has 2 cores."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded_torch():
    """Seed torch's global random state (restored afterwards) for freshly built models."""
    torch = pytest.importorskip("torch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        yield


@pytest.fixture
def saved_with_extra(tmp_path):
    """``save(model, key, value, name)``: ``model`` saved to ``tmp_path / name.asdf`` with
    ``extra[key] = value`` (without ``key`` for None), ``model`` left as it was; the path."""
    from specutils_deepclean.io.models import save_model

    def save(model, key, value, name):
        saved = model.extra.pop(key, None)
        if value is not None:
            model.extra[key] = value
        try:
            path = tmp_path / f"{name}.asdf"
            save_model(model, path)
            return path
        finally:
            model.extra.pop(key, None)
            if saved is not None:
                model.extra[key] = saved

    return save


@pytest.fixture
def survey(tmp_path):
    """Four readable spectrum files and one corrupted one, in ``tmp_path / "in"``."""
    paths = write_survey(tmp_path / "in", 4)
    bad = tmp_path / "in" / "star999.fits"
    bad.write_bytes(paths[0].read_bytes()[:5000])  # truncated FITS
    return paths, bad
