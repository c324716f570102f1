"""Baseline models: a principal-component (PCA) projection denoiser.

References
----------
Kang et al., *A novel stellar spectrum denoising method based on deep Bayesian
modeling* compare against linear baselines; the PCA floor measured on MILES is
in the documentation (model files, ``miles-pca``).
"""

from numbers import Integral

import astropy.units as u
import numpy as np
import torch

from .._deprecated import renamed_method
from ..provenance import Provenance
from .base import DeepCleanModel

__all__ = ["PCADenoiser"]


class PCADenoiser(DeepCleanModel):
    r"""Denoise by projecting onto the top principal components of training spectra.

    Each spectrum :math:`x` is divided by the median :math:`s` of its valid
    pixels, and coefficients :math:`c` are found by weighted least squares over
    the valid pixels only,

    .. math::

        \hat c = \arg\min_c \sum_p w_p \left(x_p / s - \mu_p - (V^\top c)_p\right)^2 ,

    where :math:`\mu` is the training mean, the rows of :math:`V` are the top
    :math:`k` principal components and :math:`w_p` is 0 for missing pixels (1,
    or the inverse variance, otherwise). The output is
    :math:`s\,(\mu + V^\top \hat c)` at every pixel, so missing pixels are filled
    by the projection and never used to fit it. Fit one with `fit`.

    The configuration is ``{"architecture": "pca", "n_components": k, "n_pix": n}``;
    the weights are the buffers ``mean`` (n,) and ``components`` (k, n).

    Examples
    --------
    >>> import numpy as np, astropy.units as u
    >>> from specutils_deepclean.models.baselines import PCADenoiser
    >>> rng = np.random.default_rng(0)
    >>> basis = rng.normal(size=(2, 50))
    >>> train = 1 + 0.01 * rng.normal(size=(40, 2)) @ basis
    >>> model = PCADenoiser.fit(train, np.linspace(5000, 5049, 50) * u.AA,
    ...                         n_components=3, medium="air")
    >>> star = 1 + 0.01 * rng.normal(size=(1, 2)) @ basis
    >>> missing = np.zeros(star.shape, bool)
    >>> missing[:, 10:20] = True
    >>> gappy = np.where(missing, np.nan, star)
    >>> float(np.abs(model.reconstruct(gappy, missing) - star).max()) < 1e-6
    True
    """

    def _build(self, config: dict) -> None:
        if config["architecture"] != "pca":
            raise ValueError(
                f"PCADenoiser needs architecture 'pca', got {config['architecture']!r}"
            )
        k, n_pix = config.get("n_components"), config.get("n_pix")
        for key, value in (("n_components", k), ("n_pix", n_pix)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"config[{key!r}] must be a positive int, got {value!r}")
        if n_pix != self.n_pix:
            raise ValueError(f"config['n_pix'] = {n_pix} but the wavelength grid has {self.n_pix}")
        if k > n_pix:
            raise ValueError(f"n_components = {k} exceeds n_pix = {n_pix}")
        self.register_buffer("mean", torch.zeros(n_pix))
        self.register_buffer("components", torch.zeros(k, n_pix))

    @property
    def n_components(self) -> int:
        """Number of principal components used by the projection."""
        return self.config["n_components"]

    @classmethod
    def fit(
        cls,
        flux,
        wavelength: u.Quantity,
        *,
        n_components: int,
        medium: str,
        missing=None,
        n_iter: int = 50,
        tol: float = 1e-7,
        classes=None,
        provenance: Provenance | None = None,
        name: str | None = None,
    ) -> "PCADenoiser":
        """Fit the mean and top principal components of training spectra.

        Spectra are median-normalised over their valid pixels. Missing pixels are
        imputed iteratively: first by the projection of each spectrum's valid pixels
        onto the components of the complete spectra (when more than ``n_components``
        spectra are complete; else by the per-pixel mean of the valid values), then,
        until the imputed values change by less than ``tol`` (at most ``n_iter``
        rounds), by the projection onto the current components of all spectra.
        Without missing pixels this is a single decomposition (the eigenvectors
        of the smaller Gram matrix of the centred spectra).

        Parameters
        ----------
        flux : array_like, shape (n_spectra, n_pix)
            Training spectra on the model grid.
        wavelength : `~astropy.units.Quantity`, shape (n_pix,)
            The model grid.
        n_components : int
            Number of components ``k``, at most ``min(n_spectra - 1, n_pix)``.
        medium : {"air", "vacuum"}
            Medium of ``wavelength``.
        missing : array_like of bool, optional
            True where a pixel is missing; non-finite flux is missing too.
        n_iter : int, optional
            Most imputation rounds.
        tol : float, optional
            Convergence threshold on the imputed (normalised) values.
        classes, provenance, name
            Passed to `~specutils_deepclean.models.base.DeepCleanModel`.

        Returns
        -------
        PCADenoiser
            Float32 weights, components with a fixed sign (largest element positive).

        Raises
        ------
        ValueError
            If the shapes disagree, ``n_components`` is out of range, a spectrum has
            no valid pixel or a non-positive median, or a pixel is missing everywhere.
        """
        flux = np.asarray(flux, dtype=np.float64)
        if flux.ndim != 2:
            raise ValueError(f"flux must be 2-D (n_spectra, n_pix), got shape {flux.shape}")
        valid = _valid_mask(flux, missing)
        n_spec, n_pix = flux.shape
        if isinstance(n_components, bool) or not isinstance(n_components, Integral):
            raise TypeError(f"n_components must be an int, got {n_components!r}")
        if not 1 <= n_components <= min(n_spec - 1, n_pix):
            raise ValueError(
                f"n_components must be in 1..{min(n_spec - 1, n_pix)} for {n_spec} spectra "
                f"of {n_pix} pixels, got {n_components}"
            )
        if not valid.any(axis=0).all():
            raise ValueError(
                f"pixel {int(np.argmin(valid.any(axis=0)))} is missing in every spectrum"
            )
        x, valid = torch.from_numpy(flux), torch.from_numpy(valid)
        y = x / _median_scale(x, valid)[:, None]
        mean, components = _impute_and_decompose(y, valid, n_components, n_iter, tol)
        config = {"architecture": "pca", "n_components": int(n_components), "n_pix": n_pix}
        model = cls(
            config,
            wavelength=wavelength,
            medium=medium,
            classes=classes,
            provenance=provenance,
            name=name,
        )
        model.mean.copy_(mean)
        model.components.copy_(components)
        return model

    def forward(self, flux: torch.Tensor, missing=None, ivar=None) -> torch.Tensor:
        """Project spectra onto the components, fitting valid pixels only.

        Parameters
        ----------
        flux : `torch.Tensor`, shape (..., n_pix)
            Spectra on the model grid, any positive scale; leading axes are a batch.
        missing : `torch.Tensor` of bool, optional
            True where a pixel is missing (non-finite flux is missing too).
        ivar : `torch.Tensor`, optional
            Inverse variances as least-squares weights (0 marks a pixel missing).

        Returns
        -------
        `torch.Tensor`, shape (..., n_pix)
            The projection, on the input's scale, at every pixel.

        Raises
        ------
        ValueError
            If the last axis is not ``n_pix`` long, or a spectrum has no valid pixel
            or a non-positive median.
        """
        if flux.shape[-1] != self.n_pix:
            raise ValueError(f"flux has {flux.shape[-1]} pixels, the model grid {self.n_pix}")
        dtype = flux.dtype if flux.is_floating_point() else self.mean.dtype
        x = flux.reshape(-1, self.n_pix).to(torch.float64)
        valid = torch.isfinite(x)
        if missing is not None:
            valid &= ~torch.as_tensor(missing, device=x.device).expand(flux.shape).reshape(x.shape)
        weight = valid.to(torch.float64)
        if ivar is not None:
            ivar = torch.as_tensor(ivar, device=x.device).expand(flux.shape).reshape(x.shape)
            weight = torch.where(valid, ivar.to(torch.float64), 0.0)
            valid &= weight > 0
        scale = _median_scale(x, valid)
        y = torch.where(valid, x / scale[:, None], 0.0)
        mean, comps = self.mean.to(torch.float64), self.components.to(torch.float64)
        out = _project(y, weight * valid, mean, comps) * scale[:, None]
        return out.reshape(flux.shape).to(dtype)

    def reconstruct(self, flux, missing=None, ivar=None) -> np.ndarray:
        """The projection of spectra given as arrays (the front end of `forward`).

        The inference verb of the point-estimate models (`PCADenoiser`,
        `~specutils_deepclean.models.cdae.ConvDenoisingAutoencoder`,
        `~specutils_deepclean.models.karaoke.KaraokeVAE`): arrays in, a float64
        array out.

        Parameters
        ----------
        flux, missing, ivar : array_like
            As in `forward`.

        Returns
        -------
        numpy.ndarray
            The projection, same shape as ``flux``.
        """

        def tensor(a):
            return None if a is None else torch.as_tensor(np.asarray(a), device=self.device)

        with torch.inference_mode():
            out = self(tensor(np.asarray(flux, dtype=np.float64)), tensor(missing), tensor(ivar))
        return out.cpu().numpy()

    project = renamed_method("project", "reconstruct")

    def truncate(self, n_components: int) -> "PCADenoiser":
        """Return a copy that keeps only the first ``n_components`` components.

        Parameters
        ----------
        n_components : int
            At most the current number of components.

        Returns
        -------
        PCADenoiser
        """
        if not 1 <= n_components <= self.n_components:
            raise ValueError(f"n_components must be in 1..{self.n_components}, got {n_components}")
        config = {**self.config, "n_components": int(n_components)}
        model = type(self)(
            config,
            wavelength=self.wavelength,
            medium=self.medium,
            classes=self.classes,
            extra=self.extra,
            provenance=self.provenance,
            name=self.name,
        )
        model.mean.copy_(self.mean)
        model.components.copy_(self.components[:n_components])
        return model.to(self.device)


