"""A CRP that is differentiable in (beta_enc, beta_rec, gamma_ft): tricubic interpolation of a CRP grid.

The simulated lag-CRP is a Monte Carlo estimate, so it has no usable derivative of its own. Gradient fits
(:func:`cmrjax.fit.fit_scores` with ``method="gradient"``) instead use a smooth interpolant of a dense CRP
grid: for each lag separately, a tensor-product **Catmull-Rom** cubic in the three parameters,

.. math::

    \\hat c(\\theta) = \\sum_{a,b,c=0}^{3} w_a(t_e)\\, w_b(t_r)\\, w_c(t_g)\\, C[i_e-1+a,\\, i_r-1+b,\\, i_g-1+c]

with :math:`t` the position inside the grid cell and the Catmull-Rom weights
:math:`w(t) = \\tfrac12(-t^3+2t^2-t,\\; 3t^3-5t^2+2,\\; -3t^3+4t^2+t,\\; t^3-t^2)`. The interpolant passes
through every grid node, is C1 (continuous first derivatives, so optax steps are well behaved) and is
exact for quadratics. Ghost nodes outside the grid are linear extrapolations (:math:`2C_0 - C_1`), so the
interpolant is also exact for linear functions up to the edge.

Bias: a fit on the surface optimises :math:`\\hat c`, not the simulator's CRP. The difference is
(1) interpolation error, of order :math:`h^3 \\max |\\partial^3 c|` per axis (measure it by leaving out
nodes: :func:`leave_one_out_error`), plus (2) the Monte Carlo error of the grid values themselves (the
grid's ``crp_sem`` bounds the noise of each node; the interpolant's noise is a weighted sum of node noise
with weights summing to 1). Build the surface from a grid simulated with ``estimator="rao_blackwell"`` and
``corners="simulate"`` (the simulation's own, continuous CRP): the paper grid's closed-form corner entries
make the CRP jump at beta_rec in {0, 1} with gamma_ft = 0, and an interpolant through them is wrong near
those corners. Re-evaluate fitted parameters by simulation to report unbiased distances.

Only the lags inside the fitting window are kept, which makes each evaluation cheaper.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmrjax.io import CRPGrid

__all__ = ["CRPSurface", "build_surface", "surface_crp", "catmull_rom_weights", "leave_one_out_error"]


class CRPSurface(NamedTuple):
    """A differentiable CRP over a uniform product grid (a pytree; pass it through jit/vmap).

    Attributes:
      values: (n_e + 2, n_r + 2, n_g + 2, lags) node values with one ghost node on each side.
      lower: (3,) the first node of each axis (beta_enc, beta_rec, gamma_ft).
      step: (3,) the node spacing of each axis.
      upper: (3,) the last node of each axis (the surface's domain is [lower, upper]).
      lags: (lags,) int, the lags of the last axis.
    """

    values: jax.Array
    lower: jax.Array
    step: jax.Array
    upper: jax.Array
    lags: jax.Array


def _uniform_step(axis: np.ndarray, name: str) -> float:
    axis = np.asarray(axis, dtype=np.float64)
    if axis.ndim != 1 or len(axis) < 2:
        raise ValueError(f"grid axis {name} needs at least 2 values to interpolate, got {axis.tolist()}")
    d = np.diff(axis)
    if not np.allclose(d, d[0], rtol=1e-6, atol=1e-9) or d[0] <= 0:
        raise ValueError(
            f"grid axis {name} must be increasing and uniformly spaced for the interpolating surface, "
            f"got {axis.tolist()}; simulate the surface grid on a uniform grid"
        )
    return float(d[0])


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
      grid: a product grid with uniformly spaced axes (for example from ``cmrjax simulate`` with
        ``estimator="rao_blackwell"``, ``corners="simulate"``; the paper grid works too but jumps at its
        closed-form corners, see the module docstring).
      lags: the lags to keep (default: all of the grid's lags). Fits pass their window (-5..+5).
      dtype: float dtype of the values (default: float64 when jax x64 is enabled, else float32).

    Raises:
      ValueError: non-uniform axes, or ``lags`` not in the grid.
    """
    steps = [_uniform_step(ax, n) for ax, n in
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
        step=jnp.asarray(np.array(steps), dtype=dtype),
        upper=jnp.asarray(upper, dtype=dtype),
        lags=jnp.asarray(glags),
    )


def catmull_rom_weights(t: jax.Array) -> jax.Array:
    """Weights of the 4 nodes i-1, i, i+1, i+2 at fraction ``t`` in [0, 1] of cell [i, i+1]. Shape (4,)."""
    t2 = t * t
    t3 = t2 * t
    return 0.5 * jnp.stack([-t3 + 2 * t2 - t, 3 * t3 - 5 * t2 + 2, -3 * t3 + 4 * t2 + t, t3 - t2])


def surface_crp(surface: CRPSurface, params: jax.Array) -> jax.Array:
    """The interpolated CRP at one parameter point, differentiable in ``params``.

    Args:
      surface: from :func:`build_surface`.
      params: (3,) (beta_enc, beta_rec, gamma_ft); values outside the grid are clamped to its range.

    Returns:
      (lags,) the interpolated CRP (not renormalised; may dip slightly below 0 between nodes where the
      CRP is near 0). vmap for many points.
    """
    n_nodes = jnp.asarray(surface.values.shape[:3]) - 2
    x = jnp.clip(params, surface.lower, surface.upper)
    pos = (x - surface.lower) / surface.step
    cell = jnp.clip(jnp.floor(pos), 0, n_nodes - 2)
    t = pos - cell
    cell = cell.astype(jnp.int32)
    block = jax.lax.dynamic_slice(
        surface.values, (cell[0], cell[1], cell[2], jnp.zeros((), jnp.int32)), (4, 4, 4, surface.values.shape[3])
    )
    we, wr, wg = catmull_rom_weights(t[0]), catmull_rom_weights(t[1]), catmull_rom_weights(t[2])
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
