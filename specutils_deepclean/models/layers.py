"""Plain 1-D convolutional building blocks shared by the package's networks."""

from __future__ import annotations

from torch import nn

__all__ = ["LEAKY_SLOPE", "down_block", "up_block", "same_conv"]

#: Negative slope of every leaky ReLU in the package's convolutional networks.
LEAKY_SLOPE = 0.1


def down_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Strided convolution that halves an even length, then a leaky ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size : int
        Odd kernel size; the padding ``(kernel_size - 1) // 2`` makes an input of
        even length ``L`` come out with length ``L / 2``.

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> import torch
    >>> down_block(1, 4, 5)(torch.zeros(2, 1, 16)).shape
    torch.Size([2, 4, 8])
    """
    _check_odd(kernel_size)
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size, stride=2, padding=(kernel_size - 1) // 2),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


def up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Transposed convolution that doubles the length exactly, then a leaky ReLU.

    Kernel 4, stride 2, padding 1: an input of length ``L`` comes out with length
    ``2 L``, every output pixel fed by two input pixels (no checkerboard gaps).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> import torch
    >>> up_block(4, 2)(torch.zeros(2, 4, 8)).shape
    torch.Size([2, 2, 16])
    """
    return nn.Sequential(
        nn.ConvTranspose1d(in_channels, out_channels, 4, stride=2, padding=1),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


def same_conv(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, activation: bool = True
) -> nn.Module:
    """Length-preserving convolution, optionally followed by a leaky ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size : int, optional
        Odd kernel size.
    activation : bool, optional
        Append a leaky ReLU (``False`` gives a bare linear output layer).

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> import torch
    >>> same_conv(3, 1, activation=False)(torch.zeros(2, 3, 10)).shape
    torch.Size([2, 1, 10])
    """
    _check_odd(kernel_size)
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)
    if not activation:
        return conv
    return nn.Sequential(conv, nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


def _check_odd(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
