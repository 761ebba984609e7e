r"""A CRP that is differentiable in (beta_enc, beta_rec, gamma_ft): tricubic interpolation of a CRP grid.

The simulated lag-CRP is a Monte Carlo estimate, so it has no usable derivative of its own. Gradient fits
(:func:`cmrjax.fit.fit_scores` with ``method="gradient"``) instead use a smooth interpolant of a dense CRP
grid: for each lag separately, a tensor product of piecewise cubics in the three parameters,

.. math::

    \hat c(\theta) = \sum_{a,b,c=0}^{3} w_a(\theta_e)\, w_b(\theta_r)\, w_c(\theta_g)\,
    C[i_e-1+a,\, i_r-1+b,\, i_g-1+c].

Along each axis the cubic on cell :math:`[x_i, x_{i+1}]` is the cubic Hermite interpolant whose slope at a
node is that of the parabola through the node and its two neighbours,
:math:`m_i = (h_i \delta_{i-1} + h_{i-1} \delta_i) / (h_{i-1} + h_i)` (:math:`h` the node spacings,
:math:`\delta` the divided differences). So axes may be **non-uniform** (nodes packed where the CRP bends
fast, as it does in beta_rec just above 0); on a uniform axis the weights are exactly the **Catmull-Rom**
weights :math:`w(t) = \tfrac12(-t^3+2t^2-t,\; 3t^3-5t^2+2,\; -3t^3+4t^2+t,\; t^3-t^2)`. The interpolant
passes through every grid node, is C1 (continuous first derivatives, so optax steps are well behaved) and is
exact for quadratics away from the edge cells. Ghost nodes outside the grid are linear extrapolations
(:math:`2C_0 - C_1`, one edge spacing out), so the interpolant is also exact for linear functions up to the
edge.

Bias: a fit on the surface optimises :math:`\hat c`, not the simulator's CRP. The difference is
(1) interpolation error, of order :math:`h^3 \max |\partial^3 c|` per axis (measure it by leaving out
nodes: :func:`leave_one_out_error`), plus (2) the Monte Carlo error of the grid values themselves (the
grid's ``crp_sem`` bounds the noise of each node; the interpolant's noise is a weighted sum of node noise
with weights summing to 1). Build the surface from a grid simulated with ``estimator="rao_blackwell"`` and
``corners="simulate"`` (the simulation's own, continuous CRP): the paper grid's closed-form corner entries
make the CRP jump at beta_rec in {0, 1} with gamma_ft = 0, and an interpolant through them is wrong near
those corners. On the paper's beta_rec spacing of 0.05 the interpolation error between beta_rec = 0 and
0.05 reaches ~0.005 (measured at beta_enc 0.05, gamma_ft 1), ten times the Monte Carlo error at the paper's
precision: add beta_rec nodes there (the README's performance section measures it). Re-evaluate fitted
parameters by simulation to report unbiased distances.

:func:`fit_surface_axes` and :func:`fit_surface_match_trials` describe a grid for fits (``cmrjax simulate
--grid fit-surface``): beta_rec nodes every 0.0125 below 0.1, and at ``beta_enc`` <= 0.15, where the CRP is so
flat that a head's distance hinges on CRP differences of 1e-4, 64 times the paper's precision there (on
GPT-2 small the gradient fit, re-simulated, is then at least as close as the best grid cell on 136-138/144
heads, 139-141/144 with ``min_gain=0.005``, against 126/144 on the paper's grid at the paper's precision;
README, performance section).

Only the lags inside the fitting window are kept, which makes each evaluation cheaper.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmrjax.io import CRPGrid, paper_axes

#: ``--grid fit-surface``: at ``beta_enc`` up to this value ...
FIT_SURFACE_LOW_BETA_ENC = 0.15
#: ... the CRP is simulated to the precision of this many times the ``match_trials`` sampled trials ...
FIT_SURFACE_PRECISION = 64
#: ... with at most this many trials per start (the default cap of 4,096 would bind there).
FIT_SURFACE_MAX_TRIALS = 32768


def fit_surface_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid axes for a gradient-fit surface: the paper's, with beta_rec refined to steps of 0.0125 below 0.1
    (the CRP bends fast just above beta_rec = 0): 20 x 27 x 11."""
    beta_enc, beta_rec, gamma_ft = paper_axes()
    return beta_enc, np.union1d(beta_rec, np.arange(8) / 80.0), gamma_ft


