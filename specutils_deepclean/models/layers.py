"""Plain 1-D convolutional building blocks shared by the package's networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LEAKY_SLOPE", "down_block", "up_block", "same_conv", "fill_missing", "missing_mask"]

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


def fill_missing(flux: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Replace missing pixels by linear interpolation between valid neighbours.

    Pixels before the first (after the last) valid pixel take its value; a
    spectrum with no valid pixel becomes 1, the median-normalised continuum level.

    Parameters
    ----------
    flux : torch.Tensor, shape (batch, n)
        Spectra; values at missing pixels are ignored (may be NaN).
    missing : torch.Tensor of bool, shape (batch, n)
        True at missing pixels.

    Returns
    -------
    torch.Tensor, shape (batch, n)
        ``flux`` at valid pixels, interpolated values elsewhere.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[float("nan"), 1.0, float("nan"), 3.0, 0.0]])
    >>> fill_missing(x, torch.tensor([[True, False, True, False, True]]))
    tensor([[1., 1., 2., 3., 3.]])
    """
    if not bool(missing.any()):
        return flux
    n = flux.shape[-1]
    valid = ~missing
    index = torch.arange(n, device=flux.device).expand_as(flux)
    prev = torch.where(valid, index, -1).cummax(dim=-1).values
    nxt = torch.where(valid, index, n).flip(-1).cummin(dim=-1).values.flip(-1)
    safe = torch.where(valid, flux, torch.zeros_like(flux))
    left = safe.gather(-1, prev.clamp(min=0))
    right = safe.gather(-1, nxt.clamp(max=n - 1))
    weight = (index - prev).to(flux.dtype) / (nxt - prev).clamp(min=1).to(flux.dtype)
    inside = left + weight * (right - left)
    filled = torch.where(prev < 0, right, torch.where(nxt >= n, left, inside))
    filled = torch.where((prev < 0) & (nxt >= n), torch.ones_like(flux), filled)
    return torch.where(valid, flux, filled)


def missing_mask(flux: torch.Tensor, missing=None) -> torch.Tensor:
    """Missing pixels of ``flux``: non-finite values, or True in ``missing``.

    Parameters
    ----------
    flux : torch.Tensor
        Spectra.
    missing : array_like of bool, same shape as ``flux``, optional
        True where a pixel is missing.

    Returns
    -------
    torch.Tensor of bool, on ``flux``'s device

    Raises
    ------
    TypeError
        If ``missing`` is not boolean.
    ValueError
        If ``missing`` and ``flux`` differ in shape.

    Examples
    --------
    >>> missing_mask(torch.tensor([1.0, float("nan"), 2.0]), [False, False, True])
    tensor([False,  True,  True])
    """
    gone = ~torch.isfinite(flux)
    if missing is None:
        return gone
    missing = torch.as_tensor(missing, device=flux.device)
    if missing.dtype != torch.bool:
        raise TypeError(f"missing must be a boolean array, got {missing.dtype}")
    if missing.shape != flux.shape:
        raise ValueError(f"missing has shape {tuple(missing.shape)}, flux {tuple(flux.shape)}")
    return gone | missing
