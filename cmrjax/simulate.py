r"""Simulating CMR recall and its lag-CRP: one trial is a ``lax.scan``; trials, starts and points run side by side.

A trial starts from the cue :math:`s_0`, draws up to ``max_recalls`` (:math:`R` below) states by inverse CDF
from :func:`cmrjax.model.recall_probabilities` (one uniform each) and stops at the absorbing state. Items can
be recalled again (sampling with replacement). Each step costs O(list length): the simulation carries the
cumulative activations only (:func:`cmrjax.model.recall_update_cumulative`), which are the draw's unnormalised
CDF, so no step sums over the states; the recalled item's cumulative input is one row of a per-point table
(:class:`PointTables`).

Estimators of the paper's lag-CRP (see :mod:`cmrjax.crp` for the definition, ``crp_paper``):

* ``"sampled"``: the paper's. Count the lag of each sampled transition inside the window, divide by the
  trial's number of recalls :math:`N`, average over trials, normalise to sum 1 per start, average over starts.
* ``"rao_blackwell"``: exactly unbiased for the paper's CRP, with the noise of the draws integrated out
  where it can be. Draw the trial's *item path* (every step draws an item from the items' distribution; the
  trial's recalls are this path up to the first step that draws the stop state) and

  1. integrate the stop decisions out: given the path, the trial makes :math:`N = n` recalls with probability
     :math:`W_n p_{n+1}` (:math:`W_n = \prod_{i \le n} (1 - p_i)`, :math:`p_i` the stop probability at step
     :math:`i`), so the trial's value :math:`C_N / N` is replaced by :math:`\sum_n W_n p_{n+1} C_n / n`
     (:math:`C_n` the path's window counts after :math:`n` steps; :math:`W_R C_R / R` for the full length);
  2. add the control variate :math:`\sum_k (W_k / R) (q_k - x_k)`, where :math:`x_k` is the path's lag
     indicator at step :math:`k` and :math:`q_k` its distribution given the path so far (the whole next-item
     distribution over the window: the Rao-Blackwellised step). Its weight is known before step :math:`k`'s
     draw, so its mean is exactly zero;
  3. add a one-step look-ahead control variate, :math:`\sum_k (W_k / R) (E[h_k] - h_k)` with
     :math:`h_k(d) = (1 - \beta_{rec})\, a_{j_k + d} / \sum_{i<n} a_i` when the draw :math:`j_k` lies in the
     window around the previous item (else 0), :math:`a` the activations before the draw. :math:`h_k`
     approximates the next step's :math:`q_{k+1}` as if the context did not move, so it cancels most of the
     noise that the draw's position adds to the next step; its conditional mean is a local autocorrelation of
     the activations, :math:`(1 - \beta_{rec}) \sum_{|i| \le m} q_k(i)\, a_{j_{k-1} + i + d} / \sum_{i<n} a_i`,
     so the term has mean exactly zero whatever the approximation's quality. Both come from one sum of
     17 x 17 products per trial and step, :math:`\sum_i (q_k(i) - x_k(i))\, a_{j_{k-1} + i + d}`; measured:
     the variance of the hardest entries, high ``beta_enc`` with low ``beta_rec``, drops 2-3x.

  Where the stop state is never drawn this is the Rao-Blackwellised counts over :math:`R`. Dividing the
  Rao-Blackwellised counts by the sampled :math:`N` instead (an earlier version) is biased wherever trials
  stop early, because a step's draw changes how soon the trial ends (measured: up to 0.005 in an entry near
  ``beta_rec`` = 0.95, ``gamma_ft`` = 0, where trials reach the end of the list); unbiasedness is tested in
  float64 at such points. The estimator removes the noise of the draws, of the trial's length and most of the
  draws' effect on the next step, not that of the context's drift. Against 1,000 sampled trials, the paper's
  grid needs from 32 Rao-Blackwellised trials or fewer (most points with ``beta_enc`` <= 0.3) to 220-350 (high
  ``beta_enc`` with low ``beta_rec``) and ~650 (``beta_enc`` = 0.05, ``beta_rec`` >= 0.85, ``gamma_ft`` = 0,
  where trials end early), with independent trials; :mod:`cmrjax.adaptive` draws stratified units, which
  need fewer where the context drifts slowly. ``benchmarks/bench_simulate.py`` measures both.

In float32, inverse-CDF draws cannot resolve next-recall probabilities below ~1e-7 (the uniforms' resolution);
such states are (almost) never sampled, an error far below the Monte Carlo error of any practical run. The
activations are read as differences of the carried cumulative ones, so they too are resolved to ~1e-7 of their
sum (a next-item probability below that may read as a rounding error of either sign). ``dtype="float64"``
removes both.

Randomness: the key of parameter point ``i`` is ``fold_in(key, i)`` and of start ``s`` within it
``fold_in(point_key, s)``, so results do not depend on chunk size, device count or which points are
simulated together (the basis of ``--resume``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from cmrjax.closed_form import corner_crp_per_start, is_corner, static_context_crp_per_start
from cmrjax.model import (
    CMRParams,
    PowerTables,
    SimConfig,
    cumulative_input_table,
    cumulative_update_scale,
    power_tables,
    validate_params,
)

ESTIMATORS = ("sampled", "rao_blackwell")
CORNERS = ("closed_form", "simulate")


#: XLA options the simulation kernels compile with. Copy insertion with region analysis lets the scan update the
#: carried cumulative activations in place: the Rao-Blackwellised step also reads them in fusions that the default
#: analysis cannot order before the update, so it copied them every step. Same results bit for bit; measured
#: 11.6 -> 8.8 ms per call of 1,280 trials x 50 steps on a 2-core CPU (the sampled step had no copy). Options
#: of another backend are ignored.
KERNEL_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def _tree_sum(x: jax.Array, axis: int) -> jax.Array:
    """Sum over ``axis`` as a fixed tree of elementwise additions: the result does not depend on how the
    compiler vectorises the surrounding batch (XLA's reductions may sum in another order for another chunk
    size, which would break "same key, same result" across chunkings)."""
    x = jnp.moveaxis(x, axis, 0)
    size = 1 << max(0, (x.shape[0] - 1).bit_length())
    x = jnp.pad(x, [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    while x.shape[0] > 1:
        h = x.shape[0] // 2
        x = x[:h] + x[h:]
    return x[0]


class TrialResult(NamedTuple):
    """What a batch of trials yields (trials on the trailing axes).

    Attributes:
      counts: (lags, *trials) sampled transition counts inside the lag window.
      rao_blackwell: (lags, *trials) each trial's value of the ``rao_blackwell`` estimator (already divided:
        compare with ``counts / n_recalls``; see the module docstring); zeros unless asked for.
      n_recalls: (*trials) number of items recalled (the stop state excluded).
      recalls: (max_recalls, *trials) recalled items in order, -1 after the trial ended (when recorded).
    """

    counts: jax.Array
    rao_blackwell: jax.Array
    n_recalls: jax.Array
    recalls: jax.Array | None


class _Carry(NamedTuple):
    A: jax.Array  # (trials, padded states) cumulative activations sum_{l<=k} (M^T t)_l along the item path
    prev: jax.Array  # (*trials) previous item of the path (the cue at first)
    alive: jax.Array  # (*trials) bool: the trial has not drawn the stop state yet
    n_recalls: jax.Array  # (*trials) int32
    counts: jax.Array  # (trials, lags) sampled counts (alive steps)
    survive: jax.Array  # (trials,) probability that the trial is still running (given the item path)
    path_counts: jax.Array  # (trials, lags) counts along the whole item path
    value: jax.Array  # (trials, lags) stop-marginalised value plus control variate


class PointTables(NamedTuple):
    """What a recall step reads about the parameter points simulated side by side, flattened so that every read
    is a plain row or element gather (gathers from per-point tables batched by ``vmap`` ran 1.3-1.5x slower).

    Attributes:
      rows: (P * n, n+1) row ``p * n + j``: the cumulative input of recalling item ``j`` at point ``p``
        (:func:`cmrjax.model.cumulative_input_table`).
      inv_norm: (P * n,) the matching ``1 / ||(1-gamma_ft) f_j + gamma_ft M f_j||``.
      geo: (P * (n+2),) the geometric sums ``G_e`` of each point (the cued context's cumulative activations).
      r, beta_rec, gamma_ft: (P,) per point.
    """

    rows: jax.Array
    inv_norm: jax.Array
    geo: jax.Array
    r: jax.Array
    beta_rec: jax.Array
    gamma_ft: jax.Array


def point_tables(points: Float[Array, "P 3"], n: int, dtype=jnp.float32) -> PointTables:
    """:class:`PointTables` of (P, 3) rows of (beta_enc, beta_rec, gamma_ft) for lists of ``n`` items."""
    points = jnp.asarray(points, dtype)

    def one(p):
        params = CMRParams(p[0], p[1], p[2])
        tables = power_tables(p[0], n, dtype)
        rows, inv_norm = cumulative_input_table(params, tables, n)
        return rows, inv_norm, tables.geo, tables.r

    rows, inv_norm, geo, r = jax.vmap(one)(points)
    return PointTables(rows.reshape(-1, n + 1), inv_norm.reshape(-1), geo.reshape(-1), r, points[:, 1],
                       points[:, 2])


def simulate_trials(
    uniforms: Float[Array, "recalls *trials"],
    starts: Int[Array, "*trials"] | int,
    params: CMRParams,
    tables: PowerTables,
    config: SimConfig,
    record: bool = False,
    estimators: tuple[str, ...] = ESTIMATORS,
) -> TrialResult:
    """A batch of recall trials of one parameter point, trial ``b`` cued by ``starts[b]`` and driven by
    ``uniforms[:, b]`` (:func:`simulate_points` runs several points side by side).

    Args:
      uniforms: (max_recalls, *trials) draws in [0, 1), one per retrieval.
      starts: (*trials) cue items.
      params: scalar CMR parameters; ``tables`` = ``power_tables(params.beta_enc, ...)``.
      config: simulation settings.
      record: also return the recalled items.
      estimators: which results to compute (``"sampled"`` -> ``counts``, ``"rao_blackwell"`` -> also
        ``rao_blackwell``); the others stay zero and cost nothing.
    """
    n, dtype = config.list_length, uniforms.dtype
    batch = uniforms.shape[1:]
    rows, inv_norm = cumulative_input_table(params, tables, n)
    one = lambda x: jnp.reshape(jnp.asarray(x, dtype), (1,))  # noqa: E731
    pt = PointTables(rows.astype(dtype), inv_norm.astype(dtype), tables.geo.astype(dtype), one(tables.r),
                     one(params.beta_rec), one(params.gamma_ft))
    flat = uniforms.reshape(uniforms.shape[0], -1)
    starts = jnp.broadcast_to(jnp.asarray(starts, jnp.int32), batch).reshape(-1)
    res = simulate_points(flat, starts, jnp.zeros(flat.shape[1], jnp.int32), pt, config, record, estimators)
    return TrialResult(*(None if x is None else x.reshape(x.shape[:-1] + batch) for x in res))


#: States per block of the draw's first, dense comparison (:func:`_draw_index`; a power of two).
DRAW_BLOCK = 8


def _slices(x: jax.Array, first: jax.Array, size: int) -> jax.Array:
    """``x[b, first[b] : first[b] + size]`` for every row ``b`` of ``x`` (trials, columns): one contiguous slice
    per trial, a single gather index each (the caller keeps them in bounds)."""
    return jax.vmap(lambda row, i: jax.lax.dynamic_slice(row, (i,), (size,)))(x, first)


def _draw_index(A: jax.Array, theta: jax.Array, first: int, n_states: int) -> jax.Array:
    """The inverse-CDF draw: per trial, how many of the ``n_states`` cumulative activations stored in columns
    ``first ..`` of ``A`` (trials, columns) are ``<= theta``.

    Every :data:`DRAW_BLOCK`-th one (a strided slice, compared densely) finds the block, one slice of the block
    finds the state. Wherever the cumulative activations do not decrease this is the count over all states
    (they can step down by a rounding error where an activation is ~1e-7 of the total; a draw that lands in
    such a step, an event of about that probability, may then pick the neighbouring state). Needs
    :data:`DRAW_BLOCK` columns after the last state."""
    ends = A[:, first + DRAW_BLOCK - 1: first + n_states: DRAW_BLOCK]  # the last state of each full block
    lo = jnp.sum(ends <= theta[:, None], axis=1, dtype=jnp.int32) * DRAW_BLOCK
    state = lo[:, None] + jnp.arange(DRAW_BLOCK, dtype=jnp.int32)[None]
    below = (_slices(A, first + lo, DRAW_BLOCK) <= theta[:, None]) & (state < n_states)
    return lo + jnp.sum(below, axis=1, dtype=jnp.int32)


def simulate_points(
    uniforms: Float[Array, "recalls trials"],
    starts: Int[Array, " trials"],
    point: Int[Array, " trials"],
    pt: PointTables,
    config: SimConfig,
    record: bool = False,
    estimators: tuple[str, ...] = ESTIMATORS,
) -> TrialResult:
    """Recall trials of several parameter points side by side: trial ``b`` is of point ``point[b]`` of ``pt``.

    One uniform per step drives both estimators. The trial draws the stop state when ``u * sum(a)`` falls
    past the items' cumulative sum; the *item path* always draws an item, with the same uniform while the
    trial runs and with the rescaled remainder ``(u sum(a) - items) / a_stop`` once it would stop. The trial's
    recalls are the path up to its first stop, so the sampled estimator is the paper's. Arguments as in
    :func:`simulate_trials`, with ``pt`` from :func:`point_tables`.

    Layout: the carried cumulative activations are (trials, states), padded with ``2 * max_lag + 1`` zeros
    before state 0 (the empty sums :math:`A_{-i}`) and ``max(2 * max_lag, DRAW_BLOCK)`` copies of the total
    after the stop state (a padded table row keeps them so), so that every per-trial read (the draw's block,
    the look-ahead's window, the three entries around the recalled item) is one contiguous slice, and the
    update reads the recalled item's table row as it is stored. Against states on the leading axis (the
    :mod:`cmrjax.model` convention, which this kernel used before) it runs 1.7-1.8x faster, with the same results
    bit for bit: 8.4-8.5 -> 14.1-15.4 M Rao-Blackwellised recall steps/s in the adaptive path's lanes on a
    2-core CPU. There, per-element gathers across the states (the look-ahead's window, the draw) and the
    transpose of the gathered row were most of a step; a first try of the trials-major layout with per-element
    gathers and a dense draw had been slower.
    """
    n, m, R = config.list_length, config.max_lag, config.max_recalls
    dtype = uniforms.dtype
    K = 2 * m + 1
    B = uniforms.shape[1]
    P0 = 2 * m + 1  # state i is column P0 + i
    d = jnp.arange(-m, m + 1)[None]
    d2 = jnp.arange(-2 * m, 2 * m + 1)[None]
    r, b, g = pt.r[point], pt.beta_rec[point], pt.gamma_ft[point]  # (B,) per trial
    base = point * n  # row of item 0 in pt.rows

    def pad(X):  # (..., n+1) -> (..., P0 + n+1 + P1): zeros before, copies of the last state after
        return jnp.concatenate([jnp.zeros(X.shape[:-1] + (P0,), X.dtype), X,
                                jnp.repeat(X[..., -1:], max(2 * m, DRAW_BLOCK), axis=-1)], axis=-1)

    A0 = pad(pt.geo[(point * (n + 2))[:, None] + jnp.maximum(jnp.arange(n + 1)[None] - starts[:, None], 0)])
    rows = pad(pt.rows)
    rb = "rao_blackwell" in estimators
    tiny = jnp.finfo(dtype).tiny

    def step(c: _Carry, xs):
        u, k = xs  # k = 1..R
        A = c.A  # the cumulative activations are the unnormalised CDF of the next draw
        total, items = A[:, P0 + n], A[:, P0 + n - 1]
        theta = u * total
        if rb:  # the item path goes on after the stop draw: rescale the uniform's remainder to the items
            stop = theta >= items
            theta = jnp.where(stop, (theta - items) / jnp.maximum(total - items, tiny) * items, theta)
        j = _draw_index(A, theta, P0, n + 1)
        if not rb:
            stop = j >= n  # the trial's draw is the stop state
        j = jnp.minimum(j, n - 1)  # the path's item (after a stop only the item path reads it)
        recalled = c.alive & ~stop
        lag = j - c.prev
        x = ((d == lag[:, None]) & (jnp.abs(lag) <= m)[:, None]).astype(dtype)  # the path's lag indicator
        counts = c.counts + jnp.where(recalled[:, None], x, 0)
        survive, path_counts, value = c.survive, c.path_counts, c.value
        if rb:
            has_items = items > 0
            p_stop = jnp.where(has_items, (total - items) / total, 1)
            # stop integrated out: the trial ends here (k - 1 recalls, path_counts) with prob survive * p_stop
            value = value + jnp.where(k > 1, survive * p_stop / jnp.maximum(k - 1, 1), 0)[:, None] * path_counts
            survive = survive * (1 - p_stop)
            # control variates, weighted by survive / R (known before the draw): E[x | path so far] - x, and the
            # same for the next step's window activations as if the context stayed (see the module docstring)
            e = c.prev[:, None] + d2  # states prev - 2m .. prev + 2m
            G = _slices(A, P0 + c.prev - (2 * m + 1), 4 * m + 2)  # A at prev - 2m - 1 .. prev + 2m
            a_win2 = jnp.where((e >= 0) & (e < n), G[:, 1:] - jnp.where(e > 0, G[:, :-1], 0), 0)  # activations
            inv_items = 1 / jnp.where(has_items, items, 1)
            y = jnp.where(has_items[:, None], a_win2[:, m: 3 * m + 1] * inv_items[:, None] - x, 0)  # q - x
            look = sum(y[:, i: i + 1] * a_win2[:, i: i + K] for i in range(K))  # sum_i (q_i - x_i) a[prev + i + d]
            value = value + (survive / R)[:, None] * (y + ((1 - b) * inv_items)[:, None] * look)
            path_counts = path_counts + x
        A3 = _slices(A, P0 + j - 1, 3)  # A at j - 1 (0 before state 0), j, j + 1
        inv_rho = cumulative_update_scale(A3[:, 0], A3[:, 1], A3[:, 2], pt.inv_norm[base + j], r, b, g)
        # cumulative_step: A' = ((1 - beta_rec) A + beta_rec C_j) / rho, C_j the item's (padded) table row
        A_new = ((1 - b[:, None]) * A + b[:, None] * jnp.take(rows, base + j, axis=0)) * inv_rho[:, None]
        new = _Carry(
            A=A_new,
            prev=j,
            alive=recalled,
            n_recalls=c.n_recalls + recalled.astype(jnp.int32),
            counts=counts,
            survive=survive,
            path_counts=path_counts,
            value=value,
        )
        return new, (jnp.where(recalled, j, -1) if record else None)

    zeros = jnp.zeros((B, K), dtype)
    init = _Carry(A0, starts, jnp.ones(B, bool), jnp.zeros(B, jnp.int32), zeros, jnp.ones(B, dtype), zeros, zeros)
    final, recalls = jax.lax.scan(step, init, (uniforms, jnp.arange(1, uniforms.shape[0] + 1, dtype=dtype)))
    value = final.value + final.survive[:, None] * final.path_counts / R if rb else final.value
    return TrialResult(final.counts.T, value.T, final.n_recalls, recalls)


#: Stratified batches up to this many trials draw their permutations by pairwise comparison (O(trials^2)).
_RANK_BY_COMPARISON = 64


def _uniforms(pkey, config: SimConfig, trials: int, starts, dtype, stratified: bool = False) -> jax.Array:
    """(max_recalls, len(starts) * trials) uniforms; start ``s`` draws from ``fold_in(pkey, s)``.

    ``stratified``: a Latin hypercube across each start's ``trials`` trials: at every step, the trials' uniforms
    fall one in each of the ``trials`` strata ``[i / trials, (i + 1) / trials)``, assigned by an independent
    random permutation per step. Every trial's uniforms are still independent and uniform (each trial has the
    distribution of an independent one, so every estimator keeps its expectation); the trials of a start are
    not independent of one another, so their variance is measured across independent batches of them
    (:func:`_lane_moments`, :mod:`cmrjax.adaptive`).
    """
    R = config.max_recalls

    def one(s):
        k = jax.random.fold_in(pkey, s)
        if not stratified:
            return jax.random.uniform(k, (R, trials), dtype)
        kv, kp = jax.random.split(k)
        if trials <= _RANK_BY_COMPARISON:
            # a random permutation of the strata per step: the ranks of random 32-bit words (a tie, ~3e-8 per step
            # of 16 trials, is broken by position), by pairwise comparison: 10x faster than XLA's sort on CPUs
            w = jax.random.bits(kp, (R, trials), jnp.uint32)
            t = jnp.arange(trials)
            wt = w.T[:, :, None]  # (other trial, R, 1)
            lower = (wt < w[None]) | ((wt == w[None]) & (t[:, None, None] < t[None, None, :]))
            strata = lower.astype(jnp.int32).sum(0)  # (R, trials): how many words rank below each one
        else:
            strata = jax.random.permutation(kp, jnp.broadcast_to(jnp.arange(trials), (R, trials)), axis=1,
                                            independent=True)
        u = (strata.astype(dtype) + jax.random.uniform(kv, (R, trials), dtype)) / trials
        return jnp.minimum(u, jnp.nextafter(jnp.asarray(1, dtype), jnp.asarray(0, dtype)))  # rounding can give 1

    u = jax.vmap(one)(starts)  # (starts, recalls, trials)
    return jnp.moveaxis(u, 0, 1).reshape(R, -1)


def per_trial_values(res: TrialResult, estimator: str) -> jax.Array:
    """Each trial's contribution to its start's CRP before normalisation: (lags, *trials).

    ``sampled``: window counts / N (0 for a trial that recalled nothing); ``rao_blackwell``: the value
    :func:`simulate_trials` computed (see the module docstring).
    """
    if estimator == "rao_blackwell":
        return res.rao_blackwell
    n = res.n_recalls.astype(res.counts.dtype)[None]
    return jnp.where(n > 0, res.counts / jnp.maximum(n, 1), 0)


#: Trials simulated side by side on CPUs (per parameter point): the step's (trials x states) arrays then stay in
#: cache. Measured on a 2-core machine at 40 points x 1000 trials x 20 starts (one device per core): sampled
#: 19.3-20.3 M trial-steps/s in blocks of 2,000 trials (this value), 17.2-17.6 M in blocks of 4,000 (the value
#: before the trials-major layout), 11.3 M in blocks of 10,000; Rao-Blackwellised 10.5-10.8 M against 7.7 M.
#: Changing it changes results in their last bits (the compiled arithmetic depends on the batch width), never
#: with chunk size or device count.
CPU_TRIAL_BLOCK = 2048


def _starts_per_block(config: SimConfig, trials: int) -> int:
    """How many start positions run side by side: all of them on accelerators; on CPUs the largest divisor
    of ``n_starts`` that keeps a block within :data:`CPU_TRIAL_BLOCK` trials."""
    S = config.n_starts
    if jax.default_backend() != "cpu":
        return S
    limit = max(1, CPU_TRIAL_BLOCK // trials)
    return max(b for b in range(1, S + 1) if S % b == 0 and b <= limit)


def _over_points(fn, xs):
    """``fn`` over the leading axis of ``xs``: one point after another on CPUs, batched on accelerators.

    On CPUs each point then compiles to the same program, with plain gathers from its own tables, whatever the
    chunk (bit-identical results); the fixed-count path ran 1.7x faster than with the former ``vmap`` over
    points (40 points x 1000 trials x 20 starts on a 2-core CPU: 3.45 s -> 2.0 s).
    """
    return jax.lax.map(fn, xs) if jax.default_backend() == "cpu" else jax.vmap(fn)(xs)


def _chunk_crps(key, indices, points, config: SimConfig, trials: int, estimator: str) -> jax.Array:
    """Per-start normalised CRPs of a chunk of parameter points: (points, starts, lags).

    Starts run in blocks (:func:`_starts_per_block`), a block's trials side by side. A trial contributes its
    window counts divided by its number of recalls (none: contributes 0); a start's CRP is the mean over
    trials normalised to sum 1 (0/0, no transition in the window at all, gives 0). Point ``i`` draws from
    ``fold_in(key, indices[i])``.
    """
    dtype = config.jnp_dtype
    S, T = config.n_starts, trials
    B = _starts_per_block(config, T)
    blocks = jnp.arange(S, dtype=jnp.int32).reshape(S // B, B)

    def one_point(args):
        index, point = args
        pkey = jax.random.fold_in(key, index)
        pt = point_tables(point[None], config.list_length, dtype)

        def one_block(block):  # block: (B,) start items
            res = simulate_points(_uniforms(pkey, config, T, block, dtype), jnp.repeat(block, T),
                                  jnp.zeros(B * T, jnp.int32), pt, config, estimators=(estimator,))
            per_trial = per_trial_values(res, estimator).reshape(-1, B, T)
            mean = _tree_sum(per_trial, -1).T / T  # (B, lags)
            tot = _tree_sum(mean, -1)[:, None]
            return jnp.where(tot > 0, mean / jnp.where(tot > 0, tot, 1), 0)

        return jax.lax.map(one_block, blocks).reshape(S, -1)

    return _over_points(one_point, (indices, points))


@partial(jax.jit, static_argnames=("config", "trials", "estimator"), compiler_options=KERNEL_COMPILER_OPTIONS)
def _simulate_chunk(key, indices, points, *, config: SimConfig, trials: int, estimator: str):
    per_start = _chunk_crps(key, indices, points, config, trials, estimator)
    S = config.n_starts
    mean = _tree_sum(per_start, 1) / S
    if S == 1:
        return mean, jnp.zeros_like(mean)
    var = _tree_sum((per_start - mean[:, None]) ** 2, 1) / (S - 1)
    return mean, jnp.sqrt(var) / math.sqrt(S)


@dataclass(frozen=True)
class CRPResult:
    """Simulated lag-CRPs of a list of parameter points.

    Attributes:
      crp: (points, lags) mean over starts of per-start CRPs normalised to sum 1.
      crp_sem: (points, lags) standard error of that mean across starts (ddof = 1, as the reference).
      lags: (lags,) ``-max_lag .. max_lag``.
      points: (points, 3) the parameters.
    """

    crp: np.ndarray
    crp_sem: np.ndarray
    lags: np.ndarray
    points: np.ndarray


def _chunk_from_budget(item_bytes: int, n_devices: int = 1, memory_bytes: float | None = None) -> int:
    """How many items of ``item_bytes`` working set fit a chunk, a multiple of ``n_devices``.

    Default budget: 16 MiB per device on CPUs (the step's arrays then stay in cache: measured 1.7x faster than
    a 512 MiB chunk on a 2-core machine) and 512 MiB per device on accelerators (large batches keep them busy).
    """
    if memory_bytes is None:
        memory_bytes = 2**24 if jax.default_backend() == "cpu" else 2**29
    c = max(1, int(memory_bytes * n_devices // item_bytes))
    return max(n_devices, (c // n_devices) * n_devices)


def _rows_per_chunk(chunk: int, n_devices: int, multiple: int = 1) -> int:
    """A chunk size rounded up to a multiple of ``n_devices * multiple``, with at least two of those per device.

    A one-row ``vmap`` axis (or a one-step loop) is simplified away at compile time into a different program
    whose fused multiply-adds round differently: one-unit chunks changed the last bits of adaptive CRPs.
    """
    step = n_devices * multiple
    return max(2 * step, int(math.ceil(chunk / step)) * step)


def _step_bytes(config: SimConfig, trials_side_by_side: int) -> int:
    """Working set of a scan step over that many trials: ~8 arrays of (states x trials)."""
    itemsize = 8 if config.dtype == "float64" else 4
    return trials_side_by_side * config.n_states * itemsize * 8


def default_chunk_size(config: SimConfig, trials: int, n_devices: int = 1, memory_bytes: float | None = None) -> int:
    """Points per chunk so that one chunk's working set stays near ``memory_bytes`` (see
    :func:`_chunk_from_budget` for the default budget)."""
    return _chunk_from_budget(_step_bytes(config, _starts_per_block(config, trials) * trials), n_devices,
                              memory_bytes)


def _batch_sharding(devices: list, axis: str):
    """Sharding of a leading batch axis across ``devices`` (None for one device)."""
    if len(devices) < 2:
        return None
    mesh = jax.sharding.Mesh(np.array(devices), (axis,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def _mean_and_sem(per: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-start CRPs (points, starts, lags) -> mean over starts and its SEM (ddof = 1, as the reference)."""
    S = per.shape[1]
    return per.mean(1), (per.std(1, ddof=1) / math.sqrt(S) if S > 1 else np.zeros_like(per[:, 0]))


