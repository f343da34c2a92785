"""``bench``: recall on a benchmark in its official format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import _run, main

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
              help="Embedding cache (default $XDG_CACHE_HOME/unite-search/embeddings, or ~/.cache/...).")  # fmt: skip
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the result JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--allow-outside", is_flag=True,
              help="Read media the dataset's files name outside --data (off by default).")  # fmt: skip
def bench(name, data, model, variant, frames, limit, subsets, batch_size, cache_dir, device, dtype, out, as_json,
          allow_outside):  # fmt: skip
    """Recall on a benchmark, read from its official download format.

    \b
    unite-search bench carebench --data ~/data/CaReBench --variant spatial
    unite-search bench webvid-covr --data ~/data/WebVid-CoVR --model unite-instruct-2b --out covr.json
    """
    from ..evaluation import format_result, run_benchmark

    def work():
        return run_benchmark(
            name, data, model=model, variant=variant, frames=frames, limit=limit, subsets=list(subsets) or None,
            batch_size=batch_size, cache_dir=cache_dir, device=device, dtype=dtype, progress=not as_json,
            allow_outside=allow_outside,
        )  # fmt: skip

    result = _run(work)
    click.echo(json.dumps(result, indent=2) if as_json else format_result(result))
    if out:  # after the result is shown: a path it cannot write loses nothing, and is one line, not a traceback
        _run(lambda: Path(out).write_text(json.dumps(result, indent=2)))
