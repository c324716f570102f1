"""Model files: DeepCleanModel, PCADenoiser, save_model / load_model and their errors."""

import os

import asdf
import astropy.units as u
import numpy as np
import pytest
import torch
from asdf.tagged import TaggedDict
from asdf.testing.helpers import roundtrip_object

import specutils_deepclean
from specutils_deepclean.io.asdf.entry_points import MODEL_TAG, NAMESPACE
from specutils_deepclean.io.models import load_model, pretrained_models, save_model
from specutils_deepclean.models import MODEL_REGISTRY, model_class, registry_name
from specutils_deepclean.models.base import DeepCleanModel
from specutils_deepclean.models.baselines import PCADenoiser
from specutils_deepclean.provenance import Provenance

from data_needs import miles_file, needs_miles

N_PIX = 40
WAVE = np.linspace(5000.0, 5100.0, N_PIX) * u.AA


def _subspace_spectra(rng, n, n_basis=2, n_pix=N_PIX):
    """Spectra exactly in span(mean, basis): a PCA with n_basis + 1 components fits them."""
    basis = np.sin(np.outer(np.arange(1, n_basis + 1), np.linspace(0, 3, n_pix)))
    coef = 0.05 * rng.normal(size=(n, n_basis))
    return (1.0 + coef @ basis) * rng.uniform(0.5, 2.0, size=(n, 1))


@pytest.fixture
def model():
    rng = np.random.default_rng(1)
    return PCADenoiser.fit(
        1 + 0.05 * rng.normal(size=(30, N_PIX)),
        WAVE,
        n_components=3,
        medium="air",
        classes=["A", "B"],
        name="tiny",
        provenance=Provenance(data_name="synthetic", split="train", seed=1, metrics={"m": 1.0}),
    )


@pytest.fixture
def saved(model, tmp_path):
    return save_model(model, tmp_path / "model.asdf")


def _batch(seed=2):
    rng = np.random.default_rng(seed)
    flux = 1 + 0.05 * rng.normal(size=(4, N_PIX))
    missing = np.zeros(flux.shape, bool)
    missing[0, 5:15] = True
    missing[2, -8:] = True
    return flux, missing


def _assert_same_model(a, b):
    assert type(a) is type(b)
    assert a.config == b.config
    assert a.name == b.name and a.medium == b.medium and a.classes == b.classes
    assert a.provenance == b.provenance
    assert u.allclose(a.wavelength, b.wavelength, rtol=0, atol=0 * u.AA)
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    flux, missing = _batch()
    np.testing.assert_array_equal(a.reconstruct(flux, missing), b.reconstruct(flux, missing))


def test_save_load_roundtrip_gives_identical_model(model, saved):
    loaded = load_model(saved)
    _assert_same_model(model, loaded)
    assert not loaded.training


def test_asdf_open_gives_working_model(model, saved):
    with asdf.open(saved) as af:
        loaded = af["model"]
    _assert_same_model(model, loaded)


def test_roundtrip_object(model):
    _assert_same_model(model, roundtrip_object(model))


def test_extra_arrays_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    extra = {"kde_points": rng.normal(size=(5, 3)), "labels": np.arange(5)}
    config = {"architecture": "pca", "n_components": 3, "n_pix": N_PIX}
    model = PCADenoiser(config, wavelength=WAVE, medium="vacuum", extra=extra)
    loaded = load_model(save_model(model, tmp_path / "x.asdf"))
    assert loaded.medium == "vacuum" and loaded.classes is None
    assert loaded.extra.keys() == extra.keys()
    for key, value in extra.items():
        np.testing.assert_array_equal(loaded.extra[key], value)


def test_file_uses_tag_and_zlib(saved):
    text = saved.read_bytes()
    assert f"!<{MODEL_TAG}>".encode() in text
    assert f"!<{NAMESPACE}/tags/provenance-1.0.0>".encode() in text
    assert b"zlib" in text


def test_save_refuses_overwrite_unless_asked(model, saved):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(model, saved)
    save_model(model, saved, overwrite=True)
    assert load_model(saved).name == "tiny"


