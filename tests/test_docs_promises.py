"""What the README and the installation page promise matches the package."""

import re
import tomllib
from pathlib import Path

from specutils_deepclean.io.models import pretrained_models

ROOT = Path(__file__).resolve().parent.parent


def test_readme_model_names_are_shipped():
    """Every ``model="..."`` in the README's code works when copied: a shipped name."""
    readme = (ROOT / "README.rst").read_text()
    names = re.findall(r"""model=["']([^"']+)["']""", readme)
    assert names, "the README shows no model argument"
    shipped = set(pretrained_models())
    assert [name for name in names if name not in shipped] == []


def test_installation_page_lists_every_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    page = (ROOT / "docs" / "installation.rst").read_text()
    assert [name for name in extras if f"``[{name}]``" not in page] == []
