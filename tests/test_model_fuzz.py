"""Untrusted model files: fuzzing `load_model` and ``asdf.open(path)["model"]``.

The target is a tiny `KaraokeVAE` file (24 weight tensors, about 9 kB).  Every
damaged or hostile copy must either load a model identical to the original (the
damage hit nothing that matters, e.g. the optional block index or a software
version string) or be refused with a `ValueError` that names the file; nothing in a
file is ever executed, and no array a file declares is allocated before its size has
been checked.

Campaign per run (seeded, so the same every time): 120 truncations at evenly spaced
cut points, 300 copies with 1-4 random bit flips (each loaded by `load_model`; the
~100 damaged only in the YAML tree also by ``asdf.open``), 20 random tag mutations
plus 6 chosen wrong or future tags, one shape edit per weight tensor plus a
configuration edit, 3 oversized declarations (peak memory checked with
`tracemalloc`), 6 references to other files and 5 embedded Python objects or
non-numeric arrays: about 600 loads; the module takes about 7 s on the 2-core
development machine.

What the campaign found, and is fixed (see ``docs/reliability.rst``): a bit flip in
a block header made asdf raise `MemoryError`; an array whose ``source`` names another
file was read from that file; a flipped ``source: N`` silently loaded one weight
tensor from another tensor's block; a configuration asking for a huge network was
allocated before the weights were checked; every load re-read asdf's entry points.
"""

import ast
import base64
import os
import pickle
import re
import struct
import tracemalloc
import warnings
from pathlib import Path

import asdf
import astropy.units as u
import numpy as np
import pytest
import torch
from asdf.exceptions import AsdfConversionWarning

import specutils_deepclean
from specutils_deepclean.io.asdf.entry_points import MODEL_TAG, NAMESPACE, PROVENANCE_TAG
from specutils_deepclean.io.models import MAX_ARRAY_BYTES, load_model, save_model
from specutils_deepclean.models.base import MAX_WEIGHT_ELEMENTS, DeepCleanModel
from specutils_deepclean.models.karaoke import KaraokeVAE

#: Peak traced memory allowed while refusing an oversized file.
SMALL_PEAK = 32 * 2**20
_INDEX = b"#ASDF BLOCK INDEX"
_BLOCK = b"\xd3BLK"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    model = KaraokeVAE.from_grid(
        np.linspace(6800.0, 7000.0, 64) * u.AA,
        medium="air",
        latent_dim=4,
        base_channels=2,
        max_channels=4,
        bottleneck_length=8,
        kernel_sizes=[3, 3],
        name="tiny-karaoke",
    )
    return save_model(model, tmp_path_factory.mktemp("fuzz") / "tiny.asdf")


@pytest.fixture(scope="module")
def reference(original):
    return load_model(original)


def _same(model, reference) -> bool:
    state, expected = model.state_dict(), reference.state_dict()
    return (
        type(model) is type(reference)
        and model.config == reference.config
        and np.array_equal(model.wavelength, reference.wavelength)
        and state.keys() == expected.keys()
        and all(torch.equal(state[key], expected[key]) for key in expected)
    )


def _outcome(path: Path, reference) -> str:
    """Load ``path``: "loaded" (identical model) or "refused" (ValueError naming it)."""
    try:
        model = load_model(path)
    except ValueError as exc:
        assert str(path) in str(exc), exc
        return "refused"
    assert _same(model, reference), f"{path} loaded a model that differs from the original"
    return "loaded"


def _asdf_open_outcome(path: Path, reference) -> str:
    """``asdf.open(path)["model"]``: an identical model, or never a model at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AsdfConversionWarning)
        try:
            with asdf.open(path) as af:
                node = af["model"]
        except Exception:  # asdf's own errors for a file it cannot parse
            return "refused"
    if isinstance(node, DeepCleanModel):
        assert _same(node, reference), f"asdf.open({path}) built a different model"
        return "loaded"
    return "refused"


def _assert_asdf_open_refuses(path: Path, match: str) -> None:
    """``asdf.open(path)["model"]`` warns with ``match`` and gives no model."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AsdfConversionWarning)
        with asdf.open(path) as af:
            assert not isinstance(af["model"], DeepCleanModel)
    messages = [str(item.message) for item in caught]
    assert any(re.search(match, message) for message in messages), messages


def _without_index(data: bytes) -> bytes:
    """Drop the optional block index (its byte offsets break when the tree is edited)."""
    return data[: data.index(_INDEX)] if _INDEX in data else data


def _edited(original: Path, tmp_path: Path, *edits: tuple[bytes, bytes]) -> Path:
    """A copy of the model file with regex substitutions applied to its YAML tree."""
    data = original.read_bytes()
    split = data.index(_BLOCK)
    tree = data[:split]
    for pattern, replacement in edits:
        tree, count = re.subn(pattern, replacement, tree, count=1)
        assert count == 1, pattern
    path = tmp_path / "edited.asdf"
    path.write_bytes(_without_index(tree + data[split:]))
    return path