def _corner_results(points: np.ndarray, config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form CRPs of corner points (numpy float64): mean over starts and its SEM, each (points, lags)."""
    starts = np.arange(config.n_starts)
    return _mean_and_sem(np.stack([corner_crp_per_start(be, br, starts, config.list_length, config.max_lag)
                                   for be, br, _ in points]))


def _static_results(points: np.ndarray, config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Exact CRPs of ``beta_rec`` = 0 points (static context, any ``gamma_ft``): mean over starts and SEM."""
    starts = np.arange(config.n_starts)
    return _mean_and_sem(np.stack([static_context_crp_per_start(be, starts, config.list_length, config.max_lag,
                                                                config.max_recalls) for be in points[:, 0]]))


def _check(trials: int, estimator: str, corners: str) -> None:
    if not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials={trials!r} must be a positive integer")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} must be one of {ESTIMATORS}")
    if corners not in CORNERS:
        raise ValueError(f"corners={corners!r} must be one of {CORNERS}")


def _padded_chunks(points, indices, todo, chunk: int, dtype):
    """Yield ``(sel, points, indices)`` for the positions ``todo`` in chunks of exactly ``chunk`` rows (the last
    one padded by repeating its final row), so every chunk has one shape and compiles once."""
    for lo in range(0, len(todo), chunk):
        sel = todo[lo: lo + chunk]
        pad = chunk - len(sel)
        pts = np.concatenate([points[sel], np.repeat(points[sel[-1:]], pad, 0)]).astype(dtype)
        idx = np.concatenate([indices[sel], np.repeat(indices[sel[-1:]], pad)]).astype(np.uint32)
        yield sel, pts, idx


