"""Analysis 5 (paper Fig. 8): does ablating the CMR-like heads hurt in-context learning more than chance?

ICL score of a prompt = loss at a late token - loss at an early token (more negative = more in-context
learning; the paper used tokens 500 and 50 of C4 texts). Three conditions, scored on the same prompts:

* intact model;
* the top ``--fraction`` (default 10%) CMR-like heads ablated (smallest CMR distance, from a scores file
  of the same model fitted with the paper's grid fit);
* as many random heads ablated, drawn afresh ``--draws`` times (default 50) from the other heads.

A head is ablated by zeroing its output ``z`` (the attention-weighted values, per QUERY head, hook
``blocks.L.attn.hook_z``), so grouped-query models (several query heads per key-value head) work head
by head. Paired tests per prompt: intact vs CMR-like ablated, and CMR-like ablated vs random ablated
(per-prompt mean over draws), by paired t-test and Wilcoxon signed-rank (scipy; a normal-approximation
t-test when scipy is absent); plus a draw-level test: the share of random draws whose mean ICL score is
at least the CMR-like ablation's.

Offline default: the project's tiny trained model (``extraction.tiny``) on the project's prompts of
repeated random tokens (early token in the first repeat, late token at the same place in the second).
Any model that ``cmrjax extract`` loads works with ``--model``, and ``--corpus FILE`` (plain text) scores
natural text at ``--early``/``--late`` token positions instead. The original study's GPT-2 small result
(``ablation_gpt2-small.npz`` in the reference folder) is plotted and tested the same way when found.

Examples::

    python -m experiments.ablation --out runs/ablation                       # tiny model, offline
    python -m experiments.ablation --model gpt2-small --scores gpt2.npz --corpus c4.txt \\
        --early 50 --late 500 --out runs/ablation_gpt2
    python -m experiments.ablation --reference-only --out runs/ablation_ref   # only the original's file
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from experiments import _common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="tiny", help="model to ablate (any `cmrjax extract` name; default tiny)")
    p.add_argument("--scores", type=Path, default=None,
                   help="scores file of the same model (from `cmrjax extract`); default: extracted now")
    p.add_argument("--reference", type=Path, default=None, help="reference folder (CRP grid, original ablation file)")
    p.add_argument("--crps", type=Path, default=None, help="CRP grid (default: the reference grid)")
    p.add_argument("--corpus", type=Path, default=None, help="plain-text file to score instead of repeated tokens")
    p.add_argument("--early", type=int, default=None, help="early token position (default: repeated-token layout)")
    p.add_argument("--late", type=int, default=None, help="late token position (default: repeated-token layout)")
    p.add_argument("--n-prompts", type=int, default=200, help="prompts to score (default 200)")
    p.add_argument("--fraction", type=float, default=0.1, help="share of heads ablated (default 0.1)")
    p.add_argument("--draws", type=int, default=50, help="random head sets (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and random draws (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--reference-only", action="store_true",
                   help="only plot and test the original study's ablation file")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    return p


# --------------------------------------------------------------------------------------------------
# statistics (numpy/scipy; no torch)


def paired_tests(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired comparison of ``b`` against ``a`` (same prompts): mean difference b - a, t-test, Wilcoxon.

    Uses ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon`` when scipy is installed; otherwise the
    t statistic with a two-sided normal-approximation p-value (fine for hundreds of prompts) and no
    Wilcoxon test.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    n = int(d.size)
    out = dict(n=n, mean_a=float(a[ok].mean()) if n else None, mean_b=float(b[ok].mean()) if n else None,
               mean_difference=float(d.mean()) if n else None,
               sem_difference=float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None)
    if n < 2:
        return out
    try:
        from scipy import stats

        t = stats.ttest_rel(b[ok], a[ok])
        out.update(t=float(t.statistic), p_t=float(t.pvalue), test_t="scipy.stats.ttest_rel")
        if np.any(d != 0):
            w = stats.wilcoxon(d)
            out.update(wilcoxon=float(w.statistic), p_wilcoxon=float(w.pvalue), test_wilcoxon="scipy.stats.wilcoxon")
    except ImportError:
        sd = d.std(ddof=1)
        t = d.mean() / (sd / math.sqrt(n)) if sd > 0 else (0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean()))
        out.update(t=float(t), p_t=float(math.erfc(abs(t) / math.sqrt(2))), test_t="paired t, normal approximation")
    return out


def draw_level_p(top_mean: float, draw_means: np.ndarray) -> float:
    """Share of random draws whose mean ICL score is >= the CMR-like ablation's (one-sided, with +1)."""
    draw_means = np.asarray(draw_means, dtype=np.float64)
    return float((1 + np.sum(draw_means >= top_mean)) / (1 + len(draw_means)))


