"""MAMCL fine-tuning with LoRA, on one device or several (``torchrun``, negatives all-gathered).

LoRA goes on every linear layer of the language model (q/k/v/o, gate/up/down); the vision tower and
merger stay frozen. Large contrastive batches fit in little memory with the gradient cache: the
batch's embeddings are computed without gradients, the loss is backpropagated to them, then each
token-budget chunk is recomputed with gradients and given its cached embedding gradient, so the
number of negatives is not bounded by device memory. This gives the same gradients as one big batch cut
into the same chunks, with LoRA dropout too: each chunk's recomputation replays the random state its
first pass drew its dropout masks from. The model is in training mode only while gradients are computed.

Each epoch is a seeded permutation of the pairs cut into whole batches: the ``len(pairs) % batch_size``
pairs left over are not used in that epoch (others are left over in the next). ``max_steps`` runs past
an epoch into the next one. Checkpoints hold the LoRA weights, the optimizer state, every process's random
state (dropout's) and the step in safetensors and JSON (no pickle), written into a temporary folder and
renamed into place once whole; resuming replays the same data order and continues the same curve, and is
refused for a checkpoint saved with other curve-shaping settings or other pairs (their hash is recorded).

Every step (and every held-out evaluation) is one JSON object in ``OUTPUT/metrics.jsonl``; the run ends
by drawing the loss and recall curves to ``OUTPUT/metrics.png``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..batching import plan_batches
from ..diskio import TMP_MARK, sync_folder
from ..errors import ConfigError, TrainingError
from ..evaluation.metrics import gold_ranks, similarities
from .data import Pair
from .loss import TAU, infonce_loss, mamcl_loss

LM_LINEARS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
CHECKPOINT_FILES = ("lora.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json")
STAGE_DEFAULTS = {1: {"lr": 1e-4, "lora_alpha": 16}, 2: {"lr": 2e-5, "lora_alpha": 64}}


@dataclass
class TrainConfig:
    stage: int = 2  # 1: symmetric InfoNCE (retrieval adaptation); 2: MAMCL (instruction tuning)
    epochs: int = 1
    batch_size: int = 64  # pairs per step, across all processes (the contrastive batch)
    lr: float | None = None  # stage default: 1e-4 / 2e-5
    lora_r: int = 8
    lora_alpha: int | None = None  # stage default: 16 / 64
    lora_dropout: float = 0.05  # UNITE's training scripts
    max_grad_norm: float | None = 1.0  # clip the LoRA gradients' total L2 norm to this (None or 0: no clipping)
    warmup: float = 0.03
    weight_decay: float = 0.0
    tau: float = TAU
    dual: bool = False
    grad_cache: bool = True
    gradient_checkpointing: bool = True
    chunk_tokens: int | None = None  # tokens per forward chunk (default: the encoder's token budget)
    max_steps: int | None = None  # exactly this many steps (overrides epochs; past an epoch, the next one starts)
    eval_every: int = 0  # held-out R@1/R@5 and loss every N steps, before the first and after the last
    log_every: int = 0  # a console line every N steps (0: about 20 lines a run); metrics.jsonl has every step
    save_every: int = 0
    seed: int = 0

    def resolved(self) -> TrainConfig:
        if self.stage not in STAGE_DEFAULTS:
            raise ConfigError("stage is 1 or 2")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout {self.lora_dropout} must be in [0, 1)")
        if self.max_grad_norm is not None and not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"max_grad_norm {self.max_grad_norm} must be a finite number >= 0 (0: no clipping)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed {self.seed!r} must be a whole number from 0 to {SEED_MAX}")
        defaults = STAGE_DEFAULTS[self.stage]
        out = TrainConfig(**asdict(self))
        out.lr = self.lr if self.lr is not None else defaults["lr"]
        out.lora_alpha = self.lora_alpha if self.lora_alpha is not None else defaults["lora_alpha"]
        out.max_grad_norm = self.max_grad_norm or None  # 0 and None alike: no clipping
        return out


SEED_MAX = 2**63 - 1  # torch's generators take a 64-bit seed

# the settings that shape a run's curve (data order, schedule, loss): a resume must keep them
CURVE = ("stage", "epochs", "batch_size", "lr", "lora_r", "lora_alpha", "lora_dropout", "max_grad_norm", "warmup",
         "weight_decay", "tau", "dual", "max_steps", "seed")  # fmt: skip


# settings added since checkpoints were first written, as the runs that did not record them had them
UNRECORDED = {"max_grad_norm": None}


def check_run(pairs: int, config: TrainConfig, world: int | None = None) -> TrainConfig:
    """``config`` resolved, once the checks that need no model pass for ``pairs`` pairs on ``world`` processes
    (default: those of this run); a :class:`ConfigError` otherwise. The command line makes them before the weights
    load (a 2B model takes minutes), and :class:`Trainer` before it wraps the encoder with LoRA."""
    config, world = config.resolved(), world or (_dist().get_world_size() if _dist() else 1)
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} must divide by the {world} processes")
    if pairs < config.batch_size:
        raise ConfigError(f"{pairs} pairs are fewer than one batch of {config.batch_size}")
    return config


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def pairs_digest(pairs: list[Pair]) -> str:
    """sha256 of the pairs in order (texts, media, targets): what a checkpoint was trained on. Media paths count
    relative to the folder holding them all, so a data folder moved whole keeps its digest."""
    from PIL import Image

    files = [os.path.abspath(v) for p in pairs for item in (p.query, p.candidate) for v in (item.image, item.video)
             if isinstance(v, (str, os.PathLike))]  # fmt: skip
    root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""

    def media(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, (str, os.PathLike)):
            return Path(os.path.relpath(os.path.abspath(value), root)).as_posix()
        if isinstance(value, Image.Image):
            value = np.asarray(value)
        return f"{type(value).__name__}:{hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}"

    digest = hashlib.sha256()
    for p in pairs:
        sides = [[i.text, i.instruction, media(i.image), media(i.video)] for i in (p.query, p.candidate)]
        digest.update((json.dumps([*sides, p.target, p.candidate_code]) + "\n").encode())
    return digest.hexdigest()


def _rng_state(device) -> dict[str, Any]:
    """The random state dropout draws from: the CPU generator's, and the model's CUDA device's."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@contextlib.contextmanager
