"""``specutils-deepclean train``: tiny telluric and denoiser trainings, resumable."""

import copy
import warnings

import numpy as np
import pytest

from specutils_deepclean import cli
from specutils_deepclean.datasets import load_examples
from specutils_deepclean.io.models import load_model

torch = pytest.importorskip("torch")


@pytest.fixture
def tiny_library(tmp_path):
    """The 8 example stars, eight times over, split 48 train / 16 val (a MILES-layout file)."""
    examples = load_examples()
    library = examples.take(np.tile(np.arange(len(examples)), 8))
    library.params = copy.deepcopy(library.params)
    rng = np.random.default_rng(0)
    library.flux = library.flux * rng.uniform(0.95, 1.05, size=(len(library), 1)).astype(
        np.float32
    )
    library.params["split"] = ["train"] * 48 + ["val"] * 16
    return library.write(tmp_path / "tiny_library.fits")


def test_train_tellurics_from_files_then_use_it(survey, tmp_path, capsys):
    paths, _ = survey
    model_path = tmp_path / "t.asdf"
    argv = ["train", "tellurics", *map(str, paths), "-o", str(model_path), "--epochs", "2",
            "--latent", "8", "--quiet", "--checkpoint", str(tmp_path / "ckpt.asdf")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(model_path)
    model = load_model(model_path)
    assert len(model.history["train_loss"]) == 2 and "telluric_lines" in model.extra
    assert cli.main(["detelluric", str(paths[0]), "-o", str(tmp_path / "out"),
                     "--model", str(model_path), "--quiet"]) == 0
    # the checkpoint resumes: asking for 3 epochs trains one more
    argv[argv.index("--epochs") + 1] = "3"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert len(load_model(model_path).history["train_loss"]) == 3


def test_train_usage_errors(tmp_path, capsys):
    existing = tmp_path / "m.asdf"
    existing.write_text("x")
    for argv, message in [
        (["tellurics", "-o", str(existing)], "exists"),
        (["tellurics", "-o", str(tmp_path / "n.asdf")], "give spectrum files"),
        (["tellurics", "x.fits", "-o", str(tmp_path / "n.asdf"), "--epochs", "0"], "--epochs"),
        (["denoiser", "x.fits", "-o", str(tmp_path / "n.asdf")], "library file"),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main(["train", *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err


def _cv_prefers_the_smallest_factor(monkeypatch):
    """Make the KDE bandwidth cross-validation pick the smallest factor of its grid.

    On a 48-star library the held-out likelihoods of the grid's factors differ by
    little, and which one wins depends on the CPU's floating-point details; on some
    machines it is the grid's edge, and the training warns.  Forced here, so every
    machine takes that path.
    """
    from specutils_deepclean.training import kde

    real = kde.held_out_log_likelihood

    def edge_wins(*args, **kwargs):
        scores = np.array(real(*args, **kwargs), dtype=float)
        scores[0] = np.max(scores) + 1.0
        return scores

    monkeypatch.setattr(kde, "held_out_log_likelihood", edge_wins)


def _train(argv) -> tuple[int, list[str]]:
    """``cli.main(argv)`` with the warnings recorded, not raised.

    A tiny training's fit diagnostics (bandwidth at the grid's edge, ...) depend on
    floating-point details; they are not what the tests of the command check.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(argv)
    return code, [str(w.message) for w in caught]


def test_train_denoiser_tiny_library_with_stages(tiny_library, tmp_path, capsys, monkeypatch):
    _cv_prefers_the_smallest_factor(monkeypatch)
    out = tmp_path / "d.asdf"
    stages = tmp_path / "stages"
    argv = ["train", "denoiser", "--library", str(tiny_library), "-o", str(out),
            "--epochs", "2", "--latent", "3", "--quiet", "--checkpoint", str(stages)]
    code, messages = _train(argv)
    assert code == 0
    assert any("smallest bandwidth factor" in m for m in messages)
    assert "val scores" in capsys.readouterr().out
    model = load_model(out)
    assert model.latent_dim == 3 and "generator_sigma" in model.extra
    assert model.provenance.split == "train"
    assert "val_class_accuracy_snr10" in model.provenance.metrics
    # the uncertainty scales were fitted on val: one calibration score per S/N level
    fitted = {k: v for k, v in model.provenance.metrics.items() if "calibration_fit" in k}
    assert len(fitted) == 5 and model.extra["sigma_scales"].shape == (2,)
    # the residual term's size was chosen on val among those the 48 train stars allow
    kept = model.provenance.metrics.get("val_residual_components")
    basis = model.extra.get("residual_basis", np.zeros((0, model.n_pix)))
    assert kept == basis.shape[0] and kept in (0, 40)
    # the continuum term's degree was chosen on val too (-1: no term)
    degree = model.provenance.metrics.get("val_continuum_degree")
    tau = model.extra.get("continuum_sigma", np.zeros(0))
    assert degree == tau.size - 1 and degree in (-1, 0, 1, 3, 5)
    assert sorted(p.name for p in stages.iterdir()) == ["generator.asdf", "noiseflow.asdf"]
    # A rerun loads the stages: same weights, same model.
    assert _train([*argv, "--overwrite"])[0] == 0
    again = load_model(out)
    pairs = zip(model.state_dict().items(), again.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        assert torch.equal(a, b), name
    # Stages made with other settings are refused, not silently reused.
    changed = [*argv[:argv.index("--latent")], "--latent", "4", *argv[argv.index("--latent") + 2:]]
    assert _train([*changed, "--overwrite"])[0] == 1
    assert "other settings (latent_dim" in capsys.readouterr().err


@pytest.mark.parametrize("levels", [[], [10.0, -2.0]])
def test_calibrate_uncertainty_needs_positive_snr_levels(levels):
    from specutils_deepclean.training.denoiser import calibrate_uncertainty

    with pytest.raises(ValueError, match="snr_levels"):
        calibrate_uncertainty(load_model("denoiser-miles"), None, snr_levels=levels)


@pytest.mark.parametrize("components", [[], [49], [-1]])
def test_fit_residual_basis_sizes_are_checked(tiny_library, components):
    from specutils_deepclean.datasets import load_library
    from specutils_deepclean.training.denoiser import fit_residual_basis

    model = load_model("denoiser-miles")
    with pytest.raises(ValueError, match="components must be sizes from 0 to 48"):
        fit_residual_basis(model, load_library(tiny_library), components=components)


@pytest.mark.parametrize("degrees, sigmas", [([16], [0.1]), ([1], [0.0]), ([-1], [0.1])])
def test_fit_continuum_term_settings_are_checked(tiny_library, degrees, sigmas):
    from specutils_deepclean.datasets import load_library
    from specutils_deepclean.training.denoiser import fit_continuum_term

    model = load_model("denoiser-miles")
    with pytest.raises(ValueError, match="degrees must lie in 0-15"):
        fit_continuum_term(model, load_library(tiny_library), degrees=degrees, sigmas=sigmas)
