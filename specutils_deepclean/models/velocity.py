r"""Radial velocity for the denoiser: the Doppler shift of model spectra and its search.

The package's Doppler convention (`~specutils_deepclean.doppler.shift_flux`): a star
moving at :math:`v` (positive away from us) is seen as
:math:`s'(\lambda) = s(\lambda (1 - v/c))`, so a rest-frame line at
:math:`\lambda_0` appears at :math:`\lambda_0 / (1 - v/c)`.

`DopplerShift` applies that to rest-frame spectra on the model grid, one velocity
per (star, exposure), by cubic convolution (Keys 1981, :math:`a = -1/2`) at the
positions :math:`\lambda_i (1 - v/c)`: a 4-tap gather, so it goes through a batch of
spectra or of Jacobian rows at the cost of four reads per pixel and is linear, so
the likelihood's derivatives in :math:`z` are the shifted ones.  Cubic convolution
of a well-sampled spectrum differs from the flux-conserving shift by far less than
the noise (the module's tests check it on model spectra).

`search_velocity` is the robust global step: the data, divided by a smooth
continuum, are compared with a set of continuum-divided templates (the generator's
spectra at a few high-density latents of every class) shifted over a velocity grid;
the best template and grid velocity by :math:`\chi^2` (free positive amplitude),
refined by a parabola through the grid's best three points.  All stars, templates
and velocities are one pair of matrix products.

`velocity_error` is the Laplace error of a fitted velocity, calibrated by the model
file's ``extra["velocity_error"]`` = :math:`(a, f)`: :math:`\sqrt{(a\,\sigma_L)^2 +
f^2}` with :math:`\sigma_L` the Laplace error and :math:`f` in km/s (chosen on MILES
``val`` by ``benchmarks/training/calibrate_velocity_error.py``; without it
:math:`(1, 0)`).

Torch is imported here: this module is loaded only with the models.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from astropy.constants import c as _speed_of_light

__all__ = [
    "C_KMS",
    "DopplerShift",
    "check_velocity_error",
    "fixed_velocities",
    "highpass",
    "parabola_peak",
    "refine_velocity",
    "search_velocity",
    "shared_floor",
    "template_bank",
    "to_rest",
    "velocity_error",
]

#: The speed of light in km/s.
C_KMS = float(_speed_of_light.to_value("km/s"))
#: Gaussian sigma (pixels) of the smooth continuum the search divides out.
_CONTINUUM_PIXELS = 25.0
#: Largest refinement (km/s) of a searched velocity; the pixels kept are those the
#: model reaches at every velocity this close to the searched one.
_VELOCITY_MARGIN = 60.0
#: Offsets (km/s) of the velocity refinement's two parabolas, and the step of the
#: curvature that gives the velocity's uncertainty.
_VELOCITY_COARSE = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
_VELOCITY_FINE = np.array([-6.0, 0.0, 6.0])
#: Rows per star (latent dimensions of a Jacobian) from which `DopplerShift.apply`
#: multiplies by a sparse matrix instead of gathering each tap (16 rows: 4x faster).
_SPARSE_ROWS = 4


def _keys_weights(t: torch.Tensor) -> torch.Tensor:
    """Cubic-convolution weights of the taps at -1, 0, 1, 2 for fractions ``t`` (..., P):
    (..., 4, P), in ``t``'s dtype (Horner form, written in place)."""
    out = t.new_empty(t.shape[:-1] + (4, t.shape[-1]))
    t2 = t * t
    torch.mul(t, t.mul(-0.5).add_(1.0).mul_(t).sub_(0.5), out=out[..., 0, :])
    torch.mul(t2, t.mul(1.5).sub_(2.5), out=out[..., 1, :]).add_(1.0)
    torch.mul(t, t.mul(-1.5).add_(2.0).mul_(t).add_(0.5), out=out[..., 2, :])
    torch.mul(t2, t.mul(0.5).sub_(0.5), out=out[..., 3, :])
    return out


