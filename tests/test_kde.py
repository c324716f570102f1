"""Per-class KDE priors: densities against scipy, gradients, bandwidth rules, merges, OOD score."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import logsumexp
from scipy.stats import gaussian_kde, norm

from specutils_deepclean.models.prior import KDEPrior
from specutils_deepclean.training.kde import (
    held_out_log_likelihood,
    scott_factor,
    silverman_factor,
    train_kde,
)

# The NumPy conveniences of the deprecated module (the prior's own methods are the API).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", AstropyDeprecationWarning)
    from specutils_deepclean.kde import class_posterior, evaluate, ood_score, sample


def _two_classes(seed=0, n_a=60, n_b=40, n_dim=3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_a, n_dim)) @ np.diag(np.arange(1.0, n_dim + 1))
    b = rng.normal(size=(n_b, n_dim)) + 4.0
    return a, b, rng


def _scipy_prior(a, b):
    kdes = [gaussian_kde(a.T), gaussian_kde(b.T)]
    prior = KDEPrior(np.vstack([a, b]), [len(a), len(b)], [k.covariance for k in kdes], ["A", "B"])
    return prior, kdes


@pytest.fixture
def labelled():
    """Gaussian classes in 2-D: A at (0, 0), B at (6, 0), K at (0, 6); a 2-point O near B."""
    rng = np.random.default_rng(3)
    centres = {"A": (0.0, 0.0), "B": (6.0, 0.0), "K": (0.0, 6.0), "O": (7.0, 0.5)}
    sizes = {"A": 40, "B": 30, "K": 50, "O": 2}
    z = np.concatenate([rng.normal(centres[c], 0.7, (sizes[c], 2)) for c in centres])
    labels = np.concatenate([[c] * sizes[c] for c in centres])
    return z, labels


# --------------------------------------------------------------------------- densities


def test_log_prob_matches_scipy():
    a, b, rng = _two_classes()
    prior, kdes = _scipy_prior(a, b)
    z = rng.normal(0, 3, size=(25, 3))
    expected = np.stack([k.logpdf(z.T) for k in kdes], axis=-1)
    got = prior.log_prob(torch.from_numpy(z))
    assert got.dtype == torch.float64
    assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    assert_allclose(evaluate(prior, z), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("rule", "scipy_rule"), [("scott", "scott"), ("silverman", "silverman"), (0.3, 0.3)]
)
def test_fit_kde_rules_match_scipy(rule, scipy_rule):
    a, _, rng = _two_classes()
    prior = train_kde(a, ["A"] * len(a), bandwidth=rule, shrinkage=0.0)
    kde = gaussian_kde(a.T, bw_method=scipy_rule)
    z = rng.normal(size=(10, 3))
    assert_allclose(evaluate(prior, z)[:, 0], kde.logpdf(z.T), rtol=0, atol=1e-6)
    assert_allclose(prior.factors, [kde.factor])
    assert_allclose(prior.bandwidths[0].numpy(), kde.covariance, rtol=1e-12)


def test_rule_factors_by_hand():
    assert scott_factor(64, 2) == pytest.approx(64 ** (-1 / 6))
    assert silverman_factor(64, 2) == pytest.approx((64 * 4 / 4) ** (-1 / 6))


def test_all_classes_equal_per_class_loop():
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.from_numpy(rng.normal(0, 3, size=(4, 5, 3)))
    all_classes = prior.log_prob(z)
    assert all_classes.shape == (4, 5, 2)
    for k, name in enumerate(prior.class_names):
        assert_allclose(all_classes[..., k].numpy(), prior.log_prob_class(z, k).numpy(), rtol=1e-12)
        assert_allclose(
            all_classes[..., k].numpy(), prior.log_prob_class(z, name).numpy(), rtol=1e-12
        )
    c = torch.tensor([1, 0, 1, 1, 0])
    assert_allclose(
        prior.log_prob(z, c).numpy(),
        torch.gather(all_classes, -1, c.expand(4, 5)[..., None])[..., 0],
    )


def test_paired_equals_diagonal_of_all_classes():
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.from_numpy(rng.normal(0, 3, size=(6, 2, 3)))  # one latent per class
    full = prior.log_prob(z)  # (6, 2, 2)
    assert_allclose(
        prior.log_prob_paired(z).numpy(), torch.diagonal(full, dim1=-2, dim2=-1).numpy(), rtol=1e-12
    )
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2, 3\)"):
        prior.log_prob_paired(z[:, :1])


def test_distribution_forward_matches_log_prob():
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.from_numpy(rng.normal(0, 3, size=(7, 3)))
    dist = prior()
    assert dist.batch_shape == (2,) and dist.event_shape == (3,)
    assert_allclose(dist.log_prob(z[:, None, :]).numpy(), prior.log_prob(z).numpy(), rtol=1e-10)
    one = prior(torch.tensor([1, 1, 0]))
    assert one.sample((4,)).shape == (4, 3, 3)


def test_chunked_evaluation_is_identical(monkeypatch):
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.from_numpy(rng.normal(size=(50, 3)))
    whole = prior.log_prob(z)
    monkeypatch.setattr(prior, "max_elements", 7 * 2 * 60)  # 7 queries per chunk
    assert_allclose(prior.log_prob(z).numpy(), whole.numpy(), rtol=1e-13)


def test_gradients_match_finite_differences():
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.from_numpy(rng.normal(1, 1, size=(3, 3))).requires_grad_(True)
    assert torch.autograd.gradcheck(prior.log_prob, (z,))
    pairs = torch.from_numpy(rng.normal(1, 1, size=(2, 2, 3))).requires_grad_(True)
    assert torch.autograd.gradcheck(prior.log_prob_paired, (pairs,))
    # a single kernel: the gradient is -H^-1 (z - x), by hand
    one = KDEPrior([[1.0, -1.0]], [1], [[[2.0, 0.0], [0.0, 0.5]]], ["A"])
    point = torch.tensor([[2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    one.log_prob(point).sum().backward()
    assert_allclose(point.grad.numpy(), [[-0.5, -2.0]])


def test_float32_and_device(device):
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = rng.normal(size=(5, 3))
    expected = prior.log_prob(torch.from_numpy(z)).numpy()
    moved = prior.to(device=device, dtype=torch.float32)
    got = moved.log_prob(torch.as_tensor(z, dtype=torch.float32, device=device))
    assert got.dtype == torch.float32 and got.device.type == torch.device(device).type
    assert_allclose(got.cpu().numpy(), expected, rtol=1e-4)
    assert prior.state_dict() == {}  # stored through to_arrays, not as weights


# --------------------------------------------------------------------------- bandwidth selection


def test_held_out_log_likelihood_by_hand():
    a, _, rng = _two_classes(n_a=30)
    cov = np.cov(a, rowvar=False)
    held = rng.normal(size=(8, 3))
    factors = np.array([0.4, 0.9])
    expected = [np.mean(gaussian_kde(a.T, bw_method=h).logpdf(held.T)) for h in factors]
    assert_allclose(held_out_log_likelihood(a, cov, factors, held), expected, rtol=1e-10)
    loo = [
        np.mean([gaussian_kde(np.delete(a, i, 0).T, bw_method=h).logpdf(a[i]) for i in range(30)])
        for h in factors
    ]
    # gaussian_kde without point i uses that subset's covariance, so rebuild with the full one
    manual = []
    for h in factors:
        inv = np.linalg.inv(h**2 * cov)
        d = a[:, None, :] - a[None, :, :]
        q = -0.5 * np.einsum("ijk,kl,ijl->ij", d, inv, d)
        np.fill_diagonal(q, -np.inf)
        norm = -0.5 * np.log(np.linalg.det(2 * np.pi * h**2 * cov)) - np.log(29)
        manual.append(np.mean(logsumexp(q, axis=1) + norm))
    assert_allclose(held_out_log_likelihood(a, cov, factors), manual, rtol=1e-10)
    assert not np.allclose(manual, loo)  # the two estimates differ: the check is not vacuous


@pytest.mark.parametrize("use_val", [True, False])
def test_cv_factor_near_scott_on_a_gaussian(use_val):
    rng = np.random.default_rng(11)
    train = rng.normal(size=(400, 2)) @ np.array([[1.0, 0.5], [0.0, 2.0]])
    val = rng.normal(size=(400, 2)) @ np.array([[1.0, 0.5], [0.0, 2.0]])
    kwargs = {"val_latents": val, "val_labels": ["G"] * 400} if use_val else {}
    prior = train_kde(train, ["G"] * 400, bandwidth="cv", **kwargs)
    ratio = prior.factors[0] / scott_factor(400, 2)
    assert 0.6 < ratio < 1.6
    assert prior.bandwidth_rule == "cv"


def test_cv_uses_validation_points():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(100, 1))
    # held-out stars spread wider than the training stars: wider kernels win
    wide_val = rng.normal(0, 1.5, size=(100, 1))
    narrow = train_kde(train, ["G"] * 100, bandwidth="cv").factors[0]
    wide = train_kde(
        train, ["G"] * 100, bandwidth="cv", val_latents=wide_val, val_labels=["G"] * 100
    ).factors[0]
    assert wide > 2 * narrow


def test_cv_warns_at_grid_edge():
    a, _, _ = _two_classes()
    with pytest.warns(AstropyUserWarning, match="smallest bandwidth factor of the grid.*'A'"):
        train_kde(a, ["A"] * len(a), bandwidth="cv", cv_grid=[5.0, 10.0, 20.0])


# --------------------------------------------------------------------------- sampling and starts


def test_sample_moments_and_determinism():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(200, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]]) + [1.0, -2.0]
    prior = train_kde(points, ["F"] * 200)
    draws = sample(prior, 40000, "F", seed=1)
    assert draws.shape == (40000, 2)
    # the KDE is a mixture: mean of the points, covariance (biased) of the points plus H
    assert_allclose(draws.mean(axis=0), points.mean(axis=0), atol=0.02)
    expected_cov = np.cov(points, rowvar=False, ddof=0) + prior.bandwidths[0].numpy()
    assert_allclose(np.cov(draws, rowvar=False), expected_cov, atol=0.03)
    assert_array_equal(sample(prior, 5, "F", seed=7), sample(prior, 5, "F", seed=7))
    assert not np.array_equal(sample(prior, 5, "F", seed=7), sample(prior, 5, "F", seed=8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(prior.sample(6, 0, generator=g1), prior.sample(6, 0, generator=g2))


@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_sample_bad_n(n):
    prior = KDEPrior([[0.0]], [1], [[[1.0]]], ["A"])
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        prior.sample(n, "A")


def test_starts_are_separated_training_points(labelled):
    z, labels = labelled
    prior = train_kde(z, labels)
    starts = prior.starts(3)
    assert starts.shape == (prior.n_classes, 3, 2)
    for k in range(prior.n_classes):
        pts = prior.points(k)
        for s in starts[k]:
            assert torch.any(torch.all(pts == s, dim=-1))
        # the best start is the point of highest leave-one-out density
        assert torch.equal(starts[k, 0], pts[torch.argmax(prior._loo_log_prob(k))])
        white = (starts[k] - starts[k, :1]) @ torch.linalg.inv(
            torch.linalg.cholesky(prior.bandwidths[k])
        ).T
        assert torch.all(torch.linalg.vector_norm(white[1:], dim=-1) >= 2.0)
    tiny = KDEPrior([[0.0], [1.0]], [2], [[[0.1]]], ["A"])
    assert tiny.starts(4).shape == (1, 4, 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        prior.starts(0)


# --------------------------------------------------------------------------- merges


def test_small_class_merged_into_nearest(labelled):
    z, labels = labelled
    prior = train_kde(z, labels, min_class_size=5)
    assert prior.class_names == ("A", "B", "K")
    assert prior.merges == {"O": "B"}
    assert prior.class_index("O") == prior.class_index("B") == 1
    assert_array_equal(prior.counts, [40, 32, 50])
    # the two O stars are now kernels of B
    o_points = torch.from_numpy(z[labels == "O"])
    assert all(torch.any(torch.all(prior.points("B") == p, dim=-1)) for p in o_points)


def test_explicit_merge_map_honoured(labelled):
    z, labels = labelled
    prior = train_kde(z, labels, merge_map={"O": "K"})
    assert prior.merges == {"O": "K"}
    assert_array_equal(prior.counts, [40, 30, 52])


def test_merge_chain_followed(labelled):
    z, labels = labelled
    keep = labels != "B"
    z, labels = (
        np.concatenate([z[keep], z[labels == "B"][:3]]),
        np.concatenate([labels[keep], ["B"] * 3]),
    )
    # O -> B explicitly, B (now 3 + 2 = 5 < 6 stars) merged automatically into its nearest class
    prior = train_kde(z, labels, merge_map={"O": "B"}, min_class_size=6)
    assert prior.class_names == ("A", "K")
    assert set(prior.merges) == {"O", "B"} and prior.merges["O"] == prior.merges["B"]


def test_classes_order_kept(labelled):
    z, labels = labelled
    prior = train_kde(z, labels, classes=["O", "B", "A", "K"])
    assert prior.class_names == ("B", "A", "K")
    # a listed class without training stars is fine once it has a target
    prior = train_kde(z, labels, classes=["A", "B", "K", "M", "O"], merge_map={"M": "K"})
    assert prior.merges == {"M": "K", "O": "B"}
    assert prior.class_index("M") == prior.class_index("K")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ["A"] * 5}, "one label per latent"),
        ({"latents": "nan"}, "latents must be finite"),
        ({"latents": np.zeros(10)}, r"2-D array \(N, L\)"),
        ({"classes": ["A", "B", "K", "O", "M"]}, "class 'M' has no training points"),
        ({"classes": ["A", "B"]}, "not in classes"),
        ({"bandwidth": "scot"}, "unknown bandwidth rule 'scot'"),
        ({"bandwidth": -1.0}, "positive float"),
        ({"bandwidth": np.inf}, "must be finite"),
        ({"min_class_size": 1}, "min_class_size must be an int >= 2"),
        ({"min_class_size": 1000}, "no class has min_class_size=1000"),
        ({"merge_map": {"O": "X"}}, "names a class not in"),
        ({"merge_map": {"O": "O"}}, "into itself"),
        ({"merge_map": {"O": "B", "B": "O"}}, "cycle"),
        ({"shrinkage": 2.0}, "shrinkage must be 'auto' or a float"),
        ({"shrinkage": "lots"}, "shrinkage must be 'auto' or a float"),
        ({"bandwidth": "cv", "val_labels": ["A"]}, "both val_latents and val_labels"),
        (
            {"bandwidth": "cv", "val_latents": np.zeros((2, 2)), "val_labels": ["Z", "A"]},
            r"val_labels \['Z'\]",
        ),
        (
            {"bandwidth": "cv", "val_latents": np.zeros((2, 3)), "val_labels": ["A", "A"]},
            "3 dimensions",
        ),
        ({"bandwidth": "cv", "cv_grid": [1.0]}, "cv_grid must be"),
    ],
)
def test_fit_kde_bad_input(labelled, kwargs, match):
    z, labels = labelled
    args = {"latents": z, "labels": labels, **kwargs}
    if isinstance(args["latents"], str):
        args["latents"] = z.copy()
        args["latents"][3, 1] = np.nan
    with pytest.raises(ValueError, match=match):
        train_kde(args.pop("latents"), args.pop("labels"), **args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([[0.0], [np.nan]], [2], [[[1.0]]], ["A"]), "points must be finite"),
        (([[0.0], [1.0]], [3], [[[1.0]]], ["A"]), "counts sum to 3"),
        (([[0.0], [1.0]], [2, 0], [[[1.0]], [[1.0]]], ["A", "B"]), "positive integers"),
        (([[0.0], [1.0]], [2], [[[-1.0]]], ["A"]), "positive definite"),
        (([[0.0, 0.0]], [1], [[[1.0, 0.5], [0.0, 1.0]]], ["A"]), "symmetric"),
        (([[0.0], [1.0]], [2], [[1.0]], ["A"]), r"shape \(1, 1, 1\)"),
        (([[0.0], [1.0]], [1, 1], [[[1.0]], [[1.0]]], ["A", "A"]), "unique names"),
    ],
)
def test_prior_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        KDEPrior(*args)


def test_prior_bad_merges_and_classes():
    good = ([[0.0], [1.0]], [2], [[[1.0]]], ["A"])
    with pytest.raises(ValueError, match="target must be one of"):
        KDEPrior(*good, merges={"O": "B"})
    with pytest.raises(TypeError, match="class_names must be a sequence of str"):
        KDEPrior(*good[:3], "A")
    prior = KDEPrior(*good, merges={"O": "A"})
    for bad in ("X", 1, True):
        with pytest.raises(ValueError, match="class"):
            prior.class_index(bad)
    with pytest.raises(TypeError, match="z must be a floating-point torch.Tensor, got ndarray"):
        prior.log_prob(np.zeros((1, 1)))
    with pytest.raises(TypeError, match="got torch.int64 tensor"):
        prior.log_prob(torch.zeros((1, 1), dtype=torch.int64))
    with pytest.raises(ValueError, match="last axis of length 1"):
        prior.log_prob(torch.zeros(2, 3))


# --------------------------------------------------------------------------- storage


def test_arrays_round_trip(labelled):
    z, labels = labelled
    prior = train_kde(z, labels, bandwidth="cv")
    arrays, config = prior.to_arrays(), prior.to_config()
    assert all(a.dtype.kind in "if" for a in arrays.values())
    config = json.loads(json.dumps(config))  # plain JSON survives
    copy = KDEPrior.from_arrays({k: v.copy() for k, v in arrays.items()}, config)
    query = torch.from_numpy(np.random.default_rng(0).normal(0, 4, size=(20, 2)))
    assert torch.equal(copy.log_prob(query), prior.log_prob(query))
    assert copy.class_names == prior.class_names and copy.merges == prior.merges == {"O": "B"}
    assert_array_equal(copy.factors, prior.factors)
    assert copy.bandwidth_rule == "cv"
    with pytest.raises(ValueError, match="missing kde_points"):
        KDEPrior.from_arrays({}, config)
    with pytest.raises(ValueError, match="pairs"):
        KDEPrior.from_arrays(arrays, {**config, "kde_merges": ["OB"]})


# --------------------------------------------------------------------- OOD score and posterior


def test_ood_score_uniform_in_distribution_and_small_far_away():
    rng = np.random.default_rng(4)
    cov = np.array([[1.0, 0.4], [0.4, 0.5]])
    train = rng.multivariate_normal([0, 0], cov, size=500)
    prior = train_kde(train, ["K"] * 500)
    fresh = rng.multivariate_normal([0, 0], cov, size=2000)
    scores = ood_score(prior, fresh)
    assert scores.shape == (2000,)
    assert scores.mean() == pytest.approx(0.5, abs=0.05)
    assert_allclose(np.quantile(scores, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.06)
    assert_array_equal(ood_score(prior, [[20.0, -20.0], [8.0, 8.0]]), [0.0, 0.0])
    # an explicit reference: the score is the rank of s(z) among the reference scores
    reference = rng.multivariate_normal([0, 0], cov, size=300)
    by_hand = np.mean(
        evaluate(prior, reference).max(axis=1) <= evaluate(prior, fresh[:5]).max(axis=1)[:, None],
        axis=1,
    )
    assert_allclose(ood_score(prior, fresh[:5], reference), by_hand)


def test_ood_score_bad_input():
    prior = KDEPrior([[0.0], [1.0]], [2], [[[1.0]]], ["A"])
    with pytest.raises(ValueError, match="finite"):
        ood_score(prior, [[np.nan]])
    with pytest.raises(ValueError, match="reference_latents must be a non-empty 2-D"):
        ood_score(prior, [[0.0]], np.zeros((0, 1)))


def test_ood_score_single_point_class():
    # a one-point class has no leave-one-out density: its point is scored by the other class
    prior = KDEPrior([[0.0], [3.0], [3.5]], [1, 2], [[[1.0]], [[1.0]]], ["A", "B"])
    a_point = np.log(np.mean(norm.pdf(0.0, [3.0, 3.5])))
    b_points = [max(norm.logpdf(x, 6.5 - x), norm.logpdf(x, 0.0)) for x in (3.0, 3.5)]
    assert_allclose(prior.reference_scores().numpy(), sorted([a_point, *b_points]))


def test_class_posterior():
    log_joint = np.array([[0.0, np.log(3.0)], [-1000.0, -1000.0]])
    assert_allclose(class_posterior(log_joint), [[0.25, 0.75], [0.5, 0.5]])
    assert_allclose(class_posterior(log_joint.T, axis=0), [[0.25, 0.5], [0.75, 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        class_posterior([0.0, np.nan])
    with pytest.raises(ValueError, match="every class has log density -inf"):
        class_posterior([-np.inf, -np.inf])


def test_import_does_not_load_torch():
    code = (
        "import sys, specutils_deepclean.training.kde, specutils_deepclean.training.karaoke;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_log_prob_derivatives_match_autograd():
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.as_tensor(rng.normal(2.0, 2.0, (7, 3)))
    c = torch.as_tensor([0, 1, 0, 1, 1, 0, 1])
    log_prob, grad, hess = prior.log_prob_derivatives(z, c)
    query = z.clone().requires_grad_(True)
    reference = prior.log_prob(query, c=c)
    (ref_grad,) = torch.autograd.grad(reference.sum(), query, create_graph=True)
    ref_hess = torch.stack(
        [torch.autograd.grad(ref_grad[:, i].sum(), query, retain_graph=True)[0] for i in range(3)],
        dim=1,
    )
    assert_allclose(log_prob.numpy(), reference.detach().numpy(), rtol=1e-12)
    assert_allclose(grad.numpy(), ref_grad.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert_allclose(hess.numpy(), ref_hess.numpy(), rtol=1e-9, atol=1e-12)
    assert prior.log_prob_derivatives(z, c, hessian=False)[2] is None


@pytest.mark.parametrize("c", [[0, 2], [-1, 0], [0.0, 1.0], [True, False]])
def test_class_indices_are_checked(c):
    a, b, rng = _two_classes()
    prior, _ = _scipy_prior(a, b)
    z = torch.as_tensor(rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match="class indices"):
        prior.log_prob_derivatives(z, torch.as_tensor(c))
    with pytest.raises(ValueError, match="class indices"):
        prior.log_prob(z, c=torch.as_tensor(c))
