"""Prompts of repeated random tokens, and the query positions whose lag window is measured.

A prompt is ``[BOS] + block * n_repeats``: one block of ``block_len`` distinct random token ids,
repeated. For a query token at position ``q`` in a later repeat, its *earlier occurrence* is the same
token one repeat earlier, at ``q - block_len``; lag ``d`` refers to the key position
``q - block_len + d`` (lag 0 = the earlier occurrence, lag +1 = the token that followed it, where an
induction head attends). Tokens are distinct within a block so that the earlier occurrence is unique.

Only queries whose whole lag window ``lags`` lies inside the earlier repeat are used: with lags
-8..+7, query index ``i`` inside its block must satisfy ``8 <= i <= block_len - 8``. Every prompt of a
batch has the same layout, so the query and key positions are shared by the whole batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Lags of the reference score files: -8..+7 (index 8 is lag 0, index 9 lag +1).
DEFAULT_LAGS = tuple(range(-8, 8))


@dataclass(frozen=True)
class PromptConfig:
    """Settings of the repeated-random-token prompts (documented defaults).

    Attributes:
      n_sequences: number of prompts (independent random blocks). Default 100.
      block_len: tokens per block; ``None`` = ``min(50, (n_ctx - bos) // n_repeats)`` of the model.
      n_repeats: copies of the block in each prompt (>= 2). Default 2.
      token_low, token_high: token ids are drawn from ``[token_low, token_high)``; ``token_high=None``
        means the model's vocabulary size. The tokenizer's special ids (BOS/EOS/PAD/UNK) are excluded.
      prepend_bos: put the model's BOS token first; ``None`` = when the tokenizer has one.
      batch_size: prompts per forward pass. Default 16.
      seed: seeds the token draw (``torch.Generator``; same seed, same prompts).
      lags: the lag window (consecutive integers containing 0 and +1).
    """

    n_sequences: int = 100
    block_len: int | None = None
    n_repeats: int = 2
    token_low: int = 0
    token_high: int | None = None
    prepend_bos: bool | None = None
    batch_size: int = 16
    seed: int = 0
    lags: tuple[int, ...] = DEFAULT_LAGS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lags"] = list(self.lags)
        return d


@dataclass(frozen=True)
class PromptLayout:
    """Resolved layout shared by every prompt of a run.

    Attributes:
      seq_len: total prompt length (with BOS).
      offset: 1 with BOS, else 0.
      block_len, n_repeats: as in the config.
      query_pos: (queries,) positions of the measured query tokens.
      key_pos: (queries, lags) key positions ``query_pos - block_len + lag``.
      lags: (lags,) the lag of each column of ``key_pos``.
    """

    seq_len: int
    offset: int
    block_len: int
    n_repeats: int
    query_pos: np.ndarray
    key_pos: np.ndarray
    lags: np.ndarray

    @property
    def n_queries(self) -> int:
        return int(len(self.query_pos))

    @property
    def positions_read(self) -> int:
        """Leading positions a forward pass must run: up to the last query (every key is earlier).

        With causal attention the later positions cannot change any score or pattern entry read.
        """
        return int(max(self.query_pos.max(), self.key_pos.max())) + 1


def valid_block_indices(block_len: int, lags) -> np.ndarray:
    """Indices ``i`` inside a block whose window ``i + lags`` stays inside the block."""
    lo, hi = -min(lags), block_len - 1 - max(lags)
    return np.arange(max(lo, 0), hi + 1) if hi >= max(lo, 0) else np.arange(0)


def make_layout(cfg: PromptConfig, *, n_ctx: int, bos: bool) -> PromptLayout:
    """Resolve ``cfg`` against a model's context length; validate.

    Raises:
      ValueError: naming the setting and the fix, when the settings leave no valid query position,
        the prompt does not fit the context, or the lag window is malformed.
    """
    lags = np.asarray(cfg.lags, dtype=np.int64)
    if lags.ndim != 1 or len(lags) == 0 or np.any(np.diff(lags) != 1) or not (lags.min() <= 0 < lags.max()):
        raise ValueError(f"lags={list(cfg.lags)} must be consecutive integers containing 0 and +1")
    if cfg.n_repeats < 2:
        raise ValueError(f"n_repeats={cfg.n_repeats} must be >= 2: lags are measured against an earlier repeat")
    if cfg.n_sequences < 1:
        raise ValueError(f"n_sequences={cfg.n_sequences} must be >= 1")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size} must be >= 1")
    offset = 1 if bos else 0
    block_len = cfg.block_len
    if block_len is None:
        block_len = min(50, (n_ctx - offset) // cfg.n_repeats)
    if block_len < 1:
        raise ValueError(f"block_len={block_len} must be >= 1")
    seq_len = offset + block_len * cfg.n_repeats
    if seq_len > n_ctx:
        raise ValueError(
            f"prompts of block_len={block_len} x n_repeats={cfg.n_repeats} (+{offset} BOS) = {seq_len} tokens "
            f"exceed the model's context of {n_ctx}; lower --block-len or --n-repeats")
    idx = valid_block_indices(block_len, lags)
    if len(idx) == 0:
        need = int(lags.max() - lags.min() + 1)
        raise ValueError(
            f"block_len={block_len} leaves no valid query position: a query's lag window "
            f"{int(lags.min())}..{int(lags.max())} needs block_len >= {need}; raise --block-len")
    q = np.concatenate([offset + r * block_len + idx for r in range(1, cfg.n_repeats)])
    key = q[:, None] - block_len + lags[None, :]
    return PromptLayout(seq_len=seq_len, offset=offset, block_len=block_len, n_repeats=cfg.n_repeats,
                        query_pos=q, key_pos=key, lags=lags)


def candidate_tokens(cfg: PromptConfig, *, d_vocab: int, special_ids=()) -> np.ndarray:
    """Token ids the blocks are drawn from: ``[token_low, token_high)`` minus special ids."""
    high = d_vocab if cfg.token_high is None else cfg.token_high
    if not (0 <= cfg.token_low < high <= d_vocab):
        raise ValueError(
            f"token range [{cfg.token_low}, {high}) must lie inside the vocabulary [0, {d_vocab}); "
            "fix --token-low/--token-high")
    ids = np.arange(cfg.token_low, high)
    ids = ids[~np.isin(ids, np.asarray(list(special_ids), dtype=np.int64))]
    return ids


def make_prompts(cfg: PromptConfig, layout: PromptLayout, *, d_vocab: int, bos_id: int | None = None,
                 special_ids=()):
    """All prompts of a run as one int64 tensor (n_sequences, seq_len), deterministic given ``cfg.seed``.

    Raises:
      ValueError: fewer candidate tokens than ``block_len`` (tokens are distinct within a block).
    """
    import torch

    ids = torch.as_tensor(candidate_tokens(cfg, d_vocab=d_vocab, special_ids=special_ids))
    B = layout.block_len
    if len(ids) < B:
        raise ValueError(
            f"block_len={B} needs {B} distinct tokens but the token range holds {len(ids)}; "
            "lower --block-len or widen --token-low/--token-high")
    g = torch.Generator().manual_seed(int(cfg.seed))
    # one random permutation per prompt: argsort of uniform noise, vectorised
    perm = torch.rand(cfg.n_sequences, len(ids), generator=g).argsort(dim=1)[:, :B]
    block = ids[perm]
    parts = []
    if layout.offset:
        if bos_id is None:
            raise ValueError("prepend_bos=True but the model has no BOS token; pass --no-bos")
        parts.append(torch.full((cfg.n_sequences, 1), int(bos_id), dtype=torch.int64))
    parts += [block] * layout.n_repeats
    return torch.cat(parts, dim=1).to(torch.int64)
