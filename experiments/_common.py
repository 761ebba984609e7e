"""Shared plumbing of the experiment scripts: inputs, fits through :mod:`cmrjax.fit`, tables, metadata.

Nothing here fits or simulates by itself: fits go through :func:`cmrjax.fit.fit_scores`; the summaries
below are counts and percentages over its result arrays.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from cmrjax.io import FileFormatError, Scores, load_crp_grid, load_scores

#: Heads with CMR distance below this count as CMR-like (the paper's threshold).
CMR_LIKE_THRESHOLD = 0.5
#: Heads with matching score above this count as induction heads.
INDUCTION_THRESHOLD = 0.5


class InputError(ValueError):
    """A missing or unreadable input: printed as one line, exit code 2 (a ValueError, so the `cmrjax`
    command reports it the same way)."""


# --------------------------------------------------------------------------------------------------
# arguments and inputs


def add_input_args(p: argparse.ArgumentParser, *, many: bool = False, model_default: str | None = None) -> None:
    """``--reference``, ``--scores``, ``--model``, ``--crps`` and ``--out`` options."""
    p.add_argument("--reference", type=Path, default=None,
                   help="reference data folder (holding crps/ and scores/); default: $CMRJAX_REFERENCE or "
                   "../shared/reference/icl-cmr beside the repository")
    p.add_argument("--scores", type=Path, nargs="+" if many else None, default=None, metavar="FILE",
                   help="scores file(s) written by `cmrjax extract` (used instead of the reference scores)")
    if model_default is not None or many:
        p.add_argument("--model", nargs="+" if many else None, default=model_default,
                       help="reference model name(s): a stem of a file in REFERENCE/scores/"
                       + (f" (default: {model_default})" if model_default else ""))
    p.add_argument("--crps", type=Path, default=None,
                   help="CRP grid to fit against (`cmrjax simulate` output or the reference .npy); "
                   "default: REFERENCE/crps/cmr_crp_avg_20_11.npy")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")


def reference_folder(arg: Path | None, *, required: bool) -> Path | None:
    """The reference folder from ``--reference`` or the default lookup."""
    if arg is not None:
        if not (arg / "scores").is_dir():
            raise InputError(f"--reference {str(arg)!r} is not a reference folder (no scores/ inside); "
                             "pass the icl-cmr folder (holding crps/ and scores/)")
        return arg
    from cmrjax.reference import reference_dir

    d = reference_dir()
    if d is None and required:
        raise InputError("reference data not found: pass --reference DIR (the icl-cmr folder), set "
                         "CMRJAX_REFERENCE, or give --scores and --crps files from `cmrjax extract` and "
                         "`cmrjax simulate`")
    return d


def load_grid(crps: Path | None, reference: Path | None):
    """The CRP grid from ``--crps``, else the reference grid."""
    if crps is None:
        if reference is None:
            raise InputError("no CRP grid: pass --crps GRID (from `cmrjax simulate`) or --reference DIR")
        crps = reference / "crps" / "cmr_crp_avg_20_11.npy"
    if not Path(crps).exists():
        raise InputError(f"CRP grid {str(crps)!r} does not exist; pass --crps GRID "
                         "(create one with `cmrjax simulate --grid paper`)")
    return load_crp_grid(crps)


def reference_scores_path(reference: Path, model: str) -> Path:
    """``REFERENCE/scores/MODEL.npz``; a bare model name with checkpoints gives its last checkpoint."""
    p = reference / "scores" / f"{model}.npz"
    if p.exists():
        return p
    cps = checkpoint_files(reference, model)
    if cps:
        return cps[-1][1]
    avail = sorted({re.sub(r"__cp\d+$", "", f.stem) for f in (reference / "scores").glob("*.npz")})
    raise InputError(f"no scores for model {model!r} in {str(reference / 'scores')!r}; available: {avail}")


def checkpoint_files(reference: Path, model: str) -> list[tuple[int, Path]]:
    """[(checkpoint, path)] of ``MODEL__cpNNN.npz`` files, sorted by checkpoint."""
    out = []
    for f in (reference / "scores").glob(f"{model}__cp*.npz"):
        m = re.search(r"__cp(\d+)$", f.stem)
        if m:
            out.append((int(m.group(1)), f))
    return sorted(out)


def read_scores(path: Path) -> Scores:
    if not Path(path).exists():
        raise InputError(f"scores file {str(path)!r} does not exist; create it with `cmrjax extract` "
                         "or pass --reference DIR")
    return load_scores(path)


def model_name(s: Scores) -> str:
    return str(s.metadata.get("model") or s.name or "model")


# --------------------------------------------------------------------------------------------------
# fits (through the fit engine) and summaries of their arrays


def fit(scores: Scores, grid, *, method: str = "grid", link: str = "minmax", window: int = 5, seed: int = 0,
        progress: bool = False):
    """:func:`cmrjax.fit.fit_scores` with the paper's settings (grid, min-max link, window 5)."""
    from cmrjax.fit import fit_scores

    kwargs: dict[str, Any] = dict(method=method, link=link, window=window)
    if method != "grid":
        import jax

        kwargs["key"] = jax.random.key(seed)
    return fit_scores(scores, grid, **kwargs)


