"""``cmrjax simulate``: lag-CRPs over a parameter grid or a list of points, resumable."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from cmrjax.cli import CLIError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from e


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate CMR lag-CRPs over a parameter grid",
        description="Simulate CMR lag-CRPs for every (beta_enc, beta_rec, gamma_ft) of a grid or point list. "
        "Finished chunks are saved as the run goes; --resume continues an interrupted run.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--grid", choices=["paper", "fit-surface"],
                     help="paper: the original study's 20 x 21 x 11 grid; fit-surface: a grid for gradient fits "
                     "(cmrjax fit --crps): the paper's axes with beta_rec every 0.0125 below 0.1, rao-blackwell, "
                     "--trials auto, corners simulated, and 64x --match-trials at beta_enc <= 0.15 (~3 min on 2 "
                     "CPU cores)")
    src.add_argument("--points", type=Path, metavar="FILE.npy",
                     help="an (N, 3) .npy array of (beta_enc, beta_rec, gamma_ft) points")
    p.add_argument("--beta-enc", type=_floats, metavar="V,V,..", help="beta_enc values (grid axis)")
    p.add_argument("--beta-rec", type=_floats, metavar="V,V,..", help="beta_rec values (grid axis)")
    p.add_argument("--gamma-ft", type=_floats, metavar="V,V,..", help="gamma_ft values (grid axis)")
    p.add_argument("--trials", default=None, metavar="N|auto",
                   help="recall trials per start position (default 1000); 'auto' (with --estimator rao-blackwell): "
                   "per point, as many as match the sampled estimator's precision at --match-trials on every "
                   "lag, measured by a pilot run and again on all trials before each top-up (every trial "
                   "counts towards the estimate; trials drawn in stratified units of 8 per start)")
    p.add_argument("--match-trials", type=int, default=1000,
                   help="--trials auto: the sampled trial count whose precision to match (default 1000)")
    p.add_argument("--pilot-trials", type=int, default=16,
                   help="--trials auto: trials per start of the pilot run (default 16; rounded up to whole units "
                   "of 8, at least two)")
    p.add_argument("--starts", type=int, default=20, help="start positions s0 = 0..starts-1 (default 20)")
    p.add_argument("--max-recalls", type=int, default=50, help="maximum retrievals per trial (default 50)")
    p.add_argument("--list-length", type=int, default=100, help="number of list items (default 100)")
    p.add_argument("--max-lag", type=int, default=8, help="CRP lag window -max_lag..+max_lag (default 8)")
    p.add_argument("--estimator", choices=["sampled", "rao-blackwell"], default=None,
                   help="sampled: the paper's estimator (default); rao-blackwell: lower variance at equal trials")
    p.add_argument("--corners", choices=["closed-form", "simulate"], default=None,
                   help="closed-form: the paper's closed forms at beta_rec in {0,1}, gamma_ft=0 (default); "
                   "simulate: simulate them too (continuous surface)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="parameter points per compiled chunk (--trials auto: work units of 8 trials x starts)")
    p.add_argument("--float64", action="store_true", help="simulate in float64 (slower)")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="JAX CPU devices to shard the work over (default: one per core, unless JAX_NUM_CPU_DEVICES "
                   "or XLA_FLAGS set a count; results do not depend on it); accelerators are used when present")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npz", help="output file")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _grid_axes(args) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    from cmrjax.io import paper_axes

    lists = (args.beta_enc, args.beta_rec, args.gamma_ft)
    if args.grid is not None:
        if any(v is not None for v in lists):
            raise CLIError(f"--grid {args.grid} cannot be combined with --beta-enc/--beta-rec/--gamma-ft")
        if args.grid == "fit-surface":
            from cmrjax.surface import fit_surface_axes

            return fit_surface_axes()
        return paper_axes()
    if args.points is not None:
        if any(v is not None for v in lists):
            raise CLIError("--points cannot be combined with --beta-enc/--beta-rec/--gamma-ft")
        return None
    if any(v is None for v in lists):
        raise CLIError("give --grid paper, --points FILE.npy, or all three of --beta-enc, --beta-rec, --gamma-ft")
    return tuple(np.asarray(v, float) for v in lists)


def _resolve_preset(args) -> None:
    """Fill unset --trials/--estimator/--corners: from --grid fit-surface, which needs rao-blackwell, auto and
    simulated corners, else the defaults (1000, sampled, closed-form)."""
    preset = dict(trials="auto", estimator="rao-blackwell", corners="simulate")
    if args.grid == "fit-surface":
        clash = [f"--{k} {getattr(args, k)}" for k, v in preset.items() if getattr(args, k) not in (None, v)]
        if clash:
            raise CLIError(f"--grid fit-surface simulates with --trials auto --estimator rao-blackwell --corners "
                           f"simulate; drop {', '.join(clash)}")
    else:
        preset = dict(trials="1000", estimator="sampled", corners="closed-form")
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name[: -len(".npz")] + ".partial.npz")


def run(args) -> int:
    from cmrjax.devices import use_cpu_cores

    if args.cpu_devices is not None and args.cpu_devices < 1:
        raise CLIError(f"--cpu-devices={args.cpu_devices} must be a positive integer")
    use_cpu_cores(args.cpu_devices)  # before JAX starts
    _resolve_preset(args)
    auto = args.trials == "auto"
    if auto:
        if args.estimator != "rao-blackwell":
            raise CLIError("--trials auto sizes the rao-blackwell estimator; add --estimator rao-blackwell")
        if args.match_trials < 1 or args.pilot_trials < 2:
            raise CLIError("--match-trials must be >= 1 and --pilot-trials >= 2")
    else:
        try:
            args.trials = int(args.trials)
        except ValueError:
            raise CLIError(f"--trials={args.trials!r} must be a positive integer or 'auto'") from None
        if args.trials < 1:
            raise CLIError(f"--trials={args.trials} must be a positive integer")
    if args.starts < 1 or args.max_recalls < 1 or args.list_length < 1 or args.max_lag < 1:
        raise CLIError("--starts, --max-recalls, --list-length and --max-lag must be positive integers")
    if args.out.suffix != ".npz":
        raise CLIError(f"--out {str(args.out)!r} must end in .npz")
    from cmrjax.io import check_writable

    check_writable(args.out)
    axes = _grid_axes(args)
    if axes is None:
        if not args.points.exists():
            raise CLIError(f"--points file {str(args.points)!r} does not exist")
        try:
            points = np.load(args.points, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CLIError(f"cannot read --points {str(args.points)!r}: {e}") from e
    else:
        from cmrjax.simulate import grid_points

        points = grid_points(*axes)

    from cmrjax.model import SimConfig, validate_params

    try:
        points = validate_params(points, "--points" if axes is None else "grid")
        config = SimConfig(list_length=args.list_length, n_starts=args.starts, max_recalls=args.max_recalls,
                           max_lag=args.max_lag, dtype="float64" if args.float64 else "float32")
    except ValueError as e:
        raise CLIError(str(e)) from e

    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    from cmrjax.adaptive import SCHEDULE, UNIT_TRIALS, UPPER_Z, iter_simulate_adaptive
    from cmrjax.io import atomic_savez, load_metadata, metadata_array, package_version, read_npz, save_crp_grid
    from cmrjax.simulate import iter_simulate_chunks

    estimator = args.estimator.replace("-", "_")
    corners = args.corners.replace("-", "_")
    schedule = ",".join(map(str, SCHEDULE))
    match, match_text, preset = np.full(len(points), args.match_trials), f"{args.match_trials}", {}
    if args.grid == "fit-surface":
        from cmrjax.surface import (FIT_SURFACE_LOW_BETA_ENC, FIT_SURFACE_MAX_TRIALS, FIT_SURFACE_PRECISION,
                                    fit_surface_match_trials)

        match, preset = fit_surface_match_trials(points, args.match_trials), dict(max_trials=FIT_SURFACE_MAX_TRIALS)
        match_text = (f"{args.match_trials};{FIT_SURFACE_PRECISION * args.match_trials} at beta_enc<="
                      f"{FIT_SURFACE_LOW_BETA_ENC},max={FIT_SURFACE_MAX_TRIALS}")
    trials_setting = (f"auto(match={match_text},pilot={args.pilot_trials},unit={UNIT_TRIALS},"
                      f"schedule={schedule},stratified,upper_z={UPPER_Z})" if auto else args.trials)
    settings = dict(seed=args.seed, trials=trials_setting, n_starts=args.starts, max_recalls=args.max_recalls,
                    list_length=args.list_length, max_lag=args.max_lag, estimator=estimator, corners=corners,
                    dtype=config.dtype, n_points=int(len(points)),
                    points_sha=_sha(points))
    N, K = len(points), 2 * args.max_lag + 1
    crp = np.full((N, K), np.nan)
    sem = np.full((N, K), np.nan)
    done = np.zeros(N, bool)
    per_point = np.zeros(N, np.int64) if auto else None  # auto: trials per start used, filled as points finish
    partial = _partial_path(args.out)
    if partial.exists():
        if not args.resume:
            raise CLIError(f"an interrupted run left {str(partial)!r}; pass --resume to continue it or delete it")
        prev = load_metadata(partial)
        diff = {k: (prev.get(k), v) for k, v in settings.items() if prev.get(k) != v}
        if diff:
            raise CLIError(f"--resume: settings differ from the interrupted run: {diff}")
        arr = read_npz(partial)
        crp, sem, done = arr["crp"], arr["crp_sem"], arr["done"].astype(bool)
        if auto:
            per_point = np.asarray(arr["trials"], np.int64)
    todo = np.flatnonzero(~done)
    key = jax.random.key(args.seed)

    def save_partial():
        extra = {} if per_point is None else {"trials": per_point}
        atomic_savez(partial, crp=crp, crp_sem=sem, done=done, metadata=metadata_array(settings), **extra)

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N, initial=int(done.sum()), unit="pt", desc="simulate", dynamic_ncols=True)
    t0 = time.perf_counter()
    last_save = t0
    if len(todo):
        if auto:
            it = iter_simulate_adaptive(key, points[todo], config=config, match_trials=match[todo],
                                        pilot_trials=args.pilot_trials, unit_trials=UNIT_TRIALS, schedule=SCHEDULE,
                                        corners=corners, indices=todo, group_size=256, chunk_size=args.chunk_size,
                                        **preset)
        else:
            it = ((i, c, s, None) for i, c, s in iter_simulate_chunks(
                key, points[todo], config=config, trials=args.trials, estimator=estimator, corners=corners,
                chunk_size=args.chunk_size, indices=todo))
        try:
            for idx, c, s, t in it:
                crp[idx], sem[idx], done[idx] = c, s, True
                if t is not None:
                    per_point[idx] = t
                if bar is not None:
                    bar.update(len(idx))
                now = time.perf_counter()
                if now - last_save > 5.0 and not done.all():
                    save_partial()
                    last_save = now
        except KeyboardInterrupt:
            if done.any():
                save_partial()
            raise
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    meta = dict(settings, package_version=package_version(), seconds=round(elapsed, 3),
                devices=[str(d) for d in jax.devices()])
    if axes is None:
        save_crp_grid(args.out, crp=crp, crp_sem=sem, lags=config.lags, points=points, trials=per_point,
                      metadata=meta)
    else:
        shape = tuple(len(a) for a in axes) + (K,)
        save_crp_grid(args.out, crp=crp.reshape(shape), crp_sem=sem.reshape(shape), lags=config.lags,
                      beta_enc=axes[0], beta_rec=axes[1], gamma_ft=axes[2], metadata=meta,
                      trials=None if per_point is None else per_point.reshape(shape[:-1]))
    if partial.exists():
        os.unlink(partial)
    used = ""
    if per_point is not None:
        sim = per_point[per_point > 0]
        used = f"; {N - len(sim)} points exact (closed forms, 0 trials)"
        if len(sim):
            used += (f", trials per start at the {len(sim)} simulated: median {int(np.median(sim))}, "
                     f"mean {sim.mean():.0f}, max {sim.max()}")
    print(f"wrote {args.out} ({N} points, {trials_setting} trials x {args.starts} starts, {estimator}) "
          f"in {elapsed:.1f} s{used}")
    return 0


def _sha(points: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(points, dtype=np.float64).tobytes()).hexdigest()[:16]
