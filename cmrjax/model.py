r"""The CMR variant of the paper, in its notation: encoding matrix, context update, recall distribution.

This module holds the equations and nothing else (no randomness, no grids, no files). Notation follows
Ji-An, Zhou, Benna & Mattar (NeurIPS 2024), Sec. 3 and their released code:

* ``n`` list items are presented in order as one-hot vectors :math:`f_i = e_i`; state ``n`` is an extra
  *absorbing* state that ends recall when it is retrieved. All vectors have ``n + 1`` entries.
* Shift matrix :math:`T` with :math:`T_{i,i+1} = 1`. The encoding (item-to-context and context-to-item)
  matrix is

  .. math:: M = (I - (1-\beta_{enc}) T)^{-1} T, \qquad M_{ij} = (1-\beta_{enc})^{j-i-1} \;[j > i].

* Recall from context :math:`t`: activations :math:`a = M^\top t`, retrieval probabilities by the ratio
  rule :math:`p = a / \sum_k a_k` over the ``n + 1`` states (no softmax).
* After item :math:`j` is recalled, the retrieved context input and the context update are

  .. math:: t^{IN} = \frac{(1-\gamma_{FT}) f_j + \gamma_{FT} M f_j}{\lVert\cdot\rVert}, \qquad
            t \leftarrow \frac{(1-\beta_{rec})\, t + \beta_{rec}\, t^{IN}}{\lVert\cdot\rVert}.

Every quantity a recall step needs has a closed form in :math:`r = 1 - \beta_{enc}`, so one step costs
O(n) instead of a dense O(n^2) matrix-vector product:

* row :math:`j` of :math:`M`, :math:`(M^\top f_j)_k = r^{k-j-1} [k>j]`;
* column :math:`j`, :math:`(M f_j)_i = r^{j-i-1} [i<j]`, with :math:`\lVert M f_j\rVert^2 = S_j`;
* :math:`(M^\top M f_j)_k = r^{|k-j|} S_{\min(k,j)}`, where :math:`S_m = \sum_{l<m} r^{2l}`;
* :math:`t \cdot M f_j = a_j`.

So the step updates :math:`t` and :math:`a = M^\top t` together (:func:`recall_update`). The simulator carries
the cumulative activations :math:`A_k = \sum_{l \le k} a_l` instead (:func:`recall_update_cumulative`): an
inverse-CDF draw reads them directly, and the cumulative input :math:`\sum_{l \le k} (M^\top t^{IN})_l` has a
closed form in the geometric sums :math:`G_e = \sum_{l<e} r^l`, so no step computes a cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

#: A recalled item: an int array over the batch axes, or a Python int for a single trial.
Item = Int[Array, "*batch"] | int
#: Vectors over the states 0..n (n items + the stop state) on the leading axis, batch axes trailing.
States = Float[Array, "states *batch"]


class CMRParams(NamedTuple):
    """CMR parameters: a pytree whose leaves may carry any batch shape (grid points, heads, ...).

    Attributes:
      beta_enc: context drift rate during study, in [0, 1] (the paper's :math:`\\beta_{enc}`).
      beta_rec: context drift rate after each recall, in [0, 1] (:math:`\\beta_{rec}`).
      gamma_ft: share of the pre-experimental context :math:`M f` in the retrieved context, in [0, 1]
        (:math:`\\gamma_{FT}`).
    """

    beta_enc: Array
    beta_rec: Array
    gamma_ft: Array

    @classmethod
    def from_points(cls, points) -> "CMRParams":
        """Parameters from an (..., 3) array of (beta_enc, beta_rec, gamma_ft) rows."""
        points = jnp.asarray(points)
        return cls(points[..., 0], points[..., 1], points[..., 2])

    def to_points(self) -> Array:
        """The inverse of :meth:`from_points`: an (..., 3) array."""
        return jnp.stack([jnp.asarray(self.beta_enc), jnp.asarray(self.beta_rec), jnp.asarray(self.gamma_ft)], -1)


@dataclass(frozen=True)
class SimConfig:
    """Static settings of a simulation (hashable: each distinct config compiles once).

    Attributes:
      list_length: number of studied items ``n`` (the absorbing state is item ``n``).
      n_starts: recall starts from the items ``s0 = 0 .. n_starts-1`` (the paper: 20).
      max_recalls: maximum retrievals per trial (the paper's saved grid: 50).
      max_lag: lag window ``-max_lag .. +max_lag`` of the CRP (the paper: 8).
      dtype: ``"float32"`` (default) or ``"float64"`` (needs ``jax.config.update("jax_enable_x64", True)``).
    """

    list_length: int = 100
    n_starts: int = 20
    max_recalls: int = 50
    max_lag: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("list_length", "n_starts", "max_recalls", "max_lag"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if self.n_starts > self.list_length:
            raise ValueError(
                f"n_starts={self.n_starts} exceeds list_length={self.list_length}; starts are items 0..n_starts-1"
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'float64'")

    @property
    def n_states(self) -> int:
        """Items plus the absorbing state."""
        return self.list_length + 1

    @property
    def lags(self) -> np.ndarray:
        return np.arange(-self.max_lag, self.max_lag + 1)

    @property
    def jnp_dtype(self):
        if self.dtype == "float64" and not jax.config.read("jax_enable_x64"):
            raise ValueError(
                "dtype='float64' needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first "
                "(the CLI does this for --float64)"
            )
        return jnp.float64 if self.dtype == "float64" else jnp.float32


def validate_params(points: np.ndarray, name: str = "points") -> np.ndarray:
    """Check an (N, 3) array of (beta_enc, beta_rec, gamma_ft): finite and inside [0, 1].

    Raises:
      ValueError: naming the first offending point, parameter and value.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3) of (beta_enc, beta_rec, gamma_ft), got {points.shape}")
    if points.shape[0] == 0:
        raise ValueError(f"{name} is empty; give at least one parameter point")
    bad = ~np.isfinite(points) | (points < 0) | (points > 1)
    if bad.any():
        i, k = map(int, np.argwhere(bad)[0])
        pname = ("beta_enc", "beta_rec", "gamma_ft")[k]
        raise ValueError(f"{pname}={float(points[i, k])!r} (point {i}) is outside [0, 1]; pass values in [0, 1]")
    return points


# ------------------------------------------------------------------------------------------------
# M in closed form


def encoding_matrix(beta_enc, list_length: int, dtype=jnp.float32) -> Float[Array, "states states"]:
    """Dense :math:`M_{ij} = (1-\\beta_{enc})^{j-i-1} [j>i]`, shape (n+1, n+1). For tests and small lists.

    Examples:
      >>> M = encoding_matrix(0.5, 3)
      >>> M[0].tolist()
      [0.0, 1.0, 0.5, 0.25]
    """
    n1 = list_length + 1
    i = jnp.arange(n1)[:, None]
    j = jnp.arange(n1)[None, :]
    r = jnp.asarray(1.0 - jnp.asarray(beta_enc, dtype), dtype)
    return jnp.where(j > i, r ** jnp.maximum(j - i - 1, 0).astype(dtype), jnp.zeros((), dtype))


class PowerTables(NamedTuple):
    """Per-parameter tables from which rows and columns of M are read in O(n).

    Attributes:
      r: () :math:`r = 1 - \\beta_{enc}`.
      pw: (n+1,) ``pw[e] = r**e`` (with ``0**0 = 1``).
      cum2: (n+2,) ``cum2[m] = S_m = sum_{l<m} r**(2l)``.
      geo: (n+2,) ``geo[e] = G_e = sum_{l<e} r**l``.
    """

    r: Array
    pw: Array
    cum2: Array
    geo: Array


def power_tables(beta_enc, list_length: int, dtype=jnp.float32) -> PowerTables:
    """The tables of :class:`PowerTables` for one parameter point."""
    n = list_length
    r = (1.0 - jnp.asarray(beta_enc, dtype)).astype(dtype)
    pw = r ** jnp.arange(n + 1, dtype=dtype)  # r**0 .. r**n
    cum2 = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(pw * pw)])
    geo = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(pw)])
    return PowerTables(r=r, pw=pw, cum2=cum2, geo=geo)


