"""Analysis 3 (paper Fig. 7b, S2, S4): CMR-like heads over training, on Pythia checkpoints.

For each model, every checkpoint's heads are fitted with CMR (grid fit, min-max distance). Figures per
model: percent of CMR-like heads (distance < 0.5) by layer over training (heatmap), the overall percent
over training, and the fitted parameters and inverse temperature (scale factor) of the CMR-like heads
over training (median and interquartile range). Tables: ``training.csv`` (model, checkpoint, layer,
percent) and ``params_over_training.csv`` and ``summary.json``.

Checkpoint files are named ``MODEL__cpNNN.npz`` (NNN = training step in thousands), as in the reference
folder and as ``cmrjax extract --checkpoints`` writes them.

Examples::

    python -m experiments.training --out runs/training         # Pythia-70m and -410m reference checkpoints
    python -m experiments.training --scores ckpts/ --crps grid.npz --out runs/training
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from experiments import _common as C

DEFAULT_MODELS = ["pythia-70m-deduped-v0", "pythia-410m-deduped-v0"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.training", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    C.add_input_args(p, many=True)
    return p


def group_checkpoints(paths: list[Path]) -> dict[str, list[tuple[int, Path]]]:
    """model -> [(checkpoint, path)] from ``MODEL__cpNNN.npz`` names (files or folders)."""
    files: list[Path] = []
    for p in paths:
        files += sorted(Path(p).glob("*.npz")) if Path(p).is_dir() else [Path(p)]
    groups: dict[str, list[tuple[int, Path]]] = {}
    for f in files:
        m = re.match(r"(.+)__cp(\d+)$", f.stem)
        if not m:
            raise C.InputError(f"{str(f)!r} is not named MODEL__cpNNN.npz; training needs checkpoint files")
        groups.setdefault(m.group(1), []).append((int(m.group(2)), f))
    return {k: sorted(v) for k, v in groups.items()}


def inputs(args) -> tuple[dict[str, list[tuple[int, Path]]], Path | None]:
    ref = C.reference_folder(args.reference, required=args.scores is None or args.crps is None)
    if args.scores:
        for p in args.scores:
            if not Path(p).exists():
                raise C.InputError(f"{str(p)!r} does not exist")
        return group_checkpoints(list(args.scores)), ref
    groups = {}
    for m in args.model or DEFAULT_MODELS:
        cps = C.checkpoint_files(ref, m)
        if not cps:
            raise C.InputError(f"no checkpoint files {m}__cpNNN.npz in {str(ref / 'scores')!r}")
        groups[m] = cps
    return groups, ref


def summarise_model(steps: list[int], fits_list: list) -> dict:
    """Per checkpoint: percent by layer, and quartiles of CMR-like heads' parameters and scale."""
    pct = np.stack([C.percent_by_layer(f.distance_grid) for f in fits_list])  # (checkpoints, layers)
    quart = {k: np.full((len(steps), 3), np.nan) for k in ("beta_enc", "beta_rec", "gamma_ft", "scale")}
    n_like = []
    for i, f in enumerate(fits_list):
        d = np.asarray(f.distance_grid)
        like = np.isfinite(d) & (d < C.CMR_LIKE_THRESHOLD)
        n_like.append(int(like.sum()))
        if like.any():
            vals = dict(beta_enc=f.params_grid[..., 0][like], beta_rec=f.params_grid[..., 1][like],
                        gamma_ft=f.params_grid[..., 2][like], scale=f.scale_grid[like])
            for k, v in vals.items():
                quart[k][i] = np.percentile(v, [50, 25, 75])
    L, H = fits_list[0].distance_grid.shape
    return dict(steps=list(steps), percent_by_layer=pct, n_cmr_like=n_like, n_heads=L * H, quartiles=quart)


def analyse(models: dict[str, tuple[list[int], list]], out: Path) -> dict:
    from cmrjax import plot

    rows, prow, summary = [], [], {}
    overall = {}
    for name, (steps, fits_list) in models.items():
        s = summarise_model(steps, fits_list)
        pct = s["percent_by_layer"]
        C.save_fig(plot.training_heatmap(np.array(steps), pct, title=f"{name}: % CMR-like heads by layer"),
                   out, f"{name}_percent_by_layer")
        q = s["quartiles"]
        C.save_fig(plot.values_over_training(
            np.array(steps), {k: tuple(q[k].T) for k in ("beta_enc", "beta_rec", "gamma_ft")},
            ylabel="fitted parameter (CMR-like heads)", title=f"{name}: CMR parameters over training"),
            out, f"{name}_params")
        C.save_fig(plot.values_over_training(np.array(steps), {"inverse temperature": tuple(q["scale"].T)},
                                             ylabel="scale factor (inverse temperature)", logy=True,
                                             title=f"{name}: inverse temperature over training"),
                   out, f"{name}_inverse_temperature")
        overall[name] = (np.array(steps, float), 100.0 * np.array(s["n_cmr_like"]) / s["n_heads"])
        for i, st in enumerate(steps):
            rows += [dict(model=name, checkpoint=st, layer=l, percent_cmr_like=float(pct[i, l]))
                     for l in range(pct.shape[1])]
            prow.append(dict(model=name, checkpoint=st, n_cmr_like=s["n_cmr_like"][i],
                             **{f"{k}_{w}": float(q[k][i, j]) for k in q for j, w in
                                enumerate(("median", "q25", "q75"))}))
        summary[name] = dict(steps=steps, n_heads=s["n_heads"], n_cmr_like=s["n_cmr_like"],
                             percent_by_layer=np.round(pct, 1))
    C.save_fig(plot.percent_by_layer(overall, xlabel="training step (thousands)",
                                     title="CMR-like heads over training"), out, "percent_over_training")
    C.write_csv(out / "training.csv", rows)
    C.write_csv(out / "params_over_training.csv", prow)
    C.write_json(out / "summary.json", summary)
    return summary


def run(args: argparse.Namespace) -> dict:
    groups, ref = inputs(args)
    grid = C.load_grid(args.crps, ref)
    out = C.make_out(args.out)
    models = {}
    for name, cps in groups.items():
        fits_list = [C.fit(C.read_scores(p), grid) for _, p in C.progress(cps, f"fitting {name}", total=len(cps))]
        models[name] = ([c for c, _ in cps], fits_list)
    summary = analyse(models, out)
    C.write_metadata(out, "training", args, inputs={k: [str(p) for _, p in v] for k, v in groups.items()})
    for name, s in summary.items():
        print(f"{name}: CMR-like heads at checkpoints {s['steps'][0]}..{s['steps'][-1]}: {s['n_cmr_like']}")
    print(f"wrote figures and tables to {out}")
    return summary


def main(argv=None) -> int:
    return C.main_wrapper(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
