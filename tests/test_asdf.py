"""The ASDF extension: entry points, manifest, schemas, converters, round trips."""

import importlib.resources
import re
import subprocess
import sys
from pathlib import Path

import asdf
import astropy.units as u
import numpy as np
import pytest
import yaml
from asdf.testing.helpers import roundtrip_object

from specutils_deepclean.io.asdf import entry_points
from specutils_deepclean.provenance import Provenance, file_sha256

RESOURCES = importlib.resources.files("specutils_deepclean.io.asdf") / "resources"
PACKAGE = Path(__file__).resolve().parents[1] / "specutils_deepclean"


def _manifest():
    return yaml.safe_load((RESOURCES / "manifests" / "deepclean-1.0.0.yaml").read_text())


def _provenance(**changes):
    fields = dict(
        data_name="MILES",
        data_path="../shared/data/miles/miles.fits",
        data_sha256="ab" * 32,
        data_description="689 spectra",
        split="train",
        seed=3,
        package_version="0.1.0",
        created="2026-11-22T02:00:00+00:00",
        script="benchmarks/training/train_pca.py",
        metrics={"val_median_mse": 8.9e-5, "n": 3},
        notes="note",
    )
    return Provenance(**{**fields, **changes})


def test_manifest_versions_in_lockstep():
    manifest = _manifest()
    stem = "deepclean-1.0.0"
    assert (
        manifest["id"] == entry_points.MANIFEST_URI == f"{entry_points.NAMESPACE}/manifests/{stem}"
    )
    assert manifest["extension_uri"] == f"{entry_points.NAMESPACE}/extensions/{stem}"


def test_manifest_lists_existing_schemas_with_matching_ids():
    manifest = _manifest()
    tags = {entry["tag_uri"] for entry in manifest["tags"]}
    assert tags == {entry_points.MODEL_TAG, entry_points.PROVENANCE_TAG}
    for entry in manifest["tags"]:
        name = entry["schema_uri"].rpartition("/")[2]
        assert entry["tag_uri"].rpartition("/")[2] == name
        schema = yaml.safe_load((RESOURCES / "schemas" / f"{name}.yaml").read_text())
        assert schema["id"] == entry["schema_uri"]
        assert schema["$schema"] == "http://stsci.edu/schemas/yaml-schema/draft-01"


def test_extension_is_installed():
    uris = {ext.extension_uri for ext in asdf.get_config().extensions}
    assert f"{entry_points.NAMESPACE}/extensions/deepclean-1.0.0" in uris
    mapped = {res for res in asdf.get_config().resource_manager}
    assert entry_points.MANIFEST_URI in mapped


def test_provenance_roundtrip():
    prov = _provenance()
    assert roundtrip_object(prov) == prov


def test_provenance_roundtrip_without_seed():
    prov = _provenance(seed=None)
    assert "seed" not in prov.to_dict()
    assert roundtrip_object(prov) == prov


def test_provenance_defaults_stamp_version_and_time():
    import specutils_deepclean

    prov = Provenance()
    assert prov.package_version == specutils_deepclean.__version__
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prov.created)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"data_sha256": "xyz"}, ValueError, "data_sha256 must be 64"),
        ({"created": "yesterday"}, ValueError, "created must be an ISO 8601"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"seed": True}, TypeError, "seed must be an int"),
        ({"split": 3}, TypeError, "split must be a str"),
        ({"metrics": {"a": "big"}}, TypeError, "metric 'a' must be a real number"),
        ({"metrics": {"a": float("nan")}}, ValueError, "metric 'a' is NaN"),
        ({"metrics": [1]}, TypeError, "metrics must be a dict"),
    ],
)
def test_provenance_rejects_bad_fields(changes, error, match):
    with pytest.raises(error, match=match):
        _provenance(**changes)


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"package_version": "1", "created": "2026-01-01", "colour": "red"}, "unknown provenance"),
        ({"package_version": "1"}, "lacks required field.*created"),
    ],
)
def test_provenance_from_dict_rejects_bad_trees(tree, match):
    with pytest.raises(ValueError, match=match):
        Provenance.from_dict(tree)


