"""Analysis 6: CMR against Gaussian and asymmetric-exponential lag kernels, per head, by AIC and BIC.

Every head is fitted with CMR and with each baseline kernel through the same fit engine, window and
min-max distance (see :mod:`cmrjax.baselines` for the kernels, their grids and the criterion). Figures:
distances per model and the per-head AIC differences against CMR, for all heads and for the CMR-like
heads (distance < 0.5). Tables: ``baselines.csv`` (one row per head) and ``summary.json`` (how often each
model wins).

Examples::

    python -m experiments.baselines --out runs/baselines                  # GPT-2 small, reference data
    python -m experiments.baselines --model qwen-7b --method both --out runs/baselines_qwen
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments import _common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.baselines", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    C.add_input_args(p, model_default="gpt2-small")
    p.add_argument("--method", choices=["grid", "both"], default="grid",
                   help="grid: exhaustive grid fits (default); both: plus gradient refinement of every model")
    return p


def analyse(scores, comp, out: Path, *, name: str) -> dict:
    from cmrjax import baselines as B
    from cmrjax import plot

    names = list(comp.distance)
    cmr_d = comp.distance["CMR"]
    like = np.isfinite(cmr_d) & (cmr_d < C.CMR_LIKE_THRESHOLD)
    flat = {k: v.ravel() for k, v in comp.aic.items()}
    C.save_fig(plot.baseline_comparison(flat, {k: v.ravel() for k, v in comp.distance.items()},
                                        title=f"{name}: all heads ({comp.use} fits)"), out, "baselines_all")
    if like.any():
        C.save_fig(plot.baseline_comparison({k: v[like] for k, v in comp.aic.items()},
                                            {k: v[like] for k, v in comp.distance.items()},
                                            title=f"{name}: CMR-like heads (CMR distance < 0.5)"),
                   out, "baselines_cmr_like")
    L, H = cmr_d.shape
    rows = []
    for l in range(L):
        for h in range(H):
            r = dict(label=str(scores.labels[l, h]), layer=l, head=h,
                     matching_score=float(scores.head_scores[l, h]))
            for k in names:
                f = comp.fits[k]
                par = f.params_grid if comp.use == "grid" else f.params
                r[f"{k}_distance"] = float(comp.distance[k][l, h])
                r[f"{k}_aic"] = float(comp.aic[k][l, h])
                r[f"{k}_bic"] = float(comp.bic[k][l, h])
                for j, pn in enumerate(B.PARAM_NAMES[k]):
                    if pn != "unused":
                        r[f"{k}_{pn}"] = float(par[l, h, j])
            r["best_aic"], r["best_bic"] = str(comp.best_aic[l, h]), str(comp.best_bic[l, h])
            rows.append(r)
    C.write_csv(out / "baselines.csv", rows)

    def wins(mask):
        return {crit: {k: int(np.sum(best[mask] == k)) for k in names}
                for crit, best in (("AIC", comp.best_aic), ("BIC", comp.best_bic))}

    summary = dict(model=name, fits=comp.use, n_heads=L * H, n_cmr_like=int(like.sum()),
                   n_params=B.N_PARAMS, wins_all=wins(np.ones_like(like)), wins_cmr_like=wins(like),
                   median_distance={k: float(np.nanmedian(v)) for k, v in comp.distance.items()},
                   median_distance_cmr_like={k: float(np.nanmedian(v[like])) if like.any() else None
                                             for k, v in comp.distance.items()})
    C.write_json(out / "summary.json", summary)
    return summary


def run(args: argparse.Namespace) -> dict:
    from cmrjax.baselines import fit_baselines

    ref = C.reference_folder(args.reference, required=args.scores is None or args.crps is None)
    path = args.scores if args.scores is not None else C.reference_scores_path(ref, args.model)
    scores = C.read_scores(path)
    grid = C.load_grid(args.crps, ref)
    out = C.make_out(args.out)
    comp = fit_baselines(scores, grid, method=args.method)
    name = C.model_name(scores)
    summary = analyse(scores, comp, out, name=name)
    C.write_metadata(out, "baselines", args, inputs=[str(path)])
    print(f"{name}: best model by AIC, all heads: {summary['wins_all']['AIC']}; "
          f"CMR-like heads: {summary['wins_cmr_like']['AIC']}")
    print(f"wrote figures and tables to {out}")
    return summary


def main(argv=None) -> int:
    return C.main_wrapper(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