def select_top_heads(distance: np.ndarray, fraction: float) -> list[tuple[int, int]]:
    """The ``ceil(fraction * heads)`` heads with the smallest finite CMR distance, as (layer, head)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction {fraction} must be in (0, 1]")
    d = np.asarray(distance, dtype=np.float64)
    n = max(1, int(math.ceil(fraction * d.size)))
    flat = np.where(np.isfinite(d), d, np.inf).ravel()
    order = np.argsort(flat, kind="stable")[:n]
    return [tuple(int(x) for x in divmod(int(j), d.shape[1])) for j in order]


def random_head_sets(rng: np.random.Generator, shape: tuple[int, int], n: int, exclude, draws: int):
    """``draws`` sets of ``n`` distinct heads drawn uniformly from the heads not in ``exclude``."""
    L, H = shape
    excl = {l * H + h for l, h in exclude}
    pool = np.array([j for j in range(L * H) if j not in excl])
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} heads remain to draw {n} random heads from; lower --fraction")
    return [[tuple(int(x) for x in divmod(int(j), H)) for j in rng.choice(pool, size=n, replace=False)]
            for _ in range(draws)]


# --------------------------------------------------------------------------------------------------
# the torch side (imported lazily)


def token_losses(bridge, tokens, ablate=(), batch_size: int = 32):
    """(prompts, seq - 1) next-token losses; loss[:, t - 1] is the loss of predicting token t.

    ``ablate``: (layer, head) pairs whose per-query-head output ``z`` is set to zero.
    """
    import torch
    import torch.nn.functional as F

    by_layer: dict[int, list[int]] = {}
    for l, h in ablate:
        by_layer.setdefault(l, []).append(h)

    def make_hook(heads):
        def hook(z, hook):  # z: (batch, pos, query heads, d_head)
            z[:, :, heads, :] = 0.0
            return z
        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", make_hook(hs)) for l, hs in by_layer.items()]
    out = []
    with torch.no_grad():
        for s in range(0, tokens.shape[0], batch_size):
            t = tokens[s:s + batch_size]
            logits = bridge.run_with_hooks(t, fwd_hooks=hooks) if hooks else bridge(t)
            lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
            out.append(-lp.gather(-1, t[:, 1:, None]).squeeze(-1).cpu().numpy())
    return np.concatenate(out)


def icl_scores(bridge, tokens, early: int, late: int, ablate=(), batch_size: int = 32) -> np.ndarray:
    """(prompts,) loss at token ``late`` minus loss at token ``early``."""
    loss = token_losses(bridge, tokens, ablate, batch_size)
    return loss[:, late - 1] - loss[:, early - 1]


def repeated_prompts(bridge, n_prompts: int, seed: int):
    """The project's prompts (repeated random tokens) and early/late positions: the same block index in
    the first and the second repeat (middle of the block)."""
    from extraction.prompts import PromptConfig, make_layout, make_prompts

    bos_id = getattr(getattr(bridge, "tokenizer", None), "bos_token_id", None)
    cfg = PromptConfig(n_sequences=n_prompts, seed=seed, prepend_bos=bos_id is not None)
    layout = make_layout(cfg, n_ctx=int(bridge.cfg.n_ctx), bos=bos_id is not None)
    tokens = make_prompts(cfg, layout, d_vocab=int(bridge.cfg.d_vocab), bos_id=bos_id)
    early = layout.offset + layout.block_len // 2
    return tokens, early, early + layout.block_len, cfg.to_dict()


def corpus_prompts(bridge, path: Path, n_prompts: int, late: int):
    """Consecutive chunks of ``late + 1`` tokens of a text file."""
    import torch

    if not path.exists():
        raise C.InputError(f"--corpus {str(path)!r} does not exist")
    ids = bridge.tokenizer(path.read_text(errors="replace"))["input_ids"]
    n = min(n_prompts, len(ids) // (late + 1))
    if n < 2:
        raise C.InputError(f"--corpus {str(path)!r} has {len(ids)} tokens: too few for 2 prompts of {late + 1}")
    return torch.tensor(ids[: n * (late + 1)], dtype=torch.int64).view(n, late + 1)


def scores_for(bridge, args, out: Path):
    """The model's scores: ``--scores``, else extracted now through the extraction package."""
    if args.scores is not None:
        return C.read_scores(args.scores)
    from extraction import run_extraction

    path = out / f"scores_{args.model}.npz"
    run_extraction(args.model, path, device=args.device, seed=args.seed, bridge=bridge, progress=True)
    return C.read_scores(path)