def test_truncated_files_are_refused(original, reference, tmp_path):
    data = original.read_bytes()
    index_start = data.index(_INDEX)
    path = tmp_path / "cut.asdf"
    for cut in np.unique(np.linspace(0, len(data) - 1, 120).astype(int)):
        path.write_bytes(data[:cut])
        outcome = _outcome(path, reference)
        # Only (part of) the optional block index at the end can be lost without harm.
        assert outcome == "refused" or cut >= index_start, f"cut at byte {cut}"


def test_bit_flips_never_load_a_different_model(original, reference, tmp_path):
    data = original.read_bytes()
    tree_end = data.index(_BLOCK)
    rng = np.random.default_rng(2026)
    path = tmp_path / "flipped.asdf"
    outcomes = {"loaded": 0, "refused": 0}
    in_tree = 0
    for _ in range(300):
        damaged = bytearray(data)
        bits = rng.integers(0, 8 * len(damaged), size=rng.integers(1, 5))
        for bit in bits:
            damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        outcomes[_outcome(path, reference)] += 1
        # asdf itself can spin for hours on a damaged block header (it reads the
        # claimed size in empty chunks past the end of the file): only load_model
        # checks the headers first, so asdf.open gets the copies damaged in the tree.
        if np.all(bits // 8 < tree_end):
            in_tree += 1
            _asdf_open_outcome(path, reference)
    # Most flips land in the weights or the tree and must be caught (checksums, checks).
    assert outcomes["refused"] > 250 and in_tree > 50, (outcomes, in_tree)


@pytest.mark.parametrize(
    ("tag", "match"),
    [
        (f"{NAMESPACE}/tags/model-2.0.0", "newer specutils-deepclean format .* upgrade"),
        (f"{NAMESPACE}/tags/model-1.1.0", "newer specutils-deepclean format .* upgrade"),
        (f"{NAMESPACE}/tags/model-0.9.0", "which this version does not read"),
        (PROVENANCE_TAG, "a model node must be a mapping|Provenance|model file"),
        ("asdf://example.org/evil/tags/model-1.0.0", "which this version does not read"),
        ("tag:stsci.edu:asdf/core/ndarray-1.1.0", "cannot load"),
    ],
)
def test_wrong_or_future_tags_are_refused(original, tmp_path, tag, match):
    path = _edited(original, tmp_path, (re.escape(MODEL_TAG.encode()), tag.encode()))
    with pytest.raises(ValueError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_random_tag_mutations_are_refused(original, reference, tmp_path):
    rng = np.random.default_rng(7)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789./-:", dtype=np.uint8)
    for _ in range(20):
        tag = bytearray(MODEL_TAG.encode())
        position = rng.integers(len(tag))
        tag[position] = rng.choice(letters[letters != tag[position]])
        path = _edited(original, tmp_path, (re.escape(MODEL_TAG.encode()), bytes(tag)))
        assert _outcome(path, reference) == "refused", tag


def _block_header_offset(data: bytes, block: int) -> int:
    position = -1
    for _ in range(block + 1):
        position = data.index(_BLOCK, position + 1)
    return position


def _huge_weight_block(original, tmp_path):
    """Block 0 (a weight's) claims 6 GiB of uncompressed data: a zlib bomb's header."""
    data = bytearray(original.read_bytes())
    # magic, header size (uint16), flags (uint32), compression (4), allocated, used, data
    offset = _block_header_offset(bytes(data), 0) + 6 + 4 + 4 + 8 + 8
    data[offset : offset + 8] = struct.pack(">Q", 6 * 2**30)
    path = tmp_path / "bomb.asdf"
    path.write_bytes(bytes(data))
    return path


def _huge_declared_array(original, tmp_path):
    """A schema-valid tree whose grid and configuration declare 10**12 pixels."""
    return _edited(
        original,
        tmp_path,
        (rb"n_pix: 64", b"n_pix: 1000000000000"),
        (rb"shape: \[64\]", b"shape: [1000000000000]"),
    )


def _huge_network(original, tmp_path):
    """A configuration asking for 10**9 latent dimensions (weights left as they are)."""
    return _edited(original, tmp_path, (rb"latent_dim: 4", b"latent_dim: 1000000000"))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            _huge_weight_block,
            f"blocks declare 644245[0-9]{{4}} bytes of data, more than .*{MAX_ARRAY_BYTES}",
        ),
        (_huge_declared_array, f"arrays declare 8[0-9]{{12}} bytes, more than .*{MAX_ARRAY_BYTES}"),
        (_huge_network, f"network of [0-9]+ weight elements, more than {MAX_WEIGHT_ELEMENTS}"),
    ],
)
def test_oversized_declarations_refused_before_allocating(original, tmp_path, make, match):
    path = make(original, tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            load_model(path)
        _assert_asdf_open_refuses(path, match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SMALL_PEAK, f"peak {peak} bytes"


def test_shapes_that_disagree_with_the_configuration(original, reference, tmp_path):
    for key, tensor in reference.state_dict().items():
        shape = list(tensor.shape)
        wrong = [shape[0] + 1, *shape[1:]]
        pattern = rf"(    {re.escape(key)}: !core/ndarray-1.1.0\n(?:      .*\n)*?      shape: )"
        path = _edited(
            original,
            tmp_path,
            (pattern.encode() + re.escape(str(shape).encode()), rb"\g<1>" + str(wrong).encode()),
        )
        with pytest.raises(ValueError, match=rf"weight '{re.escape(key)}' has shape"):
            load_model(path)
    path = _edited(original, tmp_path, (rb"latent_dim: 4", b"latent_dim: 5"))
    with pytest.raises(ValueError, match=r"in the file but the configuration gives \(5,"):
        load_model(path)


@pytest.fixture
def foreign_file(tmp_path):
    """Another ASDF file holding arrays shaped like the tiny model's, to be pulled in."""
    path = tmp_path / "foreign.asdf"
    asdf.AsdfFile({"w": np.zeros((2, 2, 3), np.float32)}).write_to(path)
    return path


_FIRST_WEIGHT = rb"(encoder.0.0.weight: !core/ndarray-1.1.0\n      )source: 0"
_EXTERNAL = b"{fileuri: foreign.asdf, target: 0, datatype: float32, shape: [2, 2, 3]}"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            (_FIRST_WEIGHT, rb"\1source: foreign.asdf"),
            r"array /model/weights/encoder.0.0.weight reads its data from another file",
        ),
        ((_FIRST_WEIGHT, rb"\1source: 'file:///etc/passwd'"), "reads its data from another"),
        ((_FIRST_WEIGHT, rb"\1source: 'http://example.org/w.asdf'"), "reads its data from"),
        (
            (rb"(value: !core/ndarray-1.1.0\n      )source: [0-9]+", rb"\1source: foreign.asdf"),
            r"array /model/wavelength/value reads its data from another file",
        ),
        (
            (rb"  weights:\n", b"  weights: {$ref: 'foreign.asdf#/w'}\n  unused:\n"),
            r"/model/weights refers to another document \(\$ref 'foreign.asdf#/w'\)",
        ),
        (
            (
                rb"  medium: air\n",
                b"  medium: air\n  extra: {w: !core/externalarray-1.0.0 %s}\n" % _EXTERNAL,
            ),
            "/model/extra/w refers to an array in another file",
        ),
    ],
)
def test_references_to_other_files_are_refused(original, tmp_path, foreign_file, edit, match):
    path = _edited(original, tmp_path, edit)
    with pytest.raises(ValueError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)
    _assert_asdf_open_refuses(path, match)


