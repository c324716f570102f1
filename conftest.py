"""Repository-level pytest configuration: test header, the --device option, data paths."""

import os
from pathlib import Path

import pytest

try:
    from pytest_astropy_header.display import PYTEST_HEADER_MODULES, TESTED_VERSIONS
except ImportError:  # pragma: no cover - the [test] extra brings it
    PYTEST_HEADER_MODULES, TESTED_VERSIONS = {}, {}


def pytest_configure(config):
    config.option.astropy_header = True
    for name in ("Astropy", "Matplotlib", "Pandas", "h5py", "Scipy"):
        PYTEST_HEADER_MODULES.pop(name, None)
    PYTEST_HEADER_MODULES.update(
        {
            "astropy": "astropy",
            "specutils": "specutils",
            "asdf": "asdf",
            "scipy": "scipy",
            "torch": "torch",
        }
    )
    try:
        from specutils_deepclean import __version__
    except ImportError:  # pragma: no cover
        __version__ = "unknown"
    TESTED_VERSIONS["specutils-deepclean"] = __version__
    # Tests run from the repository root; the shared real data lies beside it.
    if "SPECUTILS_DEEPCLEAN_DATA" not in os.environ:
        shared = Path(__file__).resolve().parent.parent / "shared" / "data"
        if shared.is_dir():
            os.environ["SPECUTILS_DEEPCLEAN_DATA"] = str(shared)


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device the model tests run on (cpu, cuda, cuda:1, ...)",
    )


@pytest.fixture
def device(request):
    """The torch device chosen with ``--device`` (default ``cpu``)."""
    name = request.config.getoption("--device")
    if name.startswith("cuda"):
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("CUDA is not available")
    return name


def pytest_collection_modifyitems(config, items):
    skip_cuda = None
    for item in items:
        if "cuda" in item.keywords:
            if skip_cuda is None:
                try:
                    import torch

                    has_cuda = torch.cuda.is_available()
                except ImportError:  # pragma: no cover
                    has_cuda = False
                skip_cuda = None if has_cuda else pytest.mark.skip(reason="needs a CUDA device")
            if skip_cuda is not None:
                item.add_marker(skip_cuda)
