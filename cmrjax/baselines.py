r"""Baseline lag kernels fitted to attention heads exactly the way CMR is, and compared by AIC/BIC.

Is CMR needed to describe a head's attention-by-lag profile, or would any bump do? Two baselines:

* **Gaussian** kernel, 2 parameters (``mu`` in [-5, 5], ``sigma`` in [0.25, 10]):
  :math:`k(\ell) = \exp(-(\ell-\mu)^2 / 2\sigma^2)`.
* **Asymmetric exponential** kernel, 3 parameters (``center`` in [-5, 5], ``r_back``, ``r_fwd`` in [0, 1]):
  :math:`k(\ell) = r_{fwd}^{\,\ell-c}` for :math:`\ell \ge c`, :math:`r_{back}^{\,c-\ell}` for
  :math:`\ell < c` (a peak at ``c`` with separate backward and forward decay, the shape of a human lag-CRP).

Fitted the same way as CMR: each kernel is tabulated on a uniform product grid of its parameters
(:func:`kernel_grid`, packaged as a :class:`cmrjax.io.CRPGrid`) and the fit engine
(:func:`cmrjax.fit.fit_scores`) fits it with the paper's window and min-max distance (kernel renormalised
on the window, both shifted to minimum 0, kernel scaled to the profile's maximum), by exhaustive grid
search and, with ``method="both"``, by the same multi-start gradient refinement CMR gets. Fair
initialisation: the grids are about as dense as the paper's CMR grid (Gaussian 41 x 40 = 1,640 points;
asymmetric exponential 21 x 21 x 21 = 9,261 points; CMR 20 x 21 x 11 = 4,620), cover each kernel's whole
sensible range, and the gradient fits start from each kernel's own best grid cells.

Model comparison. With the min-max alignment every model's fitted curve is
:math:`k\,q(\theta)` after shifting, so the residual is :math:`\text{MSE} = d \cdot \operatorname{Var}(p)`
(:math:`d` the distance, :math:`p` the shifted profile, :math:`n` = window lags = 11). Under Gaussian
residuals,

.. math:: \text{AIC} = n \log \text{MSE} + 2 k, \qquad \text{BIC} = n \log \text{MSE} + k \log n,

with :math:`k` the kernel's shape parameters (CMR 3, Gaussian 2, asymmetric exponential 3). The offset
and scale of the alignment are the same for every model and are not counted (they cancel in the
differences, which is all that is compared). Heads whose profile SEMs differ are not reweighted: like
the paper's distance, the criterion treats lags equally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from cmrjax.io import CRPGrid, Scores

#: Number of shape parameters of each model (CMR: beta_enc, beta_rec, gamma_ft).
N_PARAMS = {"CMR": 3, "gaussian": 2, "asym_exp": 3}
#: What the three parameter columns of a baseline's fits mean.
PARAM_NAMES = {
    "CMR": ("beta_enc", "beta_rec", "gamma_ft"),
    "gaussian": ("mu", "sigma", "unused"),
    "asym_exp": ("center", "r_back", "r_fwd"),
}
KERNELS = ("gaussian", "asym_exp")


def gaussian_kernel(lags: np.ndarray, mu, sigma) -> np.ndarray:
    """Gaussian bump on ``lags``; ``mu``, ``sigma`` broadcast (result shape (..., lags))."""
    lags = np.asarray(lags, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)[..., None]
    sigma = np.asarray(sigma, dtype=np.float64)[..., None]
    return np.exp(-0.5 * ((lags - mu) / sigma) ** 2)


def asym_exp_kernel(lags: np.ndarray, center, r_back, r_fwd) -> np.ndarray:
    """Asymmetric exponential: ``r_fwd**(lag - c)`` at and after ``c``, ``r_back**(c - lag)`` before.

    ``0**0 = 1``, so ``r = 0`` leaves only the lag at the centre on that side.
    """
    lags = np.asarray(lags, dtype=np.float64)
    c = np.asarray(center, dtype=np.float64)[..., None]
    rb = np.asarray(r_back, dtype=np.float64)[..., None]
    rf = np.asarray(r_fwd, dtype=np.float64)[..., None]
    x = lags - c
    with np.errstate(divide="ignore", invalid="ignore"):
        fwd = np.power(rf, np.maximum(x, 0.0))
        back = np.power(rb, np.maximum(-x, 0.0))
    return np.where(x >= 0, fwd, back)


def default_axes(kernel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The uniform parameter axes the kernel is tabulated on (see the module docstring)."""
    if kernel == "gaussian":
        # the third axis is a dummy (two identical slices, so the interpolating surface is flat along it)
        return np.linspace(-5, 5, 41), np.linspace(0.25, 10, 40), np.array([0.0, 1.0])
    if kernel == "asym_exp":
        return np.linspace(-5, 5, 21), np.linspace(0, 1, 21), np.linspace(0, 1, 21)
    raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}")


