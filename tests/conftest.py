"""Shared test fixtures."""

import pytest
from survey_files import write_survey


@pytest.fixture
def survey(tmp_path):
    """Four readable spectrum files and one corrupted one, in ``tmp_path / "in"``."""
    paths = write_survey(tmp_path / "in", 4)
    bad = tmp_path / "in" / "star999.fits"
    bad.write_bytes(paths[0].read_bytes()[:5000])  # truncated FITS
    return paths, bad
