import json

import numpy as np
import pytest
from click.testing import CliRunner

from unite_search.cli import main


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_embed_prints_dim_and_vector(runner, tiny_dir, encoder):
    result = runner.invoke(main, ["embed", "--text", "a dog", "--model", str(tiny_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, values = result.stdout.strip().splitlines()[-2:]
    assert "dim 64" in header
    vec = np.array([float(x) for x in values.split()])
    assert vec.shape == (64,) and np.abs(vec - encoder.encode(["a dog"])[0]).max() < 1e-5


def test_embed_json_and_npy(runner, tiny_dir, media, encoder, tmp_path):
    out = tmp_path / "v.npy"
    args = [
        "embed",
        "--image",
        str(media["image"]),
        "--text",
        "what is this?",
        "--model",
        str(tiny_dir),
        "--json",
        "--out",
        str(out),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    expected = encoder.encode([{"image": media["image"], "text": "what is this?"}])[0]
    assert payload["dim"] == 64 and np.abs(np.array(payload["vector"]) - expected).max() < 1e-5
    assert np.abs(np.load(out) - expected).max() < 1e-6


def test_compare_like_the_demo(runner, tiny_dir, media, encoder):
    result = runner.invoke(main, ["compare", "a dog in the snow", str(media["image"]), "--model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    a, b = encoder.encode([{"text": "a dog in the snow"}, {"image": media["image"]}])
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(float(a @ b), abs=1e-4)
    fused = runner.invoke(
        main,
        [
            "compare",
            str(media["image"]),
            str(media["image2"]),
            "--a-text",
            "Where?",
            "--b-text",
            "A beach.",
            "--model",
            str(tiny_dir),
            "--json",
        ],
    )
    assert fused.exit_code == 0, fused.output
    c, d = encoder.encode([{"image": media["image"], "text": "Where?"}, {"image": media["image2"], "text": "A beach."}])
    assert json.loads(fused.stdout.strip().splitlines()[-1])["cosine"] == pytest.approx(float(c @ d), abs=1e-4)


def test_cli_errors_are_clean(runner, tiny_dir, tmp_path):
    missing = runner.invoke(main, ["compare", "x", str(tmp_path / "nope.jpg"), "--model", str(tiny_dir)])
    assert missing.exit_code == 2 and "no such file" in missing.output
    (tmp_path / "bad.png").write_bytes(b"garbage")
    bad = runner.invoke(main, ["embed", "--image", str(tmp_path / "bad.png"), "--model", str(tiny_dir)])
    assert bad.exit_code == 1 and "bad.png" in bad.output and "Traceback" not in bad.output
    nothing = runner.invoke(main, ["embed", "--model", str(tiny_dir)])
    assert nothing.exit_code == 2 and "at least one" in nothing.output
    unknown = runner.invoke(main, ["embed", "--text", "x", "--model", "no-such-model"])
    assert unknown.exit_code == 1 and "unknown model" in unknown.output
