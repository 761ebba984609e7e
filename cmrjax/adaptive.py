r"""Per-point trial counts at a target precision: a grid at the paper's precision for the least work.

How many Rao-Blackwellised trials match the precision of the paper's sampled estimator at 1,000 trials varies
across the paper's grid from a handful (low ``beta_enc``) to several hundred (high ``beta_enc`` with low
``beta_rec``; ``benchmarks/bench_simulate.py`` measures it). :func:`simulate_crp_adaptive` therefore gives each
point its own count, and runs every point in *units* of ``unit_trials`` trials per start:

0. with ``stratify`` (the default), a unit draws each start's trials as a Latin hypercube: at every step, its
   ``unit_trials`` uniforms fall one in each of ``unit_trials`` equal strata, in a random order
   (:func:`cmrjax.simulate._uniforms`). Every trial is still distributed as an independent one, so the estimate
   keeps its expectation, but where the draws land is balanced across the unit. Where the context drifts
   slowly (high ``beta_enc``, low ``beta_rec``), what the Rao-Blackwellised estimator leaves is mostly the sum
   of many small effects of single draws, which this balances out: measured at 40 random grid points
   (``benchmarks/bench_simulate.py``, section 2), the trials needed fall from a mean of 86 per start with
   independent trials to 65 in units of 8 and 59 in units of 16 (medians 46, 30, 28). The far lags (+-8),
   whose rare transitions set most points' counts, gain least. The trials of a unit are not independent, so
   the Rao-Blackwellised variance is measured across units (independent replicates; moments of the unit means
   summed in float64, :func:`cmrjax.simulate.batch_moments`). With few units that measurement is noisy
   (``n_starts`` degrees of freedom per lag after a two-unit pilot), so counts are sized by its one-sided upper
   confidence bound at :data:`UPPER_Z` standard deviations (:func:`upper_variance_factor`), capped at
   ``unit_trials / (unit_trials - 1)`` times the variance of independent trials measured on the same trials,
   which a Latin hypercube never exceeds in expectation (Owen 1997). The sampled estimator's variance, the
   target, is that of independent trials, which every trial's own distribution gives;
1. a pilot of ``pilot_trials`` per start (at least two units) runs both estimators on the same trials and
   measures, for every CRP entry, the Monte Carlo variance of each (per-trial influences of the per-start
   normalisation, accumulated as moment sums so units add up: :func:`cmrjax.simulate.finish_moments`);
2. in rounds, one per share ``f`` of ``schedule``, each point is topped up to ``f`` times the count that makes
   the Rao-Blackwellised variance at most the sampled one at ``match_trials`` on every lag
   (:func:`cmrjax.simulate.trials_to_match`), in whole units and never below what it has;
3. before each round the variances are measured again on all of the point's trials so far (every unit runs
   both estimators), so later rounds rest on more units (more degrees of freedom, a tighter bound). A pilot's
   estimate is noisy and its maximum over lags biased upwards; allocating part of the need first and
   measuring again spends less than trusting either.

   Why units of 8, a pilot of 16 and three rounds (0.5, 0.8, 1): most of the paper's grid needs few trials
   (measured on 240 random points against 1,024 trials per start in units of 16: 46% need 16 or fewer, a mean
   of 6.7), and the pilot is every point's floor. Replaying allocation rules on the stored units of those 240
   points and of 240 others (every rule on the same units, 10 orders each), the former rule (units of 16, a
   pilot of 32, rounds 0.8 and 1, bound at 1 SD) spent 71.3 and 75.5 trials per start and left 0.2% and 0.2%
   of points below 0.9x their need; this one 66.1 and 70.7, with 0.0% and 0.2%. A bound at 1.5 SD spent 63.7
   and 68.2 but left 0.2% and 0.5% short; a pilot of three units was as safe for 2% more. On the full grid: a
   mean of 65 trials per start against 70, 36.3-37.7 s against 39.6-41.5 s (CLI, same machine, before the
   trials-major kernel of :func:`cmrjax.simulate.simulate_points`, with which it takes ~23 s). On the
   benchmark's own 240 points (``--allocation``) it spent 72.5 against the former 71.7, with 0.8% of points
   below 0.9x their need (none below 0.84x);
4. its CRP is estimated from all of its trials, the pilot's included (their Rao-Blackwellised half).

Points with ``beta_rec`` = 0 need no trials: the context never moves there, and
:func:`cmrjax.closed_form.static_context_crp_per_start` gives the simulation's expectation exactly (reported
with 0 trials; the paper's corner at ``gamma_ft`` = 0 still takes precedence when ``corners="closed_form"``).

Every unit has one shape, so a run compiles once whatever the counts, and counts are multiples of
``unit_trials`` rather than powers of two.

Randomness: unit ``b`` of point ``i`` draws start ``s`` from ``fold_in(fold_in(fold_in(key, i), TAG), b)``
then ``fold_in(., s)``: results depend on the key and the point's index only, bit for bit, whatever the
chunking, grouping, device count or resumption (a unit's moments are summed in a fixed order). These streams
differ from those of a fixed ``trials`` run of :mod:`cmrjax.simulate`.
Using the pilot's trials in the estimate makes the count depend on the same draws as the estimate through
their variance; the effect on the mean is of higher order than the Monte Carlo error (as in any two-stage
sequential design) and the benchmark's comparison with the reference grid shows none.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cmrjax.closed_form import is_corner
from cmrjax.model import SimConfig, validate_params
from cmrjax.simulate import (ESTIMATORS, KERNEL_COMPILER_OPTIONS, CRPResult, _batch_sharding, _check,
                             _chunk_from_budget, _chunk_moments, _corner_results, _rows_per_chunk, _static_results,
                             _step_bytes, batch_moments, finish_moments, lane_multiple, trials_to_match)

__all__ = ["simulate_crp_adaptive", "iter_simulate_adaptive", "finish_moments"]

_UNIT_TAG = 0x0A0A_7E57  # separates unit streams from those of fixed-count runs
#: trials per start in one unit of work (every count is a multiple), and the pilot's trials per start
UNIT_TRIALS = 8
PILOT_TRIALS = 16
#: shares of the measured need allocated in successive rounds, each after measuring the variances again on all of
#: a point's trials so far (steps 2 and 3); the last is 1
SCHEDULE = (0.5, 0.8, 1.0)
#: stratified units size counts by this one-sided upper confidence bound of their variance, in standard normal
#: units (2: the 98th percentile), because it is measured between few units (step 0)
UPPER_Z = 2.0


def upper_variance_factor(dof, z: float) -> np.ndarray:
    """``dof / chi2_dof(p)`` for the lower-tail probability ``p = Phi(-z)`` (Wilson-Hilferty): the factor that
    turns a variance estimate with ``dof`` degrees of freedom into a one-sided upper confidence bound."""
    dof = np.maximum(np.asarray(dof, np.float64), 1.0)
    c = 2 / (9 * dof)
    return np.asarray(1 / np.maximum(1 - c - z * np.sqrt(c), 0.05) ** 3)


def _unit_key(key, index, block):
    """The key of unit ``block`` of point ``index``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, index), _UNIT_TAG), block)