def _valid_mask(flux: np.ndarray, missing) -> np.ndarray:
    valid = np.isfinite(flux)
    if missing is not None:
        missing = np.asarray(missing, dtype=bool)
        if missing.shape != flux.shape:
            raise ValueError(f"missing has shape {missing.shape}, flux {flux.shape}")
        valid &= ~missing
    return valid


def _median_scale(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median of each row's valid pixels (mean of the middle two for an even count).

    Raises ValueError if a row has no valid pixel or a median <= 0.
    """
    ordered = torch.sort(torch.where(valid, x, torch.inf), dim=-1).values
    count = valid.sum(dim=-1, keepdim=True)
    low = ordered.gather(-1, ((count - 1) // 2).clamp_min(0))
    high = ordered.gather(-1, (count // 2).clamp_max(x.shape[-1] - 1))
    scale = torch.where(count > 0, 0.5 * (low + high), torch.nan).squeeze(-1)
    bad = ~(scale > 0)
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"spectrum {row} has no valid pixel or a non-positive median ({float(scale[row])})"
        )
    return scale


def _project(y: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, comps: torch.Tensor):
    """Weighted least-squares projection of rows of ``y`` (batched normal equations)."""
    resid = (y - mean) * weight
    gram = torch.einsum("kp,bp,lp->bkl", comps, weight, comps)
    ridge = 1e-10 * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    eye = torch.eye(comps.shape[0], dtype=gram.dtype, device=gram.device)
    coef = torch.linalg.solve(gram + ridge[:, None, None] * eye, resid @ comps.T)
    return mean + coef @ comps


def _top_components(centred: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k right singular vectors, from the eigenvectors of the smaller Gram matrix."""
    n, p = centred.shape
    if n >= p:
        return torch.linalg.eigh(centred.T @ centred).eigenvectors[:, -k:].flip(1).T
    values, vectors = torch.linalg.eigh(centred @ centred.T)
    top = vectors[:, -k:].flip(1)
    scale = values[-k:].flip(0).clamp_min(torch.finfo(centred.dtype).tiny).sqrt()
    return (top.T @ centred) / scale[:, None]


def _impute_and_decompose(y, valid, k, n_iter, tol):
    """Mean and top-k components of ``y`` (float64), imputing missing pixels iteratively."""
    rows = ~valid.all(dim=1)
    y = torch.where(valid, y, torch.nanmean(torch.where(valid, y, torch.nan), dim=0))
    if (~rows).sum() > k:  # start from the components of the complete spectra
        mean = y[~rows].mean(dim=0)
        filled = _project(
            y[rows], valid[rows].to(y.dtype), mean, _top_components(y[~rows] - mean, k)
        )
        y[rows] = torch.where(valid[rows], y[rows], filled)
    for _ in range(n_iter):
        mean = y.mean(dim=0)
        comps = _top_components(y - mean, k)
        if not rows.any():
            break
        filled = _project(y[rows], valid[rows].to(y.dtype), mean, comps)
        new = torch.where(valid[rows], y[rows], filled)
        change = (new - y[rows]).abs().max()
        y[rows] = new
        if change < tol:
            break
    sign = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    return mean.float(), (comps * sign).float()
