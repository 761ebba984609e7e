"""Simulation throughput: a plain numpy CMR simulator (one trial at a time) vs cmrjax, in one run.

Sections (each prints a table):

1. equal work: the numpy baseline and cmrjax's sampled estimator on the same grid points and trial counts;
   recalls (retrieval steps) per second and their ratio; projected time of the full paper grid at 1,000
   sampled trials per start.
2. precision: at random grid points, the Rao-Blackwellised trial count per start whose Monte Carlo variance
   matches the sampled estimator's at 1,000 trials on every CRP entry (variances from per-trial influences,
   both estimators on the same trials), and the work this saves on the full grid.
3. full grid: the whole 20 x 21 x 11 paper grid at the paper's precision with the Rao-Blackwellised estimator
   and per-point trial counts from a pilot run (``--uniform``: also with one count for all points), timed end
   to end, and compared with the reference grid when it is present.
4. (``--allocation``) how well ``--trials auto`` sizes its counts: at random grid points, the counts it
   chooses against the counts that 1,024 trials per start ask for, for stratified units (the default) and
   for independent trials.

Usage:
    python benchmarks/bench_simulate.py                  # CPU, about 5 minutes on 2 cores (--uniform: +7)
    python benchmarks/bench_simulate.py --quick          # smaller, about 1 minute
    python benchmarks/bench_simulate.py --skip-grid --allocation   # sections 1, 2 and 4
    python benchmarks/bench_simulate.py --gpu            # the full paper grid on the default GPU, timed
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def numpy_trial(rng, M, s0, beta_rec, gamma_ft, n, max_recalls, max_lag):
    """The paper's recall trial as a numpy user writes it: dense M, one matrix-vector product per recall."""
    t = np.zeros(n + 1)
    t[s0] = 1.0
    counts = np.zeros(2 * max_lag + 1)
    prev, n_rec = s0, 0
    for _ in range(max_recalls):
        a = M.T @ t
        p = a / a.sum()
        j = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
        if j >= n:
            break
        n_rec += 1
        if abs(j - prev) <= max_lag:
            counts[j - prev + max_lag] += 1
        f = np.zeros(n + 1)
        f[j] = 1.0
        t_in = (1 - gamma_ft) * f + gamma_ft * M[:, j]
        t_in /= np.linalg.norm(t_in)
        t = (1 - beta_rec) * t + beta_rec * t_in
        t /= np.linalg.norm(t)
        prev = j
    return counts, n_rec


def numpy_crps(points, trials, n_starts, n=100, max_recalls=50, max_lag=8, seed=0):
    """Baseline CRPs (points, lags) and the number of retrieval steps made."""
    rng = np.random.default_rng(seed)
    out, steps = [], 0
    for be, br, g in points:
        T = np.eye(n + 1, k=1)
        M = np.linalg.solve(np.eye(n + 1) - (1 - be) * T, T)
        per_start = []
        for s0 in range(n_starts):
            acc = np.zeros(2 * max_lag + 1)
            for _ in range(trials):
                c, k = numpy_trial(rng, M, s0, br, g, n, max_recalls, max_lag)
                steps += min(k + 1, max_recalls)
                if k:
                    acc += c / k
            per_start.append(acc / acc.sum())
        out.append(np.mean(per_start, 0))
    return np.array(out), steps


def _timed(call, repeats: int):
    """(first call's seconds including compilation, best of ``repeats`` later calls, last result)."""
    t0 = time.perf_counter()
    res = call()
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = call()
        best = min(best, time.perf_counter() - t0)
    return first, best, res


def time_cmrjax(key, points, repeats: int = 10, **kw):
    """``simulate_crp`` timed: first call, best of ``repeats`` (a call of section 1 takes ~25 ms), result."""
    from cmrjax.simulate import simulate_crp

    return _timed(lambda: simulate_crp(key, points, **kw), repeats)


def time_adaptive(key, points, **kw):
    """The adaptive full-precision run timed: first call, best of 2, result."""
    from cmrjax.adaptive import simulate_crp_adaptive

    return _timed(lambda: simulate_crp_adaptive(key, points, **kw)[0], 2)