def test_save_is_atomic(model, saved, monkeypatch):
    before = saved.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(asdf.AsdfFile, "write_to", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(model, saved, overwrite=True)
    assert saved.read_bytes() == before
    assert sorted(os.listdir(saved.parent)) == ["model.asdf"]


def test_saved_model_follows_the_umask(model, tmp_path):
    old = os.umask(0o002)
    try:
        path = save_model(model, tmp_path / "x.asdf")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ("not a model", TypeError, "must be a DeepCleanModel"),
        ("unregistered", TypeError, "not in specutils_deepclean.models.MODEL_REGISTRY"),
    ],
)
def test_save_rejects_bad_models(bad, error, match, tmp_path):
    if bad == "unregistered":

        class Local(PCADenoiser):
            pass

        bad = Local(
            {"architecture": "pca", "n_components": 1, "n_pix": N_PIX},
            wavelength=WAVE,
            medium="air",
        )
    with pytest.raises(error, match=match):
        save_model(bad, tmp_path / "x.asdf")


def test_save_needs_existing_directory(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(model, tmp_path / "nowhere" / "x.asdf")


def _write_tree(path, tree):
    """Write a hand-made model node, as a hostile or broken writer could.

    asdf validates what it writes, so the node is written under a same-length tag
    that has no schema and the tag is then swapped in the bytes.
    """
    stand_in = MODEL_TAG.replace("model-", "modeX-")
    asdf.AsdfFile({"model": TaggedDict(tree, stand_in)}).write_to(path)
    return _replace_same_length(path, stand_in.encode(), MODEL_TAG.encode())


def _edited(model, path, edit):
    tree = model._to_tree()
    edit(tree)
    return _write_tree(path, tree)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda t: t["weights"].__setitem__("mean", np.zeros(N_PIX + 1, np.float32)),
            r"weight 'mean' has shape \(41,\) in the file but the configuration gives \(40,\)",
        ),
        (
            lambda t: t["weights"].pop("components"),
            r"weight 'components' is missing from the file "
            r"\(the configuration expects shape \(3, 40\)\)",
        ),
        (
            lambda t: t["weights"].__setitem__("evil", np.zeros(2)),
            r"unexpected weight 'evil' \(shape \(2,\)\)",
        ),
        (
            lambda t: t["weights"].__setitem__("mean", np.zeros(N_PIX, np.int64)),
            r"weight 'mean' has dtype int64, expected a floating-point array",
        ),
        (
            lambda t: t.__setitem__("class", "os:system"),
            r"unknown model class 'os:system'; known classes: .*PCADenoiser",
        ),
        (
            lambda t: t.__setitem__(
                "config", {"architecture": "vae", "n_components": 3, "n_pix": 40}
            ),
            "PCADenoiser needs architecture 'pca'",
        ),
        (
            lambda t: t["config"].__setitem__("n_pix", 41),
            r"config\['n_pix'\] = 41 but the wavelength grid has 40",
        ),
        (
            lambda t: t["config"].__setitem__("n_components", -1),
            r"config\['n_components'\] must be a positive int",
        ),
        (lambda t: t["config"].pop("architecture"), "must have an 'architecture'"),
        (lambda t: t.__setitem__("medium", "water"), "medium must be 'air' or 'vacuum'"),
        (lambda t: t.__setitem__("wavelength", np.arange(40.0)), "'wavelength' must be a Quantity"),
        (lambda t: t.__setitem__("wavelength", WAVE[::-1]), "strictly increasing"),
        (lambda t: t.__setitem__("provenance", {"seed": 1}), "'provenance' must be a Provenance"),
        (lambda t: t.pop("provenance"), "lacks required field.*provenance"),
        (lambda t: t.__setitem__("code", "print(1)"), "unknown field.*code"),
        (lambda t: t.__setitem__("classes", [1, 2]), "classes must be a sequence of str"),
        (lambda t: t.__setitem__("extra", {"k": "text"}), r"extra\['k'\] is not an array"),
    ],
)
def test_load_rejects_inconsistent_content(model, tmp_path, edit, match):
    path = _edited(model, tmp_path / "bad.asdf", edit)
    with pytest.raises(ValueError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_schema_violation_is_value_error_when_validating_on_read(model, tmp_path):
    path = _edited(model, tmp_path / "bad.asdf", lambda t: t.__setitem__("medium", "water"))
    with asdf.config_context() as config:
        config.validate_on_read = True
        with pytest.raises(ValueError, match="cannot load .*bad.asdf as a model file: 'water'"):
            load_model(path)


def _replace_same_length(path, old, new):
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    return path


def test_declared_weight_shape_checked_before_reading(model, saved):
    _replace_same_length(saved, b"shape: [3, 40]", b"shape: [9, 40]")
    with pytest.raises(ValueError, match=r"'components' has shape \(9, 40\)"):
        load_model(saved)


def test_huge_declared_extra_refused_before_reading(tmp_path):
    model = PCADenoiser(
        {"architecture": "pca", "n_components": 1, "n_pix": N_PIX},
        wavelength=WAVE,
        medium="air",
        extra={"kde": np.zeros((1000, 1000))},
    )
    path = save_model(model, tmp_path / "x.asdf")
    _replace_same_length(path, b"shape: [1000, 1000]", b"shape: [9000, 9000]")
    with pytest.raises(ValueError, match=r"extra\['kde'\] declares shape \(9000, 9000\)"):
        load_model(path)


def _retagged(saved, tag):
    """Swap the model tag; the block index (byte offsets) is dropped as they move."""
    data = saved.read_bytes().replace(MODEL_TAG.encode(), tag.encode())
    saved.write_bytes(data[: data.index(b"#ASDF BLOCK INDEX")])
    return saved


@pytest.mark.parametrize("version", ["1.9.0", "1.0.1", "2.0.0"])
def test_newer_format_asks_to_upgrade(saved, version):
    _retagged(saved, f"{NAMESPACE}/tags/model-{version}")
    with pytest.raises(
        ValueError, match=rf"newer specutils-deepclean format .*model-{version}.*upgrade"
    ):
        load_model(saved)


@pytest.mark.parametrize(
    "tag",
    [
        f"{NAMESPACE}/tags/model-0.9.0",
        "asdf://example.org/other/tags/thing-1.0.0",
        f"{NAMESPACE}/tags/denoiser-1.0.0",
    ],
)
def test_foreign_or_unknown_tag_is_named(saved, tag):
    _retagged(saved, tag)
    with pytest.raises(ValueError, match=f"has tag {tag}, which this version does not read"):
        load_model(saved)


def test_missing_model_key(tmp_path):
    path = tmp_path / "other.asdf"
    asdf.AsdfFile({"spectrum": np.zeros(3)}).write_to(path)
    with pytest.raises(ValueError, match="has no 'model' entry"):
        load_model(path)


def test_untagged_model_node(tmp_path):
    path = tmp_path / "plain.asdf"
    asdf.AsdfFile({"model": {"class": "PCADenoiser"}}).write_to(path)
    with pytest.raises(ValueError, match="'model' entry is an untagged dict"):
        load_model(path)
    # an array (asdf reads it lazily: asking it for a tag after the file closed was an
    # OSError, "Attempt to load block from closed file")
    asdf.AsdfFile({"model": np.arange(3.0)}).write_to(path)
    with pytest.raises(ValueError, match="'model' entry is an untagged NDArrayType"):
        load_model(path)


def _truncate_in_blocks(path):
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xd3BLK") + 200])


def _truncate_in_yaml(path):
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"weights:")])


