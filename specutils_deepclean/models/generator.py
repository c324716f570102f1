r"""The locally isometric autoencoder: encoder :math:`E` and generator :math:`G`.

After Kang et al., *A novel stellar spectrum denoising method based on deep
Bayesian modeling*, Section 3.3 (Eq. 10): an autoencoder whose generator
:math:`G: \mathbb R^L \to \mathbb R^D` is trained to preserve local distances,
:math:`\lVert G(z) - G(z + \delta)\rVert \approx \lVert\delta\rVert`, so that a
density estimated on the latent codes (the KDE prior) is not distorted by the map.

Beyond the paper, :math:`G` is a residual over a linear path,
:math:`G(z) = \bar s + W z + N(z)`, with :math:`W` started at the top :math:`L`
principal components of the training spectra and the convolutional part
:math:`N` started near zero, so the generator starts as (and, with the best
validation epoch kept, is never worse than) a PCA model with :math:`k = L`.
"""

from __future__ import annotations

import copy
import math
from numbers import Integral

import torch
from torch import nn

from .._deprecated import moved
from .layers import (
    LEAKY_SLOPE,
    down_block,
    fill_missing,
    missing_mask,
    run_channels_last,
    up_block,
)

__all__ = ["IsometricAutoencoder"]

#: Factor applied to the default initial weights of the last layer of each
#: nonlinear path, so a fresh model is close to its linear (PCA) path.
_RESIDUAL_INIT = 0.01
_LAST = torch.channels_last


