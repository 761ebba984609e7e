r"""Closed forms of the CRP (numpy, float64): the paper's two corners, and the exact static-context CRP.

The original study did not simulate two corners of its grid; it computed them in closed form, per start
position, then normalised over the lag window and averaged over starts like the simulated entries:

* **Fixed context** (:math:`\beta_{rec} = 0`, :math:`\gamma_{FT} = 0`): with
  :math:`p = M_{s_0,:} / \sum_k M_{s_0,k}` over all ``n + 1`` states,
  :math:`CRP(0) = \sum_i p_i^2` and :math:`CRP(\pm d) = \sum_i p_i p_{i+d}`.
* **Context jumps to the recalled item** (:math:`\beta_{rec} = 1`, :math:`\gamma_{FT} = 0`): negative lags
  and lag 0 are 0; for :math:`d \ge 1`, :math:`P_1 = (M^d)_{s_0,:}` normalised to sum 1,
  :math:`P_2[k] = M_{k,k+d} / \sum_j M_{k,j}`, :math:`CRP(+d) = \sum_k P_1[k] P_2[k]`.

These are *not* limits of the simulation (the first leaves out the cue's own transition, the second uses
another normalisation); see the reference data README. :func:`is_corner` says where they apply.

A third closed form is exact for the simulation itself: with :math:`\beta_{rec} = 0` the context never moves
(:math:`t = e_{s_0}` whatever :math:`\gamma_{FT}`), so every retrieval draws from the same distribution and
the expectation of the paper's per-trial CRP has a closed form (:func:`static_context_crp_per_start`). It is
the value the simulation estimates at :math:`\beta_{rec} = 0` (and approaches as :math:`\beta_{rec} \to 0`),
with no Monte Carlo error.
"""

from __future__ import annotations

import numpy as np


def _encoding_matrix_np(beta_enc: float, n: int) -> np.ndarray:
    i = np.arange(n + 1)[:, None]
    j = np.arange(n + 1)[None, :]
    r = 1.0 - beta_enc
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(j > i, r ** np.maximum(j - i - 1, 0), 0.0)


def is_corner(points: np.ndarray) -> np.ndarray:
    """Boolean mask over (N, 3) points: True where a closed form applies (gamma_ft = 0, beta_rec in {0, 1})."""
    points = np.asarray(points)
    return (points[:, 2] == 0) & ((points[:, 1] == 0) | (points[:, 1] == 1))


def corner_crp_per_start(beta_enc: float, beta_rec: float, starts: np.ndarray, n: int, max_lag: int) -> np.ndarray:
    """Per-start normalised CRPs, shape (len(starts), 2*max_lag+1), for one corner point.

    Raises:
      ValueError: if the point is not a corner (gamma_ft must be 0 and beta_rec 0 or 1; pass only those).
    """
    if beta_rec not in (0.0, 1.0):
        raise ValueError(f"beta_rec={beta_rec} has no closed form; only beta_rec = 0 or 1 with gamma_ft = 0")
    M = _encoding_matrix_np(float(beta_enc), n)
    starts = np.asarray(starts, dtype=int)
    K = 2 * max_lag + 1
    crp = np.zeros((len(starts), K))
    if beta_rec == 0.0:
        p = M[starts] / M[starts].sum(axis=1, keepdims=True)  # (starts, n+1)
        crp[:, max_lag] = np.sum(p * p, axis=1)
        for d in range(1, max_lag + 1):
            v = np.sum(p[:, :-d] * p[:, d:], axis=1)
            crp[:, max_lag + d] = v
            crp[:, max_lag - d] = v
    else:
        row_sum = M.sum(axis=1)
        k = np.arange(n + 1)
        V = np.eye(n + 1)[starts]  # rows s0 of M^0
        for d in range(1, max_lag + 1):
            V = V @ M  # rows s0 of M^d
            tot = V.sum(axis=1, keepdims=True)
            P1 = np.divide(V, tot, out=np.zeros_like(V), where=tot > 0)
            ok = (k + d <= n) & (row_sum > 0)
            P2 = np.zeros(n + 1)
            P2[ok] = M[k[ok], k[ok] + d] / row_sum[ok]
            crp[:, max_lag + d] = P1 @ P2
    total = crp.sum(axis=1, keepdims=True)
    return np.divide(crp, total, out=np.zeros_like(crp), where=total > 0)


def static_context_crp_per_start(beta_enc: float, starts: np.ndarray, n: int, max_lag: int,
                                 max_recalls: int) -> np.ndarray:
    r"""Exact per-start CRPs of the simulation at :math:`\beta_{rec} = 0` (any :math:`\gamma_{FT}`): (starts, lags).

    The context stays :math:`e_{s_0}`, so each of the up to ``max_recalls`` (:math:`R`) draws is independent:
    the stop state with probability :math:`\pi = M_{s_0,n} / \sum_k M_{s_0,k}`, else item :math:`i` with
    :math:`q_i = M_{s_0,i} / \sum_{k<n} M_{s_0,k}`. A trial that recalls :math:`N = m` items makes one
    transition from the cue (lag :math:`d` with probability :math:`P_1(d) = q_{s_0+d}`) and :math:`m - 1`
    between recalls (:math:`P_2(d) = \sum_i q_i q_{i+d}`), and :math:`P(N = m) = (1-\pi)^m \pi` for
    :math:`m < R`, :math:`(1-\pi)^R` for :math:`m = R`. So the paper's per-trial value :math:`C_N / N` has
    expectation

    .. math:: \sum_{m=1}^{R} P(N=m) \, \frac{P_1(d) + (m-1) P_2(d)}{m},

    normalised over the window like a simulated start (0 where the window gets no mass).
    """
    if not 0.0 <= float(beta_enc) <= 1.0:
        raise ValueError(f"beta_enc={beta_enc!r} is outside [0, 1]")
    M = _encoding_matrix_np(float(beta_enc), n)
    starts = np.asarray(starts, dtype=int)
    K = 2 * max_lag + 1
    a = M[starts]  # (starts, n+1): activations of the fixed context e_{s0}
    items = a[:, :n].sum(axis=1)
    total = items + a[:, n]
    ok = items > 0
    stop = np.where(ok, a[:, n] / np.where(ok, total, 1.0), 1.0)
    q = np.where(ok[:, None], a[:, :n] / np.where(ok, items, 1.0)[:, None], 0.0)  # (starts, n)
    P1, P2 = np.zeros((len(starts), K)), np.zeros((len(starts), K))
    for x, d in enumerate(range(-max_lag, max_lag + 1)):
        idx = starts + d
        inside = (idx >= 0) & (idx < n)
        P1[inside, x] = q[inside, idx[inside]]
        P2[:, x] = np.sum(q[:, max(0, -d): n - max(0, d)] * q[:, max(0, d): n - max(0, -d)], axis=1)
    m = np.arange(1, max_recalls + 1)
    keep = (1.0 - stop)[:, None] ** m  # (starts, R): P(N >= m)
    p_n = keep * np.where(m < max_recalls, stop[:, None], 1.0)  # P(N = m)
    value = (p_n / m).sum(axis=1)  # sum_m P(N=m)/m
    value_rest = (p_n * (m - 1) / m).sum(axis=1)  # sum_m P(N=m)(m-1)/m
    crp = value[:, None] * P1 + value_rest[:, None] * P2
    tot = crp.sum(axis=1, keepdims=True)
    return np.divide(crp, tot, out=np.zeros_like(crp), where=tot > 0)