def percent_by_layer(distance: np.ndarray, threshold: float = CMR_LIKE_THRESHOLD) -> np.ndarray:
    """(layers,) percent of heads per layer with distance < threshold (NaN distances count as not)."""
    d = np.asarray(distance, dtype=float)
    return 100.0 * np.mean(np.where(np.isfinite(d), d < threshold, False), axis=1)


def relative_position(n_layers: int) -> np.ndarray:
    """Layer index / (n_layers - 1), so the first layer is 0 and the last is 1."""
    return np.arange(n_layers) / max(n_layers - 1, 1)


def ranked_heads(fits, k: int | None = None, *, use: str = "grid") -> list[dict]:
    """Heads sorted by CMR distance (smallest first), as rows of a table."""
    d, p, s = fit_arrays(fits, use)
    order = np.argsort(np.where(np.isfinite(d), d, np.inf).ravel(), kind="stable")
    if k is not None:
        order = order[:k]
    L, H = d.shape
    rows = []
    for j in order:
        l, h = divmod(int(j), H)
        rows.append(dict(label=str(fits.labels[l, h]), layer=l, head=h, distance=float(d[l, h]),
                         beta_enc=float(p[l, h, 0]), beta_rec=float(p[l, h, 1]), gamma_ft=float(p[l, h, 2]),
                         scale=float(s[l, h])))
    return rows


def fit_arrays(fits, use: str = "grid") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance, params, scale) of the grid fit (``use="grid"``) or the gradient fit."""
    if use == "grid":
        return np.asarray(fits.distance_grid), np.asarray(fits.params_grid), np.asarray(fits.scale_grid)
    if getattr(fits, "distance", None) is None:
        raise ValueError("these fits have no gradient results; fit with method='both' or 'gradient'")
    return np.asarray(fits.distance), np.asarray(fits.params), np.asarray(fits.scale)


def head_table(scores: Scores, fits) -> list[dict]:
    """One row per head: matching/copying scores and the grid (and gradient, when present) fits."""
    L, H = scores.head_scores.shape
    grad = getattr(fits, "distance", None) is not None
    rows = []
    for l in range(L):
        for h in range(H):
            r = dict(label=str(scores.labels[l, h]), layer=l, head=h,
                     relative_layer=float(relative_position(L)[l]),
                     matching_score=float(scores.head_scores[l, h]),
                     copying_score=float(scores.copying_score[l, h]),
                     distance=float(fits.distance_grid[l, h]),
                     beta_enc=float(fits.params_grid[l, h, 0]), beta_rec=float(fits.params_grid[l, h, 1]),
                     gamma_ft=float(fits.params_grid[l, h, 2]), scale=float(fits.scale_grid[l, h]))
            if grad:
                r.update(distance_gradient=float(fits.distance[l, h]),
                         beta_enc_gradient=float(fits.params[l, h, 0]),
                         beta_rec_gradient=float(fits.params[l, h, 1]),
                         gamma_ft_gradient=float(fits.params[l, h, 2]),
                         scale_gradient=float(fits.scale[l, h]),
                         converged=bool(fits.converged[l, h]) if fits.converged is not None else None)
            rows.append(r)
    return rows


# --------------------------------------------------------------------------------------------------
# outputs


def make_out(out: Path) -> Path:
    """Create the output folder (and parents); fail clearly if that is impossible."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {str(out)!r}: {e.strerror or e}") from e
    if not os.access(out, os.W_OK):
        raise InputError(f"output folder {str(out)!r} is not writable")
    return out


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    if not rows:
        path.write_text("")
        return path
    fields = list(rows[0])
    for r in rows[1:]:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    return v


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if np.isfinite(f) else None
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def write_metadata(out: Path, script: str, args: argparse.Namespace | Mapping[str, Any], **extra: Any) -> Path:
    """``metadata.json``: script, arguments, seeds, inputs, versions, time."""
    from cmrjax import __version__

    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    a = {k: v for k, v in a.items() if not callable(v)}
    versions = {"cmrjax": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for mod in ("jax", "matplotlib", "scipy", "torch", "transformer_lens"):
        if mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    meta = dict(script=script, arguments=a, versions=versions,
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
    return write_json(out / "metadata.json", meta)


def save_fig(fig, out: Path, stem: str) -> list[Path]:
    from cmrjax.plot import save_figure

    paths = save_figure(fig, out, stem)
    fig.clf()
    return paths


def main_wrapper(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any],
                 argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn input errors into one line on stderr with exit code 2."""
    args = parser.parse_args(argv)
    try:
        run(args)
    except (InputError, FileFormatError, FileNotFoundError, ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def progress(it: Iterable, desc: str, total: int | None = None, disable: bool = False):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, disable=disable, leave=False)
