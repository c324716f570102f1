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
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from .layers import LEAKY_SLOPE, down_block, fill_missing, missing_mask, up_block

__all__ = [
    "IsometricAutoencoder",
    "init_linear_paths",
    "param_groups",
    "fit_generator",
    "isometry_loss",
    "reconstruction_loss",
]

#: Factor applied to the default initial weights of the last layer of each
#: nonlinear path, so a fresh model is close to its linear (PCA) path.
_RESIDUAL_INIT = 0.01


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
    `fit_generator`, from PCA) is an exact isometry.

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
        features = self.decoder_head(flat).view(flat.shape[0], -1, self.bottleneck)
        columns = self.decoder_conv(features)  # (batch, channels, n_blocks)
        out = self.mean + self.linear(flat) + self._output_layer(columns)
        return out.reshape(z.shape[:-1] + (self.n_pix,))

    def _output_layer(self, columns: torch.Tensor) -> torch.Tensor:
        """The locally connected output layer: (batch, channels, n_blocks) -> (batch, n_pix)."""
        blocks = torch.bmm(columns.permute(2, 0, 1).contiguous(), self.decoder_out)
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
            :math:`\partial G_p / \partial z_l` (a transposed view of a
            contiguous ``(n, latent_dim, n_pix)`` tensor).

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
            x = x.reshape(n, -1, self.bottleneck)
            dx = dx.reshape(n * dim, -1, self.bottleneck)
            for conv, act in self.decoder_conv:
                x = conv(x)
                dx = nn.functional.conv_transpose1d(
                    dx, conv.weight, None, conv.stride, conv.padding
                )
                x, dx = _leaky_tangent(act, x, dx, dim)
            residual = self._output_layer(dx).reshape(n, dim, self.n_pix)
            jacobian = self.linear.weight.T + residual
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


def reconstruction_loss(recon, flux, missing=None) -> torch.Tensor:
    r"""Masked squared error :math:`\lVert y - G(E(y))\rVert^2`, the first term of Eq. 10.

    Per spectrum, the sum of squared errors over the observed pixels, scaled by
    ``n_pix / n_observed`` so a spectrum with gaps weighs as much as a complete
    one; missing pixels contribute nothing (their values are never read).
    Averaged over the batch. Divide by ``n_pix`` for the per-pixel MSE.

    Parameters
    ----------
    recon, flux : tensor, shape ``(batch, n_pix)``
        Reconstruction and data (non-finite data are missing).
    missing : bool tensor, shape ``(batch, n_pix)``, optional
        True where a pixel is missing.

    Returns
    -------
    tensor
        A scalar.

    Examples
    --------
    >>> import torch
    >>> flux = torch.tensor([[1.0, 2.0, float("nan"), 4.0]])
    >>> reconstruction_loss(torch.ones(1, 4), flux)
    tensor(13.3333)
    """
    gone = ~torch.isfinite(flux)
    if missing is not None:
        gone = gone | missing
    sq = torch.where(gone, torch.zeros_like(recon), recon - torch.where(gone, 0.0, flux)).square()
    observed = (~gone).sum(-1).clamp(min=1).to(recon.dtype)
    return (sq.sum(-1) * flux.shape[-1] / observed).mean()


def isometry_loss(generate, z, delta: float, *, generator: torch.Generator | None = None):
    r"""The local-isometry term of Eq. 10, averaged over a batch of codes.

    .. math::

        E_\delta \bigl(\lVert G(z) - G(z + \delta)\rVert - \lVert\delta\rVert\bigr)^2

    :math:`\delta` is drawn uniformly on the sphere of radius ``delta`` in
    :math:`\mathbb R^L` (a normalised Gaussian vector), one per code, and the
    norm is the plain Euclidean norm in pixel space, as in the paper (see the
    Notes). The mean over the batch is returned.

    Parameters
    ----------
    generate : callable
        :math:`G`, mapping ``(batch, L)`` to ``(batch, n_pix)``.
    z : tensor, shape ``(batch, L)``
        Latent codes.
    delta : float
        Radius of the perturbation sphere (> 0).
    generator : `torch.Generator`, optional
        Source of the random directions.

    Returns
    -------
    tensor
        A scalar.

    Notes
    -----
    The norm is not rescaled by the number of pixels. With median-normalised
    flux this makes latent distances equal to pixel-space distances, the
    geometry of PCA coefficients on an orthonormal basis; the linear path of
    `IsometricAutoencoder` starts exactly there, so the penalty measures how far
    the nonlinear residual distorts it.

    Examples
    --------
    >>> import torch
    >>> basis = torch.linalg.qr(torch.randn(50, 3, dtype=torch.float64))[0]
    >>> loss = isometry_loss(lambda z: z @ basis.T, torch.randn(8, 3, dtype=torch.float64), 0.1)
    >>> float(loss) < 1e-20
    True
    """
    if isinstance(delta, bool) or not isinstance(delta, Real) or not 0 < delta < math.inf:
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")
    direction = torch.randn(
        z.shape,
        generator=generator,
        dtype=z.dtype,
        device="cpu" if generator is None else generator.device,
    ).to(z.device)
    step = delta * direction / direction.norm(dim=-1, keepdim=True)
    moved = generate(torch.cat([z, z + step]))
    distance = (moved[z.shape[0] :] - moved[: z.shape[0]]).norm(dim=-1)
    return (distance - delta).square().mean()


