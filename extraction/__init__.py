"""extraction: per-head attention-by-lag profiles, induction matching scores and OV copying scores of
transformer heads, through TransformerLens 4.x (``TransformerBridge``), written as cmrjax scores files.

This package is the torch side of cmrjax; ``import cmrjax`` never imports it. Importing ``extraction``
itself is cheap: torch and TransformerLens load on first use.

Main entry points::

    from extraction import load_model, run_extraction, extract_scores, PromptConfig
    path = run_extraction("smollm2-135m", "out/")          # -> out/smollm2-135m.npz
    bridge = load_model("tiny")                              # the self-trained induction model
    res = extract_scores(bridge, PromptConfig(n_sequences=64))

Ablating one head (for the head-ablation experiment)
----------------------------------------------------
On every model this package loads (``boot_transformers`` models and the ``boot_native`` tiny model),
``blocks.{layer}.attn.hook_z`` is the per-head attention output before the output projection, shaped
(batch, pos, n_heads, d_head) with one slot per QUERY head (grouped-query models included); zeroing a
slot removes that head's contribution (mean-ablation: replace it with its mean). Example::

    def ablate(heads):                       # heads: list of (layer, head)
        by_layer = {}
        for l, h in heads:
            by_layer.setdefault(l, []).append(h)
        def hook(z, hook):                   # z: (batch, pos, n_heads, d_head)
            z[:, :, by_layer[hook.layer()]] = 0.0
            return z
        return [(f"blocks.{l}.attn.hook_z", hook) for l in by_layer]

    logits = bridge.run_with_hooks(tokens, fwd_hooks=ablate([(5, 1), (5, 5)]))

``blocks.{l}.attn.hook_pattern`` (batch, heads, q, k) also works for ablation on both paths (the
bridge feeds edits back before the value product), but zeroing a pattern row is not the same
intervention as zeroing the head's output when the head has a value bias.

Which hook carries pre-softmax scores differs by path (``hook_attn_scores`` is post-softmax on
``boot_native`` models): see :mod:`extraction.profiles`.
"""

from __future__ import annotations

from extraction.prompts import DEFAULT_LAGS, PromptConfig

__all__ = ["PromptConfig", "DEFAULT_LAGS", "load_model", "run_extraction", "extract_scores", "train_tiny_model",
           "known_models"]


def __getattr__(name):  # lazy: keep `import extraction` free of torch
    if name in ("run_extraction", "extract_scores"):
        from extraction import api

        return getattr(api, name)
    if name in ("load_model", "known_models"):
        from extraction import models

        return getattr(models, name)
    if name == "train_tiny_model":
        from extraction.tiny import train_tiny_model

        return train_tiny_model
    raise AttributeError(f"module 'extraction' has no attribute {name!r}")
