"""Analysis 2 (paper Fig. 6b, c): percent of CMR-like heads by relative layer position, several models.

Each model's heads are fitted with CMR (grid fit, the paper's min-max distance); the percent of heads with
distance < 0.5 is drawn against relative layer position (layer / (layers - 1)), one line per model.
Tables: ``percent_by_layer.csv`` (model, layer, relative position, percent) and ``summary.json``.

Examples::

    python -m experiments.model_sizes --out runs/model_sizes        # reference models (final checkpoints)
    python -m experiments.model_sizes --scores a.npz b.npz --crps grid.npz --out runs/sizes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments import _common as C

#: Reference models drawn by default (Pythia at its final checkpoint).
DEFAULT_MODELS = ["gpt2-small", "pythia-70m-deduped-v0", "pythia-410m-deduped-v0", "qwen-7b"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.model_sizes", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    C.add_input_args(p, many=True)
    return p


def inputs(args) -> tuple[list[Path], Path | None]:
    ref = C.reference_folder(args.reference, required=args.scores is None or args.crps is None)
    if args.scores:
        return list(args.scores), ref
    return [C.reference_scores_path(ref, m) for m in (args.model or DEFAULT_MODELS)], ref


def analyse(items: list[tuple[str, object]], out: Path) -> dict:
    """``items``: [(model name, HeadFits)]; writes the figure and tables, returns the summary."""
    from cmrjax import plot

    curves, rows, summary = {}, [], {}
    for name, fits in items:
        d = np.asarray(fits.distance_grid)
        L, H = d.shape
        pct = C.percent_by_layer(d)
        x = C.relative_position(L)
        curves[f"{name} ({L}x{H})"] = (x, pct)
        rows += [dict(model=name, layer=l, relative_layer=float(x[l]), percent_cmr_like=float(pct[l]))
                 for l in range(L)]
        n_like = int(np.sum(np.isfinite(d) & (d < C.CMR_LIKE_THRESHOLD)))
        summary[name] = dict(n_layers=L, n_heads_per_layer=H, n_cmr_like=n_like,
                             percent_cmr_like=100.0 * n_like / (L * H),
                             percent_by_layer=[round(float(v), 1) for v in pct])
    C.save_fig(plot.percent_by_layer(curves, title="CMR-like heads across models"), out, "percent_by_layer")
    C.write_csv(out / "percent_by_layer.csv", rows)
    C.write_json(out / "summary.json", summary)
    return summary


def run(args: argparse.Namespace) -> dict:
    paths, ref = inputs(args)
    scores = [C.read_scores(p) for p in paths]
    grid = C.load_grid(args.crps, ref)
    out = C.make_out(args.out)
    items = [(C.model_name(s).split("__cp")[0], C.fit(s, grid))
             for s in C.progress(scores, "fitting models", total=len(scores))]
    summary = analyse(items, out)
    C.write_metadata(out, "model_sizes", args, inputs=[str(p) for p in paths])
    for name, s in summary.items():
        print(f"{name}: {s['n_cmr_like']}/{s['n_layers'] * s['n_heads_per_layer']} CMR-like "
              f"({s['percent_cmr_like']:.1f}%)")
    print(f"wrote figures and tables to {out}")
    return summary


def main(argv=None) -> int:
    return C.main_wrapper(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
