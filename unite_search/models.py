"""The model table, name resolution and weight loading (no remote code)."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError

# Short names of the released checkpoints (their dims and uses: README, "Models").
ALIASES = {
    "unite-base-2b": "friedrichor/Unite-Base-Qwen2-VL-2B",
    "unite-base-7b": "friedrichor/Unite-Base-Qwen2-VL-7B",
    "unite-instruct-2b": "friedrichor/Unite-Instruct-Qwen2-VL-2B",
    "unite-instruct-7b": "friedrichor/Unite-Instruct-Qwen2-VL-7B",
}
DEFAULT_MODEL = "unite-base-2b"
# Files an encoder needs; the hub repos also hold README and images we never read.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # local folder holding config, weights and tokenizer
    model_id: str  # hub id, or the folder's absolute path
    revision: str  # hub commit, or "local-<fingerprint of the weights>"


def _offline_help(name: str, hub_id: str) -> str:
    return (
        f"could not fetch the weights of {name!r} ({hub_id}) from the Hugging Face hub. "
        f"On a machine with internet: `huggingface-cli download {hub_id} --local-dir DIR` "
        "(or `hf download`), copy DIR here and pass the folder as the model "
        "(`Encoder.load('DIR')`, `unite-search ... --model DIR`). A copy already in the hub cache is used "
        "when HF_HUB_OFFLINE=1 is set."
    )


def fingerprint(folder: Path) -> str:
    """A cheap identity of a weights folder: names, sizes, and the first and last MiB of each file."""
    h = hashlib.sha256()
    files = [*sorted(folder.glob("*.safetensors")), folder / "config.json"]
    for f in files:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def resolve(model: str | os.PathLike | None = None) -> ResolvedModel:
    """Turn an alias, hub id or folder into a local folder, downloading if needed and allowed."""
    name = os.fspath(model) if model is not None else DEFAULT_MODEL
    if os.path.isdir(name):
        folder = Path(name).resolve()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} has no config.json: it is not a model folder")
        return ResolvedModel(folder, str(folder), "local-" + fingerprint(folder))
    hub_id = ALIASES.get(name.lower())
    if hub_id is None:
        if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name):
            raise ModelLoadError(f"model folder {name!r} does not exist (or is not a folder)")
        if name.count("/") != 1:
            raise ModelLoadError(
                f"unknown model {name!r}: use one of {', '.join(ALIASES)}, a Hugging Face id "
                "(owner/name) or a local folder"
            )
        hub_id = name
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(hub_id, allow_patterns=WEIGHT_PATTERNS)
    except Exception as exc:
        raise ModelLoadError(_offline_help(name, hub_id) + f" (cause: {type(exc).__name__}: {exc})") from exc
    folder = Path(path)
    return ResolvedModel(folder, hub_id, folder.name)


def read_config(folder: Path):
    """The folder's config as a Qwen2VLConfig, whatever model_type the checkpoint claims."""
    from transformers import Qwen2VLConfig

    raw = json.loads((folder / "config.json").read_text())
    claimed = raw.pop("model_type", "qwen2_vl")
    raw.pop("architectures", None)
    raw.pop("auto_map", None)  # never run remote code
    if claimed not in ("qwen2_vl", "unite_qwen2_vl"):
        raise ModelLoadError(f"{folder}: model_type {claimed!r} is not a Qwen2-VL checkpoint")
    return Qwen2VLConfig.from_dict(raw)


@contextmanager
def _quiet_transformers():
    """Silence transformers' per-tensor progress bar and info logs during a load, then restore them."""
    from transformers.utils import logging as hf_logging

    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def load_model(folder: Path, *, dtype, attn: str):
    """Qwen2-VL weights from ``folder``; every checkpoint tensor must land in the model."""
    from transformers import Qwen2VLForConditionalGeneration

    config = read_config(folder)
    try:
        with _quiet_transformers():
            model, info = Qwen2VLForConditionalGeneration.from_pretrained(
                folder,
                config=config,
                dtype=dtype,
                attn_implementation=attn,
                output_loading_info=True,
                trust_remote_code=False,
            )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load weights from {folder}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    problems = {
        "missing": sorted(missing),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mismatched": sorted(str(k) for k in info.get("mismatched_keys", [])),
    }
    if any(problems.values()):
        detail = "; ".join(f"{kind}: {v[:5]}{' ...' if len(v) > 5 else ''}" for kind, v in problems.items() if v)
        raise ModelLoadError(f"{folder}: checkpoint does not match Qwen2-VL ({detail})")
    return model
