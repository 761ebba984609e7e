"""File schemas: head-score files, CRP-grid files and fit files (numpy only).

This module is the only contract between the torch side (``extraction``) and the JAX side (``cmrjax``).
Every file is a plain ``.npz`` (never a pickle) with a JSON ``metadata`` string. Writes are atomic: the
file is written to a temporary name in the same folder and renamed over the target, so a crash never
leaves a half-written result.

Schemas
-------
Scores file (one model, or one training checkpoint), as in the original study's reference files:

=================  ==========================  =================================================
key                shape                       meaning
=================  ==========================  =================================================
``CRP_scores``     (layers, heads, lags)       mean pre-softmax attention score by lag
``CRP_scores_sem`` (layers, heads, lags)       its standard error over query tokens
``head_scores``    (layers, heads)             induction-head matching score
``copying_score``  (layers, heads)             OV-circuit copying score, in [-1, 1]
``labels``         (layers, heads)             strings ``L{layer}H{head}``
``lags``           (lags,)  optional           lag of each column; default -8..+7
``CRP_pattern``    (layers, heads, lags) opt.  mean post-softmax attention probability by lag
``CRP_pattern_sem``(layers, heads, lags) opt.  its standard error
``metadata``       JSON string, optional       model, checkpoint, prompt settings, seed, ...
=================  ==========================  =================================================

CRP-grid file (written by ``cmrjax simulate``): ``crp`` (n_beta_enc, n_beta_rec, n_gamma_ft, lags),
``crp_sem`` (same shape), ``beta_enc``, ``beta_rec``, ``gamma_ft``, ``lags``, ``metadata``. With
``--points`` the grid is a list: ``crp`` (points, lags) and ``points`` (points, 3).
The reference ``cmr_crp_avg_20_11.npy`` (paper grid, lags -8..+8) is read as the same thing.

Fit file (written by ``cmrjax fit``): see :func:`save_fits`.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1

#: Lags of the reference score files' last axis: -8..+7 (index 8 is lag 0).
DEFAULT_SCORE_LAGS = np.arange(-8, 8)
#: Lags of the reference CRP grid's last axis: -8..+8.
DEFAULT_CRP_LAGS = np.arange(-8, 9)


class FileFormatError(ValueError):
    """A file is missing, truncated, or does not follow the schema it claims."""


# --------------------------------------------------------------------------------------------------
# atomic writes


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> Path:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz``, atomically.

    The data go to a temporary file in the target folder, are flushed to disk, and the file is renamed
    over ``path``. Readers see either the old file or the complete new one, never a partial write.

    Raises:
      OSError: the folder does not exist or is not writable (nothing is left behind).
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"output path {str(path)!r} must end in .npz")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"output folder {str(folder)!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before any work, when ``path`` cannot be written.

    Raises:
      OSError: with a one-line message naming the folder and the fix.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise OSError(f"cannot write {str(path)!r}: folder {str(folder)!r} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OSError(f"cannot write {str(path)!r}: the file exists and is read-only")


def _open_npz(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{str(path)!r} is empty")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise FileFormatError(
            f"{str(path)!r} is not a readable .npz file (truncated or corrupt?): {e}"
        ) from e


def _metadata_from(arrays: Mapping[str, np.ndarray]) -> dict:
    if "metadata" not in arrays:
        return {}
    try:
        return json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError as e:
        raise FileFormatError(f"metadata is not valid JSON: {e}") from e


def _metadata_array(metadata: Mapping[str, Any] | None) -> np.ndarray:
    meta = {"format_version": FORMAT_VERSION, **(metadata or {})}
    return np.array(json.dumps(meta, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in metadata")


def package_version() -> str:
    from cmrjax import __version__

    return __version__


# --------------------------------------------------------------------------------------------------
# scores files


@dataclass(frozen=True)
class Scores:
    """Per-head attention measurements of one model (or checkpoint).

    Attributes:
      crp_scores: (layers, heads, lags) mean pre-softmax attention score by lag.
      crp_scores_sem: (layers, heads, lags) standard errors.
      head_scores: (layers, heads) induction-head matching score.
      copying_score: (layers, heads) OV copying score.
      labels: (layers, heads) ``L{layer}H{head}`` strings.
      lags: (lags,) the lag of each column of ``crp_scores``.
      crp_pattern, crp_pattern_sem: optional post-softmax profiles, same shape as ``crp_scores``.
      metadata: provenance (model, checkpoint, prompts, seed, weights hash, ...).
      name: a short name for the source (file stem by default).
    """

    crp_scores: np.ndarray
    crp_scores_sem: np.ndarray
    head_scores: np.ndarray
    copying_score: np.ndarray
    labels: np.ndarray
    lags: np.ndarray = field(default_factory=lambda: DEFAULT_SCORE_LAGS.copy())
    crp_pattern: np.ndarray | None = None
    crp_pattern_sem: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        validate_scores(self)

    @property
    def n_layers(self) -> int:
        return int(self.crp_scores.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.crp_scores.shape[1])


def validate_scores(s: Scores) -> None:
    """Check shapes and consistency of a :class:`Scores` (NaN values are allowed: fits mark them)."""
    if s.crp_scores.ndim != 3:
        raise FileFormatError(
            f"CRP_scores must have shape (layers, heads, lags), got shape {s.crp_scores.shape}"
        )
    L, H, K = s.crp_scores.shape
    if len(s.lags) != K:
        raise FileFormatError(f"lags has {len(s.lags)} entries but CRP_scores has {K} lag columns")
    if not np.all(np.diff(s.lags) == 1):
        raise FileFormatError(f"lags must be consecutive integers, got {s.lags.tolist()}")
    for name, arr, shape in [
        ("CRP_scores_sem", s.crp_scores_sem, (L, H, K)),
        ("head_scores", s.head_scores, (L, H)),
        ("copying_score", s.copying_score, (L, H)),
        ("labels", s.labels, (L, H)),
        ("CRP_pattern", s.crp_pattern, (L, H, K)),
        ("CRP_pattern_sem", s.crp_pattern_sem, (L, H, K)),
    ]:
        if arr is not None and tuple(arr.shape) != shape:
            raise FileFormatError(f"{name} must have shape {shape} to match CRP_scores, got {arr.shape}")


def save_scores(
    path: str | os.PathLike,
    *,
    crp_scores: np.ndarray,
    crp_scores_sem: np.ndarray,
    head_scores: np.ndarray,
    copying_score: np.ndarray,
    labels: np.ndarray | None = None,
    lags: np.ndarray | None = None,
    crp_pattern: np.ndarray | None = None,
    crp_pattern_sem: np.ndarray | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and atomically write a scores file (keys as in the module docstring)."""
    crp_scores = np.asarray(crp_scores)
    L, H = crp_scores.shape[:2]
    if labels is None:
        labels = head_labels(L, H)
    s = Scores(
        crp_scores=crp_scores,
        crp_scores_sem=np.asarray(crp_scores_sem),
        head_scores=np.asarray(head_scores),
        copying_score=np.asarray(copying_score),
        labels=np.asarray(labels).astype(str),
        lags=DEFAULT_SCORE_LAGS.copy() if lags is None else np.asarray(lags, dtype=np.int64),
        crp_pattern=None if crp_pattern is None else np.asarray(crp_pattern),
        crp_pattern_sem=None if crp_pattern_sem is None else np.asarray(crp_pattern_sem),
    )
    arrays = dict(
        CRP_scores=s.crp_scores,
        CRP_scores_sem=s.crp_scores_sem,
        head_scores=s.head_scores,
        copying_score=s.copying_score,
        labels=s.labels,
        lags=s.lags,
        metadata=_metadata_array({"kind": "scores", "cmrjax_version": package_version(), **(metadata or {})}),
    )
    if s.crp_pattern is not None:
        arrays["CRP_pattern"] = s.crp_pattern
    if s.crp_pattern_sem is not None:
        arrays["CRP_pattern_sem"] = s.crp_pattern_sem
    return atomic_savez(path, **arrays)


