"""The ``unite-search`` command line. Thin: each command maps onto the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .corpus import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .errors import ConfigError, UniteError
from .modality import Item


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


def _settings(fps, max_frames, frames):
    from .settings import EncoderSettings

    changes = {k: v for k, v in (("fps", fps), ("max_frames", max_frames), ("frames", frames)) if v is not None}
    if max_frames is not None and max_frames < EncoderSettings.min_frames:
        changes["min_frames"] = max_frames
    try:
        return EncoderSettings(**changes)
    except ConfigError as exc:
        raise _usage_mistake(str(exc)) from exc


def _load(model, device, dtype, fps, max_frames, frames, workers=None):
    """An encoder; a wrong device, dtype or setting is a ConfigError, which ``_run`` tells as a usage mistake."""
    from .encoder import Encoder

    settings = _settings(fps, max_frames, frames)
    return Encoder.load(model, device=device, dtype=dtype, settings=settings, workers=workers)


def _run(fn):
    """Run ``fn``, turning our errors (and the operating system's) into a one-line message: exit status 2 for
    a wrong argument (:class:`ConfigError`: a device this machine lacks, a setting out of range...), else 1."""
    from .diskio import io_reason

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
    # LanceDB logs a warning each time it creates a table; a command line has no use for it
    os.environ.setdefault("LANCEDB_LOG", "error")


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


@main.command()
@click.argument("corpus", type=click.Path(exists=True))
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Index folder (default: indexes/<corpus folder name>).",
)
@_encoder_options
@click.option(
    "--workers", type=click.IntRange(1), default=None, help="Read/decode threads (default: cores, at most 8)."
)
@click.option(
    "--segment-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Videos longer than this are indexed as overlapping segments of this length.",
)
@click.option("--segment-overlap", type=float, default=None, help="Seconds two segments share (default: a sixth).")
@click.option(
    "--passage-chars",
    type=click.IntRange(16),
    default=2000,
    show_default=True,
    help="Text files are split into passages of at most this many characters.",
)
@click.option(
    "--pairs",
    type=click.Choice(["none", "composed"]),
    default="none",
    show_default=True,
    help="composed: also index each image/video with its sidecar caption as one composed item.",
)
@click.option(
    "--on-error",
    type=click.Choice(["skip", "raise"]),
    default="skip",
    show_default=True,
    help="skip: record bad inputs and go on; raise: stop at the first, publishing nothing.",
)
@click.option(
    "--flat-max",
    type=click.IntRange(1),
    default=None,
    help="Shards above this many rows get an IVF index (default 100000).",
)
@click.option("--index-memory", type=str, default=None, metavar="SIZE",
              help="Most memory one shard's ANN index may hold, e.g. 8G or 512M (default: half the RAM); "
                   "larger shards get compressed codes (SQ8, PQ), re-ranked exactly.")  # fmt: skip
@click.option("--memory-mb", type=click.IntRange(1), default=2048, show_default=True,
              help="Most memory held by inputs decoded and not yet encoded (a larger input runs alone).")  # fmt: skip
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="LoRA adapter folder (from finetune) applied to --model.")  # fmt: skip
@click.option("--allow-outside", is_flag=True,
              help="Also read files outside the corpus folder (symlinks, *.jsonl paths); off by default.")  # fmt: skip
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[auto|ADDRESS]",
              help="Decode, encode and write on a Ray cluster (pip install -e '.[ray]'): 'auto' (the default "
                   "value) joins this machine's cluster or starts one; else its address.")  # fmt: skip
@click.option("--ray-encoders", type=click.IntRange(1), default=None, metavar="N",
              help="Encoder actors on Ray (default: one per GPU of the cluster, else 1).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def ingest(corpus, index_dir, model, device, dtype, fps, max_frames, frames, workers, segment_seconds,
           segment_overlap, passage_chars, pairs, on_error, flat_max, index_memory, memory_mb, adapter, allow_outside,
           ray_address, ray_encoders, as_json, quiet):  # fmt: skip
    """Index a folder of texts, images, videos and *.jsonl manifests.

    \b
    Rerun it at will: it finishes an interrupted run (Ctrl-C included), encodes only new or
    changed files and removes what left the folder. Exit status: 0 all indexed; 3 finished, some
    inputs failed (listed); 1 failed; 2 bad usage; 130 interrupted.
    """
    from . import ann
    from .ingestion import ingest as run_ingest

    if os.path.isfile(corpus):
        raise _usage_mistake(_one_file_help(corpus))
    settings = _settings(fps, max_frames, frames)
    index_bytes = _size(index_memory, "--index-memory") if index_memory is not None else None

    def log(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    def work():
        return run_ingest(
            corpus, index_dir, model=model, adapter=adapter, device=device, dtype=dtype, settings=settings,
            workers=workers, segment_seconds=segment_seconds, segment_overlap=segment_overlap,
            passage_chars=passage_chars, pairs=pairs, on_error=on_error, flat_max=flat_max or ann.FLAT_MAX,
            index_memory=index_bytes, memory_bytes=memory_mb << 20, allow_outside=allow_outside, progress=not quiet,
            log=log, engine="ray" if ray_address or ray_encoders else "local", ray_address=ray_address,
            ray_encoders=ray_encoders,
        )  # fmt: skip

    try:
        report = _run(work)
    except KeyboardInterrupt:
        if on_error == "raise":
            said = ("nothing was published and the index is as this run found it (--on-error raise). "
                    "Run the same command again to start over.")  # fmt: skip
        else:
            said = ("every item encoded so far is kept, and searches see the last published index meanwhile. "
                    "Run the same command again to continue where it stopped.")  # fmt: skip
        click.echo(f"\ninterrupted: {said}", err=True)
        sys.exit(130)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    sys.exit(report.exit_code)


def _one_file_help(path: str) -> str:
    """What to do when ``ingest`` is given a file: it takes a folder."""
    import shlex

    ext = Path(path).suffix.lower()
    quoted = shlex.quote(path)
    kind = "--image" if ext in IMAGE_EXTENSIONS else "--video" if ext in VIDEO_EXTENSIONS else None
    embed = f"unite-search embed {kind} {quoted}" if kind else f'unite-search embed --text "$(cat {quoted})"'
    return (
        f"{path} is a file; ingest takes a folder (and indexes every file in it). To index this one file, "
        f"put it in a folder of its own and ingest that folder: mkdir one && cp {quoted} one/ && "
        f"unite-search ingest one. To get its vector without an index: {embed}"
    )


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Training pairs (JSONL).")
@click.option("--model", "-m", default=None, help="Base model: alias, hub id or folder.")
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for checkpoints and the adapter."
)
@click.option(
    "--stage",
    type=click.IntRange(1, 2),
    default=2,
    show_default=True,
    help="1: symmetric InfoNCE (retrieval adaptation); 2: MAMCL (instruction tuning).",
)
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate (stage default: 1e-4 / 2e-5).")
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Pairs per step across all processes (the contrastive batch).",
)
@click.option("--lora-r", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lora-alpha", type=click.IntRange(1), default=None, help="Stage default: 16 / 64.")
@click.option("--dual", is_flag=True, help="Average the loss with the (unmasked) candidate-to-query term, as upstream.")
@click.option("--max-steps", type=click.IntRange(1), default=None, metavar="N",
              help="Train exactly N steps (overrides --epochs); past an epoch, the next one starts.")  # fmt: skip
@click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), default=None, help="Held-out pairs.")
@click.option("--eval-every", type=click.IntRange(0), default=0,
              help="Held-out R@1, R@5 and loss every N steps (and before the first, after the last).")  # fmt: skip
@click.option("--save-every", type=click.IntRange(0), default=0, help="Checkpoint every N steps.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None, help="A checkpoint folder.")
@click.option("--no-grad-cache", is_flag=True, help="Backpropagate the whole batch at once (more memory).")
@click.option(
    "--on-error",
    type=click.Choice(["skip", "raise"]),
    default="raise",
    show_default=True,
    help="Bad training lines: stop at the first, or skip and report them.",
)
@click.option("--allow-outside", is_flag=True, help="Read media outside the data file's folder (off by default).")
@click.option("--device", default="auto", show_default=True)
def finetune(
    data,
    model,
    output,
    stage,
    epochs,
    lr,
    batch_size,
    lora_r,
    lora_alpha,
    dual,
    max_steps,
    eval_data,
    eval_every,
    save_every,
    resume,
    no_grad_cache,
    on_error,
    allow_outside,
    device,
):
    """Fine-tune UNITE with LoRA on JSONL pairs; writes OUTPUT/adapter. Multi-GPU: launch with torchrun.

    \b
    unite-search finetune --data pairs.jsonl --model unite-base-2b --output runs/shop --epochs 2
    torchrun --nproc-per-node 8 -m unite_search.cli finetune --data pairs.jsonl --output runs/shop
    """
    import torch

    from .encoder import Encoder
    from .errors import InputError
    from .train.data import load_pairs
    from .train.trainer import TrainConfig, Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        local = int(os.environ.get("LOCAL_RANK", "0"))
        on_gpu = torch.cuda.is_available() and device != "cpu"
        torch.distributed.init_process_group("nccl" if on_gpu else "gloo")
        if on_gpu:
            torch.cuda.set_device(local)
            device = f"cuda:{local}"

    lead = int(os.environ.get("RANK", "0")) == 0

    def note(line: str) -> None:
        if lead:
            click.echo(line, err=True)

    def read(path: str) -> list:
        """Every line checked (media opened) before the model loads; each bad one reported as file:line."""
        pairs, problems = load_pairs(path, on_error="skip", allow_outside=allow_outside)
        for problem in problems:
            note(f"skipped {problem}" if on_error == "skip" else problem)
        if problems and on_error == "raise":
            raise InputError(f"{len(problems)} bad line(s) in {path}, listed above; nothing was trained "
                             "(fix them, or pass --on-error skip to train on the rest)")  # fmt: skip
        if problems:
            note(f"{path}: skipped {len(problems)} bad line(s), using {len(pairs)} pairs")
        return pairs

    def work():
        pairs = read(data)
        held = read(eval_data) if eval_data else None
        dtype = "bfloat16" if device != "cpu" and torch.cuda.is_available() else "float32"
        encoder = Encoder.load(model, device=device, dtype=dtype)
        config = TrainConfig(stage=stage, epochs=epochs, lr=lr, batch_size=batch_size, lora_r=lora_r,
                             lora_alpha=lora_alpha, dual=dual, max_steps=max_steps, eval_every=eval_every,
                             save_every=save_every, grad_cache=not no_grad_cache)  # fmt: skip
        trainer = Trainer(encoder, pairs, config, output, eval_pairs=held)
        if resume:
            trainer.resume(resume)
        note(trainer.schedule())
        return trainer, trainer.train(progress=True)

    trainer, log = _run(work)  # a setting that cannot work is a ConfigError: one line, exit 2
    if trainer.rank == 0:
        last = next((e for e in reversed(log) if "loss" in e), {})
        held_out = next((e for e in reversed(log) if "eval_r1" in e), None)
        recall = (f", held-out R@1 {held_out['eval_r1']:.1f} R@5 {held_out.get('eval_r5', float('nan')):.1f}"
                  if held_out else "")  # fmt: skip
        click.echo(f"trained {trainer.step} steps, last loss {last.get('loss', float('nan')):.4f}{recall}; "
                   f"adapter in {Path(output) / 'adapter'}")  # fmt: skip
        click.echo(trainer.schedule())
        click.echo(f"metrics in {Path(output) / 'metrics.jsonl'}, curves in {Path(output) / 'metrics.png'}")


@main.command()
@click.option("--model", "-m", default=None, help="Base model the adapter was trained on.")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="New model folder.")
def merge(model, adapter, output):
    """Fold a LoRA adapter into a full model folder that any unite-search command can load."""
    from .train.merge import merge_adapter

    path = _run(lambda: merge_adapter(model, adapter, output))
    click.echo(f"wrote {path}")


@main.command(name="pairs")
@click.argument("source", metavar="DIR_OR_INDEX", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The JSONL file to write (what finetune --data reads).")  # fmt: skip
@click.option("--allow-outside", is_flag=True,
              help="Also take captions and media that symlinks (or index rows) lead outside the folder.")  # fmt: skip
def pairs_command(source, output, allow_outside):
    """Caption -> media training pairs from captioned media, written as finetune --data reads them.

    DIR_OR_INDEX is a folder (x.txt beside x.jpg / x.mp4) or an index built from one (a folder
    holding manifest.json): each image or video with a caption gives one pair. Paths are written
    relative to the output file, or absolute where they lie outside its folder.

    \b
    unite-search pairs ~/products -o ~/products/pairs.jsonl
    unite-search pairs indexes/products -o runs/pairs.jsonl
    """
    import warnings

    from .errors import InputError
    from .manifest import MANIFEST
    from .train.data import pairs_from_folder, pairs_from_index, write_pairs

    is_index = os.path.isfile(os.path.join(source, MANIFEST))

    def work():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            build = pairs_from_index if is_index else pairs_from_folder
            found = build(source, allow_outside=allow_outside)
        for warning in caught:
            click.echo(str(warning.message), err=True)
        if not found:
            raise InputError(f"{source}: no captioned image or video found (a caption is x.txt beside x.jpg / x.mp4)")
        return found, write_pairs(found, output)

    found, outside = _run(work)
    if outside:
        click.echo(f"{len(outside)} media path(s) lie outside {os.path.dirname(os.path.abspath(output))} and are "
                   "written absolute: finetune reads them with --allow-outside", err=True)  # fmt: skip
    click.echo(f"wrote {len(found)} pairs to {output} (from the {'index' if is_index else 'folder'} {source})")


BENCH_NAMES = ["carebench", "docci", "mmeb", "msrvtt", "sharegpt4v", "urban1k", "webvid-covr"]


@main.command()
@click.argument("name", type=click.Choice(BENCH_NAMES))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="The dataset folder.")
@click.option("--model", "-m", default=None, help="Alias (unite-base-2b...), hub id or local folder.")
@click.option("--variant", type=click.Choice(["general", "spatial", "temporal"]), default="general",
              show_default=True, help="CaReBench caption field.")  # fmt: skip
@click.option("--frames", type=click.IntRange(1), default=None, help="Frames per video (default: UNITE's setting).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N items (per MMEB subset).")
@click.option("--subset", "subsets", multiple=True, help="MMEB dataset(s) to run (default: all found).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Items per forward batch (cap).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache (default ~/.cache/unite-search/embeddings).")  # fmt: skip
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the result JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(name, data, model, variant, frames, limit, subsets, batch_size, cache_dir, device, dtype, out, as_json):
    """Recall on a benchmark, read from its official download format.

    \b
    unite-search bench carebench --data ~/data/CaReBench --variant spatial
    unite-search bench webvid-covr --data ~/data/WebVid-CoVR --model unite-instruct-2b --out covr.json
    """
    from .evaluation import format_result, run_benchmark

    def work():
        return run_benchmark(
            name, data, model=model, variant=variant, frames=frames, limit=limit, subsets=list(subsets) or None,
            batch_size=batch_size, cache_dir=cache_dir, device=device, dtype=dtype, progress=not as_json,
        )  # fmt: skip

    result = _run(work)
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2) if as_json else format_result(result))


def _time_range(hit) -> str:
    if hit.start is None or hit.end is None:
        return ""

    def clock(t: float) -> str:
        return f"{int(t // 60)}:{t % 60:04.1f}"

    return f"{clock(hit.start)}-{clock(hit.end)}"


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.option("--text", "-t", default=None, help="Query text (alone, or composed with --image/--video).")
@click.option("--image", "-i", type=click.Path(exists=True, dir_okay=False), default=None, help="Query image.")
@click.option("--video", "-v", type=click.Path(exists=True, dir_okay=False), default=None, help="Query video.")
@click.option("--instruction", default=None, help="Task instruction prepended to the text.")
@click.option("--like", default=None, help="Search with a stored row's vector (more like this row id).")
@click.option("--target", multiple=True, help="Shard(s) to search: text, image, video, image+text..., all.")
@click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="Results to return.")
@click.option("--where", default=None, help='SQL filter on stored columns, e.g. "width >= 1000".')
@click.option("--exclude", multiple=True, help="Row id to leave out (repeatable).")
@click.option("--explain", is_flag=True, help="Print the query plan first (without --json).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (plan and hits).")
@click.option("--model", "-m", default=None, help="Model to encode with (default: the index's own).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="LoRA adapter folder (default: the one the index was built with, if any).")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ...")
def query(index_dir, text, image, video, instruction, like, target, k, where, exclude, explain, as_json, model,
          adapter, device):  # fmt: skip
    """Search an index with text, an image, a video, a combination, or --like ROW_ID.

    \b
    unite-search query indexes/media --text "a red fox in the snow"
    unite-search query indexes/media --video clip.mp4 --text "same scene at night" -k 5
    unite-search query indexes/media --image cat.jpg --where "width >= 1000" --explain
    """
    from .index import Index

    args = {"text": text, "image": image, "video": video, "like": like, "k": k, "instruction": instruction}
    args.update(target=list(target) or None, where=where, exclude=list(exclude) or None)
    if text is None and image is None and video is None and like is None:
        raise click.UsageError("give --text, --image, --video (or a combination), or --like ROW_ID")

    def work():
        index = Index.open(index_dir, device=device, model=model, adapter=adapter)
        plan = index.plan(**args)
        return plan, index.query(**args)

    plan, hits = _run(work)
    if as_json:
        payload = {"plan": plan.explain(), "shards": list(plan.shards), "hits": [h.to_dict() for h in hits]}
        click.echo(json.dumps(payload, indent=2))
        return
    if explain:
        click.echo(plan.explain() + "\n")
    if not hits:
        click.echo("no results")
        return
    click.echo(f"{'rank':>4}  {'score':>6}  {'shard':<10}  {'path':<40}  {'time':<13}  caption / text")
    for h in hits:
        label = h.caption or h.text or ""
        label = label.replace("\n", " ")
        click.echo(
            f"{h.rank:>4}  {h.score:>6.3f}  {h.shard:<10}  {h.path or h.id!s:<40}  {_time_range(h):<13}  {label[:60]}"
        )


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.option("--verify", is_flag=True, help="Check every file the manifest names; exit 1 when any is damaged.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(index_dir, verify, as_json):
    """Shards, counts, model, settings, index types, size on disk and the last run's failures.

    \b
    With --verify: FAISS checksums, table versions present and readable, row counts, and that every
    stored vector equals its FAISS copy. Exit status 1 when anything is damaged.
    """
    from .store import IndexStore

    if verify:
        _verify(index_dir, as_json)
        return
    store = IndexStore(index_dir)
    manifest = _run(store.require_manifest)
    payload = store.info(manifest)
    last = payload["last_run"]
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"index   {payload['index']}")
    click.echo(f"corpus  {payload['corpus']}")
    click.echo(f"model   {payload['model']} (revision {payload['revision']}, dim {payload['dim']})")
    enc = manifest["encoder"]
    frames = enc.get("frames") or f"{enc.get('min_frames')}-{enc.get('max_frames')}"
    segments = manifest["ingest"].get("segment_seconds")
    click.echo(
        f"video   fps {enc.get('fps')}, frames {frames}, segments {segments} s; prompt {enc.get('prompt_version')}"
    )
    click.echo(f"size    {payload['disk_bytes'] / 1e6:.1f} MB, updated {payload['updated']}")
    if not payload["shards"]:
        click.echo("shards  none published yet")
    for name, entry in sorted(payload["shards"].items()):
        idx = entry["index"]
        click.echo(f"shard   {name:<12} {entry['rows']:>9} rows  {_index_words(idx)}")
    if last:
        from .report import SHOWN, status_words

        if last.get("error") and not last.get("published"):  # stopped before its counts were known
            click.echo(f"last run {status_words(last['status'])}: {last['error']}")
        else:
            click.echo(
                f"last run {status_words(last['status'])}: encoded {last['encoded_items']}, "
                f"removed {last['removed_items']}, failed {len(last['failures'])}"
                + (f" ({last['error']})" if last.get("error") else "")
            )
        for p in last["failures"][:SHOWN]:
            click.echo(f"  {p['path']} [{p['stage']}] {p['reason']}")
        if len(last["failures"]) > SHOWN:
            click.echo(f"  ... and {len(last['failures']) - SHOWN} more (--json)")
        skipped = last.get("skipped") or []
        if skipped:
            click.echo(f"skipped {len(skipped)} (hidden, special files, links out of the corpus):")
            for p in skipped[:SHOWN]:
                click.echo(f"  {p['path']} [{p['reason']}]")
            if len(skipped) > SHOWN:
                click.echo(f"  ... and {len(skipped) - SHOWN} more (--json)")


def _size(text: str, option: str) -> int:
    """Bytes from '8G', '512M', '64k' or a plain number; a usage error otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = -1
    if value <= 0:
        raise click.BadParameter(f"{text!r} is not a size such as 8G, 512M or 1000000", param_hint=option)
    return int(value)


def _index_words(idx: dict) -> str:
    """One line on a shard's index: its kind, its tuning, and whether the last publish updated or built it."""
    words = "exact" if idx["type"] == "flat" else idx["factory"]
    if idx["type"] == "ivf":
        rerank = f", top {10 * idx['rerank']} re-ranked" if (idx.get("rerank") or 1) > 1 else ""
        words += f" nprobe {idx['nprobe']}{rerank} (recall@10 {idx['recall_at_10']})"
    if idx.get("memory_bytes") is not None:
        words += f", {idx['memory_bytes'] / 1e6:.1f} MB" + (
            " (over the memory budget)" if idx.get("over_budget") else ""
        )
    since = idx.get("since_training")
    if idx.get("built") == "delta":
        words += f"; +{idx['delta']['added']} -{idx['delta']['removed']} rows beside its base file"
    elif idx.get("built") == "updated" and since:
        words += f"; updated {since['publishes']}x since built (+{since['added']} -{since['removed']} rows)"
    return words


def _verify(index_dir: str, as_json: bool) -> None:
    from .verify import verify

    result = _run(lambda: verify(index_dir))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.ok:
            click.echo(f"ok       {line}")
        for line in result.problems:
            click.echo(f"DAMAGED  {line}")
        if result.damaged:
            click.echo(f"{len(result.problems)} problem(s); `unite-search ingest` on the corpus rebuilds damaged FAISS "
                       "files, a damaged table needs the index rebuilt (rm -r the index, then ingest)")  # fmt: skip
        else:
            click.echo("index verified: every file the manifest names is present and intact")
    sys.exit(1 if result.damaged else 0)


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--model", "-m", default=None, help="Model to encode with (default: the index's own).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="LoRA adapter folder (default: the one the index was built with, if any).")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16, float16.")
@click.option("--token", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but /healthz "
                   "(default: $UNITE_SEARCH_TOKEN).")  # fmt: skip
@click.option("--batch-window-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Queries arriving within this window share one encoder forward pass.")  # fmt: skip
def serve(index_dir, host, port, model, adapter, device, dtype, token, batch_window_ms):
    """Serve an index over HTTP: search, items, media, thumbnails, info and metrics (docs at /docs).

    \b
    unite-search serve indexes/media
    curl -s localhost:8000/search -H 'Content-Type: application/json' -d '{"text": "a red fox", "k": 5}'
    """
    from .server import TOKEN_ENV, create_app, is_loopback

    token = token or os.environ.get(TOKEN_ENV) or None
    if not token and not is_loopback(host):
        click.echo(f"warning: serving {host} without a token: anyone who can reach this port can search the "
                   f"index and read its files; pass --token or set {TOKEN_ENV}", err=True)  # fmt: skip

    def work():
        from .index import Index

        index = Index.open(index_dir, device=device, dtype=dtype, model=model, adapter=adapter)
        index.encoder  # noqa: B018  load now: a wrong model or device fails here, not on the first query
        return create_app(index, token=token, batch_window_ms=batch_window_ms)

    app = _run(work)
    import gc

    import uvicorn

    # The model, libraries and index metadata are loaded and live for the whole process: take them out
    # of the collector's view, so a full collection no longer walks them (it paused requests for about
    # 300 ms on the tiny model under load; with this, a few ms).
    gc.collect()
    gc.freeze()

    click.echo(f"serving {os.path.abspath(index_dir)} at http://{host}:{port} (API docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
