"""LoRA adapters: apply one to a loaded model, or fold it into a full model folder that ``Encoder.load`` reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import MissingDependencyError, ModelLoadError

CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
           "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json")  # fmt: skip


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise MissingDependencyError("LoRA adapters need peft: pip install 'unite-search[train]'") from exc
    return peft


def apply_adapter(inner, adapter: str | os.PathLike):
    """``inner`` (a Qwen2VLModel) with the adapter's LoRA weights merged in."""
    peft = _peft()
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    return peft.PeftModel.from_pretrained(inner, adapter).merge_and_unload()


def merge_adapter(base: str | os.PathLike | None, adapter: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``base`` + ``adapter`` as one plain Qwen2-VL model folder at ``output``."""
    from ..models import load_model, resolve

    resolved = resolve(base)
    full = load_model(resolved.path, dtype=None, attn="sdpa")
    full.model = apply_adapter(full.model, adapter)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(output)
    for name in CARRIED:
        if (resolved.path / name).is_file():
            shutil.copy2(resolved.path / name, output / name)
    return output
