"""The command group and what its commands share: encoder options, settings, error reporting, inputs."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..corpus import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..errors import ConfigError, UniteError
from ..modality import Item


def _usage_mistake(message: str) -> click.ClickException:
    """A user mistake told on one line (``Error: ...``), with click's usage exit status, 2."""
    error = click.ClickException(message)
    error.exit_code = 2
    return error


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


def _settings(fps, max_frames, frames, base=None):
    """The preprocessing settings: ``base`` (default: the defaults) with the options given."""
    import dataclasses

    from ..settings import EncoderSettings

    base = base or EncoderSettings()
    changes = {k: v for k, v in (("fps", fps), ("max_frames", max_frames), ("frames", frames)) if v is not None}
    if max_frames is not None and max_frames < base.min_frames:
        changes["min_frames"] = max_frames
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as exc:
        raise _usage_mistake(str(exc)) from exc


def _load(model, device, dtype, fps, max_frames, frames, workers=None, adapter=None):
    """An encoder; a wrong device, dtype or setting is a ConfigError, which ``_run`` tells as a usage mistake."""
    from ..encoder import Encoder

    settings = _settings(fps, max_frames, frames)
    return Encoder.load(model, device=device, dtype=dtype, settings=settings, workers=workers, adapter=adapter)


def _run(fn):
    """Run ``fn``, turning our errors (and the operating system's) into a one-line message: exit status 2 for
    a wrong argument (:class:`ConfigError`: a device this machine lacks, a setting out of range...), else 1."""
    from ..diskio import io_reason

    try:
        return fn()
    except ConfigError as exc:
        raise _usage_mistake(str(exc)) from exc
    except UniteError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        raise click.ClickException(f"{where}{io_reason(exc)}") from exc


def parse_input(arg: str, text: str | None = None) -> Item:
    """A positional input: an image or video path (by extension), else a text."""
    ext = Path(arg).suffix.lower()
    if ext in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        if not os.path.isfile(arg):  # bad input (exit status 1), as embed says a missing file
            raise click.ClickException(f"{arg}: no such file")
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
    # LanceDB logs a warning each time it creates a table; a command line has no use for it
    os.environ.setdefault("LANCEDB_LOG", "error")
