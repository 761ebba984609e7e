"""Per-head attention-by-lag profiles, reduced inside forward hooks (nothing is cached).

For every layer, hooks gather the entries ``[query_pos, key_pos]`` (queries x lags) of the attention
scores and of the attention pattern for all heads at once, and add their sums and sums of squares
(float64) to a running :class:`LagSums`. Memory is O(layers x heads x lags), independent of how many
prompts are run; one forward pass per prompt batch; no per-head Python loop, no ``.item()``.

The forward runs only what is read. Tokens after the last query position are dropped (causal
attention: they cannot change the entries read). A private exception raised by the hooks ends the
pass once the last layer's scores and pattern are summed, which skips that block's attention output
and MLP, the final norm and the unembedding (on GPT-2 small the unembedding alone is a third of the
forward FLOPs; the bridge's ``stop_at_layer=n_layers`` does not skip it, as no block has that index).

Which hook carries what (checked in tests on both paths):

* Models loaded through ``TransformerBridge.boot_transformers`` (GPT-2, Pythia, Llama/Qwen/Mistral,
  SmolLM2): ``blocks.{l}.attn.hook_attn_scores`` carries the PRE-softmax scores (scaled, before the
  causal mask for the entries we read) and ``hook_pattern`` the post-softmax pattern, both shaped
  (batch, query_heads, q, k), grouped-query models included.
* Models built with ``TransformerBridge.boot_native`` (the tiny model, random test models): the
  native attention returns only its pattern, and the bridge feeds that POST-softmax pattern to
  ``hook_attn_scores``. Pre-softmax scores are recomputed here from ``hook_q`` (batch, pos, heads,
  d_head) and ``hook_k`` (batch, pos, kv_heads, d_head): ``q . k / scale`` with key-value heads
  repeated to query heads (``repeat_interleave``, query head h reads kv head h // (heads/kv_heads)),
  then the attention soft cap when the config sets one. Native models with rotary positions are not
  supported (their ``hook_q``/``hook_k`` precede the rotation).

``score_source="auto"`` picks the path per model; the ``hook_attn_scores`` path additionally checks, on
the first batch, that the tensor is not a probability distribution (and raises if it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class LagSums:
    """Running sums over query tokens, per (layer, head, lag); float64 torch tensors on the model device.

    Attributes:
      score_sum, score_sq: sums of pre-softmax scores and of their squares.
      pattern_sum, pattern_sq: the same for post-softmax attention probabilities.
      n: number of query tokens accumulated (the same for every head).
    """

    score_sum: "torch.Tensor"  # noqa: F821  (layers, heads, lags) float64
    score_sq: "torch.Tensor"  # noqa: F821
    pattern_sum: "torch.Tensor"  # noqa: F821
    pattern_sq: "torch.Tensor"  # noqa: F821
    n: int = 0

    @classmethod
    def zeros(cls, n_layers: int, n_heads: int, n_lags: int, device) -> "LagSums":
        import torch

        z = lambda: torch.zeros(n_layers, n_heads, n_lags, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z(), z(), 0)

    def finish(self) -> dict[str, np.ndarray]:
        """Means and standard errors (SEM = sample std / sqrt(n), ddof=1) as numpy arrays."""
        n = self.n
        if n < 2:
            raise ValueError(f"need at least 2 query tokens for a standard error, got {n}")
        out = {}
        for key, s, sq in [("CRP_scores", self.score_sum, self.score_sq),
                           ("CRP_pattern", self.pattern_sum, self.pattern_sq)]:
            mean = s / n
            var = ((sq - n * mean * mean) / (n - 1)).clamp_min(0.0)
            out[key] = mean.cpu().numpy()
            out[key + "_sem"] = (var / n).sqrt().cpu().numpy()
        return out


def is_native(bridge) -> bool:
    """True for bridges built by ``boot_native`` (their hook_attn_scores is post-softmax)."""
    attn = bridge.blocks[0].attn
    comp = getattr(attn, "original_component", None)
    return type(comp).__name__ == "NativeAttention"


def resolve_score_source(bridge, score_source: str = "auto") -> str:
    """``"attn_scores"`` (read the hook) or ``"qk"`` (recompute from hook_q/hook_k); see module doc."""
    if score_source not in ("auto", "attn_scores", "qk"):
        raise ValueError(f"score_source={score_source!r} must be 'auto', 'attn_scores' or 'qk'")
    if score_source == "auto":
        score_source = "qk" if is_native(bridge) else "attn_scores"
    if score_source == "qk":
        comp = bridge.blocks[0].attn.original_component
        if getattr(comp, "rotary", None) is not None:
            raise NotImplementedError(
                "pre-softmax scores of native rotary models cannot be rebuilt from hook_q/hook_k "
                "(they precede the rotation); use standard positional embeddings")
        if not hasattr(comp, "scale"):
            raise NotImplementedError(
                f"score_source='qk' needs the native attention's scale; {type(comp).__name__} has none")
    return score_source


class _LastLayerDone(Exception):
    """Raised by the hooks once the last layer's lag entries are summed (see :func:`make_hooks`)."""


def _gather(x, qpos, kpos):
    """(batch, heads, S, S) -> (batch, heads, queries, lags): x[:, :, qpos[i], kpos[i, j]]."""
    return x[:, :, qpos[:, None], kpos]


def _add(acc_sum, acc_sq, layer: int, g) -> None:
    g = g.to(acc_sum.dtype)
    acc_sum[layer] += g.sum(dim=(0, 2))
    acc_sq[layer] += (g * g).sum(dim=(0, 2))


