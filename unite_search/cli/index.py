"""Commands on an index: ``ingest``, ``query``, ``info`` (``--verify``) and ``serve``."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..corpus import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ._common import _encoder_options, _run, _settings, _usage_mistake, main


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
    default=None,
    help="Videos longer than this are indexed as overlapping segments of this length (default 30).",
)
@click.option("--segment-overlap", type=float, default=None, help="Seconds two segments share (default: a sixth).")
@click.option(
    "--passage-chars",
    type=click.IntRange(16, 32_768),
    default=None,
    help="Text files are split into passages of at most this many characters (default 2000).",
)
@click.option(
    "--pairs",
    type=click.Choice(["none", "composed"]),
    default=None,
    help="composed: also index each image/video with its sidecar caption as one composed item (default none).",
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
    help="Shards above this many rows get an IVF index (default: the index's own, else 100000).",
)
@click.option("--index-memory", type=str, default=None, metavar="SIZE",
              help="Most memory one shard's ANN index may hold, e.g. 8G or 512M (default: the index's own, else "
                   "half the RAM); larger shards get compressed codes (SQ8, SQ4, PQ), re-ranked exactly.")  # fmt: skip
@click.option("--memory-mb", type=click.IntRange(1), default=2048, show_default=True,
              help="Most memory held by inputs decoded and not yet encoded (a larger input runs alone).")  # fmt: skip
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="LoRA adapter folder (from finetune) applied to --model.")  # fmt: skip
@click.option("--allow-outside/--inside-only", default=None,
              help="Also read files outside the corpus folder (symlinks, *.jsonl paths), or not (default: the "
                   "index's own, else inside only).")  # fmt: skip
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
    changed files and removes what left the folder. Into an existing index, the model, adapter and
    every setting not given are the index's own. Exit status: 0 all indexed; 3 finished, some
    inputs failed (listed); 1 failed; 2 bad usage; 130 interrupted.
    """
    from ..ingestion import index_settings
    from ..ingestion import ingest as run_ingest

    if os.path.isfile(corpus):
        raise _usage_mistake(_one_file_help(corpus))
    # the options given change the index's own settings (the defaults for a new one); none given: the index's
    given = (fps, max_frames, frames) != (None, None, None)
    own = _run(lambda: index_settings(corpus, index_dir)) if given else None  # (damaged: one line)
    settings = _settings(fps, max_frames, frames, base=own) if given else None
    index_bytes = _size(index_memory, "--index-memory") if index_memory is not None else None

    def log(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    def work():
        return run_ingest(
            corpus, index_dir, model=model, adapter=adapter, device=device, dtype=dtype, settings=settings,
            workers=workers, segment_seconds=segment_seconds, segment_overlap=segment_overlap,
            passage_chars=passage_chars, pairs=pairs, on_error=on_error, flat_max=flat_max,
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
        # Everything is written (run log included). The interpreter's own exit would join whatever native
        # thread the interrupt caught mid-task, and one was seen to abort it (exit 134 instead of 130).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
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


def _time_range(hit) -> str:
    if hit.start is None or hit.end is None:
        return ""

    def clock(t: float) -> str:
        return f"{int(t // 60)}:{t % 60:04.1f}"

    return f"{clock(hit.start)}-{clock(hit.end)}"


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.option("--text", "-t", default=None, help="Query text (alone, or composed with --image/--video).")
@click.option("--image", "-i", type=click.Path(dir_okay=False), default=None, help="Query image.")
@click.option("--video", "-v", type=click.Path(dir_okay=False), default=None, help="Query video.")
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
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16, float16.")
def query(index_dir, text, image, video, instruction, like, target, k, where, exclude, explain, as_json, model,
          adapter, device, dtype):  # fmt: skip
    """Search an index with text, an image, a video, a combination, or --like ROW_ID.

    \b
    unite-search query indexes/media --text "a red fox in the snow"
    unite-search query indexes/media --video clip.mp4 --text "same scene at night" -k 5
    unite-search query indexes/media --image cat.jpg --where "width >= 1000" --explain
    """
    from ..index import Index

    args = {"text": text, "image": image, "video": video, "like": like, "k": k, "instruction": instruction}
    args.update(target=list(target) or None, where=where, exclude=list(exclude) or None)
    if text is None and image is None and video is None and like is None:
        raise click.UsageError("give --text, --image, --video (or a combination), or --like ROW_ID")
    for flag, path in (("--image", image), ("--video", video)):
        if path is not None and not os.path.isfile(path):  # bad input (1), as embed says it, before a model loads
            raise click.ClickException(f"{flag} {path}: no such file")

    def work():
        index = Index.open(index_dir, device=device, dtype=dtype, model=model, adapter=adapter)
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
    """Shards, counts, model, settings, index types, size on disk and the last run's failures (and the
    last finished run's, when the last one was refused or stopped).

    \b
    With --verify: FAISS checksums, table versions present and readable, row counts, and that every
    stored vector equals its FAISS copy. Exit status 1 when anything is damaged.
    """
    from ..store import IndexStore

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
    if payload["outdated"]:
        click.echo(f"OUTDATED {payload['outdated']}; queries other than like= and ingests are refused: rebuild it "
                   f"(rm -r {index_dir}, then ingest)")  # fmt: skip
    if not payload["shards"]:
        click.echo("shards  none published yet")
    for name, entry in sorted(payload["shards"].items()):
        idx = entry["index"]
        click.echo(f"shard   {name:<12} {entry['rows']:>9} rows  {_index_words(idx)}")
    finished = payload["last_finished_run"]
    if last:
        _show_run("last run", last)
    if finished and finished != last:
        _show_run("last finished run", finished)


def _show_run(title: str, run: dict[str, Any]) -> None:
    from ..report import SHOWN, status_words

    if run.get("error") and not run.get("published"):  # stopped before its counts were known
        click.echo(f"{title} {status_words(run['status'])}: {run['error']}")
    else:
        click.echo(
            f"{title} {status_words(run['status'])}: encoded {run['encoded_items']}, "
            f"removed {run['removed_items']}, failed {len(run['failures'])}"
            + (f" ({run['error']})" if run.get("error") else "")
        )
    for p in run["failures"][:SHOWN]:
        click.echo(f"  {p['path']} [{p['stage']}] {p['reason']}")
    if len(run["failures"]) > SHOWN:
        click.echo(f"  ... and {len(run['failures']) - SHOWN} more (--json)")
    skipped = run.get("skipped") or []
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
    if not math.isfinite(value) or value < 1:  # nan, inf, or under a byte (0.5 would be a budget of 0)
        raise click.BadParameter(f"{text!r} is not a size such as 8G, 512M or 1000000", param_hint=option)
    return int(value)


def _index_words(idx: dict) -> str:
    """One line on a shard's index: its kind, its tuning, and whether the last publish updated or built it."""
    words = "exact" if idx["type"] == "flat" else idx["factory"]
    if idx["type"] == "ivf":
        rerank = f", top {10 * idx['rerank']} re-ranked" if (idx.get("rerank") or 1) > 1 else ""
        words += f" nprobe {idx['nprobe']}{rerank} (recall@10 {idx['recall_at_10']}"
        target = idx.get("recall_target") or 0
        short = idx["recall_at_10"] < target  # the tuning then probes every list
        words += f", under its {target} target even with every list probed)" if short else ")"
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
    from ..verify import verify

    result = _run(lambda: verify(index_dir))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.ok:
            click.echo(f"ok       {line}")
        for line in result.problems:
            click.echo(f"DAMAGED  {line}")
        if not result.damaged:
            click.echo("index verified: every file the manifest names is present and intact")
        elif not result.outdated:  # an outdated index is rebuilt, not repaired: said below
            click.echo(f"{len(result.problems)} problem(s); `unite-search ingest` on the corpus rebuilds damaged FAISS "
                       "files, a damaged table needs the index rebuilt (rm -r the index, then ingest)")  # fmt: skip
        if result.outdated:
            click.echo(f"OUTDATED {result.outdated}; rebuild it (rm -r {index_dir}, then ingest)")
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
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but /healthz and the search page's own "
                   "files (/, /static/...) (default: $UNITE_SEARCH_TOKEN).")  # fmt: skip
@click.option("--batch-window-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Queries arriving within this window share one encoder forward pass.")  # fmt: skip
@click.option("--gpu-search", is_flag=True,
              help="Search a GPU copy of each shard's FAISS index where faiss-gpu sees a GPU and it fits in "
                   "half its free memory (filtered searches stay on the CPU).")  # fmt: skip
def serve(index_dir, host, port, model, adapter, device, dtype, token, batch_window_ms, gpu_search):
    """Serve an index over HTTP: search, items, media, thumbnails, info and metrics (docs at /docs).

    \b
    unite-search serve indexes/media
    curl -s localhost:8000/search -H 'Content-Type: application/json' -d '{"text": "a red fox", "k": 5}'
    """
    from ..server import TOKEN_ENV, create_app, is_loopback

    token = token or os.environ.get(TOKEN_ENV) or None
    if not token and not is_loopback(host):
        click.echo(f"warning: serving {host} without a token: anyone who can reach this port can search the "
                   f"index and read its files; pass --token or set {TOKEN_ENV}", err=True)  # fmt: skip

    def work():
        from ..index import Index
        from ..models import moved_folder
        from ..runtime import resolve_options

        index = Index.open(index_dir, device=device, dtype=dtype, model=model, adapter=adapter, gpu_search=gpu_search)
        sockets.extend(_listen(host, port))  # before the model loads: a port in use is told now, not after a URL
        gone = moved_folder(index.path, index.manifest["encoder"], model=model is None, adapter=adapter is None)
        if gone is None:
            index.encoder  # noqa: B018  load now: a wrong model or device fails here, not on the first query
        else:  # like= queries need no model: serve them, and let the others say which folder to point at
            resolve_options(device, dtype)  # a device this machine lacks is still told now
            click.echo(f"warning: {gone}; meanwhile only like= queries are answered (the others: 503, until "
                       "the folder is back)", err=True)  # fmt: skip
        if gpu_search:  # the GPU copies now too, and where each shard is searched
            for shard, state in index.gpu_states(load=True).items():
                click.echo(f"shard {shard}: {state}", err=True)
        loopback_only = not token and is_loopback(host)  # no token: only pages of this machine's own names
        return create_app(index, token=token, batch_window_ms=batch_window_ms, loopback_only=loopback_only)

    sockets = []  # where uvicorn will listen
    try:
        app = _run(work)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    import gc

    import uvicorn

    # The model, libraries and index metadata are loaded and live for the whole process: take them out
    # of the collector's view, so a full collection no longer walks them (it paused requests for about
    # 300 ms on the tiny model under load; with this, a few ms).
    gc.collect()
    gc.freeze()

    port = sockets[0].getsockname()[1]  # --port 0: the one the system chose
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {os.path.abspath(index_dir)} at http://{shown}:{port} (API docs at /docs)", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn shuts down, then raises it again (as uvicorn.run)
        server.run(sockets=sockets)
    if not server.started:
        raise click.ClickException("the server did not start (the lines above say why)")


def _listen(host: str, port: int) -> list:
    """Sockets bound to every address ``host`` names, as uvicorn would bind them, for uvicorn to serve on. Bound
    here, a port in use (or an address not of this machine) is a usage mistake on one line, exit status 2, said
    before the model loads; left to uvicorn, it came after the URL was printed, with exit status 3."""
    import socket

    sockets = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE):  # fmt: skip
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free
            if family == socket.AF_INET6:  # as asyncio: the IPv4 addresses get sockets of their own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        in_use = exc.errno == errno.EADDRINUSE
        hint = "another server holds it? pass another --port" if in_use else "check --host and --port"
        raise _usage_mistake(f"cannot listen on {host}:{port}: {exc.strerror or exc} ({hint})") from None
    return sockets
