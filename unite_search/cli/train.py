"""Training commands: ``finetune`` (MAMCL with LoRA), ``merge`` (an adapter into its model), ``pairs``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ._common import _run, _usage_mistake, main


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
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True,
              help="Dropout on the LoRA layers' input (UNITE's scripts: 0.05).")  # fmt: skip
@click.option("--max-grad-norm", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Clip the LoRA gradients' total L2 norm to this before each step (0: no clipping).")  # fmt: skip
@click.option("--dual", is_flag=True, help="Average the loss with the (unmasked) candidate-to-query term, as upstream.")
@click.option("--max-steps", type=click.IntRange(1), default=None, metavar="N",
              help="Train exactly N steps (overrides --epochs); past an epoch, the next one starts.")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Draws the epochs' order, the LoRA weights' start and dropout's masks.")  # fmt: skip
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
    help="Bad training lines: raise lists every one and trains nothing; skip reports them and trains on the rest.",
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
    lora_dropout,
    max_grad_norm,
    dual,
    max_steps,
    seed,
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
    if bool(eval_data) != bool(eval_every):  # one without the other evaluated nothing, silently
        raise _usage_mistake("--eval-data and --eval-every go together: held-out pairs, evaluated every N steps "
                             "(and before the first and after the last)")  # fmt: skip
    import torch

    from ..encoder import Encoder
    from ..errors import InputError
    from ..train.data import load_pairs
    from ..train.trainer import TrainConfig, Trainer, check_run

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
        config = TrainConfig(stage=stage, epochs=epochs, lr=lr, batch_size=batch_size, lora_r=lora_r,
                             lora_alpha=lora_alpha, lora_dropout=lora_dropout, max_grad_norm=max_grad_norm,
                             dual=dual, max_steps=max_steps, seed=seed, eval_every=eval_every,
                             save_every=save_every, grad_cache=not no_grad_cache)  # fmt: skip
        # what the pairs and settings alone refuse (fewer pairs than one batch...) is told before the weights load
        check_run(len(pairs), config)
        dtype = "bfloat16" if device != "cpu" and torch.cuda.is_available() else "float32"
        encoder = Encoder.load(model, device=device, dtype=dtype)
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
@click.option("--model", "-m", default=None,
              help="Base model the adapter was trained on (default: the one it records).")  # fmt: skip
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="New model folder.")
def merge(model, adapter, output):
    """Fold a LoRA adapter into a full model folder that any unite-search command can load."""
    from ..train.merge import merge_adapter

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
    holding manifest.json): each image or video with a caption gives one pair. An index built without
    --pairs composed keeps one caption for identical files, so their copies give one pair (a warning
    says how many). Paths are written relative to the output file, or absolute where they lie outside
    its folder.

    \b
    unite-search pairs ~/products -o ~/products-pairs.jsonl
    unite-search pairs indexes/products -o runs/pairs.jsonl
    """
    import warnings

    from ..corpus import is_inside
    from ..errors import InputError
    from ..manifest import MANIFEST
    from ..store import IndexStore
    from ..train.data import pairs_from_folder, pairs_from_index, write_pairs

    is_index = os.path.isfile(os.path.join(source, MANIFEST))
    corpus = _run(lambda: IndexStore(source).require_manifest()["corpus"]) if is_index else source
    if is_inside(os.path.abspath(output), os.path.realpath(corpus)):  # an ingest of it would fail on every line
        click.echo(f"note: {output} lies inside the media folder {corpus}; ingest reads every *.jsonl there as items "
                   "(a pair line is not one), so keep it beside the folder if you index it", err=True)  # fmt: skip

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
