"""The model table, name resolution, model identity (whole-file fingerprints) and loading (never remote code)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import diskio
from .diskio import write_json
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
        f"On a machine with internet: `hf download {hub_id} --local-dir DIR` "
        "(`huggingface-cli download` on huggingface_hub before 1.0), copy DIR here and pass the folder as the model "
        "(`Encoder.load('DIR')`, `unite-search ... --model DIR`). A copy already in the hub cache is used "
        "when HF_HUB_OFFLINE=1 is set."
    )


# Files whose content is a model's (or an adapter's) identity: everything that changes a vector (the
# tokenizer's config and added tokens split text differently: "split_special_tokens", added tokens).
IDENTITY_FILES = (
    "config.json", "adapter_config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json",
)  # fmt: skip
SHARD_INDEX = "model.safetensors.index.json"
# what a folder's identity covered before 2026-11-29 (no tokenizer config, no shard index): an index built
# then records that identity, and is still read with the same folder (see :func:`legacy_revision`)
LEGACY_IDENTITY_FILES = ("config.json", "adapter_config.json", "tokenizer.json", "vocab.json", "merges.txt")
FINGERPRINT_CACHE = "fingerprints.json"  # under $XDG_CACHE_HOME/unite-search
_CACHE_ENTRIES = 4096  # the oldest entries beyond this are dropped; a dropped file is just hashed again


@dataclass
class HashStats:
    """Work done by :func:`cached_sha256` in this process (``files``/``bytes`` read and hashed, cache ``hits``)."""

    files: int = 0
    bytes: int = 0
    hits: int = 0


hash_stats = HashStats()
_memo: dict[str, tuple[tuple[int, ...], str]] = {}  # absolute path -> (stat key, sha256)
_memo_lock = threading.Lock()


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    # ctime and inode catch a rewrite whose mtime was put back with os.utime, or a file replaced by another
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def fingerprint_cache_path() -> Path:
    """Where file hashes persist between processes: ``$XDG_CACHE_HOME/unite-search/fingerprints.json``."""
    from .diskio import cache_home

    return cache_home() / FINGERPRINT_CACHE


def _read_disk_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        files = data["files"] if isinstance(data, dict) and data.get("version") == 1 else {}
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # absent, unreadable or corrupt: hashes are recomputed


def _write_disk_cache(path: Path, name: str, key: tuple[int, ...], digest: str) -> None:
    """Add one entry, atomically; a failure only costs a recomputation later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # merge with what other processes wrote meanwhile, less the files that are gone
        files = {f: e for f, e in _read_disk_cache(path).items() if f != name and os.path.exists(f)}
        files[name] = {"key": list(key), "sha256": digest}
        for stale in list(files)[: max(0, len(files) - _CACHE_ENTRIES)]:
            del files[stale]
        write_json(path, {"version": 1, "files": files}, fsync=False)
    except (OSError, ValueError, TypeError):
        pass


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's whole content, remembered (in memory and on disk) while the file is unchanged."""
    name = os.path.abspath(path)
    key = _stat_key(os.stat(name))
    with _memo_lock:
        known = _memo.get(name)
        if known is not None and known[0] == key:
            hash_stats.hits += 1
            return known[1]
    cache = fingerprint_cache_path()
    entry = _read_disk_cache(cache).get(name)
    if isinstance(entry, dict) and entry.get("key") == list(key) and isinstance(entry.get("sha256"), str):
        with _memo_lock:
            hash_stats.hits += 1
            _memo[name] = (key, entry["sha256"])
        return entry["sha256"]
    digest = diskio.file_sha256(name)
    unchanged = _stat_key(os.stat(name)) == key  # a file written while we read it is not remembered
    with _memo_lock:
        hash_stats.files += 1
        hash_stats.bytes += key[0]
        if unchanged:
            _memo[name] = (key, digest)
    if unchanged:
        _write_disk_cache(cache, name, key, digest)
    return digest