def _flip_block_bytes(path):
    data = bytearray(path.read_bytes())
    start = data.index(b"\xd3BLK") + 80
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _not_asdf(path):
    path.write_text("SIMPLE  =                    T\n")


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_truncate_in_blocks, "cannot load .*model.asdf as a model file"),
        (_truncate_in_yaml, "cannot load .*model.asdf as a model file: End of YAML"),
        (_flip_block_bytes, "cannot load .*model.asdf as a model file"),
        (_not_asdf, "cannot load .*model.asdf as a model file: it is not an ASDF file"),
        (_empty, "cannot load .*model.asdf as a model file"),
    ],
)
def test_damaged_files_give_value_error(saved, damage, match):
    damage(saved)
    with pytest.raises(ValueError, match=match):
        load_model(saved)


def test_load_pretrained_miles_pca():
    model = load_model("miles-pca")
    assert isinstance(model, PCADenoiser) and model.name == "miles-pca"
    assert model.medium == "air" and model.n_components == 40
    assert 3600 <= model.wavelength[0].to_value(u.AA) < model.wavelength[-1].to_value(u.AA) <= 7400
    assert model.config["n_pix"] == model.n_pix == model.mean.shape[0]
    prov = model.provenance
    assert prov.split == "train" and prov.data_name == "MILES" and prov.seed == 0
    # the script's path when the shipped file was written (now benchmarks/training/)
    assert len(prov.data_sha256) == 64 and prov.script == "benchmarks/train_pca.py"
    comps = model.components.double()
    torch.testing.assert_close(
        comps @ comps.T, torch.eye(40, dtype=torch.float64), atol=1e-5, rtol=0
    )


