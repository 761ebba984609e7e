"""Locate the original study's reference data (never shipped with the package).

Looked up in this order: the ``CMRJAX_REFERENCE`` environment variable, then ``../shared/reference/icl-cmr``
beside the repository root (the layout of a development checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CMRJAX_REFERENCE"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_dir(required: bool = False) -> Path | None:
    """The reference folder (holding ``crps/`` and ``scores/``), or None when it is absent.

    Args:
      required: raise ``FileNotFoundError`` with a message naming the fix instead of returning None.
    """
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates.append(_REPO_ROOT.parent / "shared" / "reference" / "icl-cmr")
    for c in candidates:
        if (c / "crps").is_dir() and (c / "scores").is_dir():
            return c
    if required:
        raise FileNotFoundError(
            "reference data not found (looked in: " + ", ".join(map(str, candidates)) + "); "
            f"set {ENV_VAR}=/path/to/icl-cmr or pass the folder explicitly"
        )
    return None


def reference_crp_grid_path(required: bool = False) -> Path | None:
    d = reference_dir(required)
    return None if d is None else d / "crps" / "cmr_crp_avg_20_11.npy"