def fit_surface_match_trials(points: np.ndarray, match_trials: int = 1000) -> np.ndarray:
    """Per-point precision targets of a gradient-fit surface (``match_trials`` of
    :func:`cmrjax.simulate_crp_adaptive`): :data:`FIT_SURFACE_PRECISION` times ``match_trials`` where
    ``beta_enc <= FIT_SURFACE_LOW_BETA_ENC``, ``match_trials`` elsewhere. (N,) int64."""
    low = np.asarray(points)[:, 0] <= FIT_SURFACE_LOW_BETA_ENC + 1e-9
    return np.where(low, FIT_SURFACE_PRECISION * match_trials, match_trials).astype(np.int64)

__all__ = ["CRPSurface", "build_surface", "surface_crp", "catmull_rom_weights", "hermite_weights",
           "leave_one_out_error", "fit_surface_axes", "fit_surface_match_trials"]


class CRPSurface(NamedTuple):
    """A differentiable CRP over a product grid (a pytree; pass it through jit/vmap).

    Attributes:
      values: (n_e + 2, n_r + 2, n_g + 2, lags) node values with one ghost node on each side.
      lower: (3,) the first node of each axis (beta_enc, beta_rec, gamma_ft).
      upper: (3,) the last node of each axis (the surface's domain is [lower, upper]).
      lags: (lags,) int, the lags of the last axis.
      nodes: the node coordinates of each axis, with the ghost nodes: three arrays of n_e + 2, n_r + 2 and
        n_g + 2 increasing values.
    """

    values: jax.Array
    lower: jax.Array
    upper: jax.Array
    lags: jax.Array
    nodes: tuple[jax.Array, jax.Array, jax.Array]


def _padded_nodes(axis: np.ndarray, name: str) -> np.ndarray:
    """The axis' nodes with one ghost node on each side, one edge spacing out."""
    axis = np.asarray(axis, dtype=np.float64)
    if axis.ndim != 1 or len(axis) < 2:
        raise ValueError(f"grid axis {name} needs at least 2 values to interpolate, got {axis.tolist()}")
    d = np.diff(axis)
    if not np.all(d > 0):
        raise ValueError(f"grid axis {name} must be strictly increasing for the interpolating surface, "
                         f"got {axis.tolist()}")
    return np.concatenate([[axis[0] - d[0]], axis, [axis[-1] + d[-1]]])


def _pad_linear(a: np.ndarray, axis: int) -> np.ndarray:
    """Add one ghost node at each end of ``axis``: 2 * edge - next (linear extrapolation)."""
    first = np.take(a, [0], axis=axis)
    second = np.take(a, [1], axis=axis)
    last = np.take(a, [-1], axis=axis)
    before_last = np.take(a, [-2], axis=axis)
    return np.concatenate([2 * first - second, a, 2 * last - before_last], axis=axis)


def build_surface(grid: CRPGrid, *, lags: np.ndarray | None = None, dtype=None) -> CRPSurface:
    """Build the interpolating surface of a CRP grid.

    Args:
      grid: a product grid with strictly increasing axes (for example from ``cmrjax simulate`` with
        ``estimator="rao_blackwell"``, ``corners="simulate"``; the paper grid works too but jumps at its
        closed-form corners, see the module docstring).
      lags: the lags to keep (default: all of the grid's lags). Fits pass their window (-5..+5).
      dtype: float dtype of the values (default: float64 when jax x64 is enabled, else float32).

    Raises:
      ValueError: axes that are not strictly increasing, or ``lags`` not in the grid.
    """
    nodes = [_padded_nodes(ax, n) for ax, n in
             [(grid.beta_enc, "beta_enc"), (grid.beta_rec, "beta_rec"), (grid.gamma_ft, "gamma_ft")]]
    glags = np.asarray(grid.lags)
    crp = np.asarray(grid.crp, dtype=np.float64)
    if lags is not None:
        lags = np.asarray(lags)
        missing = sorted(set(lags.tolist()) - set(glags.tolist()))
        if missing:
            raise ValueError(f"lags {missing} are not in the CRP grid (grid lags {glags.min()}..{glags.max()})")
        crp = crp[..., np.searchsorted(glags, lags)]
        glags = lags
    if not np.all(np.isfinite(crp)):
        bad = np.argwhere(~np.isfinite(crp).all(-1))[:5].tolist()
        raise ValueError(f"CRP grid has non-finite values at grid indices {bad}; resimulate those points")
    v = crp
    for ax in range(3):
        v = _pad_linear(v, ax)
    if dtype is None:
        dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    lower = np.array([grid.beta_enc[0], grid.beta_rec[0], grid.gamma_ft[0]], dtype=np.float64)
    upper = np.array([grid.beta_enc[-1], grid.beta_rec[-1], grid.gamma_ft[-1]], dtype=np.float64)
    return CRPSurface(
        values=jnp.asarray(v, dtype=dtype),
        lower=jnp.asarray(lower, dtype=dtype),
        upper=jnp.asarray(upper, dtype=dtype),
        lags=jnp.asarray(glags),
        nodes=tuple(jnp.asarray(n, dtype=dtype) for n in nodes),
    )


