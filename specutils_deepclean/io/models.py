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
import math
import mmap
import os
import struct
import tempfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import asdf
import asdf.util
import numpy as np
import yaml
from asdf.exceptions import AsdfWarning

from ..models import registry_name
from ..models.base import DeepCleanModel
from .asdf.entry_points import MODEL_TAG, NAMESPACE

__all__ = ["save_model", "load_model", "pretrained_models", "MAX_ARRAY_BYTES"]

#: Largest total size (bytes, uncompressed) of the arrays a model file may declare.
MAX_ARRAY_BYTES = 2**30

_PRETRAINED = "specutils_deepclean.pretrained"
_MODEL_TAG_PREFIX = f"{NAMESPACE}/tags/model-"
_NDARRAY_TAG = "tag:stsci.edu:asdf/core/ndarray-"
_EXTERNAL_TAG = "tag:stsci.edu:asdf/core/externalarray-"
_PYTHON_TAG = "tag:yaml.org,2002:python/"
_ASDF_MAGIC = b"#ASDF "
_BLOCK_MAGIC = b"\xd3BLK"
# ASDF block header after the magic and its uint16 size: flags, compression,
# allocated, used and data sizes (big-endian; ASDF standard, "Blocks").
_BLOCK_HEADER = struct.Struct(">I4sQQQ")
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            asdf.AsdfFile({"model": model}).write_to(fh, all_array_compression="zlib")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
        _prescan(path)
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


def _prescan(path: Path) -> None:
    """Refuse what a model file must never hold, before asdf reads any array.

    Reads the YAML tree with asdf's safe loader (tags kept, nothing converted)
    and the block headers.

    Raises
    ------
    ValueError
        If the file is not an ASDF file, the tree refers to another file, holds a
        Python-object tag or a non-numeric array; if the tree or the blocks declare more than
        `MAX_ARRAY_BYTES` of array data; if a block header is inconsistent; or if
        the arrays do not use every block exactly once (a damaged ``source``).
    """
    with open(path, "rb") as fh:
        if fh.read(len(_ASDF_MAGIC)) != _ASDF_MAGIC:
            raise ValueError("it is not an ASDF file (it does not start with '#ASDF')")
    arrays: dict[str, tuple[int | None, int]] = {}
    _collect_arrays(asdf.util.load_yaml(path, tagged=True), "", arrays)
    declared = sum(size for _, size in arrays.values())
    if declared > MAX_ARRAY_BYTES:
        raise ValueError(
            f"its arrays declare {declared} bytes, more than the limit of {MAX_ARRAY_BYTES}"
        )
    blocks = _block_sizes(path)
    if sum(blocks) > MAX_ARRAY_BYTES:
        raise ValueError(
            f"its blocks declare {sum(blocks)} bytes of data, more than the limit of "
            f"{MAX_ARRAY_BYTES}"
        )
    sources = sorted(source for source, _ in arrays.values() if source is not None)
    if sources != list(range(len(blocks))):
        raise ValueError(
            f"its arrays use blocks {sources} but it has {len(blocks)} blocks, each to be "
            "used by one array: the tree or the blocks are damaged"
        )


def _prescan_url(url: str | None) -> None:
    """`_prescan` the file asdf is reading, when it is a local file (see `ModelConverter`)."""
    if url is None:
        return
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path))
        if path.is_file():
            _prescan(path)


def _collect_arrays(node, where: str, arrays: dict) -> None:
    """Check ``node`` and everything under it; add its arrays' (source, bytes) to ``arrays``."""
    tag = getattr(node, "_tag", None) or ""
    if tag.startswith(_PYTHON_TAG):
        raise ValueError(f"{where or 'its tree'} holds a Python object (tag {tag})")
    if tag.startswith(_EXTERNAL_TAG):
        raise ValueError(f"{where} refers to an array in another file")
    if isinstance(node, dict):
        if "$ref" in node:
            raise ValueError(f"{where} refers to another document ($ref {node['$ref']!r})")
        if tag.startswith(_NDARRAY_TAG):
            arrays[where] = _array_source_and_bytes(node, where)
        for key, value in node.items():
            _collect_arrays(value, f"{where}/{key}", arrays)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _collect_arrays(value, f"{where}/{i}", arrays)


def _array_source_and_bytes(node: dict, where: str) -> tuple[int | None, int]:
    """Block index (None for inline data) and declared size of one ndarray node."""
    source = node.get("source")
    if source is not None and (isinstance(source, bool) or not isinstance(source, int)):
        raise ValueError(f"array {where} reads its data from another file (source {source!r})")
    datatype = node.get("datatype")
    try:
        dtype = np.dtype(datatype) if isinstance(datatype, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise ValueError(f"array {where} has datatype {datatype!r}; model arrays are numeric")
    shape = node.get("shape", [len(node.get("data") or [])])
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ValueError(f"array {where} has an invalid shape {shape!r}")
    return source, math.prod(shape) * dtype.itemsize


def _block_sizes(path: Path) -> list[int]:
    """Uncompressed data size declared by each block header, checking the headers."""
    sizes = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = data.find(_BLOCK_MAGIC)
        while position >= 0 and data[position : position + 4] == _BLOCK_MAGIC:
            (size,) = struct.unpack(">H", data[position + 4 : position + 6])
            header = data[position + 6 : position + 6 + _BLOCK_HEADER.size]
            if size < _BLOCK_HEADER.size or len(header) < _BLOCK_HEADER.size:
                raise ValueError(f"the block header at byte {position} is truncated")
            _, compression, allocated, used, data_size = _BLOCK_HEADER.unpack(header)
            end = position + 6 + size + allocated
            if used > allocated or end > len(data):
                raise ValueError(
                    f"the block at byte {position} claims {allocated} bytes ({used} used) but "
                    f"the file ends {len(data) - position - 6 - size} bytes after its header"
                )
            if compression == b"\0\0\0\0" and used != data_size:
                raise ValueError(
                    f"the uncompressed block at byte {position} uses {used} bytes of {data_size}"
                )
            sizes.append(data_size)
            position = end
    return sizes


def _check_node(node, path) -> DeepCleanModel:
    if isinstance(node, DeepCleanModel):
        return node
    tag = getattr(node, "_tag", None)
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