def make_hooks(bridge, sums: LagSums, qpos, kpos, *, score_source: str = "auto",
               check_first: bool = True, stop_when_done: bool = False) -> list[tuple[str, Callable]]:
    """Forward hooks that add one batch's lag entries to ``sums`` (for ``run_with_hooks``).

    Args:
      bridge: a TransformerBridge.
      sums: the accumulator (modified in place by the hooks).
      qpos: (queries,) int64 tensor of query positions, on the model device.
      kpos: (queries, lags) int64 tensor of key positions.
      score_source: see :func:`resolve_score_source`.
      check_first: on the ``attn_scores`` path, raise if the hooked tensor looks post-softmax.
      stop_when_done: raise the private ``_LastLayerDone`` as soon as both the score and the pattern
        sums of the last layer are added, so the forward skips everything after them (the last
        block's attention output and MLP, the final norm and the unembedding). The caller catches
        it; :func:`lag_profiles` does.

    Returns:
      ``(hook_name, fn)`` pairs; none of them modifies the activations.
    """
    import torch

    source = resolve_score_source(bridge, score_source)
    n_layers = bridge.cfg.n_layers
    hooks: list[tuple[str, Callable]] = []
    checked = {"done": not check_first}
    row_of_query = torch.arange(len(qpos), device=qpos.device)[:, None]
    last_added: set[str] = set()           # which of the last layer's sums this forward has added

    def added(layer: int, what: str) -> None:
        if stop_when_done and layer == n_layers - 1:
            last_added.add(what)
            if len(last_added) == 2:       # hook order differs between paths: wait for both
                last_added.clear()
                raise _LastLayerDone

    def pattern_hook(layer):
        def fn(x, hook):
            _add(sums.pattern_sum, sums.pattern_sq, layer, _gather(x, qpos, kpos))
            added(layer, "pattern")
            return None
        return fn

    def scores_hook(layer):
        def fn(x, hook):
            if not checked["done"]:
                q0 = int(qpos[0])
                row = x[:, :, q0, : q0 + 1].to(torch.float64)
                if bool((row >= 0).all()) and bool(torch.allclose(row.sum(-1), torch.ones((), dtype=row.dtype,
                                                                                         device=row.device),
                                                                  atol=1e-4)):
                    raise RuntimeError(
                        f"{hook.name} carries post-softmax probabilities on this model, not scores; "
                        "use score_source='qk'")
                checked["done"] = True
            _add(sums.score_sum, sums.score_sq, layer, _gather(x, qpos, kpos))
            added(layer, "scores")
            return None
        return fn

    def qk_hooks(layer):
        comp = bridge.blocks[layer].attn.original_component
        scale = float(comp.scale)
        cap = float(getattr(comp, "attn_scores_soft_cap", -1.0) or -1.0)
        store = {}

        def compute():
            q, k = store.pop("q"), store.pop("k")          # (b, Q, H, d) query rows, (b, S, Hkv, d)
            rep = q.shape[2] // k.shape[2]
            if rep > 1:
                k = k.repeat_interleave(rep, dim=2)
            rows = q.transpose(1, 2) @ k.permute(0, 2, 3, 1)     # (b, H, Q, S): one bmm per head
            s = rows[:, :, row_of_query, kpos] / scale           # (b, H, Q, lags)
            if cap > 0:
                s = cap * torch.tanh(s / cap)
            _add(sums.score_sum, sums.score_sq, layer, s)
            added(layer, "scores")

        def q_fn(x, hook):
            store["q"] = x[:, qpos]
            if "k" in store:
                compute()
            return None

        def k_fn(x, hook):
            store["k"] = x
            if "q" in store:
                compute()
            return None

        return [(f"blocks.{layer}.attn.hook_q", q_fn), (f"blocks.{layer}.attn.hook_k", k_fn)]

    for layer in range(n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_pattern", pattern_hook(layer)))
        if source == "attn_scores":
            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", scores_hook(layer)))
        else:
            hooks.extend(qk_hooks(layer))
    return hooks


def lag_profiles(bridge, tokens, layout, *, batch_size: int = 16, score_source: str = "auto",
                 progress: bool = False, desc: str = "prompts") -> dict[str, np.ndarray]:
    """Mean and SEM of pre-softmax scores and post-softmax pattern by lag, for every head.

    Args:
      bridge: a TransformerBridge (eval mode).
      tokens: (n_sequences, seq_len) int64 prompts laid out as ``layout``.
      layout: a :class:`extraction.prompts.PromptLayout`.
      batch_size: prompts per forward pass.

    Returns:
      ``CRP_scores``, ``CRP_scores_sem``, ``CRP_pattern``, ``CRP_pattern_sem``: (layers, heads, lags)
      float64 numpy arrays; ``n_queries``: the number of query tokens averaged over.
    """
    import torch

    device = _device_of(bridge)
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    sums = LagSums.zeros(L, H, len(layout.lags), device)
    qpos = torch.as_tensor(layout.query_pos, device=device)
    kpos = torch.as_tensor(layout.key_pos, device=device)
    hooks = make_hooks(bridge, sums, qpos, kpos, score_source=score_source, stop_when_done=True)
    n_pos = layout.positions_read          # causal: later tokens change nothing that is read
    starts = range(0, tokens.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    with torch.inference_mode():
        for s in starts:
            batch = tokens[s:s + batch_size, :n_pos].to(device)
            # stop right after the last layer's pattern: the bridge's stop_at_layer=n_layers would
            # still run the final norm and the unembedding (no block carries index n_layers), and
            # the last block's attention output and MLP are not needed either
            try:
                bridge.run_with_hooks(batch, fwd_hooks=hooks)
            except _LastLayerDone:
                pass
            sums.n += batch.shape[0] * layout.n_queries
    out = sums.finish()
    out["n_queries"] = np.asarray(sums.n)
    return out


def _device_of(bridge):
    return next(bridge.original_model.parameters()).device
