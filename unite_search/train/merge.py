"""LoRA adapters: apply one to a loaded model, or fold it into a full model folder that ``Encoder.load`` reads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import MissingDependencyError, ModelLoadError

LINEAGE = "unite-merge.json"  # written into a merged folder: the base and adapter it was made from
CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
           "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json")  # fmt: skip


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise MissingDependencyError("LoRA adapters need peft: pip install 'unite-search[train]'") from exc
    return peft


def check_adapter(adapter: str | os.PathLike) -> Path:
    """The absolute path of a LoRA adapter folder, after checking it holds a config and safetensors weights."""
    path = Path(os.path.abspath(adapter))
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a LoRA adapter folder (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        # peft would fall back to adapter_model.bin, a pickle: never loaded (and not in the fingerprint)
        raise ModelLoadError(f"{path} has no adapter_model.safetensors; save the adapter with safetensors")
    return path


def apply_adapter(inner, adapter: str | os.PathLike):
    """``inner`` (a Qwen2VLModel) with the adapter's LoRA weights merged in."""
    peft = _peft()
    adapter = check_adapter(adapter)
    return peft.PeftModel.from_pretrained(inner, adapter).merge_and_unload()


def merge_adapter(base: str | os.PathLike | None, adapter: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``base`` + ``adapter`` as one plain Qwen2-VL model folder at ``output``.

    The folder's own fingerprint (its whole weights) is its identity; ``unite-merge.json`` records its
    lineage: the base model id and revision and the adapter's path and fingerprint.
    """
    from ..models import fingerprint, load_model, resolve

    adapter = check_adapter(adapter)
    resolved = resolve(base)
    lineage = {
        "base_model_id": resolved.model_id,
        "base_revision": resolved.revision,
        "adapter": str(adapter),
        "adapter_fingerprint": fingerprint(adapter),
    }
    full = load_model(resolved.path, dtype=None, attn="sdpa")
    full.model = apply_adapter(full.model, adapter)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(output)
    for name in CARRIED:
        if (resolved.path / name).is_file():
            shutil.copy2(resolved.path / name, output / name)
    (output / LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")
    return output
