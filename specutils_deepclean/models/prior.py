"""`KDEPrior`: the per-class Gaussian kernel density prior p(z|C) of the latent space, in torch."""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["KDEPrior"]

#: Keys of the numeric arrays written by `KDEPrior.to_arrays`.
_ARRAY_KEYS = ("kde_points", "kde_counts", "kde_bandwidths", "kde_factors")
#: Keys of the JSON-able entries written by `KDEPrior.to_config`.
_CONFIG_KEYS = ("kde_classes", "kde_merges", "kde_bandwidth_rule")


class KDEPrior(torch.nn.Module):
    r"""Gaussian kernel density estimates of latent vectors, one per stellar class.

    For class :math:`C` with training latents :math:`x_1, \dots, x_{n_C}` and
    bandwidth matrix :math:`H_C` (symmetric positive definite),

    .. math::

        p(z \mid C) = \frac{1}{n_C} \sum_{i=1}^{n_C}
        \mathcal{N}(z;\, x_i,\, H_C),

    the latent prior of Kang et al. (Section 3.3, Eq. 5).  All classes of a whole
    batch are evaluated at once with a log-sum-exp over the kernels, in torch, so
    :math:`\log p(z \mid C)` is differentiable in :math:`z` (the MAP of Eq. 7).
    `~specutils_deepclean.kde.train_kde` builds one from training latents and states
    how :math:`H_C` is chosen.

    Classes that had too few training stars were merged into a neighbour before
    fitting: they are not among ``class_names``, and ``merges`` maps each of them to
    the class that absorbed it (`class_index` resolves either kind of name).

    The prior is a fixed, fitted object: it has no trainable parameters, and its
    tensors are non-persistent buffers, so ``state_dict()`` is empty and a model that
    holds a prior stores it once, through `to_arrays` and `to_config`
    (`from_arrays` rebuilds it exactly).  ``.to(device)`` and ``.to(dtype)`` move
    and cast it; a query ``z`` is evaluated in the prior's dtype and the result is
    returned in the dtype of ``z``.

    The constructor's arguments stay available as plain attributes:
    ``class_names`` (tuple of str), ``merges`` (dict), ``factors``
    (`~numpy.ndarray`) and ``bandwidth_rule`` (str).

    Parameters
    ----------
    points : array_like, shape (N, L)
        Training latents of all classes, grouped by class in the order of
        ``class_names``.
    counts : array_like of int, shape (K,)
        Number of points of each class (positive, summing to N).
    bandwidths : array_like, shape (K, L, L)
        Bandwidth (kernel covariance) matrix :math:`H_C` of each class.
    class_names : sequence of str
        Names of the K classes, unique.
    factors : array_like, shape (K,), optional
        The bandwidth factors :math:`h_C` with :math:`H_C = h_C^2 \Sigma_C`, for
        the record (NaN where unknown, the default).
    merges : mapping of str to str, optional
        Classes merged into another before fitting: merged name -> name in
        ``class_names``.
    bandwidth_rule : str, optional
        How the bandwidths were chosen, for the record (default ``"given"``).

    Raises
    ------
    TypeError
        If ``class_names`` or ``merges`` hold anything but strings.
    ValueError
        If shapes disagree, a point is not finite, a count is not positive, a
        bandwidth matrix is not symmetric positive definite, or a merge names an
        unknown class.

    References
    ----------
    Kang, X., et al., *A novel stellar spectrum denoising method based on deep
    Bayesian modeling*, Research in Astronomy and Astrophysics (2023).

    Examples
    --------
    Two classes in one dimension, unit bandwidth:

    >>> import torch
    >>> from specutils_deepclean.models.prior import KDEPrior
    >>> prior = KDEPrior([[0.0], [2.0], [10.0]], [2, 1], [[[1.0]], [[1.0]]], ["A", "B"])
    >>> prior.log_prob(torch.tensor([[1.0]], dtype=torch.float64))  # doctest: +FLOAT_CMP
    tensor([[ -1.4189, -41.4189]], dtype=torch.float64)
    >>> prior(torch.tensor([0])).sample((2,)).shape
    torch.Size([2, 1, 1])
    """

    #: Largest number of (query, class, kernel) terms evaluated in one chunk.
    max_elements = 2**24

    def __init__(
        self,
        points,
        counts,
        bandwidths,
        class_names: Sequence[str],
        *,
        factors=None,
        merges: Mapping[str, str] | None = None,
        bandwidth_rule: str = "given",
    ):
        super().__init__()
        points, counts, bandwidths = _check_arrays(points, counts, bandwidths)
        self.class_names = _check_names(class_names, len(counts))
        self.merges = _check_merges(merges, self.class_names)
        self.bandwidth_rule = str(bandwidth_rule)
        n_classes = len(counts)
        self.factors = (
            np.full(n_classes, np.nan) if factors is None else _check_factors(factors, n_classes)
        )
        self._counts = counts
        self._points_np = points
        self._bandwidths_np = bandwidths
        # outside the module's buffers, so it stays float64 whatever the module's dtype
        self._precisions64 = torch.from_numpy(np.linalg.inv(bandwidths))
        self._register(points, counts, bandwidths)

    # ------------------------------------------------------------------ construction

    def _register(self, points, counts, bandwidths):
        """Precompute the whitened, padded kernel centres of every class."""
        n_classes, n_dim = len(counts), points.shape[1]
        n_max = int(counts.max())
        chol = np.linalg.cholesky(bandwidths)
        inv_chol = np.linalg.inv(chol)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        centre = np.stack(
            [points[a:b].mean(axis=0) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        )
        white = np.zeros((n_classes, n_max, n_dim))
        loc = np.repeat(centre[:, None, :], n_max, axis=1)
        log_weight = np.full((n_classes, n_max), -np.inf)
        for k, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            white[k, : b - a] = (points[a:b] - centre[k]) @ inv_chol[k].T
            loc[k, : b - a] = points[a:b]
            log_weight[k, : b - a] = -math.log(b - a)
        log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(-1)
        log_norm = -0.5 * n_dim * math.log(2 * math.pi) - log_det
        buffers = {
            "chol": chol,
            "inv_chol": inv_chol,
            "centre": centre,
            "white": white,
            "white_sq": (white**2).sum(-1),
            "bias": log_weight - 0.5 * (white**2).sum(-1),
            "loc": loc,
            "log_weight": log_weight,
            "log_norm": log_norm,
        }
        for name, value in buffers.items():
            self.register_buffer(f"_{name}", torch.from_numpy(value), persistent=False)

    @classmethod
    def from_arrays(cls, arrays: Mapping, config: Mapping) -> "KDEPrior":
        """Rebuild a prior from the output of `to_arrays` and `to_config`.

        Parameters
        ----------
        arrays : mapping
            ``kde_points``, ``kde_counts``, ``kde_bandwidths`` and ``kde_factors``
            (extra keys are ignored, so a model's whole ``extra`` dict can be passed).
        config : mapping
            ``kde_classes``, ``kde_merges`` and ``kde_bandwidth_rule`` (extra keys
            are ignored).

        Returns
        -------
        KDEPrior

        Raises
        ------
        ValueError
            If a key is missing or a value is invalid.
        """
        missing = [k for k in _ARRAY_KEYS if k not in arrays] + [
            k for k in _CONFIG_KEYS if k not in config
        ]
        if missing:
            raise ValueError(f"cannot rebuild a KDEPrior: missing {', '.join(missing)}")
        merges = config["kde_merges"]
        if not all(
            isinstance(m, Sequence) and not isinstance(m, str) and len(m) == 2 for m in merges
        ):
            raise ValueError(f"kde_merges must be a list of [merged, target] pairs, got {merges!r}")
        return cls(
            np.asarray(arrays["kde_points"]),
            np.asarray(arrays["kde_counts"]),
            np.asarray(arrays["kde_bandwidths"]),
            list(config["kde_classes"]),
            factors=np.asarray(arrays["kde_factors"]),
            merges={str(a): str(b) for a, b in merges},
            bandwidth_rule=config["kde_bandwidth_rule"],
        )

    def to_arrays(self) -> dict:
        """Return the numeric arrays that define the prior (copies, NumPy, float64/int64).

        Returns
        -------
        dict of str to `~numpy.ndarray`
            ``kde_points`` (N, L), ``kde_counts`` (K,), ``kde_bandwidths`` (K, L, L),
            ``kde_factors`` (K,).
        """
        return {
            "kde_points": self._points_np.copy(),
            "kde_counts": self._counts.copy(),
            "kde_bandwidths": self._bandwidths_np.copy(),
            "kde_factors": self.factors.copy(),
        }

    def to_config(self) -> dict:
        """Return the JSON-able entries that define the prior (names and records).

        Returns
        -------
        dict
            ``kde_classes`` (list of str), ``kde_merges`` (list of
            ``[merged, target]`` pairs) and ``kde_bandwidth_rule`` (str).
        """
        return {
            "kde_classes": list(self.class_names),
            "kde_merges": [[a, b] for a, b in self.merges.items()],
            "kde_bandwidth_rule": self.bandwidth_rule,
        }

    # ------------------------------------------------------------------ description

    @property
    def n_classes(self) -> int:
        """Number of classes (after merges)."""
        return len(self.class_names)

    @property
    def n_dim(self) -> int:
        """Dimension L of the latent space."""
        return self._points_np.shape[1]

    @property
    def counts(self) -> np.ndarray:
        """Number of training points of each class (a copy)."""
        return self._counts.copy()

    @property
    def bandwidths(self) -> torch.Tensor:
        """Bandwidth matrices :math:`H_C`, shape (K, L, L), on the prior's device."""
        return self._chol @ self._chol.transpose(-1, -2)

    @property
    def precisions(self) -> torch.Tensor:
        """Kernel precisions :math:`H_C^{-1}`, shape (K, L, L), float64, on the prior's device.

        Kept from the float64 bandwidths at construction, so that a narrow kernel
        keeps its precision when the module runs in float32.
        """
        return self._precisions64.to(self._chol.device)

    def points(self, class_index: int | str) -> torch.Tensor:
        """Training latents of one class, shape (n_C, L), on the prior's device."""
        k = self.class_index(class_index)
        return self._loc[k, : self._counts[k]]

    def class_index(self, name: int | str) -> int:
        """Index of a class given its name, a merged class's name, or an index.

        Raises
        ------
        ValueError
            If the name or index is unknown.
        """
        if isinstance(name, bool | np.bool_):
            raise ValueError(f"class must be a name or an index, got {name!r}")
        if isinstance(name, int | np.integer):
            if not 0 <= name < self.n_classes:
                raise ValueError(f"class index {name} out of range for {self.n_classes} classes")
            return int(name)
        name = self.merges.get(name, name)
        if name not in self.class_names:
            raise ValueError(f"unknown class {name!r}; classes: {', '.join(self.class_names)}")
        return self.class_names.index(name)

    def extra_repr(self) -> str:
        merged = f", merges={self.merges}" if self.merges else ""
        counts = self._counts.tolist()
        return f"classes={self.class_names}, n_dim={self.n_dim}, counts={counts}{merged}"

    # ------------------------------------------------------------------ densities

    def log_prob(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        r"""Log density :math:`\log p(z \mid C)` under every class, or under given classes.

        Parameters
        ----------
        z : `torch.Tensor`, shape (..., L)
            Latent vectors; any leading axes are a batch.
        c : `torch.Tensor` of int, optional
            Class indices, broadcastable to ``z.shape[:-1]``.  The all-class
            result is computed, then the requested entries taken.

        Returns
        -------
        `torch.Tensor`
            Shape (..., K) without ``c``; the broadcast shape of ``z.shape[:-1]``
            and ``c`` with it.
        """
        z = self._check_z(z)
        flat = z.reshape(-1, self.n_dim).to(self._inv_chol.dtype)
        white_z = torch.einsum("kij,bkj->bki", self._inv_chol, flat[:, None, :] - self._centre)
        out = self._chunked(white_z).to(z.dtype).reshape(*z.shape[:-1], self.n_classes)
        if c is None:
            return out
        c = self._class_tensor(c, out.device)
        shape = torch.broadcast_shapes(out.shape[:-1], c.shape)
        index = c.expand(shape)[..., None]
        return torch.gather(out.expand(*shape, self.n_classes), -1, index)[..., 0]

    def log_prob_paired(self, z: torch.Tensor) -> torch.Tensor:
        r"""Log density of ``z[..., k, :]`` under class k, for every k.

        The hot path of MAP inference, where each class has its own latent
        estimate: the cost is that of one all-class evaluation, not K of them.

        Parameters
        ----------
        z : `torch.Tensor`, shape (..., K, L)
            One latent vector per class (any leading axes are a batch).

        Returns
        -------
        `torch.Tensor`, shape (..., K)
        """
        z = self._check_z(z)
        if z.ndim < 2 or z.shape[-2] != self.n_classes:
            raise ValueError(
                f"z must have shape (..., {self.n_classes}, {self.n_dim}), got {tuple(z.shape)}"
            )
        flat = z.reshape(-1, self.n_classes, self.n_dim).to(self._inv_chol.dtype)
        white_z = torch.einsum("kij,bkj->bki", self._inv_chol, flat - self._centre)
        return self._chunked(white_z).to(z.dtype).reshape(z.shape[:-1])

    def log_prob_class(self, z: torch.Tensor, class_index: int | str) -> torch.Tensor:
        r"""Log density :math:`\log p(z \mid C)` under one class.

        Parameters
        ----------
        z : `torch.Tensor`, shape (..., L)
        class_index : int or str
            Index or name (a merged class's name gives its target class).

        Returns
        -------
        `torch.Tensor`, shape (...)
        """
        k = self.class_index(class_index)
        z = self._check_z(z)
        flat = z.reshape(-1, self.n_dim).to(self._inv_chol.dtype)
        white_z = (flat - self._centre[k]) @ self._inv_chol[k].T
        terms = _kernel_terms(white_z, self._white[k], self._white_sq[k])
        out = torch.logsumexp(terms + self._log_weight[k], dim=-1) + self._log_norm[k]
        return out.to(z.dtype).reshape(z.shape[:-1])

    def _class_tensor(self, c, device) -> torch.Tensor:
        """``c`` as an integer tensor on ``device``, every index in [0, K)."""
        c = torch.as_tensor(c, device=device)
        if c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool:
            raise ValueError(f"class indices must be integers, got dtype {c.dtype}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.n_classes):
            raise ValueError(
                f"class indices must lie in [0, {self.n_classes}), got {int(c.min())} to "
                f"{int(c.max())}"
            )
        return c

    def log_prob_derivatives(self, z: torch.Tensor, c: torch.Tensor, *, hessian: bool = True):
        r"""Log density under given classes, with its gradient and Hessian in ``z``.

        In the coordinates :math:`v = W_C (z - \bar x_C)` whitened by the
        class's bandwidth (:math:`W_C^\top W_C = H_C^{-1}`), with kernel
        responsibilities :math:`r_i \propto \exp(-\lVert v - w_i \rVert^2 / 2)`,
        the gradient is :math:`W_C^\top (\bar w - v)` and the Hessian
        :math:`W_C^\top (\operatorname{Cov}_r(w) - I)\, W_C`, in closed form.

        Parameters
        ----------
        z : `torch.Tensor`, shape (n, L)
            Latent vectors.
        c : `torch.Tensor` of int, shape (n,)
            Class index of each.
        hessian : bool, optional
            Whether to compute the Hessian (the costliest part).

        Returns
        -------
        log_prob : `torch.Tensor`, shape (n,)
        grad : `torch.Tensor`, shape (n, L)
        hess : `torch.Tensor`, shape (n, L, L), or None
            All in the dtype of ``z``, without gradients; ``hess`` is None
            without ``hessian``.
        """
        z = self._check_z(z)
        if z.ndim != 2:
            raise ValueError(f"z must have shape (n, {self.n_dim}), got {tuple(z.shape)}")
        c = self._class_tensor(c, z.device).expand(z.shape[0])
        dtype = self._inv_chol.dtype
        log_prob = torch.zeros(z.shape[0], dtype=dtype, device=z.device)
        grad = torch.zeros(z.shape, dtype=dtype, device=z.device)
        hess = torch.zeros(z.shape + (self.n_dim,) * hessian, dtype=dtype, device=z.device)
        eye = torch.eye(self.n_dim, dtype=dtype, device=z.device)
        with torch.no_grad():
            for k in range(self.n_classes):
                rows = (c == k).nonzero()[:, 0]
                if rows.numel() == 0:
                    continue
                inv_chol, white = self._inv_chol[k], self._white[k]
                v = (z[rows].to(dtype) - self._centre[k]) @ inv_chol.T
                terms = v @ white.T + self._bias[k]
                norm = torch.logsumexp(terms, dim=-1, keepdim=True)
                r = torch.exp(terms - norm)
                mean = r @ white
                log_prob[rows] = norm[:, 0] - 0.5 * (v**2).sum(-1) + self._log_norm[k]
                grad[rows] = (mean - v) @ inv_chol
                if hessian:
                    second = torch.einsum("nm,mi,mj->nij", r, white, white)
                    cov = second - mean[:, :, None] * mean[:, None, :] - eye
                    hess[rows] = inv_chol.T @ cov @ inv_chol
        out = log_prob.to(z.dtype), grad.to(z.dtype)
        return out + (hess.to(z.dtype) if hessian else None,)

    def score(self, z: torch.Tensor) -> torch.Tensor:
        r"""Best class log density :math:`\max_C \log p(z \mid C)`, shape (...)."""
        return self.log_prob(z).amax(dim=-1)

    def reference_scores(self) -> torch.Tensor:
        r"""`score` of every training point with that point left out of its own class.

        The leave-one-out densities are distributed as those of new stars drawn from
        the same classes, so they are the reference against which a new latent
        vector is judged (`ood_score`).

        Returns
        -------
        `torch.Tensor`, shape (N,), sorted in ascending order.
        """
        scores = []
        for k in range(self.n_classes):
            x = self.points(k)
            others = self.log_prob(x)
            others[:, k] = self._loo_log_prob(k)
            scores.append(others.amax(dim=-1))
        return torch.sort(torch.cat(scores)).values

    def ood_score(self, z: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        r"""Tail probability of `score` (z) among reference scores; small means unusual.

        The share of reference stars whose best class log density is at most that
        of ``z``: about uniform on [0, 1] for latents of stars like the training
        stars, near 0 for latents far from all of them.

        Parameters
        ----------
        z : `torch.Tensor`, shape (..., L)
        reference : `torch.Tensor`, shape (M,), optional
            Reference scores (default: `reference_scores`).

        Returns
        -------
        `torch.Tensor`, shape (...), values in [0, 1].
        """
        reference = (
            self.reference_scores() if reference is None else torch.sort(reference.flatten()).values
        )
        s = self.score(z).to(reference.dtype)
        rank = torch.searchsorted(reference, s.contiguous(), right=True)
        return rank.to(z.dtype) / reference.numel()

    def _loo_log_prob(self, k: int) -> torch.Tensor:
        """Leave-one-out log density of each training point of class k under class k.

        A class of one point leaves nothing: its point gets -inf.
        """
        n = int(self._counts[k])
        if n == 1:
            return self._log_norm[k : k + 1] * 0 - math.inf
        white = self._white[k, :n]
        terms = _kernel_terms(white, white, self._white_sq[k, :n])
        terms = terms.masked_fill(torch.eye(n, dtype=torch.bool, device=terms.device), -math.inf)
        return torch.logsumexp(terms, dim=-1) - math.log(n - 1) + self._log_norm[k]

    def _chunked(self, white_z: torch.Tensor) -> torch.Tensor:
        """Log-sum-exp of the kernels of class k at white_z[:, k], in batch chunks."""
        per_row = self.n_classes * self._white.shape[1]
        size = max(1, self.max_elements // per_row)
        parts = [self._kernel_sum(chunk) for chunk in torch.split(white_z, size)]
        return torch.cat(parts) if parts else white_z.new_zeros((0, self.n_classes))

    def _kernel_sum(self, white_z: torch.Tensor) -> torch.Tensor:
        # -|v - w|^2 / 2 + log weight = v.w + (log weight - |w|^2 / 2) - |v|^2 / 2, class-major
        # so that one batched matrix product does the work.
        v = white_z.transpose(0, 1)
        terms = torch.baddbmm(self._bias[:, None, :], v, self._white.transpose(1, 2))
        out = torch.logsumexp(terms, dim=-1) - 0.5 * (v**2).sum(-1) + self._log_norm[:, None]
        return out.T

    def _check_z(self, z) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            kind = f"{z.dtype} tensor" if isinstance(z, torch.Tensor) else type(z).__name__
            raise TypeError(f"z must be a floating-point torch.Tensor, got {kind}")
        if z.ndim < 1 or z.shape[-1] != self.n_dim:
            raise ValueError(
                f"z must have a last axis of length {self.n_dim}, got shape {tuple(z.shape)}"
            )
        return z

    # ------------------------------------------------------------------ sampling

    def forward(self, c: torch.Tensor | None = None) -> torch.distributions.MixtureSameFamily:
        r"""The class-conditional distribution :math:`p(z \mid C)` as a torch distribution.

        Parameters
        ----------
        c : `torch.Tensor` of int, optional
            Class indices (any shape); default: all classes, ``arange(K)``.

        Returns
        -------
        `torch.distributions.MixtureSameFamily`
            Batch shape ``c.shape``, event shape (L,): an equal-weight mixture of
            multivariate normals centred on the class's training points.
        """
        c = (
            torch.arange(self.n_classes, device=self._loc.device)
            if c is None
            else torch.as_tensor(c)
        )
        c = c.to(self._loc.device)
        mixture = torch.distributions.Categorical(logits=self._log_weight[c], validate_args=False)
        # one kernel shape per class, broadcast over its points
        scale = self._chol[c][..., None, :, :]
        kernels = torch.distributions.MultivariateNormal(
            self._loc[c], scale_tril=scale, validate_args=False
        )
        return torch.distributions.MixtureSameFamily(mixture, kernels, validate_args=False)

    def sample(
        self, n: int, class_index: int | str, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``n`` latents from one class's density.

        A training point is picked uniformly, then a Gaussian kernel draw is added.

        Parameters
        ----------
        n : int
            Number of draws (non-negative).
        class_index : int or str
            Index or name of the class.
        generator : `torch.Generator`, optional
            On the prior's device; makes the draws reproducible.

        Returns
        -------
        `torch.Tensor`, shape (n, L), on the prior's device, in its dtype.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        k = self.class_index(class_index)
        device = self._loc.device
        pick = torch.randint(int(self._counts[k]), (int(n),), generator=generator, device=device)
        noise = torch.randn(
            (int(n), self.n_dim), generator=generator, device=device, dtype=self._loc.dtype
        )
        return self._loc[k, pick] + noise @ self._chol[k].T

    def starts(self, k: int = 3, *, min_separation: float = 2.0) -> torch.Tensor:
        """A few high-density training points of each class, as MAP starting points.

        Per class, the training points are ranked by their leave-one-out density
        under their own class; points are taken in that order, skipping any closer
        than ``min_separation`` (in units of the class's kernel, i.e. Mahalanobis
        distance under :math:`H_C`) to one already taken, so the starts cover
        separate modes.  If too few are that far apart, the best skipped points fill
        up, and a class with fewer than ``k`` points repeats its best one.

        Parameters
        ----------
        k : int
            Starts per class (positive).
        min_separation : float
            Smallest kernel-whitened distance between two starts of a class.

        Returns
        -------
        `torch.Tensor`, shape (K, k, L)
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return torch.stack(
            [self._class_starts(c, int(k), float(min_separation)) for c in range(self.n_classes)]
        )

    def _class_starts(self, c: int, k: int, min_separation: float) -> torch.Tensor:
        n = int(self._counts[c])
        if n == 1:
            return self._loc[c, :1].expand(k, self.n_dim)
        order = torch.argsort(self._loo_log_prob(c), descending=True).tolist()
        white = self._white[c, :n]
        taken = []
        for i in order:
            if len(taken) == k:
                break
            if all(torch.linalg.vector_norm(white[i] - white[j]) >= min_separation for j in taken):
                taken.append(i)
        taken += [i for i in order if i not in taken][: k - len(taken)]
        taken += [order[0]] * (k - len(taken))
        return self._loc[c, taken]


def _kernel_terms(
    white_z: torch.Tensor, white_x: torch.Tensor, white_x_sq: torch.Tensor
) -> torch.Tensor:
    """-|z - x|^2 / 2 for every pair of whitened queries (B, L) and centres (n, L)."""
    sq = (white_z**2).sum(-1, keepdim=True) + white_x_sq - 2 * white_z @ white_x.T
    return -0.5 * sq.clamp_min(0)


def _check_arrays(points, counts, bandwidths):
    points = np.array(points, dtype=np.float64, copy=True)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"points must be a non-empty 2-D array (N, L), got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points must be finite (found NaN or inf)")
    counts_in = np.asarray(counts)
    if counts_in.ndim != 1 or counts_in.size == 0 or counts_in.dtype.kind not in "iuf":
        raise ValueError(f"counts must be a non-empty 1-D array of ints, got {counts_in!r}")
    counts = counts_in.astype(np.int64)
    if np.any(counts != counts_in) or np.any(counts < 1):
        raise ValueError(f"counts must be positive integers, got {counts_in.tolist()}")
    if counts.sum() != points.shape[0]:
        raise ValueError(f"counts sum to {counts.sum()}, but there are {points.shape[0]} points")
    n_dim = points.shape[1]
    bandwidths = np.array(bandwidths, dtype=np.float64, copy=True)
    if bandwidths.shape != (len(counts), n_dim, n_dim):
        raise ValueError(
            f"bandwidths must have shape {(len(counts), n_dim, n_dim)} "
            f"(one L x L matrix per class), got {bandwidths.shape}"
        )
    if not np.all(np.isfinite(bandwidths)) or not np.allclose(
        bandwidths, bandwidths.transpose(0, 2, 1)
    ):
        raise ValueError("bandwidth matrices must be finite and symmetric")
    try:
        np.linalg.cholesky(bandwidths)
    except np.linalg.LinAlgError:
        raise ValueError("bandwidth matrices must be positive definite") from None
    return points, counts, bandwidths


def _check_names(names, n_classes) -> tuple:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"class_names must be a sequence of str, got {names!r}")
    names = tuple(names)
    if len(names) != n_classes or len(set(names)) != n_classes:
        raise ValueError(f"class_names must be {n_classes} unique names, got {names!r}")
    return names


def _check_merges(merges, names) -> dict:
    merges = {} if merges is None else dict(merges)
    for source, target in merges.items():
        if not isinstance(source, str) or not isinstance(target, str):
            raise TypeError(f"merges must map str to str, got {source!r}: {target!r}")
        if source in names or target not in names:
            raise ValueError(
                f"merge {source!r} -> {target!r}: the merged class must not be a class of the "
                f"prior and the target must be one of {names}"
            )
    return merges


def _check_factors(factors, n_classes) -> np.ndarray:
    factors = np.array(factors, dtype=np.float64, copy=True)
    if factors.shape != (n_classes,):
        raise ValueError(f"factors must have shape ({n_classes},), got {factors.shape}")
    return factors