def test_file_sha256(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _schema(name):
    uri = f"{entry_points.NAMESPACE}/schemas/{name}"
    return asdf.schema.load_schema(uri, resolve_references=True)


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("data_sha256", "ab" * 32, True),
        ("data_sha256", "", True),
        ("data_sha256", "AB" * 32, False),
        ("seed", 4, True),
        ("seed", "4", False),
        ("metrics", {"a": 1.0}, True),
        ("metrics", {"a": "x"}, False),
        ("colour", "red", False),
    ],
)
def test_provenance_schema(key, value, ok):
    tree = {"package_version": "1", "created": "2026-01-01", key: value}
    if ok:
        asdf.schema.validate(tree, schema=_schema("provenance-1.0.0"))
    else:
        with pytest.raises(asdf.ValidationError):
            asdf.schema.validate(tree, schema=_schema("provenance-1.0.0"))


def _model_tree(**changes):
    tree = {
        "class": "PCADenoiser",
        "config": {"architecture": "pca", "n_components": 2, "layers": [[1, 2], [3]]},
        "weights": {"mean": np.zeros(3)},
        "wavelength": np.arange(3.0) * u.AA,
        "medium": "air",
        "provenance": _provenance(),
    }
    tree.update(changes)
    return {key: value for key, value in tree.items() if value is not None}


@pytest.mark.parametrize(
    ("changes", "ok"),
    [
        ({}, True),
        ({"classes": ["A", "B"], "extra": {"kde": np.ones((2, 2))}, "name": "m"}, True),
        ({"medium": "water"}, False),
        ({"config": {"n_components": 2}}, False),
        ({"config": {"architecture": "pca", "deep": [[[1]]]}}, False),
        ({"config": {"architecture": "pca", "d": {"a": 1}}}, False),
        ({"weights": {"mean": [1, 2]}}, False),
        ({"classes": [1]}, False),
        ({"provenance": None}, False),
        ({"colour": "red"}, False),
    ],
)
def test_model_schema(changes, ok):
    """The model schema, applied to the tagged tree asdf would write."""
    af = asdf.AsdfFile()
    tagged = asdf.yamlutil.custom_tree_to_tagged_tree(_model_tree(**changes), af)
    schema = _schema("model-1.0.0")
    if ok:
        asdf.schema.validate(tagged, ctx=af, schema=schema)
    else:
        with pytest.raises(asdf.ValidationError):
            asdf.schema.validate(tagged, ctx=af, schema=schema)


def test_import_keeps_torch_out():
    code = (
        "import sys\n"
        "import specutils_deepclean\n"
        "import specutils_deepclean.io.asdf.entry_points\n"
        "import asdf\n"
        "exts = asdf.get_config().extensions\n"
        "assert any('deepclean' in (e.extension_uri or '') for e in exts)\n"
        "import specutils_deepclean.models\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_FORBIDDEN = [
    (
        re.compile(
            r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle|marshal|shelve)\b", re.M
        ),
        "a pickle-like module",
    ),
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (
        re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
        "torch.load without weights_only",
    ),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"(?<![\w.])(eval|exec)\("), "eval/exec"),
    (
        re.compile(r"yaml\.(unsafe_)?load\((?![^)]*Loader\s*=\s*yaml\.SafeLoader)"),
        "unsafe yaml.load",
    ),
]


@pytest.mark.parametrize(("pattern", "what"), _FORBIDDEN, ids=[w for _, w in _FORBIDDEN])
def test_package_source_never_unpickles_or_evaluates(pattern, what):
    sources = sorted(PACKAGE.rglob("*.py"))
    assert sources
    hits = [f"{p.relative_to(PACKAGE)}" for p in sources if pattern.search(p.read_text("utf-8"))]
    assert not hits, f"{what} in {hits}"


@pytest.mark.parametrize(
    ("snippet", "index"),
    [
        ("import pickle\n", 0),
        ("x = torch.load(f)\n", 2),
        ("x = torch.load(f, weights_only=True)\n", None),
        ("y = eval('1')\n", 4),
        ("model.eval()\n", None),
    ],
)
def test_source_scan_patterns(snippet, index):
    """The scan above would catch what it claims to catch (and not model.eval())."""
    matched = [i for i, (pattern, _) in enumerate(_FORBIDDEN) if pattern.search(snippet)]
    assert matched == ([] if index is None else [index])