def load_scores(path: str | os.PathLike) -> Scores:
    """Read a scores file (this project's or the original study's converted ``.npz``).

    Raises:
      FileFormatError: missing/empty/truncated file, missing keys, or inconsistent shapes.
    """
    arrays = _open_npz(path)
    required = ["CRP_scores", "CRP_scores_sem", "head_scores", "copying_score"]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise FileFormatError(f"{str(path)!r} is not a scores file: missing keys {missing}")
    crp = np.asarray(arrays["CRP_scores"])
    if crp.ndim != 3:
        raise FileFormatError(f"{str(path)!r}: CRP_scores must be (layers, heads, lags), got {crp.shape}")
    L, H, _ = crp.shape
    try:
        return Scores(
            crp_scores=crp,
            crp_scores_sem=np.asarray(arrays["CRP_scores_sem"]),
            head_scores=np.asarray(arrays["head_scores"]),
            copying_score=np.asarray(arrays["copying_score"]),
            labels=np.asarray(arrays["labels"]).astype(str) if "labels" in arrays else head_labels(L, H),
            lags=np.asarray(arrays["lags"], dtype=np.int64) if "lags" in arrays else DEFAULT_SCORE_LAGS.copy(),
            crp_pattern=arrays.get("CRP_pattern"),
            crp_pattern_sem=arrays.get("CRP_pattern_sem"),
            metadata=_metadata_from(arrays),
            name=Path(path).stem,
        )
    except FileFormatError as e:
        raise FileFormatError(f"{str(path)!r}: {e}") from e