class IsometricAutoencoder(nn.Module):
    r"""Encoder :math:`E` and locally isometric generator :math:`G` for spectra of ``n_pix`` pixels.

    The generator is a linear path plus a convolutional residual,

    .. math::

        G(z) = \bar s + W z + N(z),

    :math:`\bar s` the mean training spectrum (a buffer), :math:`W` a
    :math:`D \times L` matrix (``linear``) and :math:`N` a decoder: a linear
    layer and leaky ReLU (slope 0.1) to ``hidden`` units, a linear layer and
    leaky ReLU to ``channels`` channels of ``bottleneck`` pixels, transposed
    convolutions (``layers.up_block``) each doubling
    the length until one feature column is left per ``block`` pixels, and a
    locally connected output layer: each block of ``block`` pixels is its own
    linear map of the ``channels`` features of its column (``decoder_out``,
    shape ``(n_blocks, channels, block)``), cropped to ``n_pix``. The
    transposed convolutions run at coarse resolution only and the output layer
    is one batched matrix product, so :math:`G` costs a few times the linear
    path, not a full-resolution convolution stack. With :math:`N = 0` the
    generator is a linear model whose orthonormal :math:`W` (as set by
    `~specutils_deepclean.training.generator.train_generator`, from PCA) is an exact isometry.

    The encoder mirrors it: :math:`E(y) = V (\tilde y - \bar s) + M(\tilde y, m)`
    where :math:`\tilde y` is the spectrum with missing pixels filled by linear
    interpolation (`~specutils_deepclean.models.layers.fill_missing`), :math:`m` the
    missing mask (a second input
    channel, so filled values are never taken for data), :math:`V` an
    :math:`L \times D` matrix (``encoder_linear``) and :math:`M` ``depth``
    strided convolutions (``layers.down_block``,
    ``channels`` wide) then two linear layers.

    The depth is the smallest ``depth >= 1`` with
    ``ceil(n_pix / 2**depth) <= bottleneck_length``; inputs are padded with
    their edge values (flagged missing) to ``bottleneck * 2**depth`` pixels
    (``padded_length``), outputs cropped back to the centre ``n_pix``.

    Parameters
    ----------
    n_pix : int
        Pixels per spectrum (>= 2).
    latent_dim : int
        :math:`L`, the size of the latent space.
    channels : int, optional
        Channels of the convolutional layers.
    kernel_size : int, optional
        Odd kernel of the encoder's strided convolutions.
    bottleneck_length : int, optional
        Longest allowed coarsest level (sets the depth).
    hidden : int, optional
        Width of the fully connected layer next to the latent code.
    block : int, optional
        Pixels per column of the output layer, a power of 2 (capped at
        ``2**depth``).

    Raises
    ------
    ValueError
        If a hyper-parameter has a bad value or type.

    References
    ----------
    Kang et al., *A novel stellar spectrum denoising method based on deep
    Bayesian modeling*, Section 3.3, Eq. 10.

    Examples
    --------
    >>> import torch
    >>> from specutils_deepclean.models.generator import IsometricAutoencoder
    >>> model = IsometricAutoencoder(n_pix=100, latent_dim=4, channels=2,
    ...                              bottleneck_length=8, hidden=8, block=4)
    >>> model.depth, model.padded_length, model.block
    (4, 112, 4)
    >>> recon, z = model(torch.ones(3, 100))
    >>> recon.shape, z.shape
    (torch.Size([3, 100]), torch.Size([3, 4]))
    >>> model.generate(torch.zeros(5, 4)).shape
    torch.Size([5, 100])
    """

    def __init__(
        self,
        n_pix: int,
        latent_dim: int,
        channels: int = 16,
        kernel_size: int = 5,
        bottleneck_length: int = 32,
        hidden: int = 64,
        block: int = 32,
    ):
        super().__init__()
        self._config = _check_config(
            n_pix, latent_dim, channels, kernel_size, bottleneck_length, hidden, block
        )
        self.depth = _depth(n_pix, bottleneck_length)
        self.bottleneck = -(-n_pix // 2**self.depth)
        self.padded_length = self.bottleneck * 2**self.depth
        self.block = min(block, 2**self.depth)
        n_blocks = self.padded_length // self.block
        self.register_buffer("mean", torch.zeros(n_pix))
        self.linear = nn.Linear(latent_dim, n_pix, bias=False)
        self.encoder_linear = nn.Linear(n_pix, latent_dim, bias=False)
        self.encoder_conv = nn.Sequential(
            down_block(2, channels, kernel_size),
            *(down_block(channels, channels, kernel_size) for _ in range(self.depth - 1)),
        )
        self.encoder_head = nn.Sequential(
            nn.Linear(channels * self.bottleneck, hidden),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(hidden, latent_dim),
        )
        self.decoder_head = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(hidden, channels * self.bottleneck),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        n_up = self.depth - (self.block.bit_length() - 1)
        self.decoder_conv = nn.Sequential(*(up_block(channels, channels) for _ in range(n_up)))
        self.decoder_out = nn.Parameter(torch.empty(n_blocks, channels, self.block))
        with torch.no_grad():
            self.decoder_out.uniform_(-1.0, 1.0).mul_(_RESIDUAL_INIT / math.sqrt(channels))
            self.encoder_head[-1].weight.mul_(_RESIDUAL_INIT)
            self.encoder_head[-1].bias.zero_()

    @property
    def config(self) -> dict:
        """The hyper-parameters: ``IsometricAutoencoder(**model.config)`` rebuilds the network."""
        return copy.deepcopy(self._config)

    @property
    def n_pix(self) -> int:
        """Pixels per spectrum."""
        return self._config["n_pix"]

    @property
    def latent_dim(self) -> int:
        """:math:`L`, the size of the latent space."""
        return self._config["latent_dim"]

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self._config.items())

    def encode(self, flux, missing=None) -> torch.Tensor:
        r"""The latent code :math:`z = E(y)`.

        Parameters
        ----------
        flux : tensor, shape ``(batch, n_pix)``
            Median-normalised spectra; non-finite values are missing.
        missing : bool tensor, shape ``(batch, n_pix)``, optional
            True where a pixel is missing.

        Returns
        -------
        tensor, shape ``(batch, latent_dim)``

        Raises
        ------
        ValueError
            If the shapes are wrong.
        TypeError
            If ``missing`` is not boolean.
        """
        flux, missing = self.encoder_inputs(flux, missing)
        centred = fill_missing(flux, missing) - self.mean
        pad = self.padded_length - self.n_pix
        left, right = pad // 2, pad - pad // 2
        signal = nn.functional.pad(centred.unsqueeze(1), (left, right), mode="replicate")
        flags = nn.functional.pad(missing.to(flux.dtype), (left, right), value=1.0).unsqueeze(1)
        features = self.encoder_conv(torch.cat([signal, flags], dim=1)).flatten(1)
        return self.encoder_linear(centred) + self.encoder_head(features)

    def generate(self, z) -> torch.Tensor:
        r"""The generator :math:`G(z) = \bar s + W z + N(z)`, differentiable in ``z``.

        Parameters
        ----------
        z : tensor, shape ``(..., latent_dim)``
            Latent codes; any leading shape.

        Returns
        -------
        tensor, shape ``(..., n_pix)``

        Raises
        ------
        ValueError
            If the last axis of ``z`` is not ``latent_dim`` long.
        """
        z = torch.as_tensor(z, dtype=self.mean.dtype, device=self.mean.device)
        if z.ndim == 0 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"z must end in latent_dim={self.latent_dim} values, got shape {tuple(z.shape)}"
            )
        flat = z.reshape(-1, self.latent_dim)
        features = self.decoder_head(flat).view(flat.shape[0], -1, 1, self.bottleneck)
        columns = run_channels_last(self.decoder_conv, features.contiguous(memory_format=_LAST))
        out = self.mean + self.linear(flat) + self._output_layer(columns)
        return out.reshape(z.shape[:-1] + (self.n_pix,))

    def _output_layer(self, columns: torch.Tensor) -> torch.Tensor:
        """The locally connected output layer: (batch, channels, 1, n_blocks) -> (batch, n_pix)."""
        blocks = torch.bmm(columns[:, :, 0].permute(2, 0, 1).contiguous(), self.decoder_out)
        offset = (self.padded_length - self.n_pix) // 2
        return blocks.transpose(0, 1).flatten(1)[:, offset : offset + self.n_pix]

    def generate_jacobian(self, z) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The generator :math:`G(z)` and its Jacobian :math:`\partial G / \partial z`.

        Forward-mode differentiation by hand: the ``latent_dim`` tangents
        :math:`e_1, \dots, e_L` go through the decoder with its weights (no
        biases) and the slopes of its leaky ReLUs at ``z``, as one batch. The
        decoder is piecewise linear, so this is exact wherever :math:`G` is
        differentiable (everywhere but on the kinks of the leaky ReLUs), and
        far cheaper than :math:`L` automatic-differentiation passes. No graph
        is recorded.

        Parameters
        ----------
        z : tensor, shape ``(n, latent_dim)``
            Latent codes.

        Returns
        -------
        signal : tensor, shape ``(n, n_pix)``
            :math:`G(z)`.
        jacobian : tensor, shape ``(n, n_pix, latent_dim)``
            :math:`\partial G_p / \partial z_l` (a transposed view of the
            ``n_pix`` middle pixels of a contiguous ``(n, latent_dim,
            padded_length)`` tensor).

        Raises
        ------
        ValueError
            If ``z`` is not 2-D with ``latent_dim`` columns.
        """
        z = torch.as_tensor(z, dtype=self.mean.dtype, device=self.mean.device)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (n, {self.latent_dim}), got {tuple(z.shape)}")
        n, dim = z.shape
        with torch.no_grad():
            x, dx = z, None
            for layer in self.decoder_head:
                if isinstance(layer, nn.Linear):
                    x = layer(x)
                    dx = layer.weight.T.expand(n, dim, -1) if dx is None else dx @ layer.weight.T
                else:
                    x, dx = _leaky_tangent(layer, x, dx, 1)
            # the convolutions channels-last (see run_channels_last), tangents unbiased
            x = x.reshape(n, -1, 1, self.bottleneck).contiguous(memory_format=_LAST)
            dx = dx.reshape(n * dim, -1, 1, self.bottleneck).contiguous(memory_format=_LAST)
            for conv, act in self.decoder_conv:
                x = run_channels_last(conv, x)
                dx = run_channels_last(conv, dx, bias=False)
                x, dx = _leaky_tangent(act, x, dx, dim)
            # the output layer's tangents in their (block, row, pixel) order go
            # straight into the sum with W, one pass, on the padded pixel grid
            n_blocks = dx.shape[-1]
            blocks = torch.bmm(dx[:, :, 0].permute(2, 0, 1).contiguous(), self.decoder_out)
            tangents = blocks.view(n_blocks, n, dim, self.block).permute(1, 2, 0, 3)
            offset = (self.padded_length - self.n_pix) // 2
            linear = nn.functional.pad(
                self.linear.weight.T, (offset, self.padded_length - self.n_pix - offset)
            )
            jacobian = torch.empty(n, dim, n_blocks, self.block, dtype=z.dtype, device=z.device)
            torch.add(linear.view(dim, n_blocks, self.block), tangents, out=jacobian)
            jacobian = jacobian.view(n, dim, -1)[:, :, offset : offset + self.n_pix]
            signal = self.mean + self.linear(z) + self._output_layer(x)
        return signal, jacobian.transpose(1, 2)

    def forward(self, flux, missing=None):
        """Encode and regenerate: ``(G(E(y)), E(y))``.

        Parameters
        ----------
        flux, missing
            As in `encode`.

        Returns
        -------
        recon : tensor, shape ``(batch, n_pix)``
        z : tensor, shape ``(batch, latent_dim)``
        """
        z = self.encode(flux, missing)
        return self.generate(z), z

    def encoder_inputs(self, flux, missing):
        """Check ``flux`` and ``missing`` and return them as tensors of the model's dtype.

        Non-finite flux counts as missing; the returned flux still holds the raw
        values (fill them with `~specutils_deepclean.models.layers.fill_missing`).
        """
        ref = self.mean
        flux = torch.as_tensor(flux, dtype=ref.dtype, device=ref.device)
        if flux.ndim != 2 or flux.shape[1] != self.n_pix:
            raise ValueError(f"flux must have shape (batch, {self.n_pix}), got {tuple(flux.shape)}")
        return flux, missing_mask(flux, missing)


def _leaky_tangent(act: nn.LeakyReLU, x: torch.Tensor, dx: torch.Tensor, repeat: int):
    """A leaky ReLU applied to ``x`` and to its tangents ``dx`` (``repeat`` per row of ``x``).

    With ``repeat == 1``, ``dx`` has one more axis than ``x`` (after the first);
    otherwise it has ``x``'s shape with ``repeat`` rows per row of ``x`` (any
    memory layout, kept: the products are taken in place).
    """
    slope = torch.full_like(x, act.negative_slope).masked_fill_(x > 0, 1.0)
    if repeat == 1:
        return x * slope, dx * slope[:, None]
    tangents = dx.unflatten(0, (x.shape[0], repeat))
    tangents.mul_(slope[:, None])
    return x.mul_(slope), dx


def _depth(n_pix: int, bottleneck_length: int) -> int:
    depth = 1
    while -(-n_pix // 2**depth) > bottleneck_length:
        depth += 1
    return depth


def _check_config(n_pix, latent_dim, channels, kernel_size, bottleneck_length, hidden, block):
    names = (
        "n_pix",
        "latent_dim",
        "channels",
        "kernel_size",
        "bottleneck_length",
        "hidden",
        "block",
    )
    values = (n_pix, latent_dim, channels, kernel_size, bottleneck_length, hidden, block)
    config = {name: _check_int(value, name) for name, value in zip(names, values, strict=True)}
    if config["n_pix"] < 2:
        raise ValueError(f"n_pix must be at least 2, got {n_pix!r}")
    if config["kernel_size"] % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
    if config["block"] & (config["block"] - 1):
        raise ValueError(f"block must be a power of 2, got {block!r}")
    return config


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


__getattr__ = moved(
    __name__,
    {
        "fit_generator": "specutils_deepclean.training.generator:train_generator",
        "init_linear_paths": "specutils_deepclean.training.generator",
        "param_groups": "specutils_deepclean.training.generator",
        "isometry_loss": "specutils_deepclean.training.generator",
        "reconstruction_loss": "specutils_deepclean.training.generator",
    },
)