# --------------------------------------------------------------------------------------------------


def analyse(intact, top, random_draws, out: Path, *, stem: str, title: str, extra: dict | None = None) -> dict:
    from cmrjax import plot

    random_draws = np.atleast_2d(random_draws)
    rand_mean = random_draws.mean(axis=0)
    summary = dict(
        title=title, n_prompts=int(len(intact)), n_draws=int(random_draws.shape[0]),
        intact_vs_cmr_ablated=paired_tests(intact, top),
        intact_vs_random_ablated=paired_tests(intact, rand_mean),
        random_vs_cmr_ablated=paired_tests(rand_mean, top),
        **(extra or {}))
    if random_draws.shape[0] > 1:
        dm = random_draws.mean(axis=1)
        summary["draw_level"] = dict(p=draw_level_p(float(np.mean(top)), dm), draw_means=dm.tolist(),
                                     cmr_ablated_mean=float(np.mean(top)))
    C.save_fig(plot.ablation_scores(intact, top, random_draws, title=title), out, stem)
    C.write_csv(out / f"{stem}.csv", [dict(prompt=i, intact=float(a), cmr_ablated=float(b), random_ablated=float(c))
                                      for i, (a, b, c) in enumerate(zip(intact, top, rand_mean))])
    return summary


def reference_ablation(ref: Path | None, out: Path) -> dict | None:
    if ref is None or not (ref / "ablation_gpt2-small.npz").exists():
        return None
    from cmrjax.io import read_npz

    z = read_npz(ref / "ablation_gpt2-small.npz")
    return analyse(z["original_icl_score"], z["ablated_icl_score"], z["ablated_rand_icl_score"], out,
                   stem="reference_gpt2-small",
                   title="original study, GPT-2 small (5000 C4 prompts; one random head set)",
                   extra=dict(source=str(ref / "ablation_gpt2-small.npz"),
                              note="the original drew ONE random head set, so no draw-level test"))


def run(args: argparse.Namespace) -> dict:
    ref = C.reference_folder(args.reference, required=False)
    if args.reference is not None and ref is None:
        raise C.InputError(f"--reference {str(args.reference)!r} is not a reference folder")
    out = C.make_out(args.out)
    result: dict = {}
    refres = reference_ablation(ref, out)
    if refres is not None:
        result["reference_gpt2-small"] = refres
        t = refres["intact_vs_cmr_ablated"]
        print(f"original GPT-2 small: ICL score intact {t['mean_a']:.3f}, CMR-like heads ablated {t['mean_b']:.3f} "
              f"(paired t p={t['p_t']:.2g}); random heads ablated {refres['intact_vs_random_ablated']['mean_b']:.3f}")
    elif args.reference_only:
        raise C.InputError("no reference ablation file found: pass --reference DIR (holding ablation_gpt2-small.npz)")
    if not args.reference_only:
        result[args.model] = run_model(args, ref, out)
    C.write_json(out / "summary.json", result)
    C.write_metadata(out, "ablation", args)
    print(f"wrote figures and tables to {out}")
    return result