def head_labels(n_layers: int, n_heads: int) -> np.ndarray:
    """``L{layer}H{head}`` labels, shape (n_layers, n_heads)."""
    return np.array([[f"L{l}H{h}" for h in range(n_heads)] for l in range(n_layers)])


def scores_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (a folder gives its ``*.npz`` files, sorted) into a list of files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise FileFormatError(f"folder {str(p)!r} holds no .npz scores files")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileFormatError(f"{str(p)!r} does not exist")
    return out


def load_original_pickle(path: str | os.PathLike, *, allow_pickle: bool = False) -> Scores:
    """Read one of the original study's joblib pickles (``all_scores_*.pkl``).

    Loading a pickle runs code from the file, so this refuses unless ``allow_pickle=True`` is passed
    (the CLI's ``--allow-pickle``). Needs ``joblib`` and ``torch`` (the pickles hold torch tensors).
    """
    if not allow_pickle:
        raise PermissionError(
            f"refusing to unpickle {str(path)!r}: loading a pickle runs code from the file. "
            "Pass allow_pickle=True (CLI: --allow-pickle) only for files you trust."
        )
    import pickle

    try:
        import joblib  # type: ignore

        obj = joblib.load(path)
    except ImportError:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - explicitly allowed by the caller
    return _scores_from_original(obj, name=Path(path).stem)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scores_from_original(obj: Any, name: str) -> Scores:
    if not isinstance(obj, Mapping):
        raise FileFormatError(f"original pickle holds a {type(obj).__name__}, expected a dict of arrays")
    keys = {k.lower(): k for k in obj}

    def get(*names: str) -> np.ndarray | None:
        for n in names:
            if n.lower() in keys:
                return _to_numpy(obj[keys[n.lower()]])
        return None

    crp = get("CRP_scores")
    if crp is None:
        raise FileFormatError(f"original pickle has no CRP_scores; keys are {sorted(obj)}")
    L, H = crp.shape[:2]
    sem = get("CRP_scores_sem")
    head = get("head_scores", "induction_scores")
    copy = get("copying_score", "copying_scores")
    labels = get("labels")
    return Scores(
        crp_scores=crp.astype(np.float64),
        crp_scores_sem=np.full_like(crp, np.nan, dtype=np.float64) if sem is None else sem.astype(np.float64),
        head_scores=np.full((L, H), np.nan) if head is None else head.reshape(L, H),
        copying_score=np.full((L, H), np.nan) if copy is None else copy.reshape(L, H),
        labels=head_labels(L, H) if labels is None else np.asarray(labels).astype(str).reshape(L, H),
        metadata={"source": "original pickle"},
        name=name,
    )


# --------------------------------------------------------------------------------------------------
# CRP grid files


