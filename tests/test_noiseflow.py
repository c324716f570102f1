"""Tests of the NoiseFlow observation model (specutils_deepclean.models.noiseflow)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specutils_deepclean.models.noiseflow import (  # noqa: E402
    NoiseFlow,
    NoiseFlowDistribution,
    counted_pixels,
)
from specutils_deepclean.training.noiseflow import train_noiseflow  # noqa: E402

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


pytestmark = pytest.mark.usefixtures("seeded_torch")


def ar1_noise(rng, n, n_pix, phi, sigma):
    """Stationary AR(1) noise with marginal standard deviation ``sigma``."""
    eps = np.empty((n, n_pix))
    eps[:, 0] = rng.normal(0.0, sigma, n)
    innovation = rng.normal(0.0, sigma * math.sqrt(1 - phi**2), (n, n_pix))
    for d in range(1, n_pix):
        eps[:, d] = phi * eps[:, d - 1] + innovation[:, d]
    return eps


def random_flow(whitened=False, context=3, hidden=(5, 4), scale=0.7):
    """A float64 flow with weights far from the near-white initialisation."""
    flow = NoiseFlow(context=context, channels=6, hidden=list(hidden), whitened=whitened).double()
    with torch.no_grad():
        for head in (flow.head_mu, flow.head_alpha):
            head.weight.normal_(0.0, 0.4)
            head.bias.normal_(0.0, 0.2)
        flow.mu0.normal_(0.0, 0.3)
        flow.alpha0.normal_(0.0, 0.3)
        flow.scale.fill_(scale)
    return flow


def reference_log_prob(flow, eps, sigma=None):
    """Eq. 15 (nothing missing) and Eq. 13, pixel by pixel in NumPy."""
    k = flow.context
    w_conv = flow.conv.weight.detach().numpy()[:, 0, :]
    b_conv = flow.conv.bias.detach().numpy()
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in flow.mlp[::2]]
    heads = [(h.weight.detach().numpy()[0], h.bias.item()) for h in (flow.head_mu, flow.head_alpha)]
    unit = float(flow.scale) * (np.ones_like(eps) if sigma is None else sigma)
    u = eps / unit
    total, xis = 0.0, []
    for d in range(len(u)):
        if d < k:
            mu, alpha = flow.mu0[d].item(), flow.alpha0[d].item()
        else:
            h = w_conv @ u[d - k : d] + b_conv
            for weight, bias in layers:
                h = np.maximum(weight @ h + bias, 0.0)
            mu, alpha = (weight @ h + bias for weight, bias in heads)
        xi = (u[d] - mu) * math.exp(-alpha)
        xis.append(xi)
        total += -0.5 * xi**2 - alpha - HALF_LOG_2PI - math.log(unit[d])
    return total, np.array(xis)


def counted_reference(missing, k):
    out = np.zeros_like(missing)
    for d in range(len(missing)):
        out[d] = not missing[max(0, d - k) : d + 1].any() if d >= k else not missing[d]
    return out


# --- construction --------------------------------------------------------------


def test_config_rebuilds_the_network():
    flow = random_flow(whitened=True, hidden=(4,))
    assert flow.config == {"context": 3, "channels": 6, "hidden": [4], "whitened": True}
    clone = NoiseFlow(**flow.config).double()
    clone.load_state_dict(flow.state_dict())
    sigma = torch.full((20,), 0.5, dtype=torch.float64)
    y = torch.randn(2, 20, dtype=torch.float64)
    torch.testing.assert_close(clone(sigma=sigma).log_prob(y), flow(sigma=sigma).log_prob(y))
    assert "scale" in flow.state_dict()


def test_hidden_empty_is_linear_autoregression():
    flow = NoiseFlow(context=2, channels=3, hidden=[])
    assert len(flow.mlp) == 0
    assert flow.head_mu.in_features == 3


# --- the density -----------------------------------------------------------------


@pytest.mark.parametrize("whitened", [False, True])
def test_log_prob_matches_pixel_loop(whitened):
    rng = np.random.default_rng(0)
    flow = random_flow(whitened)
    eps = rng.normal(0.0, 0.5, 12)
    sigma = rng.uniform(0.5, 2.0, 12) if whitened else None
    expected, xi_expected = reference_log_prob(flow, eps, sigma)
    dist = flow(sigma=torch.tensor(sigma)) if whitened else flow(torch.zeros(12))
    assert dist.log_prob(torch.tensor(eps)).item() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(
        dist.standardise(torch.tensor(eps)).detach().numpy(), xi_expected, rtol=1e-12
    )


def test_log_prob_is_change_of_variables():
    rng = np.random.default_rng(1)
    flow = random_flow(whitened=True)
    signal = torch.tensor(rng.normal(1.0, 0.1, 10))
    sigma = torch.tensor(rng.uniform(0.1, 0.3, 10))
    y = signal + sigma * torch.tensor(rng.normal(size=10))
    dist = flow(signal, sigma)
    xi = dist.standardise(y)
    jac = torch.autograd.functional.jacobian(dist.standardise, y)
    _, logdet = torch.linalg.slogdet(jac)
    gaussian = (-0.5 * xi.square() - HALF_LOG_2PI).sum()
    torch.testing.assert_close(dist.log_prob(y), gaussian + logdet)


def test_jacobian_is_lower_triangular_and_local():
    rng = np.random.default_rng(2)
    flow = random_flow(context=3)
    y = torch.tensor(rng.normal(size=14))
    jac = torch.autograd.functional.jacobian(flow(torch.zeros(14)).standardise, y)
    rows, cols = np.indices(jac.shape)
    assert torch.all(jac[torch.from_numpy(cols > rows)] == 0)  # no pixel after d
    assert torch.all(jac[torch.from_numpy(cols < rows - 3)] == 0)  # only K predecessors
    assert torch.all(jac.diagonal() > 0)
    assert torch.any(jac[torch.from_numpy(cols == rows - 1)] != 0)


def test_broadcast_batch_and_exposures():
    flow = random_flow(whitened=True)
    signal = torch.randn(4, 1, 16, dtype=torch.float64)  # 4 stars, one row each
    sigma = torch.rand(4, 3, 16, dtype=torch.float64) + 0.5  # 3 exposures per star
    dist = flow(signal, sigma)
    assert dist.batch_shape == (4, 3) and dist.event_shape == (16,)
    y = torch.randn(4, 3, 16, dtype=torch.float64)
    log_prob = dist.log_prob(y)
    assert log_prob.shape == (4, 3)
    one = flow(signal[2, 0], sigma[2, 1]).log_prob(y[2, 1])
    torch.testing.assert_close(log_prob[2, 1], one)
    assert dist.log_prob(y.expand(5, 4, 3, 16)).shape == (5, 4, 3)


def test_numpy_input_and_float64_data_on_float32_flow():
    flow = NoiseFlow(context=2, channels=3, hidden=[3])
    y = np.random.default_rng(3).normal(size=(2, 10))
    log_prob = flow(np.zeros(10)).log_prob(y)
    assert log_prob.dtype == torch.float32 and log_prob.shape == (2,)


# --- the masked likelihood -------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_counted_pixels_against_loop(seed, k):
    missing = np.random.default_rng(seed).random((5, 30)) < 0.1
    got = counted_pixels(torch.from_numpy(missing), k).numpy()
    expected = np.array([counted_reference(row, k) for row in missing])
    np.testing.assert_array_equal(got, expected)


def test_pixels_after_a_gap_do_not_count():
    missing = torch.zeros(20, dtype=torch.bool)
    missing[[1, 10]] = True
    counted = counted_pixels(missing, 3)
    assert counted[0] and not counted[1] and counted[2]  # first K: independent
    assert not counted[3]  # its window reaches pixel 1
    assert counted[5]
    assert not counted[10:14].any() and counted[14]


def test_missing_pixel_values_change_nothing():
    rng = np.random.default_rng(4)
    flow = random_flow(whitened=True)
    sigma = torch.tensor(rng.uniform(0.5, 1.5, 24))
    missing = torch.zeros(24, dtype=torch.bool)
    missing[[5, 17]] = True
    y = torch.tensor(rng.normal(size=24), requires_grad=True)
    dist = flow(sigma=sigma)
    log_prob = dist.log_prob(y, missing)
    (grad,) = torch.autograd.grad(log_prob, y)
    assert torch.all(grad[missing] == 0) and torch.all(torch.isfinite(grad))
    for value in (1e6, -3.0, math.nan, math.inf):
        changed = y.detach().clone()
        changed[missing] = value
        assert dist.log_prob(changed, missing).item() == log_prob.item()


def test_nonfinite_data_and_sigma_are_missing():
    rng = np.random.default_rng(5)
    flow = random_flow(whitened=True)
    sigma = torch.tensor(rng.uniform(0.5, 1.5, 24))
    y = torch.tensor(rng.normal(size=24))
    missing = torch.zeros(24, dtype=torch.bool)
    missing[[4, 11]] = True
    expected = flow(sigma=sigma).log_prob(y, missing)
    y_nan, sigma_nan = y.clone(), sigma.clone()
    y_nan[4], sigma_nan[11] = math.nan, math.inf
    assert flow(sigma=sigma_nan).log_prob(y_nan).item() == expected.item()


def test_masked_log_prob_sums_the_counted_terms():
    rng = np.random.default_rng(6)
    flow = random_flow()
    y = torch.tensor(rng.normal(size=(3, 30)))
    missing = torch.from_numpy(rng.random((3, 30)) < 0.15)
    dist = flow(torch.zeros(30))
    full, all_counted = dist.log_prob_pixels(y)
    assert all_counted.all()
    counted = torch.from_numpy(np.array([counted_reference(row, 3) for row in missing.numpy()]))
    expected = torch.where(counted, full, torch.zeros_like(full)).sum(-1)
    torch.testing.assert_close(dist.log_prob(y, missing), expected)


# --- whitening ------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.01, 3.0, 250.0])
def test_whitened_scaling_only_shifts_by_log_factor(factor):
    rng = np.random.default_rng(7)
    flow = random_flow(whitened=True)
    sigma = torch.tensor(rng.uniform(0.5, 2.0, (2, 25)))
    y = torch.tensor(rng.normal(size=(2, 25)))
    missing = torch.zeros(2, 25, dtype=torch.bool)
    missing[0, 9] = True
    log_prob, counted = flow(sigma=sigma).log_prob_pixels(y, missing)
    scaled = flow(sigma=sigma * factor).log_prob(y * factor, missing)
    expected = log_prob.sum(-1) - counted.sum(-1) * math.log(factor)
    torch.testing.assert_close(scaled, expected)


def test_whitened_flow_serves_any_snr():
    """One whitened flow, trained on mixed S/N, gives the exact heteroscedastic density."""
    rng = np.random.default_rng(8)
    snr = rng.choice([2.0, 10.0, 50.0], (640, 1))
    sigma = rng.uniform(0.5, 1.5, (640, 96)) / snr
    eps = sigma * rng.normal(size=sigma.shape)
    flow = train_noiseflow(
        eps[:512],
        sigma[:512],
        context=3,
        channels=6,
        hidden=[6],
        epochs=8,
        batch_size=32,
        lr=3e-3,
        device="cpu",
    )
    with torch.no_grad():
        log_prob, counted = flow(sigma=torch.tensor(sigma[512:])).log_prob_pixels(eps[512:])
    analytic = -0.5 * (eps[512:] / sigma[512:]) ** 2 - np.log(sigma[512:]) - HALF_LOG_2PI
    assert counted.all()
    assert abs(log_prob.mean().item() - analytic.mean()) < 0.02


# --- training --------------------------------------------------------------------


def test_white_noise_learns_the_gaussian():
    rng = np.random.default_rng(9)
    sigma = 0.3
    flow = train_noiseflow(
        rng.normal(0.0, sigma, (512, 128)),
        context=4,
        channels=8,
        hidden=[8],
        epochs=15,
        batch_size=32,
        lr=3e-3,
        seed=0,
        device="cpu",
    )
    test = torch.tensor(rng.normal(0.0, sigma, (256, 128)), dtype=torch.float32)
    with torch.no_grad():
        per_pixel = flow(torch.zeros(128)).log_prob(test).sum() / test.numel()
        _, alpha = flow._params(test / flow.scale)
    analytic = -0.5 - math.log(sigma) - HALF_LOG_2PI
    assert abs(per_pixel.item() - analytic) < 0.02
    log_std = alpha + torch.log(flow.scale)  # alpha in residual units
    assert abs(log_std[:, 4:].mean().item() - math.log(sigma)) < 0.02
    np.testing.assert_allclose(torch.exp(log_std[:, 4:]).numpy(), sigma, rtol=0.1)
    # the first K pixels each learn from only 512 values: 3 % standard error
    np.testing.assert_allclose(torch.exp(log_std[0, :4]).numpy(), sigma, rtol=0.12)


def test_ar1_noise_beats_white_gaussian():
    rng = np.random.default_rng(10)
    phi, sigma = 0.8, 0.3
    flow = train_noiseflow(
        ar1_noise(rng, 512, 128, phi, sigma),
        context=4,
        channels=8,
        hidden=[8],
        epochs=15,
        batch_size=32,
        lr=3e-3,
        seed=0,
        device="cpu",
    )
    test = ar1_noise(rng, 256, 128, phi, sigma)
    with torch.no_grad():
        flow_ll = flow(torch.zeros(128)).log_prob(test).sum().item() / test.size
    std = test.std()
    white_ll = np.mean(-0.5 * (test / std) ** 2 - np.log(std) - HALF_LOG_2PI)
    exact_ll = -0.5 - math.log(sigma * math.sqrt(1 - phi**2)) - HALF_LOG_2PI  # conditional
    assert flow_ll > white_ll + 0.4
    assert abs(flow_ll - exact_ll) < 0.05


def test_fit_is_deterministic_keeps_best_val_and_records_history():
    rng = np.random.default_rng(11)
    eps = ar1_noise(rng, 96, 40, 0.5, 1.0)
    eps[0, 5:9] = np.nan
    missing = np.zeros(eps.shape, bool)
    missing[1, 20] = True
    val = (ar1_noise(rng, 32, 40, 0.5, 1.0), None, None)
    kwargs = dict(context=2, channels=4, hidden=[4], epochs=4, batch_size=16, lr=1e-2, device="cpu")
    first = train_noiseflow(eps, None, missing, seed=3, val=val, **kwargs)
    second = train_noiseflow(eps, None, missing, seed=3, val=val, **kwargs)
    other = train_noiseflow(eps, None, missing, seed=4, val=val, **kwargs)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert not torch.equal(first.conv.weight, other.conv.weight)
    assert first.history == second.history
    assert len(first.history["train"]) == len(first.history["val"]) == 4
    assert first.history["train"][-1] < first.history["train"][0]
    assert first.best_epoch == int(np.argmin(first.history["val"]))
    assert not first.training and not first.whitened


def test_fit_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    train_noiseflow(
        np.ones((8, 10)) + np.arange(10), context=2, channels=2, hidden=[], epochs=1, device="cpu"
    )
    assert torch.equal(state, torch.random.get_rng_state())


# --- gradients and sampling ----------------------------------------------------------


def test_gradients_reach_every_parameter_and_the_inputs():
    flow = NoiseFlow(context=3, channels=4, hidden=[4, 3], whitened=True)
    signal = torch.randn(2, 20, requires_grad=True)
    sigma = (torch.rand(2, 20) + 0.5).requires_grad_()
    y = signal.detach() + torch.randn(2, 20)
    flow(signal, sigma).log_prob(y).sum().backward()
    for name, parameter in flow.named_parameters():
        assert parameter.grad is not None and torch.any(parameter.grad != 0), name
    assert torch.all(signal.grad != 0) and torch.all(sigma.grad != 0)


def test_sample_is_deterministic_and_inverts_standardise():
    flow = random_flow(whitened=True)
    signal = torch.linspace(1.0, 2.0, 15, dtype=torch.float64)
    sigma = torch.full((2, 15), 0.1, dtype=torch.float64)
    dist = flow(signal, sigma)
    draws = dist.sample((3,), generator=torch.Generator().manual_seed(5))
    again = dist.sample((3,), generator=torch.Generator().manual_seed(5))
    other = dist.sample((3,), generator=torch.Generator().manual_seed(6))
    assert draws.shape == (3, 2, 15)
    assert torch.equal(draws, again) and not torch.equal(draws, other)
    xi = torch.randn((6, 15), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(dist.standardise(draws), xi.reshape(3, 2, 15))


def test_sample_std_matches_alpha():
    flow = NoiseFlow(context=3, channels=4, hidden=[4], whitened=True)
    with torch.no_grad():
        flow.alpha0.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0])))
    dist = flow(sigma=torch.full((32,), 2.0))
    draws = dist.sample((4000,), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(draws[:, :3].std(0).numpy(), [1.0, 2.0, 4.0], rtol=0.05)
    _, alpha = flow._params(draws / 2.0)
    np.testing.assert_allclose(
        draws[:, 3:].std(0).numpy(),
        2.0 * torch.exp(alpha[:, 3:]).mean(0).detach().numpy(),
        rtol=0.06,
    )
    xi = dist.standardise(draws)
    assert abs(xi.mean().item()) < 0.01 and abs(xi.std().item() - 1.0) < 0.01


def test_rsample_is_differentiable():
    flow = NoiseFlow(context=2, channels=3, hidden=[3])
    draws = flow(torch.zeros(10)).rsample((4,), generator=torch.Generator().manual_seed(0))
    draws.square().sum().backward()
    assert torch.any(flow.alpha0.grad != 0) and torch.any(flow.head_alpha.bias.grad != 0)


def test_distribution_type():
    dist = NoiseFlow(context=2, channels=2, hidden=[])(torch.zeros(5))
    assert isinstance(dist, NoiseFlowDistribution)
    assert isinstance(dist, torch.distributions.Distribution)


# --- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context": 0}, "context must be a positive integer"),
        ({"context": 2.0}, "context must be a positive integer"),
        ({"channels": -1}, "channels must be a positive integer"),
        ({"hidden": [4, 0]}, "hidden width must be a positive integer"),
        ({"hidden": 4}, "hidden must be a list"),
        ({"whitened": 1}, "whitened must be True or False"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseFlow(**kwargs)


@pytest.mark.parametrize(
    ("whitened", "signal", "sigma", "match"),
    [
        (True, (10,), None, "pass sigma"),
        (False, (10,), (10,), "do not pass sigma"),
        (False, None, None, "give signal or sigma"),
        (True, (10,), (11,), "differ in length"),
        (True, (3, 10), (2, 10), "do not broadcast"),
        (False, (3,), None, "too short"),
        (False, (), None, "pixel axis"),
    ],
)
def test_bad_distribution(whitened, signal, sigma, match):
    flow = NoiseFlow(context=3, channels=2, hidden=[], whitened=whitened)
    signal = None if signal is None else torch.zeros(signal)
    sigma = None if sigma is None else torch.ones(sigma)
    with pytest.raises(ValueError, match=match):
        flow(signal, sigma)


@pytest.mark.parametrize(
    ("y", "missing", "sigma_value", "error", "match"),
    [
        ((2, 11), None, 1.0, ValueError, "must end in 10 pixels"),
        ((3, 10), None, 1.0, ValueError, "do not broadcast"),
        ((2, 10), (2, 9), 1.0, ValueError, "does not broadcast"),
        ((2, 10), "int", 1.0, TypeError, "boolean"),
        ((2, 10), None, -1.0, ValueError, "sigma must be positive"),
        ((2, 10), None, 0.0, ValueError, "sigma must be positive"),
    ],
)
def test_bad_log_prob(y, missing, sigma_value, error, match):
    flow = NoiseFlow(context=3, channels=2, hidden=[], whitened=True)
    sigma = torch.full((2, 10), sigma_value)
    if missing == "int":
        missing = torch.zeros(2, 10, dtype=torch.int64)
    elif missing is not None:
        missing = torch.zeros(missing, dtype=torch.bool)
    with pytest.raises(error, match=match):
        flow(sigma=sigma).log_prob(torch.zeros(y), missing)


def test_negative_sigma_at_missing_pixel_is_fine():
    flow = NoiseFlow(context=3, channels=2, hidden=[], whitened=True)
    sigma = torch.ones(10)
    sigma[4] = -1.0
    missing = torch.zeros(10, dtype=torch.bool)
    missing[4] = True
    assert torch.isfinite(flow(sigma=sigma).log_prob(torch.zeros(10), missing))


@pytest.mark.parametrize(
    ("missing", "k", "error", "match"),
    [
        (torch.zeros(5, dtype=torch.int64), 2, TypeError, "boolean"),
        (torch.tensor(True), 2, ValueError, "pixel axis"),
        (torch.zeros(5, dtype=torch.bool), 0, ValueError, "context must be a positive integer"),
    ],
)
def test_bad_counted_pixels(missing, k, error, match):
    with pytest.raises(error, match=match):
        counted_pixels(missing, k)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros(20),), {}, ValueError, "must be 2-D"),
        ((np.ones((4, 20)), np.ones((4, 19))), {}, ValueError, "sigma has shape"),
        ((np.ones((4, 20)), -np.ones((4, 20))), {}, ValueError, "sigma must be positive"),
        ((np.ones((4, 20)), None, np.zeros((4, 20))), {}, TypeError, "boolean"),
        ((np.ones((4, 20)), None, np.zeros((4, 2), bool)), {}, ValueError, "missing has shape"),
        ((np.full((4, 20), np.nan),), {}, ValueError, "no observed pixel"),
        ((np.ones((4, 20)),), {}, ValueError, "constant"),
        ((np.arange(12.0).reshape(4, 3),), {"context": 3}, ValueError, "too few"),
        ((np.arange(80.0).reshape(4, 20),), {"epochs": 0}, ValueError, "epochs"),
        ((np.arange(80.0).reshape(4, 20),), {"batch_size": 0}, ValueError, "batch_size"),
        ((np.arange(80.0).reshape(4, 20),), {"lr": -1.0}, ValueError, "lr must be"),
        ((np.arange(80.0).reshape(4, 20),), {"seed": -1}, ValueError, "seed must be"),
        (
            (np.arange(80.0).reshape(4, 20),),
            {"val": np.zeros((2, 20))},
            ValueError,
            "val must be a tuple",
        ),
        (
            (np.arange(80.0).reshape(4, 20),),
            {"val": (np.zeros((2, 20)), np.ones((2, 20)), None)},
            ValueError,
            "val must give sigma",
        ),
        (
            (np.arange(80.0).reshape(4, 20),),
            {"val": (np.zeros((2, 21)), None, None)},
            ValueError,
            "val residuals have 21 pixels",
        ),
    ],
)
def test_bad_fit(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        train_noiseflow(
            *args,
            **{"context": 2, "channels": 2, "hidden": [], "epochs": 1, "device": "cpu", **kwargs},
        )


def test_fit_keeps_the_best_epoch_on_val():
    """Validation noise unlike the training noise: the best epoch is an early one."""
    rng = np.random.default_rng(12)
    train = ar1_noise(rng, 128, 40, 0.95, 1.0)
    val = (rng.normal(size=(64, 40)), None, None)
    flow = train_noiseflow(
        train,
        context=2,
        channels=4,
        hidden=[4],
        epochs=5,
        batch_size=16,
        lr=1e-2,
        device="cpu",
        val=val,
    )
    assert flow.best_epoch < 4
    with torch.no_grad():
        log_prob, counted = flow(torch.zeros(40)).log_prob_pixels(val[0])
    loss = -(log_prob.sum() / counted.sum()).item()
    assert loss == pytest.approx(min(flow.history["val"]), rel=1e-5)


def test_runs_on_the_chosen_device(device):
    """``--device cuda`` reruns this on a GPU: same density, samples on that device."""
    flow = random_flow(whitened=True).float()
    rng = np.random.default_rng(13)
    sigma = torch.tensor(rng.uniform(0.5, 1.5, (3, 30)), dtype=torch.float32)
    y = torch.tensor(rng.normal(size=(3, 30)), dtype=torch.float32)
    missing = torch.zeros(3, 30, dtype=torch.bool)
    missing[1, 7] = True
    expected = flow(sigma=sigma).log_prob(y, missing)
    flow.to(device)
    dist = flow(sigma=sigma.to(device))
    got = dist.log_prob(y.to(device), missing.to(device))
    assert got.device.type == torch.device(device).type
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    assert dist.sample((2,), generator=generator).device.type == torch.device(device).type


@pytest.mark.parametrize("hidden", [(), (5,), (5, 4)])
def test_window_derivatives_match_autograd(hidden):
    flow = random_flow(context=3, hidden=hidden)
    u = torch.randn(2, 12, dtype=torch.float64)
    params, derivatives = flow.window_derivatives(u)
    mu, alpha = flow._params(u)
    np.testing.assert_allclose(params[:, 0].numpy(), mu.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(params[:, 1].numpy(), alpha.detach().numpy(), rtol=1e-12)
    full = torch.autograd.functional.jacobian(lambda x: torch.stack(flow._params(x), 1), u)
    expected = torch.zeros_like(derivatives)
    for n in range(2):
        for d in range(3, 12):
            expected[n, :, :, d] = full[n, :, d, n, d - 3 : d]
    np.testing.assert_allclose(derivatives.numpy(), expected.numpy(), atol=1e-12)
    # no pixel depends on anything outside its window
    window = torch.zeros_like(full[0, :, :, 0], dtype=torch.bool)
    for d in range(3, 12):
        window[:, d, d - 3 : d] = True
    assert float(full[0, :, :, 0][~window].abs().max()) == 0.0