def _states(n: int, batch_ndim: int) -> Array:
    """State indices 0..n on the leading axis, shaped to broadcast against ``batch_ndim`` trailing axes."""
    return jnp.arange(n + 1).reshape((n + 1,) + (1,) * batch_ndim)


def _offset_powers(tables: PowerTables, j, n: int) -> tuple[Array, Array]:
    """``x = k - j`` for states k = 0..n (leading axis) and ``q = r**(|x| - 1)`` (1 where |x| <= 1).

    ``q`` is read from the power table: a gather ran 2x faster in the simulator than one exp per entry.
    """
    j = jnp.asarray(j)
    x = _states(n, j.ndim) - j[None]
    ax = jnp.abs(x)
    q = tables.pw[jnp.maximum(ax - 1, 0)]
    return x, q


def _cum2_min(tables: PowerTables, j, x, n: int) -> Array:
    """``S_min(k, j)`` for states k on the leading axis."""
    j = jnp.asarray(j)
    return jnp.where(x < 0, tables.cum2[: n + 1].reshape((n + 1,) + (1,) * j.ndim), tables.cum2[j][None])


def m_row(tables: PowerTables, j, n: int) -> Array:
    """Row ``j`` of M (= :math:`M^\\top f_j`): ``r**(k-j-1)`` for ``k > j``; states on the leading axis."""
    x, q = _offset_powers(tables, j, n)
    return jnp.where(x > 0, q, 0)


