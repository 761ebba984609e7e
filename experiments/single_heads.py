"""Analysis 1 (paper Fig. 5, 6a): every head of one model fitted with CMR.

Figures: per-layer panels of each head's lag profile with its fitted CMR curve; the closest heads one
by one; induction matching score against CMR distance coloured by the copying score's sign; the
histogram of distances; percent of heads with distance < 0.5 by relative layer position.
Tables: ``heads.csv`` (one row per head) and ``summary.json``.

Examples::

    python -m experiments.single_heads --out runs/single_heads               # GPT-2 small, reference data
    python -m experiments.single_heads --scores smollm2.npz --crps grid.npz --out runs/smollm2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments import _common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.single_heads", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    C.add_input_args(p, model_default="gpt2-small")
    p.add_argument("--method", choices=["grid", "gradient", "both"], default="grid",
                   help="grid: the paper's procedure (default); both: also gradient fits (continuous parameters)")
    p.add_argument("--seed", type=int, default=0, help="seed of the gradient fit (default 0)")
    p.add_argument("--top", type=int, default=14, help="how many closest heads to list and draw (default 14)")
    return p


def analyse(scores, fits, out: Path, *, top: int = 14, title: str | None = None) -> dict:
    """Figures and tables of one model's fits into ``out``; returns the summary."""
    from cmrjax import plot

    name = title or C.model_name(scores)
    d = np.asarray(fits.distance_grid)
    L, H = d.shape
    pct = C.percent_by_layer(d)
    n_like = int(np.sum(np.isfinite(d) & (d < C.CMR_LIKE_THRESHOLD)))
    lags = np.asarray(fits.lags_fit)
    C.save_fig(plot.head_profiles_by_layer(lags, fits.profile_fit, fits.crp_fit_grid, d,
                                           title=f"{name}: head attention by lag (solid) and fitted CMR "
                                           "(dashed); grey: distance >= 0.5"), out, "profiles_by_layer")
    sem = _window_sem(scores, lags)
    C.save_fig(plot.closest_heads(fits.labels, lags, fits.profile_fit, fits.crp_fit_grid, d, fits.params_grid,
                                  fits.scale_grid, k=min(8, L * H), sem=sem,
                                  title=f"{name}: most CMR-like heads"), out, "closest_heads")
    C.save_fig(plot.matching_vs_distance(scores.head_scores, d, scores.copying_score, title=name), out,
               "matching_vs_distance")
    C.save_fig(plot.distance_histogram(d, title=f"{name}: {n_like}/{L * H} heads with distance < 0.5"), out,
               "distance_histogram")
    C.save_fig(plot.percent_by_layer({name: (C.relative_position(L), pct)}), out, "percent_by_layer")
    rows = C.head_table(scores, fits)
    C.write_csv(out / "heads.csv", rows)
    induction = [r for r in rows if r["matching_score"] > C.INDUCTION_THRESHOLD]
    summary = dict(model=name, n_layers=L, n_heads_per_layer=H, n_heads=L * H, n_cmr_like=n_like,
                   threshold=C.CMR_LIKE_THRESHOLD, percent_by_layer=[round(float(x), 1) for x in pct],
                   closest_heads=C.ranked_heads(fits, top),
                   n_induction_heads=len(induction),
                   induction_heads=sorted(induction, key=lambda r: -r["matching_score"]))
    if getattr(fits, "distance", None) is not None:
        dg = np.asarray(fits.distance)
        summary["gradient"] = dict(
            n_cmr_like=int(np.sum(np.isfinite(dg) & (dg < C.CMR_LIKE_THRESHOLD))),
            closest_heads=C.ranked_heads(fits, top, use="gradient"),
            median_distance_grid=float(np.nanmedian(d)), median_distance_gradient=float(np.nanmedian(dg)))
    C.write_json(out / "summary.json", summary)
    return summary


def _window_sem(scores, lags: np.ndarray) -> np.ndarray | None:
    """The profile SEM on the fit window's lags (``profile_fit`` is only shifted, so its SEM is unchanged)."""
    cols = [int(np.where(scores.lags == g)[0][0]) for g in lags if g in scores.lags]
    if len(cols) != len(lags):
        return None
    return np.asarray(scores.crp_scores_sem)[..., cols]


def run(args: argparse.Namespace) -> dict:
    ref = C.reference_folder(args.reference, required=args.scores is None or args.crps is None)
    path = args.scores if args.scores is not None else C.reference_scores_path(ref, args.model)
    scores = C.read_scores(path)
    grid = C.load_grid(args.crps, ref)
    out = C.make_out(args.out)
    fits = C.fit(scores, grid, method=args.method, seed=args.seed)
    summary = analyse(scores, fits, out, top=args.top)
    C.write_metadata(out, "single_heads", args, inputs=[str(path)], seed=args.seed)
    print(f"{summary['model']}: {summary['n_cmr_like']}/{summary['n_heads']} heads with CMR distance < 0.5; "
          f"closest: " + ", ".join(f"{r['label']} ({r['distance']:.3f})" for r in summary["closest_heads"][:5]))
    print(f"wrote figures and tables to {out}")
    return summary


def main(argv=None) -> int:
    return C.main_wrapper(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
