"""Analysis 4 (paper Fig. 7c-g): top-N CMR-like heads versus top-N induction heads across models.

All heads of all given models are pooled and fitted with CMR (grid fit, min-max distance). Two nested
families of head sets are formed, for N in --top (default 20, 50, 100, 200):

* **top-N CMR-like heads**: the N heads with the smallest CMR distance;
* **top-N induction heads**: the N heads with the largest induction matching score.

Each family comes from ONE ranking, so top-20 is a subset of top-50, and so on, and the induction-head
sets are chosen by matching score alone, never by their CMR fit. (The original study's script re-ranked
its nested subsets by CMR distance, so a "top-N induction heads" subset was not simply the N heads with
the largest matching score: it mixed the two criteria and tilted the induction sets towards CMR-like
heads. This is a bug; this script does not re-rank.)

Figures: distances, parameters and inverse temperatures of each set (box plots), and each set's
(beta_enc, beta_rec) beside CMR fits to human free recall from the literature (stars; see
``HUMAN_CMR_FITS``). Tables: ``top_heads.csv`` (every selected head, with its rank in each family) and
``summary.json`` (medians per set).

Examples::

    python -m experiments.top_heads --out runs/top_heads         # Pythia reference models, final checkpoints
    python -m experiments.top_heads --model gpt2-small qwen-7b --top 10 20 --out runs/top
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments import _common as C

DEFAULT_MODELS = ["pythia-70m-deduped-v0", "pythia-410m-deduped-v0"]

#: CMR fits to human free-recall data: citation -> (beta_enc, beta_rec). The model variants differ from
#: the paper's simplified CMR (they add primacy, semantic and stopping mechanisms), so these are points of
#: comparison on the same axes, not fits of the same model; all are rounded means over participants.
HUMAN_CMR_FITS: dict[str, tuple[float, float]] = {
    # Mean best-fitting temporal drift rates of CMR fit to free recall (Polyn, Norman & Kahana 2009,
    # Psychol. Rev. 116:129, Table 2). APPROXIMATE: recalled from the paper, not checked against it here.
    "Polyn et al. 2009 (approx.)": (0.78, 0.51),
    # Base CMR fit per participant to Kahana & Jacobs (2000) free recall; means reported in the jaxcmr
    # project's model-comparison tables (github.com/githubpsyche/jaxcmr, tables/KahanaJacobs2000_*).
    "Kahana & Jacobs 2000 data (jaxcmr fit)": (0.86, 0.84),
    # Base CMR fit to Lohnas & Kahana (2014) free recall (same source, tables/LohnasKahana2014_*).
    "Lohnas & Kahana 2014 data (jaxcmr fit)": (0.76, 0.95),
}

DEFAULT_TOP = [20, 50, 100, 200]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.top_heads", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    C.add_input_args(p, many=True)
    p.add_argument("--top", type=int, nargs="+", default=DEFAULT_TOP, help="set sizes N (default 20 50 100 200)")
    return p


def pool(items: list[tuple[str, object, object]]) -> dict[str, np.ndarray]:
    """Pool heads of [(model, Scores, HeadFits)] into flat arrays (labels ``model-LxHy``)."""
    labels, dist, params, scale, match = [], [], [], [], []
    for name, scores, fits in items:
        labels += [f"{name}-{l}" for l in np.asarray(fits.labels).ravel()]
        dist.append(np.asarray(fits.distance_grid, float).ravel())
        params.append(np.asarray(fits.params_grid, float).reshape(-1, 3))
        scale.append(np.asarray(fits.scale_grid, float).ravel())
        match.append(np.asarray(scores.head_scores, float).ravel())
    return dict(labels=np.array(labels), distance=np.concatenate(dist), params=np.concatenate(params),
                scale=np.concatenate(scale), matching=np.concatenate(match))


def rankings(pooled: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Head indices ranked by CMR distance (ascending) and by matching score (descending).

    NaN values rank last. Top-N sets are prefixes of these rankings, hence nested.
    """
    d = np.where(np.isfinite(pooled["distance"]), pooled["distance"], np.inf)
    m = np.where(np.isfinite(pooled["matching"]), pooled["matching"], -np.inf)
    return np.argsort(d, kind="stable"), np.argsort(-m, kind="stable")


