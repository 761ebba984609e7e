"""Fitting CMR to attention heads: the paper's CMR distance, exact grid fits and gradient fits.

The paper's **CMR distance** (Ji-An et al., NeurIPS 2024; original code corxyz/icl-cmr) compares a head's
attention-score profile :math:`s` (lags -8..+7) with a CMR lag-CRP :math:`c` (lags -8..+8) on the window
of lags :math:`-w..+w` (``window=5``):

.. math::

    \\tilde c = c_W / \\textstyle\\sum c_W, \\qquad
    p = s_W - \\min s_W, \\qquad q = \\tilde c - \\min \\tilde c, \\qquad
    k = \\max p / \\max q, \\qquad
    d = \\frac{\\operatorname{mean}\\,(p - k q)^2}{\\operatorname{Var}(p)}

with the population variance (ddof = 0; this reproduces the original's saved distances and scale factors
to 1e-15, see ``tests/test_fit.py``). :math:`k` is the scale factor, read as an inverse temperature.
The best grid point is the first argmin in C order of the grid axes (beta_enc, beta_rec, gamma_ft), as the
original's triple loop finds it. Heads with :math:`d < 0.5` count as CMR-like.

A second link, ``link="softmax"``, treats scores as pre-softmax logits: :math:`s_W \\approx a \\log \\tilde c + b`,
with :math:`a \\ge 0` (the inverse temperature) and :math:`b` fitted in closed form by least squares for
every head and grid point, and :math:`d = \\operatorname{mean}(s_W - a \\log\\tilde c - b)^2 / \\operatorname{Var}(s_W)`
(:math:`= 1 - r^2` when :math:`a > 0`; :math:`d = 1` when the best slope would be negative). CRP entries below
``log_floor`` are raised to it before the log.

Grid fits evaluate every head against every grid point in one vectorised JAX computation (chunked over
heads), keep the best candidates per head, and re-rank those candidates in float64 so that the argmin
matches the original exactly even where float32 cannot separate near-ties (``refine=True``).

Gradient fits optimise continuous parameters on a differentiable CRP surface (:mod:`cmrjax.surface`) with
optax Adam, vmapped over all heads (of all files) and several starts taken from the best grid cells; the
parameters are kept inside the surface's range by a sigmoid reparameterisation (widened by 5% of the range
on each side and clipped, so that the bounds themselves are reachable). Every start's own loss counts as a
candidate, so on a surface built from the fit grid the gradient fit is never worse than the grid fit. Their ``distance`` is the
surface's distance (interpolation and Monte Carlo bias: see :mod:`cmrjax.surface`); re-evaluate by
simulation (:func:`resimulate_distance`) to compare with grid fits without that bias.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmrjax.io import DEFAULT_CRP_LAGS, DEFAULT_SCORE_LAGS, CRPGrid, Scores
from cmrjax.surface import CRPSurface, build_surface, surface_crp

__all__ = [
    "HeadFits",
    "fit_scores",
    "fit_profiles",
    "cmr_distance",
    "align_to_profile",
    "grid_distances",
    "resimulate_distance",
    "LINKS",
    "METHODS",
]

LINKS = ("minmax", "softmax")
METHODS = ("grid", "gradient", "both")


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class HeadFits:
    """Fits of every head of one scores file. Leading axes (layers, heads) on every per-head array.

    Attributes:
      labels: (L, H) head labels.
      params_grid: (L, H, 3) best grid point (beta_enc, beta_rec, gamma_ft); NaN for bad heads.
      index_grid: (L, H, 3) int, its indices on the grid axes (-1 for bad heads).
      distance_grid: (L, H) the distance at the best grid point.
      scale_grid: (L, H) the scale factor there (min-max link: max p / max q; softmax link: slope a).
      params, distance, scale: gradient-fit results, (L, H, 3), (L, H), (L, H); None when not run.
        ``distance`` is evaluated on the differentiable surface (see ``metadata["gradient"]``).
      converged: (L, H) bool, gradient fit converged (None when not run).
      lags_fit: (K,) the window lags, e.g. -5..+5.
      profile_fit: (L, H, K) the head profile on the window as the distance sees it: shifted to minimum 0.
      crp_fit_grid: (L, H, K) the best grid CRP transformed the way the distance compares it (min-max:
        renormalised, shifted, scaled; softmax: a log c + b, shifted with the profile's minimum).
      metadata: link, method, window, grid provenance, dtype, gradient-fit settings.
    """

    labels: np.ndarray
    params_grid: np.ndarray
    index_grid: np.ndarray
    distance_grid: np.ndarray
    scale_grid: np.ndarray
    lags_fit: np.ndarray
    profile_fit: np.ndarray
    crp_fit_grid: np.ndarray
    params: np.ndarray | None = None
    distance: np.ndarray | None = None
    scale: np.ndarray | None = None
    converged: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# boundary checks and the reference (numpy float64) distance


def _window_index(lags: np.ndarray, window: int, what: str) -> np.ndarray:
    lags = np.asarray(lags)
    want = np.arange(-window, window + 1)
    missing = sorted(set(want.tolist()) - set(lags.tolist()))
    if missing:
        raise ValueError(
            f"{what} has lags {int(lags.min())}..{int(lags.max())} ({len(lags)} values) but the fit window "
            f"needs lags {-window}..{window}; pass a smaller window= or profiles with those lags"
        )
    return np.searchsorted(lags, want)


def _check_window(window: Any) -> int:
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window={window!r} must be a positive integer (the paper uses 5)")
    return int(window)


def _check_link(link: str) -> str:
    if link not in LINKS:
        raise ValueError(f"link={link!r} is not one of {LINKS}")
    return link


def _lags_for(arr: np.ndarray, lags: np.ndarray | None, default: np.ndarray, what: str) -> np.ndarray:
    if lags is None:
        if arr.shape[-1] != len(default):
            raise ValueError(
                f"{what} has {arr.shape[-1]} lag columns; without {what}_lags= it must have {len(default)} "
                f"(lags {default[0]}..{default[-1]}); pass {what}_lags="
            )
        return default
    lags = np.asarray(lags)
    if lags.shape != (arr.shape[-1],):
        raise ValueError(f"{what}_lags has {lags.shape} entries but {what} has {arr.shape[-1]} lag columns")
    return lags


def _minmax_parts(profile_w: np.ndarray, crp_w: np.ndarray):
    crp_n = crp_w / crp_w.sum(-1, keepdims=True)
    p = profile_w - profile_w.min(-1, keepdims=True)
    q = crp_n - crp_n.min(-1, keepdims=True)
    scale = p.max(-1) / q.max(-1)
    return p, q * scale[..., None], scale


def _softmax_parts(profile_w: np.ndarray, crp_w: np.ndarray, log_floor: float):
    crp_n = crp_w / crp_w.sum(-1, keepdims=True)
    x = np.log(np.maximum(crp_n, log_floor))
    xc = x - x.mean(-1, keepdims=True)
    yc = profile_w - profile_w.mean(-1, keepdims=True)
    a = np.maximum((xc * yc).sum(-1) / (xc * xc).sum(-1), 0.0)
    b = profile_w.mean(-1) - a * x.mean(-1)
    shift = profile_w.min(-1, keepdims=True)
    return profile_w - shift, a[..., None] * x + b[..., None] - shift, a


def align_to_profile(
    profile,
    crp,
    *,
    profile_lags: np.ndarray | None = None,
    crp_lags: np.ndarray | None = None,
    window: int = 5,
    link: str = "minmax",
    log_floor: float = 1e-6,
):
    """Put a head profile and a CRP on a common footing the way the distance compares them (for plots).

    Args:
      profile: (..., lags_p) head scores (default lags -8..+7).
      crp: (..., lags_c) CRP (default lags -8..+8); broadcasts against ``profile``'s leading axes.
      window: lags -window..+window are compared.
      link: ``"minmax"`` (the paper's) or ``"softmax"``.

    Returns:
      (lags, profile_shifted, crp_scaled, scale): lags (K,); the profile on the window shifted to minimum
      0, (..., K); the CRP transformed to the profile's units, (..., K); the scale factor (...,).
    """
    window = _check_window(window)
    link = _check_link(link)
    profile = np.asarray(profile, dtype=np.float64)
    crp = np.asarray(crp, dtype=np.float64)
    pi = _window_index(_lags_for(profile, profile_lags, DEFAULT_SCORE_LAGS, "profile"), window, "profile")
    ci = _window_index(_lags_for(crp, crp_lags, DEFAULT_CRP_LAGS, "crp"), window, "crp")
    pw, cw = profile[..., pi], crp[..., ci]
    if link == "minmax":
        p, q, s = _minmax_parts(pw, cw)
    else:
        p, q, s = _softmax_parts(pw, cw, log_floor)
    return np.arange(-window, window + 1), p, q, s


def cmr_distance(
    profile,
    crp,
    *,
    profile_lags: np.ndarray | None = None,
    crp_lags: np.ndarray | None = None,
    window: int = 5,
    link: str = "minmax",
    log_floor: float = 1e-6,
) -> np.ndarray | float:
    """The paper's CMR distance between head profiles and CRPs (numpy, float64; see the module docstring).

    Args:
      profile: (..., lags_p) head scores (default lags -8..+7, as in the scores files).
      crp: (..., lags_c) CRPs (default lags -8..+8); leading axes broadcast against ``profile``'s.
      window: compare lags -window..+window (paper: 5).
      link: ``"minmax"`` (paper) or ``"softmax"`` (scores ~ a log CRP + b).

    Returns:
      (...,) distances: mean squared difference / population variance of the shifted profile.

    Examples:
      >>> import numpy as np
      >>> crp = np.exp(-np.abs(np.arange(-8, 9))); crp /= crp.sum()
      >>> float(cmr_distance(3.0 * crp[:16] + 7.0, crp)) < 1e-12
      True
    """
    _, p, q, _ = align_to_profile(profile, crp, profile_lags=profile_lags, crp_lags=crp_lags,
                                  window=window, link=link, log_floor=log_floor)
    return np.mean((p - q) ** 2, axis=-1) / np.var(p, axis=-1)


# --------------------------------------------------------------------------------------------------
# prepared (normalised) inputs for the vectorised kernels


def _prepare_profiles(pw: np.ndarray, link: str):
    """Float64 normalisation of (N, K) window profiles so the kernel works on O(1) numbers.

    min-max: u = p / max p (p = profile - min), inv_var = 1 / Var(u).
    softmax: u = (y - mean y) / std y, inv_var = 1.
    Returns u, inv_var, unit (to undo the normalisation of the scale), ok (finite, non-constant).
    """
    ok = np.all(np.isfinite(pw), axis=-1)
    safe = np.where(ok[:, None], pw, 0.0)
    if link == "minmax":
        p = safe - safe.min(-1, keepdims=True)
        unit = p.max(-1)
        ok &= unit > 0
        unit = np.where(ok, unit, 1.0)
        u = p / unit[:, None]
        var = u.var(-1)
        ok &= var > 0
        inv_var = np.where(ok, 1.0 / np.where(var > 0, var, 1.0), 1.0)
    else:
        yc = safe - safe.mean(-1, keepdims=True)
        unit = yc.std(-1)
        ok &= unit > 0
        unit = np.where(ok, unit, 1.0)
        u = yc / unit[:, None]
        inv_var = np.ones(len(u))
    u = np.where(ok[:, None], u, 0.0)
    return u, inv_var, unit, ok


def _prepare_grid(cw: np.ndarray, link: str, log_floor: float):
    """Float64 transform of (P, K) window CRPs.

    min-max: v = q / max q (q = renormalised CRP - min), unit = max q (scale = profile unit / unit).
    softmax: v = centred log CRP, unit = sum v^2.
    valid: points that can be compared (finite, positive sum, non-flat).
    """
    s = cw.sum(-1, keepdims=True)
    valid = np.all(np.isfinite(cw), axis=-1) & (s[:, 0] > 0)
    crp_n = np.where(valid[:, None], cw / np.where(s > 0, s, 1.0), 1.0)
    if link == "minmax":
        q = crp_n - crp_n.min(-1, keepdims=True)
        unit = q.max(-1)
        valid &= unit > 0
        v = q / np.where(unit > 0, unit, 1.0)[:, None]
    else:
        x = np.log(np.maximum(crp_n, log_floor))
        v = x - x.mean(-1, keepdims=True)
        unit = (v * v).sum(-1)
        valid &= unit > 0
    return v, np.where(valid, unit, 1.0), valid


def _pair_distance(u, inv_var, v, link):
    """distance and normalised scale for broadcastable u (..., K), inv_var (...), v (..., K) (jnp or np)."""
    xp = jnp if isinstance(u, jax.Array) or isinstance(v, jax.Array) else np
    if link == "minmax":
        return xp.mean((u - v) ** 2, axis=-1) * inv_var, None
    a = xp.maximum(xp.sum(u * v, axis=-1) / xp.sum(v * v, axis=-1), 0.0)
    r = u - a[..., None] * v
    return xp.mean(r * r, axis=-1) * inv_var, a


def _grid_candidates_kernel(u, inv_var, v, valid, *, link: str, k: int):
    """(n, K), (n,), (P, K), (P,) -> the k smallest distances per head and their point indices."""
    d, _ = _pair_distance(u[:, None, :], inv_var[:, None], v[None, :, :], link)
    d = jnp.where(valid[None, :], d, jnp.inf)
    neg, idx = jax.lax.top_k(-d, k)
    return -neg, idx


_grid_candidates = jax.jit(_grid_candidates_kernel, static_argnames=("link", "k"))


def _default_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def grid_distances(u: np.ndarray, inv_var: np.ndarray, v: np.ndarray, valid: np.ndarray, *, link: str,
                   k: int = 16, chunk_size: int = 256, dtype=None, progress: bool = False):
    """Best ``k`` grid candidates for every head, heads x points in JAX, chunked over heads.

    Returns (distances (N, k), indices (N, k)) in the kernel's dtype, best first.
    """
    dtype = dtype or _default_dtype()
    N = len(u)
    k = min(k, len(v))
    chunk = min(chunk_size, _round_up(max(N, 1), 16))
    n_pad = _round_up(max(N, 1), chunk)
    u_p = np.zeros((n_pad, u.shape[1]))
    u_p[:N] = u
    iv_p = np.ones(n_pad)
    iv_p[:N] = inv_var
    vj = jnp.asarray(v, dtype=dtype)
    valj = jnp.asarray(valid)
    out_d, out_i = [], []
    starts = range(0, n_pad, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="grid fit", unit="chunk")
    for s in starts:
        d, i = _grid_candidates(jnp.asarray(u_p[s:s + chunk], dtype=dtype),
                                jnp.asarray(iv_p[s:s + chunk], dtype=dtype), vj, valj, link=link, k=k)
        out_d.append(d)
        out_i.append(i)
    d = np.asarray(jnp.concatenate(out_d))[:N]
    i = np.asarray(jnp.concatenate(out_i))[:N]
    return d, i


def _refine(u, inv_var, v, cand, link):
    """Re-rank candidate points in float64; ties go to the lowest grid index (the original's loop order)."""
    order = np.argsort(cand, axis=1, kind="stable")
    cand = np.take_along_axis(cand, order, axis=1)
    d, a = _pair_distance(u[:, None, :], inv_var[:, None], v[cand], link)
    best = np.argmin(d, axis=1)
    rows = np.arange(len(u))
    return cand[rows, best], d[rows, best], (None if a is None else a[rows, best]), cand, d


# --------------------------------------------------------------------------------------------------
# gradient fits


def _logit(x):
    return np.log(x) - np.log1p(-x)


#: Share of each parameter's range added beyond both ends before the sigmoid, then clipped away: the
#: bounds themselves (where many paper fits sit, e.g. beta_rec = 1) are reachable with finite logits.
_MARGIN = 0.05


def _to_params(z, surface: CRPSurface):
    """Logits (3,) -> parameters in [lower, upper]: an extended sigmoid, clipped to the range."""
    width = surface.upper - surface.lower
    theta = surface.lower - _MARGIN * width + (1 + 2 * _MARGIN) * width * jax.nn.sigmoid(z)
    return jnp.clip(theta, surface.lower, surface.upper)


def _to_logits(params: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    frac = (np.clip(params, lower, upper) - lower) / (upper - lower)
    return _logit((frac + _MARGIN) / (1 + 2 * _MARGIN))


def _surface_loss(z, u, inv_var, surface: CRPSurface, link: str, log_floor: float):
    theta = _to_params(z, surface)
    c = surface_crp(surface, theta)
    c = c / jnp.sum(c)
    if link == "minmax":
        q = c - jnp.min(c)
        v = q / jnp.max(q)
    else:
        x = jnp.log(jnp.maximum(c, log_floor))
        v = x - jnp.mean(x)
    d, _ = _pair_distance(u, inv_var, v, link)
    return d


def _scale_at(z, surface: CRPSurface, u, link: str, log_floor: float):
    theta = _to_params(z, surface)
    c = surface_crp(surface, theta)
    c = c / jnp.sum(c)
    if link == "minmax":
        return theta, 1.0 / jnp.max(c - jnp.min(c))
    x = jnp.log(jnp.maximum(c, log_floor))
    v = x - jnp.mean(x)
    return theta, jnp.maximum(jnp.sum(u * v) / jnp.sum(v * v), 0.0)


def _optimise_kernel(z0, u, inv_var, surface, *, link, log_floor, steps, lr):
    """z0 (B, 3), u (B, K), inv_var (B,): Adam on all rows at once; returns best z, best loss, converged."""
    opt = optax.adam(lr)
    per_row = jax.vmap(_surface_loss, in_axes=(0, 0, 0, None, None, None))

    def total(z):
        losses = per_row(z, u, inv_var, surface, link, log_floor)
        return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), losses

    grad_fn = jax.value_and_grad(total, has_aux=True)

    def step(carry, _):
        z, state, best_l, best_z = carry
        (_, losses), g = grad_fn(z)
        better = losses < best_l
        best_l = jnp.where(better, losses, best_l)
        best_z = jnp.where(better[:, None], z, best_z)
        updates, state = opt.update(g, state, z)
        return (optax.apply_updates(z, updates), state, best_l, best_z), None

    n1 = max(int(round(0.8 * steps)), 1)
    loss0 = per_row(z0, u, inv_var, surface, link, log_floor)
    inf = jnp.full(z0.shape[:1], jnp.inf, dtype=z0.dtype)
    carry = (z0, opt.init(z0), inf, z0)
    carry, _ = jax.lax.scan(step, carry, None, length=n1)
    best_mid = carry[2]
    carry, _ = jax.lax.scan(step, carry, None, length=max(steps - n1, 1))
    z_last = carry[0]
    last = per_row(z_last, u, inv_var, surface, link, log_floor)
    better = last < carry[2]
    best_l = jnp.where(better, last, carry[2])
    best_z = jnp.where(better[:, None], z_last, carry[3])
    converged = (best_mid - best_l) <= 1e-4 * best_l + 1e-7
    theta, scale = jax.vmap(_scale_at, in_axes=(0, None, 0, None, None))(best_z, surface, u, link, log_floor)
    theta0, scale0 = jax.vmap(_scale_at, in_axes=(0, None, 0, None, None))(z0, surface, u, link, log_floor)
    return theta, best_l, scale, converged, loss0, scale0


_optimise = jax.jit(_optimise_kernel, static_argnames=("link", "log_floor", "steps", "lr"))


def _gradient_fit(u, inv_var, unit, start_params, surface, *, link, log_floor, steps, lr, chunk_size,
                  dtype, progress, min_gain=0.0):
    """Multi-start gradient fits; start_params (N, S, 3). Returns params (N,3), distance, scale, converged."""
    N, S, _ = start_params.shape
    lo = np.asarray(surface.lower, dtype=np.float64)
    hi = np.asarray(surface.upper, dtype=np.float64)
    z0 = _to_logits(start_params, lo, hi).reshape(N * S, 3)
    ur = np.repeat(u, S, axis=0)
    ivr = np.repeat(inv_var, S, axis=0)
    B = N * S
    chunk = min(chunk_size, _round_up(max(B, 1), 64))
    b_pad = _round_up(max(B, 1), chunk)
    pad = b_pad - B
    z0 = np.concatenate([z0, np.zeros((pad, 3))])
    ur = np.concatenate([ur, np.repeat(ur[:1], pad, axis=0)]) if pad else ur
    ivr = np.concatenate([ivr, np.ones(pad)])
    outs = []
    rng = range(0, b_pad, chunk)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc="gradient fit", unit="chunk")
    for s in rng:
        res = _optimise(jnp.asarray(z0[s:s + chunk], dtype=dtype), jnp.asarray(ur[s:s + chunk], dtype=dtype),
                        jnp.asarray(ivr[s:s + chunk], dtype=dtype), surface,
                        link=link, log_floor=log_floor, steps=steps, lr=lr)
        outs.append(res)
    theta, loss, scale, conv, loss0, scale0 = (np.concatenate([np.asarray(o[j]) for o in outs])[:B]
                                               for j in range(6))
    loss = np.where(np.isfinite(loss), loss, np.inf).reshape(N, S)
    best = np.argmin(loss, axis=1)
    rows = np.arange(N)
    params = theta.reshape(N, S, 3)[rows, best].astype(np.float64)
    dist = loss[rows, best].astype(np.float64)
    scale = scale.reshape(N, S)[rows, best].astype(np.float64)
    conv = conv.reshape(N, S)[rows, best]
    # keep the best grid cell (exactly) unless the surface gain is worth it
    d0 = loss0.reshape(N, S)[:, 0].astype(np.float64)
    stay = ~(dist < d0 * (1.0 - min_gain))
    params = np.where(stay[:, None], start_params[:, 0], params)
    dist = np.where(stay, d0, dist)
    scale = np.where(stay, scale0.reshape(N, S)[:, 0], scale)
    conv = np.where(stay, True, conv)
    return params, dist, unit * scale, conv


# --------------------------------------------------------------------------------------------------
# the public entry points


def fit_profiles(
    profiles: np.ndarray,
    grid: CRPGrid,
    *,
    profile_lags: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    method: str = "grid",
    link: str = "minmax",
    window: int = 5,
    surface: CRPSurface | None = None,
    key: jax.Array | None = None,
    n_starts: int = 4,
    steps: int = 200,
    learning_rate: float = 0.05,
    log_floor: float = 1e-6,
    refine: bool = True,
    chunk_size: int = 256,
    gradient_chunk_size: int = 4096,
    min_gain: float = 0.0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Fit (N, lags) profiles; the flat core of :func:`fit_scores` (see there for the arguments).

    Returns a dict of flat per-head arrays (leading axis N) with the :class:`HeadFits` field names.
    """
    del key  # the fits are deterministic; accepted for API symmetry with stochastic estimators
    window = _check_window(window)
    link = _check_link(link)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise ValueError(f"n_starts={n_starts!r} must be a positive integer")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.ndim != 2:
        raise ValueError(f"profiles must have shape (heads, lags), got {profiles.shape}")
    plags = _lags_for(profiles, profile_lags, DEFAULT_SCORE_LAGS, "profile")
    pi = _window_index(plags, window, "profile")
    ci = _window_index(np.asarray(grid.lags), window, "CRP grid")
    N = len(profiles)
    labels = np.asarray([f"head{i}" for i in range(N)] if labels is None else labels).astype(str)

    ok_all = np.all(np.isfinite(profiles), axis=-1)
    pw = profiles[:, pi]
    u, inv_var, unit, ok = _prepare_profiles(pw, link)
    ok &= ok_all
    bad = np.flatnonzero(~ok)
    if len(bad):
        names = ", ".join(labels[bad][:20]) + (" ..." if len(bad) > 20 else "")
        warnings.warn(
            f"{len(bad)} of {N} heads have non-finite or constant profiles and get NaN fits: {names}",
            RuntimeWarning, stacklevel=3,
        )
    n_axes = (len(grid.beta_enc), len(grid.beta_rec), len(grid.gamma_ft))
    cw = np.asarray(grid.crp, dtype=np.float64)[..., ci].reshape(-1, len(ci))
    v, vunit, valid = _prepare_grid(cw, link, log_floor)
    if not valid.any():
        raise ValueError("no grid point has a usable CRP on the fit window (all flat, zero or non-finite)")
    dtype = _default_dtype()
    k = max(16, n_starts)
    cd, cand = grid_distances(u, inv_var, v, valid, link=link, k=k, chunk_size=chunk_size, dtype=dtype,
                              progress=progress)
    if refine:
        best, dist, a, cand_sorted, cand_d = _refine(u, inv_var, v, cand, link)
    else:
        best, dist = cand[:, 0], cd[:, 0].astype(np.float64)
        a = None if link == "minmax" else _pair_distance(u, inv_var, v[best], link)[1]
        cand_sorted, cand_d = cand, cd
    if link == "minmax":
        scale = unit / vunit[best]
    else:
        scale = unit * a
    idx = np.stack(np.unravel_index(best, n_axes), axis=-1)
    pts = grid.points
    params_grid = pts[best]

    # the fitted curves, exactly as compared (for plots)
    _, prof_fit, crp_fit, _ = (align_to_profile(pw, cw[best], profile_lags=np.arange(-window, window + 1),
                                                crp_lags=np.arange(-window, window + 1), window=window,
                                                link=link, log_floor=log_floor)
                               if N else (None, np.zeros((0, len(pi))), np.zeros((0, len(pi))), None))
    out: dict[str, Any] = dict(
        labels=labels, params_grid=params_grid.astype(np.float64), index_grid=idx.astype(np.int64),
        distance_grid=np.asarray(dist, dtype=np.float64), scale_grid=np.asarray(scale, dtype=np.float64),
        profile_fit=prof_fit, crp_fit_grid=crp_fit,
    )
    if method in ("gradient", "both"):
        if surface is None:
            surface = build_surface(grid, lags=np.arange(-window, window + 1), dtype=dtype)
        else:
            s_lags = np.asarray(surface.lags)
            if not np.array_equal(s_lags, np.arange(-window, window + 1)):
                raise ValueError(
                    f"surface has lags {s_lags.tolist()} but the fit window is {-window}..{window}; "
                    "build it with build_surface(grid, lags=np.arange(-window, window + 1))"
                )
        # starts: the best n_starts distinct grid cells (best first)
        order = np.argsort(cand_d, axis=1, kind="stable")
        starts_idx = np.take_along_axis(cand_sorted, order, axis=1)[:, :n_starts]
        start_params = pts[starts_idx]
        params, gdist, gscale, conv = _gradient_fit(
            u, inv_var, unit, start_params, surface, link=link, log_floor=log_floor, steps=steps,
            lr=learning_rate, chunk_size=gradient_chunk_size, dtype=dtype, progress=progress, min_gain=min_gain,
        )
        out.update(params=params, distance=gdist, scale=gscale, converged=conv.astype(bool))
    # bad heads -> NaN
    for key_, fill in [("params_grid", np.nan), ("distance_grid", np.nan), ("scale_grid", np.nan),
                       ("index_grid", -1), ("profile_fit", np.nan), ("crp_fit_grid", np.nan),
                       ("params", np.nan), ("distance", np.nan), ("scale", np.nan), ("converged", False)]:
        if key_ in out and len(bad):
            out[key_] = out[key_].copy()
            out[key_][bad] = fill
    out["_surface"] = surface
    return out


def fit_scores(
    scores: Scores | Sequence[Scores],
    grid: CRPGrid,
    *,
    method: str = "grid",
    link: str = "minmax",
    window: int = 5,
    surface: CRPSurface | None = None,
    key: jax.Array | None = None,
    **kwargs: Any,
) -> HeadFits | list[HeadFits]:
    """Fit CMR to every head of one or several scores files, all heads in one vectorised computation.

    Args:
      scores: a :class:`cmrjax.io.Scores`, or a sequence of them (all checkpoints of a model: their heads
        are fitted together in one batch and returned per file).
      grid: the CRP grid (``cmrjax.io.load_crp_grid``; the paper's ``cmr_crp_avg_20_11.npy`` reproduces
        the paper's fits).
      method: ``"grid"`` (best grid point), ``"gradient"`` or ``"both"`` (grid fit, then continuous
        parameters by optax from the best grid cells; the grid fit is always reported too).
      link: ``"minmax"`` (the paper's distance) or ``"softmax"`` (scores ~ a log CRP + b).
      window: lags -window..+window are compared (paper: 5).
      surface: differentiable CRP for gradient fits (:func:`cmrjax.surface.build_surface` of a dense grid
        simulated with ``corners="simulate"``); default: the interpolant of ``grid`` itself.
      key: unused (the fits are deterministic); accepted for API symmetry.
      **kwargs: ``n_starts`` (4), ``steps`` (200), ``learning_rate`` (0.05, Adam on the logit scale),
        ``log_floor`` (1e-6), ``refine`` (True: float64 re-ranking of the best 16 candidates per head),
        ``chunk_size`` (256 heads per grid chunk), ``gradient_chunk_size`` (4096 head-starts per chunk),
        ``min_gain`` (0.0: a head keeps its best grid cell, exactly, unless the gradient fit lowers the
        surface distance by more than this fraction; set it near the surface's relative error so that
        moves smaller than the surface bias are not taken), ``progress`` (False).

    Returns:
      A :class:`HeadFits` for one file, a list of them for a sequence.

    Raises:
      ValueError: bad method/link/window, or lags that do not cover the window.

    Warns:
      RuntimeWarning: naming the heads with NaN/inf (or constant) profiles; they get NaN results.
    """
    single = isinstance(scores, Scores)
    seq = [scores] if single else list(scores)
    if not seq:
        raise ValueError("scores is an empty sequence; pass at least one Scores")
    for s in seq:
        if not isinstance(s, Scores):
            raise ValueError(f"scores must be cmrjax.io.Scores objects, got {type(s).__name__}")
    window = _check_window(window)
    rows, labels, plags = [], [], None
    for s in seq:
        lags = np.asarray(s.lags)
        _window_index(lags, window, f"scores {s.name or ''}".strip())
        if plags is None:
            plags = lags
        elif not np.array_equal(plags, lags):
            raise ValueError(
                f"scores {s.name!r} has lags {lags.tolist()} but the first file has {plags.tolist()}; "
                "fit files with different lag axes in separate calls"
            )
        rows.append(s.crp_scores.reshape(-1, s.crp_scores.shape[-1]))
        prefix = f"{s.name}:" if len(seq) > 1 and s.name else ""
        labels.extend(prefix + str(x) for x in s.labels.reshape(-1))
    flat = fit_profiles(np.concatenate(rows), grid, profile_lags=plags, labels=labels, method=method, link=link,
                        window=window, surface=surface, key=key, **kwargs)
    surf = flat.pop("_surface")
    results, start = [], 0
    for s in seq:
        L, H = s.crp_scores.shape[:2]
        sl = slice(start, start + L * H)
        start += L * H

        def take(name):
            a = flat.get(name)
            return None if a is None else a[sl].reshape((L, H) + a.shape[1:])

        meta = {
            "kind": "fits", "link": link, "method": method, "window": window,
            "source": s.name, "scores_metadata": s.metadata,
            "grid": {"metadata": grid.metadata, "shape": list(grid.crp.shape)},
            "dtype": "float64" if jax.config.jax_enable_x64 else "float32",
            "distance": "mean squared difference / population variance of the shifted profile",
            "refine": bool(kwargs.get("refine", True)),
        }
        if method != "grid":
            meta["gradient"] = {
                "optimizer": "adam", "steps": int(kwargs.get("steps", 200)),
                "learning_rate": float(kwargs.get("learning_rate", 0.05)),
                "n_starts": int(kwargs.get("n_starts", 4)), "min_gain": float(kwargs.get("min_gain", 0.0)),
                "surface": "tricubic Catmull-Rom interpolant" + ("" if surface is not None else " of the fit grid"),
                "surface_lower": np.asarray(surf.lower).tolist(), "surface_upper": np.asarray(surf.upper).tolist(),
                "distance_source": "surface (interpolated CRP), not re-simulated",
            }
        results.append(HeadFits(
            labels=np.asarray(s.labels).astype(str), params_grid=take("params_grid"), index_grid=take("index_grid"),
            distance_grid=take("distance_grid"), scale_grid=take("scale_grid"),
            lags_fit=np.arange(-window, window + 1), profile_fit=take("profile_fit"),
            crp_fit_grid=take("crp_fit_grid"), params=take("params"), distance=take("distance"),
            scale=take("scale"), converged=take("converged"), metadata=meta,
        ))
    return results[0] if single else results


# --------------------------------------------------------------------------------------------------
# evaluation by simulation


def resimulate_distance(key: jax.Array, profiles: np.ndarray, params: np.ndarray, *, window: int = 5,
                        link: str = "minmax", profile_lags: np.ndarray | None = None, **sim_kwargs: Any):
    """Distances of (N, lags) profiles to CRPs simulated afresh at (N, 3) parameters.

    Uses :func:`cmrjax.simulate.simulate_crp` (``sim_kwargs`` are passed on, e.g. ``trials``,
    ``estimator="rao_blackwell"``, ``corners="simulate"``). Calling it twice with the same ``key`` on two
    parameter sets of the same length gives common random numbers (point i uses the same stream), which
    makes paired comparisons precise. Rows with NaN parameters give NaN.

    Returns:
      (distances (N,), crp (N, lags), crp_sem (N, lags)).
    """
    from cmrjax.simulate import simulate_crp

    params = np.asarray(params, dtype=np.float64)
    ok = np.all(np.isfinite(params), axis=-1)
    pts = np.where(ok[:, None], params, 0.5)
    res = simulate_crp(key, pts, **sim_kwargs)
    d = cmr_distance(profiles, res.crp, profile_lags=profile_lags, crp_lags=np.asarray(res.lags),
                     window=window, link=link)
    return np.where(ok, d, np.nan), res.crp, res.crp_sem
