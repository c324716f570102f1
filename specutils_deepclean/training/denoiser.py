"""Training a deep Bayesian denoiser on a stellar library (the shipped model's recipe).

:func:`train_denoiser` fits every component on the ``train`` stars of a library file
in the MILES layout (:func:`~specutils_deepclean.datasets.load_library`) and tunes on
its ``val`` stars; the ``test`` split is never read:

1. the isometric autoencoder generator
   (:func:`~specutils_deepclean.training.generator.train_generator`, Eq. 10) on the clean,
   median-normalised train spectra, best val epoch kept;
2. one Gaussian KDE per stellar class of the train latents
   (:func:`~specutils_deepclean.training.kde.train_kde`), bandwidth by held-out likelihood on the
   val latents; classes with too few stars merged;
3. the sigma-whitened NoiseFlow
   (:func:`~specutils_deepclean.training.noiseflow.train_noiseflow`) on simulator
   residuals ``(y - truth)`` of train stars at S/N 2-50 (sky residuals, cosmics,
   correlated noise), validated on val stars;
4. the assembled `~specutils_deepclean.models.denoiser.Denoiser`, with the
   generator's per-pixel RMS error on clean val spectra
   (``extra["generator_sigma"]``, added to its uncertainty), scored on simulated val
   observations (median MSE, class accuracy, calibration) that go into its
   provenance;
5. before that scoring, the residual term (:func:`fit_residual_basis`: the principal
   directions of the generator's error on the clean train spectra, their number
   chosen on simulated val observations), the continuum term
   (:func:`fit_continuum_term`: its degree and prior width chosen on simulated val
   observations) and then the two scales of its uncertainty
   (``extra["sigma_scales"]``) fitted on simulated val observations at every S/N
   level (:func:`calibrate_uncertainty`).

With ``checkpoint`` (a folder), the trained generator and flow are saved there as
ASDF files when their stage ends, and a rerun loads them instead of training again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..datasets import Library
from ..inference import denoise_arrays
from ..metrics import GAUSSIAN_COVERAGE, mse
from ..provenance import Provenance, file_sha256
from ..simulate import SNR_LEVELS, Simulator, prepare_truth

__all__ = ["calibrate_uncertainty", "fit_continuum_term", "fit_residual_basis", "train_denoiser"]

#: Candidate scales of the latent-posterior part and of the generator's error.
_LATENT_SCALES = np.geomspace(0.5, 8.0, 33)
_GENERATOR_SCALES = np.linspace(0.1, 1.5, 29)
#: Pixels per S/N level used in the grid search.
_GRID_PIXELS = 100_000
#: Candidate sizes of the residual basis (the largest sets its cost at inference).
RESIDUAL_COMPONENTS = (0, 40, 80, 160)
#: Candidate degrees and prior widths of the continuum term.
CONTINUUM_DEGREES = (0, 1, 3, 5)
CONTINUUM_SIGMAS = (0.03, 0.1, 0.3)


def _split(library: Library, wave: np.ndarray, split: str):
    stars = library.select(split=split, good=True)
    if len(stars) == 0:
        raise ValueError(f"the library {library.name} has no good stars in split {split!r}")
    truth, valid = prepare_truth(stars, wave, library.medium)
    labels = np.asarray(stars.params["class"]).astype(str)
    return truth, ~valid, labels


def _residuals(sim, truth, missing, *, copies: int, seed: int):
    """Whitened-flow training data: (y - truth, sigma, missing) over the S/N levels."""
    flux, sigma, miss = [], [], []
    rng = np.random.default_rng(seed)
    clean = np.where(missing, np.nan, truth)
    for _ in range(copies):
        snr = rng.choice(SNR_LEVELS, size=len(truth)).astype(float)
        obs = sim.observe(clean, snr, seed=int(rng.integers(2**31)))
        flux.append(obs.flux - obs.truth)
        sigma.append(obs.sigma)
        miss.append(obs.mask)
    return np.concatenate(flux), np.concatenate(sigma), np.concatenate(miss)


def _save_stage(module, path: Path, settings: dict) -> None:
    """A trained torch module's configuration, weights, history and the training
    ``settings`` that made it, as ASDF (no pickle)."""
    import asdf

    tree = {
        "config": module.config,
        "state": {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()},
        "history": {k: [float(x) for x in v] for k, v in module.history.items()},
        "settings": settings,
    }
    tmp = path.with_suffix(".part")
    try:
        asdf.AsdfFile(tree).write_to(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_stage(cls, path: Path, settings: dict):
    """A stage saved by `_save_stage`; ValueError if other ``settings`` made it."""
    import asdf
    import torch

    with asdf.open(path, memmap=False) as af:
        stored = dict(af.tree.get("settings") or {})
        changed = sorted(k for k in {*stored, *settings} if stored.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"the checkpoint {path} was trained with other settings ({', '.join(changed)}: "
                f"{ {k: stored.get(k) for k in changed} } there, "
                f"{ {k: settings.get(k) for k in changed} } now); delete it or use another "
                "checkpoint folder"
            )
        module = cls(**af["config"])
        module.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in af["state"].items()})
        module.history = {k: list(v) for k, v in af["history"].items()}
    return module.eval()


def calibrate_uncertainty(
    model,
    library: Library,
    *,
    snr_levels=SNR_LEVELS,
    seed: int = 0,
) -> dict:
    r"""Fit the two scales of a denoiser's uncertainty on simulated val observations.

    Every good ``val`` star of ``library`` is observed through the simulator at each
    S/N of ``snr_levels``, divided by its median as `~specutils_deepclean.denoise`
    does, and denoised (`Denoiser.map_estimate` with its defaults).
    The variance of the result is :math:`a^2 \sigma_z^2 + b^2 \sigma_G^2`: the latent
    posterior's part (``latent_sigma``, which dominates at low S/N) and the
    generator's own error (``extra["generator_sigma"]``, which dominates at high
    S/N).  :math:`(a, b)` is chosen on a grid to bring the calibration (the share of
    valid pixels with :math:`|s - \hat s| < \sigma`) closest to
    `~specutils_deepclean.metrics.GAUSSIAN_COVERAGE` (0.683) at the
    worst S/N level, and stored in ``model.extra["sigma_scales"]``.  The ``test``
    split is never read.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    snr_levels : sequence of float
        S/N of the simulated observations.
    seed : int
        Seed of the simulated observations.

    Returns
    -------
    dict
        ``sigma_scales`` [a, b], ``n_stars``, and the pooled calibration per S/N
        ``before`` (a = b = 1) and ``after``.
    """
    if len(snr_levels) == 0 or not all(float(x) > 0 for x in snr_levels):
        raise ValueError(f"snr_levels must be positive S/N values, got {list(snr_levels)!r}")
    wave = model.wavelength.to_value(library.wavelength.unit)
    truth, missing, _ = _split(library, wave, "val")
    sim = Simulator(wave, model.medium)
    floor = np.asarray(model.extra.get("generator_sigma", np.zeros(wave.size)), np.float64)
    rng = np.random.default_rng(seed)
    levels = []  # per S/N: squared error, latent variance, generator variance (valid pixels)
    for i, snr in enumerate(snr_levels):
        obs = sim.observe(np.where(missing, np.nan, truth), float(snr), seed=seed + i)
        # normalised by the noisy median, as `denoise` does, then back on the truth's scale
        result = denoise_arrays(model, obs.flux, obs.sigma, obs.mask)
        scale = np.broadcast_to(result.scale[:, None], truth.shape)[~missing]
        levels.append(
            (
                (result.flux[~missing] - truth[~missing]) ** 2,
                result.latent_sigma[~missing] ** 2,
                (np.broadcast_to(floor, truth.shape)[~missing] * scale) ** 2,
            )
        )

    def shares(a: float, b: float, parts) -> np.ndarray:
        return np.array([np.mean(e < a * a * v + b * b * g) for e, v, g in parts])

    # the grid search on a fixed random subset of pixels (the calibration to ~0.002)
    picks = [rng.choice(len(e), min(len(e), _GRID_PIXELS), replace=False) for e, _, _ in levels]
    subset = [tuple(x[pick] for x in level) for level, pick in zip(levels, picks, strict=True)]
    worst = {
        (a, b): float(np.max(np.abs(shares(a, b, subset) - GAUSSIAN_COVERAGE)))
        for a in _LATENT_SCALES
        for b in _GENERATOR_SCALES
    }
    a, b = min(worst, key=worst.get)
    model.extra["sigma_scales"] = np.array([a, b], dtype=np.float64)
    names = [str(x) for x in snr_levels]
    return {
        "sigma_scales": [float(a), float(b)],
        "n_stars": int(len(truth)),
        "snr_levels": [float(x) for x in snr_levels],
        "before": dict(zip(names, shares(1.0, 1.0, levels).round(4).tolist(), strict=True)),
        "after": dict(zip(names, shares(a, b, levels).round(4).tolist(), strict=True)),
    }


def fit_residual_basis(
    model,
    library: Library,
    *,
    components=RESIDUAL_COMPONENTS,
    snr_levels=SNR_LEVELS,
    seed: int = 0,
) -> dict:
    r"""Give a denoiser the residual term :math:`B a`, its size chosen on simulated val.

    The rows of :math:`B` are the principal directions of the generator's error
    :math:`s - G(E(s))` on the clean, median-normalised ``train`` stars of
    ``library`` (missing pixels count as zero error), :math:`\Lambda` their
    variances over those stars (the prior of :math:`a`; see
    `~specutils_deepclean.models.linear_terms`).  Each
    size in ``components`` (0: no term) is tried on the good ``val`` stars observed
    at each S/N of ``snr_levels``; the one with the smallest sum over the S/N of the
    log median MSE is kept in ``model.extra`` (``residual_basis``,
    ``residual_variance``; both removed for 0).  The ``test`` split is never read.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    components : sequence of int
        Candidate numbers of directions (>= 0, at most the number of train stars).
    snr_levels : sequence of float
        S/N of the simulated val observations.
    seed : int
        Seed of the simulated observations.

    Returns
    -------
    dict
        ``components`` (the size kept), ``n_train``, ``n_val`` and ``val_median_mse``:
        size -> S/N -> median MSE.
    """
    wave = model.wavelength.to_value(library.wavelength.unit)
    truth, missing, _ = _split(library, wave, "train")
    if len(components) == 0 or not all(0 <= int(k) <= len(truth) for k in components):
        raise ValueError(
            f"components must be sizes from 0 to {len(truth)} (the train stars), "
            f"got {list(components)!r}"
        )
    error = np.nan_to_num(_generator_error(model.generator, truth, missing))
    _, values, directions = np.linalg.svd(error, full_matrices=False)
    variances = values**2 / len(error)
    score = _val_scorer(model, library, snr_levels, seed)
    scores = {}
    for k in sorted({int(k) for k in components}):
        _set_residual_basis(model, directions[:k], variances[:k])
        scores[k] = score()
    best = min(scores, key=lambda k: float(np.sum(np.log(list(scores[k].values())))))
    _set_residual_basis(model, directions[:best], variances[:best])
    return {
        "components": best,
        "n_train": int(len(truth)),
        "n_val": score.n_val,
        "val_median_mse": {str(k): v for k, v in scores.items()},
    }


def fit_continuum_term(
    model,
    library: Library,
    *,
    degrees=CONTINUUM_DEGREES,
    sigmas=CONTINUUM_SIGMAS,
    snr_levels=SNR_LEVELS,
    seed: int = 0,
) -> dict:
    r"""Give a denoiser the continuum term, its degree and prior width chosen on val.

    The term multiplies the spectrum by :math:`1 + \sum_{k \le D} c_k P_k(x)`
    (Legendre polynomials over the model's grid, prior :math:`c_k \sim N(0,
    \tau^2)`; see `~specutils_deepclean.models.linear_terms`): the overall level,
    which the median normalisation of a noisy spectrum gets wrong and the generator
    cannot change, and the continuum's shape.  Every
    pair of ``degrees`` and ``sigmas``, and no term, is tried on the good ``val``
    stars observed at each S/N of ``snr_levels``; the one with the smallest sum over
    the S/N of the log median MSE is kept in ``model.extra["continuum_sigma"]``
    (removed when no term wins).  The ``test`` split is never read.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    degrees : sequence of int
        Candidate polynomial degrees D (0 to 15).
    sigmas : sequence of float
        Candidate prior widths :math:`\tau` (positive).
    snr_levels : sequence of float
        S/N of the simulated val observations.
    seed : int
        Seed of the simulated observations.

    Returns
    -------
    dict
        ``degree`` and ``sigma`` kept (None for no term), ``n_val`` and
        ``val_median_mse``: ``"none"`` or ``"D<degree>_sigma<sigma>"`` -> S/N ->
        median MSE.
    """
    if not all(0 <= int(d) < 16 for d in degrees) or not all(float(t) > 0 for t in sigmas):
        raise ValueError(
            f"degrees must lie in 0-15 and sigmas be positive, got {list(degrees)!r} "
            f"and {list(sigmas)!r}"
        )
    score = _val_scorer(model, library, snr_levels, seed)
    model.extra.pop("continuum_sigma", None)
    candidates = {"none": None}
    candidates.update(
        {f"D{int(d)}_sigma{float(t):g}": (int(d), float(t)) for d in degrees for t in sigmas}
    )
    scores = {}
    for key, setting in candidates.items():
        _set_continuum(model, setting)
        scores[key] = score()
    best = min(scores, key=lambda k: float(np.sum(np.log(list(scores[k].values())))))
    _set_continuum(model, candidates[best])
    degree, sigma = candidates[best] or (None, None)
    return {"degree": degree, "sigma": sigma, "n_val": score.n_val, "val_median_mse": scores}


def _set_continuum(model, setting) -> None:
    """Store the continuum term (degree, sigma) in ``model.extra``, or remove it (None)."""
    if setting is None:
        model.extra.pop("continuum_sigma", None)
        return
    degree, sigma = setting
    model.extra["continuum_sigma"] = np.full(degree + 1, sigma, dtype=np.float64)


def _val_scorer(model, library: Library, snr_levels, seed: int):
    """A function scoring ``model`` as it is when called: S/N -> median MSE on val.

    The good ``val`` stars are observed once at each S/N (seeds ``seed + i``) and
    median-normalised as `~specutils_deepclean.denoise` does; every call denoises
    them with `Denoiser.map_estimate`'s defaults.  ``n_val`` is set on the function.
    """
    wave = model.wavelength.to_value(library.wavelength.unit)
    truth, missing, _ = _split(library, wave, "val")
    sim = Simulator(wave, model.medium)
    observed = []
    for i, snr in enumerate(snr_levels):
        obs = sim.observe(np.where(missing, np.nan, truth), float(snr), seed=seed + i)
        observed.append((f"{snr:g}", obs.flux, obs.sigma, obs.mask))

    def score() -> dict:
        return {
            key: float(
                np.median(mse(denoise_arrays(model, flux, sigma, mask).flux, truth, mask=missing))
            )
            for key, flux, sigma, mask in observed
        }

    score.n_val = int(len(truth))
    return score


def _generator_error(generator, truth: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """``G(E(s)) - s`` of clean spectra ``s`` (float64), NaN at missing pixels."""
    import torch

    with torch.no_grad():
        recon, _ = generator(
            torch.as_tensor(np.where(missing, 1.0, truth)), torch.as_tensor(missing)
        )
    return np.where(missing, np.nan, recon.double().numpy() - truth)


def _set_residual_basis(model, basis: np.ndarray, variance: np.ndarray) -> None:
    """Store a residual basis in ``model.extra`` (or remove it when empty)."""
    if len(basis) == 0:
        model.extra.pop("residual_basis", None)
        model.extra.pop("residual_variance", None)
        return
    model.extra["residual_basis"] = basis.astype(np.float32)
    model.extra["residual_variance"] = variance.astype(np.float64)


def _generator_stage(train, val, settings: dict, folder: Path | None, progress: bool):
    """Stage 1: the generator on the clean train spectra (or its checkpoint)."""
    from ..models.generator import IsometricAutoencoder
    from .generator import train_generator

    stage = None if folder is None else folder / "generator.asdf"
    if stage is not None and stage.exists():
        return _load_stage(IsometricAutoencoder, stage, settings)
    gen = train_generator(
        train[0], train[1], latent_dim=settings["latent_dim"], val=(val[0], val[1]),
        epochs=settings["generator_epochs"], batch_size=32, lr=2e-3,
        isometry_weight=settings["isometry_weight"], delta=0.1, seed=settings["seed"],
        noise_augment=0.02, tilt_augment=0.05, progress=progress,
    )  # fmt: skip
    if stage is not None:
        _save_stage(gen, stage, settings)
    return gen


def _prior_stage(gen, train, val):
    """Stage 2: the per-class KDE of the train latents, bandwidths on the val latents."""
    import torch

    from .kde import train_kde

    with torch.no_grad():
        z_train, z_val = (
            gen.encode(torch.as_tensor(np.nan_to_num(part[0], nan=1.0)), torch.as_tensor(part[1]))
            .numpy()
            for part in (train, val)
        )
    return train_kde(z_train, train[2], bandwidth="cv", val_latents=z_val, val_labels=val[2])


def _noiseflow_stage(sim, train, val, settings: dict, folder: Path | None):
    """Stage 3: the whitened NoiseFlow on simulator residuals (or its checkpoint)."""
    from ..models.noiseflow import NoiseFlow
    from .noiseflow import train_noiseflow

    stage = None if folder is None else folder / "noiseflow.asdf"
    if stage is not None and stage.exists():
        return _load_stage(NoiseFlow, stage, settings)
    seed = settings["seed"]
    res_train = _residuals(sim, *train[:2], copies=settings["flow_copies"], seed=seed + 1)
    res_val = _residuals(sim, *val[:2], copies=1, seed=seed + 2)
    flow = train_noiseflow(*res_train, epochs=settings["flow_epochs"], seed=seed, val=res_val)
    if stage is not None:
        _save_stage(flow, stage, settings)
    return flow


def train_denoiser(
    library: Library,
    *,
    wave_range: tuple[float, float] = (3600.0, 7400.0),
    latent_dim: int = 16,
    generator_epochs: int = 600,
    isometry_weight: float = 30.0,
    flow_epochs: int = 15,
    flow_copies: int = 3,
    val_snr: float = 10.0,
    val_count: int = 40,
    seed: int = 0,
    name: str = "denoiser",
    script: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Train a `~specutils_deepclean.models.denoiser.Denoiser` on a library's train split.

    Parameters
    ----------
    library : `~specutils_deepclean.datasets.Library`
        Stars with ``split`` and ``class`` parameters (the MILES layout).
    wave_range : tuple of float
        The model grid: the library's pixels inside this range (Angstrom).
    latent_dim : int
        Size of the latent space.
    generator_epochs, isometry_weight : int, float
        Generator training length and the weight of the isometry term.
    flow_epochs, flow_copies : int
        NoiseFlow training length and simulated observations per train star.
    val_snr, val_count : float, int
        S/N and number of the val stars the assembled model is scored on.
    seed : int
        Seeds every stage (a CPU run is reproducible).
    name : str
        The model's name.
    script : str, optional
        The command that ran this, for the provenance.
    checkpoint : str or path-like, optional
        Folder for the stage files (``generator.asdf``, ``noiseflow.asdf``); stages
        found there are loaded, not trained again.
    progress : bool
        Progress bar over the generator's epochs.

    Returns
    -------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        With the val scores in ``provenance.metrics``.
    summary : dict
        Classes, merges, sizes of the splits, the scores and the time of each stage.
    """
    from ..metrics import calibration
    from ..models.denoiser import Denoiser

    folder = None if checkpoint is None else Path(checkpoint)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    times = {}
    full = library.wavelength.to_value("Angstrom")
    wave = full[(full >= wave_range[0]) & (full <= wave_range[1])]
    if wave.size < 64:
        raise ValueError(f"only {wave.size} library pixels lie in {wave_range} Angstrom")
    train = _split(library, wave, "train")
    val = _split(library, wave, "val")

    # what each stage depends on: a checkpoint made with other values is refused
    data = {"library": library.name, "n_train": len(train[0]), "n_pix": int(wave.size)}
    gen_settings = {
        **data,
        "latent_dim": latent_dim,
        "generator_epochs": generator_epochs,
        "isometry_weight": float(isometry_weight),
        "seed": seed,
    }
    flow_settings = {**data, "flow_epochs": flow_epochs, "flow_copies": flow_copies, "seed": seed}

    start = time.perf_counter()
    gen = _generator_stage(train, val, gen_settings, folder, progress)
    times["generator_s"] = time.perf_counter() - start

    start = time.perf_counter()
    prior = _prior_stage(gen, train, val)
    times["kde_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sim = Simulator(wave, library.medium)
    flow = _noiseflow_stage(sim, train, val, flow_settings, folder)
    times["noiseflow_s"] = time.perf_counter() - start

    provenance = Provenance(
        data_name=library.name,
        data_path=str(library.path),
        data_sha256=file_sha256(library.path) if library.path else "",
        data_description=(
            f"good {library.name} stars, grid {wave[0]:.1f}-{wave[-1]:.1f} Angstrom "
            f"({library.medium}); generator and KDE on clean train spectra, NoiseFlow on "
            "simulator residuals of train stars at S/N 2-50; tuned on val"
        ),
        split="train",
        seed=seed,
        script=script or "specutils_deepclean.training.denoiser.train_denoiser",
    )
    # The generator's own error on clean val spectra, per pixel: added in quadrature
    # to the latent-posterior uncertainty at inference (honest error bars at high S/N).
    residual = _generator_error(gen, val[0], val[1])
    model = Denoiser.from_parts(
        gen, prior, {"whitened": flow},
        wavelength=wave * library.wavelength.unit, medium=library.medium,
        provenance=provenance, name=name,
        extra={"generator_sigma": np.sqrt(np.nanmean(residual**2, axis=0)).astype(np.float32)},
    )

    start = time.perf_counter()
    residual_fit = fit_residual_basis(
        model,
        library,
        components=[k for k in RESIDUAL_COMPONENTS if k <= len(train[0])],
        seed=seed + 5,
    )
    times["val_residual_basis_s"] = time.perf_counter() - start

    start = time.perf_counter()
    continuum_fit = fit_continuum_term(model, library, seed=seed + 6)
    times["val_continuum_term_s"] = time.perf_counter() - start

    start = time.perf_counter()
    calibrated = calibrate_uncertainty(model, library, seed=seed + 4)
    times["val_calibration_s"] = time.perf_counter() - start

    start = time.perf_counter()
    # An evenly spaced subset of val keeps the final scoring cheap.
    rows = np.linspace(0, len(val[0]) - 1, min(val_count, len(val[0]))).astype(int)
    scored = tuple(part[rows] for part in val)
    obs = sim.observe(np.where(scored[1], np.nan, scored[0]), val_snr, seed=seed + 3)
    result = model.map_estimate(obs.flux, obs.sigma, obs.mask)
    times["val_inference_s"] = time.perf_counter() - start
    names = np.array(result.class_names)
    metrics = {
        f"val_median_mse_snr{val_snr:g}": float(
            np.nanmedian(mse(result.flux, scored[0], mask=scored[1]))
        ),
        f"val_class_accuracy_snr{val_snr:g}": float(np.mean(names[result.map_class] == scored[2])),
        "val_spectra_scored": float(len(rows)),
        f"val_calibration_snr{val_snr:g}": float(
            calibration(result.flux, result.flux_sigma, scored[0], mask=scored[1]).pooled
        ),
        "val_generator_floor_mse": float(min(gen.history["val"])),
        "val_noiseflow_nll": float(min(flow.history["val"])),
        "val_residual_components": float(residual_fit["components"]),
        "val_continuum_degree": float(
            -1 if continuum_fit["degree"] is None else continuum_fit["degree"]
        ),
    }
    metrics.update({f"val_calibration_fit_snr{k}": v for k, v in calibrated["after"].items()})
    model.provenance = Provenance(**{**provenance.to_dict(), "metrics": metrics})
    summary = {
        "seed": seed,
        "latent_dim": latent_dim,
        "classes": list(prior.class_names),
        "merges": dict(prior.merges),
        "n_train": int(len(train[0])),
        "n_val": int(len(val[0])),
        "metrics": metrics,
        "residual_basis": residual_fit,
        "continuum_term": continuum_fit,
        "calibration": calibrated,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    return model, summary