def iter_simulate_chunks(
    key: jax.Array,
    points,
    *,
    config: SimConfig = SimConfig(),
    trials: int | np.ndarray = 1000,
    estimator: str = "sampled",
    corners: str = "closed_form",
    chunk_size: int | None = None,
    indices: np.ndarray | None = None,
    devices: list | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Simulate chunk by chunk, yielding ``(indices, crp, crp_sem)`` for each finished chunk.

    ``indices`` are the points' global indices (default ``0..N-1``): the PRNG stream of a point depends on
    ``key`` and its index only, so a subset simulated later (``--resume``) equals the same rows of a full run.
    The parameter axis of each chunk is sharded across ``devices`` (default: all visible JAX devices).
    """
    points = validate_params(points)
    N = len(points)
    indices = np.arange(N) if indices is None else np.asarray(indices)
    if indices.shape != (N,):
        raise ValueError(f"indices must have shape ({N},), got {indices.shape}")
    if np.ndim(trials) == 1:  # per-point trial counts: one pass (one compilation) per distinct count
        trials = np.asarray(trials)
        if trials.shape != (N,) or not np.issubdtype(trials.dtype, np.integer):
            raise ValueError(f"per-point trials must be an int array of shape ({N},), got {trials.shape}")
        for T in np.unique(trials):
            sel = np.flatnonzero(trials == T)
            yield from iter_simulate_chunks(key, points[sel], config=config, trials=int(T), estimator=estimator,
                                            corners=corners, chunk_size=chunk_size, indices=indices[sel],
                                            devices=devices)
        return
    _check(trials, estimator, corners)
    devices = list(jax.devices()) if devices is None else list(devices)
    nd = len(devices)
    corner = is_corner(points) if corners == "closed_form" else np.zeros(N, bool)
    # default: a memory budget, but never more than the points there are (padding is wasted work)
    chunk = _rows_per_chunk(chunk_size or min(default_chunk_size(config, trials, nd), max(int((~corner).sum()), 1)),
                            nd)
    dtype = np.float64 if config.dtype == "float64" else np.float32
    config.jnp_dtype  # raises a clear error when float64 is asked for without x64
    sharding = _batch_sharding(devices, "points")
    todo = np.flatnonzero(~corner)
    if corner.any():  # closed-form corners first (cheap, numpy float64)
        ci = np.flatnonzero(corner)
        yield (indices[ci],) + _corner_results(points[ci], config)
    for sel, pts, idx in _padded_chunks(points, indices, todo, chunk, dtype):
        pts_j, idx_j = jnp.asarray(pts), jnp.asarray(idx)
        if sharding is not None:
            pts_j, idx_j = jax.device_put(pts_j, sharding), jax.device_put(idx_j, sharding)
        mean, sem = _simulate_chunk(key, idx_j, pts_j, config=config, trials=trials, estimator=estimator)
        mean, sem = np.asarray(mean), np.asarray(sem)
        yield indices[sel], mean[: len(sel)], sem[: len(sel)]


def simulate_crp(
    key: jax.Array,
    points,
    *,
    config: SimConfig = SimConfig(),
    trials: int | np.ndarray = 1000,
    estimator: str = "sampled",
    corners: str = "closed_form",
    chunk_size: int | None = None,
    devices: list | None = None,
    progress: bool | Callable = False,
) -> CRPResult:
    """Lag-CRPs of CMR at each of ``points``, averaged over ``config.n_starts`` start positions.

    Args:
      key: a ``jax.random`` key.
      points: (N, 3) array of (beta_enc, beta_rec, gamma_ft), each in [0, 1].
      config: list length, starts, maximum recalls, lag window, dtype.
      trials: recall trials per start position; an int, or an (N,) int array of per-point counts (e.g. from
        :func:`cmrjax.adaptive.simulate_crp_adaptive`, which also sizes them).
      estimator: ``"sampled"`` (the paper's) or ``"rao_blackwell"`` (lower variance at equal trials).
      corners: ``"closed_form"`` uses the paper's closed forms at (beta_rec in {0, 1}, gamma_ft = 0), as in
        the reference grid; ``"simulate"`` simulates them too (the simulation is continuous there, the
        closed forms are not; use it for smooth surfaces).
      chunk_size: points per compiled chunk (bounds memory); default from a memory budget
        (:func:`default_chunk_size`). Each distinct chunk size compiles once.
      devices: devices to shard the parameter axis over (default: all).
      progress: show a tqdm progress bar.

    Returns:
      :class:`CRPResult` with ``crp`` and ``crp_sem`` of shape (N, 2*max_lag+1).

    Examples:
      >>> import jax, numpy as np
      >>> from cmrjax import SimConfig, simulate_crp
      >>> res = simulate_crp(jax.random.key(0), np.array([[0.5, 0.5, 0.5]]),
      ...                    config=SimConfig(n_starts=2), trials=50)
      >>> res.crp.shape, bool(np.isclose(res.crp.sum(), 1.0, atol=1e-5))
      ((1, 17), True)
    """
    points = validate_params(points)
    N = len(points)
    K = 2 * config.max_lag + 1
    crp = np.full((N, K), np.nan)
    sem = np.full((N, K), np.nan)
    it = iter_simulate_chunks(key, points, config=config, trials=trials, estimator=estimator, corners=corners,
                              chunk_size=chunk_size, devices=devices)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N, unit="pt", desc="simulate")
    for idx, c, s in it:
        crp[idx], sem[idx] = c, s
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return CRPResult(crp=crp, crp_sem=sem, lags=config.lags, points=points)


def start_moments(per: jax.Array, S: int, T: int) -> jax.Array:
    """Moment sums per start of per-trial values: (S, 3 * lags + 1).

    ``per`` is (lags, S*T) (:func:`per_trial_values`, starts major); per start, over its T trials of ``x`` (one
    row per lag) and their sum over lags ``s``: ``[sum x, sum x**2, sum x*s, sum s**2]``. Sums of several
    batches of trials add up; :func:`finish_moments` turns them into the CRP and its Monte Carlo variance.
    """
    per = per.reshape(-1, S, T)
    s = _tree_sum(per, 0)  # (S, T)
    return jnp.concatenate([_tree_sum(per, -1).T, _tree_sum(per * per, -1).T, _tree_sum(per * s[None], -1).T,
                            _tree_sum(s * s, -1)[:, None]], axis=-1)


def finish_moments(moments: np.ndarray, trials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CRP, SEM across starts and Monte Carlo variance from summed moments (:func:`start_moments`).

    A start's CRP is m / sum(m), m the trial mean of the per-trial values; its linearisation (delta method)
    gives per-trial influences ``y = (x - crp s) / sum(m)`` whose variance / T is that start's CRP variance;
    the final CRP averages the starts.

    Args:
      moments: (..., starts, 3 * lags + 1) moment sums over ``trials`` trials per start, float64.
      trials: trials per start, broadcastable to the leading axes.

    Returns:
      ``(crp, crp_sem, mc_var)``, each (..., lags): the mean over starts of the per-start CRPs normalised to
      sum 1, its SEM across starts (ddof = 1, as the reference), and the Monte Carlo variance of ``crp``.
    """
    K = (moments.shape[-1] - 1) // 3
    S = moments.shape[-2]
    T = np.asarray(trials, np.float64)[..., None, None]
    e1, e2, e12, ess = (moments[..., :K] / T, moments[..., K:2 * K] / T, moments[..., 2 * K:3 * K] / T,
                        moments[..., 3 * K:] / T)
    M = e1.sum(-1, keepdims=True)
    ok = M > 0
    safe = np.where(ok, M, 1.0)
    crp_s = np.where(ok, e1 / safe, 0.0)  # (..., S, K)
    ey2 = (e2 - 2 * crp_s * e12 + crp_s**2 * ess) / safe**2  # E[y^2]
    var_s = np.where(ok, np.maximum(ey2, 0) / np.maximum(T - 1, 1), 0.0)
    crp = crp_s.mean(-2)
    sem = crp_s.std(-2, ddof=1) / math.sqrt(S) if S > 1 else np.zeros_like(crp)
    return crp, sem, var_s.sum(-2) / S**2


#: Units (points' batches of trials) simulated side by side as one flat batch on CPUs: lanes of 4 x 320 trials
#: ran 1.3x faster than a ``vmap`` over units (13.7 against 10.0-10.3 M recall steps/s on a 2-core CPU; lanes of
#: 2 and 8 were slower). The width is fixed, so results do not depend on the chunk. (Measured with units of 16;
#: with the adaptive path's units of 8 a lane holds 640 trials, and lanes of 8 ran 4-5% slower with two devices.)
CPU_LANE = 4


def lane_multiple() -> int:
    """What a chunk of :func:`_chunk_moments` must be a multiple of on this backend."""
    return CPU_LANE if jax.default_backend() == "cpu" else 1


def _lane_moments(pkeys, points, config: SimConfig, trials: int, estimators: tuple[str, ...],
                  stratified: bool = False):
    """Moment sums of a few points' ``trials`` x ``n_starts`` trials, all side by side in one flat batch, point
    ``i`` drawing from ``pkeys[i]``: (points, estimators, starts, 4 * lags + 1), the trials' moment sums
    (:func:`start_moments`, the first ``3 * lags + 1``) and the batch's mean per start and lag (the last ``lags``:
    across independent batches they give the variance that holds for ``stratified`` uniforms, see
    :func:`_uniforms` and :func:`batch_moments`)."""
    dtype = config.jnp_dtype
    S, L = config.n_starts, points.shape[0]
    u = jax.vmap(lambda k: _uniforms(k, config, trials, jnp.arange(S), dtype, stratified), out_axes=1)(pkeys)
    res = simulate_points(u.reshape(u.shape[0], -1), jnp.tile(jnp.repeat(jnp.arange(S, dtype=jnp.int32), trials), L),
                          jnp.repeat(jnp.arange(L, dtype=jnp.int32), S * trials),
                          point_tables(points, config.list_length, dtype), config, estimators=estimators)

    def both(x):  # x: (lags, S * T) of one point
        mean = _tree_sum(x.reshape(-1, S, trials), -1).T / trials  # (S, lags)
        return jnp.concatenate([start_moments(x, S, trials), mean], axis=-1)

    per = [per_trial_values(res, e).reshape(-1, L, S * trials) for e in estimators]
    return jnp.stack([jax.vmap(both, in_axes=1)(x) for x in per], axis=1)


def batch_moments(out: np.ndarray) -> np.ndarray:
    """Kernel output (..., starts, 4 * lags + 1) (:func:`_lane_moments`) -> (..., 2, starts, 3 * lags + 1) float64:
    the trials' moment sums and those of the batch mean counted as one trial (computed here in float64: summed
    over independent batches, :func:`finish_moments` then gives the variance across batches without the
    cancellation that float32 sums of squares would leave)."""
    out = np.asarray(out, np.float64)
    K = (out.shape[-1] - 1) // 4
    m = out[..., 3 * K + 1:]
    s = m.sum(-1, keepdims=True)
    return np.stack([out[..., :3 * K + 1], np.concatenate([m, m * m, m * s, s * s], axis=-1)], axis=-3)


def _chunk_moments(pkeys, points, config: SimConfig, trials: int, estimators: tuple[str, ...] = ESTIMATORS,
                   stratified: bool = False):
    """:func:`_lane_moments` of ``trials`` x ``n_starts`` trials of each of a chunk's points; point ``i`` draws
    from ``pkeys[i]`` (start ``s`` from ``fold_in(pkeys[i], s)``). Each estimator on the same trials:
    (points, estimators, starts, 4 * lags + 1).

    On CPUs the points run in lanes of :data:`CPU_LANE` (one after another; the chunk must hold a multiple of
    it, :func:`lane_multiple`); on accelerators they are ``vmap``-ped."""
    U = points.shape[0]
    if jax.default_backend() != "cpu":  # every point its own batch, all of them vmapped
        return jax.vmap(lambda k, p: _lane_moments(k[None], p[None], config, trials, estimators, stratified)[0])(
            pkeys, points)
    if U % CPU_LANE:
        raise ValueError(f"a chunk of {U} points is not a whole number of lanes of {CPU_LANE}")
    lanes = (pkeys.reshape(U // CPU_LANE, CPU_LANE), points.reshape(U // CPU_LANE, CPU_LANE, 3))
    out = jax.lax.map(lambda a: _lane_moments(*a, config, trials, estimators, stratified), lanes)
    return out.reshape((U,) + out.shape[2:])


@partial(jax.jit, static_argnames=("config", "trials", "unit_trials"), compiler_options=KERNEL_COMPILER_OPTIONS)
def _pilot_chunk(key, indices, points, *, config: SimConfig, trials: int, unit_trials: int | None = None):
    """Per point, both estimators on the same trials: (1, 2, starts, 4 * lags + 1) as :func:`_chunk_moments`;
    with ``unit_trials``, (batches, ...) of ``trials // unit_trials`` stratified batches (batch ``b`` of point
    ``i`` from ``fold_in(fold_in(key, i), b)``)."""
    pkeys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
    if unit_trials is None:
        return _chunk_moments(pkeys, points, config, trials)[:, None]
    P, n = points.shape[0], trials // unit_trials
    keys = jax.vmap(lambda k: jax.vmap(lambda b: jax.random.fold_in(k, b))(jnp.arange(n)))(pkeys).reshape(-1)
    mom = _chunk_moments(keys, jnp.repeat(points, n, 0), config, unit_trials, stratified=True)
    return mom.reshape((P, n) + mom.shape[1:])


def estimator_variances(
    key: jax.Array,
    points,
    *,
    config: SimConfig = SimConfig(),
    trials: int = 64,
    unit_trials: int | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo variance of every CRP entry, for ``sampled`` and ``rao_blackwell`` at ``trials`` per start.

    Both come from the same simulated trials (per-trial influences of the paper's per-start normalisation, see
    :func:`finish_moments`), so their ratio carries little seed noise. The sampled one is always that of
    independent trials. With ``unit_trials`` (a divisor of ``trials``), the trials are drawn in stratified
    batches of that many per start, as :mod:`cmrjax.adaptive` draws them (:func:`_uniforms`), and the
    Rao-Blackwellised variance is the one of that design, measured across the ``trials // unit_trials``
    batches (every trial still has the distribution of an independent one, so the sampled variance of
    independent trials is measured from them as well).

    Returns:
      ``(var_sampled, var_rao_blackwell)``, each (N, lags) float64.
    """
    points = validate_params(points)
    _check(trials, "rao_blackwell", "simulate")
    if unit_trials is not None and (not isinstance(unit_trials, (int, np.integer)) or unit_trials < 1
                                    or trials % unit_trials or trials // unit_trials < 2):
        raise ValueError(f"unit_trials={unit_trials!r} must be a positive divisor of trials={trials} giving at least"
                         " two batches")
    N = len(points)
    nd = len(jax.devices())
    chunk = _rows_per_chunk(chunk_size or min(default_chunk_size(config, trials, nd), max(N, 1)), nd,
                            lane_multiple())
    dtype = np.float64 if config.dtype == "float64" else np.float32
    K = 2 * config.max_lag + 1
    vs, vr = np.empty((N, K)), np.empty((N, K))
    for sel, pts, idx in _padded_chunks(points, np.arange(N), np.arange(N), chunk, dtype):
        out = _pilot_chunk(key, jnp.asarray(idx), jnp.asarray(pts), config=config, trials=trials,
                           unit_trials=unit_trials)
        mom = batch_moments(np.asarray(out)[: len(sel)]).sum(1)  # (points, 2, 2, starts, 3 * lags + 1)
        vs[sel] = finish_moments(mom[:, 0, 0], trials)[2]
        vr[sel] = (finish_moments(mom[:, 1, 0], trials) if unit_trials is None
                   else finish_moments(mom[:, 1, 1], trials // unit_trials))[2]
    return vs, vr


def trials_to_match(var_sampled: np.ndarray, var_rb: np.ndarray, *, trials: int | np.ndarray,
                    match_trials: int | np.ndarray = 1000, min_sd: float = 1e-5) -> np.ndarray:
    """Rao-Blackwellised trials per start whose variance matches ``match_trials`` sampled ones on every lag.

    ``var_*`` are (N, lags) variances at ``trials`` per start (one count, or (N,) counts; see
    :func:`estimator_variances`); ``match_trials`` is one count or (N,) counts. A lag needs
    ``match_trials * var_rb / var_sampled``; a point the most any lag needs. Two guards against a pilot's noise:
    the sampled variance is taken as at least the Rao-Blackwellised one (conditioning never adds variance, so
    a smaller estimate is noise, as at a rare lag where the pilot saw no transition), which caps the count at
    ``match_trials``; and a lag's target standard deviation at ``match_trials`` is at least ``min_sd``.
    Returns (N,) float (unrounded).
    """
    vs, vr = np.asarray(var_sampled), np.asarray(var_rb)
    T = np.asarray(trials, np.float64)[..., None]  # a count, or one per point
    match = np.asarray(match_trials, np.float64)[..., None]
    target = np.maximum(np.maximum(vs, vr) * (T / match), min_sd**2)
    return (vr * T / target).max(axis=1)


def grid_points(beta_enc, beta_rec, gamma_ft) -> np.ndarray:
    """The product grid as (n_e * n_r * n_g, 3) points in C order (beta_enc slowest)."""
    e, r, g = np.meshgrid(np.asarray(beta_enc, float), np.asarray(beta_rec, float), np.asarray(gamma_ft, float),
                          indexing="ij")
    return np.stack([e.ravel(), r.ravel(), g.ravel()], -1)


def simulate_grid(key: jax.Array, beta_enc, beta_rec, gamma_ft, **kwargs):
    """:func:`simulate_crp` over a product grid, returned as a :class:`cmrjax.io.CRPGrid`.

    ``kwargs`` are those of :func:`simulate_crp`. Axis values must lie in [0, 1].
    """
    from cmrjax.io import CRPGrid

    axes = [np.atleast_1d(np.asarray(a, float)) for a in (beta_enc, beta_rec, gamma_ft)]
    res = simulate_crp(key, grid_points(*axes), **kwargs)
    shape = tuple(len(a) for a in axes) + (res.crp.shape[-1],)
    config = kwargs.get("config", SimConfig())
    meta = dict(trials=kwargs.get("trials", 1000), estimator=kwargs.get("estimator", "sampled"),
                corners=kwargs.get("corners", "closed_form"), list_length=config.list_length,
                n_starts=config.n_starts, max_recalls=config.max_recalls, max_lag=config.max_lag,
                dtype=config.dtype)
    return CRPGrid(crp=res.crp.reshape(shape), crp_sem=res.crp_sem.reshape(shape), beta_enc=axes[0],
                   beta_rec=axes[1], gamma_ft=axes[2], lags=res.lags, metadata=meta)


def simulate_recalls(key: jax.Array, params: CMRParams, starts, trials: int, config: SimConfig = SimConfig()):
    """Recall sequences of one parameter point, for analyses beyond the lag-CRP.

    Args:
      key: PRNG key.
      params: scalar CMR parameters.
      starts: (starts,) cue items.
      trials: trials per start.
      config: simulation settings (``n_starts`` is ignored: ``starts`` are given).

    Returns:
      int32 array (starts, trials, max_recalls): recalled items in order, -1 after the trial ended.
    """
    validate_params(np.asarray(CMRParams(*map(np.asarray, params)).to_points()).reshape(1, 3), "params")
    _check(trials, "sampled", "simulate")
    return _simulate_recalls(key, params, jnp.asarray(starts, jnp.int32), trials=trials, config=config)


@partial(jax.jit, static_argnames=("trials", "config"), compiler_options=KERNEL_COMPILER_OPTIONS)
def _simulate_recalls(key, params, starts, *, trials: int, config: SimConfig):
    dtype = config.jnp_dtype
    params = CMRParams(*(jnp.asarray(p, dtype) for p in params))
    tables = power_tables(params.beta_enc, config.list_length, dtype)
    S = starts.shape[0]
    u = _uniforms(key, config, trials, jnp.arange(S), dtype)
    res = simulate_trials(u, jnp.repeat(starts, trials), params, tables, config, record=True)
    return res.recalls.reshape(config.max_recalls, S, trials).transpose(1, 2, 0)