def m_col(tables: PowerTables, j, n: int) -> Array:
    """Column ``j`` of M (= :math:`M f_j`): ``r**(j-i-1)`` for ``i < j``; states on the leading axis."""
    x, q = _offset_powers(tables, j, n)
    return jnp.where(x < 0, q, 0)


def mtm_col(tables: PowerTables, j, n: int) -> Array:
    """Column ``j`` of :math:`M^\\top M`: ``r**|k-j| * S_min(k,j)``; states on the leading axis."""
    x, q = _offset_powers(tables, j, n)
    return jnp.where(x == 0, 1, tables.r * q) * _cum2_min(tables, j, x, n)


def m_row_col_mtm(tables: PowerTables, j, n: int) -> tuple[Array, Array, Array]:
    """Row ``j`` of M, column ``j`` of M and column ``j`` of :math:`M^\\top M`, sharing one exp per entry.

    ``j`` may carry batch axes; the results have shape (n+1, *j.shape).
    """
    x, q = _offset_powers(tables, j, n)
    sym = jnp.where(x == 0, 1, tables.r * q)
    return jnp.where(x > 0, q, 0), jnp.where(x < 0, q, 0), sym * _cum2_min(tables, j, x, n)


# ------------------------------------------------------------------------------------------------
# recall
#
# Convention: vectors over states (context t, activations a, probabilities p) have the states on the
# LEADING axis and any batch (trials) on trailing axes, so that per-state reductions are vectorised over
# trials. A single trial is the special case with no trailing axis.


def _take(v: Array, j) -> Array:
    """``v[j]`` per trailing batch position: v (n+1, *batch), j (*batch) -> (*batch)."""
    j = jnp.asarray(j)
    return jnp.take_along_axis(v, j[None], axis=0)[0] if j.ndim else v[j]