def analyse(items: list[tuple[str, object, object]], out: Path, top: list[int]) -> dict:
    from cmrjax import plot

    P = pool(items)
    n = len(P["labels"])
    by_cmr, by_match = rankings(P)
    top = sorted({min(t, n) for t in top if t > 0})
    groups, planes, summary, rows = {}, {}, {}, {}
    for fam, order in (("CMR", by_cmr), ("induction", by_match)):
        for t in top:
            idx = order[:t]
            key = f"top-{t} {fam}"
            groups[key] = dict(distance=P["distance"][idx], params=P["params"][idx], scale=P["scale"][idx])
            planes[key] = P["params"][idx]
            summary[key] = dict(
                n=t, labels=P["labels"][idx].tolist(),
                median_distance=float(np.nanmedian(P["distance"][idx])),
                median_beta_enc=float(np.nanmedian(P["params"][idx, 0])),
                median_beta_rec=float(np.nanmedian(P["params"][idx, 1])),
                median_gamma_ft=float(np.nanmedian(P["params"][idx, 2])),
                median_scale=float(np.nanmedian(P["scale"][idx])),
                median_matching=float(np.nanmedian(P["matching"][idx])),
                percent_cmr_like=float(100 * np.mean(P["distance"][idx] < C.CMR_LIKE_THRESHOLD)))
    rank_cmr = np.empty(n, int)
    rank_cmr[by_cmr] = np.arange(n)
    rank_match = np.empty(n, int)
    rank_match[by_match] = np.arange(n)
    sel = np.union1d(by_cmr[: max(top)], by_match[: max(top)])
    table = [dict(label=str(P["labels"][i]), rank_cmr=int(rank_cmr[i]) + 1, rank_induction=int(rank_match[i]) + 1,
                  distance=float(P["distance"][i]), matching_score=float(P["matching"][i]),
                  beta_enc=float(P["params"][i, 0]), beta_rec=float(P["params"][i, 1]),
                  gamma_ft=float(P["params"][i, 2]), scale=float(P["scale"][i]))
             for i in sel[np.argsort(rank_cmr[sel])]]
    C.write_csv(out / "top_heads.csv", table)
    colors = {k: (plot.CMR_COLOUR if k.endswith("CMR") else plot.NEGATIVE) for k in groups}
    C.save_fig(plot.top_heads_summary(groups, colors=colors, title="top-N CMR-like heads (green) vs top-N "
                                      f"induction heads (blue), {len(items)} models, {n} heads"),
               out, "top_heads_summary")
    for t in top:
        C.save_fig(plot.param_plane({f"top-{t} CMR-like": planes[f"top-{t} CMR"],
                                     f"top-{t} induction": planes[f"top-{t} induction"]}, HUMAN_CMR_FITS,
                                    title=f"top-{t} heads (dots) and CMR fits to human free recall (stars)"),
                   out, f"params_vs_human_top{t}")
    result = dict(models=[name for name, _, _ in items], n_heads=n, sets=summary, human_cmr_fits=HUMAN_CMR_FITS,
                  selection="nested prefixes of one ranking per family (no re-ranking by CMR distance)")
    C.write_json(out / "summary.json", result)
    return result


def run(args: argparse.Namespace) -> dict:
    ref = C.reference_folder(args.reference, required=args.scores is None or args.crps is None)
    paths = list(args.scores) if args.scores else [C.reference_scores_path(ref, m)
                                                     for m in (args.model or DEFAULT_MODELS)]
    scores = [C.read_scores(p) for p in paths]
    grid = C.load_grid(args.crps, ref)
    out = C.make_out(args.out)
    items = [(C.model_name(s).split("__cp")[0], s, C.fit(s, grid))
             for s in C.progress(scores, "fitting models", total=len(scores))]
    result = analyse(items, out, args.top)
    C.write_metadata(out, "top_heads", args, inputs=[str(p) for p in paths])
    for key, s in result["sets"].items():
        print(f"{key:>20}: median distance {s['median_distance']:.3f}, beta_enc {s['median_beta_enc']:.2f}, "
              f"beta_rec {s['median_beta_rec']:.2f}, gamma_ft {s['median_gamma_ft']:.2f}, "
              f"inverse temperature {s['median_scale']:.3g}")
    print(f"wrote figures and tables to {out}")
    return result


def main(argv=None) -> int:
    return C.main_wrapper(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
