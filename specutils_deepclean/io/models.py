"""Saving and loading model files (ASDF), and the index of shipped pretrained models.

A model file is an ASDF file whose tree holds the model under ``"model"``,
tagged ``asdf://specutils-deepclean.readthedocs.io/deepclean/tags/model-1.0.0``.
Loading rebuilds the network from the stored configuration through a fixed
registry of classes and copies checked arrays into it: nothing in the file is
imported, evaluated or unpickled.  Before asdf converts anything, `load_model`
reads the file's YAML tree and block headers and refuses a file that refers to
other files (``$ref``, external array sources), holds Python-object tags or
non-numeric arrays, or declares more than `MAX_ARRAY_BYTES` of array data.
"""

import importlib.resources
import json
import os
import struct
import zlib
from pathlib import Path

import asdf
import yaml
from asdf.exceptions import AsdfWarning

from .._atomic import atomic_path
from ..models import registry_name
from ..models.base import DeepCleanModel
from .asdf.uris import MODEL_TAG, NAMESPACE
from .prescan import MAX_ARRAY_BYTES, prescan

__all__ = ["save_model", "load_model", "pretrained_models", "MAX_ARRAY_BYTES"]

_PRETRAINED = "specutils_deepclean.pretrained"
_MODEL_TAG_PREFIX = f"{NAMESPACE}/tags/model-"
# What a damaged or foreign file can make asdf, yaml or zlib raise while reading.
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    RuntimeError,
    yaml.YAMLError,
    zlib.error,
    struct.error,
    AsdfWarning,
    asdf.ValidationError,
)


def pretrained_models() -> dict[str, str]:
    """Return the names of the shipped pretrained models with a one-line description.

    Returns
    -------
    dict of str to str
        Name (usable with `load_model`) -> description.

    Examples
    --------
    >>> from specutils_deepclean.io.models import pretrained_models
    >>> "miles-pca" in pretrained_models()
    True
    """
    return {name: entry["description"] for name, entry in _index().items()}


def save_model(model: DeepCleanModel, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a model to an ASDF file (zlib-compressed arrays).

    The file is written next to ``path`` under a temporary name and renamed
    into place, so ``path`` never holds a partial file.

    Parameters
    ----------
    model : `~specutils_deepclean.models.base.DeepCleanModel`
        A model whose class is in the registry
        (``specutils_deepclean.models.MODEL_REGISTRY``).
    path : str or path-like
        Destination file (``.asdf`` by convention).
    overwrite : bool, optional
        Replace an existing file (default: refuse).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If ``model`` is not a registered `~specutils_deepclean.models.base.DeepCleanModel`.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    FileNotFoundError
        If the destination directory does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from specutils_deepclean.io.models import load_model, save_model
    >>> model = load_model("miles-pca")
    >>> path = save_model(model, pathlib.Path(tempfile.mkdtemp()) / "copy.asdf")
    >>> load_model(path).name
    'miles-pca'
    """
    if not isinstance(model, DeepCleanModel):
        raise TypeError(f"model must be a DeepCleanModel, got {type(model).__name__}")
    registry_name(type(model))
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "wb") as fh:
        asdf.AsdfFile({"model": model}).write_to(fh, all_array_compression="zlib")
    return path


def load_model(name_or_path: str | os.PathLike, *, device=None) -> DeepCleanModel:
    """Load a model from a pretrained name or an ASDF file.

    Parameters
    ----------
    name_or_path : str or path-like
        A name from `pretrained_models`, or the path of a model file.
    device : str or `torch.device`, optional
        Where to put the weights (default: the CPU).

    Returns
    -------
    `~specutils_deepclean.models.base.DeepCleanModel`
        The model, in evaluation mode.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the known names), or the file is
        not a readable ASDF file (truncated, corrupted), has no ``"model"`` node,
        holds a foreign tag or a newer format version, or its weights do not fit
        the stored configuration. The message names the file.
    FileNotFoundError
        If the file does not exist.

    Examples
    --------
    >>> from specutils_deepclean.io.models import load_model
    >>> model = load_model("miles-pca")
    >>> model.medium, model.wavelength.unit
    ('air', Unit("Angstrom"))
    """
    path = _resolve(name_or_path)
    with importlib.resources.as_file(path) as local:
        model = _read(local)
    model.eval()
    return model if device is None else model.to(device)


def _index() -> dict:
    text = importlib.resources.files(_PRETRAINED).joinpath("index.json").read_text("utf-8")
    return json.loads(text)


def _resolve(name_or_path):
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"name_or_path must be a str or a path, got {type(name_or_path).__name__}")
    index = _index()
    if isinstance(name_or_path, str) and name_or_path in index:
        return importlib.resources.files(_PRETRAINED).joinpath(index[name_or_path]["file"])
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise ValueError(f"{path} is not a file")
    if isinstance(name_or_path, str) and not path.suffix and len(path.parts) == 1:
        known = ", ".join(sorted(index))
        raise ValueError(f"unknown model name {name_or_path!r}; known names: {known}")
    raise FileNotFoundError(f"model file {path} not found")


def _read(path: Path) -> DeepCleanModel:
    # config_context works on a copy of asdf's global configuration: extensions
    # loaded only into the copy are lost with it, and every load would scan the
    # entry points again (about 0.3 s).  Load them into the global one first.
    global_config = asdf.get_config()
    _ = global_config.extensions, global_config.resource_manager
    try:
        prescan(path)
        with asdf.config_context() as config:
            # A node that fails to convert raises (asdf would warn and return the raw
            # node); an unknown tag comes back as a tagged dict that _check_node names.
            config.warn_on_failed_conversion = False
            with asdf.open(path, ignore_unrecognized_tag=True, validate_checksums=True) as af:
                if "model" not in af.tree:
                    raise ValueError("it has no 'model' entry")
                node = af.tree["model"]
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot load {path} as a model file: {exc}") from exc
    return _check_node(node, path)


def _check_node(node, path) -> DeepCleanModel:
    if isinstance(node, DeepCleanModel):
        return node
    # asdf's tagged dicts, lists and strings carry ``_tag``; an array node loads its
    # data on any attribute, from the file that is closed by now
    tag = getattr(node, "_tag", None) if isinstance(node, dict | list | str) else None
    if tag is None:
        raise ValueError(
            f"cannot load {path} as a model file: its 'model' entry is an untagged "
            f"{type(node).__name__}, not a {MODEL_TAG} node"
        )
    if tag.startswith(_MODEL_TAG_PREFIX) and _is_newer(tag[len(_MODEL_TAG_PREFIX) :]):
        raise ValueError(
            f"{path} was written by a newer specutils-deepclean format ({tag}); this "
            f"version reads {MODEL_TAG}: upgrade specutils-deepclean to load it"
        )
    raise ValueError(
        f"cannot load {path} as a model file: its 'model' entry has tag {tag}, "
        f"which this version does not read (it reads {MODEL_TAG})"
    )


def _is_newer(version: str) -> bool:
    current = tuple(int(part) for part in MODEL_TAG.rpartition("-")[2].split("."))
    try:
        found = tuple(int(part) for part in version.split("."))
    except ValueError:
        return False
    return found > current
