"""LoRA adapters: apply one to a loaded model, or fold it into a full model folder that ``Encoder.load`` reads."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..diskio import TMP_MARK, sync_folder
from ..errors import ConfigError, MissingDependencyError, ModelLoadError

LINEAGE = "unite-merge.json"  # written into a merged folder: the base and adapter it was made from
RECORD = "unite_train.json"  # written into an adapter by the trainer: its settings and the base it was trained on
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
    if not path.is_dir():  # a folder moved or deleted lacks more than its config
        raise ModelLoadError(f"LoRA adapter folder {path} does not exist (or is not a folder)")
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a LoRA adapter folder (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        # peft would fall back to adapter_model.bin, a pickle: never loaded (and not in the fingerprint)
        raise ModelLoadError(f"{path} has no adapter_model.safetensors; save the adapter with safetensors")
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}/adapter_config.json is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ModelLoadError(f"{path}/adapter_config.json is not a LoRA adapter's config (peft_type {got!r})")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ModelLoadError(f"{path}/adapter_config.json: the LoRA rank r must be a positive integer, not {rank!r}")
    return path


def recorded_base(adapter: Path) -> tuple[str, str] | None:
    """The base model an adapter records it was trained on (``unite_train.json``: ``base``, ``base_revision``),
    or None for an adapter without the record (one saved by peft itself, or by an older version)."""
    path = adapter / RECORD
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is unreadable ({type(exc).__name__}: {exc}); restore it or remove it") from None
    base, revision = (info.get("base"), info.get("base_revision")) if isinstance(info, dict) else (None, None)
    if not isinstance(base, str) or not isinstance(revision, str):
        return None
    return base, revision


def _revisions(resolved) -> Iterator[str]:
    """The revisions a base model has been known by: its own; under the identity rule before 2026-11-29 (a local
    folder); and, for a folder merged from a base and an adapter, the revision of that base with that adapter."""
    from ..models import fingerprint

    yield resolved.revision
    if resolved.revision.startswith("local-"):
        yield "local-" + fingerprint(resolved.path, legacy=True)
    try:
        lineage = json.loads((resolved.path / LINEAGE).read_text(encoding="utf-8"))
        yield f"{lineage['base_revision']}+lora-{lineage['adapter_fingerprint']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass


def resolve_base(model: str | os.PathLike | None, adapter: Path):
    """The base model to put ``adapter`` on: ``model``, or (when None) the one the adapter records it was trained
    on, else the default. A base whose revision is not the recorded one is refused (:class:`ModelLoadError`):
    an adapter trained on another model of the same shape loads, but its vectors mean nothing."""
    from ..models import resolve

    record = recorded_base(adapter)
    if record is None:
        return resolve(model)
    base, revision = record
    if model is None:
        try:
            resolved = resolve(base)
        except ModelLoadError as exc:
            raise ModelLoadError(f"the adapter {adapter} was trained on {base}, which cannot be loaded here; "
                                 f"pass that base model (--model) ({exc})") from None  # fmt: skip
    else:
        resolved = resolve(model)
    if revision not in _revisions(resolved):
        hint = ("; it was trained on that model with an adapter of its own: merge those two (unite-search merge) "
                "and pass the merged folder" if "+lora-" in revision else "")  # fmt: skip
        raise ModelLoadError(f"the adapter {adapter} was trained on {base} (revision {revision}), not on "
                             f"{resolved.model_id} (revision {resolved.revision}); load it with the model it was "
                             f"trained on{hint}")  # fmt: skip
    return resolved


def apply_adapter(inner, adapter: str | os.PathLike):
    """``inner`` (a Qwen2VLModel) with the adapter's LoRA weights merged in."""
    from safetensors import safe_open

    peft = _peft()
    adapter = check_adapter(adapter)
    weights = adapter / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), "pt") as fh:
            stored = set(fh.keys())
        with warnings.catch_warnings():  # peft asks transformers a deprecated question at every load: not ours
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = peft.PeftModel.from_pretrained(inner, adapter)
    except Exception as exc:  # peft raises many kinds for an adapter it cannot apply (shapes, modules)
        raise ModelLoadError(f"could not apply the adapter {adapter}: {type(exc).__name__}: {exc}") from exc
    # peft leaves a LoRA matrix the file lacks at its random start, and ignores tensors of no module it made:
    # either would give vectors nobody trained (different in each process), named as this adapter's
    expected = set(peft.get_peft_model_state_dict(model))
    missing, unknown = sorted(expected - stored), sorted(stored - expected)
    if missing or unknown:
        raise ModelLoadError(
            f"{weights} does not hold the adapter its adapter_config.json describes: {len(missing)} of its "
            f"{len(expected)} LoRA tensors missing{f' (first {missing[0]})' if missing else ''}, {len(unknown)} "
            f"tensors of no LoRA module{f' (first {unknown[0]})' if unknown else ''}"
        )
    return model.merge_and_unload()


def merge_adapter(base: str | os.PathLike | None, adapter: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``base`` + ``adapter`` as one plain Qwen2-VL model folder at ``output``.

    ``base`` None is the model the adapter records it was trained on; a base of another revision is refused
    (see :func:`resolve_base`). The folder's own fingerprint (its whole weights) is its identity;
    ``unite-merge.json`` records its lineage: the base model id and revision and the adapter's path and
    fingerprint. ``output`` must be new or empty: a new one is written as a temporary folder beside it and
    renamed into place once whole; an empty one given is written in place, ``unite-merge.json`` last.
    """
    from ..models import fingerprint, load_model

    adapter = check_adapter(adapter)
    output = Path(os.path.realpath(Path(output).expanduser()))  # a link to a folder: that folder
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} is not an empty folder: merge writes a new model folder (it would mix with "
                             "or overwrite what is there, the base model's own files included)")  # fmt: skip
    resolved = resolve_base(base, adapter)
    lineage = {
        "base_model_id": resolved.model_id,
        "base_revision": resolved.revision,
        "adapter": str(adapter),
        "adapter_fingerprint": fingerprint(adapter),
    }
    full = load_model(resolved.path, dtype=None, attn="sdpa")
    full.model = apply_adapter(full.model, adapter)
    if output.exists():  # an empty folder given (perhaps in a parent this user cannot write): written in place,
        _write_merged(full, resolved.path, lineage, output)  # its lineage last
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        _write_merged(full, resolved.path, lineage, temporary)
        os.rename(temporary, output)
        sync_folder(output.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return output


def _write_merged(full, base: Path, lineage: dict, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    full.save_pretrained(folder)
    for name in CARRIED:
        if (base / name).is_file():
            shutil.copy2(base / name, folder / name)
    (folder / LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")
    sync_folder(folder)
