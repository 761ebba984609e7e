"""Induction-head matching score and OV-circuit copying score of every head.

Matching score (``head_scores``): the mean attention probability a query token in a later repeat puts
on the token after its earlier occurrence (lag +1), over the measured query tokens; that is the lag +1
column of ``CRP_pattern``.

Copying score (``copying_score``), in [-1, 1]: for head h of layer l, with eigenvalues lambda_i of the
head's full OV circuit (a d_vocab x d_vocab matrix; row = attended source token, column = output logit)

    F_lh = W_E  N_l  W_V[l, h]  W_O[l, h]  N_f  W_U

    copying = sum_i Re(lambda_i) / sum_i |lambda_i|

where W_E (d_vocab, d_model) is the token embedding, W_V[l, h] (d_model, d_head) and W_O[l, h]
(d_head, d_model) the head's value and output weights (for grouped-query models W_V of the key-value
head that query head h reads, h // (n_heads / n_kv_heads)), W_U (d_model, d_vocab) the unembedding, and
N_l, N_f the linear parts of the layer's attention-input norm and of the final norm folded in the way
TransformerLens's ``fold_ln`` / ``center_writing_weights`` / ``center_unembed`` defaults did for the
original study: for LayerNorm, N = P diag(w) with P = I - 11^T/d_model the centering projection; for
RMSNorm, N = diag(w); W_U is centred over the vocabulary (logit-invariant). Biases and the per-token
1/std of the norms are left out (a positive per-token factor does not change which token is copied).

The d_vocab x d_vocab eigenproblem is never formed: F = A B with A = W_E N_l W_V (d_vocab, d_head) and
B = W_O N_f W_U (d_head, d_vocab) has the same non-zero eigenvalues as the small product
B A = W_O [N_f W_U W_E N_l] W_V (d_head, d_head); the bracket is one (d_model, d_model) matrix per layer,
computed once in float64, and all heads' eigenvalues come from one batched ``torch.linalg.eigvals``.
"""

from __future__ import annotations

import numpy as np


def _norm_matrix(norm_module, d_model: int, dtype, device):
    """Linear part N (d_model, d_model) of a norm bridge: P diag(w) (LayerNorm) or diag(w) (RMSNorm)."""
    import torch

    comp = getattr(norm_module, "original_component", None)
    w = getattr(comp, "weight", None) if comp is not None else getattr(norm_module, "weight", None)
    w = torch.ones(d_model, dtype=dtype, device=device) if w is None else w.detach().to(dtype=dtype, device=device)
    N = torch.diag(w)
    if isinstance(comp, torch.nn.LayerNorm):
        P = torch.eye(d_model, dtype=dtype, device=device) - 1.0 / d_model
        N = P @ N
    return N


def ov_circuit_factors(bridge, *, fold_norms: bool = True, dtype=None):
    """Factors of every head's full OV circuit, on CPU in float64 by default.

    Returns:
      W_E (d_vocab, d_model), W_V (layers, heads, d_model, d_head) with the input norm folded in and
      grouped K/V expanded to query heads, W_O (layers, heads, d_head, d_model), W_U (d_model, d_vocab)
      with the final norm folded in and centred over the vocabulary.
    """
    import torch

    dtype = dtype or torch.float64
    dev = "cpu"
    cfg = bridge.cfg
    d_model, H, L = cfg.d_model, cfg.n_heads, cfg.n_layers
    with torch.no_grad():
        W_E = bridge.W_E.detach().to(dev, dtype)
        W_U = bridge.W_U.detach().to(dev, dtype)
        W_V = bridge.W_V.detach().to(dev, dtype)
        W_O = bridge.W_O.detach().to(dev, dtype)
        if W_V.shape[1] != H:
            W_V = W_V.repeat_interleave(H // W_V.shape[1], dim=1)
        if fold_norms:
            Ns = torch.stack([_norm_matrix(bridge.blocks[l].ln1, d_model, dtype, dev) for l in range(L)])
            W_V = torch.einsum("lab,lhbd->lhad", Ns, W_V)
            Nf = _norm_matrix(bridge.ln_final, d_model, dtype, dev)
            W_U = Nf @ W_U
            W_U = W_U - W_U.mean(dim=1, keepdim=True)
    return W_E, W_V, W_O, W_U


def ov_eigenvalues(bridge, *, fold_norms: bool = True):
    """Non-zero-block eigenvalues of every head's full OV circuit: complex (layers, heads, d_head)."""
    import torch

    W_E, W_V, W_O, W_U = ov_circuit_factors(bridge, fold_norms=fold_norms)
    C = W_U @ W_E                                            # (d_model, d_model)
    small = torch.einsum("lhdm,mn,lhne->lhde", W_O, C, W_V)  # (layers, heads, d_head, d_head) = B A
    return torch.linalg.eigvals(small)


def copying_scores(bridge, *, fold_norms: bool = True) -> np.ndarray:
    """Copying score of every head, (layers, heads) float64 in [-1, 1] (see module docstring)."""
    eig = ov_eigenvalues(bridge, fold_norms=fold_norms)
    num = eig.real.sum(-1)
    den = eig.abs().sum(-1)
    out = (num / den).numpy()
    return np.where(den.numpy() > 0, out, np.nan)


def matching_scores(crp_pattern: np.ndarray, lags) -> np.ndarray:
    """Induction matching score (layers, heads): the lag +1 column of the mean pattern profile."""
    lags = np.asarray(lags)
    (idx,) = np.nonzero(lags == 1)
    if len(idx) != 1:
        raise ValueError(f"lags {lags.tolist()} must contain +1 exactly once")
    return np.asarray(crp_pattern)[..., int(idx[0])]
