"""Sphinx configuration for specutils-deepclean (sphinx-astropy v3, astropy-unified theme)."""

import os
from importlib.metadata import version as _version

from sphinx_astropy.conf.v3 import *  # noqa: F403

project = "specutils-deepclean"
author = "specutils-deepclean developers"
copyright = "2026, " + author
release = _version("specutils-deepclean")
version = ".".join(release.split(".")[:2])

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_title = f"{project} {release}"
html_theme_options = {"github_url": "https://github.com/specutils-deepclean/specutils-deepclean"}

# Cross-references to other projects need their inventories from the web.  On Read
# the Docs (READTHEDOCS=True) or with DEEPCLEAN_DOCS_ONLINE=1 the build fetches them
# and is nitpicky; offline builds (CI, which has no internet) keep every warning
# fatal but neither fetch inventories nor demand that foreign references resolve.
if os.environ.get("READTHEDOCS") == "True" or os.environ.get("DEEPCLEAN_DOCS_ONLINE") == "1":
    intersphinx_mapping.update(  # noqa: F405
        {
            "specutils": ("https://specutils.readthedocs.io/en/stable/", None),
            "asdf": ("https://www.asdf-format.org/projects/asdf/en/stable/", None),
            "torch": ("https://docs.pytorch.org/docs/stable/", None),
            "dask": ("https://docs.dask.org/en/stable/", None),
        }
    )
    nitpicky = True
    nitpick_ignore = []
    with open(os.path.join(os.path.dirname(__file__), "nitpick-exceptions")) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                dtype, target = line.split(None, 1)
                nitpick_ignore.append((dtype, target.strip()))
else:
    intersphinx_mapping = {}
    extensions = [e for e in extensions if e != "sphinx_astropy.ext.intersphinx_toggle"]  # noqa: F405

plot_formats = [("png", 100)]
plot_html_show_source_link = False
plot_include_source = True


def _write_cli_help() -> None:
    """The ``--help`` text of every command, for cli.rst (made at build time)."""
    import contextlib
    import io

    from specutils_deepclean import cli

    folder = os.path.join(os.path.dirname(__file__), "_generated")
    os.makedirs(folder, exist_ok=True)
    commands = [[]] + [[name] for name in cli.COMMANDS] + [
        ["benchmark", "speed"],
    ]
    for argv in commands:
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            cli.main([*argv, "--help"])
        name = "_".join(["cli", *argv[:1]]) + ("_" + argv[1] if len(argv) > 1 else "")
        with open(os.path.join(folder, f"{name}.txt"), "w") as fh:
            fh.write(text.getvalue())


_write_cli_help()