def run_model(args, ref: Path | None, out: Path) -> dict:
    try:
        from extraction.models import load_model
    except ImportError as e:
        raise C.InputError(f"the ablation on a model needs the torch side ({e}); install cmrjax[extract] "
                           "or use --reference-only") from e
    if args.draws < 1 or args.n_prompts < 2:
        raise ValueError("--draws must be >= 1 and --n-prompts >= 2")
    if args.scores is not None and not args.scores.exists():
        raise C.InputError(f"scores file {str(args.scores)!r} does not exist; create it with "
                           f"`cmrjax extract --model {args.model}` or leave out --scores")
    grid = C.load_grid(args.crps, ref)
    bridge = load_model(args.model, device=args.device, seed=args.seed)
    scores = scores_for(bridge, args, out)
    fits = C.fit(scores, grid)
    if fits.distance_grid.shape != (int(bridge.cfg.n_layers), int(bridge.cfg.n_heads)):
        raise C.InputError(f"scores have {fits.distance_grid.shape} heads but {args.model} has "
                           f"({bridge.cfg.n_layers}, {bridge.cfg.n_heads}); pass the scores of the same model")
    if args.corpus is not None:
        early, late = args.early or 50, args.late or 500
        tokens = corpus_prompts(bridge, args.corpus, args.n_prompts, late)
        prompt_info = dict(corpus=str(args.corpus))
    else:
        tokens, early, late, prompt_info = repeated_prompts(bridge, args.n_prompts, args.seed)
        early, late = args.early or early, args.late or late
    if not 0 < early < late < tokens.shape[1]:
        raise ValueError(f"need 0 < --early {early} < --late {late} < prompt length {tokens.shape[1]}")
    dev = next(bridge.parameters()).device
    tokens = tokens.to(dev)
    top = select_top_heads(fits.distance_grid, args.fraction)
    rng = np.random.default_rng(args.seed)
    sets = random_head_sets(rng, fits.distance_grid.shape, len(top), top, args.draws)
    intact = icl_scores(bridge, tokens, early, late)
    top_s = icl_scores(bridge, tokens, early, late, ablate=top)
    rand = np.stack([icl_scores(bridge, tokens, early, late, ablate=s)
                     for s in C.progress(sets, "random ablations", total=len(sets))])
    labels = np.asarray(fits.labels)
    summary = analyse(intact, top_s, rand, out, stem=f"{args.model}_ablation",
                      title=f"{args.model}: {len(top)} CMR-like heads vs {len(top)} random heads "
                      f"({args.draws} draws), {len(intact)} prompts",
                      extra=dict(model=args.model, early=early, late=late, prompts=prompt_info,
                                 ablated_heads=[dict(label=str(labels[l, h]), distance=float(fits.distance_grid[l, h]))
                                                for l, h in top],
                                 random_sets=[[str(labels[l, h]) for l, h in s] for s in sets]))
    t = summary["intact_vs_cmr_ablated"]
    r = summary["random_vs_cmr_ablated"]
    print(f"{args.model}: ICL score intact {t['mean_a']:.3f}; {len(top)} CMR-like heads ablated {t['mean_b']:.3f}; "
          f"random heads ablated {r['mean_a']:.3f} (CMR-like vs random: paired t p={r.get('p_t', float('nan')):.2g}"
          + (f", draw-level p={summary['draw_level']['p']:.3g}" if "draw_level" in summary else "") + ")")
    return summary


def main(argv=None) -> int:
    return C.main_wrapper(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
