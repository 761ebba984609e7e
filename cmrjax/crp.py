"""Lag-CRP definitions on recall sequences, with an explicit lag axis.

Two different quantities share the name "lag-CRP"; they are separate functions here and must not be mixed:

* :func:`crp_paper` -- the original study's transition histogram (Ji-An et al. 2024): per trial, count the
  lag of every transition (the first from the cue ``s0``, then from the previous recall) inside the window,
  divide by the trial's number of recalls, average over trials, normalise to sum 1. Lag 0 (a repeat of the
  previous item) is a possible outcome; repeats count.
* :func:`crp_conditional` -- the conventional conditional response probability (Kahana 1996; psifr's
  ``lag_crp``): for each transition between two first recalls, ``actual[lag] += 1`` and ``possible[lag] += 1``
  for every lag to an item not yet recalled; CRP = actual / possible. Transitions to or from a repeat are
  excluded, lag 0 is impossible.

Recall sequences are int arrays (trials, recalls) of item indices in ``0..list_length-1`` padded with -1
after the last recall (as :func:`cmrjax.simulate.simulate_recalls` returns them).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def lags(max_lag: int) -> np.ndarray:
    """The lag axis ``-max_lag .. +max_lag``."""
    return np.arange(-max_lag, max_lag + 1)


def _validate(recalls, list_length: int, max_lag: int) -> jax.Array:
    recalls = jnp.asarray(recalls)
    if recalls.ndim != 2:
        raise ValueError(f"recalls must have shape (trials, recalls), got {recalls.shape}")
    if not jnp.issubdtype(recalls.dtype, jnp.integer):
        raise ValueError(f"recalls must be integer item indices, got dtype {recalls.dtype}")
    if max_lag < 1:
        raise ValueError(f"max_lag={max_lag} must be >= 1")
    r = np.asarray(recalls)
    if (r >= list_length).any() or (r < -1).any():
        raise ValueError(f"recalls must lie in 0..{list_length - 1} (or -1 for padding)")
    return recalls


def paper_lag_counts(recalls, starts, list_length: int, max_lag: int) -> tuple[jax.Array, jax.Array]:
    """Per-trial transition counts of the paper's CRP.

    Args:
      recalls: (trials, recalls) int, -1 padded.
      starts: (trials,) the cue item of each trial (the first transition is measured from it).
      list_length: number of items.
      max_lag: window half-width.

    Returns:
      ``(counts, n_recalls)``: (trials, 2*max_lag+1) transitions per lag inside the window, and (trials,)
      the number of recalls.

    Examples:
      >>> counts, n = paper_lag_counts([[3, 1, 1, -1]], [2], list_length=5, max_lag=2)
      >>> counts.tolist(), n.tolist()   # lags from 2: +1, -2, 0
      ([[1, 0, 1, 1, 0]], [3])
    """
    recalls = _validate(recalls, list_length, max_lag)
    starts = jnp.broadcast_to(jnp.asarray(starts), recalls.shape[:1])
    prev = jnp.concatenate([starts[:, None], recalls[:, :-1]], axis=1)
    valid = recalls >= 0
    lag = recalls - prev
    d = jnp.arange(-max_lag, max_lag + 1)
    hit = valid[..., None] & (lag[..., None] == d[None, None])
    return hit.sum(axis=1), valid.sum(axis=1)


def crp_paper(recalls, starts, list_length: int, max_lag: int = 8) -> jax.Array:
    """The paper's lag-CRP of a set of trials: (2*max_lag+1,), summing to 1.

    Each trial contributes its window counts divided by its number of recalls (trials without recalls
    contribute nothing); the mean over trials is normalised to sum 1 over the window.
    """
    counts, n = paper_lag_counts(recalls, starts, list_length, max_lag)
    per_trial = jnp.where(n[:, None] > 0, counts / jnp.maximum(n, 1)[:, None], 0.0)
    mean = per_trial.mean(axis=0)
    return mean / mean.sum()


class ConditionalCounts(NamedTuple):
    """Counts of the conditional lag-CRP (psifr convention).

    Attributes:
      actual: (lags,) transitions made at each lag.
      possible: (lags,) transitions that were available at each lag.
      lags: (lags,) the lag axis.
    """

    actual: jax.Array
    possible: jax.Array
    lags: np.ndarray

    @property
    def crp(self) -> jax.Array:
        """actual / possible, NaN where no transition was possible (e.g. lag 0)."""
        return jnp.where(self.possible > 0, self.actual / jnp.where(self.possible > 0, self.possible, 1), jnp.nan)


def crp_conditional(recalls, list_length: int, max_lag: int = 8, starts=None) -> ConditionalCounts:
    """The conventional lag-CRP, conditional on availability (psifr's ``lag_crp`` convention).

    A transition from recall ``i`` to recall ``i+1`` counts only if both are first recalls of their items (a
    transition to or from a repeat is dropped). ``possible`` counts, for each counted transition, every lag
    from the current item to an item not yet recalled (the current one excluded).

    Args:
      recalls: (trials, recalls) int, -1 padded.
      list_length: number of items.
      max_lag: window half-width (transitions beyond it still count as made; they are just not reported).
      starts: optional (trials,) cue items, treated as an initial recall (as in the paper's simulations,
        where recall starts from a cued item). Default: no cue, the first transition is recall 1 -> 2.

    Returns:
      :class:`ConditionalCounts` with ``actual``, ``possible`` (summed over trials) and ``.crp``.

    Examples:
      Study 1..4 (items 0..3), recall 2 -> 0 -> 3: lags -2 then +3; item 1 was available at lag -1 from 2
      and at lag +1 from 0.

      >>> c = crp_conditional([[2, 0, 3]], list_length=4, max_lag=3)
      >>> c.actual.tolist()
      [0, 1, 0, 0, 0, 0, 1]
      >>> c.possible.tolist()
      [0, 1, 1, 0, 2, 0, 1]
    """
    recalls = _validate(recalls, list_length, max_lag)
    if starts is not None:
        recalls = jnp.concatenate([jnp.broadcast_to(jnp.asarray(starts), recalls.shape[:1])[:, None], recalls], 1)
    d = jnp.arange(-max_lag, max_lag + 1)
    items = jnp.arange(list_length)

    def one_trial(seq):
        def step(recalled, pair):
            prev, nxt = pair
            prev_first = (prev >= 0) & ~recalled[jnp.maximum(prev, 0)]
            recalled = recalled | ((items == prev) & (prev >= 0))
            nxt_ok = (nxt >= 0) & ~recalled[jnp.maximum(nxt, 0)]
            use = prev_first & nxt_ok
            actual = (d == nxt - prev) & use
            target = prev + d
            in_list = (target >= 0) & (target < list_length)
            avail = in_list & ~recalled[jnp.clip(target, 0, list_length - 1)]
            return recalled, (actual, avail & use)

        pairs = (seq[:-1], seq[1:])
        _, (a, p) = jax.lax.scan(step, jnp.zeros(list_length, bool), pairs)
        return a.sum(0), p.sum(0)

    a, p = jax.vmap(one_trial)(recalls)
    return ConditionalCounts(actual=a.sum(0), possible=p.sum(0), lags=lags(max_lag))