@partial(jax.jit, static_argnames=("config", "unit_trials", "estimators", "stratified", "mesh"),
         compiler_options=KERNEL_COMPILER_OPTIONS)
def _units_chunk(key, indices, blocks, points, *, config: SimConfig, unit_trials: int, estimators: tuple[str, ...],
                 stratified: bool, mesh=None):
    """Moment sums and means of a chunk of units: (units, estimators, starts, 4 * lags + 1) (see
    :func:`cmrjax.simulate._lane_moments`).

    With a ``mesh``, each device runs the same program on its share of the units (``shard_map``), so results
    do not depend on the device count."""

    def local(indices, blocks, points):
        keys = jax.vmap(lambda i, b: _unit_key(key, i, b))(indices, blocks)
        return _chunk_moments(keys, points, config, unit_trials, estimators, stratified)

    if mesh is None:
        return local(indices, blocks, points)
    spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
        indices, blocks, points)


class _UnitRunner:
    """Runs lists of (point, block) units in fixed-size chunks (one compilation per estimator set)."""

    def __init__(self, key, config: SimConfig, unit_trials: int, devices, chunk: int | None, stratified: bool = True):
        self.key, self.config, self.tb, self.stratified = key, config, unit_trials, stratified
        self.devices = list(jax.devices()) if devices is None else list(devices)
        nd = len(self.devices)
        budget = _chunk_from_budget(_step_bytes(config, config.n_starts * unit_trials), nd)
        self.chunk = _rows_per_chunk(chunk or budget, nd, lane_multiple())
        self.sharding = _batch_sharding(self.devices, "units")
        self.dtype = np.float64 if config.dtype == "float64" else np.float32

    def _dispatch(self, points, indices, blocks, estimators, lo: int, hi: int):
        """Start the chunk of units ``lo:hi`` (padded to the chunk size); JAX returns before it has finished."""
        sel = np.concatenate([np.arange(lo, hi), np.full(self.chunk - (hi - lo), hi - 1)])
        arrays = [jnp.asarray(indices[sel].astype(np.uint32)), jnp.asarray(blocks[sel].astype(np.uint32)),
                  jnp.asarray(points[sel].astype(self.dtype))]
        if self.sharding is not None:
            arrays = [jax.device_put(a, self.sharding) for a in arrays]
        return _units_chunk(self.key, *arrays, config=self.config, unit_trials=self.tb, estimators=estimators,
                            stratified=self.stratified, mesh=None if self.sharding is None else self.sharding.mesh)

    def chunks(self, points, indices, blocks, estimators: tuple[str, ...]) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(lo, hi, moments)`` for consecutive chunks of the units ``(indices[u], blocks[u])``, moments
        (hi - lo, estimators, 2, starts, 3 * lags + 1) float64. The next chunk is dispatched before this one is
        read back, so the host's work on one chunk overlaps the devices' work on the next."""
        U = len(indices)
        pending = None
        for lo in [*range(0, U, self.chunk), U]:
            nxt = (lo, min(lo + self.chunk, U)) if lo < U else None
            started = None if nxt is None else self._dispatch(points, indices, blocks, estimators, *nxt)
            if pending is not None:
                (plo, phi), m = pending
                yield plo, phi, batch_moments(np.asarray(m)[: phi - plo])
            pending = None if nxt is None else (nxt, started)

    def __call__(self, points, indices, blocks, estimators: tuple[str, ...]) -> np.ndarray:
        """Moments (units, estimators, 2, starts, 3 * lags + 1) float64 of units ``(indices[u], blocks[u])``."""
        K = 2 * self.config.max_lag + 1
        out = np.empty((len(indices), len(estimators), 2, self.config.n_starts, 3 * K + 1))
        for lo, hi, m in self.chunks(points, indices, blocks, estimators):
            out[lo:hi] = m
        return out

    def add_to(self, acc: np.ndarray, rows: np.ndarray, points, indices, blocks, estimators: tuple[str, ...]) -> None:
        """``acc[rows[u]] += moments of unit u``, unit by unit in order (so the sums do not depend on the chunk
        size), one chunk at a time (memory stays bounded)."""
        for lo, hi, m in self.chunks(points, indices, blocks, estimators):
            _add_in_order(acc, rows[lo:hi], m)


def _add_in_order(acc: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``np.add.at(acc, rows, values)`` for sorted ``rows``, in the same order of additions (bit for bit), but
    vectorised over rows: the p-th value of every row is added in pass p (np.add.at took 2 ms a chunk)."""
    if not len(rows):
        return
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    length = np.diff(np.r_[first, len(rows)])
    for p in range(int(length.max())):
        run = first[length > p]
        acc[rows[run]] += values[run + p]


