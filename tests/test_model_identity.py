"""What a loaded model is: no code from its folder ever runs, its fingerprint covers every byte of its
weights, and an encoder with a LoRA adapter records where both came from so that it can be loaded again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unite_search import Encoder, ModelLoadError
from unite_search.models import fingerprint, fingerprint_cache_path, hash_stats, load_tokenizer
from unite_search.testing import TINY_TEXT, tiny_model

TEXTS = ["a red car", "question number 3", "Héllo wörld\n\n 123 it's e\u0301 Ａ"]
MIB = 1 << 20
MIDDLE = "model.language_model.layers.0.mlp.up_proj.weight"  # 1 MiB, in the middle of the big file


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own persistent fingerprint cache (and never writes the user's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
                XDG_CACHE_HOME=str(tmp_path / "xdg"))  # fmt: skip


# ------------------------------------------------------------------------------------- remote code
def _armed_folder(path: Path, *, legacy: bool) -> Path:
    """A tiny model whose config and tokenizer config point transformers at code in the folder; importing
    that code writes ``PWNED`` next to the weights."""
    folder = tiny_model(path, seed=0, legacy=legacy)
    marker = folder / "PWNED"
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedConfig, PreTrainedTokenizerFast\n"
        "class EvilConfig(PreTrainedConfig):\n    model_type = 'evil'\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    tok["tokenizer_class"] = "EvilTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def test_the_armed_folder_runs_its_code_through_a_plain_autotokenizer_call(tmp_path):
    """The call Encoder.load used to make: transformers asks on the terminal and runs the folder's code on "y"."""
    folder = _armed_folder(tmp_path / "armed", legacy=True)  # model_type unite_qwen2_vl, as in the releases
    code = "import sys\nfrom transformers import AutoTokenizer\nAutoTokenizer.from_pretrained(sys.argv[1])\n"
    out = subprocess.run([sys.executable, "-c", code, str(folder)], input="y\n" * 4, capture_output=True, text=True,
                         env=_env(tmp_path), timeout=120)  # fmt: skip
    assert "Do you wish to run the custom code?" in out.stdout + out.stderr
    assert (folder / "PWNED").exists()


LOAD_ARMED = """
import json, sys, numpy as np
from unite_search import Encoder, ModelLoadError
cut = sys.argv.index("--")
texts, pairs = sys.argv[cut + 1 :], sys.argv[1:cut]
for folder, vecs in zip(pairs[::2], pairs[1::2]):
    try:
        enc = Encoder.load(folder, device="cpu", workers=1)
    except ModelLoadError as exc:
        print(json.dumps({"refused": str(exc)}))
    else:
        np.save(vecs, enc.encode(texts))
        print(json.dumps({"refused": None, "tokenizer": type(enc._tokenizer).__name__}))
"""


def test_folder_code_never_runs_and_nothing_prompts(tmp_path, encoder):
    """Both config styles (the releases' model type and transformers' own), loaded in one fresh process."""
    folders = {legacy: _armed_folder(tmp_path / f"armed-{legacy}", legacy=legacy) for legacy in (True, False)}
    vecs = {legacy: tmp_path / f"vecs-{legacy}.npy" for legacy in folders}
    args = [str(path) for legacy in folders for path in (folders[legacy], vecs[legacy])]
    out = subprocess.run([sys.executable, "-c", LOAD_ARMED, *args, "--", *TEXTS], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=_env(tmp_path), timeout=120)  # fmt: skip
    said = out.stdout + out.stderr
    assert out.returncode == 0, said
    assert "custom code" not in said and "[y/N]" not in said
    assert not [f for f in folders.values() if (f / "PWNED").exists()]
    assert not list((tmp_path / "hf_modules").rglob("evil.py"))  # transformers never even copied it
    answers = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 2, said
    for legacy, answer in zip(folders, answers, strict=True):
        if answer["refused"] is None:  # loaded as plain Qwen2-VL: the same vectors as the clean folder
            assert answer["tokenizer"] in ("PreTrainedTokenizerFast", "TokenizersBackend"), said
            np.testing.assert_allclose(np.load(vecs[legacy]), encoder.encode(TEXTS), atol=1e-6)


