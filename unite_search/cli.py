"""The ``unite-search`` command line. Thin: each command maps onto the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import UniteError
from .modality import Item

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def _encoder_options(fn):
    options = [
        click.option("--model", "-m", default=None, help="Alias (unite-base-2b...), hub id or local folder."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ..."),
        click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16, float16."),
        click.option("--fps", type=float, default=None, help="Video frames per second to sample (default 1)."),
        click.option("--max-frames", type=int, default=None, help="Most frames per video (default 32)."),
        click.option("--frames", type=int, default=None, help="Sample exactly this many frames per video."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(model, device, dtype, fps, max_frames, frames):
    from .encoder import Encoder
    from .settings import EncoderSettings

    changes = {k: v for k, v in (("fps", fps), ("max_frames", max_frames), ("frames", frames)) if v is not None}
    if max_frames is not None and max_frames < EncoderSettings.min_frames:
        changes["min_frames"] = max_frames
    try:
        return Encoder.load(model, device=device, dtype=dtype, settings=EncoderSettings(**changes))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _run(fn):
    """Run ``fn``, turning our errors into a clean message and exit status 1."""
    try:
        return fn()
    except UniteError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_input(arg: str, text: str | None = None) -> Item:
    """A positional input: an image or video path (by extension), else a text."""
    ext = Path(arg).suffix.lower()
    if ext in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        if not os.path.isfile(arg):
            raise click.BadParameter(f"{arg}: no such file", param_hint="input")
        key = "image" if ext in IMAGE_EXTENSIONS else "video"
        return Item(text=text, **{key: arg})
    if os.path.isfile(arg):
        raise click.BadParameter(f"{arg}: unknown media type (extension {ext or 'none'})", param_hint="input")
    if text is not None:
        raise click.BadParameter("--a-text/--b-text compose text with an image or video path", param_hint="input")
    return Item(text=arg)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unite-search")
def main() -> None:
    """Vector search over text, images and videos with the UNITE encoder."""


@main.command()
@click.option("--text", "-t", default=None, help="Text (alone, or composed with --image/--video).")
@click.option("--image", "-i", type=click.Path(dir_okay=False), default=None, help="Image file.")
@click.option("--video", "-v", type=click.Path(dir_okay=False), default=None, help="Video file.")
@click.option("--instruction", default=None, help="Task instruction prepended to the text.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Write the vector to a .npy file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (model, dim, vector).")
@_encoder_options
def embed(text, image, video, instruction, out, as_json, model, device, dtype, fps, max_frames, frames):
    """Embed one input (text, image, video or a combination) and print its vector."""
    if text is None and image is None and video is None:
        raise click.UsageError("give at least one of --text, --image, --video")
    item = Item(text=text, image=image, video=video, instruction=instruction)

    def work():
        encoder = _load(model, device, dtype, fps, max_frames, frames)
        return encoder, encoder.encode([item])[0]

    encoder, vec = _run(work)
    if out:
        import numpy as np

        np.save(out, vec)
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
@_encoder_options
def compare(a, b, a_text, b_text, as_json, model, device, dtype, fps, max_frames, frames):
    """Cosine similarity of two inputs. Each is an image/video path or a text.

    \b
    unite-search compare "A reindeer walks through snow" cover.jpg
    unite-search compare beach.jpg beach.jpg --a-text "What is this place?" --b-text "Marina Beach."
    """
    first, second = parse_input(a, a_text), parse_input(b, b_text)

    def work():
        encoder = _load(model, device, dtype, fps, max_frames, frames)
        return encoder, encoder.encode([first, second])

    encoder, vecs = _run(work)
    score = float(vecs[0] @ vecs[1])
    if as_json:
        click.echo(
            json.dumps({"model": encoder.model_id, "a": first.describe(), "b": second.describe(), "cosine": score})
        )
    else:
        click.echo(f"{score:.4f}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
