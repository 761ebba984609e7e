"""A tiny attention-only transformer that this project trains itself until it forms induction heads.

No downloads: the model is built from a config with ``TransformerBridge.boot_native`` (TransformerLens
4.x's own small architecture) and trained on CPU in about a minute, on sequences that contain a block of
random tokens repeated once, at a random offset and with a random block length. A fixed repeat period
would let first-layer heads solve the task by absolute position alone (no induction head forms); random
lengths and offsets force the two-layer induction circuit (a previous-token head in layer 0 composing
with an induction head in layer 1).

Training is deterministic given ``seed`` (one torch thread count aside: results are reproducible on one
machine). Trained weights are cached as a plain ``.npz`` (never a pickle) in the user cache folder
(``$CMRJAX_CACHE`` or ``~/.cache/cmrjax``), keyed by a hash of the full training config, so tests and
demos train once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TINY_NAME = "tiny"


@dataclass(frozen=True)
class TinyConfig:
    """Architecture and training settings of the tiny induction model (all have documented defaults).

    Attributes:
      n_layers, n_heads, d_model, d_head: attention-only transformer shape (LayerNorm, learned
        absolute positions, untied unembedding).
      d_vocab: vocabulary size (token ids 0..d_vocab-1; no special tokens, no BOS).
      n_ctx: context length; training sequences fill it.
      min_block, max_block: range of the repeated block's length (inclusive).
      steps, batch_size, lr, weight_decay: AdamW training schedule (linear warmup over 5% of steps).
      seed: seeds the initialisation and the training data.
    """

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    d_vocab: int = 64
    n_ctx: int = 64
    min_block: int = 8
    max_block: int = 30
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0

    def key(self) -> str:
        """A short hash of every field: the cache key of the trained weights."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def bridge_config(self) -> dict[str, Any]:
        return dict(
            n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model, d_head=self.d_head,
            d_vocab=self.d_vocab, n_ctx=self.n_ctx, attn_only=True, normalization_type="LN",
            positional_embedding_type="standard", seed=self.seed, act_fn="gelu",
        )


def cache_dir() -> Path:
    """The folder holding cached tiny-model weights (``$CMRJAX_CACHE`` or ``~/.cache/cmrjax``)."""
    root = os.environ.get("CMRJAX_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cmrjax"


def training_batch(generator: "torch.Generator", cfg: TinyConfig):  # noqa: F821
    """One batch of training sequences and the mask of predictable positions.

    Each sequence: ``offset`` random tokens, a block of ``B`` distinct random tokens, the same block
    again, then random tokens up to ``n_ctx``. ``B`` ~ U{min_block..max_block} and
    ``offset`` ~ U{0..n_ctx - 2B}, drawn per sequence. The loss mask is 1 where the next token is
    predictable from the first copy (the second copy's tokens after its first).

    Returns:
      tokens: (batch, n_ctx) int64; mask: (batch, n_ctx - 1) float, for the targets tokens[:, 1:].
    """
    import torch

    n, S, V = cfg.batch_size, cfg.n_ctx, cfg.d_vocab
    tokens = torch.randint(0, V, (n, S), generator=generator)
    mask = torch.zeros(n, S - 1)
    lengths = torch.randint(cfg.min_block, cfg.max_block + 1, (n,), generator=generator)
    for i in range(n):  # building 32 sequences per step; the model step dominates the time
        B = int(lengths[i])
        off = int(torch.randint(0, S - 2 * B + 1, (1,), generator=generator))
        block = torch.randperm(V, generator=generator)[:B]
        tokens[i, off:off + B] = block
        tokens[i, off + B:off + 2 * B] = block
        # target tokens[:, t+1] predictable for t+1 in (off+B+1 .. off+2B-1) -> mask index t
        mask[i, off + B:off + 2 * B - 1] = 1.0
    return tokens, mask


def train_tiny_model(seed: int = 0, *, config: TinyConfig | None = None, cache: bool = True,
                     device: str | None = None, progress: bool = False, force: bool = False):
    """Train (or load from the cache) the tiny induction model; return it as a ``TransformerBridge``.

    Args:
      seed: training seed (overrides ``config.seed``).
      config: architecture and schedule; ``TinyConfig()`` by default.
      cache: read/write the trained weights in :func:`cache_dir` (keyed by ``config.key()``).
      device: torch device for training; CPU by default (the model is tiny).
      progress: show a tqdm bar.
      force: retrain even when cached weights exist.

    Returns:
      A ``TransformerBridge`` in eval mode, with ``bridge.cfg.model_name == "tiny"`` and the attribute
      ``tiny_config`` (the :class:`TinyConfig`) and ``tiny_train_info`` (final loss, seconds, cache path).
    """
    import torch

    cfg = dataclasses.replace(config or TinyConfig(), seed=seed)
    path = cache_dir() / f"tiny-{cfg.key()}.npz"
    bridge = _boot(cfg, device="cpu")
    info: dict[str, Any] = {"cache_path": str(path), "config": dataclasses.asdict(cfg)}
    if cache and path.exists() and not force:
        _load_weights(bridge, path)
        info["from_cache"] = True
    else:
        t0 = time.perf_counter()
        loss = _train(bridge, cfg, device=device or "cpu", progress=progress)
        info.update(from_cache=False, final_loss=loss, train_seconds=time.perf_counter() - t0)
        if cache:
            _save_weights(bridge, path, cfg, info)
    bridge.eval()
    if device is not None:
        bridge = bridge.to(device)
    bridge.tiny_config = cfg
    bridge.tiny_train_info = info
    return bridge


def _boot(cfg: TinyConfig, device: str = "cpu"):
    from transformer_lens.model_bridge import TransformerBridge
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)

    return TransformerBridge.boot_native(cfg.bridge_config(), device=device, model_name=TINY_NAME)


def _train(bridge, cfg: TinyConfig, device: str, progress: bool) -> float:
    import torch
    import torch.nn.functional as F

    model = bridge.original_model
    model.to(device)
    model.train()
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1.0 - s / cfg.steps))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="training tiny model", unit="step")
    ema = float("nan")
    for step in range(cfg.steps):
        tokens, mask = training_batch(g, cfg)
        tokens, mask = tokens.to(device), mask.to(device)
        logits = model(tokens)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.d_vocab), tokens[:, 1:].reshape(-1),
                              reduction="none").view_as(mask)
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        v = float(loss.detach())
        ema = v if step == 0 else 0.95 * ema + 0.05 * v
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{ema:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    model.to("cpu")
    return ema


def _save_weights(bridge, path: Path, cfg: TinyConfig, info: dict) -> None:
    from cmrjax.io import atomic_savez, metadata_array

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = bridge.original_model.state_dict()
    arrays = {f"w{i}": v.detach().cpu().numpy() for i, v in enumerate(sd.values())}
    meta = {"kind": "tiny_weights", "names": list(sd.keys()), **info}
    atomic_savez(path, metadata=metadata_array(meta), **arrays)


def _load_weights(bridge, path: Path) -> None:
    import torch

    from cmrjax.io import load_metadata, read_npz

    arrays = read_npz(path)
    names = load_metadata(path)["names"]
    sd = {n: torch.from_numpy(arrays[f"w{i}"]) for i, n in enumerate(names)}
    bridge.original_model.load_state_dict(sd)
