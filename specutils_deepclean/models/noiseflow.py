r"""NoiseFlow: the autoregressive observation model :math:`p(y \mid s)` of Kang et al.

After Kang et al., *A novel stellar spectrum denoising method based on deep
Bayesian modeling*, Section 3.4 (Eqs. 11-15, Fig. 2). The noise
:math:`\epsilon = y - s` is modelled pixel by pixel: pixel :math:`d` is Gaussian
with a mean and a log standard deviation computed by a small network from the
:math:`K` strictly preceding noise pixels; the first :math:`K` pixels have learned
scalar means and log standard deviations. Pixels that are missing, or that follow
a missing pixel within :math:`K`, do not count (the masked likelihood, Eq. 15).

Beyond the paper, a *whitened* flow models :math:`u = \epsilon / \sigma` for a known
per-pixel uncertainty :math:`\sigma`, so one flow serves spectra of any S/N.
"""

from __future__ import annotations

import copy
import math
from numbers import Integral

import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution, constraints

from .._deprecated import moved

__all__ = ["NoiseFlow", "NoiseFlowDistribution", "counted_pixels"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

#: Factor applied to the default initial weights of the two output heads, so that
#: a fresh flow is close to white noise ``N(0, scale)`` and training starts there.
_HEAD_INIT = 0.01

#: Ratio of the normal standard deviation to the median absolute deviation.
_MAD_TO_STD = 1.482602218505602


class NoiseFlow(nn.Module):
    r"""Autoregressive Gaussian noise model over the :math:`K` preceding pixels.

    With the unit :math:`t_d = \mathrm{scale}\,\sigma_d` (:math:`\sigma_d = 1`
    for a flow that is not whitened) and :math:`u = \epsilon / t`, pixel
    :math:`d` (0-based) has

    .. math::

        u_d \mid u_{d-K:d} \sim \mathcal N\bigl(\mu_d, e^{2\alpha_d}\bigr), \qquad
        (\mu_d, \alpha_d) = \begin{cases}
            (\mu^0_d, \alpha^0_d) & d < K \text{ (learned scalars)}\\
            (f_\mu, f_\alpha)(u_{d-K}, \dots, u_{d-1}) & d \ge K
        \end{cases}

    so :math:`\xi_d = (u_d - \mu_d)\, e^{-\alpha_d}` is standard normal
    (Eqs. 12-13). :math:`f` is a causal convolution (1 input channel,
    ``channels`` outputs, kernel :math:`K`; the column that would see pixel
    :math:`d` itself is dropped), then one linear layer with ReLU per entry of
    ``hidden``, then two linear heads. Calling the flow gives the distribution
    :math:`p(y \mid s)` (`NoiseFlowDistribution`).

    ``scale`` is a buffer (saved in the state dict, not trained) set by
    `~specutils_deepclean.training.noiseflow.train_noiseflow` to the robust standard
    deviation of the training residuals, so the network always works on numbers of order one.

    Parameters
    ----------
    context : int, optional
        :math:`K`, the number of preceding pixels each pixel depends on (>= 1).
    channels : int, optional
        :math:`C`, output channels of the causal convolution.
    hidden : sequence of int, optional
        Widths of the linear + ReLU layers after the convolution
        (:math:`C \to \dots \to C'`); empty gives a linear autoregressive model.
    whitened : bool, optional
        Whether the flow models whitened residuals :math:`\epsilon / \sigma`
        (then every call needs ``sigma``) or raw residuals (then no call may
        pass ``sigma``). The caller chooses the flow that matches its data.

    Raises
    ------
    ValueError
        If a hyper-parameter has a bad value or type.

    References
    ----------
    Kang et al., *A novel stellar spectrum denoising method based on deep
    Bayesian modeling*, Section 3.4.

    Examples
    --------
    >>> import torch
    >>> from specutils_deepclean.models.noiseflow import NoiseFlow
    >>> flow = NoiseFlow(context=4, channels=8, hidden=[8])
    >>> flow.config
    {'context': 4, 'channels': 8, 'hidden': [8], 'whitened': False}
    >>> eps = torch.zeros(2, 32)
    >>> flow(torch.zeros(32)).log_prob(eps).shape
    torch.Size([2])
    """

    def __init__(self, context: int = 8, channels: int = 16, hidden=(16,), whitened: bool = False):
        super().__init__()
        self._config = _check_config(context, channels, hidden, whitened)
        self.conv = nn.Conv1d(1, channels, context)
        layers, width = [], channels
        for size in self._config["hidden"]:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.head_mu = nn.Linear(width, 1)
        self.head_alpha = nn.Linear(width, 1)
        with torch.no_grad():
            for head in (self.head_mu, self.head_alpha):
                head.weight.mul_(_HEAD_INIT)
                head.bias.zero_()
        self.mu0 = nn.Parameter(torch.zeros(context))
        self.alpha0 = nn.Parameter(torch.zeros(context))
        self.register_buffer("scale", torch.ones(()))

    @property
    def config(self) -> dict:
        """The hyper-parameters: ``NoiseFlow(**flow.config)`` rebuilds the network."""
        return copy.deepcopy(self._config)

    @property
    def context(self) -> int:
        """:math:`K`, the number of preceding pixels each pixel depends on."""
        return self._config["context"]

    @property
    def whitened(self) -> bool:
        """Whether the flow models residuals divided by their uncertainty."""
        return self._config["whitened"]

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self._config.items())

    def forward(self, signal=None, sigma=None) -> NoiseFlowDistribution:
        r"""The observation model :math:`p(y \mid s)` for a signal and uncertainty.

        Parameters
        ----------
        signal : tensor, shape ``(..., n_pix)``, optional
            The noise-free spectrum :math:`s` (zero if omitted; then ``sigma``
            gives the length). ``torch.zeros(n_pix)`` gives the noise alone, for
            any batch.
        sigma : tensor, shape ``(..., n_pix)``, optional
            Per-pixel standard deviation; required by a whitened flow, refused
            by one that is not. Non-finite values mark missing pixels.

        Returns
        -------
        NoiseFlowDistribution

        Raises
        ------
        ValueError
            If neither is given, the shapes do not broadcast, or ``sigma`` does
            not match the flow's ``whitened`` setting.
        """
        return NoiseFlowDistribution(self, signal, sigma)

    def _conditional(self, u: torch.Tensor):
        """``(mu, alpha)`` of pixels ``K..L-1`` of ``u`` (N, L), teacher-forced."""
        out, _ = self._network(u)
        return out[:, 0], out[:, 1]

    def _network(self, u: torch.Tensor, masks: bool = False):
        """Both heads (N, 2, L - K) for pixels ``K..L-1`` and, with ``masks``, where each
        ReLU is open (1.0, else 0.0, in ``u``'s dtype; else an empty list).

        Column ``j`` of the convolution sees ``u[j:j+K]`` and gives pixel ``j + K``.
        The convolution and the first linear layer (no activation between them)
        are applied as one convolution; every layer works on (N, channels, pixels)
        so no activation is transposed.
        """
        weight, bias = self.conv.weight[:, 0], self.conv.bias  # (C, K), (C,)
        linears = [layer for layer in self.mlp if isinstance(layer, nn.Linear)]
        if linears:
            weight = linears[0].weight @ weight
            bias = linears[0].weight @ bias + linears[0].bias
        # the convolution as one batched product with the windows (N, K, L - K) and a
        # row of ones for the bias: on one input channel, faster on CPU than conv1d
        k, width = self.context, u.shape[-1] - self.context
        windows = u.new_empty(u.shape[0], k + 1, width)
        windows[:, :k] = u.unfold(-1, k, 1)[:, :width].transpose(1, 2)
        windows[:, k] = 1.0
        h = torch.matmul(torch.cat([weight, bias[:, None]], 1), windows)
        opened = []
        for i, layer in enumerate(linears):
            if i:
                h = torch.matmul(layer.weight, h) + layer.bias[:, None]
            h = torch.relu_(h)
            if masks:
                opened.append(torch.sign(h))  # 1 where open, 0 where not (h >= 0)
        heads = torch.cat([self.head_mu.weight, self.head_alpha.weight])  # (2, C')
        head_bias = torch.cat([self.head_mu.bias, self.head_alpha.bias])
        return torch.matmul(heads, h) + head_bias[:, None], opened

    def window_derivatives(self, u: torch.Tensor):
        r"""Conditional means and log standard deviations, and their derivatives in the window.

        For every pixel :math:`d` of ``u``, :math:`(\mu_d, \alpha_d)` and
        :math:`\partial(\mu_d, \alpha_d) / \partial u_{d-K+k}`, :math:`k = 0 \dots K-1`
        (zero for :math:`d < K`, whose parameters are learned scalars). The
        network is piecewise linear (a convolution, linear layers and ReLUs), so
        these derivatives are exact wherever it is differentiable, and the
        second derivatives vanish there.

        Parameters
        ----------
        u : tensor, shape ``(N, n_pix)``
            Whitened residuals :math:`\epsilon / t`, without gradients.

        Returns
        -------
        params : tensor, shape ``(N, 2, n_pix)``
            :math:`\mu` (row 0) and :math:`\alpha` (row 1) of every pixel.
        derivatives : tensor, shape ``(N, 2, K, n_pix)``
            ``derivatives[n, q, k, d]`` is the derivative of row ``q`` of
            ``params[n, :, d]`` in ``u[n, d - K + k]``.
        """
        n, n_pix = u.shape
        k = self.context
        with torch.no_grad():
            out, masks = self._network(u, masks=True)
            heads = torch.cat([self.head_mu.weight, self.head_alpha.weight])  # (2, C')
            linears = [layer for layer in self.mlp if isinstance(layer, nn.Linear)]
            weights = [layer.weight for layer in linears[1:]]
            first = self.conv.weight[:, 0]  # (C, K)
            if linears:
                first = linears[0].weight @ first  # (C_1, K), the fused first layer
            if not masks:
                grad = (heads @ first)[None, :, :, None].expand(n, 2, k, n_pix - k)
            else:  # back from the heads through each mask and the weight below it
                below = [*weights[::-1], first]
                for i, (mask, weight) in enumerate(zip(masks[::-1], below, strict=True)):
                    if i == 0:  # heads (2, C) and weight (C, D) are one (2 D, C) matrix
                        left = heads[:, :, None] * weight
                        left = left.transpose(1, 2).reshape(-1, weight.shape[0])
                        grad = torch.matmul(left, mask).reshape(n, 2, weight.shape[1], -1)
                    else:
                        grad = torch.einsum("nqcp,cd->nqdp", grad * mask[:, None], weight)
            params = torch.cat([torch.stack([self.mu0, self.alpha0]).expand(n, 2, k), out], dim=-1)
            derivatives = grad.new_empty(n, 2, k, n_pix)
            derivatives[..., :k] = 0.0
            derivatives[..., k:] = grad
        return params, derivatives

    def _params(self, u: torch.Tensor):
        """``(mu, alpha)`` of every pixel of ``u`` (N, D), both (N, D)."""
        mu, alpha = self._conditional(u)
        first = (u.shape[0], self.context)
        return (
            torch.cat([self.mu0.expand(first), mu], dim=1),
            torch.cat([self.alpha0.expand(first), alpha], dim=1),
        )

    def standardise(self, u: torch.Tensor) -> torch.Tensor:
        r"""The standard-normal variables :math:`\xi_d = (u_d - \mu_d)\, e^{-\alpha_d}` (Eq. 13).

        Parameters
        ----------
        u : tensor, shape ``(N, n_pix)``
            Whitened residuals :math:`\epsilon / t`, every pixel taken as observed.

        Returns
        -------
        tensor, shape ``(N, n_pix)``
            :math:`\xi`, differentiable in ``u`` and the flow's parameters.
        """
        mu, alpha = self._params(u)
        return _pixel_terms(u, mu, alpha)[0]

    def log_likelihood(self, u: torch.Tensor, counted: torch.Tensor, jacobian=None):
        r"""The masked log likelihood of Eq. 15 in whitened units, and its derivatives.

        Each counted pixel adds :math:`-\xi_d^2 / 2 - \alpha_d` (Eqs. 13-15); the
        terms :math:`-\log t_d - \tfrac12 \log 2\pi` that depend on the whitening
        unit :math:`t` alone are left to the caller
        (`NoiseFlowDistribution.log_prob` adds them).

        With ``jacobian`` :math:`J_u = \partial u / \partial \theta` for M
        parameters :math:`\theta` (for the denoiser, :math:`J_u = -J_G / t` in the
        latent :math:`z`), the gradient in :math:`\theta` and the Hessian of the
        negative log likelihood follow from the flow's banded window derivatives
        (`window_derivatives`): with :math:`e = u - \mu(u)`, :math:`a =
        \alpha(u)`, :math:`J_e = (I - D_\mu) J_u`, :math:`J_a = D_\alpha J_u` and
        :math:`\xi = e\, e^{-a}`, the Hessian is
        :math:`J_e^\top e^{-2a} J_e + 2 J_a^\top \xi^2 J_a - 2 (J_e^\top \xi
        e^{-a} J_a + \text{transpose})` (diagonal weights per pixel).  The
        network is piecewise linear in its input, so this is exact wherever it is
        differentiable, when :math:`u` is linear in :math:`\theta` there too (as
        :math:`G` of the denoiser is: leaky ReLU).

        Parameters
        ----------
        u : tensor, shape ``(N, n_pix)``
            Whitened residuals (any value at pixels that do not count).
        counted : tensor, shape ``(N, n_pix)``
            1 (or True) where a pixel counts (`counted_pixels`), else 0.
        jacobian : tensor, shape ``(N, M, n_pix)``, optional
            :math:`\partial u / \partial \theta`.

        Returns
        -------
        log_lik : tensor, shape ``(N,)``
            Differentiable in ``u`` when ``jacobian`` is None.
        gradient : tensor, shape ``(N, M)``
            Only with ``jacobian``: the gradient of ``log_lik`` in :math:`\theta`.
        hessian : tensor, shape ``(N, M, M)``
            Only with ``jacobian``: the Hessian of ``-log_lik`` in :math:`\theta`.
        """
        if not isinstance(counted, torch.Tensor) or counted.dtype == torch.bool:
            counted = torch.as_tensor(counted, device=u.device).to(u.dtype)
        if jacobian is None:  # the first K pixels (learned scalars) apart: no concatenation
            k = self.context
            out, _ = self._network(u)
            _, _, head = _pixel_terms(u[:, :k], self.mu0, self.alpha0)
            _, _, tail = _pixel_terms(u[:, k:], out[:, 0], out[:, 1])
            return (counted[:, :k] * head).sum(-1) + (counted[:, k:] * tail).sum(-1)
        params, window = self.window_derivatives(u)
        xi, scale, terms = _pixel_terms(u, params[:, 0], params[:, 1])
        lik = (counted * terms).sum(-1)
        context, n_pix = self.context, u.shape[-1]
        # pixel-major (N, P, M) throughout (the denoiser's Jacobians come so: a pixel's
        # M derivatives side by side, so each window tap below is one contiguous
        # run); J_e and J_a one above the other, (N, 2 P, M): each sum over pixels
        # below is one product over 2 P
        jt = jacobian.transpose(1, 2)
        both = jt.new_empty((jt.shape[0], 2 * n_pix, jt.shape[2]))
        je, ja = both[:, :n_pix], both[:, n_pix:]
        je.copy_(jt)
        ja[:, :context].zero_()
        head, tail = je[:, context:], ja[:, context:]
        for k in range(context):
            shifted = jt[:, k : n_pix - context + k]
            head.addcmul_(window[:, 0, k, context:, None], shifted, value=-1.0)
            if k:
                tail.addcmul_(window[:, 1, k, context:, None], shifted)
            else:
                torch.mul(window[:, 1, 0, context:, None], shifted, out=tail)
        # per pixel, the Hessian's weights of (J_e, J_a) pairs: [[s^2, -2 xi s],
        # [-2 xi s, 2 xi^2]] (counted pixels only), applied to the left factor
        weight_e, weight_x = counted * scale.square(), counted * xi * scale
        weight_a = 2 * counted * xi.square()
        left = torch.empty_like(both)
        torch.mul(je, weight_e[..., None], out=left[:, :n_pix])
        left[:, :n_pix].addcmul_(ja, weight_x[..., None], value=-2.0)
        torch.mul(ja, weight_a[..., None], out=left[:, n_pix:])
        left[:, n_pix:].addcmul_(je, weight_x[..., None], value=-2.0)
        hess = left.transpose(1, 2) @ both
        slope = torch.cat([weight_x, counted * (1 - xi.square())], -1)
        grad = -(slope[:, None] @ both)[:, 0]
        return lik, grad, 0.5 * (hess + hess.transpose(1, 2))


