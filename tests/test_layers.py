"""Tests of the shared convolutional blocks in `specutils_deepclean.models.layers`."""

import pytest
import torch

from specutils_deepclean.models.layers import down_block, run_channels_last, same_conv, up_block


def _channels_last(x):
    return x[:, :, None].contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("length", [8, 36, 64])
def test_run_channels_last_matches_the_1d_modules(length):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        down_block(2, 5, 7),
        down_block(5, 6, 3),
        same_conv(6, 6),
        up_block(6, 3),
        torch.nn.Sequential(up_block(3, 4)),
        same_conv(4, 1, activation=False),
    )
    x = torch.randn(3, 2, length)
    with torch.no_grad():
        got = run_channels_last(net, _channels_last(x))
        expected = net(x)
    assert got.shape == (3, 1, 1, length)
    torch.testing.assert_close(got[:, :, 0], expected, rtol=1e-5, atol=1e-5)


def test_run_channels_last_polyphase_without_bias():
    torch.manual_seed(1)
    up = torch.nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1, bias=False)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(run_channels_last(up, _channels_last(x))[:, :, 0], up(x))


def test_run_channels_last_without_bias_leaves_out_every_bias():
    torch.manual_seed(2)
    net = torch.nn.Sequential(same_conv(3, 4, activation=False), up_block(4, 2))
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        got = run_channels_last(net, _channels_last(x), bias=False)[:, :, 0]
        conv, up = net[0], net[1][0]
        h = torch.nn.functional.conv1d(x, conv.weight, None, padding=conv.padding)
        h = torch.nn.functional.conv_transpose1d(h, up.weight, None, 2, 1)
        expected = torch.nn.functional.leaky_relu(h, net[1][1].negative_slope)
    torch.testing.assert_close(got, expected)


def test_run_channels_last_follows_changed_weights():
    """The converted transposed-convolution weights are kept, but not past a change."""
    torch.manual_seed(3)
    up = torch.nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        before = run_channels_last(up, _channels_last(x))
        up.weight.mul_(2.0)  # in place
        torch.testing.assert_close(run_channels_last(up, _channels_last(x))[:, :, 0], up(x))
        up.bias = torch.nn.Parameter(torch.randn(2))  # replaced
        torch.testing.assert_close(run_channels_last(up, _channels_last(x))[:, :, 0], up(x))
    assert not torch.allclose(before[:, :, 0], up(x).detach())


def test_run_channels_last_gradients_equal_the_1d_modules():
    torch.manual_seed(4)
    net = torch.nn.Sequential(same_conv(2, 3), up_block(3, 2))
    x = torch.randn(2, 2, 6)
    run_channels_last(net, _channels_last(x)).square().sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().sum().backward()
    for grad, p in zip(got, net.parameters(), strict=True):
        torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "module, error",
    [
        (torch.nn.ReLU(), TypeError),
        (torch.nn.ConvTranspose1d(2, 2, 3, stride=2, padding=1), ValueError),
    ],
)
def test_run_channels_last_refuses_other_modules(module, error):
    with pytest.raises(error):
        run_channels_last(module, _channels_last(torch.zeros(1, 2, 4)))


@pytest.mark.parametrize("shape", [(7, 50), (50,), (2, 3, 20)])
def test_fill_missing_equals_linear_interpolation_of_each_row(shape):
    import numpy as np

    from specutils_deepclean.models.layers import fill_missing

    rng = np.random.default_rng(len(shape))
    flux = rng.normal(1.0, 0.3, shape).astype(np.float32)
    missing = rng.random(shape) < 0.3
    missing.reshape(-1, shape[-1])[0, :4] = True  # a gap at the blue end
    missing.reshape(-1, shape[-1])[-1, -3:] = True  # and at the red end
    if len(shape) > 1:
        missing.reshape(-1, shape[-1])[1] = True  # a row without a valid pixel
    flux[missing] = np.nan
    got = fill_missing(torch.from_numpy(flux), torch.from_numpy(missing)).numpy()
    x = np.arange(shape[-1])
    n_pix = shape[-1]
    rows = (flux.reshape(-1, n_pix), missing.reshape(-1, n_pix), got.reshape(-1, n_pix))
    for row, gone, out in zip(*rows, strict=True):
        expected = np.interp(x, x[~gone], row[~gone]) if (~gone).any() else np.ones(x.size)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out[~gone], row[~gone])
