"""The quicklook figure of a result."""

import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

from specutils_deepclean.files import read_spectrum  # noqa: E402
from specutils_deepclean.manipulation import (  # noqa: E402
    ConvergenceWarning,
    denoise,
    remove_tellurics,
)
from specutils_deepclean.plotting import quicklook  # noqa: E402


def test_quicklook_panels_and_png(survey, tmp_path):
    spectrum = read_spectrum(survey[0][1])
    spectrum.mask[1000:1200] = True
    cleaned = remove_tellurics(spectrum)
    fig = quicklook(cleaned, spectrum, path=tmp_path / "t.png")
    assert len(fig.axes) == 2  # the transmission panel
    assert (tmp_path / "t.png").stat().st_size > 10_000
    with warnings.catch_warnings():  # a cheap optimisation: it may stop short of the mode
        warnings.simplefilter("ignore", ConvergenceWarning)
        smooth = denoise(spectrum, steps=3, n_starts=1)
    fig = quicklook(smooth, spectrum, path=tmp_path / "d.png")
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(label.startswith("p(class): ") for label in labels)
    assert any("MAP class " + smooth.meta["deepclean"]["map_class"] in label for label in labels)
    assert "filled by the model" in labels and "masked in input" in labels
    assert len(fig.axes) == 1 and (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite(ax.get_ylim()).all()