def initial_context(start, tables: PowerTables, n: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """Context cued by item ``start``, :math:`t = e_{s_0}`, and its activations :math:`a = M^\\top t` (row ``s_0``)."""
    start = jnp.asarray(start)
    t = (_states(n, start.ndim) == start[None]).astype(dtype)
    return t, m_row(tables, start, n).astype(dtype)


def recall_probabilities(a: States) -> States:
    """Ratio rule over the ``n + 1`` states (leading axis): :math:`p = a / \\sum_k a_k`; the last is the stop state."""
    return a / jnp.sum(a, axis=0, keepdims=True)


def recall_update(
    t: States, a: States, j: Item, params: CMRParams, tables: PowerTables, n: int
) -> tuple[States, States]:
    """Context update after recalling item ``j``; returns the new ``(t, a = M^T t)`` in O(n).

    .. math::
       t^{IN} = \\frac{(1-\\gamma) f_j + \\gamma M f_j}{\\sqrt{(1-\\gamma)^2 + \\gamma^2 S_j}},\\quad
       t' = \\frac{(1-\\beta_{rec}) t + \\beta_{rec} t^{IN}}{\\rho},\\quad a' = M^\\top t',

    with :math:`\\rho^2 = (1-\\beta_{rec})^2 + \\beta_{rec}^2 + 2\\beta_{rec}(1-\\beta_{rec})\\, t\\cdot t^{IN}`
    (``t`` has unit length) and :math:`t \\cdot t^{IN} = ((1-\\gamma) t_j + \\gamma a_j) / \\lVert\\cdot\\rVert`, since
    :math:`t \\cdot M f_j = a_j`.

    Args:
      t: (n+1, *batch) current context, unit length.
      a: (n+1, *batch) its activations ``M^T t``.
      j: (*batch) recalled item, ``0 <= j < n``.
      params: CMR parameters (scalars, or broadcastable to the batch).
      tables: :func:`power_tables` of ``params.beta_enc``.
      n: list length.
    """
    dtype = t.dtype
    g = jnp.asarray(params.gamma_ft, dtype)
    b = jnp.asarray(params.beta_rec, dtype)
    j = jnp.asarray(j)
    row, col, mtm = m_row_col_mtm(tables, j, n)  # M^T f_j, M f_j, M^T M f_j
    f = (_states(n, j.ndim) == j[None]).astype(dtype)
    norm_in = jnp.sqrt((1 - g) ** 2 + g**2 * tables.cum2[j])  # (*batch)
    t_in = ((1 - g) * f + g * col) / norm_in[None]
    a_in = ((1 - g) * row + g * mtm) / norm_in[None]  # M^T t_in
    dot = ((1 - g) * _take(t, j) + g * _take(a, j)) / norm_in  # t . t_in, (*batch)
    rho = jnp.sqrt((1 - b) ** 2 + b**2 + 2 * b * (1 - b) * dot)[None]
    return ((1 - b) * t + b * t_in) / rho, ((1 - b) * a + b * a_in) / rho


def context_at(a: States, j: Item, tables: PowerTables) -> Float[Array, "*batch"]:
    """The context entry :math:`t_j` recovered from the activations alone: :math:`t_j = a_{j+1} - r a_j`.

    Since :math:`a_k = \\sum_{i<k} t_i r^{k-1-i}`, :math:`a_{j+1} = r a_j + t_j` for :math:`j < n`; so a
    simulation can carry ``a`` only (:func:`recall_update_activations`).
    """
    j = jnp.asarray(j)
    return _take(a, j + 1) - tables.r * _take(a, j)


def recall_update_activations(a: States, j: Item, params: CMRParams, tables: PowerTables, n: int) -> States:
    """:func:`recall_update` for the activations only: :math:`a' = M^\\top t'` without storing ``t``.

    Same equations (``t_j`` from :func:`context_at`); half the work per step. Shapes as in
    :func:`recall_update`.
    """
    dtype = a.dtype
    g = jnp.asarray(params.gamma_ft, dtype)
    b = jnp.asarray(params.beta_rec, dtype)
    j = jnp.asarray(j)
    x, q = _offset_powers(tables, j, n)
    row = jnp.where(x > 0, q, 0)
    mtm = jnp.where(x == 0, 1, tables.r * q) * _cum2_min(tables, j, x, n)
    norm_in = jnp.sqrt((1 - g) ** 2 + g**2 * tables.cum2[j])  # (*batch)
    a_in = ((1 - g) * row + g * mtm) / norm_in[None]  # M^T t_in
    dot = ((1 - g) * context_at(a, j, tables) + g * _take(a, j)) / norm_in  # t . t_in
    rho = jnp.sqrt((1 - b) ** 2 + b**2 + 2 * b * (1 - b) * dot)[None]
    return ((1 - b) * a + b * a_in) / rho


# ------------------------------------------------------------------------------------------------
# the same update on cumulative activations (what the simulator carries)


def initial_cumulative_activations(start, tables: PowerTables, n: int) -> States:
    r""":math:`A_k = \sum_{l \le k} a_l` of the cued context :math:`t = e_{s_0}`: :math:`G_{k - s_0}` for
    :math:`k > s_0`, else 0 (states on the leading axis)."""
    start = jnp.asarray(start)
    return tables.geo[jnp.maximum(_states(n, start.ndim) - start[None], 0)]


def _inv_norm_in(g, j, tables: PowerTables) -> Array:
    r""":math:`1 / \lVert (1-\gamma) f_j + \gamma M f_j \rVert`, as an explicit ``rsqrt``.

    Written as ``x / sqrt(y)``, XLA rewrites it to ``x * rsqrt(y)`` in some compiled programs and not in others
    (it depends on the chunk's shape and sharding), and the two differ in the last bits: results would then
    depend on chunking and device count.
    """
    return jax.lax.rsqrt((1 - g) ** 2 + g**2 * tables.cum2[j])


def cumulative_input(j: Item, params: CMRParams, tables: PowerTables, n: int) -> States:
    r"""Cumulative sums over states of :math:`M^\top t^{IN}` after recalling item ``j``, in closed form.

    With :math:`x = k - j`, :math:`P_k = G_k G_{k+1} / (1 + r)` and :math:`\lVert\cdot\rVert` the norm of
    :math:`(1-\gamma) f_j + \gamma M f_j`:

    * the row :math:`M^\top f_j` sums to :math:`G_x` for :math:`x \ge 0` (0 before ``j``);
    * the column of :math:`M^\top M` sums to :math:`r^{-x} P_k` for :math:`x < 0` and to
      :math:`r P_{j-1} + S_j G_{x+1}` for :math:`x \ge 0` (with :math:`G_{x+1} = 1 + r G_x`).

    Each entry reads one power (:math:`r^{-x}` or :math:`G_x`) from a table, no sum over states.
    Shapes as in :func:`recall_update_activations`.
    """
    dtype = tables.pw.dtype
    g = jnp.asarray(params.gamma_ft, dtype)
    j = jnp.asarray(j)
    r, geo = tables.r, tables.geo
    P = geo[: n + 1] * geo[1: n + 2] / (1 + r)
    powers = jnp.concatenate([tables.pw[1:][::-1], geo[: n + 1]])  # [n + x] -> r**-x (x < 0), G_x (x >= 0)
    x = _states(n, j.ndim) - j[None]
    v = powers[n + x]
    before = g * v * P.reshape((n + 1,) + (1,) * j.ndim)
    c_prev = jnp.where(j > 0, r * P[jnp.maximum(j - 1, 0)], 0)  # r P_{j-1}: the sum up to k = j - 1
    after = (1 - g) * v + g * (c_prev[None] + tables.cum2[j][None] * (1 + r * v))
    return jnp.where(x < 0, before, after) * _inv_norm_in(g, j, tables)[None]


def cumulative_update_scale(A_before, A_at, A_after, inv_norm_j, r, beta_rec, gamma_ft) -> Array:
    r""":math:`1 / \rho` of the context update after recalling item ``j``, from three cumulative activations:
    :math:`A_{j-1}` (0 for ``j`` = 0), :math:`A_j`, :math:`A_{j+1}`.

    They give :math:`a_j = A_j - A_{j-1}` and :math:`t_j = a_{j+1} - r a_j` (:func:`context_at`), hence
    :math:`t \cdot t^{IN} = ((1-\gamma) t_j + \gamma a_j) / \lVert\cdot\rVert` and :math:`\rho` as in
    :func:`recall_update`. All arguments are scalars or arrays of one batch shape; ``inv_norm_j`` is
    :math:`1/\lVert (1-\gamma) f_j + \gamma M f_j \rVert`.
    """
    a_j = A_at - A_before
    t_j = (A_after - A_at) - r * a_j
    dot = ((1 - gamma_ft) * t_j + gamma_ft * a_j) * inv_norm_j  # t . t_in
    return jax.lax.rsqrt((1 - beta_rec) ** 2 + beta_rec**2 + 2 * beta_rec * (1 - beta_rec) * dot)  # see _inv_norm_in


def cumulative_step(A: States, j: Item, C_j: States, inv_norm_j, r, beta_rec, gamma_ft) -> States:
    r"""The update of :func:`recall_update_cumulative` given the cumulative input ``C_j`` of item ``j`` and
    :math:`1/\lVert\cdot\rVert` (``inv_norm_j``): :math:`A' = ((1-\beta_{rec}) A + \beta_{rec} C_j) / \rho`, with
    :math:`1/\rho` from :func:`cumulative_update_scale`. ``r``, ``beta_rec``, ``gamma_ft`` are scalars or
    per-trial arrays. (The simulator applies the same two functions to its own layout of ``A``, with a table of
    :func:`cumulative_input_table` for ``C_j``.)
    """
    j = jnp.asarray(j)
    jm1 = jnp.maximum(j - 1, 0)
    if j.ndim:
        A3 = jnp.take_along_axis(A, jnp.stack([jm1, j, j + 1]), axis=0)
    else:
        A3 = jnp.stack([A[jm1], A[j], A[j + 1]])
    g, b = jnp.asarray(gamma_ft), jnp.asarray(beta_rec)
    inv_rho = cumulative_update_scale(jnp.where(j > 0, A3[0], 0), A3[1], A3[2], inv_norm_j, r, b, g)[None]
    b_states = b[None] if jnp.ndim(b) else b  # per-trial values broadcast over the states
    return ((1 - b_states) * A + b_states * C_j) * inv_rho


def recall_update_cumulative(A: States, j: Item, params: CMRParams, tables: PowerTables, n: int) -> States:
    r""":func:`recall_update_activations` on cumulative activations :math:`A_k = \sum_{l \le k} a_l`.

    The update is linear, so :math:`A' = ((1-\beta_{rec}) A + \beta_{rec} \mathrm{cumsum}(M^\top t^{IN})) /
    \rho` with the closed form of :func:`cumulative_input`; :math:`a_j = A_j - A_{j-1}` and
    :math:`t_j = a_{j+1} - r a_j` (:func:`context_at`) give :math:`\rho` (:func:`cumulative_step`). Shapes as in
    :func:`recall_update_activations`.
    """
    dtype = A.dtype
    g = jnp.asarray(params.gamma_ft, dtype)
    b = jnp.asarray(params.beta_rec, dtype)
    return cumulative_step(A, j, cumulative_input(j, params, tables, n), _inv_norm_in(g, jnp.asarray(j), tables),
                           tables.r, b, g)


def cumulative_input_table(params: CMRParams, tables: PowerTables, n: int) -> tuple[Array, Array]:
    """:func:`cumulative_input` of every item as rows, (n, n+1), and the matching ``1 / norm`` (n,).

    Item 0 is never recalled (:math:`a_0 = 0`); its row is 0 where its norm is (``gamma_ft`` = 1).
    """
    dtype = tables.pw.dtype
    g = jnp.asarray(params.gamma_ft, dtype)
    items = jnp.arange(n)
    sq = (1 - g) ** 2 + g**2 * tables.cum2[items]
    ok = sq > 0
    rows = jnp.where(ok[:, None], cumulative_input(items, params, tables, n).T, 0)
    return rows, jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, sq, 1)), 0)