def _release_style_tokenizer(tiny_dir: Path, path: Path) -> Path:
    """The tiny vocabulary saved the way the UNITE releases are: Qwen2's NFC normaliser and split regex in
    tokenizer.json, ``tokenizer_class: Qwen2Tokenizer``."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer.from_pretrained(tiny_dir)
    tok.save_pretrained(path)
    shutil.copy(tiny_dir / "config.json", path / "config.json")
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    assert json.loads((path / "tokenizer.json").read_text())["normalizer"]["type"] == "NFC"
    return path


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_gives_the_ids_autotokenizer_gave(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from unite_search.modality import Modality
    from unite_search.prompts import render

    texts = [*TEXTS, render(frozenset({Modality.TEXT, Modality.IMAGE}), "a\r\n  b 12345 ﬁ"), "<|image_pad|> x"]
    for folder in (tiny_dir, _release_style_tokenizer(tiny_dir, tmp_path / "release")):
        ours, auto = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        for text in texts:
            assert _ids(ours, text) == _ids(auto, text)
    # the two folders really tokenize differently (NFC), so each was read from its own tokenizer.json
    assert _ids(load_tokenizer(tiny_dir), "e\u0301") != _ids(load_tokenizer(tmp_path / "release"), "e\u0301")


def test_a_folder_without_a_tokenizer_is_refused(tiny_dir, tmp_path):
    folder = tmp_path / "notok"
    shutil.copytree(tiny_dir, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Encoder.load(folder, device="cpu")


# ------------------------------------------------------------------------------------- fingerprint
@pytest.fixture(scope="module")
def big_dir(tmp_path_factory) -> Path:
    """A tiny model whose weights file is 6.5 MiB (wide MLPs)."""
    return tiny_model(tmp_path_factory.mktemp("big") / "model", seed=0, text=dict(TINY_TEXT, intermediate_size=4096))


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Byte range of one tensor in a safetensors file."""
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        begin, end = json.loads(fh.read(n))[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def _negated_bytes(folder: Path) -> bytes:
    """The weights file of ``folder`` with the MIDDLE tensor negated: same size, same first and last MiB."""
    state = load_file(str(folder / "model.safetensors"))
    state[MIDDLE] = -state[MIDDLE]
    tmp = folder.parent / f"{folder.name}.negated.safetensors"
    save_file(state, str(tmp), metadata={"format": "pt"})
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _old_fingerprint(folder: Path) -> str:
    """The former identity: names, sizes, first and last MiB."""
    h = hashlib.sha256()
    for f in [*sorted(folder.glob("*.safetensors")), folder / "config.json"]:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(MIB))
            if size > 2 * MIB:
                fh.seek(-MIB, os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def test_a_change_in_the_middle_of_the_weights_changes_the_identity(big_dir, tmp_path):
    copy = tmp_path / "negated"
    shutil.copytree(big_dir, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(_negated_bytes(big_dir))
    size = weights.stat().st_size
    begin, end = _tensor_span(weights, MIDDLE)
    assert size > 6 * MIB and MIB <= begin < end <= size - MIB  # untouched by the first and last MiB
    original = (big_dir / "model.safetensors").read_bytes()
    data = weights.read_bytes()
    assert data != original and data[:MIB] == original[:MIB] and data[-MIB:] == original[-MIB:]
    assert _old_fingerprint(copy) == _old_fingerprint(big_dir)  # the former identity could not tell them apart

    assert len(fingerprint(copy)) == 16 and fingerprint(copy) != fingerprint(big_dir)
    a, b = Encoder.load(big_dir, device="cpu", workers=1), Encoder.load(copy, device="cpu", workers=1)
    assert a.revision == f"local-{fingerprint(big_dir)}" and b.revision == f"local-{fingerprint(copy)}"
    assert a.revision != b.revision
    assert np.abs(a.encode(TEXTS) - b.encode(TEXTS)).max() > 1e-3  # they are different models


def test_identity_is_content_not_location(tiny_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_dir, copy)
    assert fingerprint(copy) == fingerprint(tiny_dir)
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"]["depth"] = 1  # config.json is part of the identity too
    (copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(copy) != fingerprint(tiny_dir)


def test_tokenizer_settings_and_shards_are_part_of_the_identity(tiny_dir, tmp_path):
    """tokenizer_config.json (split_special_tokens split the prompt's markers: vectors 0.53 off) and the
    shards a model.safetensors.index.json names (in a subfolder: not seen) changed vectors, not identities."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    base = fingerprint(copy)
    (copy / "tokenizer_config.json").write_text(json.dumps({"split_special_tokens": True}))
    assert fingerprint(copy) != base
    weights = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    (copy / "w").mkdir()
    save_file(weights, copy / "w" / "shard.safetensors")
    index = {"metadata": {}, "weight_map": {name: "w/shard.safetensors" for name in weights}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = fingerprint(copy)
    name = next(iter(weights))
    save_file({**weights, name: weights[name] * 2}, copy / "w" / "shard.safetensors")
    assert fingerprint(copy) != sharded
    index["weight_map"][name] = "../outside.safetensors"  # transformers would read it: refused
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"names '\.\./outside\.safetensors', which is not a file of"):
        fingerprint(copy)


def test_a_hub_cache_snapshot_of_a_sharded_model_loads_through_its_links(tiny_dir, encoder, tmp_path):
    """A hub cache's snapshot folder holds links into its blobs folder: the shards its index names were refused
    as "not a file of" the folder (their real paths lie outside it), though the model loaded by its hub id."""
    weights = load_file(tiny_dir / "model.safetensors")
    snapshot, blobs = tmp_path / "snapshots" / "abc123", tmp_path / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, blobs / f"blob-{shard}")
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (blobs / "blob-index").write_text(json.dumps(index))
    for f in tiny_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, blobs / f"blob-{f.name}")
    for blob in blobs.iterdir():
        name = blob.name.removeprefix("blob-").replace("index", "model.safetensors.index.json")
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    loaded = Encoder.load(snapshot, device="cpu", workers=1)
    np.testing.assert_allclose(loaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    "damage",
    ["config not JSON", "config a list", "text_config a string", "tokenizer.json rejected", "weights truncated"],
)
def test_a_damaged_model_folder_is_a_model_load_error(tiny_dir, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    if damage == "config not JSON":
        (copy / "config.json").write_text("{nope")
    elif damage == "config a list":
        (copy / "config.json").write_text("[]")
    elif damage == "text_config a string":
        (copy / "config.json").write_text(json.dumps({**config, "text_config": "big"}))
    elif damage == "tokenizer.json rejected":  # as one written by a newer tokenizers library
        tok = json.loads((copy / "tokenizer.json").read_text())
        tok["model"]["type"] = "Unknown"
        (copy / "tokenizer.json").write_text(json.dumps(tok))
    else:  # an interrupted copy
        data = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(copy)):
        Encoder.load(copy, device="cpu").encode(["x"])


def test_config_values_no_model_can_be_built_with_are_told_before_it_is(tiny_dir, tmp_path):
    """Zero heads (ZeroDivisionError), an unknown activation or rope type (KeyError) escaped as transformers'
    own errors, a rope section that does not fit a head failed at the first encode, and 20,000 claimed layers
    took minutes and gigabytes before the missing tensors were told."""
    config = json.loads((tiny_dir / "config.json").read_text())
    rope = config["text_config"]["rope_parameters"]
    variants = {
        "num_attention_heads": ({"num_attention_heads": 0}, {}, "attention heads"),
        "num_key_value_heads": ({"num_key_value_heads": 0}, {}, "attention heads"),
        "vision num_heads": ({}, {"num_heads": 0}, "attention heads"),
        "hidden_act": ({"hidden_act": "evil"}, {}, "no activation"),
        "rope_type": ({"rope_parameters": {**rope, "rope_type": "nope"}}, {}, "no rope"),
        "mrope_section": ({"rope_parameters": {**rope, "mrope_section": [1, 1, 1]}}, {}, "does not split a head"),
        "layers": ({"num_hidden_layers": 20_000}, {"depth": 20_000}, "20000 text layers and 20000 vision blocks"),
    }
    for name, (text, vision, said) in variants.items():
        copy = tmp_path / name.replace(" ", "_")
        shutil.copytree(tiny_dir, copy)
        changed = {**config, "text_config": {**config["text_config"], **text}}
        changed["vision_config"] = {**config["vision_config"], **vision}
        (copy / "config.json").write_text(json.dumps(changed))
        started = time.perf_counter()
        with pytest.raises(ModelLoadError, match=said):
            Encoder.load(copy, device="cpu", workers=1)
        assert time.perf_counter() - started < 10, name


def test_a_tensor_of_another_shape_is_named(tiny_dir, tmp_path):
    """transformers' own error said only "For details look at the above report!", a report its logging hid."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    weights = load_file(copy / "model.safetensors")
    weights[MIDDLE] = weights[MIDDLE][:, :-1].contiguous()
    save_file(weights, copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match=rf"{MIDDLE} is \[\d+, \d+\] in the checkpoint, \[\d+, \d+\] in a model"):
        Encoder.load(copy, device="cpu", workers=1)


def test_integer_weights_are_refused_not_cast(tiny_dir, tmp_path):
    """An int8 tensor was cast to float as it was (its quantization scale lost): an encoder of nonsense."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    weights = load_file(copy / "model.safetensors")
    weights[MIDDLE] = (weights[MIDDLE] * 100).round().clamp(-128, 127).to(torch.int8)
    save_file(weights, copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match=rf"1 weight tensor\(s\) are not floating point: {MIDDLE} \(I8\)"):
        Encoder.load(copy, device="cpu", workers=1)


def _stats_since(before: tuple[int, int, int]) -> tuple[int, int, int]:
    """(files, bytes, hits) of :data:`hash_stats` since ``before``; ``(0, 0, 0)`` gives the totals."""
    now = (hash_stats.files, hash_stats.bytes, hash_stats.hits)
    return tuple(a - b for a, b in zip(now, before, strict=True))


FINGERPRINT_IN_A_NEW_PROCESS = """
import json, sys
from pathlib import Path
from unite_search.models import fingerprint, hash_stats
fp = fingerprint(Path(sys.argv[1]))
print(json.dumps({"fp": fp, "files": hash_stats.files, "hits": hash_stats.hits}))
"""


def _fingerprint_elsewhere(folder: Path, tmp_path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", FINGERPRINT_IN_A_NEW_PROCESS, str(folder)], capture_output=True,
                         text=True, env=_env(tmp_path), timeout=120, check=True)  # fmt: skip
    return json.loads(out.stdout)


def test_fingerprints_are_cached_in_memory_and_on_disk(big_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(big_dir, folder)
    hashed = [n for n in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
              if (folder / n).is_file()]  # fmt: skip
    total = sum((folder / n).stat().st_size for n in hashed)

    before = _stats_since((0, 0, 0))
    fp = fingerprint(folder)
    assert _stats_since(before) == (len(hashed), total, 0)  # cold: every byte read once

    cache = fingerprint_cache_path()
    assert cache == tmp_path / "xdg" / "unite-search" / "fingerprints.json"
    saved = cache.read_text()
    cache.write_text("{}")  # the process's own memory suffices
    before = _stats_since((0, 0, 0))
    assert fingerprint(folder) == fp
    assert _stats_since(before) == (0, 0, len(hashed))  # warm: nothing read
    assert cache.read_text() == "{}"  # and nothing written
    cache.write_text(saved)

    entries = json.loads(cache.read_text())["files"]
    weights = str(folder / "model.safetensors")
    st = os.stat(weights)
    assert entries[weights]["key"] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    assert entries[weights]["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    elsewhere = _fingerprint_elsewhere(folder, tmp_path)  # a new process reads the disk cache
    assert elsewhere == {"fp": fp, "files": 0, "hits": len(hashed)}
    assert json.loads(cache.read_text())["files"] == entries  # and left it as it was


def test_a_corrupt_or_unwritable_cache_only_costs_a_recomputation(big_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(big_dir, folder)
    fp = fingerprint(folder)
    cache = fingerprint_cache_path()
    cache.write_text('{"version": 1, "files": {"' + str(folder))  # cut short mid-write
    again = _fingerprint_elsewhere(folder, tmp_path)
    assert again["fp"] == fp and again["files"] >= 1 and again["hits"] == 0
    assert str(folder / "model.safetensors") in json.loads(cache.read_text())["files"]  # rewritten whole
    cache.write_text(json.dumps({"version": 1, "files": {str(folder / "config.json"): {"key": "x", "sha256": 5}}}))
    assert _fingerprint_elsewhere(folder, tmp_path)["fp"] == fp

    blocked = tmp_path / "xdg-is-a-file"
    blocked.write_text("")
    env = dict(_env(tmp_path), XDG_CACHE_HOME=str(blocked))  # the cache folder cannot be created
    out = subprocess.run([sys.executable, "-c", FINGERPRINT_IN_A_NEW_PROCESS, str(folder)], capture_output=True,
                         text=True, env=env, timeout=120, check=True)  # fmt: skip
    assert json.loads(out.stdout)["fp"] == fp
    assert not list(cache.parent.glob(".fingerprints.json.*"))  # no temporary file left behind


def test_the_disk_cache_forgets_files_that_are_gone(tiny_dir, tmp_path):
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    shutil.copytree(tiny_dir, gone)
    shutil.copytree(tiny_dir, kept)
    fingerprint(gone)
    cache = fingerprint_cache_path()
    assert str(gone / "model.safetensors") in json.loads(cache.read_text())["files"]
    shutil.rmtree(gone)
    fingerprint(kept)
    files = json.loads(cache.read_text())["files"]
    assert str(kept / "model.safetensors") in files and not [f for f in files if f.startswith(str(gone))]


def test_a_rewrite_with_its_mtime_restored_changes_the_fingerprint(big_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(big_dir, folder)
    weights = folder / "model.safetensors"
    fp = fingerprint(folder)
    assert fingerprint(folder) == fp  # cached from here on
    negated = _negated_bytes(folder)
    st = os.stat(weights)
    time.sleep(0.05)  # past the file system's clock tick, so that the change of ctime is visible
    with open(weights, "r+b") as fh:  # same inode, same size
        fh.write(negated)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(weights)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert now.st_ctime_ns != st.st_ctime_ns
    changed = fingerprint(folder)
    assert changed != fp
    assert _fingerprint_elsewhere(folder, tmp_path)["fp"] == changed  # the disk cache is not fooled either


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    copy, ran = tmp_path / "model", tmp_path / "ran"
    shutil.copytree(tiny_dir, copy)
    weights = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()

    class Armed:
        def __reduce__(self):
            return (Path.touch, (ran,))

    torch.save({**weights, "armed": Armed()}, copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pickled checkpoint \(\.bin\), which is never loaded"):
        Encoder.load(copy, device="cpu")
    assert not ran.exists()


def test_an_index_built_under_the_earlier_identity_rule_is_read_and_upgraded(tiny_dir, tmp_path):
    """The tokenizer's config joined a folder's identity on 2026-11-29: every index built before from a
    local folder was refused as built with another model. The same folder's identity by the rule of then
    is accepted, and the next ingest records today's."""
    from unite_search import Index
    from unite_search.diskio import write_json
    from unite_search.ingestion import ingest
    from unite_search.models import legacy_revision
    from unite_search.store import IndexMismatchError

    model, root, index = tmp_path / "model", tmp_path / "corpus", tmp_path / "index"
    shutil.copytree(tiny_dir, model)
    root.mkdir()
    (root / "note.txt").write_text("a note about the harbour")
    encoder = Encoder.load(model, device="cpu")
    ingest(root, index, encoder=encoder)
    manifest = json.loads((index / "manifest.json").read_text())
    today = manifest["encoder"]["revision"]
    then = legacy_revision(encoder.settings)
    assert then != today and then == "local-" + fingerprint(model, legacy=True)
    manifest["encoder"]["revision"] = then  # as an index built before the rule changed records it
    write_json(index / "manifest.json", manifest)
    assert Index.open(index, encoder=encoder).query(text="harbour", target="text")[0].path == "note.txt"
    report = ingest(root, index, encoder=encoder)
    assert report.status == "ok" and report.encoded_items == 0
    assert json.loads((index / "manifest.json").read_text())["encoder"]["revision"] == today
    # other weights are still refused, whatever rule named them
    manifest["encoder"]["revision"] = "local-" + "0" * 16
    write_json(index / "manifest.json", manifest)
    with pytest.raises(IndexMismatchError, match=r"encoder\.revision"):
        Index.open(index, encoder=encoder).query(text="harbour", target="text")