def fit_generator(
    train_flux,
    train_missing=None,
    *,
    latent_dim: int,
    val=None,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    isometry_weight: float = 1.0,
    delta: float = 0.1,
    seed: int = 0,
    device=None,
    progress: bool = True,
    noise_augment: float = 0.0,
    tilt_augment: float = 0.0,
    **architecture,
) -> IsometricAutoencoder:
    r"""Train an `IsometricAutoencoder` with the loss of Eq. 10 and Adam.

    The loss per batch is `reconstruction_loss` plus ``isometry_weight`` times
    `isometry_loss` at the (detached) codes :math:`z = E(y)`; with weight 1 this
    is Eq. 10 exactly. Before training, :math:`\bar s` is set to the mean of the
    gap-filled training spectra and both linear paths to their top
    ``latent_dim`` principal components (:math:`W` orthonormal,
    :math:`V = W^T`), so the untrained model is PCA with :math:`k = L`.

    Augmentation (fresh draws every epoch): each training spectrum is
    multiplied by a linear tilt :math:`1 + a x`, :math:`x \in [-1, 1]` across
    the spectrum, :math:`a \sim U(-t, t)` with ``t = tilt_augment``, and
    divided by its new median (a flux-calibration change; input and target
    alike); then the encoder's input (not the target) gets Gaussian noise of a
    standard deviation drawn from :math:`U(0, \mathrm{noise\_augment})` per
    spectrum, so :math:`E` gives useful starting codes for noisy spectra.

    Initial weights (seeded inside `torch.random.fork_rng`), batch order,
    augmentation and :math:`\delta` come from ``seed`` only, so a CPU run is
    reproducible exactly and the global random state is left as it was.

    Parameters
    ----------
    train_flux : array_like, shape ``(n, n_pix)``
        Median-normalised training spectra (non-finite values are missing).
    train_missing : array_like of bool, shape ``(n, n_pix)``, optional
        True where a training pixel is missing.
    latent_dim : int
        :math:`L` (at most ``n`` and ``n_pix``).
    val : tuple, optional
        ``(flux, missing)`` of validation spectra (``missing`` may be None).
        When given, the weights with the lowest validation score (the median
        over spectra of the per-pixel MSE of :math:`G(E(y))` on observed
        pixels), the untrained PCA state included, are kept.
    epochs : int, optional
        Passes over the training set.
    batch_size : int, optional
        Spectra per step.
    lr : float, optional
        Adam learning rate.
    isometry_weight : float, optional
        :math:`\lambda` (>= 0), the weight of the isometry term.
    delta : float, optional
        Radius of the perturbation sphere in latent space.
    seed : int, optional
        Seed of everything random.
    device : str or `torch.device`, optional
        Where to train (default: CUDA if available, else the CPU).
    progress : bool, optional
        Show a progress bar (tqdm, when installed).
    noise_augment : float, optional
        Largest noise standard deviation added to the encoder's input (>= 0).
    tilt_augment : float, optional
        Largest fractional tilt across the spectrum (0 <= t < 1).
    **architecture
        Further `IsometricAutoencoder` options (``channels``, ``kernel_size``,
        ``bottleneck_length``, ``hidden``, ``block``).

    Returns
    -------
    IsometricAutoencoder
        In eval mode on ``device``, with ``history`` (``{"train": [...],
        "recon": [...], "isometry": [...], "val": [...]}``: mean total loss,
        per-pixel reconstruction MSE and isometry term per epoch on the
        training batches, and the validation score, whose entry 0 is the
        untrained PCA state) and ``best_epoch`` (0 for the untrained state,
        ``e`` for the end of epoch ``e``).

    Raises
    ------
    TypeError
        If a missing mask is not boolean.
    ValueError
        If the data or a setting is bad.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.linspace(0.0, 1.0, 64)
    >>> flux = 1.0 + 0.1 * np.sin(6 * x + rng.uniform(0, 3, (40, 1)))
    >>> model = fit_generator(flux, latent_dim=2, epochs=2, channels=2, bottleneck_length=8,
    ...                       hidden=8, block=4, device="cpu", progress=False)
    >>> len(model.history["train"]), model.latent_dim
    (2, 2)
    """
    _check_settings(epochs, batch_size, lr, seed, isometry_weight, noise_augment, tilt_augment)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    flux, missing = _fit_data(train_flux, train_missing, "train_flux", device)
    latent_dim = _check_int(latent_dim, "latent_dim")
    if latent_dim > min(flux.shape):
        raise ValueError(
            f"latent_dim={latent_dim} exceeds the number of training spectra or pixels "
            f"{tuple(flux.shape)}"
        )
    valid = None
    if val is not None:
        if not isinstance(val, tuple) or len(val) != 2:
            raise ValueError("val must be a tuple (flux, missing)")
        valid = _fit_data(*val, "val flux", device)
        if valid[0].shape[1] != flux.shape[1]:
            raise ValueError(f"val flux has {valid[0].shape[1]} pixels, train_flux {flux.shape[1]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IsometricAutoencoder(flux.shape[1], latent_dim, **architecture)
    model.to(device)
    init_linear_paths(model, fill_missing(flux, missing))
    rng = torch.Generator(device=device).manual_seed(seed)
    optimiser = torch.optim.Adam(param_groups(model, lr))
    history = {"train": [], "recon": [], "isometry": [], "val": []}
    best = (math.inf, None, 0)
    if valid is not None:
        best = _keep_best(model, valid, history, best, 0)
    augment = (noise_augment, tilt_augment)
    for epoch in _epochs(epochs, progress):
        model.train()
        totals = _train_epoch(
            model, (flux, missing), optimiser, batch_size, rng, augment, isometry_weight, delta
        )
        for key, value in zip(("train", "recon", "isometry"), totals, strict=True):
            history[key].append(value)
        if valid is not None:
            best = _keep_best(model, valid, history, best, epoch + 1)
    if valid is not None:
        model.load_state_dict(best[1])
    model.history = history
    model.best_epoch = best[2] if valid is not None else epochs
    return model.eval()


def init_linear_paths(model: IsometricAutoencoder, filled: torch.Tensor) -> None:
    """Put the mean spectrum and the top principal components into the linear paths.

    Parameters
    ----------
    model : IsometricAutoencoder
        The network to initialise (its mean buffer and linear encoder/decoder).
    filled : torch.Tensor, shape (n, n_pix)
        Training spectra with their gaps filled.
    """
    mean = filled.mean(0)
    _, _, vh = torch.linalg.svd(filled - mean, full_matrices=False)
    basis = vh[: model.latent_dim]
    with torch.no_grad():
        model.mean.copy_(mean)
        model.linear.weight.copy_(basis.T)
        model.encoder_linear.weight.copy_(basis)


def param_groups(model: IsometricAutoencoder, lr: float) -> list[dict]:
    r"""Adam groups: the linear paths step ``lr / sqrt(n_pix)``, the size of their entries.

    Adam's steps are about ``lr`` per entry whatever the entry's scale; entries of
    an orthonormal :math:`D \times L` basis are about :math:`1/\sqrt D`, so the
    full ``lr`` would scramble the PCA start within a few steps.
    """
    linear = [model.linear.weight, model.encoder_linear.weight]
    ids = {id(p) for p in linear}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": linear, "lr": lr / math.sqrt(model.n_pix)}]


def _train_epoch(model, data, optimiser, batch_size, rng, augment, weight, delta):
    """One pass in random order: mean total loss, per-pixel MSE and isometry term."""
    flux, missing = data
    sums = np.zeros(3)
    order = torch.randperm(flux.shape[0], generator=rng, device=rng.device).to(flux.device)
    for index in order.split(batch_size):
        target, gone = _augment(flux[index], missing[index], augment[1], rng)
        noisy = _add_noise(target, augment[0], rng)
        recon, z = model(noisy, gone)
        recon_term = reconstruction_loss(recon, target, gone)
        iso_term = isometry_loss(model.generate, z.detach(), delta, generator=rng)
        loss = recon_term + weight * iso_term
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        terms = [float(t.detach()) for t in (loss, recon_term / flux.shape[1], iso_term)]
        sums += np.array(terms) * index.numel()
    return (sums / flux.shape[0]).tolist()


def _augment(flux, missing, tilt, rng):
    """Random linear tilt, then division by the new median of the observed pixels."""
    if tilt == 0:
        return flux, missing
    slope = (torch.rand(flux.shape[0], 1, generator=rng, device=rng.device) * 2 - 1) * tilt
    x = torch.linspace(-1.0, 1.0, flux.shape[1], device=flux.device)
    tilted = flux * (1 + slope.to(flux.device) * x)
    level = torch.where(missing, torch.nan, tilted).nanmedian(dim=1, keepdim=True).values
    return tilted / level, missing


def _add_noise(flux, noise, rng):
    if noise == 0:
        return flux
    scale = torch.rand(flux.shape[0], 1, generator=rng, device=rng.device) * noise
    draw = torch.randn(flux.shape, generator=rng, device=rng.device)
    return flux + (scale * draw).to(flux.device)


def _keep_best(model, valid, history, best, epoch):
    model.eval()
    score = _val_score(model, *valid)
    history["val"].append(score)
    if score < best[0]:
        return (score, copy.deepcopy(model.state_dict()), epoch)
    return best


def _val_score(model, flux, missing, chunk: int = 256) -> float:
    """Median over spectra of the per-pixel MSE of ``G(E(y))`` on observed pixels."""
    scores = []
    with torch.no_grad():
        for index in torch.arange(flux.shape[0], device=flux.device).split(chunk):
            recon, _ = model(flux[index], missing[index])
            err = torch.where(missing[index], 0.0, recon - torch.nan_to_num(flux[index])).square()
            scores.append(err.sum(1) / (~missing[index]).sum(1).clamp(min=1))
    return float(torch.cat(scores).median())


def _epochs(epochs: int, progress: bool):
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(range(epochs), desc="fit_generator", unit="epoch")
    return range(epochs)


def _fit_data(flux, missing, name: str, device):
    """Flux (float32, NaN-free at observed pixels) and the full missing mask."""
    values = torch.as_tensor(np.asarray(flux, dtype=np.float32), device=device)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_spectra, n_pix), got shape {tuple(values.shape)}")
    gone = ~torch.isfinite(values)
    if missing is not None:
        missing = np.asarray(missing)
        if missing.dtype != bool:
            raise TypeError(f"missing must be a boolean array, got {missing.dtype}")
        if missing.shape != tuple(values.shape):
            raise ValueError(f"missing has shape {missing.shape}, {name} {tuple(values.shape)}")
        gone |= torch.as_tensor(missing, device=device)
    if bool(gone.all(dim=1).any()):
        raise ValueError(f"{name} has a spectrum with no observed pixel")
    return torch.where(gone, 0.0, values), gone


def _leaky_tangent(act: nn.LeakyReLU, x: torch.Tensor, dx: torch.Tensor, repeat: int):
    """A leaky ReLU applied to ``x`` and to its tangents ``dx`` (``repeat`` per row of ``x``)."""
    slope = torch.full_like(x, act.negative_slope).masked_fill_(x > 0, 1.0)
    if repeat == 1:
        return x * slope, dx * slope[:, None]
    return x * slope, dx * slope.repeat_interleave(repeat, dim=0)


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


def _check_settings(epochs, batch_size, lr, seed, weight, noise, tilt) -> None:
    _check_int(epochs, "epochs")
    _check_int(batch_size, "batch_size")
    for name, value, high in (
        ("lr", lr, math.inf),
        ("isometry_weight", weight, math.inf),
        ("noise_augment", noise, math.inf),
        ("tilt_augment", tilt, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < high:
            raise ValueError(f"{name} must be a finite number in [0, {high}), got {value!r}")
    if lr == 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