def table(rows, header):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (about 1 minute)")
    ap.add_argument("--gpu", action="store_true", help="time the full paper grid on the GPU and exit")
    ap.add_argument("--rb-trials", type=int, default=None, help="trials per start for the full-grid run")
    ap.add_argument("--skip-grid", action="store_true", help="skip section 3")
    ap.add_argument("--uniform", action="store_true",
                    help="section 3: also run the full grid with one uniform trial count (the maximum needed)")
    ap.add_argument("--allocation", action="store_true", help="section 4: check the per-point counts (+2 min)")
    ap.add_argument("--allocation-points", type=int, default=96, help="section 4: random grid points (default 96)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="JAX CPU devices (default: one per core, as `cmrjax simulate`; 1: JAX's default)")
    args = ap.parse_args(argv)

    import jax

    from cmrjax.devices import use_cpu_cores

    use_cpu_cores(args.cpu_devices)

    from cmrjax.io import paper_axes
    from cmrjax.model import SimConfig
    from cmrjax.reference import reference_crp_grid_path
    from cmrjax.simulate import grid_points

    devices = jax.devices()
    print(f"cmrjax simulation benchmark | jax {jax.__version__} | {len(devices)} x {devices[0].platform} "
          f"({devices[0].device_kind}) | python {platform.python_version()} | numpy {np.__version__}\n")
    results: dict = {"devices": [str(d) for d in devices]}
    E, R, G = paper_axes()
    grid = grid_points(E, R, G)
    n_grid = len(grid)
    steps_per_trial = 50  # max_recalls; most trials at paper settings use all of them
    ref_path = reference_crp_grid_path()

    if args.gpu:
        if devices[0].platform != "gpu":
            print("--gpu: no GPU visible to JAX (install jax[cuda12]); nothing timed")
            return 2

        ref = None
        if ref_path is not None:
            from cmrjax.io import load_crp_grid

            ref = load_crp_grid(ref_path).crp.reshape(n_grid, -1)
        runs = [("sampled, 1000 trials", partial(time_cmrjax, repeats=2, trials=1000, estimator="sampled")),
                ("rao_blackwell, per-point trials at the paper's precision (pilot included)",
                 partial(time_adaptive))]
        for label, fn in runs:
            first, best, res = fn(jax.random.key(0), grid)
            print(f"full paper grid ({n_grid} points x 20 starts, {label}): {best:.2f} s "
                  f"(first call incl. compile {first:.2f} s; goal <= 5 s on one H200)")
            results[f"gpu_grid_{label.split(',')[0]}"] = dict(seconds=best, first_call=first)
            if ref is not None:
                d = np.abs(res.crp - ref)
                print(f"  vs reference grid: mean |d| {d.mean():.5f}, max |d| {d.max():.5f}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return 0

    # 1. equal work ------------------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    pts = grid[rng.choice(n_grid, 4, replace=False)]
    trials = 10 if args.quick else 100
    t0 = time.perf_counter()
    _, np_steps = numpy_crps(pts, trials, 20)
    t_np = time.perf_counter() - t0
    first, best, _ = time_cmrjax(jax.random.key(0), pts, trials=trials, corners="simulate")
    jx_steps = len(pts) * 20 * trials * steps_per_trial  # the scan always runs max_recalls steps
    np_rate = np_steps / t_np
    jx_rate = np_steps / best  # credit cmrjax only with the steps the baseline needed (equal work)
    full_grid_steps = n_grid * 20 * 1000 * np_steps / (len(pts) * 20 * trials)
    rows = [["numpy, one trial at a time", f"{t_np:.2f}", f"{np_rate:,.0f}", "1.0x", f"{full_grid_steps / np_rate / 3600:.1f} h"],
            ["cmrjax sampled (compiled)", f"{best:.3f}", f"{jx_rate:,.0f}", f"{jx_rate / np_rate:.0f}x",
             f"{full_grid_steps / jx_rate / 60:.1f} min"]]
    print(f"1. Equal work: {len(pts)} grid points x 20 starts x {trials} trials, sampled estimator "
          f"(cmrjax compile + first call {first:.2f} s, excluded)")
    table(rows, ["implementation", "seconds", "recalls/s", "ratio", "full grid @1000 trials"])
    results["equal_work"] = dict(points=len(pts), trials=trials, numpy_s=t_np, cmrjax_s=best,
                                 numpy_recalls_per_s=np_rate, cmrjax_recalls_per_s=jx_rate,
                                 ratio=jx_rate / np_rate, cmrjax_compile_s=first)

    # 2. precision ---------------------------------------------------------------------------------------
    n_pts = 12 if args.quick else 40
    study = grid[~((grid[:, 2] == 0) & np.isin(grid[:, 1], [0.0, 1.0]))]  # corners are exact
    study = study[rng.choice(len(study), n_pts, replace=False)]
    from cmrjax.simulate import estimator_variances, trials_to_match

    T2 = 1024
    vs, vr = estimator_variances(jax.random.key(1), study, trials=T2)  # both estimators, same trials
    need = np.ceil(trials_to_match(vs, vr, trials=T2, match_trials=1000))  # lags with SD < 1e-5 ignored
    # the same in stratified units of 8 trials per start (as --trials auto draws them) and of 16: variance across
    # units
    vs8, vr8 = estimator_variances(jax.random.key(1), study, trials=T2, unit_trials=8)
    need8 = np.ceil(trials_to_match(vs8, vr8, trials=T2, match_trials=1000))
    vs16, vr16 = estimator_variances(jax.random.key(1), study, trials=T2, unit_trials=16)
    need16 = np.ceil(trials_to_match(vs16, vr16, trials=T2, match_trials=1000))
    sampled_total = n_grid * 20 * 1000 * steps_per_trial
    rows = []
    for label, nd in (("independent trials", need), ("stratified units of 8 (--trials auto)", need8),
                      ("stratified units of 16", need16)):
        q = np.quantile(nd, [0.5, 0.9, 1.0])
        rows.append([label, f"{q[0]:.0f}", f"{q[1]:.0f}", f"{q[2]:.0f}", f"{nd.mean():.0f}",
                     f"{sampled_total / (n_grid * 20 * q[2] * steps_per_trial):.1f}x",
                     f"{sampled_total / (n_grid * 20 * nd.mean() * steps_per_trial):.1f}x"])
    q = np.quantile(need, [0.5, 0.9, 1.0])
    print(f"2. Precision at {n_pts} random grid points: Rao-Blackwellised trials per start whose Monte Carlo SD "
          f"matches 1,000 sampled trials on every lag (influence variances from {T2:,} trials of each estimator)")
    table(rows, ["Rao-Blackwellised trials", "median", "90%", "max", "mean", "work saved (uniform T = max)",
                 "(per-point T)"])
    results["precision"] = dict(points=study.tolist(), trials_needed=need.tolist(),
                                trials_needed_units_of_8=need8.tolist(), trials_needed_units_of_16=need16.tolist())
    chosen = args.rb_trials or int(min(1000, q[2]))
    print(f"   -> a uniform count would need {chosen} trials per start (section 3 with --uniform; override: "
          "--rb-trials); per-point counts are what `--trials auto` uses\n")

    # 3. full grid ---------------------------------------------------------------------------------------
    if not args.skip_grid:
        from cmrjax.adaptive import simulate_crp_adaptive
        from cmrjax.simulate import default_chunk_size, simulate_crp

        ref = None
        if ref_path is not None:
            from cmrjax.io import load_crp_grid

            ref = load_crp_grid(ref_path).crp.reshape(n_grid, -1)

        def compare(res, label):
            if ref is None:
                print("   reference grid absent (../shared/reference/icl-cmr): no comparison")
                return {}
            d = np.abs(res.crp - ref)
            print(f"   {label} vs reference grid (1000 sampled trials, independent noise): mean |d| {d.mean():.5f} "
                  f"(goal <= 0.0006), max |d| {d.max():.5f} (goal <= 0.006)")
            return dict(mean_abs_diff=float(d.mean()), max_abs_diff=float(d.max()))

        bar = sys.stderr.isatty()
        # per-point trial counts sized by a pilot whose trials count (the default way to the paper's precision)
        t0 = time.perf_counter()
        res, per_point = simulate_crp_adaptive(jax.random.key(0), grid, progress=bar)
        total_s = time.perf_counter() - t0
        sim = per_point[per_point > 0]
        print(f"3. Full paper grid at the paper's precision, rao_blackwell with per-point trials "
              f"(`cmrjax simulate --grid paper --estimator rao-blackwell --trials auto`): {total_s:.1f} s, pilot "
              f"and compilation included (goal <= 30 s on 2 CPU cores); trials per start: median "
              f"{int(np.median(sim))}, mean {sim.mean():.0f}, max {int(sim.max())} "
              f"({sim.sum() * 20 * steps_per_trial / total_s / 1e6:.1f} M recall steps/s)")
        results["full_grid_auto"] = dict(seconds=total_s, mean_trials=float(sim.mean()),
                                         **compare(res, "per-point trials"))
        if args.uniform:
            chunk = default_chunk_size(SimConfig(), chosen, len(devices))
            t0 = time.perf_counter()
            res = simulate_crp(jax.random.key(0), grid[:1], trials=chosen, estimator="rao_blackwell",
                               chunk_size=chunk)
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = simulate_crp(jax.random.key(0), grid, trials=chosen, estimator="rao_blackwell", chunk_size=chunk,
                               progress=bar)
            grid_s = time.perf_counter() - t0
            print(f"   uniform {chosen} rao_blackwell trials x 20 starts: {grid_s:.1f} s (compile {compile_s:.1f} s "
                  "apart)")
            results["full_grid_uniform"] = dict(trials=chosen, seconds=grid_s, compile_s=compile_s,
                                                **compare(res, "uniform"))
    if args.allocation:
        results["allocation"] = allocation_check(grid, n_pts=32 if args.quick else args.allocation_points)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def allocation_check(grid, n_pts: int, seed: int = 11) -> dict:
    """Section 4: the counts ``--trials auto`` chooses against the need measured on 1,024 trials per start."""
    import jax

    from cmrjax.adaptive import UNIT_TRIALS, simulate_crp_adaptive
    from cmrjax.closed_form import is_corner
    from cmrjax.simulate import estimator_variances, trials_to_match

    rng = np.random.default_rng(seed)
    pts = grid[(grid[:, 1] > 0) & ~is_corner(grid)]  # exact there (no trials)
    pts = pts[rng.choice(len(pts), n_pts, replace=False)]
    rows, out = [], {}
    for label, stratify in ((f"stratified units of {UNIT_TRIALS}", True), ("independent trials", False)):
        vs, vr = estimator_variances(jax.random.key(5), pts, trials=1024,
                                     unit_trials=UNIT_TRIALS if stratify else None)
        need = trials_to_match(vs, vr, trials=1024)
        t0 = time.perf_counter()
        _, got = simulate_crp_adaptive(jax.random.key(0), pts, stratify=stratify)
        seconds = time.perf_counter() - t0
        r = got / np.maximum(need, 1e-9)
        rows.append([label, f"{need.mean():.1f}", f"{got.mean():.1f}", f"{got.sum() / need.sum():.2f}x",
                     f"{np.mean(r < 0.9):.1%}", f"{np.mean(r < 0.75):.1%}", f"{r.min():.2f}", f"{seconds:.1f}"])
        out[label] = dict(need_mean=float(need.mean()), trials_mean=float(got.mean()),
                          below_0_9=float(np.mean(r < 0.9)), below_0_75=float(np.mean(r < 0.75)), seconds=seconds)
    print(f"\n4. Per-point counts of --trials auto at {n_pts} random grid points against the need that 1,024 trials "
          "per start measure (mean trials per start; points whose count is below 0.9x / 0.75x their need)")
    table(rows, ["design", "need", "chosen", "work / need", "< 0.9x", "< 0.75x", "min ratio", "s (with compile)"])
    return out


if __name__ == "__main__":
    sys.exit(main())
