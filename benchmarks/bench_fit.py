"""Fit benchmark: the original's per-head numpy loop vs cmrjax grid fits vs cmrjax gradient fits.

Same heads for every method. The baseline is the original study's procedure: for each head, a Python
triple loop over the 4,620 grid points computing the CMR distance with numpy. It is slow, so by default it
is timed on a few heads and extrapolated to all (the output says so). Compile time is reported apart from
run time (cmrjax times are the minimum of repeats after a warm-up call, with results fetched to the host).

    python benchmarks/bench_fit.py                      # default: quick CPU run
    python benchmarks/bench_fit.py --gpu                # large case (all reference heads) on the GPU
    python benchmarks/bench_fit.py --validate           # the "gradient fit vs grid, by simulation" check

``--validate`` re-evaluates fitted parameters by simulation (rao_blackwell estimator, corners simulated,
common random numbers for the grid point and the gradient point of each head) and prints the fraction of
heads where the gradient fit's simulated distance is <= the best grid point's, and the median improvement.
Its surface is the reference grid with the closed-form corner entries (beta_rec in {0, 1}, gamma_ft = 0)
replaced by simulated ones (``--surface FILE`` uses a fully simulated grid instead, e.g. one from ``cmrjax
simulate --grid fit-surface``; ``--min-gain`` as in ``cmrjax fit``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def original_loop(profile: np.ndarray, crp: np.ndarray):
    """One head, as the original: a triple loop over (beta_enc, beta_rec, gamma_ft), numpy per point."""
    best = (np.inf, None, None)
    p = profile[3:14] - profile[3:14].min()
    var = np.var(p)
    for i in range(crp.shape[0]):
        for j in range(crp.shape[1]):
            for k in range(crp.shape[2]):
                c = crp[i, j, k, 3:14]
                c = c / c.sum()
                c = c - c.min()
                s = p.max() / c.max()
                d = np.mean((p - c * s) ** 2) / var
                if d < best[0]:
                    best = (d, (i, j, k), s)
    return best


def _timeit(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def _heads(ref, names, n):
    from cmrjax.io import load_scores

    rows, labels = [], []
    for nm in names:
        s = load_scores(ref / "scores" / nm)
        rows.append(s.crp_scores.reshape(-1, s.crp_scores.shape[-1]))
        labels += [f"{s.name}:{l}" for l in s.labels.ravel()]
    P = np.concatenate(rows)
    reps = -(-n // len(P))
    return np.tile(P, (reps, 1))[:n], (labels * reps)[:n]


def bench(args) -> None:
    import jax

    from cmrjax.fit import fit_profiles
    from cmrjax.io import load_crp_grid
    from cmrjax.reference import reference_dir

    ref = reference_dir(required=True)
    grid = load_crp_grid(ref / "crps" / "cmr_crp_avg_20_11.npy")
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, python {platform.python_version()}, "
          f"numpy {np.__version__}, dtype {'float64' if jax.config.jax_enable_x64 else 'float32'}")

    gpt2, _ = _heads(ref, ["gpt2-small.npz"], 144)
    p410 = sorted(p.name for p in (ref / "scores").glob("pythia-410m*.npz"))
    n_grad = args.gradient_heads
    many, _ = _heads(ref, p410, n_grad)
    n_grid = len(gpt2)
    if args.gpu:
        allfiles = sorted(p.name for p in (ref / "scores").glob("*.npz"))
        big, _ = _heads(ref, allfiles, 10**9)
        gpt2, n_grid = big, len(big)
        many, n_grad = big, len(big)

    # baseline: per-head numpy triple loop, on a subset, extrapolated
    nb = min(args.baseline_heads, n_grid)
    t = time.perf_counter()
    base = [original_loop(gpt2[i], grid.crp) for i in range(nb)]
    t_base = (time.perf_counter() - t) / nb

    # grid fit
    t = time.perf_counter()
    out = fit_profiles(gpt2, grid, method="grid")
    t_grid_first = time.perf_counter() - t
    t_grid = _timeit(lambda: fit_profiles(gpt2, grid, method="grid"), args.repeats)
    for i, (d, idx, _) in enumerate(base):
        assert tuple(out["index_grid"][i]) == idx and abs(out["distance_grid"][i] - d) <= 1e-5 * d

    # gradient fit (includes its grid fit for the starts)
    kw = dict(method="both", steps=args.steps, n_starts=args.starts)
    t = time.perf_counter()
    g = fit_profiles(many, grid, **kw)
    t_grad_first = time.perf_counter() - t
    t_grad = _timeit(lambda: fit_profiles(many, grid, **kw), max(1, args.repeats // 2))

    rows = [
        ("numpy loop (original)", n_grid, t_base * n_grid, 1 / t_base, f"timed on {nb} heads, extrapolated"),
        ("cmrjax grid fit", n_grid, t_grid, n_grid / t_grid, f"compile+first call {t_grid_first:.2f} s"),
        (f"cmrjax gradient fit ({args.starts} starts x {args.steps} steps)", n_grad, t_grad, n_grad / t_grad,
         f"compile+first call {t_grad_first:.2f} s"),
    ]
    print(f"\n{'method':<46} {'heads':>7} {'time (s)':>10} {'heads/s':>10} {'vs numpy':>9}  note")
    for name, n, tt, hps, note in rows:
        print(f"{name:<46} {n:>7} {tt:>10.4f} {hps:>10.1f} {hps * t_base:>8.0f}x  {note}")
    print(f"\ngrid fit vs numpy loop: {t_base * n_grid / t_grid:.0f}x faster on {n_grid} heads "
          f"(goal: all 144 GPT-2 heads < 0.2 s; measured {t_grid:.3f} s for {n_grid})")
    print(f"gradient fits: {n_grad} heads in {t_grad:.2f} s (goal: 1,440 heads < 30 s); "
          f"surface distance <= grid distance on {np.mean(g['distance'] <= g['distance_grid'] * (1 + 1e-5)):.1%}, "
          f"converged {np.mean(g['converged']):.1%}")


def validate(args) -> None:
    import jax

    from cmrjax.fit import fit_profiles, resimulate_distance
    from cmrjax.io import CRPGrid, load_crp_grid, load_scores
    from cmrjax.model import SimConfig
    from cmrjax.reference import reference_dir
    from cmrjax.simulate import simulate_crp
    from cmrjax.surface import build_surface

    ref = reference_dir(required=True)
    grid = load_crp_grid(ref / "crps" / "cmr_crp_avg_20_11.npy")
    sim = dict(estimator="rao_blackwell", corners="simulate", config=SimConfig())
    t0 = time.perf_counter()
    if args.surface:
        sgrid = load_crp_grid(args.surface)
        src = args.surface
    else:
        e, r, gm = np.meshgrid(grid.beta_enc, grid.beta_rec, grid.gamma_ft, indexing="ij")
        corner = ((r == 0) | (r == 1)) & (gm == 0)
        pts = np.stack([e[corner], r[corner], gm[corner]], -1)
        res = simulate_crp(jax.random.key(args.seed + 1), pts, trials=args.corner_trials, **sim)
        crp = grid.crp.copy()
        crp[corner] = res.crp
        sgrid = CRPGrid(crp=crp, beta_enc=grid.beta_enc, beta_rec=grid.beta_rec, gamma_ft=grid.gamma_ft,
                        lags=grid.lags)
        src = (f"reference grid, {corner.sum()} closed-form corner entries replaced by simulation "
               f"({args.corner_trials} trials x 20 starts, rao_blackwell)")
    print(f"surface: {src} [{time.perf_counter() - t0:.0f} s]")
    surf = build_surface(sgrid, lags=np.arange(-5, 6))
    s = load_scores(ref / "scores" / args.validate_scores)
    prof = s.crp_scores.reshape(-1, s.crp_scores.shape[-1])
    labels = s.labels.ravel()
    if args.validate_heads:
        prof, labels = prof[: args.validate_heads], labels[: args.validate_heads]
    out = fit_profiles(prof, grid, method="both", surface=surf, steps=args.steps, n_starts=args.starts,
                       min_gain=args.min_gain)
    t0 = time.perf_counter()
    key = jax.random.key(args.seed)
    d_grad, _, _ = resimulate_distance(key, prof, out["params"], trials=args.eval_trials, **sim)
    d_grid, _, _ = resimulate_distance(key, prof, out["params_grid"], trials=args.eval_trials, **sim)
    print(f"re-simulated {2 * len(prof)} points ({args.eval_trials} trials x 20 starts each, rao_blackwell, "
          f"corners simulated, common random numbers) [{time.perf_counter() - t0:.0f} s]")
    ok = np.isfinite(d_grad) & np.isfinite(d_grid)
    le = d_grad[ok] <= d_grid[ok]
    imp = d_grid[ok] - d_grad[ok]
    rel = imp / d_grid[ok]
    moved = np.any(np.abs(out["params"] - out["params_grid"]) > 1e-9, axis=1)[ok]
    print(f"{s.name}: {ok.sum()} heads; gradient fit moved off the grid point on {moved.sum()}")
    print(f"simulated distance, gradient <= grid: {le.sum()}/{ok.sum()} = {le.mean():.1%} (goal >= 95%)")
    print(f"median improvement (grid - gradient): {np.median(imp):.3g} absolute, {np.median(rel):.2%} relative; "
          f"among moved heads: {np.median(imp[moved]) if moved.any() else float('nan'):.3g} absolute, "
          f"{np.median(rel[moved]) if moved.any() else float('nan'):.2%} relative")
    print(f"heads with simulated distance < 0.5: grid {np.sum(d_grid[ok] < 0.5)}, gradient {np.sum(d_grad[ok] < 0.5)}")
    cmr = d_grid[ok] < 0.5
    print(f"among the CMR-like heads (grid distance < 0.5): gradient <= grid on {le[cmr].sum()}/{cmr.sum()} = "
          f"{le[cmr].mean():.1%}; among the others {le[~cmr].sum()}/{(~cmr).sum()}")
    worst = np.argsort(rel)[:5]
    for i in worst:
        print(f"  worst: {labels[ok][i]} grid {d_grid[ok][i]:.4f} -> gradient {d_grad[ok][i]:.4f} "
              f"(params grid {out['params_grid'][ok][i].round(3).tolist()} -> {out['params'][ok][i].round(3).tolist()})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="large case: all reference heads (needs a GPU jax)")
    ap.add_argument("--validate", action="store_true", help="run the simulation check of gradient fits")
    ap.add_argument("--baseline-heads", type=int, default=3, help="heads timed with the numpy loop (default 3)")
    ap.add_argument("--gradient-heads", type=int, default=1440, help="heads for the gradient fit (default 1440)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--surface", default=None, help="--validate: a fully simulated CRP grid for the surface")
    ap.add_argument("--corner-trials", type=int, default=1000)
    ap.add_argument("--eval-trials", type=int, default=3000,
                    help="--validate: trials x 20 starts per re-simulated point (300 misjudges flat heads)")
    ap.add_argument("--validate-scores", default="gpt2-small.npz")
    ap.add_argument("--validate-heads", type=int, default=0, help="first N heads only (0: all)")
    ap.add_argument("--min-gain", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    if args.gpu and jax.devices()[0].platform != "gpu":
        print("--gpu: no GPU visible to jax; install jax[cuda12]", file=sys.stderr)
        return 2
    validate(args) if args.validate else bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
