"""Public entry points: extract every head's scores in memory, or run a whole extraction to a file."""

from __future__ import annotations

import platform
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from extraction.prompts import PromptConfig, make_layout, make_prompts


def _special_ids(bridge) -> list[int]:
    tok = getattr(bridge, "tokenizer", None)
    if tok is None:
        return []
    ids = []
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        v = getattr(tok, attr, None)
        if isinstance(v, int):
            ids.append(v)
    try:
        ids.extend(int(i) for i in getattr(tok, "all_special_ids", []) or [])
    except TypeError:
        pass
    return sorted(set(ids))


def _bos_id(bridge) -> int | None:
    tok = getattr(bridge, "tokenizer", None)
    v = getattr(tok, "bos_token_id", None) if tok is not None else None
    return int(v) if isinstance(v, int) else None


def prompts_for(bridge, prompts: PromptConfig):
    """(tokens, layout, resolved PromptConfig) for a model: BOS and block length resolved."""
    bos_id = _bos_id(bridge)
    bos = (bos_id is not None) if prompts.prepend_bos is None else bool(prompts.prepend_bos)
    layout = make_layout(prompts, n_ctx=int(bridge.cfg.n_ctx), bos=bos)
    resolved = replace(prompts, block_len=layout.block_len, prepend_bos=bos)
    tokens = make_prompts(resolved, layout, d_vocab=int(bridge.cfg.d_vocab), bos_id=bos_id,
                          special_ids=_special_ids(bridge))
    return tokens, layout, resolved


def extract_scores(model, prompts: PromptConfig | None = None, *, score_source: str = "auto",
                   progress: bool = False, fold_norms: bool = True) -> dict[str, np.ndarray]:
    """Every head's lag profiles, matching score and copying score, in memory.

    Args:
      model: a ``TransformerBridge`` (from :func:`extraction.load_model` or ``boot_native``).
      prompts: prompt settings (:class:`PromptConfig`; defaults documented there).
      score_source: where pre-softmax scores come from (see :mod:`extraction.profiles`).
      progress: tqdm bar over prompt batches.
      fold_norms: fold the norms into the OV circuit (see :mod:`extraction.scores`).

    Returns:
      numpy arrays: ``CRP_scores``, ``CRP_scores_sem``, ``CRP_pattern``, ``CRP_pattern_sem``
      (layers, heads, lags); ``head_scores``, ``copying_score`` (layers, heads); ``labels``;
      ``lags``; ``n_queries``; and ``prompt_config`` (a dict of the resolved settings).

    Raises:
      ValueError: prompt settings leave no valid query position or do not fit the model.
    """
    from cmrjax.io import head_labels
    from extraction.profiles import lag_profiles
    from extraction.scores import copying_scores, matching_scores

    prompts = prompts or PromptConfig()
    tokens, layout, resolved = prompts_for(model, prompts)
    out = lag_profiles(model, tokens, layout, batch_size=resolved.batch_size, score_source=score_source,
                       progress=progress)
    out["lags"] = layout.lags.copy()
    out["head_scores"] = matching_scores(out["CRP_pattern"], layout.lags)
    out["copying_score"] = copying_scores(model, fold_norms=fold_norms)
    out["labels"] = head_labels(model.cfg.n_layers, model.cfg.n_heads)
    out["prompt_config"] = resolved.to_dict()
    return out