def kernel_grid(kernel: str, *, lags: np.ndarray | None = None, axes=None) -> CRPGrid:
    """The kernel tabulated on a product grid of its parameters, as a CRPGrid the fit engine accepts.

    Args:
      kernel: ``"gaussian"`` or ``"asym_exp"``.
      lags: lags to tabulate (default -8..+8, like the CMR grid).
      axes: three 1-D parameter axes (default :func:`default_axes`); the ``beta_enc``, ``beta_rec``,
        ``gamma_ft`` fields of the returned grid hold them (see ``PARAM_NAMES``).
    """
    lags = np.arange(-8, 9) if lags is None else np.asarray(lags)
    a0, a1, a2 = default_axes(kernel) if axes is None else (np.asarray(a, dtype=np.float64) for a in axes)
    e, r, g = np.meshgrid(a0, a1, a2, indexing="ij")
    if kernel == "gaussian":
        crp = gaussian_kernel(lags, e, r)
    elif kernel == "asym_exp":
        crp = asym_exp_kernel(lags, e, r, g)
    else:
        raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}")
    s = crp.sum(-1, keepdims=True)
    crp = np.where(s > 0, crp / np.where(s > 0, s, 1.0), 0.0)
    return CRPGrid(crp=crp, beta_enc=a0, beta_rec=a1, gamma_ft=a2, lags=lags,
                   metadata={"kind": "kernel_grid", "kernel": kernel, "param_names": PARAM_NAMES[kernel]})


def information_criteria(distance: np.ndarray, profile_var: np.ndarray, n_params: int, n_lags: int):
    """(AIC, BIC) per head from the min-max distance: MSE = distance * Var(shifted profile).

    Zero residuals give -inf (a perfect fit); NaN distances give NaN.
    """
    mse = np.asarray(distance, dtype=np.float64) * np.asarray(profile_var, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = n_lags * np.log(mse)
    return ll + 2 * n_params, ll + n_params * np.log(n_lags)


@dataclass
class BaselineComparison:
    """Per-head fits of CMR and the baselines and their comparison (arrays shaped (layers, heads)).

    Attributes:
      fits: model name -> :class:`cmrjax.fit.HeadFits` (``"CMR"``, ``"gaussian"``, ``"asym_exp"``).
      distance, aic, bic: model name -> (L, H) arrays (from the gradient fit when ``use="gradient"``).
      best_aic, best_bic: (L, H) name of the model with the lowest criterion per head.
      use: ``"grid"`` or ``"gradient"``.
    """

    fits: dict
    distance: dict
    aic: dict
    bic: dict
    best_aic: np.ndarray
    best_bic: np.ndarray
    use: str


def compare_models(fits: Mapping[str, object], *, use: str = "grid") -> BaselineComparison:
    """AIC/BIC of already fitted models (name -> HeadFits with the same heads and window)."""
    names = list(fits)
    first = fits[names[0]]
    var = np.var(np.asarray(first.profile_fit, dtype=np.float64), axis=-1)
    n = len(first.lags_fit)
    dist, aic, bic = {}, {}, {}
    for name in names:
        f = fits[name]
        d = np.asarray(f.distance_grid if use == "grid" else f.distance, dtype=np.float64)
        dist[name] = d
        aic[name], bic[name] = information_criteria(d, var, N_PARAMS[name], n)

    def best(crit):
        stack = np.stack([np.where(np.isfinite(crit[k]) | np.isneginf(crit[k]), crit[k], np.inf) for k in names])
        out = np.array(names, dtype=object)[np.argmin(stack, axis=0)]
        allnan = np.all(~np.isfinite(stack) & ~np.isneginf(stack), axis=0)
        return np.where(allnan, "", out).astype(str)

    return BaselineComparison(fits=dict(fits), distance=dist, aic=aic, bic=bic, best_aic=best(aic),
                              best_bic=best(bic), use=use)


def fit_baselines(scores: Scores, cmr_grid: CRPGrid, *, method: str = "grid", window: int = 5,
                  kernels=KERNELS, **fit_kwargs) -> BaselineComparison:
    """Fit CMR and each baseline kernel to every head of ``scores`` with the fit engine, and compare.

    Args:
      scores: the heads.
      cmr_grid: the CMR CRP grid (the paper's reference grid reproduces the paper's CMR fits).
      method: ``"grid"`` or ``"both"`` (adds gradient refinement for every model; the comparison then
        uses the gradient fits).
      window: lags -window..+window are compared (paper: 5).
      **fit_kwargs: passed to :func:`cmrjax.fit.fit_scores` for every model.
    """
    from cmrjax.fit import fit_scores

    if method not in ("grid", "both"):
        raise ValueError(f"method={method!r} must be 'grid' or 'both'")
    fits = {"CMR": fit_scores(scores, cmr_grid, method=method, window=window, **fit_kwargs)}
    for k in kernels:
        fits[k] = fit_scores(scores, kernel_grid(k), method=method, window=window, **fit_kwargs)
    return compare_models(fits, use="grid" if method == "grid" else "gradient")
