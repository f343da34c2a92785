"""LoRA adapters as a model folder's companion: what an encoder with one records, what makes one unloadable
(pickles, missing or foreign tensors, a config that is not LoRA's), a merged folder's lineage, and an index built
with one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_model_identity import TEXTS, private_cache  # noqa: F401  (its autouse fixture: a fingerprint cache per test)

from unite_search import Encoder, EncoderSettings, ModelLoadError
from unite_search.models import fingerprint


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model's language model with random (non-zero) B weights."""
    from peft import LoraConfig, get_peft_model

    from unite_search.train.trainer import LM_LINEARS

    base = Encoder.load(tiny_dir, device="cpu", workers=1)
    peft_model = get_peft_model(base._model, LoraConfig(r=4, lora_alpha=8, target_modules=LM_LINEARS))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    path = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(path)
    assert (path / "adapter_model.safetensors").is_file()
    return path


def test_an_adapter_keeps_the_base_model_id_and_is_recorded_apart(tiny_dir, adapter_dir, encoder, monkeypatch):
    monkeypatch.chdir(adapter_dir.parent)
    enc = Encoder.load(tiny_dir, adapter="adapter", device="cpu", workers=1)  # relative: recorded absolute
    assert enc.model_id == encoder.model_id == str(tiny_dir.resolve())
    assert enc.adapter == os.path.abspath(adapter_dir) and encoder.adapter is None
    assert enc.revision == f"{encoder.revision}+lora-{fingerprint(adapter_dir)}"
    s = enc.settings
    assert list(s)[:4] == ["model_id", "adapter", "revision", "dim"]
    assert s["adapter"] == enc.adapter and encoder.settings["adapter"] is None
    json.dumps(s)
    vecs = enc.encode(TEXTS)
    assert np.abs(vecs - encoder.encode(TEXTS)).max() > 1e-3  # the adapter changes the vectors

    # what an index records is enough to load the same encoder again
    again = Encoder.load(s["model_id"], adapter=s["adapter"], device="cpu", workers=1)
    assert (again.model_id, again.adapter, again.revision) == (enc.model_id, enc.adapter, enc.revision)
    np.testing.assert_allclose(again.encode(TEXTS), vecs, atol=1e-6)

    other = enc.with_settings(EncoderSettings(max_frames=8))
    assert other is not enc and other.adapter == enc.adapter and other.settings["adapter"] == enc.adapter
    assert other.revision == enc.revision and other.settings["max_frames"] == 8


def test_the_adapter_config_is_part_of_its_identity(adapter_dir, tmp_path):
    copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, copy)
    assert fingerprint(copy) == fingerprint(adapter_dir)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["lora_alpha"] = config["lora_alpha"] * 2  # same weights, twice the scale
    (copy / "adapter_config.json").write_text(json.dumps(config))
    assert fingerprint(copy) != fingerprint(adapter_dir)


def test_a_pickled_adapter_is_refused(tiny_dir, adapter_dir, tmp_path):
    copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, copy)
    (copy / "adapter_model.safetensors").rename(copy / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match=r"adapter_model\.safetensors"):
        Encoder.load(tiny_dir, adapter=copy, device="cpu")
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json"):
        Encoder.load(tiny_dir, adapter=tmp_path, device="cpu")