def fingerprint(folder: Path, legacy: bool = False) -> str:
    """The identity of a model or adapter folder: 16 hex digits of a sha256 over the names and whole contents
    of its ``*.safetensors``, the shards its ``model.safetensors.index.json`` names (and that file), and
    :data:`IDENTITY_FILES` (``legacy``: the rule before 2026-11-29, :data:`LEGACY_IDENTITY_FILES` only).
    Reloads of unchanged files read only the cache."""
    h = hashlib.sha256()
    named = LEGACY_IDENTITY_FILES if legacy else IDENTITY_FILES
    files = {f.name: f for f in (*folder.glob("*.safetensors"), *(folder / n for n in named))}
    if not legacy:
        files.update(_shards(folder))
    for name, f in sorted(files.items()):
        if f.is_file():
            h.update(f"{name}\0{cached_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


def legacy_revision(encoder: dict[str, Any]) -> str | None:
    """The revision the weights of ``encoder`` (a settings dict of a local folder, maybe with an adapter)
    had under the identity rule before 2026-11-29, or None (a hub model: its revision is the hub's commit)."""
    folder, adapter = encoder.get("model_id"), encoder.get("adapter")
    if not str(encoder.get("revision", "")).startswith("local-") or not folder or not os.path.isdir(folder):
        return None
    revision = "local-" + fingerprint(Path(folder), legacy=True)
    if adapter:
        revision += "+lora-" + fingerprint(Path(adapter), legacy=True)
    return revision


def _shards(folder: Path) -> dict[str, Path]:
    """The index of a sharded checkpoint and the files it names (what transformers loads), by their names
    in the folder; a name leading out of the folder, or to no file, is refused. A file of the folder may be
    a symlink, as every weight file of a hub cache's snapshot folder is (into its ``blobs``)."""
    index = folder / SHARD_INDEX
    if not index.is_file():
        return {}
    try:
        names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{index} is not a readable shard index ({type(exc).__name__}: {exc})") from None
    out = {SHARD_INDEX: index}
    for name in sorted(names, key=str):
        plain = isinstance(name, str) and "\0" not in name and not os.path.isabs(name)
        if not plain or os.path.normpath(name).split(os.sep)[0] == ".." or not (folder / name).is_file():
            raise ModelLoadError(f"{index} names {name!r}, which is not a file of {folder}")
        out[Path(name).as_posix()] = folder / name
    return out


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
        cause = " ".join(str(exc).split())  # huggingface_hub's messages run over several lines: one line here
        raise ModelLoadError(_offline_help(name, hub_id) + f" (cause: {type(exc).__name__}: {cause})") from exc
    folder = Path(path)
    return ResolvedModel(folder, hub_id, folder.name)


def moved_folder(index: str | os.PathLike, record: dict[str, Any], *, model: bool, adapter: bool):
    """The :class:`ModelLoadError` to raise where an index's recorded model folder (``model``: the one used) or
    LoRA adapter folder (``adapter``: likewise) is not where the index recorded it (moved or deleted), else None.
    Loading it would say only that a folder does not exist: neither that it is the index's, nor how to point at
    its new place."""
    for used, key, what, name in ((model, "model_id", "model folder", "model"),
                                  (adapter, "adapter", "LoRA adapter folder", "adapter")):  # fmt: skip
        folder = record.get(key)
        if used and isinstance(folder, str) and os.path.isabs(folder) and not os.path.isdir(folder):
            return ModelLoadError(f"{index} was built with the {what} {folder}, which is not there now (moved or "
                                  f"deleted?): pass its new place with --{name} ({name}= in Python)")  # fmt: skip
    return None


def _raw_config(folder: Path) -> dict[str, Any]:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # not UTF-8, not JSON
        raise ModelLoadError(f"{folder}/config.json is unreadable ({type(exc).__name__}: {exc})") from None
    parts = [raw] + [raw.get(k) for k in ("text_config", "vision_config") if isinstance(raw, dict) and k in raw]
    if not all(isinstance(p, dict) for p in parts):
        raise ModelLoadError(f"{folder}/config.json is not a Qwen2-VL config (its sections are not JSON objects)")
    claimed = raw.get("model_type", "qwen2_vl")
    if claimed not in ("qwen2_vl", "unite_qwen2_vl"):
        raise ModelLoadError(f"{folder}: model_type {claimed!r} is not a Qwen2-VL checkpoint")
    return raw


def config_dim(folder: Path) -> int:
    """The vector size of the checkpoint in ``folder`` (its text model's hidden size), from config.json
    alone: no transformers import, no weights."""
    raw = _raw_config(folder)
    text = raw.get("text_config") or {}
    dim = text.get("hidden_size", raw.get("hidden_size"))
    if not isinstance(dim, int) or dim < 1:
        raise ModelLoadError(f"{folder}/config.json names no hidden_size")
    return dim


def read_config(folder: Path):
    """The folder's config as a Qwen2VLConfig, whatever model_type the checkpoint claims."""
    from transformers import Qwen2VLConfig

    raw = _raw_config(folder)
    raw.pop("model_type", None)
    raw.pop("architectures", None)
    raw.pop("auto_map", None)  # never run remote code
    try:
        config = Qwen2VLConfig.from_dict(raw)
    except Exception as exc:  # noqa: BLE001  transformers' validation raises several kinds
        why = f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(f"{folder}/config.json is not a valid Qwen2-VL config ({why})") from None
    problems = _shape_problems(config)
    if problems:
        raise ModelLoadError(f"{folder}/config.json is not a valid Qwen2-VL config ({'; '.join(problems)})")
    return config


def _shape_problems(config) -> list[str]:
    """What transformers finds only while building the model (a division by zero, an unknown activation or
    rope type) or at the first encode (a rope section that does not fit a head)."""
    from transformers.activations import ACT2FN
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    text, vision = config.text_config, config.vision_config
    problems = []
    for part, width, heads, kv in (("text", text.hidden_size, text.num_attention_heads, text.num_key_value_heads),
                                   ("vision", vision.embed_dim, vision.num_heads, vision.num_heads)):  # fmt: skip
        whole = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (width, heads, kv))
        if not whole or width % heads or heads % kv:
            problems.append(f"{part} width {width!r} in {heads!r} attention heads ({kv!r} for keys and values)")
    for part, act in (("text", text.hidden_act), ("vision", vision.hidden_act)):
        if not isinstance(act, str) or act not in ACT2FN:
            problems.append(f"{part} hidden_act {act!r} is no activation transformers has")
    rope = getattr(text, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind != "default" and kind not in ROPE_INIT_FUNCTIONS:
        problems.append(f"rope_type {kind!r} is no rope transformers has")
    section = rope.get("mrope_section")
    if not problems and section is not None:
        head = text.hidden_size // text.num_attention_heads
        fits = isinstance(section, list) and all(isinstance(n, int) and n >= 0 for n in section)
        if not fits or 2 * sum(section) != head:
            problems.append(f"mrope_section {section!r} does not split a head of {head} (its halves must add up)")
    return problems


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


def load_tokenizer(folder: Path):
    """The folder's tokenizer, built by transformers' own classes only: its ``tokenizer_class`` and
    ``auto_map`` are ignored, so no code shipped in the folder ever runs.

    ``tokenizer.json`` is read verbatim (the class ``AutoTokenizer`` picks for a plain tokenizer.json,
    and what Qwen2's fast tokenizer loaded before transformers 5); a folder without one is read as
    Qwen2's byte-level BPE from ``vocab.json`` and ``merges.txt``.
    """
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    if (folder / "tokenizer.json").is_file():
        cls = PreTrainedTokenizerFast
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        cls = Qwen2Tokenizer
    else:
        raise ModelLoadError(f"{folder} has no tokenizer: tokenizer.json (or vocab.json and merges.txt) is missing")
    try:
        with _quiet_transformers():
            return cls.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # the Rust parser raises a bare Exception for a tokenizer.json it rejects
        raise ModelLoadError(f"could not load the tokenizer of {folder}: {type(exc).__name__}: {exc}") from exc


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names; anything else would be cast, not dequantized


def _held(folder: Path) -> tuple[tuple[int, int], dict[str, str]] | None:
    """From the folder's weight files' headers: (text layers, vision blocks) they hold, and the tensors stored
    in a dtype that is not floating point (name -> dtype); None when unreadable (the load then says why)."""
    shards = [path for name, path in _shards(folder).items() if name != SHARD_INDEX]
    files = shards or ([folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else [])
    text, vision, not_float = set(), set(), {}
    for path in files:
        header = _safetensors_header(path)
        if header is None:
            return None
        for name, tensor in header.items():
            if found := re.search(r"(?:^|\.)(layers|blocks)\.(\d+)\.", name):
                (text if found[1] == "layers" else vision).add(int(found[2]))
            dtype = tensor.get("dtype") if isinstance(tensor, dict) else None
            if name != "__metadata__" and dtype not in FLOAT_DTYPES:
                not_float[name] = str(dtype)
    return ((len(text), len(vision)), not_float) if files else None


HEADER_MAX = 100 << 20  # safetensors' own limit on a header's size


def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """A safetensors file's header (8 bytes of little-endian length, then JSON: name -> dtype, shape, offsets),
    or None when it is not one."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= HEADER_MAX:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def load_model(folder: Path, *, dtype, attn: str):
    """Qwen2-VL weights from ``folder`` (safetensors only); every checkpoint tensor must land in the model."""
    from safetensors import SafetensorError
    from transformers import Qwen2VLForConditionalGeneration

    config = read_config(folder)
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise ModelLoadError(
            f"{folder} has its weights as a pickled checkpoint (.bin), which is never loaded (unpickling can run "
            "code); save them as safetensors (model.save_pretrained writes them by default)"
        )
    held, not_float = _held(folder) or (None, {})
    claimed = (config.text_config.num_hidden_layers, config.vision_config.depth)
    if held is not None and (claimed[0] > held[0] or claimed[1] > held[1]):  # told before memory is taken for them
        raise ModelLoadError(
            f"{folder}: config.json says {claimed[0]} text layers and {claimed[1]} vision blocks, its weights hold "
            f"{held[0]} and {held[1]}"
        )
    if not_float:  # an integer tensor would be cast to the model's dtype as it is: numbers, not weights
        shown = ", ".join(f"{name} ({dtype})" for name, dtype in sorted(not_float.items())[:3])
        raise ModelLoadError(
            f"{folder}: {len(not_float)} weight tensor(s) are not floating point: {shown}; quantized or integer "
            "checkpoints are not read (UNITE's weights are bfloat16)"
        )
    try:
        with _quiet_transformers():
            model, info = Qwen2VLForConditionalGeneration.from_pretrained(
                folder,
                config=config,
                dtype=dtype,
                attn_implementation=attn,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # then listed in the loading info, and refused below naming them
                trust_remote_code=False,
                use_safetensors=True,  # a pickled checkpoint (pytorch_model.bin) is never unpickled
            )
    except (OSError, ValueError, RuntimeError, SafetensorError, ArithmeticError, LookupError) as exc:
        # damaged, truncated, other shapes; a config value the model cannot be built with
        raise ModelLoadError(f"could not load weights from {folder}: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    problems = {
        "missing": sorted(missing),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mismatched": sorted(_mismatch(k) for k in info.get("mismatched_keys", [])),
    }
    if any(problems.values()):
        detail = "; ".join(f"{kind}: {v[:5]}{' ...' if len(v) > 5 else ''}" for kind, v in problems.items() if v)
        raise ModelLoadError(f"{folder}: checkpoint does not match Qwen2-VL ({detail})")
    return model


def _mismatch(found) -> str:
    """A tensor whose shape differs, as transformers reports it: (name, checkpoint shape, model shape)."""
    if isinstance(found, tuple) and len(found) == 3:
        name, stored, wanted = found
        return f"{name} is {list(stored)} in the checkpoint, {list(wanted)} in a model of its config"
    return str(found)