@dataclass(frozen=True)
class CRPGrid:
    """Simulated lag-CRPs over a product grid of (beta_enc, beta_rec, gamma_ft).

    Attributes:
      crp: (n_beta_enc, n_beta_rec, n_gamma_ft, lags), each CRP sums to 1 over its lags.
      crp_sem: same shape, or None.
      beta_enc, beta_rec, gamma_ft: the grid axes (1-D).
      lags: (lags,) consecutive integers, symmetric around 0.
      metadata: provenance.
    """

    crp: np.ndarray
    beta_enc: np.ndarray
    beta_rec: np.ndarray
    gamma_ft: np.ndarray
    lags: np.ndarray
    crp_sem: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.beta_enc), len(self.beta_rec), len(self.gamma_ft), len(self.lags))
        if tuple(self.crp.shape) != shape:
            raise FileFormatError(f"crp must have shape {shape} (axes x lags), got {self.crp.shape}")
        if self.crp_sem is not None and tuple(self.crp_sem.shape) != shape:
            raise FileFormatError(f"crp_sem must have shape {shape}, got {self.crp_sem.shape}")

    @property
    def points(self) -> np.ndarray:
        """All grid points as an (n_points, 3) array in C order of the grid axes."""
        e, r, g = np.meshgrid(self.beta_enc, self.beta_rec, self.gamma_ft, indexing="ij")
        return np.stack([e.ravel(), r.ravel(), g.ravel()], axis=-1)


def paper_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The original study's grid: beta_enc = 0.05..1 (20), beta_rec = 0..1 (21), gamma_ft = 0..1 (11)."""
    beta_enc = np.arange(1, 21) / 20.0
    beta_rec = np.arange(0, 21) / 20.0
    gamma_ft = np.arange(0, 11) / 10.0
    return beta_enc, beta_rec, gamma_ft


