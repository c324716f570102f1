r"""The screening's surrogate optimum: a quadratic likelihood plus each class's KDE prior.

`~specutils_deepclean.models.denoiser.Denoiser.map_estimate` screens every (star,
class) pair before its Newton steps: from the likelihood's second-order expansion at
the star's best point so far, `surrogate_optimum` finds each class's maximum of that
expansion plus :math:`\log p(z \mid C)` by EM on the KDE kernels.  `floored` is the
eigenvalue-floored Hessian (or its inverse) that the surrogate and the Newton steps
share.  The documentation page *The denoiser's inference* gives the equations.
"""

from __future__ import annotations

import torch

from .laplace import eig_floor

__all__ = ["floored", "surrogate_optimum"]

#: EM iterations of the screening, and the largest move (latent units) that stops a pair.
_EM_ITERATIONS = 50
_EM_TOL = 1e-4


def surrogate_optimum(prior, centre, grad, hess, precision, rows, classes) -> torch.Tensor:
    r"""Optimum of the quadratic likelihood at ``centre`` plus each class's log prior.

    For every (star ``rows[i]``, class ``classes[i]``), the maximum of the
    likelihood's second-order expansion at the star's ``centre`` plus
    :math:`\log p(z \mid C)`, by EM on the KDE kernels: with the
    responsibility-weighted mean :math:`m` of the class's kernel centres at the
    current :math:`z`, the next one is :math:`(A + P)^{-1} (A c + g + P m)`,
    :math:`A` the floored Hessian of the negative log likelihood at the centre
    :math:`c`, :math:`g` its gradient and :math:`P` the class's kernel precision.
    Each iteration raises the surrogate; a pair stops after `_EM_ITERATIONS` or
    when none of its coordinates moves by more than `_EM_TOL` (the others go on
    without it).  The L x L algebra runs in float64: a narrow kernel's precision
    can be ~1e9 times the likelihood's curvature, beyond float32.

    Parameters
    ----------
    prior : `~specutils_deepclean.models.prior.KDEPrior`
        The class priors.
    centre : tensor, shape (B, L)
        Each star's expansion point.
    grad : tensor, shape (B, L)
        The log likelihood's gradient there.
    hess : tensor, shape (B, L, L)
        The Hessian of its negative there.
    precision : tensor, shape (n, L, L)
        The kernel precision of each pair's class.
    rows, classes : tensor of int, shape (n,)
        Each pair's star and class.

    Returns
    -------
    tensor, shape (n, L)
        The surrogate optima, in the dtype of ``centre``.
    """
    curvature = floored(hess.double())[rows]  # (n, L, L), positive definite
    system = floored(curvature + precision, power=-1)
    fixed = (curvature @ centre[rows, :, None].double())[..., 0] + grad[rows].double()
    z = centre[rows].double()
    todo = torch.arange(z.shape[0], device=z.device)  # the pairs still moving
    for _ in range(_EM_ITERATIONS):
        _, prior_grad, _ = prior.log_prob_derivatives(
            z[todo].to(centre.dtype), classes[todo], hessian=False
        )
        # P m = P z + grad log p(z | C)
        target = fixed[todo] + (precision[todo] @ z[todo, :, None])[..., 0] + prior_grad.double()
        new = (system[todo] @ target[..., None])[..., 0]
        moving = (new - z[todo]).abs().amax(-1) >= _EM_TOL
        z[todo] = new
        todo = todo[moving]
        if todo.numel() == 0:
            break
    return z.to(centre.dtype)


def floored(hess: torch.Tensor, power: int = 1, damping: torch.Tensor | None = None) -> torch.Tensor:
    """``hess`` (..., L, L) with its eigenvalues raised to their floor, to ``power``.

    Parameters
    ----------
    hess : tensor, shape (..., L, L)
        Symmetric matrices.
    power : int, optional
        1: the floored matrix, positive definite; -1: its inverse, built from the
        eigendecomposition, which never fails on a near-singular matrix.
    damping : tensor, shape (...), optional
        Per matrix, a higher floor: this fraction of its largest eigenvalue magnitude
        (the damped Newton step of `~specutils_deepclean.models.denoiser.Denoiser`).

    Returns
    -------
    tensor, shape (..., L, L)

    Notes
    -----
    The floor is `~specutils_deepclean.models.laplace.eig_floor`'s.
    """
    values, vectors = torch.linalg.eigh(hess)
    floor = eig_floor(values)
    if damping is not None:
        top = values.abs().amax(-1, keepdim=True)
        floor = torch.maximum(floor, damping.to(values)[..., None] * top)
    values = values.clamp_min(floor) ** power
    return vectors @ torch.diag_embed(values) @ vectors.transpose(-1, -2)