class NoiseFlowDistribution(Distribution):
    r"""The distribution :math:`p(y \mid s)` given by a `NoiseFlow` (``flow(signal, sigma)``).

    Its log density is Eq. 15 of Kang et al. written for :math:`y`:

    .. math::

        \log p(y \mid s) = \sum_{d} m_d \Bigl[ -\tfrac12 \xi_d^2 - \alpha_d
            - \tfrac12 \log 2\pi - \log t_d \Bigr],

    :math:`m_d` being `counted_pixels` (a pixel counts only when it and its
    :math:`K` predecessors are observed) and :math:`t_d` the unit of the
    whitening. Missing pixels enter the convolution as zero; this changes only
    the features of pixels that do not count, since a counted pixel's window
    holds observed pixels only, so the value at a missing pixel has no effect.

    Build it by calling a `NoiseFlow`; ``batch_shape`` is the broadcast leading
    shape of ``signal`` and ``sigma``, ``event_shape`` is ``(n_pix,)``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, flow: NoiseFlow, signal=None, sigma=None):
        if not isinstance(flow, NoiseFlow):
            raise TypeError(f"flow must be a NoiseFlow, got {type(flow).__name__}")
        if flow.whitened and sigma is None:
            raise ValueError(
                "this flow models whitened residuals eps / sigma: pass sigma "
                "(torch.ones(n_pix) if the residuals are already whitened)"
            )
        if not flow.whitened and sigma is not None:
            raise ValueError("this flow models raw residuals (whitened=False): do not pass sigma")
        if signal is None and sigma is None:
            raise ValueError("give signal or sigma (torch.zeros(n_pix) for the noise alone)")
        self.flow = flow
        self.signal = None if signal is None else _tensor(signal, "signal", flow)
        self.sigma = None if sigma is None else _tensor(sigma, "sigma", flow)
        given = [x for x in (self.signal, self.sigma) if x is not None]
        if any(x.ndim == 0 for x in given):
            raise ValueError("signal and sigma must have a pixel axis (ndim >= 1)")
        n_pix = given[0].shape[-1]
        if any(x.shape[-1] != n_pix for x in given):
            raise ValueError(
                f"signal and sigma differ in length: {tuple(self.signal.shape)} "
                f"and {tuple(self.sigma.shape)}"
            )
        if n_pix <= flow.context:
            raise ValueError(
                f"spectra of {n_pix} pixels are too short for a context of "
                f"{flow.context} pixels (need at least {flow.context + 1})"
            )
        batch_shape = _broadcast(*(x.shape[:-1] for x in given), what="signal and sigma")
        super().__init__(batch_shape, torch.Size([n_pix]), validate_args=False)

    def log_prob(self, y, missing=None) -> torch.Tensor:
        r"""Masked log density (Eq. 15), differentiable in ``y``, ``signal`` and ``sigma``.

        Parameters
        ----------
        y : tensor, shape ``(..., n_pix)``
            Observed spectra; leading axes broadcast with ``batch_shape``.
            Non-finite values are missing.
        missing : bool tensor, optional
            True where a pixel is missing; broadcast to ``y``'s full shape.

        Returns
        -------
        tensor
            :math:`\log p(y \mid s)` per spectrum (the leading shape).

        Raises
        ------
        TypeError
            If ``missing`` is not boolean.
        ValueError
            If the shapes do not match, or ``sigma`` is not positive at an
            observed pixel.
        """
        return self.log_prob_pixels(y, missing)[0].sum(-1)

    def log_prob_pixels(self, y, missing=None):
        """Per-pixel terms of `log_prob` and the mask of the pixels that count.

        Parameters
        ----------
        y, missing
            As in `log_prob`.

        Returns
        -------
        log_prob : tensor, shape ``(..., n_pix)``
            Each pixel's term (zero where it does not count).
        counted : bool tensor, shape ``(..., n_pix)``
            `counted_pixels` of the full missing mask.
        """
        u, log_unit, gone = self._whiten(y, missing)
        shape = u.shape
        flat = u.reshape(-1, shape[-1])
        mu, alpha = self.flow._params(flat)
        terms = (_pixel_terms(flat, mu, alpha)[2] - _HALF_LOG_2PI).reshape(shape) - log_unit
        counted = counted_pixels(gone, self.flow.context)
        return torch.where(counted, terms, torch.zeros_like(terms)), counted

    def standardise(self, y) -> torch.Tensor:
        r"""The standard-normal variables :math:`\xi_d = (u_d - \mu_d)\, e^{-\alpha_d}` (Eq. 13).

        Every pixel of ``y`` is taken as observed.

        Parameters
        ----------
        y : tensor, shape ``(..., n_pix)``
            Observed spectra.

        Returns
        -------
        tensor
            :math:`\xi`, the broadcast shape of ``y`` and the batch.
        """
        u, _, _ = self._whiten(y, None)
        return self.flow.standardise(u.reshape(-1, u.shape[-1])).reshape(u.shape)

    def rsample(self, sample_shape=(), generator: torch.Generator | None = None):
        r"""Draw spectra autoregressively (pixel by pixel, vectorised over the batch).

        Differentiable in the flow's parameters, ``signal`` and ``sigma``
        (reparameterised: :math:`u_d = \mu_d + e^{\alpha_d} \xi_d`). Pixels
        with a non-finite ``sigma`` come out non-finite.

        Parameters
        ----------
        sample_shape : tuple of int, optional
            Leading shape of the draws (before ``batch_shape``).
        generator : `torch.Generator`, optional
            Source of the random numbers (draws on its device, then moved).

        Returns
        -------
        tensor, shape ``sample_shape + batch_shape + (n_pix,)``
        """
        shape = torch.Size(sample_shape) + self.batch_shape
        n_pix, k = self.event_shape[0], self.flow.context
        ref = self.flow.mu0
        xi = torch.randn(
            (math.prod(shape), n_pix),
            generator=generator,
            dtype=ref.dtype,
            device=ref.device if generator is None else generator.device,
        ).to(ref.device)
        columns = [self.flow.mu0[d] + torch.exp(self.flow.alpha0[d]) * xi[:, d] for d in range(k)]
        pad = torch.zeros_like(xi[:, :1])
        for d in range(k, n_pix):
            window = torch.stack(columns[d - k :] + [pad[:, 0]], dim=1)
            mu, alpha = self.flow._conditional(window)
            columns.append(mu[:, 0] + torch.exp(alpha[:, 0]) * xi[:, d])
        u = torch.stack(columns, dim=1).reshape(shape + (n_pix,))
        y = u * self._unit()
        return y if self.signal is None else y + self.signal

    def sample(self, sample_shape=(), generator: torch.Generator | None = None):
        """`rsample` without gradients.

        Parameters
        ----------
        sample_shape : tuple of int, optional
            Leading shape of the draws.
        generator : `torch.Generator`, optional
            Source of the random numbers.

        Returns
        -------
        tensor, shape ``sample_shape + batch_shape + (n_pix,)``
        """
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def _unit(self) -> torch.Tensor:
        scale = self.flow.scale
        return scale if self.sigma is None else self.sigma * scale

    def _whiten(self, y, missing):
        """``u`` (zero at missing pixels), ``log t`` (zero there) and the missing mask."""
        y = _tensor(y, "y", self.flow)
        n_pix = self.event_shape[0]
        if y.ndim == 0 or y.shape[-1] != n_pix:
            raise ValueError(f"y must end in {n_pix} pixels, got shape {tuple(y.shape)}")
        shape = _broadcast(y.shape[:-1], self.batch_shape, what="y and the batch") + (n_pix,)
        eps = (y if self.signal is None else y - self.signal).expand(shape)
        unit = self._unit().expand(shape)
        gone = ~(torch.isfinite(eps) & torch.isfinite(unit))
        if missing is not None:
            missing = torch.as_tensor(missing, device=eps.device)
            if missing.dtype != torch.bool:
                raise TypeError(f"missing must be a boolean array, got {missing.dtype}")
            gone = gone | _expand(missing, shape, "missing")
        if self.sigma is not None and bool(((unit <= 0) & ~gone).any()):
            raise ValueError("sigma must be positive at every observed pixel")
        unit = torch.where(gone, torch.ones_like(unit), unit)
        eps = torch.where(gone, torch.zeros_like(eps), eps)
        return eps / unit, torch.log(unit), gone


def _pixel_terms(u: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor):
    r"""Eq. 13's :math:`\xi = (u - \mu) e^{-\alpha}`, :math:`e^{-\alpha}`, and each
    pixel's term :math:`-\xi^2 / 2 - \alpha` of Eq. 15 (before the unit's constants)."""
    scale = torch.exp(-alpha)
    xi = (u - mu) * scale
    return xi, scale, -0.5 * xi.square() - alpha


def counted_pixels(missing: torch.Tensor, context: int) -> torch.Tensor:
    """Pixels that count in the masked likelihood (Eq. 15 of Kang et al.).

    Pixel ``d >= context`` counts when it and its ``context`` predecessors are all
    observed; pixel ``d < context`` (modelled without predecessors) counts when it
    is observed. Computed with a cumulative count of missing pixels.

    Parameters
    ----------
    missing : bool tensor, shape ``(..., n_pix)``
        True where a pixel is missing.
    context : int
        :math:`K`.

    Returns
    -------
    bool tensor, same shape

    Examples
    --------
    >>> import torch
    >>> missing = torch.zeros(10, dtype=torch.bool)
    >>> missing[5] = True
    >>> counted_pixels(missing, 2).int().tolist()
    [1, 1, 1, 1, 1, 0, 0, 0, 1, 1]
    """
    context = _check_int(context, "context")
    missing = torch.as_tensor(missing)
    if missing.dtype != torch.bool:
        raise TypeError(f"missing must be a boolean array, got {missing.dtype}")
    if missing.ndim == 0:
        raise ValueError("missing must have a pixel axis (ndim >= 1)")
    n_pix = missing.shape[-1]
    total = torch.cumsum(missing.to(torch.int64), dim=-1)
    before = nn.functional.pad(total, (context + 1, 0))[..., :n_pix]  # count up to d-K-1
    window_clear = (total - before) == 0
    first = torch.arange(n_pix, device=missing.device) < context
    return torch.where(first, ~missing, window_clear)


def _check_config(context, channels, hidden, whitened) -> dict:
    hidden = list(hidden) if isinstance(hidden, (list, tuple)) else hidden
    if not isinstance(hidden, list):
        raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
    if not isinstance(whitened, bool):
        raise ValueError(f"whitened must be True or False, got {whitened!r}")
    return {
        "context": _check_int(context, "context"),
        "channels": _check_int(channels, "channels"),
        "hidden": [_check_int(size, "hidden width") for size in hidden],
        "whitened": whitened,
    }


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _tensor(x, name: str, flow: NoiseFlow) -> torch.Tensor:
    ref = flow.mu0
    if isinstance(x, torch.Tensor):
        return x.to(device=ref.device, dtype=ref.dtype)
    try:
        return torch.as_tensor(np.asarray(x, dtype=float), dtype=ref.dtype, device=ref.device)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a tensor or an array of numbers") from exc


def _broadcast(*shapes, what: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError as exc:
        listed = " and ".join(str(tuple(shape)) for shape in shapes)
        raise ValueError(f"the leading shapes of {what} do not broadcast: {listed}") from exc


def _expand(x: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    try:
        return x.expand(shape)
    except RuntimeError as exc:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to {tuple(shape)}"
        ) from exc


__getattr__ = moved(
    __name__, {"fit_noiseflow": "specutils_deepclean.training.noiseflow:train_noiseflow"}
)