def save_crp_grid(
    path: str | os.PathLike,
    *,
    crp: np.ndarray,
    lags: np.ndarray,
    crp_sem: np.ndarray | None = None,
    beta_enc: np.ndarray | None = None,
    beta_rec: np.ndarray | None = None,
    gamma_ft: np.ndarray | None = None,
    points: np.ndarray | None = None,
    trials: np.ndarray | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a CRP-grid file (product grid, or a list of ``points``).

    ``trials``, when given, holds per-point trial counts (shaped like ``crp`` without its lag axis).
    """
    arrays: dict[str, Any] = dict(crp=np.asarray(crp), lags=np.asarray(lags))
    if trials is not None:
        arrays["trials"] = np.asarray(trials)
    if crp_sem is not None:
        arrays["crp_sem"] = np.asarray(crp_sem)
    if points is not None:
        arrays["points"] = np.asarray(points)
    else:
        arrays.update(beta_enc=np.asarray(beta_enc), beta_rec=np.asarray(beta_rec), gamma_ft=np.asarray(gamma_ft))
    arrays["metadata"] = _metadata_array({"kind": "crp_grid", "cmrjax_version": package_version(), **(metadata or {})})
    return atomic_savez(path, **arrays)


def load_crp_grid(path: str | os.PathLike) -> CRPGrid:
    """Read a CRP grid: a ``cmrjax simulate`` ``.npz`` or the reference ``cmr_crp_avg_20_11.npy``.

    A bare ``.npy`` must have the paper grid's shape (20, 21, 11, lags); its SEM is read from a
    sibling ``*_sem_*`` file when one exists.
    """
    path = Path(path)
    if path.suffix == ".npy":
        if not path.exists():
            raise FileFormatError(f"{str(path)!r} does not exist")
        try:
            crp = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise FileFormatError(f"{str(path)!r} is not a readable .npy file (truncated?): {e}") from e
        e_, r_, g_ = paper_axes()
        if crp.ndim != 4 or crp.shape[:3] != (len(e_), len(r_), len(g_)):
            raise FileFormatError(
                f"{str(path)!r}: a bare .npy CRP grid must have the paper grid's shape (20, 21, 11, lags), "
                f"got {crp.shape}; save other grids with `cmrjax simulate --out FILE.npz`"
            )
        K = crp.shape[-1]
        if K % 2 != 1:
            raise FileFormatError(f"{str(path)!r}: lag axis must have odd length (-m..+m), got {K}")
        sem = None
        sem_path = path.with_name(path.name.replace("_avg_", "_sem_"))
        if sem_path != path and sem_path.exists():
            sem = np.load(sem_path, allow_pickle=False)
        m = K // 2
        return CRPGrid(crp=crp, crp_sem=sem, beta_enc=e_, beta_rec=r_, gamma_ft=g_,
                       lags=np.arange(-m, m + 1), metadata={"source": str(path)})
    arrays = _open_npz(path)
    if "crp" not in arrays or "lags" not in arrays:
        raise FileFormatError(f"{str(path)!r} is not a CRP-grid file: needs keys 'crp' and 'lags'")
    if "points" in arrays:
        raise FileFormatError(
            f"{str(path)!r} holds a list of points, not a product grid; fits need a product grid "
            "(simulate with --grid paper or --beta-enc/--beta-rec/--gamma-ft)"
        )
    try:
        return CRPGrid(
            crp=arrays["crp"], crp_sem=arrays.get("crp_sem"), beta_enc=arrays["beta_enc"],
            beta_rec=arrays["beta_rec"], gamma_ft=arrays["gamma_ft"], lags=arrays["lags"],
            metadata=_metadata_from(arrays),
        )
    except KeyError as e:
        raise FileFormatError(f"{str(path)!r}: missing grid axis {e}") from e


def load_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of any cmrjax ``.npz`` file ({} when it has none)."""
    return _metadata_from(_open_npz(path))


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, with pickles refused and truncation reported clearly."""
    return dict(_open_npz(path))


def metadata_array(metadata: Mapping[str, Any] | None) -> np.ndarray:
    """A metadata mapping as the 0-d JSON string array stored under ``metadata``."""
    return _metadata_array(metadata)


# --------------------------------------------------------------------------------------------------
# fit files (appended by the fit engine; see cmrjax.fit.HeadFits)

#: Keys of a fit file: always present, then those of gradient fits (absent when not run).
FIT_KEYS = ("labels", "params_grid", "index_grid", "distance_grid", "scale_grid", "lags_fit", "profile_fit",
            "crp_fit_grid")
FIT_GRADIENT_KEYS = ("params", "distance", "scale", "converged")


def save_fits(path: str | os.PathLike, fits: Any) -> Path:
    """Atomically write a :class:`cmrjax.fit.HeadFits` as ``.npz``.

    Keys: ``labels`` (L, H), ``params_grid`` (L, H, 3), ``index_grid`` (L, H, 3), ``distance_grid``,
    ``scale_grid`` (L, H), ``lags_fit`` (K,), ``profile_fit``, ``crp_fit_grid`` (L, H, K); for gradient fits
    ``params`` (L, H, 3), ``distance``, ``scale``, ``converged`` (L, H); ``metadata`` (JSON string).
    """
    arrays: dict[str, Any] = {k: np.asarray(getattr(fits, k)) for k in FIT_KEYS}
    arrays["labels"] = arrays["labels"].astype(str)
    for k in FIT_GRADIENT_KEYS:
        v = getattr(fits, k)
        if v is not None:
            arrays[k] = np.asarray(v)
    arrays["metadata"] = _metadata_array({"cmrjax_version": package_version(), **(fits.metadata or {}),
                                          "kind": "fits"})
    return atomic_savez(path, **arrays)


def load_fits(path: str | os.PathLike) -> Any:
    """Read a fit file written by :func:`save_fits` (or ``cmrjax fit``) as a :class:`cmrjax.fit.HeadFits`.

    Raises:
      FileFormatError: missing/empty/truncated file, missing keys, or inconsistent shapes.
    """
    from cmrjax.fit import HeadFits

    arrays = _open_npz(path)
    missing = [k for k in FIT_KEYS if k not in arrays]
    if missing:
        raise FileFormatError(f"{str(path)!r} is not a fit file: missing keys {missing}")
    labels = np.asarray(arrays["labels"]).astype(str)
    LH = labels.shape
    K = len(arrays["lags_fit"])
    shapes = {"params_grid": LH + (3,), "index_grid": LH + (3,), "distance_grid": LH, "scale_grid": LH,
              "profile_fit": LH + (K,), "crp_fit_grid": LH + (K,), "params": LH + (3,), "distance": LH,
              "scale": LH, "converged": LH}
    for k, shape in shapes.items():
        if k in arrays and tuple(arrays[k].shape) != shape:
            raise FileFormatError(f"{str(path)!r}: {k} must have shape {shape} to match labels, got {arrays[k].shape}")
    return HeadFits(
        labels=labels, params_grid=arrays["params_grid"], index_grid=arrays["index_grid"],
        distance_grid=arrays["distance_grid"], scale_grid=arrays["scale_grid"], lags_fit=arrays["lags_fit"],
        profile_fit=arrays["profile_fit"], crp_fit_grid=arrays["crp_fit_grid"],
        params=arrays.get("params"), distance=arrays.get("distance"), scale=arrays.get("scale"),
        converged=arrays.get("converged"), metadata=_metadata_from(arrays),
    )
