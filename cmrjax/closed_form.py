r"""The two closed-form corners of the paper's CRP grid (numpy, float64).

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