def _expand(n_units: np.ndarray, first: np.ndarray | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For per-row unit counts: (row of each unit, block index of each unit starting at ``first``)."""
    rows = np.repeat(np.arange(len(n_units)), n_units)
    starts = np.repeat(np.cumsum(n_units) - n_units, n_units)
    return rows, np.arange(len(rows)) - starts + np.repeat(np.broadcast_to(first, n_units.shape), n_units)


def _match_per_point(match_trials, N: int) -> np.ndarray:
    """``match_trials`` (one count, or one per point) as (N,) int64; anything else is a clear ``ValueError``."""
    m = np.asarray(match_trials)
    if m.ndim == 0:
        if not isinstance(match_trials, (int, np.integer)) or match_trials < 1:
            raise ValueError(f"match_trials={match_trials!r} must be a positive integer or one per point")
        return np.full(N, int(match_trials), np.int64)
    if m.shape != (N,) or not np.issubdtype(m.dtype, np.integer) or (m < 1).any():
        raise ValueError(f"match_trials must be a positive integer or ({N},) positive integers, one per point; got "
                         f"an array of shape {m.shape} and dtype {m.dtype}")
    return m.astype(np.int64)


def iter_simulate_adaptive(
    key: jax.Array,
    points,
    *,
    config: SimConfig = SimConfig(),
    match_trials: int | np.ndarray = 1000,
    pilot_trials: int = PILOT_TRIALS,
    unit_trials: int = UNIT_TRIALS,
    max_trials: int = 4096,
    min_sd: float = 1e-5,
    schedule: tuple[float, ...] = SCHEDULE,
    stratify: bool = True,
    corners: str = "closed_form",
    group_size: int = 1024,
    indices: np.ndarray | None = None,
    chunk_size: int | None = None,
    devices: list | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Simulate group by group, yielding ``(indices, crp, crp_sem, trials)`` for each finished group of points.

    ``trials`` are the per-start counts used (0 for closed-form corners and exact ``beta_rec`` = 0 points).
    Arguments as in :func:`simulate_crp_adaptive`; ``indices`` are the points' global indices (default
    ``0..N-1``), which fix their random streams (the basis of ``--resume``); ``group_size`` points are finished
    at a time.
    """
    points = validate_params(points)
    N = len(points)
    indices = np.arange(N) if indices is None else np.asarray(indices)
    if indices.shape != (N,):
        raise ValueError(f"indices must have shape ({N},), got {indices.shape}")
    for name, v in (("pilot_trials", pilot_trials), ("unit_trials", unit_trials), ("max_trials", max_trials),
                    ("group_size", group_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer")
    match = _match_per_point(match_trials, N)
    schedule = tuple(schedule)
    if (not schedule or schedule[-1] != 1 or any(not 0 < f <= 1 for f in schedule)
            or any(a > b for a, b in zip(schedule, schedule[1:]))):
        raise ValueError(f"schedule={schedule!r} must be non-decreasing shares in (0, 1] ending with 1")
    _check(1, "rao_blackwell", corners)
    config.jnp_dtype  # raises a clear error when float64 is asked for without x64
    tb = unit_trials
    n_pilot = max(1 + stratify, -(-pilot_trials // tb))  # pilot units per point (stratified: variances need two)
    if n_pilot * tb < 2:
        raise ValueError("pilot_trials must give at least 2 trials per start (variances need two)")
    max_units = max(n_pilot, max_trials // tb)
    run = _UnitRunner(key, config, tb, devices, chunk_size, stratify)
    corner = is_corner(points) if corners == "closed_form" else np.zeros(N, bool)
    if corner.any():
        ci = np.flatnonzero(corner)
        yield (indices[ci],) + _corner_results(points[ci], config) + (np.zeros(len(ci), np.int64),)
    static = ~corner & (points[:, 1] == 0)
    if static.any():
        si = np.flatnonzero(static)
        yield (indices[si],) + _static_results(points[si], config) + (np.zeros(len(si), np.int64),)
    todo = np.flatnonzero(~corner & ~static)
    for lo in range(0, len(todo), group_size):
        g = todo[lo: lo + group_size]
        pts, idx = points[g], indices[g]
        done = np.full(len(g), n_pilot)
        rows, blocks = _expand(done)
        mom = np.zeros((len(g), 2, 2, config.n_starts, 3 * (2 * config.max_lag + 1) + 1))
        run.add_to(mom, rows, pts[rows], idx[rows], blocks, ESTIMATORS)  # mom: (G, 2, 2, S, 3K+1)
        for fraction in schedule:
            var_s = finish_moments(mom[:, 0, 0], done * tb)[2]  # (G, K): independent sampled trials
            var_r = finish_moments(mom[:, 1, 0], done * tb)[2]  # as if the trials were independent
            if stratify:  # measured across units (an upper confidence bound, see UPPER_Z), and in expectation at
                # most tb / (tb - 1) times the variance of independent trials (Owen 1997)
                up = upper_variance_factor(config.n_starts * (done - 1), UPPER_Z)[:, None]
                var_r = np.minimum(finish_moments(mom[:, 1, 1], done)[2] * up, var_r * tb / max(tb - 1, 1))
            need = trials_to_match(var_s, var_r, trials=done * tb, match_trials=match[g], min_sd=min_sd)
            want = np.ceil(fraction * np.nan_to_num(need, nan=np.inf, posinf=max_units * tb) / tb)
            want = np.clip(want, done, max_units).astype(np.int64)
            if (want > done).any():
                rows, blocks = _expand(want - done, done)
                run.add_to(mom, rows, pts[rows], idx[rows], blocks, ESTIMATORS)
            done = want
        crp, sem, _ = finish_moments(mom[:, 1, 0], done * tb)
        yield idx, crp, sem, done * tb


def simulate_crp_adaptive(
    key: jax.Array,
    points,
    *,
    config: SimConfig = SimConfig(),
    match_trials: int | np.ndarray = 1000,
    pilot_trials: int = PILOT_TRIALS,
    unit_trials: int = UNIT_TRIALS,
    max_trials: int = 4096,
    min_sd: float = 1e-5,
    schedule: tuple[float, ...] = SCHEDULE,
    stratify: bool = True,
    corners: str = "closed_form",
    chunk_size: int | None = None,
    devices: list | None = None,
    progress: bool | Callable = False,
) -> tuple[CRPResult, np.ndarray]:
    """Rao-Blackwellised lag-CRPs with per-point trial counts matching ``match_trials`` sampled trials.

    Args:
      key: a ``jax.random`` key.
      points: (N, 3) array of (beta_enc, beta_rec, gamma_ft), each in [0, 1].
      config: list length, starts, maximum recalls, lag window, dtype.
      match_trials: the sampled estimator's trial count per start whose precision every CRP entry must reach;
        one count, or (N,) counts, one per point (more precision where it matters, as ``cmrjax simulate
        --grid fit-surface`` asks for at low ``beta_enc``).
      pilot_trials: trials per start of the pilot (rounded up to whole units, at least two with ``stratify``);
        they count towards the estimate.
      unit_trials: trials per start in one unit of work; counts are multiples of it.
      max_trials: the most trials per start any point gets.
      min_sd: floor of every lag's target standard deviation (see :func:`cmrjax.simulate.trials_to_match`).
      schedule: non-decreasing shares of the measured need allocated in successive rounds, the variances
        measured again on all trials before each (steps 2 and 3 above); the last is 1. ``(1.0,)``: one
        allocation straight from the pilot.
      stratify: draw each unit's trials as a Latin hypercube per start (step 0 above); ``False``: independent
        trials, variances measured between trials.
      corners: ``"closed_form"`` or ``"simulate"``, as in :func:`cmrjax.simulate.simulate_crp`.
      chunk_size: units per compiled chunk (default from a memory budget).
      devices: devices to shard units over (default: all).
      progress: show a tqdm progress bar.

    Returns:
      ``(result, trials)``: a :class:`cmrjax.simulate.CRPResult` and the (N,) trials per start used (0 at
      closed-form corners and at ``beta_rec`` = 0, computed exactly).

    Examples:
      >>> import jax, numpy as np
      >>> from cmrjax import SimConfig
      >>> res, trials = simulate_crp_adaptive(jax.random.key(0), np.array([[0.3, 0.7, 0.5]]),
      ...                                     config=SimConfig(n_starts=2), match_trials=50)
      >>> res.crp.shape, int(trials[0]) % 8
      ((1, 17), 0)
    """
    points = validate_params(points)
    N, K = len(points), 2 * config.max_lag + 1
    crp, sem = np.full((N, K), np.nan), np.full((N, K), np.nan)
    trials = np.zeros(N, np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N, unit="pt", desc="simulate")
    for idx, c, s, t in iter_simulate_adaptive(key, points, config=config, match_trials=match_trials,
                                               pilot_trials=pilot_trials, unit_trials=unit_trials,
                                               max_trials=max_trials, min_sd=min_sd, schedule=schedule,
                                               stratify=stratify, corners=corners,
                                               group_size=256 if progress else 1024, chunk_size=chunk_size,
                                               devices=devices):
        crp[idx], sem[idx], trials[idx] = c, s, t
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return CRPResult(crp=crp, crp_sem=sem, lags=config.lags, points=points), trials
