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
