"""``cmrjax fit``: fit CMR to every head of one or more scores files (thin wrapper over cmrjax.fit)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="fit CMR to attention-head profiles (grid and/or gradient fits)",
        description="Fit CMR lag-CRPs to the attention-score profiles of every head, with the paper's CMR "
        "distance (link minmax) or a log-linear softmax link. Several files (e.g. all checkpoints of a "
        "model) are fitted in one batch.",
    )
    p.add_argument("--scores", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help="scores .npz files or folders of them (original-study .pkl files need --allow-pickle)")
    p.add_argument("--crps", required=True, metavar="GRID",
                   help="CRP grid: a `cmrjax simulate` .npz or the reference cmr_crp_avg_20_11.npy")
    p.add_argument("--method", choices=["grid", "gradient", "both"], default="grid",
                   help="grid: best grid point (the paper's); gradient/both: also continuous parameters by "
                   "optax from the best grid cells (default: grid)")
    p.add_argument("--link", choices=["minmax", "softmax"], default="minmax",
                   help="minmax: the paper's distance; softmax: scores ~ a log CRP + b (default: minmax)")
    p.add_argument("--out", required=True, metavar="FITS.npz",
                   help="output .npz (one input file) or a folder (several: one <name>.fits.npz each)")
    p.add_argument("--surface", metavar="GRID", default=None,
                   help="CRP grid for the differentiable surface of gradient fits (a dense grid simulated "
                   "with --estimator rao_blackwell --corners simulate, or cmrjax simulate --grid fit-surface); "
                   "default: --crps")
    p.add_argument("--min-gain", type=float, default=0.0, metavar="FRACTION",
                   help="gradient fits: keep a head's best grid cell unless the surface distance drops by at least "
                   "this fraction (default 0; 0.005 with a --grid fit-surface surface, see the README)")
    p.add_argument("--window", type=int, default=5, help="fit lags -W..+W (default 5, the paper's)")
    p.add_argument("--starts", type=int, default=4, help="gradient fits: starts from the best grid cells")
    p.add_argument("--steps", type=int, default=200, help="gradient fits: Adam steps")
    p.add_argument("--learning-rate", type=float, default=0.05, help="gradient fits: Adam step size (logits)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (enables jax x64)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading the original study's pickle files (runs code from the file: trusted "
                   "files only; needs joblib and torch)")
    p.add_argument("--top", type=int, default=10, help="closest heads listed in the summary (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _load_inputs(paths: list[str], allow_pickle: bool):
    from cmrjax.cli import CLIError
    from cmrjax.io import load_original_pickle, load_scores, scores_paths

    files: list[Path] = []
    for p in map(Path, paths):
        if p.suffix == ".pkl":
            if not p.exists():
                raise CLIError(f"{str(p)!r} does not exist")
            files.append(p)
        else:
            files.extend(scores_paths([p]))
    out = []
    for f in files:
        if f.suffix == ".pkl":
            if not allow_pickle:
                raise CLIError(
                    f"{str(f)!r} is a pickle: loading it runs code from the file; pass --allow-pickle "
                    "only for files you trust"
                )
            out.append(load_original_pickle(f, allow_pickle=True))
        else:
            out.append(load_scores(f))
    return files, out


def _summary(fits, top: int) -> str:
    lines = []
    name = fits.metadata.get("source") or "scores"
    d = fits.distance_grid.ravel()
    lab = fits.labels.ravel()
    ok = np.isfinite(d)
    lines.append(f"{name}: {ok.sum()} heads fitted ({(~ok).sum()} NaN), link {fits.metadata.get('link')}; "
                 f"grid distance < 0.5: {np.sum(d[ok] < 0.5)}/{ok.sum()} ({np.mean(d[ok] < 0.5):.1%})")
    has_grad = fits.distance is not None
    if has_grad:
        g = fits.distance.ravel()
        gok = np.isfinite(g)
        lines.append(f"  gradient (surface) distance < 0.5: {np.sum(g[gok] < 0.5)}/{gok.sum()}; "
                     f"converged {np.sum(fits.converged.ravel()[gok])}/{gok.sum()}; "
                     f"median distance grid {np.median(d[ok]):.4f} -> gradient {np.median(g[gok]):.4f}")
    order = np.argsort(np.where(ok, d, np.inf), kind="stable")[:top]
    pg = fits.params_grid.reshape(-1, 3)
    sg = fits.scale_grid.ravel()
    head = f"  {'head':>10} {'distance':>9} {'b_enc':>6} {'b_rec':>6} {'g_ft':>5} {'scale':>9}"
    if has_grad:
        head += f" | {'grad dist':>9} {'b_enc':>6} {'b_rec':>6} {'g_ft':>6}"
    lines.append(f"  closest {len(order)} heads:")
    lines.append(head)
    for i in order:
        row = f"  {lab[i]:>10} {d[i]:9.4f} {pg[i, 0]:6.2f} {pg[i, 1]:6.2f} {pg[i, 2]:5.2f} {sg[i]:9.3g}"
        if has_grad:
            pp = fits.params.reshape(-1, 3)[i]
            row += f" | {fits.distance.ravel()[i]:9.4f} {pp[0]:6.3f} {pp[1]:6.3f} {pp[2]:6.3f}"
        lines.append(row)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cmrjax.cli import CLIError

    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    from cmrjax.fit import fit_scores
    from cmrjax.io import check_writable, load_crp_grid, save_fits
    from cmrjax.surface import build_surface

    if args.window < 1:
        raise CLIError(f"--window {args.window} must be a positive integer")
    if not 0 <= args.min_gain < 1:
        raise CLIError(f"--min-gain {args.min_gain} must be a fraction in [0, 1)")
    files, scores = _load_inputs(args.scores, args.allow_pickle)
    out = Path(args.out)
    if len(files) == 1:
        if out.suffix != ".npz":
            raise CLIError(f"--out {str(out)!r} must end in .npz")
        targets = [out]
    else:
        if out.suffix == ".npz":
            raise CLIError(f"{len(files)} score files given: --out must be a folder (one <name>.fits.npz each), "
                           f"not {str(out)!r}")
        out.mkdir(parents=True, exist_ok=True)
        names = [f.stem for f in files]
        if len(set(names)) != len(names):
            raise CLIError("several input files share a name; fit them in separate calls")
        targets = [out / f"{n}.fits.npz" for n in names]
    for t in targets:
        check_writable(t)
    grid = load_crp_grid(args.crps)
    surface = None
    if args.surface and args.method != "grid":
        surface = build_surface(load_crp_grid(args.surface), lags=np.arange(-args.window, args.window + 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        fits = fit_scores(scores, grid, method=args.method, link=args.link, window=args.window, surface=surface,
                          n_starts=args.starts, steps=args.steps, learning_rate=args.learning_rate,
                          min_gain=args.min_gain, progress=not args.no_progress)
    for w in caught:
        print(f"cmrjax fit: warning: {w.message}", file=sys.stderr)
    for f, t in zip(fits, targets):
        f.metadata["scores_file"] = str(files[targets.index(t)])
        f.metadata["crps_file"] = str(args.crps)
        if args.surface:
            f.metadata["surface_file"] = str(args.surface)
        save_fits(t, f)
        print(_summary(f, args.top))
        print(f"  wrote {t}")
    return 0