@needs_miles
def test_pretrained_miles_pca_reproduces_its_validation_metric():
    """Recompute the provenance's val metric from the real MILES val split."""
    from astropy.io import fits

    model = load_model("miles-pca")
    with fits.open(miles_file()) as hdul:
        wave = hdul["WAVE"].data
        keep = (wave >= model.wavelength[0].to_value(u.AA)) & (
            wave <= model.wavelength[-1].to_value(u.AA)
        )
        params = hdul["PARAMS"].data
        rows = (np.char.strip(params["split"].astype(str)) == "val") & ~params["bad"].astype(bool)
        flux = hdul["FLUX"].data[rows][:, keep].astype(np.float64)
        valid = hdul["MASK"].data[rows][:, keep] == 0
    np.testing.assert_allclose(wave[keep], model.wavelength.to_value(u.AA))
    flux /= np.array([np.median(f[v]) for f, v in zip(flux, valid, strict=True)])[:, None]
    proj = model.reconstruct(flux, ~valid)
    mse = np.median(np.where(valid, (proj - flux) ** 2, 0).sum(axis=1) / valid.sum(axis=1))
    assert mse == pytest.approx(model.provenance.metrics["val_median_mse_k40"], rel=1e-6)
    assert mse < 1e-4


def test_package_exposes_save_and_load():
    assert specutils_deepclean.load_model is load_model
    assert specutils_deepclean.save_model is save_model
    assert "miles-pca" in pretrained_models()


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("nope", ValueError, "unknown model name 'nope'; known names: .*miles-pca"),
        ("missing.asdf", FileNotFoundError, "model file missing.asdf not found"),
        (3, TypeError, "must be a str or a path"),
    ],
)
def test_load_bad_names(name, error, match):
    with pytest.raises(error, match=match):
        load_model(name)


def test_load_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_model(tmp_path)


def test_load_to_device(saved):
    assert load_model(saved, device="cpu").device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_to_cuda_and_project(model, saved):
    loaded = load_model(saved, device="cuda")
    assert loaded.device.type == "cuda"
    flux, missing = _batch()
    np.testing.assert_allclose(
        loaded.reconstruct(flux, missing), model.reconstruct(flux, missing), rtol=1e-6
    )


def test_registry():
    assert model_class("PCADenoiser") is PCADenoiser
    assert registry_name(PCADenoiser) == "PCADenoiser"
    assert set(MODEL_REGISTRY) >= {"PCADenoiser"}
    match = "unknown model class 'Evil'; known classes: .*PCADenoiser"
    with pytest.raises(ValueError, match=match):
        model_class("Evil")


_GOOD = dict(wavelength=WAVE, medium="air")


@pytest.mark.parametrize(
    ("config", "kwargs", "error", "match"),
    [
        ([1], {}, TypeError, "config must be a dict"),
        ({"n_components": 1}, {}, ValueError, "'architecture' entry"),
        ({"architecture": "pca", "x": {"a": 1}}, {}, TypeError, r"config\['x'\] must be a scalar"),
        ({"architecture": "pca", "x": [[[1]]]}, {}, TypeError, r"config\['x'\] must be a scalar"),
        ({"architecture": "pca", "x": float("nan")}, {}, ValueError, r"config\['x'\] is NaN"),
        (None, {"wavelength": np.arange(40.0)}, TypeError, "wavelength must be a Quantity"),
        (None, {"wavelength": WAVE.value * u.s}, ValueError, "length unit"),
        (None, {"wavelength": WAVE[:1]}, ValueError, "at least 2 pixels"),
        (None, {"medium": "Air"}, ValueError, "medium must be 'air' or 'vacuum'"),
        (None, {"classes": "AB"}, TypeError, "classes must be a sequence of str"),
        (None, {"extra": {"a": np.array(["x"])}}, TypeError, r"extra\['a'\] must be a numeric"),
        (None, {"extra": [1]}, TypeError, "extra must be a dict"),
        (None, {"provenance": {"seed": 1}}, TypeError, "provenance must be a Provenance"),
        (None, {"name": 5}, TypeError, "name must be a str"),
    ],
)
def test_model_constructor_rejects_bad_arguments(config, kwargs, error, match):
    config = (
        {"architecture": "pca", "n_components": 2, "n_pix": N_PIX} if config is None else config
    )
    with pytest.raises(error, match=match):
        PCADenoiser(config, **{**_GOOD, **kwargs})