class _Touch:
    """Unpickling this runs ``touch sentinel`` (what a hostile pickle would do)."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("!!python/object/apply:os.system ['touch {sentinel}']", "holds a Python object"),
        ("!!python/object/new:subprocess.Popen [['touch', '{sentinel}']]", "holds a Python object"),
        ("!!python/name:os.system ''", "holds a Python object"),
        # A pickle of os.system('touch ...') as a YAML binary blob.
        ("!!binary '{pickle}'", r"extra\['blob'\] is not an array \(got bytes\)"),
        ("!core/ndarray-1.1.0 {{data: [abc], datatype: [ascii, 3], shape: [1]}}", "numeric"),
    ],
)
def test_embedded_code_is_never_run(original, tmp_path, edit, match):
    sentinel = tmp_path / "sentinel"
    pickled = base64.b64encode(pickle.dumps(_Touch(sentinel))).decode()
    node = edit.format(sentinel=sentinel, pickle=pickled)
    path = _edited(
        original,
        tmp_path,
        (rb"  medium: air\n", f"  medium: air\n  extra: {{blob: {node}}}\n".encode()),
    )
    with pytest.raises(ValueError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AsdfConversionWarning)
        with asdf.open(path) as af:
            assert not isinstance(af["model"], DeepCleanModel)
    assert not sentinel.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            owner = (
                func.value.id
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                else None
            )
            yield owner, name, node


def test_package_source_never_loads_code():
    root = Path(specutils_deepclean.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 20
    problems = []
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names]
                names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                for name in names:
                    if name.split(".")[0] in {
                        "pickle",
                        "cPickle",
                        "dill",
                        "cloudpickle",
                        "marshal",
                        "shelve",
                    }:
                        problems.append(f"{path}:{node.lineno} imports {name}")
        for owner, name, call in _calls(tree):
            keywords = {kw.arg: kw.value for kw in call.keywords}
            if isinstance(call.func, ast.Name) and name in {"eval", "exec"}:
                problems.append(f"{path}:{call.lineno} calls {name}()")
            if (owner, name) == ("torch", "load"):
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{path}:{call.lineno} torch.load without weights_only=True")
            if (owner, name) == ("np", "load") and "allow_pickle" in keywords:
                problems.append(f"{path}:{call.lineno} np.load(allow_pickle=...)")
            if (owner, name) in {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load")}:
                problems.append(f"{path}:{call.lineno} yaml.{name}")
    assert not problems, "\n".join(problems)
