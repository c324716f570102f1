"""The check of a model file before asdf reads it: no other files, no Python, bounded size.

`prescan` reads the YAML tree of a file with asdf's safe loader (tags kept, nothing
converted) and its block headers, and refuses what a model file must never hold.
`~specutils_deepclean.io.models.load_model` calls it before asdf converts anything,
and the ASDF model converter calls `prescan_url` on the file asdf is reading, so that
``asdf.open(path)["model"]`` is checked the same way.
"""

import math
import mmap
import struct
import urllib.parse
import urllib.request
from pathlib import Path

import asdf.util
import numpy as np

__all__ = ["MAX_ARRAY_BYTES", "prescan", "prescan_url"]

#: Largest total size (bytes, uncompressed) of the arrays a model file may declare.
MAX_ARRAY_BYTES = 2**30

_NDARRAY_TAG = "tag:stsci.edu:asdf/core/ndarray-"
_EXTERNAL_TAG = "tag:stsci.edu:asdf/core/externalarray-"
_PYTHON_TAG = "tag:yaml.org,2002:python/"
_ASDF_MAGIC = b"#ASDF "
_BLOCK_MAGIC = b"\xd3BLK"
# ASDF block header after the magic and its uint16 size: flags, compression,
# allocated, used and data sizes (big-endian; ASDF standard, "Blocks").
_BLOCK_HEADER = struct.Struct(">I4sQQQ")


def prescan(path: Path) -> None:
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


def prescan_url(url: str | None) -> None:
    """`prescan` the file asdf is reading, when it is a local file (the ASDF model converter)."""
    if url is None:
        return
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path))
        if path.is_file():
            prescan(path)


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