def test_base_class_needs_build():
    with pytest.raises(NotImplementedError, match="must implement _build"):
        DeepCleanModel({"architecture": "x"}, **_GOOD)


def test_model_properties(model):
    assert model.name == "tiny" and model.n_pix == N_PIX
    assert model.version == specutils_deepclean.__version__
    assert model.config == {"architecture": "pca", "n_components": 3, "n_pix": N_PIX}
    assert "tiny" in repr(model) and "(air)" in repr(model)
    unnamed = PCADenoiser(model.config, **_GOOD)
    assert unnamed.name == "PCADenoiser"


def test_config_numpy_scalars_become_plain():
    config = {"architecture": "pca", "n_components": np.int64(2), "n_pix": N_PIX, "r": (1, 2)}
    model = PCADenoiser(config, **_GOOD)
    assert type(model.config["n_components"]) is int and model.config["r"] == [1, 2]


# --- PCADenoiser -----------------------------------------------------------------


def test_fit_recovers_subspace_and_fills_gaps():
    rng = np.random.default_rng(4)
    model = PCADenoiser.fit(_subspace_spectra(rng, 50), WAVE, n_components=3, medium="air")
    comps = model.components.double()
    torch.testing.assert_close(
        comps @ comps.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    truth = _subspace_spectra(rng, 6)
    missing = np.zeros(truth.shape, bool)
    missing[:, 10:25] = True
    np.testing.assert_allclose(
        model.reconstruct(np.where(missing, np.nan, truth), missing), truth, rtol=1e-5
    )


def test_missing_pixels_are_never_used(model):
    flux, missing = _batch()
    garbage = np.where(missing, 1e6, flux)
    nans = np.where(missing, np.nan, flux)
    out = model.reconstruct(garbage, missing)
    np.testing.assert_array_equal(out, model.reconstruct(nans, missing))
    np.testing.assert_array_equal(out, model.reconstruct(nans))
    assert np.all(np.isfinite(out))


def test_zero_ivar_equals_missing(model):
    flux, missing = _batch()
    ivar = np.where(missing, 0.0, 1.0)
    np.testing.assert_allclose(
        model.reconstruct(flux, ivar=ivar), model.reconstruct(flux, missing), rtol=1e-12
    )


def test_projection_matches_independent_least_squares(model):
    flux, missing = _batch()
    ivar = np.random.default_rng(5).uniform(0.5, 2.0, size=flux.shape)
    out = model.reconstruct(flux, missing, ivar)
    mean, comps = model.mean.double().numpy(), model.components.double().numpy()
    for row in range(flux.shape[0]):
        good = ~missing[row]
        scale = np.median(flux[row, good])
        w = np.sqrt(ivar[row, good])
        coef = np.linalg.lstsq(
            comps[:, good].T * w[:, None], (flux[row, good] / scale - mean[good]) * w, rcond=None
        )[0]
        np.testing.assert_allclose(out[row], scale * (mean + coef @ comps), rtol=1e-8)


def test_forward_batches_over_leading_axes(model):
    flux, missing = _batch()
    stacked = torch.as_tensor(np.stack([flux, flux[::-1]]))
    mask = torch.as_tensor(np.stack([missing, missing[::-1]]))
    out = model(stacked, mask)
    assert out.shape == stacked.shape and out.dtype == torch.float64
    for i in range(2):
        for j in range(flux.shape[0]):
            single = model(stacked[i, j], mask[i, j])
            torch.testing.assert_close(out[i, j], single, rtol=1e-12, atol=0)
    assert model(stacked.float(), mask).dtype == torch.float32


def test_fit_with_missing_pixels_imputes():
    rng = np.random.default_rng(6)
    flux = _subspace_spectra(rng, 40)
    missing = np.zeros(flux.shape, bool)
    missing[:8, 5:12] = True
    full = PCADenoiser.fit(flux, WAVE, n_components=3, medium="air")
    gappy = PCADenoiser.fit(
        np.where(missing, -5.0, flux), WAVE, n_components=3, medium="air", missing=missing
    )
    test = _subspace_spectra(rng, 3)
    np.testing.assert_allclose(gappy.reconstruct(test), full.reconstruct(test), rtol=1e-4)


def test_fit_imputes_when_no_spectrum_is_complete():
    rng = np.random.default_rng(9)
    flux = _subspace_spectra(rng, 40)
    missing = np.zeros(flux.shape, bool)
    for row, start in enumerate(rng.integers(0, N_PIX - 3, size=40)):
        missing[row, start : start + 3] = True
    full = PCADenoiser.fit(flux, WAVE, n_components=3, medium="air")
    one_round = PCADenoiser.fit(flux, WAVE, n_components=3, medium="air", missing=missing, n_iter=1)
    gappy = PCADenoiser.fit(
        flux, WAVE, n_components=3, medium="air", missing=missing, n_iter=60, tol=0
    )
    test = _subspace_spectra(rng, 3)
    assert np.abs(one_round.reconstruct(test) - full.reconstruct(test)).max() > 1e-3
    np.testing.assert_allclose(gappy.reconstruct(test), full.reconstruct(test), rtol=1e-5)


def test_fit_components_have_fixed_sign():
    rng = np.random.default_rng(7)
    model = PCADenoiser.fit(
        1 + 0.05 * rng.normal(size=(20, N_PIX)), WAVE, n_components=4, medium="air"
    )
    comps = model.components.numpy()
    assert np.all(comps[np.arange(4), np.abs(comps).argmax(axis=1)] > 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_components": 30}, ValueError, r"n_components must be in 1..19"),
        ({"n_components": 0}, ValueError, r"n_components must be in 1..19"),
        ({"n_components": 2.0}, TypeError, "n_components must be an int"),
        ({"flux": np.ones(N_PIX)}, ValueError, "flux must be 2-D"),
        ({"missing": np.zeros((3, 3), bool)}, ValueError, r"missing has shape \(3, 3\)"),
        (
            {"missing": np.eye(20, N_PIX, dtype=bool) | (np.arange(N_PIX) == 7)},
            ValueError,
            "pixel 7 is missing in every spectrum",
        ),
        (
            {"flux": -np.ones((20, N_PIX))},
            ValueError,
            "spectrum 0 has no valid pixel or a non-positive",
        ),
    ],
)
def test_fit_rejects_bad_input(kwargs, error, match):
    rng = np.random.default_rng(8)
    args = {"flux": 1 + 0.05 * rng.normal(size=(20, N_PIX)), "n_components": 2, **kwargs}
    flux = args.pop("flux")
    with pytest.raises(error, match=match):
        PCADenoiser.fit(flux, WAVE, medium="air", **args)


@pytest.mark.parametrize(
    ("flux", "missing", "match"),
    [
        (np.ones((2, N_PIX + 1)), None, "flux has 41 pixels, the model grid 40"),
        (np.ones((2, N_PIX)), np.ones((2, N_PIX), bool), "spectrum 0 has no valid pixel"),
        (np.vstack([np.ones(N_PIX), -np.ones(N_PIX)]), None, "spectrum 1 has no valid pixel"),
    ],
)
def test_forward_rejects_bad_input(model, flux, missing, match):
    with pytest.raises(ValueError, match=match):
        model.reconstruct(flux, missing)


def test_truncate(model):
    small = model.truncate(2)
    assert small.n_components == 2 and small.config["n_pix"] == N_PIX
    torch.testing.assert_close(small.components, model.components[:2])
    assert small.provenance == model.provenance and small.name == model.name
    with pytest.raises(ValueError, match=r"n_components must be in 1..3"):
        model.truncate(4)