def test_an_adapter_that_is_not_whole_or_not_lora_is_refused_in_one_line(tiny_dir, adapter_dir, tmp_path):
    """An adapter file missing half its tensors loaded with the rest at peft's random start (other vectors in each
    process, under one revision); renamed tensors loaded as no adapter at all; a config peft cannot apply raised
    its own errors (a traceback)."""
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    names = sorted(weights)
    variants = {
        "half": ({k: weights[k] for k in names[::2]}, {}, r"\d+ of its \d+ LoRA tensors missing"),
        "renamed": ({k.replace("layers", "blocks"): v for k, v in weights.items()}, {}, "tensors of no LoRA module"),
        "rank 0": (weights, {"r": 0}, "rank r must be a positive integer"),
        "prompt tuning": (weights, {"peft_type": "PROMPT_TUNING"}, "not a LoRA adapter's config"),
        "other modules": (weights, {"target_modules": ["no_such_proj"]}, "could not apply the adapter"),
    }
    for name, (tensors, config_change, said) in variants.items():
        copy = tmp_path / name.replace(" ", "_")
        shutil.copytree(adapter_dir, copy)
        save_file(tensors, copy / "adapter_model.safetensors")
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, **config_change}))
        with pytest.raises(ModelLoadError, match=said):
            Encoder.load(tiny_dir, adapter=copy, device="cpu", workers=1)
    (copy / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a LoRA adapter's config"):
        Encoder.load(tiny_dir, adapter=copy, device="cpu", workers=1)


def test_a_merged_folder_records_its_lineage(tiny_dir, adapter_dir, encoder, tmp_path):
    from unite_search.train.merge import LINEAGE, merge_adapter

    out = merge_adapter(tiny_dir, adapter_dir, tmp_path / "merged")
    lineage = json.loads((out / LINEAGE).read_text())
    assert lineage == {
        "base_model_id": encoder.model_id,
        "base_revision": encoder.revision,
        "adapter": os.path.abspath(adapter_dir),
        "adapter_fingerprint": fingerprint(adapter_dir),
    }
    merged = Encoder.load(out, device="cpu", workers=1)
    adapted = Encoder.load(tiny_dir, adapter=adapter_dir, device="cpu", workers=1)
    assert merged.revision == f"local-{fingerprint(out)}" and merged.adapter is None
    assert merged.revision not in (encoder.revision, adapted.revision)
    np.testing.assert_allclose(merged.encode(TEXTS), adapted.encode(TEXTS), atol=1e-5)


def test_an_index_built_with_an_adapter_is_queried_with_it(tiny_dir, adapter_dir, tmp_path):
    from click.testing import CliRunner
    from corpora import write_photo

    from unite_search import Index
    from unite_search.cli import main
    from unite_search.ingestion import ingest
    from unite_search.store import IndexMismatchError

    root = tmp_path / "corpus"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    index = tmp_path / "index"
    adapted = Encoder.load(tiny_dir, device="cpu", workers=1, adapter=adapter_dir)
    ingest(root, index, encoder=adapted)
    recorded = json.loads((index / "manifest.json").read_text())["encoder"]
    assert (recorded["model_id"], recorded["adapter"]) == (str(tiny_dir), str(adapter_dir))
    idx = Index.open(index, device="cpu")  # the recorded base and adapter, loaded as they were recorded
    hits = idx.query(image=root / "p1.png")
    assert hits[0].path == "p1.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert idx.encoder.adapter == str(adapter_dir) and idx.encoder.revision == adapted.revision
    with pytest.raises(IndexMismatchError, match="revision"):  # the base alone is another model
        Index.open(index, encoder=Encoder.load(tiny_dir, device="cpu", workers=1))
    moved = tmp_path / "moved-adapter"
    shutil.move(adapter_dir, moved)
    try:
        with pytest.raises(ModelLoadError, match="adapter"):
            Index.open(index, device="cpu").query(image=root / "p1.png")
        hits = Index.open(index, device="cpu", adapter=moved).query(image=root / "p1.png")
        assert hits[0].path == "p1.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        out = CliRunner().invoke(
            main, ["query", str(index), "--image", str(root / "p2.png"), "--adapter", str(moved), "--json"]
        )
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["hits"][0]["path"] == "p2.png"
        more = root / "p9.png"
        write_photo(more, seed=9)
        out = CliRunner().invoke(
            main, ["ingest", str(root), "--index", str(index), "--model", str(tiny_dir), "--adapter", str(moved), "-q"]
        )
        assert out.exit_code == 0, out.output  # the same weights from the adapter's new place
        assert "encoded 1" in out.output
        assert json.loads((index / "manifest.json").read_text())["encoder"]["adapter"] == str(moved)
        # the model not given is the index's (it was the default model: a 4.4 GB fetch, then refused);
        # the model given alone, if it is the index's, takes the index's adapter
        write_photo(root / "p10.png", seed=10)
        for given in (["--adapter", str(moved)], ["--model", str(tiny_dir)], []):
            out = CliRunner().invoke(main, ["ingest", str(root), "--index", str(index), "-q", *given])
            assert out.exit_code == 0, (given, out.output)
        assert len(rows_of(index)) == 5
    finally:
        shutil.move(moved, adapter_dir)


def rows_of(index: Path) -> list[str]:
    from unite_search.store import IndexStore

    return (
        IndexStore(index)
        .tables.read("image", IndexStore(index).tables.versions()["image"], ["id"])
        .column("id")
        .to_pylist()
    )


