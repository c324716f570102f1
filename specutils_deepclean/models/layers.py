"""Plain 1-D convolutional building blocks shared by the package's networks."""

from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = [
    "LEAKY_SLOPE",
    "down_block",
    "up_block",
    "same_conv",
    "patch_block",
    "run_channels_last",
    "fill_missing",
    "missing_mask",
]

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


def patch_block(in_channels: int, out_channels: int, stride: int, *, up: bool = False):
    """Patch embedding: a convolution of kernel = stride (no overlap), then a leaky ReLU.

    With ``up=False`` it shortens the length ``stride`` times in one layer, for very
    long spectra where the first stride-2 layers at full resolution dominate the
    cost; with ``up=True`` it is the mirror, a transposed convolution of kernel =
    stride that lengthens ``stride`` times.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    stride : int
        Kernel and stride (>= 2).
    up : bool, optional
        The transposed (lengthening) layer.

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> import torch
    >>> patch_block(2, 4, 8)(torch.zeros(1, 2, 64)).shape
    torch.Size([1, 4, 8])
    >>> patch_block(4, 2, 8, up=True)(torch.zeros(1, 4, 8)).shape
    torch.Size([1, 2, 64])
    """
    conv = nn.ConvTranspose1d if up else nn.Conv1d
    return nn.Sequential(
        conv(in_channels, out_channels, stride, stride=stride),
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


def run_channels_last(blocks: nn.Module, h: torch.Tensor, *, bias: bool = True) -> torch.Tensor:
    """Run a stack of this module's blocks on channels-last activations (inference).

    The same arithmetic as ``blocks(x)`` on ``x`` of shape (batch, channels, length),
    but on ``h = x[:, :, None]`` in `torch.channels_last` memory order (each pixel's
    channels contiguous) through 2-D convolutions of height 1, where oneDNN's CPU
    kernels avoid the layout reorders and the slow paths of the few-channel 1-D
    convolutions; the `up_block` transposed convolution (kernel 4, stride 2, padding
    1) becomes one stride-1 convolution of kernel 3 with twice the output channels
    (even and odd output pixels), interleaved by a reshape (`patch_block`'s likewise,
    with kernel 1 and ``stride`` phases).  Results equal the 1-D
    modules' to float32 rounding.

    Parameters
    ----------
    blocks : torch.nn.Module
        A `~torch.nn.Conv1d`, `~torch.nn.ConvTranspose1d` (kernel 4, stride 2,
        padding 1, or kernel = stride without padding), `~torch.nn.LeakyReLU`, or an
        `~torch.nn.Sequential` of them (nested), as built by `down_block`,
        `up_block`, `patch_block` and `same_conv`.
    h : torch.Tensor, shape (batch, channels, 1, length)
        Activations, preferably ``contiguous(memory_format=torch.channels_last)``.
    bias : bool, optional
        False to leave out the convolutions' biases (for tangents pushed through
        the linear part of the network).

    Returns
    -------
    torch.Tensor, shape (batch, channels_out, 1, length_out)
        Channels-last.

    Raises
    ------
    TypeError
        For a module of another kind.
    ValueError
        For a transposed convolution other than `up_block`'s or `patch_block`'s.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(down_block(2, 4, 5), up_block(4, 3))
    >>> x = torch.randn(2, 2, 16)
    >>> h = x[:, :, None].contiguous(memory_format=torch.channels_last)
    >>> torch.allclose(run_channels_last(net, h)[:, :, 0], net(x), atol=1e-6)
    True
    """
    if isinstance(blocks, nn.Sequential):
        for block in blocks:
            h = run_channels_last(block, h, bias=bias)
        return h
    if isinstance(blocks, nn.LeakyReLU):
        return nn.functional.leaky_relu(h, blocks.negative_slope, inplace=True)
    if isinstance(blocks, nn.ConvTranspose1d):
        return _polyphase_up(blocks, h, bias)
    if isinstance(blocks, nn.Conv1d):
        return nn.functional.conv2d(
            h,
            blocks.weight[:, :, None],
            blocks.bias if bias else None,
            stride=(1, blocks.stride[0]),
            padding=(0, blocks.padding[0]),
        )
    raise TypeError(f"run_channels_last cannot run a {type(blocks).__name__}")


def _polyphase_up(conv: nn.ConvTranspose1d, h: torch.Tensor, bias: bool) -> torch.Tensor:
    """A transposed convolution on channels-last activations, as one convolution.

    The phases of the output (see `_phase_kernel`) come out as output channels of
    one stride-1 convolution and are then interleaved by a reshape.
    """
    kernel, phase_bias, n, padding = _phase_kernel(conv)
    out = nn.functional.conv2d(h, kernel, phase_bias if bias else None, padding=(0, padding))
    batch, channels, _, length = out.shape
    # (batch, 1, length, [phase 0 | phase 1 | ...]) -> (batch, 1, phases * length, out)
    pixels = out.permute(0, 2, 3, 1).reshape(batch, 1, n * length, channels // n)
    return pixels.permute(0, 3, 1, 2)


#: `_phase_kernel`'s converted weights, per transposed convolution, with the key
#: (versions and storage of its parameters) they were built from.
_PHASE_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _phase_kernel(conv: nn.ConvTranspose1d):
    """A transposed convolution's weights as one stride-1 convolution's over its phases.

    `up_block`'s (kernel 4, stride 2, padding 1): output pixel ``2m`` is
    ``W[..., 3] x[m - 1] + W[..., 1] x[m]``, pixel ``2m + 1`` is
    ``W[..., 2] x[m] + W[..., 0] x[m + 1]``: a kernel-3 convolution with the two
    phases as output channels.  `patch_block`'s (kernel = stride ``s``, no padding):
    output pixel ``s m + j`` is ``W[..., j] x[m]``, a 1x1 convolution with ``s``
    phases.  Returns ``(kernel, bias, phases, padding)``, kernel of shape
    (phases * out, in, 1, width).  Kept per module while its parameters are unchanged
    (in place or replaced), and rebuilt on every call while autograd records
    (so gradients reach the parameters).
    """
    weight = conv.weight  # (in, out, kernel)
    params = [p for p in (weight, conv.bias) if p is not None]
    cache = not (torch.is_grad_enabled() and any(p.requires_grad for p in params))
    key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
    if cache and conv in _PHASE_KERNELS and _PHASE_KERNELS[conv][0] == key:
        return _PHASE_KERNELS[conv][1]
    stride, kernel = conv.stride[0], conv.kernel_size[0]
    if (kernel, stride, conv.padding[0]) == (4, 2, 1):
        zero = torch.zeros_like(weight[:, :, 0])
        even = torch.stack([weight[:, :, 3], weight[:, :, 1], zero], dim=-1)
        odd = torch.stack([zero, weight[:, :, 2], weight[:, :, 0]], dim=-1)
        phases, padding = [even, odd], 1
    elif kernel == stride and conv.padding[0] == 0:
        phases, padding = [weight[:, :, j : j + 1] for j in range(stride)], 0
    else:
        raise ValueError(
            "only up_block's (kernel 4, stride 2, padding 1) and patch_block's (kernel = stride) "
            "transposed convolutions"
        )
    out = torch.cat(phases, dim=1).transpose(0, 1)[:, :, None]
    bias = None if conv.bias is None else conv.bias.repeat(len(phases))
    built = (out, bias, len(phases), padding)
    if cache:
        _PHASE_KERNELS[conv] = (key, built)
    return built


def _check_odd(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")


def fill_missing(flux: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Replace missing pixels by linear interpolation between valid neighbours.

    Pixels before the first (after the last) valid pixel take its value; a
    spectrum with no valid pixel becomes 1, the median-normalised continuum level.

    Parameters
    ----------
    flux : torch.Tensor, shape (..., n)
        Spectra; values at missing pixels are ignored (may be NaN).
    missing : torch.Tensor of bool, shape (..., n)
        True at missing pixels.

    Returns
    -------
    torch.Tensor, shape (..., n)
        ``flux`` at valid pixels, interpolated values elsewhere (``flux`` itself
        when nothing is missing).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[float("nan"), 1.0, float("nan"), 3.0, 0.0]])
    >>> fill_missing(x, torch.tensor([[True, False, True, False, True]]))
    tensor([[1., 1., 2., 3., 3.]])
    """
    n = flux.shape[-1]
    rows, cols = missing.reshape(-1, n).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return flux
    # Runs of consecutive missing pixels (nonzero is row-major): each is filled
    # between its valid neighbours prev = first - 1 and nxt = last + 1.
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1)
    run = torch.cumsum(starts, 0) - 1
    first = starts.nonzero(as_tuple=True)[0]
    last = torch.cat([first[1:] - 1, first.new_tensor([rows.numel() - 1])])
    prev = (cols[first] - 1)[run]
    nxt = (cols[last] + 1)[run]
    filled = flux.reshape(-1, n).clone()
    left = filled[rows, prev.clamp(min=0)]
    right = filled[rows, nxt.clamp(max=n - 1)]
    weight = (cols - prev).to(flux.dtype) / (nxt - prev).to(flux.dtype)
    inside = left + weight * (right - left)
    value = torch.where(prev < 0, right, torch.where(nxt >= n, left, inside))
    value = torch.where((prev < 0) & (nxt >= n), torch.ones_like(value), value)
    filled[rows, cols] = value
    return filled.view(flux.shape)


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