def default_filename(model: str, checkpoint: int | None = None) -> str:
    """``{model}.npz`` or ``{model}__cpNNN.npz`` (the reference files' naming), path-safe."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if Path(model).suffix == ".gguf" else model)
    stem = stem.strip("_") or "model"
    return f"{stem}.npz" if checkpoint is None else f"{stem}__cp{int(checkpoint):03d}.npz"


def resolve_out(out, model: str, checkpoint: int | None = None) -> Path:
    """A ``.npz`` path is used as is; anything else is a folder that gets :func:`default_filename`."""
    out = Path(out)
    if out.suffix == ".npz":
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / default_filename(model, checkpoint)


def run_extraction(model: str, out, *, checkpoint: int | None = None, device: str | None = None,
                   dtype: str = "float32", seed: int = 0, n_sequences: int = 100, block_len: int | None = None,
                   n_repeats: int = 2, batch_size: int = 16, token_low: int = 0, token_high: int | None = None,
                   prepend_bos: bool | None = None, progress: bool = True, bridge=None,
                   extra_metadata: dict | None = None) -> Path:
    """Load ``model``, extract every head's scores, and write a scores file; return its path.

    Args:
      model: a name accepted by :func:`extraction.load_model` (``tiny``, ``smollm2-135m``, ``gpt2-small``,
        ``pythia-70m-deduped-v0``, a Hugging Face id, a local folder or ``.gguf``).
      out: a ``.npz`` file, or a folder (the file is named ``{model}[__cpNNN].npz``).
      checkpoint: training-checkpoint index (Pythia); None = final weights.
      device, dtype: torch device (CUDA when available) and dtype.
      seed: prompt seed (the tiny model is always the one trained with its own seed 0).
      n_sequences, block_len, n_repeats, batch_size, token_low, token_high, prepend_bos: prompt settings
        (:class:`extraction.prompts.PromptConfig`).
      progress: tqdm progress bars.
      bridge: an already loaded model to use instead of loading ``model`` (``model`` is then only its name).
      extra_metadata: merged into the file's metadata.

    Returns:
      The written path. The file holds ``CRP_scores`` (layers, heads, 16) over lags -8..+7,
      ``CRP_scores_sem``, ``head_scores``, ``copying_score``, ``labels``, ``lags``, ``CRP_pattern``,
      ``CRP_pattern_sem`` and JSON ``metadata`` (model, checkpoint, prompt settings, seed, weights hash,
      versions, timings).

    Raises:
      ValueError, OSError, ImportError: bad names/settings, unwritable output, missing weights or extras.
    """
    from importlib.metadata import version as _version

    import torch

    from cmrjax.io import check_writable, save_scores
    from extraction.models import check_checkpoint, checkpoint_labels, load_model, weights_hash

    prompts = PromptConfig(n_sequences=n_sequences, block_len=block_len, n_repeats=n_repeats,
                           token_low=token_low, token_high=token_high, prepend_bos=prepend_bos,
                           batch_size=batch_size, seed=seed)
    path = resolve_out(out, model, checkpoint)
    check_writable(path)
    t0 = time.perf_counter()
    if bridge is None:
        check_checkpoint(model, checkpoint)
        bridge = load_model(model, checkpoint=checkpoint, device=device, dtype=dtype)
    t_load = time.perf_counter() - t0
    whash = weights_hash(bridge)
    t1 = time.perf_counter()
    res = extract_scores(bridge, prompts, progress=progress)
    t_extract = time.perf_counter() - t1
    labels = checkpoint_labels(model) if checkpoint is not None else None
    meta = {
        "model": model,
        "checkpoint": checkpoint,
        "checkpoint_step": None if labels is None else labels[int(checkpoint)],
        "prompts": res["prompt_config"],
        "seed": seed,
        "n_queries": int(res["n_queries"]),
        "weights_sha256_16": whash,
        "device": str(next(bridge.original_model.parameters()).device),
        "dtype": str(dtype),
        "n_layers": int(bridge.cfg.n_layers),
        "n_heads": int(bridge.cfg.n_heads),
        "n_key_value_heads": int(getattr(bridge.cfg, "n_key_value_heads", None) or bridge.cfg.n_heads),
        "score_source": "hook_attn_scores" if not _native(bridge) else "hook_q.hook_k/scale",
        "copying_score": "eig(W_O N_f W_U W_E N_l W_V): sum Re / sum |.|",
        "seconds_load": round(t_load, 3),
        "seconds_extract": round(t_extract, 3),
        "versions": {"torch": torch.__version__, "transformer_lens": _version("transformer-lens"),
                     "python": platform.python_version()},
        **({"tiny_config": bridge.tiny_config.__dict__} if hasattr(bridge, "tiny_config") else {}),
        **(extra_metadata or {}),
    }
    return save_scores(
        path, crp_scores=res["CRP_scores"], crp_scores_sem=res["CRP_scores_sem"], head_scores=res["head_scores"],
        copying_score=res["copying_score"], labels=res["labels"], lags=res["lags"],
        crp_pattern=res["CRP_pattern"], crp_pattern_sem=res["CRP_pattern_sem"], metadata=meta)


def _native(bridge) -> bool:
    from extraction.profiles import is_native

    return is_native(bridge)


def read_metadata(path) -> dict:
    from cmrjax.io import load_metadata

    return load_metadata(path)


__all__ = ["extract_scores", "run_extraction", "default_filename", "resolve_out", "prompts_for", "read_metadata"]