def _replaying(state: dict[str, Any], device) -> Iterator[None]:
    """Draw from ``state`` (of :func:`_rng_state`) inside, leaving the random state outside as it was."""
    import torch

    cuda = [device] if "cuda" in state else []
    with torch.random.fork_rng(devices=cuda):
        torch.set_rng_state(state["cpu"])
        if cuda:
            torch.cuda.set_rng_state(state["cuda"], device)
        yield


def add_lora(encoder, config: TrainConfig):
    """Wrap the encoder's model with fresh LoRA adapters (language model linears only)."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=LM_LINEARS
    )
    # LoRA's A matrices start random: draw them from the run's seed, not from whatever the process
    # drew before, so a run is reproducible (and the caller's random stream is left as it was)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(config.seed)
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)  # peft's
        return get_peft_model(encoder._model, cfg)


class Trainer:
    """Fine-tunes ``encoder`` in place on ``pairs``; writes checkpoints and the adapter under ``output``."""

    def __init__(self, encoder, pairs: list[Pair], config: TrainConfig, output: str | os.PathLike,
                 eval_pairs: list[Pair] | None = None):  # fmt: skip
        import torch

        # the gradient cache's first pass (no gradients) must compute what its second pass does: the
        # prompt-prefix cache, which only the first could use, stays off
        self.encoder = encoder.with_settings(speed=replace(encoder.speed, prefix_cache=False))
        self.pairs = pairs
        self.output = Path(output)
        self.eval_pairs = eval_pairs or []
        self.dist = _dist()
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        self.config = check_run(len(pairs), config, self.world)  # refused before LoRA touches the encoder
        self.peft = add_lora(encoder, self.config)
        # the weights now change under the encoder's identity: say so in it, step by step, so that nothing
        # keyed by it (the benchmarks' vector cache, an index's check) takes them for the base model's
        self.base_revision = encoder.revision
        self._marked, self._run = (encoder, self.encoder), uuid.uuid4().hex[:8]
        if self.config.gradient_checkpointing:
            lm = encoder._model.language_model
            if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in self.peft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        per_epoch = len(pairs) // self.config.batch_size
        self.total = self.config.max_steps or per_epoch * self.config.epochs
        self.per_epoch = per_epoch
        self.leftover = len(pairs) % self.config.batch_size  # pairs not used in each epoch
        self.step = 0
        self.log: list[dict[str, Any]] = []
        # dropout's own random stream, from the run's seed (one a process): two runs alike draw alike masks, and
        # the caller's random state is neither used nor moved
        seed = int(np.random.SeedSequence([self.config.seed, self.rank]).generate_state(1)[0])
        self._random = {"cpu": torch.Generator().manual_seed(seed).get_state()}  # no process-wide seed is touched
        if self.encoder.device.type == "cuda":
            self._random["cuda"] = torch.Generator(device=self.encoder.device).manual_seed(seed).get_state()
        self._mark()

    # ---------------------------------------------------------------- schedule
    def schedule(self) -> str:
        """What the run will do, in words: steps, epochs, and the pairs each epoch leaves over."""
        size, epochs = self.config.batch_size, self.total / self.per_epoch
        text = (f"{len(self.pairs)} pairs, batch {size}: {self.per_epoch} steps per epoch; "
                f"{self.total} steps ({epochs:g} epoch{'s' if epochs != 1 else ''})")  # fmt: skip
        if self.leftover:
            text += (f"; {self.leftover} pair{'s' if self.leftover != 1 else ''} left over each epoch (batch {size}) "
                     "are not used in that epoch (each epoch reshuffles, so which ones changes)")  # fmt: skip
        return text

    def lr_at(self, step: int) -> float:
        warm = max(1, round(self.config.warmup * self.total))
        if step < warm:
            return self.config.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.total - warm)
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def batch_at(self, step: int) -> list[Pair]:
        """The global batch of a step: a seeded permutation per epoch, so resuming replays it."""
        epoch, within = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.pairs))
        size = self.config.batch_size
        return [self.pairs[i] for i in order[within * size : (within + 1) * size]]

    # ----------------------------------------------------------------- forward
    def _embed(self, prepared, grad: bool):
        import torch

        chunks = plan_batches([p.length for p in prepared], self.config.chunk_tokens or self.encoder.token_budget)
        out = [None] * len(prepared)
        states = []  # the random state each chunk began with: its dropout masks, replayed by the gradient cache
        with torch.set_grad_enabled(grad):
            for group in chunks:
                states.append(_rng_state(self.encoder.device))
                vecs = self.encoder.embed([prepared[i] for i in group])
                for row, i in enumerate(group):
                    out[i] = vecs[row]
        return torch.stack(out), chunks, states

    def _gather(self, local):
        """Every process's rows, this process's slice keeping its gradient."""
        import torch

        if not self.dist:
            return local
        parts = [torch.zeros_like(local) for _ in range(self.world)]
        self.dist.all_gather(parts, local.detach())
        parts[self.rank] = local
        return torch.cat(parts)

    def _loss(self, q, c, batch: list[Pair]):
        if self.config.stage == 1:
            return infonce_loss(q, c, tau=self.config.tau)
        return mamcl_loss(q, c, [p.target for p in batch], [p.candidate_code for p in batch], tau=self.config.tau,
                          dual=self.config.dual)  # fmt: skip

    def compute_gradients(self, batch: list[Pair]) -> float:
        """Loss of the global ``batch`` and its gradients on the LoRA weights (summed over processes)."""
        share = len(batch) // self.world
        local = batch[self.rank * share : (self.rank + 1) * share]
        prep_q = [self.encoder.prepare(p.query) for p in local]
        prep_c = [self.encoder.prepare(p.candidate) for p in local]
        self.peft.train()
        try:
            with _replaying(self._random, self.encoder.device):
                loss = self._backward(prep_q, prep_c, batch)
                self._random = _rng_state(self.encoder.device)
        finally:  # dropout only while gradients are computed: outside, the encoder gives its vectors
            self.peft.eval()
        if self.dist:
            for p in self.params:
                if p.grad is not None:
                    self.dist.all_reduce(p.grad)  # each process holds its slice's share of the gradient
        return float(loss.detach())

    def _backward(self, prep_q, prep_c, batch: list[Pair]):
        if not self.config.grad_cache:
            q, _, _ = self._embed(prep_q, grad=True)
            c, _, _ = self._embed(prep_c, grad=True)
            loss = self._loss(self._gather(q), self._gather(c), batch)
            loss.backward()
            return loss
        q, q_chunks, q_states = self._embed(prep_q, grad=False)
        c, c_chunks, c_states = self._embed(prep_c, grad=False)
        q, c = q.detach().requires_grad_(), c.detach().requires_grad_()
        loss = self._loss(self._gather(q), self._gather(c), batch)
        loss.backward()  # gradients on the cached embeddings only
        for prepared, chunks, states, cached in ((prep_q, q_chunks, q_states, q.grad),
                                                 (prep_c, c_chunks, c_states, c.grad)):  # fmt: skip
            for group, state in zip(chunks, states, strict=True):
                with _replaying(state, self.encoder.device):  # the first pass's dropout masks
                    vecs = self.encoder.embed([prepared[i] for i in group])
                    vecs.backward(gradient=cached[group])
        return loss

    # --------------------------------------------------------------- training
    def _mark(self) -> None:
        for one in self._marked:
            one.revision = f"{self.base_revision}+unsaved-lora-{self._run}-step{self.step}"

    def _evaluating(self) -> bool:
        return bool(self.config.eval_every and self.eval_pairs)

    def train(self, progress: bool = False, echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Run the remaining steps; returns the log (one entry per step, and the evaluation before step 1).

        Console lines (the loss every ``log_every`` steps, each held-out evaluation) go to ``echo``, or to
        stderr when ``progress`` is on. ``metrics.jsonl`` and ``metrics.png`` are written in the output folder.
        """
        from tqdm.auto import tqdm

        from .plot import plot_metrics

        lead = self.rank == 0
        if echo is None:
            echo = (lambda line: tqdm.write(line, file=sys.stderr)) if progress else (lambda line: None)
        say = echo if lead else (lambda line: None)
        every = self.config.log_every or max(1, round(self.total / 20))
        metrics = self.output / "metrics.jsonl"
        if lead:
            self.output.mkdir(parents=True, exist_ok=True)
            with open(metrics, "w", encoding="utf-8") as fh:  # a resumed run restarts it from the checkpoint's log
                fh.writelines(json.dumps(e) + "\n" for e in self.log)

        def record(entry: dict[str, Any]) -> None:
            self.log.append(entry)
            if lead:
                with open(metrics, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry) + "\n")

        if self._evaluating() and self.step == 0:
            held = self.held_out()
            record({"step": 0, "epoch": 0, **held})
            say(self._eval_line(held))
        bar = tqdm(total=self.total, initial=self.step, desc="finetune", disable=not progress or not lead)
        while self.step < self.total:
            t = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.compute_gradients(self.batch_at(self.step))
            norm = self.clip_gradients(loss)
            self.optimizer.step()
            self.step += 1
            self._mark()
            rate = self.config.batch_size / (time.perf_counter() - t)
            entry = {"step": self.step, "epoch": (self.step - 1) // self.per_epoch + 1, "loss": loss,
                     "lr": self.lr_at(self.step - 1), "grad_norm": norm, "samples_s": rate}  # fmt: skip
            if self.step % every == 0 or self.step == self.total:
                say(f"step {self.step}/{self.total} (epoch {entry['epoch']}) loss {loss:.4f} lr {entry['lr']:.2e}")
            if self._evaluating() and (self.step % self.config.eval_every == 0 or self.step == self.total):
                entry.update(self.held_out())
                say(self._eval_line(entry))
            record(entry)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{entry['lr']:.2e}", samples_s=f"{entry['samples_s']:.1f}")
            bar.update(1)
            if self.config.save_every and self.step % self.config.save_every == 0:
                self.save_checkpoint()
        bar.close()
        self.save_adapter()
        if lead:
            plot_metrics(self.log, self.output / "metrics.png")
        return self.log

    def clip_gradients(self, loss: float) -> float:
        """Checks the step, then clips the LoRA gradients' total L2 norm to ``max_grad_norm``; returns the norm
        before clipping. A step whose loss or gradients are not finite stops the run before it changes a weight
        (every process decides alike: the gradients were summed across them, and so is the verdict)."""
        import torch

        grads = [p.grad for p in self.params if p.grad is not None]
        # one read-back from the device for all of them, not one a tensor; a NaN or infinity anywhere makes it so
        total = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            if grads
            else None
        )
        norm = float(total) if total is not None else 0.0
        bad = not (math.isfinite(loss) and math.isfinite(norm))
        if self.dist:
            flag = torch.tensor([float(bad)], device=self.encoder.device)
            self.dist.all_reduce(flag)
            bad = bool(flag.item())
        if bad:
            why = ("float16 overflowing? train in bfloat16 or float32, or with a lower learning rate"
                   if self.encoder.dtype == torch.float16
                   else "a learning rate too high, or damaged weights?")  # fmt: skip
            raise TrainingError(f"step {self.step + 1}: the loss or its gradients are not finite (NaN or infinity: "
                                f"{why}); nothing of this step was applied, and the checkpoints saved so far are "
                                "whole")  # fmt: skip
        limit = self.config.max_grad_norm
        if limit and norm > limit:
            for g in grads:  # as torch.nn.utils.clip_grad_norm_ scales them, from the norm already read back
                g.mul_(limit / (norm + 1e-6))
        return norm

    def _eval_line(self, held: dict[str, Any]) -> str:
        return (f"step {held.get('step', self.step)}/{self.total} held-out R@1 {held['eval_r1']:.1f} "
                f"R@5 {held['eval_r5']:.1f} loss {held['eval_loss']:.4f} ({held['eval_pairs']} pairs)")  # fmt: skip

    def held_out(self, pairs: list[Pair] | None = None) -> dict[str, Any]:
        """Held-out R@1 and R@5 (percentages; each query against all held-out candidates) and the training
        loss on the held-out set taken as one batch."""
        import torch

        pairs = pairs or self.eval_pairs
        self.peft.eval()
        q = self.encoder.encode([p.query for p in pairs])
        c = self.encoder.encode([p.candidate for p in pairs])
        # ranked as the benchmarks rank (evaluation.metrics): a candidate tied with the own one (two held-out
        # pairs with one candidate) does not push it down
        rank = gold_ranks(similarities(q, c), [[i] for i in range(len(pairs))]) - 1  # 0: the own one first
        with torch.no_grad():
            loss = float(self._loss(torch.from_numpy(q), torch.from_numpy(c), pairs))
        return {"eval_r1": float(100.0 * np.mean(rank < 1)), "eval_r5": float(100.0 * np.mean(rank < 5)),
                "eval_loss": loss, "eval_pairs": len(pairs)}  # fmt: skip

    def evaluate(self, pairs: list[Pair] | None = None) -> float:
        """Held-out R@1 (query -> candidate among the held-out candidates), as a percentage."""
        return self.held_out(pairs)["eval_r1"]

    # ------------------------------------------------------------ persistence
    def save_adapter(self, path: str | os.PathLike | None = None) -> Path:
        """The LoRA adapter folder (peft format), loadable with ``Encoder.load(base, adapter=...)``."""
        path = Path(path or self.output / "adapter")
        if self.rank == 0:
            self.peft.save_pretrained(path)
            info = {"config": asdict(self.config), "steps": self.step, "base": self.encoder.model_id,
                    "base_revision": self.base_revision, "schedule": self.schedule()}  # fmt: skip
            (path / "unite_train.json").write_text(json.dumps(info, indent=2))
        return path

    @cached_property
    def pairs_sha256(self) -> str:
        """:func:`pairs_digest` of the training pairs, recorded in each checkpoint."""
        return pairs_digest(self.pairs)

    def _trainable(self) -> dict[str, Any]:
        return {n: p for n, p in self.peft.named_parameters() if p.requires_grad}

    def _rng_tensors(self) -> dict[str, Any]:
        """Every process's random state (dropout draws from it), as ``rng.cpu.<rank>`` / ``rng.cuda.<rank>``.
        Called by every process at once: the states are gathered to each."""
        mine = self._random
        every = [mine]
        if self.dist:
            every = [None] * self.world
            self.dist.all_gather_object(every, {k: v.cpu() for k, v in mine.items()})
        return {f"rng.{kind}.{rank}": value.cpu() for rank, state in enumerate(every) for kind, value in state.items()}

    def save_checkpoint(self) -> Path:
        """``OUTPUT/checkpoint-<step>``: written whole into a temporary folder, then renamed into place (an older
        checkpoint of the same step is replaced only then), so a crash while saving never leaves a mix."""
        from safetensors.torch import save_file

        path = self.output / f"checkpoint-{self.step}"
        rng = self._rng_tensors()  # every process takes part
        if self.rank != 0:
            return path
        self.output.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary = self.output / f".{path.name}{TMP_MARK}{tag}"
        try:
            temporary.mkdir()
            trainable = self._trainable()
            save_file({n: p.detach().cpu().contiguous() for n, p in trainable.items()},
                      str(temporary / "lora.safetensors"))  # fmt: skip
            state = self.optimizer.state_dict()
            tensors = {}
            meta = {"step": self.step, "param_groups": state["param_groups"], "names": list(trainable), "slots": {}}
            for index, slot in state["state"].items():
                keys = []
                for key, value in slot.items():
                    tensors[f"{index}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape or (1,))
                    keys.append(key)
                meta["slots"][str(index)] = keys
            save_file(tensors, str(temporary / "optimizer.safetensors"))
            save_file(rng, str(temporary / "rng.safetensors"))
            meta.update(config=asdict(self.config), pairs=len(self.pairs), pairs_sha256=self.pairs_sha256,
                        base_revision=self.base_revision, log=self.log)  # fmt: skip
            (temporary / "trainer.json").write_text(json.dumps(meta))
            for name in CHECKPOINT_FILES:  # on disk before the rename makes the folder a checkpoint
                with open(temporary / name, "rb") as fh:
                    os.fsync(fh.fileno())
            sync_folder(temporary)
            if path.exists():  # an older checkpoint of this step (an earlier run in this folder): set aside first
                older = self.output / f".{path.name}.old-{tag}"
                os.rename(path, older)
                os.rename(temporary, path)
                shutil.rmtree(older, ignore_errors=True)
            else:
                os.rename(temporary, path)
            sync_folder(self.output)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return path

    def _read_checkpoint(self, path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(trainer.json, LoRA weights, optimizer tensors, random states) of a checkpoint folder; one that is not
        whole (a file missing, cut short or damaged) is a :class:`ConfigError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        name = "trainer.json"
        try:
            meta = json.loads((path / name).read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not all(k in meta for k in ("step", "param_groups", "slots", "log")):
                raise ValueError("no step, optimizer or log in it")
            files = {}
            for name in CHECKPOINT_FILES[:3]:
                if (path / name).is_file():
                    files[name] = load_file(str(path / name))
                elif name != "rng.safetensors":  # an older checkpoint has no random states: resumed without
                    raise FileNotFoundError(errno.ENOENT, "missing")
        except (OSError, ValueError, SafetensorError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            raise ConfigError(f"{path} is not a whole checkpoint ({name}: {why}); resume from another one") from None
        return meta, files["lora.safetensors"], files["optimizer.safetensors"], files.get("rng.safetensors", {})

    def resume(self, checkpoint: str | os.PathLike) -> None:
        """Continue from a checkpoint folder: LoRA weights, optimizer state, random state, step and log."""
        import torch

        path = Path(checkpoint)
        meta, weights, tensors, rng = self._read_checkpoint(path)
        saved, now = {**UNRECORDED, **meta.get("config", {})}, asdict(self.config)
        differ = [f"{k} {saved[k]!r} (now {now[k]!r})" for k in CURVE if k in saved and saved[k] != now[k]]
        if meta.get("pairs", len(self.pairs)) != len(self.pairs):
            differ.append(f"{meta['pairs']} training pairs (now {len(self.pairs)})")
        elif meta.get("pairs_sha256", self.pairs_sha256) != self.pairs_sha256:  # (an older checkpoint has none)
            differ.append(f"other training pairs (the same number, {len(self.pairs)}, but other texts, media or order)")
        if meta.get("base_revision", self.base_revision) != self.base_revision:
            differ.append(f"the base model at revision {meta['base_revision']} (now {self.base_revision})")
        if differ:
            raise ConfigError(f"{path} was saved by a run with {', '.join(differ)}: resuming it with other "
                              "settings or data would not continue its curve; resume with the same ones")  # fmt: skip
        trainable = self._trainable()
        if set(weights) != set(trainable):
            raise ConfigError(f"{path}: its LoRA weights do not match this model's adapters")
        try:
            state = {}
            for index, keys in meta["slots"].items():
                slot = {}
                for key in keys:
                    value = tensors[f"{index}.{key}"]
                    slot[key] = value.reshape(()) if key == "step" else value.to(self.params[int(index)].device)
                state[int(index)] = slot
            self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: its optimizer state does not match this run ({type(exc).__name__}: {exc}); "
                              "resume from another checkpoint") from None  # fmt: skip
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(weights[name].to(param.device, param.dtype))
        # dropout draws on from the random state the run had at this step
        if f"rng.cpu.{self.rank}" in rng:
            self._random = {"cpu": rng[f"rng.cpu.{self.rank}"]}
            if self.encoder.device.type == "cuda":
                self._random["cuda"] = rng.get(f"rng.cuda.{self.rank}", torch.cuda.get_rng_state(self.encoder.device))
        self.step = int(meta["step"])
        self.log = list(meta["log"])
        self._mark()