class DopplerShift:
    r"""Rest-frame spectra on a grid, seen at one velocity per (star, exposure).

    Parameters
    ----------
    wave : ndarray, shape (P,)
        The grid's pixel centres (strictly increasing).
    velocity : array_like, shape (B, E)
        Velocity of each star's exposure, km/s (:math:`|v| < c`).
    margin : float
        The pixels marked invalid (`valid` False) are those whose source lies
        outside the grid for any velocity within ``margin`` km/s of the given
        one, so that a refinement within that margin keeps the same pixels.
    device, dtype
        Of the tensors.

    Attributes
    ----------
    velocity : ndarray, shape (B, E)
        The velocities (float64, km/s).
    base : tensor of int64, shape (B, E, P)
        The grid pixel of each pixel's tap at 0 (its source's pixel, rounded down);
        `index` gives all four taps.
    valid : tensor of bool, shape (B, E, P)
        Pixels whose value comes from inside the grid (all four taps).
    """

    def __init__(self, wave, velocity, *, margin: float = 0.0, device=None, dtype=None):
        wave = np.asarray(wave, dtype=np.float64)
        velocity = np.asarray(velocity, dtype=np.float64)
        if velocity.ndim != 2:
            raise ValueError(f"velocity must be (B, E), got shape {velocity.shape}")
        if not np.all(np.abs(velocity) + margin < C_KMS):
            raise ValueError("velocities must be finite and smaller than the speed of light")
        self.velocity = velocity
        self.wave = wave
        pixels = np.arange(wave.size, dtype=np.float64)
        source = wave * (1.0 - velocity[..., None] / C_KMS)  # (B, E, P)
        pos = np.interp(source, wave, pixels)
        base = np.floor(pos)
        # all four taps inside the grid (wave[1] <= source < wave[P - 2]) at v and at
        # v -+ margin: the source position falls as v rises
        low = source if not margin else wave * (1.0 - (velocity[..., None] + margin) / C_KMS)
        high = source if not margin else wave * (1.0 - (velocity[..., None] - margin) / C_KMS)
        valid = (low >= wave[1]) & (high < wave[-2])
        frac = torch.as_tensor(pos - base, device=device).to(dtype or torch.float64)
        self.base = torch.as_tensor(base.astype(np.int64), device=device)  # (B, E, P)
        self.weight = _keys_weights(frac)  # (B, E, 4, P)
        self.valid = torch.as_tensor(valid, device=device)
        self._inverses: dict[float, DopplerShift] = {}

    @property
    def n_exposures(self) -> int:
        """E, exposures per star."""
        return self.velocity.shape[1]

    @property
    def index(self) -> torch.Tensor:
        """The pixels (B, E, 4, P) of the taps at -1, 0, 1, 2, clamped to the grid."""
        return _tap_pixels(self.base)

    def apply(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Shift rest-frame rows ``x`` (n, ..., P) of stars ``rows`` (n,): (n, E, ..., P).

        Invalid pixels hold a value from the grid's edge; callers mask them.
        """
        n, mid, n_pix = x.shape[0], x.shape[1:-1], x.shape[-1]
        flat = x.reshape(n, -1, n_pix)
        if flat.shape[1] >= _SPARSE_ROWS:
            return self._apply_sparse(flat, rows).reshape(n, self.n_exposures, *mid, n_pix)
        base, weight = self.base, self.weight  # (n, E, P), (n, E, 4, P); copied for a subset
        if rows.numel() != base.shape[0] or not torch.equal(
            rows, torch.arange(rows.numel(), device=rows.device)
        ):
            base, weight = base[rows], weight[rows]
        # the edge pixel repeated once below and twice above the grid: tap t of pixel p is
        # padded[base + t], the clamped grid pixel base + t - 1, so one index serves all taps
        padded = torch.nn.functional.pad(flat, (1, 2), mode="replicate")
        out = []
        for e in range(self.n_exposures):
            shifted = None
            index = base[:, e, None].expand(flat.shape)
            for tap in range(4):  # a gather along the pixels per tap, all other axes at once
                value = torch.gather(padded[..., tap : tap + n_pix], 2, index)
                tap_weight = weight[:, e, tap, None]
                if shifted is None:
                    shifted = value * tap_weight
                else:
                    shifted.addcmul_(value, tap_weight)
            out.append(shifted)
        return torch.stack(out, 1).reshape(n, self.n_exposures, *mid, n_pix)

    def _apply_sparse(self, flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`apply` of many rows per star, ``flat`` (n, M, P) -> (n, E, M, P): per exposure
        one product of the block-diagonal (n P, n P) interpolation matrix (four entries
        a row, compressed sparse rows) with the (n P, M) columns."""
        n, m, n_pix = flat.shape
        columns = flat.transpose(1, 2).reshape(n * n_pix, m)  # a view for Jacobians
        offset = (torch.arange(n, device=flat.device) * n_pix)[:, None, None]
        starts = torch.arange(0, 4 * n * n_pix + 1, 4, device=flat.device)
        index = _tap_pixels(self.base[rows])  # (n, E, 4, P)
        out = []
        for e in range(self.n_exposures):
            matrix = _csr(
                starts,
                (index[:, e] + offset).transpose(1, 2).reshape(-1),
                self.weight[rows, e].transpose(1, 2).reshape(-1).to(flat.dtype),
                n * n_pix,
            )
            out.append((matrix @ columns).reshape(n, n_pix, m).transpose(1, 2))
        return out[0][:, None] if len(out) == 1 else torch.stack(out, 1)

    def apply_each(self, x: torch.Tensor) -> torch.Tensor:
        """Shift each exposure's own rest-frame spectrum, ``x`` (B, E, P) -> (B, E, P)."""
        rows = torch.arange(x.shape[0], device=x.device)
        out = torch.empty_like(x)
        for e in range(x.shape[1]):
            out[:, e] = self.apply(x[:, e], rows)[:, e]
        return out

    def take(self, rows: torch.Tensor) -> DopplerShift:
        """The shift of stars ``rows`` (int tensor) alone, its arrays sliced, not rebuilt."""
        taken = copy.copy(self)
        taken.velocity = self.velocity[rows.cpu().numpy()]
        taken.base, taken.weight, taken.valid = self.base[rows], self.weight[rows], self.valid[rows]
        taken._inverses = {}
        return taken

    def inverse(self, margin: float = 0.0) -> DopplerShift:
        """The shift back to rest: its velocity is :math:`-v / (1 - v/c)` (built once
        per ``margin``: the data's interpolation to rest and its weights' share it)."""
        if margin not in self._inverses:
            v = self.velocity
            self._inverses[margin] = DopplerShift(
                self.wave,
                -v / (1.0 - v / C_KMS),
                margin=margin,
                device=self.base.device,
                dtype=self.weight.dtype,
            )
        return self._inverses[margin]


def _tap_pixels(base: torch.Tensor) -> torch.Tensor:
    """The pixels (..., 4, P) of the taps at -1, 0, 1, 2 of ``base`` (..., P), clamped to
    the grid."""
    taps = torch.arange(-1, 3, device=base.device)[:, None]
    return (base[..., None, :] + taps).clamp_(0, base.shape[-1] - 1)


def _csr(starts, columns, values, size: int) -> torch.Tensor:
    """A square sparse matrix from its compressed rows (torch's beta warning silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            starts, columns, values, (size, size), check_invariants=False
        )


def to_rest(shift: DopplerShift, flux: torch.Tensor, gone: torch.Tensor):
    """Observed (B, E, P) data put back to rest by interpolation: (flux, gone), (B, E, P).

    A rest pixel is missing when any of its taps is (or lies off the grid).
    """
    back = shift.inverse()
    out = back.apply_each(flux)
    taps = torch.gather(gone[:, :, None].expand(-1, -1, 4, -1), -1, back.index).any(2)
    lost = taps | ~back.valid
    return torch.where(lost, 0.0, out), lost


def _box(x: torch.Tensor, half: int) -> torch.Tensor:
    """Running sum of ``x`` (n, P) over ``2 half + 1`` pixels (fewer at the ends)."""
    padded = torch.nn.functional.pad(x, (half + 1, half))
    total = padded.cumsum(-1)
    return total[:, 2 * half + 1 :] - total[:, : -2 * half - 1]


def highpass(flux: torch.Tensor, weight: torch.Tensor, width: float = _CONTINUUM_PIXELS):
    """``flux`` (n, P) divided by its smooth continuum, minus 1, and the matching weights.

    The continuum is the flux smoothed by three passes of a running mean (close to a
    Gaussian of sigma ``width`` pixels) over the pixels with ``weight > 0``; the
    weights (inverse variances) are multiplied by its square, as the noise of the
    ratio is divided by it.
    """
    half = max(int(round(width)), 1)  # three boxes of 2 width + 1: variance ~ width^2
    used = (weight > 0).to(flux.dtype)
    num, den = flux * used, used
    for _ in range(3):
        num, den = _box(num, half), _box(den, half)
    smooth = num / den.clamp_min(1e-12)
    good = (den > 1e-3 * (2 * half + 1) ** 3) & (smooth > 0) & (weight > 0)
    ratio = torch.where(good, flux / torch.where(good, smooth, 1.0) - 1.0, 0.0)
    return ratio, torch.where(good, weight * smooth.square(), 0.0)


def template_bank(templates: torch.Tensor, wave: np.ndarray, velocity_range: float, step: float):
    """The continuum-divided ``templates`` (T, P) shifted over the search grid.

    Returns the grid (V,) in km/s and the shifted templates, (V T, P) with the
    pixels shifted in from beyond the grid zero.  Built once per model and range.
    """
    n_grid = max(int(math.ceil(velocity_range / step)), 1)
    grid = np.linspace(-velocity_range, velocity_range, 2 * n_grid + 1)
    t_rest, _ = highpass(templates, torch.ones_like(templates))
    shift = DopplerShift(wave, grid[:, None], device=templates.device, dtype=templates.dtype)
    rows = torch.arange(grid.size, device=templates.device)
    shifted = shift.apply(t_rest[None].expand(grid.size, -1, -1), rows)  # (V, 1, T, P)
    shifted = torch.where(shift.valid[:, :, None], shifted, 0.0)[:, 0]
    return grid, shifted.reshape(-1, templates.shape[-1])


def search_velocity(flux: torch.Tensor, weight: torch.Tensor, bank) -> np.ndarray:
    r"""Best velocity of each spectrum against shifted templates, km/s.

    Parameters
    ----------
    flux : tensor, shape (N, P)
        Normalised spectra on the bank's grid (any value where ``weight`` is 0).
    weight : tensor, shape (N, P)
        Inverse variances; 0 at missing pixels.
    bank : tuple
        `template_bank`'s velocity grid and shifted templates.

    Returns
    -------
    ndarray, shape (N,)
        The velocity of the largest :math:`\Delta\chi^2 = (\sum w d t)^2 / \sum w t^2`
        over templates and velocities (positive amplitude only; :math:`d`,
        :math:`t` the continuum-divided data and template), its grid point refined
        by a parabola through its neighbours, within the grid; 0 for a spectrum
        without any weight.
    """
    grid, shifted = bank
    d, w = highpass(flux, weight)
    # cosmic-ray hits and emission (sky residuals) above the continuum would
    # correlate with any template: clip at 3 noise units above it
    d = torch.minimum(d, 3 / w.clamp_min(1e-30).sqrt()).clamp_min(-1.0)
    num = (w * d) @ shifted.T  # (N, V T)
    den = w @ shifted.square().T
    score = torch.where(num > 0, num.square() / den.clamp_min(1e-30), 0.0)
    score = score.reshape(flux.shape[0], grid.size, -1).amax(-1).double().cpu().numpy()
    best = score.argmax(-1)
    inner = np.clip(best, 1, grid.size - 2)
    rows = np.arange(score.shape[0])
    left, mid, right = (score[rows, inner + k] for k in (-1, 0, 1))
    curve = left - 2 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curve < 0, 0.5 * (left - right) / curve, 0.0)
    offset = np.where(best == inner, np.clip(offset, -0.5, 0.5), 0.0)
    found = np.clip(grid[best] + offset * (grid[1] - grid[0]), grid[0], grid[-1])
    return np.where(score.max(-1) > 0, found, 0.0)


def parabola_peak(offsets: np.ndarray, values: np.ndarray, bound: float):
    """Vertex and curvature of the least-squares parabola through ``values`` (N, M).

    Returns the vertex offset (N,), clipped to ``[-bound, bound]`` and replaced
    by the best sampled offset where the parabola does not open downwards, and
    the negative second derivative (N,) (NaN where it is not positive).
    """
    design = np.stack([np.ones_like(offsets), offsets, offsets**2], axis=1)
    coef = np.linalg.lstsq(design, values.T, rcond=None)[0]  # (3, N)
    a, b = coef[2], coef[1]
    ok = np.isfinite(a) & (a < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(ok, -b / (2 * a), np.nan)
    fallback = offsets[np.nanargmax(np.where(np.isfinite(values), values, -np.inf), axis=1)]
    vertex = np.where(np.isfinite(vertex), np.clip(vertex, -bound, bound), fallback)
    return vertex, np.where(ok, -2 * a, np.nan)


def velocity_profile(likelihood, wave: np.ndarray, signal, velocity, offsets) -> np.ndarray:
    """Each exposure's log likelihood (B, E, M) of ``signal`` (B, P) at ``velocity``
    (B, E) + ``offsets`` (M,) km/s; ``likelihood(observed, rows)`` gives the (B, E)
    log likelihood of the model ``observed`` (B, E, P) of stars ``rows``."""
    rows = torch.arange(signal.shape[0], device=signal.device)
    values = []
    for offset in offsets:
        trial = DopplerShift(wave, velocity + offset, device=signal.device, dtype=signal.dtype)
        observed = trial.apply(signal, rows)
        values.append(likelihood(observed, rows).detach().cpu().numpy().astype(np.float64))
    return np.stack(values, axis=-1)


def refine_velocity(likelihood, wave: np.ndarray, signal: torch.Tensor, start) -> np.ndarray:
    """Refined velocities (B, E), km/s, of the exposures of stars ``signal`` (B, P).

    Two least-squares parabolas (`parabola_peak`) through each exposure's log
    likelihood (``velocity_profile``) at offsets around the searched velocities, the
    result kept within ``_VELOCITY_MARGIN`` (60 km/s) of them.

    Parameters
    ----------
    likelihood : callable
        ``likelihood(observed, rows)``: the (B, E) log likelihood of the shifted model
        ``observed`` (B, E, P) of stars ``rows`` (B,), a tensor.
    wave : ndarray, shape (P,)
        The model grid, Angstrom.
    signal : tensor, shape (B, P)
        Each star's rest-frame model spectrum.
    start : ndarray, shape (B, E)
        The searched velocities, km/s.

    Returns
    -------
    ndarray, shape (B, E)
    """
    n_star, n_exp = start.shape
    velocity = start
    for offsets in (_VELOCITY_COARSE, _VELOCITY_FINE):
        profile = velocity_profile(likelihood, wave, signal, velocity, offsets)
        bound = float(np.abs(offsets).max())
        vertex, _ = parabola_peak(offsets, profile.reshape(-1, offsets.size), bound)
        velocity = np.clip(
            velocity + vertex.reshape(n_star, n_exp),
            start - _VELOCITY_MARGIN,
            start + _VELOCITY_MARGIN,
        )
    return velocity


def fixed_velocities(velocity, n_star: int, n_exp: int) -> np.ndarray:
    """Given velocities (a number, (B,) or (B, E), km/s) as a (B, E) float64 array.

    Raises
    ------
    ValueError
        If the shape fits neither, or a velocity is not finite or not below c.
    """
    v = np.asarray(velocity, dtype=np.float64)
    if v.shape == (n_star,):
        v = v[:, None]
    try:
        v = np.broadcast_to(v, (n_star, n_exp))
    except ValueError as exc:
        raise ValueError(
            f"velocity must be a number, {n_star} numbers or ({n_star}, {n_exp}), "
            f"got shape {v.shape}"
        ) from exc
    if not np.all(np.isfinite(v) & (np.abs(v) < C_KMS)):
        raise ValueError("velocity must be finite and below the speed of light (km/s)")
    return v


def velocity_error(
    shift: DopplerShift,
    signal: torch.Tensor,
    counted: torch.Tensor,
    inv_unit: torch.Tensor,
    floor=None,
    step: float = 6.0,
    calibration=None,
) -> np.ndarray:
    r"""Calibrated Laplace standard deviation (B, E) of each exposure's velocity, km/s.

    :math:`\sigma_L = (\sum_p (\partial_v \hat s_p)^2 / (t_p^2 + \sigma_{G,p}^2))^{-1/2}`
    over the pixels that count, with :math:`\hat s` the MAP spectrum shifted to the
    exposure's velocity (the derivative by central differences of ``step`` km/s),
    :math:`t` the likelihood's noise unit and :math:`\sigma_G` the generator's
    error: the Gauss-Newton curvature of the likelihood in :math:`v` with the
    model's own error counted as noise, the spectrum fixed.  The result is
    :math:`\sqrt{(a \sigma_L)^2 + f^2}` with ``calibration`` :math:`(a, f)`.

    Parameters
    ----------
    shift : DopplerShift
        The fitted velocities.
    signal : tensor, shape (B, P)
        The MAP spectrum at rest.
    counted, inv_unit : tensor, shape (B, E, P)
        Where a pixel counts in the likelihood, and :math:`1 / t` (0 at missing pixels).
    floor : tensor, shape (B, E or 1, P), optional
        :math:`\sigma_G` in the exposures' frame.
    step : float
        The difference step, km/s.
    calibration : array_like, shape (2,), optional
        :math:`(a, f)`, the model's ``extra["velocity_error"]``; default (1, 0).

    Returns
    -------
    ndarray, shape (B, E)
        inf where no counted pixel constrains the velocity.
    """
    rows = torch.arange(signal.shape[0], device=signal.device)
    ends = [
        DopplerShift(
            shift.wave, shift.velocity + sign * step, device=signal.device, dtype=signal.dtype
        ).apply(signal, rows)
        for sign in (-1.0, 1.0)
    ]
    slope = (ends[1] - ends[0]) / (2 * step)  # (B, E, P)
    use = counted > 0
    var = torch.where(use, 1 / torch.where(use, inv_unit, 1.0), 1.0).square()
    if floor is not None:
        var = var + floor.square()
    info = torch.where(use, slope.square() / var, 0.0).sum(-1)
    info = info.detach().cpu().numpy().astype(np.float64)
    scale, added = (1.0, 0.0) if calibration is None else np.asarray(calibration, np.float64)
    with np.errstate(divide="ignore"):
        return np.hypot(scale / np.sqrt(info), added)


def check_velocity_error(extra: dict) -> None:
    """``extra["velocity_error"]``, when present: two finite numbers, scale a > 0, f >= 0 km/s.

    Raises
    ------
    ValueError
        If it is not.
    """
    if "velocity_error" not in extra:
        return
    values = np.asarray(extra["velocity_error"], dtype=np.float64)
    if values.shape != (2,) or not np.all(np.isfinite(values)) or values[0] <= 0 or values[1] < 0:
        raise ValueError(
            "extra['velocity_error'] must hold two finite numbers (scale > 0, floor >= 0 "
            f"km/s), got {values.tolist()}"
        )


def shared_floor(extra: dict) -> float:
    """The velocity error's floor :math:`f`, km/s (``extra["velocity_error"][1]``; 0
    without it): the part all exposures of one star share
    (`~specutils_deepclean.exposures.pool_velocities`).

    Parameters
    ----------
    extra : dict
        A denoiser's extra arrays.

    Returns
    -------
    float
    """
    return float(np.asarray(extra.get("velocity_error", (1.0, 0.0)), np.float64)[1])
