"""``embed`` and ``compare``: vectors and similarities of single inputs."""

from __future__ import annotations

import json

import click

from ..modality import Item
from ._common import _encoder_options, _load, _run, main, parse_input


@main.command()
@click.option("--text", "-t", default=None, help="Text (alone, or composed with --image/--video).")
@click.option("--image", "-i", type=click.Path(dir_okay=False), default=None, help="Image file.")
@click.option("--video", "-v", type=click.Path(dir_okay=False), default=None, help="Video file.")
@click.option("--instruction", default=None, help="Task instruction prepended to the text.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Write the vector to a .npy file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (model, dim, vector).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="LoRA adapter folder (from finetune) applied to --model.")  # fmt: skip
@_encoder_options
def embed(text, image, video, instruction, out, as_json, adapter, model, device, dtype, fps, max_frames, frames):
    """Embed one input (text, image, video or a combination) and print its vector."""
    if text is None and image is None and video is None:
        raise click.UsageError("give at least one of --text, --image, --video")
    item = Item(text=text, image=image, video=video, instruction=instruction)

    if out and not out.endswith(".npy"):
        out += ".npy"  # the name numpy gives the file, and so the one reported

    def work():
        encoder = _load(model, device, dtype, fps, max_frames, frames, adapter=adapter)
        vec = encoder.encode([item])[0]
        if out:
            import numpy as np

            np.save(out, vec)  # inside _run: a path it cannot write is one line, not a traceback
        return encoder, vec

    encoder, vec = _run(work)
    if as_json:
        payload = {"model": encoder.model_id, "dim": encoder.dim, "vector": [float(x) for x in vec]}
        if out:
            payload["out"] = out
        click.echo(json.dumps(payload))
        return
    click.echo(f"model {encoder.model_id}  dim {encoder.dim}")
    if out:
        click.echo(f"wrote {out}")
    else:
        click.echo(" ".join(f"{x:.6f}" for x in vec))


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--a-text", default=None, help="Text composed with input A (A must be an image or video).")
@click.option("--b-text", default=None, help="Text composed with input B (B must be an image or video).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="LoRA adapter folder (from finetune) applied to --model.")  # fmt: skip
@_encoder_options
def compare(a, b, a_text, b_text, as_json, adapter, model, device, dtype, fps, max_frames, frames):
    """Cosine similarity of two inputs. Each is an image/video path or a text.

    \b
    unite-search compare "A reindeer walks through snow" cover.jpg
    unite-search compare beach.jpg beach.jpg --a-text "What is this place?" --b-text "Marina Beach."
    """
    first, second = parse_input(a, a_text), parse_input(b, b_text)

    def work():
        encoder = _load(model, device, dtype, fps, max_frames, frames, adapter=adapter)
        return encoder, encoder.encode([first, second])

    encoder, vecs = _run(work)
    score = float(vecs[0] @ vecs[1])
    if as_json:
        click.echo(
            json.dumps({"model": encoder.model_id, "a": first.describe(), "b": second.describe(), "cosine": score})
        )
    else:
        click.echo(f"{score:.4f}")