def test_embed_and_compare_take_an_adapter_as_query_does(tiny_dir, adapter_dir):
    """The README said ``query`` takes ``--adapter`` as ``embed`` does; neither embed nor compare had it."""
    from click.testing import CliRunner

    from unite_search.cli import main

    with_adapter = Encoder.load(tiny_dir, adapter=adapter_dir, device="cpu", workers=1)
    base = ["--model", str(tiny_dir), "--device", "cpu", "--json"]
    out = CliRunner().invoke(main, ["embed", "--text", TEXTS[0], "--adapter", str(adapter_dir), *base])
    assert out.exit_code == 0, out.output
    np.testing.assert_allclose(json.loads(out.stdout)["vector"], with_adapter.encode(TEXTS[:1])[0], atol=1e-5)
    out = CliRunner().invoke(main, ["compare", TEXTS[0], TEXTS[1], "--adapter", str(adapter_dir), *base])
    assert out.exit_code == 0, out.output
    want = float(np.dot(*with_adapter.encode(TEXTS[:2])))
    assert json.loads(out.stdout)["cosine"] == pytest.approx(want, abs=1e-5)


def test_an_adapter_loads_without_a_warning(tiny_dir, adapter_dir):
    """peft asked transformers a deprecated question at every load: two lines of FutureWarning on each command
    that used an adapter, and under ``-W error`` (a test suite's setting) the load failed."""
    import warnings

    from unite_search.train.trainer import TrainConfig, add_lora

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = Encoder.load(tiny_dir, adapter=adapter_dir, device="cpu", workers=1)
        add_lora(Encoder.load(tiny_dir, device="cpu", workers=1), TrainConfig().resolved())
    assert enc.adapter == str(adapter_dir)


def test_a_moved_model_or_adapter_folder_is_named_as_the_index_and_like_queries_still_serve(
    tiny_dir, adapter_dir, tmp_path, monkeypatch
):
    """The index's recorded model or adapter folder moved: every command says it is the index's folder and which
    option points at its new place (a missing adapter is not called one without adapter_config.json), and serve
    answers like= queries, which need no model, with 503 for the others until the folder is back."""
    import gc

    import uvicorn
    from click.testing import CliRunner
    from corpora import write_photo
    from fastapi.testclient import TestClient

    from unite_search import Index
    from unite_search.cli import main
    from unite_search.ingestion import ingest
    from unite_search.store import IndexStore

    model, adapter = shutil.copytree(tiny_dir, tmp_path / "model"), shutil.copytree(adapter_dir, tmp_path / "adapter")
    root, index = tmp_path / "corpus", tmp_path / "index"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    ingest(root, index, encoder=Encoder.load(model, device="cpu", workers=1, adapter=adapter))
    like = IndexStore(index).read_rows("image", ["id"]).to_pylist()[0]["id"]
    served = []  # the app serve hands uvicorn, kept instead of run (through uvicorn.run or a Server's run)

    def keep(server, sockets=()):
        server.started = True
        served.append(server.config.app)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    monkeypatch.setattr(uvicorn.Server, "run", keep)
    for moved, option in ((adapter, "--adapter"), (model, "--model")):
        shutil.move(moved, tmp_path / "elsewhere")
        what = "model folder" if option == "--model" else "LoRA adapter folder"
        said = (f"{index} was built with the {what} {moved}, which is not there now (moved or deleted?): pass its "
                f"new place with {option} ({option[2:]}= in Python)")  # fmt: skip
        with pytest.raises(ModelLoadError) as raised:
            Index.open(index, device="cpu").query(text="a photo")
        assert str(raised.value) == said
        for args in (["query", str(index), "--text", "a photo"], ["ingest", str(root), "--index", str(index), "-q"]):
            out = CliRunner().invoke(main, args)
            assert out.exit_code == 1 and out.output == f"Error: {said}\n", out.output
        served.clear()
        try:
            out = CliRunner().invoke(main, ["serve", str(index), "--device", "cpu", "--port", "0"])
        finally:
            gc.unfreeze()
        assert out.exit_code == 0 and f"warning: {said}; meanwhile only like= queries" in out.stderr, out.output
        with TestClient(served[0], base_url="http://localhost") as client:  # serve answers localhost only
            assert client.post("/search", json={"like": like, "k": 2}).status_code == 200
            refused = client.post("/search", json={"text": "a photo"})
            assert refused.status_code == 503 and refused.json() == {"error": "unavailable", "detail": said}
            shutil.move(tmp_path / "elsewhere", moved)  # back: the next query loads it
            assert client.post("/search", json={"text": "a photo", "k": 1}).status_code == 200
    with pytest.raises(ModelLoadError, match=f"LoRA adapter folder {tmp_path / 'gone'} does not exist"):
        Encoder.load(model, adapter=tmp_path / "gone")