def catmull_rom_weights(t: jax.Array) -> jax.Array:
    """Weights of the 4 nodes i-1, i, i+1, i+2 at fraction ``t`` in [0, 1] of cell [i, i+1]. Shape (4,)."""
    t2 = t * t
    t3 = t2 * t
    return 0.5 * jnp.stack([-t3 + 2 * t2 - t, 3 * t3 - 5 * t2 + 2, -3 * t3 + 4 * t2 + t, t3 - t2])


def hermite_weights(t: jax.Array, h: jax.Array) -> jax.Array:
    """Weights of the 4 nodes i-1, i, i+1, i+2 at fraction ``t`` of cell [i, i+1], given the spacings
    ``h = (h_{i-1}, h_i, h_{i+1})``: the cubic Hermite interpolant with three-point (parabola) slopes. Shape (4,).
    Equal spacings give :func:`catmull_rom_weights`."""
    h0, h1, h2 = h[0], h[1], h[2]
    t2 = t * t
    t3 = t2 * t
    h00, h10, h01, h11 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, -2 * t3 + 3 * t2, t3 - t2
    a0, b0 = h1 / (h0 * (h0 + h1)), h0 / (h1 * (h0 + h1))  # slope at node i: a0 (y_i - y_{i-1}) + b0 (y_{i+1} - y_i)
    a1, b1 = h2 / (h1 * (h1 + h2)), h1 / (h2 * (h1 + h2))  # slope at node i+1
    return jnp.stack([
        -h1 * h10 * a0,
        h00 + h1 * h10 * (a0 - b0) - h1 * h11 * a1,
        h01 + h1 * h10 * b0 + h1 * h11 * (a1 - b1),
        h1 * h11 * b1,
    ])


def _axis_weights(nodes: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cell index (into the real nodes) and the 4 weights at ``x`` on one padded axis."""
    n_real = nodes.shape[0] - 2
    cell = jnp.clip(jnp.searchsorted(nodes[1:-1], x, side="right") - 1, 0, n_real - 2).astype(jnp.int32)
    p = jax.lax.dynamic_slice(nodes, (cell,), (4,))  # x_{i-1}, x_i, x_{i+1}, x_{i+2}
    h = jnp.diff(p)
    return cell, hermite_weights((x - p[1]) / h[1], h)


def surface_crp(surface: CRPSurface, params: jax.Array) -> jax.Array:
    """The interpolated CRP at one parameter point, differentiable in ``params``.

    Args:
      surface: from :func:`build_surface`.
      params: (3,) (beta_enc, beta_rec, gamma_ft); values outside the grid are clamped to its range.

    Returns:
      (lags,) the interpolated CRP (not renormalised; may dip slightly below 0 between nodes where the
      CRP is near 0). vmap for many points.
    """
    x = jnp.clip(params, surface.lower, surface.upper)
    (ce, we), (cr, wr), (cg, wg) = (_axis_weights(surface.nodes[a], x[a]) for a in range(3))
    block = jax.lax.dynamic_slice(surface.values, (ce, cr, cg, jnp.zeros((), jnp.int32)),
                                  (4, 4, 4, surface.values.shape[3]))
    return jnp.einsum("a,b,c,abck->k", we, wr, wg, block)


def leave_one_out_error(grid: CRPGrid, *, stride: int = 2) -> float:
    """Interpolation error estimate: build the surface on every ``stride``-th node, evaluate at the rest.

    Returns the maximum absolute CRP error (over held-out interior nodes and lags) of the coarse surface;
    the full surface's interpolation error is smaller (about ``stride**3`` times for smooth CRPs).
    """
    sub = CRPGrid(
        crp=grid.crp[::stride, ::stride, ::stride], beta_enc=grid.beta_enc[::stride],
        beta_rec=grid.beta_rec[::stride], gamma_ft=grid.gamma_ft[::stride], lags=grid.lags,
    )
    surf = build_surface(sub)
    pts = grid.points
    inside = np.all((pts >= np.asarray(surf.lower)[None, :]) & (pts <= np.asarray(surf.upper)[None, :]), axis=1)
    pred = np.asarray(jax.jit(jax.vmap(surface_crp, in_axes=(None, 0)))(surf, jnp.asarray(pts[inside])))
    true = grid.crp.reshape(-1, grid.crp.shape[-1])[inside]
    return float(np.max(np.abs(pred - true)))
