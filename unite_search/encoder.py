"""The UNITE encoder: items in, L2-normalised float32 vectors out.

The forward is UNITE's: vision tower, its outputs scattered into the pad positions, the text
decoder run with 1-D positions (0..L-1 on all three M-RoPE axes), the final hidden state of the
last token (a literal ``<|endoftext|>``), L2-normalised. Rows are right-padded so that no vector
depends on the other items in its batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batching import ByteBudget, admitted_map, bounded_map, plan_batches
from .errors import EncodeError, InputError, ModelLoadError
from .image import Visual, preprocess_image
from .language import pooled_states, prefix_state
from .memory import MEMORY_BYTES, predicted_bytes
from .modality import Item, Modality, as_item
from .models import resolve
from .prompts import IMAGE_PAD, POOL_TOKEN, RESERVED_TOKENS, VIDEO_PAD, render
from .runtime import Weights, nonfinite_reason, nonfinite_rows, resolve_options
from .settings import EncoderSettings
from .speed import Speed, cache_tested, chunk_runs, set_compiled, set_runs_attention
from .video import preprocess_video

ItemLike = Item | Mapping[str, Any] | str
WINDOW_BYTES = MEMORY_BYTES // 2  # a window of prepared inputs is encoded once it holds this much


@dataclass(frozen=True)
class Prepared:
    """One item turned into model inputs (CPU work, no model needed)."""

    input_ids: np.ndarray  # (L,) int64, visual pads already expanded
    image: Visual | None = None
    video: Visual | None = None

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def nbytes(self) -> int:
        return self.input_ids.nbytes + sum(v.pixel_values.nbytes for v in (self.image, self.video) if v is not None)


class Encoder:
    """Embeds texts, images, videos and their combinations with a UNITE checkpoint.

    >>> enc = Encoder.load("unite-base-2b")                      # doctest: +SKIP
    >>> vecs = enc.encode([{"text": "a dog"}, {"image": "dog.jpg"}])  # doctest: +SKIP
    >>> float(vecs[0] @ vecs[1])                                  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_id: str,
        revision: str,
        settings: EncoderSettings,
        device,
        token_budget: int,
        workers: int,
        adapter: str | None = None,
        config=None,
        speed: Speed | None = None,
    ):
        # ``model``: a Qwen2VLModel (.visual and .language_model), or a Weights that loads it on first use,
        # in which case ``config`` (its Qwen2VLConfig) says what preparation needs without the weights
        self._weights = model if isinstance(model, Weights) else Weights(model)
        self._tokenizer = tokenizer
        self.model_id = model_id  # the base model (hub id, or absolute folder), with or without an adapter
        self.adapter = adapter  # absolute path of the LoRA adapter folder merged into the weights, or None
        self.revision = revision  # identity of the weights: hub commit or "local-<fp>", then "+lora-<fp>"
        self.preprocessing = settings
        self.device = device
        self.token_budget = token_budget
        self.workers = workers
        self.speed = speed or Speed()  # how it runs, never what it computes (unite_search.speed)
        cfg = config if config is not None else self._weights.get().config
        self.config = cfg
        self.dim = int(cfg.text_config.hidden_size)
        self._image_id = int(cfg.image_token_id)
        self._video_id = int(cfg.video_token_id)
        self._pad_id = tokenizer.convert_tokens_to_ids(POOL_TOKEN)
        for token, expected in ((IMAGE_PAD, self._image_id), (VIDEO_PAD, self._video_id)):
            if tokenizer.convert_tokens_to_ids(token) != expected:
                raise ModelLoadError(f"tokenizer maps {token} to another id than the model config ({expected})")
        self._prompt_cache: dict[frozenset[Modality], np.ndarray] = {}
        self._prompt_prefix: np.ndarray | None = None
        # fast tokenizers are not safe to call from several threads at once ("Already borrowed")
        self._tokenizer_lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        dtype: Any = "auto",
        attn: str = "auto",
        settings: EncoderSettings | None = None,
        token_budget: int | None = None,
        workers: int | None = None,
        adapter: str | os.PathLike | None = None,
        lazy: bool = False,
        speed: Speed | None = None,
    ) -> Encoder:
        """Load a UNITE checkpoint: an alias (``unite-base-2b``...), a hub id or a local folder.

        ``device``/``dtype``/``attn`` default to the best available (CUDA, bf16, flash-attention 2
        when installed; else CPU, float32, sdpa). ``settings`` overrides preprocessing (frames,
        pixels); ``token_budget`` bounds the padded tokens of one forward batch. ``adapter`` is a LoRA
        folder from ``unite-search finetune``, merged into the weights of the base it records (``model``
        None), or of ``model`` if it has the recorded revision (else ModelLoadError): ``model_id`` stays
        the base's, ``adapter`` records the folder and the revision names it too, so indexes never mix its vectors
        with the base model's, and ``Encoder.load(enc.model_id, adapter=enc.adapter)`` loads it again.
        Nothing shipped as code in a model folder is ever run (``auto_map`` entries are ignored).
        ``lazy=True`` reads the config and tokenizer now and the weights on the first forward (or from
        :meth:`start_loading`, in the background), so inputs can be prepared meanwhile. ``speed``
        switches how the forward runs, not what it computes (:class:`~unite_search.speed.Speed`).
        """
        from .models import load_model, load_tokenizer, read_config

        dev, torch_dtype, attn = resolve_options(device, dtype, attn)  # told before any download
        resolved, adapter_path, revision = _identity(model, adapter)
        tokenizer = load_tokenizer(resolved.path)

        def weights():
            full = load_model(resolved.path, dtype=torch_dtype, attn=attn)
            inner = full.model
            if adapter_path is not None:
                from .train.merge import apply_adapter

                inner = apply_adapter(inner, adapter_path)
            return inner.to(dev).eval()  # lm_head is never used; dropping it frees memory when untied

        model = Weights(loader=weights)
        if not lazy:
            model.get()
        budget = token_budget or (32768 if dev.type == "cuda" else 4096)
        return cls(
            model,
            tokenizer,
            config=read_config(resolved.path),
            model_id=resolved.model_id,
            revision=revision,
            settings=settings or EncoderSettings(),
            device=dev,
            token_budget=budget,
            workers=workers or default_workers(),
            adapter=adapter_path,
            speed=speed,
        )

    def with_settings(self, settings: EncoderSettings | None = None, *, speed: Speed | None = None) -> Encoder:
        """The same weights with other preprocessing (benchmarks fix their own frame counts) or speed
        switches."""
        settings = settings or self.preprocessing
        speed = speed or self.speed
        if settings == self.preprocessing and speed == self.speed:
            return self
        return Encoder(
            self._weights,
            self._tokenizer,
            config=self.config,
            model_id=self.model_id,
            revision=self.revision,
            settings=settings,
            device=self.device,
            token_budget=self.token_budget,
            workers=self.workers,
            adapter=self.adapter,
            speed=speed,
        )

    @property
    def _model(self):
        """The Qwen2VLModel, loaded now if it was not yet."""
        return self._weights.get()

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (a ``lazy`` encoder loads them on first use)."""
        return self._weights.loaded

    @property
    def load_seconds(self) -> float:
        """How long loading the weights took (0 for weights handed over loaded)."""
        return self._weights.seconds

    def wait_loaded(self) -> None:
        """Return once the weights are in memory (loading them now if nobody started)."""
        self._weights.get()

    def start_loading(self) -> None:
        """Load the weights on a background thread now (no-op once started or loaded)."""
        self._weights.start()

    @property
    def dtype(self):
        """The torch dtype of the weights (of the text decoder)."""
        return next(self._model.language_model.parameters()).dtype

    @property
    def numerics(self) -> dict[str, str]:
        """How the arithmetic runs, which moves vectors by rounding (bf16 against float32: ~1e-2): the
        weights' dtype and the attention implementation. Not part of :attr:`settings` (an index takes
        queries from either), but part of what a cache of vectors is keyed by."""
        attn = getattr(self._model.config, "_attn_implementation", None)
        out = {"dtype": str(self.dtype).removeprefix("torch."), "attn": str(attn)}
        if self.speed.compile:  # in half precision, compiled code rounds otherwise (speed.py)
            out["compile"] = "inductor"
        return out

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that determines a vector besides the inputs; indexes record it.

        ``model_id`` and ``adapter`` say where the weights were loaded from (enough to load them again);
        ``revision`` is what they are.
        """
        return {
            "model_id": self.model_id,
            "adapter": self.adapter,
            "revision": self.revision,
            "dim": self.dim,
            **self.preprocessing.to_dict(),
        }

    # ------------------------------------------------------------ preparation
    def _prompt_ids(self, modalities: frozenset[Modality], text: str | None) -> np.ndarray:
        with self._tokenizer_lock:
            if text is None and modalities in self._prompt_cache:
                return self._prompt_cache[modalities]
            encoded = self._tokenizer(render(modalities, text), add_special_tokens=False)["input_ids"]
            ids = np.asarray(encoded, dtype=np.int64)
            if text is None:
                self._prompt_cache[modalities] = ids
        return ids

    def _prompt_ids_many(self, items: Sequence[Item]) -> list[np.ndarray]:
        """The prompt token ids of many items: one tokenizer call for every prompt with text (the fast
        tokenizer splits a batch over its own threads), the cached ids for media-only prompts."""
        out: list[np.ndarray | None] = [None] * len(items)
        texts = [i for i, item in enumerate(items) if item.full_text is not None]
        if texts:
            prompts = [render(items[i].modalities, items[i].full_text) for i in texts]
            with self._tokenizer_lock:
                encoded = self._tokenizer(prompts, add_special_tokens=False)["input_ids"]
            for i, ids in zip(texts, encoded, strict=True):
                out[i] = np.asarray(ids, dtype=np.int64)
        for i, item in enumerate(items):
            if out[i] is None:
                out[i] = self._prompt_ids(item.modalities, None)
        return out  # type: ignore[return-value]

    def prepare(self, item: ItemLike, index: int | None = None) -> Prepared:
        """Read, decode and preprocess one item; raises :class:`InputError` naming the input."""
        item = as_item(item, index)
        self._check_text(item, index)
        return self._prepare(item, index, self._prompt_ids(item.modalities, item.full_text))

    def prepare_many(self, items: Sequence[ItemLike], start: int = 0) -> list[Prepared]:
        """:meth:`prepare` for many items, their texts tokenized in one call; the same results, in order.
        An error names the item's position (``start`` + its index here)."""
        checked = []
        for i, value in enumerate(items):
            item = as_item(value, start + i)
            self._check_text(item, start + i)
            checked.append(item)
        ids = self._prompt_ids_many(checked)
        return [self._prepare(item, start + i, ids[i]) for i, item in enumerate(checked)]

    @staticmethod
    def _check_text(item: Item, index: int | None) -> None:
        text = item.full_text
        if text is not None and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in JSON): no tokenizer takes it
                raise InputError(f"text is not valid Unicode (a lone surrogate at character {exc.start + 1})",
                                 index=index) from None  # fmt: skip
        reserved = [t for t in RESERVED_TOKENS if text is not None and t in text]
        if reserved:
            raise InputError(f"text contains the model's reserved token(s) {reserved}; remove them", index=index)

    def visual(self, kind: str, source, **span) -> Visual:
        """An image's or a video's vision-tower input (``span``: ``start``, ``end``, ``probe`` of a video
        file), in a decoding process under the speed switch ``processes`` when ``source`` is a file."""
        if isinstance(source, Visual):
            return source
        if self.speed.processes and isinstance(source, (str, os.PathLike)):
            from .decodeproc import pool

            return pool().run(kind, os.fspath(source), self.preprocessing, **span)
        preprocess = preprocess_image if kind == "image" else preprocess_video
        return preprocess(source, self.preprocessing, **span)

    def _prepare(self, item: Item, index: int | None, ids: np.ndarray) -> Prepared:
        try:
            image = self.visual("image", item.image) if item.image is not None else None
            video = self.visual("video", item.video) if item.video is not None else None
        except InputError as exc:
            raise (exc.at(index) if index is not None else exc) from exc.__cause__
        counts = np.ones_like(ids)
        for visual, token in ((image, self._image_id), (video, self._video_id)):
            if visual is not None:
                counts[ids == token] = visual.tokens
        ids = np.repeat(ids, counts)
        limit = self.config.text_config.max_position_embeddings
        if ids.shape[0] > limit:
            raise InputError(
                f"item is {ids.shape[0]} tokens long, above the model's {limit}", index=index, source=item.describe()
            )
        return Prepared(ids, image, video)

    # ---------------------------------------------------------------- forward
    def _prefix_ids(self) -> np.ndarray:
        """The token ids every prompt begins with (the system turn and the user turn's opening)."""
        if self._prompt_prefix is None:
            a = self._prompt_ids(frozenset({Modality.TEXT}), "a")
            b = self._prompt_ids(frozenset({Modality.IMAGE}), None)
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            self._prompt_prefix = a[:n].copy()
        return self._prompt_prefix

    def host_batch(self, batch: Sequence[Prepared], *, pin: bool = False) -> dict[str, Any]:
        """A batch's inputs as host tensors (in pinned memory when ``pin``): the CPU half of a forward,
        which :meth:`embed` finishes on the device."""
        import torch

        n, width = len(batch), max(p.length for p in batch)
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        for row, p in enumerate(batch):  # right padding: real tokens keep positions 0..len-1
            ids[row, : p.length] = torch.from_numpy(p.input_ids)
        lengths = torch.tensor([p.length for p in batch], dtype=torch.long)
        host: dict[str, Any] = {"ids": ids, "lengths": lengths, "pinned": pin}
        for key in ("image", "video"):
            visuals = [getattr(p, key) for p in batch if getattr(p, key) is not None]
            if visuals:
                pixels = torch.from_numpy(np.concatenate([v.pixel_values for v in visuals]))
                host[key] = (pixels, [v.grid_thw for v in visuals])
        if pin:
            for name in ("ids", "lengths"):
                host[name] = host[name].pin_memory()
            for key in ("image", "video"):
                if key in host:
                    host[key] = (host[key][0].pin_memory(), host[key][1])
        return host

    def _visual_features(self, pixels, grids: list[tuple[int, int, int]], non_blocking: bool):
        import torch

        visual = self._model.visual
        kwargs = {}
        if set_runs_attention(visual, self.speed.vision_runs):
            # the chunk lengths from the host: the tower never reads them back from the device
            kwargs = {"unite_runs": chunk_runs(grids), "max_seqlen": max(h * w for _, h, w in grids)}
        pixels = pixels.to(self.device, non_blocking=non_blocking).to(visual.dtype)
        grid = torch.tensor(grids, dtype=torch.long).to(self.device)
        out = visual(pixels, grid_thw=grid, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def embed(self, batch: Sequence[Prepared] | dict[str, Any]):
        """The forward as a torch tensor, (len(batch), dim) float32, L2-normalised; keeps gradients.

        ``batch``: prepared items, or their :meth:`host_batch`. Training calls this directly;
        :meth:`forward` wraps it for inference.
        """
        import torch

        host = batch if isinstance(batch, dict) else self.host_batch(batch)
        model = self._model
        set_compiled(model, self.speed.compile)
        non_blocking = bool(host["pinned"]) and self.device.type == "cuda"
        ids, lengths = host["ids"], host["lengths"].to(self.device, non_blocking=non_blocking)
        prefix = None
        # (not under flash-attention 2, whose path for a cache beside padding has not been tested)
        if self.speed.prefix_cache and not torch.is_grad_enabled() and cache_tested(model.language_model):
            start = self._prefix_ids()
            if (
                len(start) > 0
                and bool((host["lengths"] > len(start)).all())
                and bool((ids[:, : len(start)] == torch.from_numpy(start)).all())
            ):  # every row begins with the prompt's prefix and goes on after it: its keys and values run once
                prefix = prefix_state(self._weights, model, start, self.device)
        skip = 0 if prefix is None else len(start)
        ids = ids.to(self.device, non_blocking=non_blocking)[:, skip:]  # sliced there: a pinned copy stays whole
        embeds = model.get_input_embeddings()(ids)
        for key, token in (("image", self._image_id), ("video", self._video_id)):
            if key in host:
                features = self._visual_features(*host[key], non_blocking)
                embeds = embeds.masked_scatter((ids == token)[..., None].expand_as(embeds), features.to(embeds.dtype))
        last = pooled_states(
            model.language_model, embeds, lengths, prefix=prefix, pooled_only=self.speed.pooled_only
        ).float()
        return torch.nn.functional.normalize(last, dim=-1)

    def forward(self, batch: Sequence[Prepared] | dict[str, Any]) -> np.ndarray:
        """One padded forward pass over prepared items (or their :meth:`host_batch`): (len(batch), dim)
        float32, L2-normalised."""
        import torch

        with torch.inference_mode():
            vecs = self.embed(batch)
        return np.ascontiguousarray(vecs.cpu().numpy(), dtype=np.float32)

    # ----------------------------------------------------------------- encode
    def encode_prepared(
        self,
        prepared: Sequence[Prepared],
        *,
        batch_size: int | None = None,
        token_budget: int | None = None,
        progress=None,
    ) -> np.ndarray:
        """Vectors for already prepared items, batched by token budget, in input order."""
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        lengths = [p.length for p in prepared]
        groups = plan_batches(lengths, token_budget or self.token_budget, batch_size)
        if self.speed.overlap:
            # the next batches are assembled on a thread (in pinned memory on CUDA) while this one runs
            pin = self.device.type == "cuda"

            def host(group: list[int]) -> dict[str, Any]:
                return self.host_batch([prepared[i] for i in group], pin=pin)

            batches = bounded_map(host, groups, workers=2, lookahead=2)
        else:
            batches = ([prepared[i] for i in group] for group in groups)
        try:
            for group, batch in zip(groups, batches, strict=True):
                out[group] = self.forward(batch)
                if progress is not None:
                    progress.update(len(group))
        finally:  # a forward that raised: the assembling threads end now, not when the traceback is let go
            if self.speed.overlap:
                batches.close()
        return out

    def encode(
        self,
        items: Iterable[ItemLike],
        *,
        batch_size: int | None = None,
        token_budget: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed items: ``(n, dim)`` float32, L2-normalised, in input order; :class:`EncodeError` when the
        model gives a vector that is not finite.

        An item is a dict with any of ``text``, ``image``, ``video`` (and optional ``instruction``),
        an :class:`Item`, or a plain string (a text). ``batch_size`` caps items per forward batch;
        batches are otherwise formed by ``token_budget`` (padded tokens). Preprocessing runs on a
        thread pool, a bounded window ahead of the model.
        """
        from tqdm.auto import tqdm

        items = list(items)
        budget = token_budget or self.token_budget
        out = np.empty((len(items), self.dim), dtype=np.float32)
        bar = tqdm(total=len(items), unit="item", desc="encode", disable=not progress)
        window: list[tuple[int, Prepared]] = []
        window_tokens = window_bytes = held = 0
        memory = ByteBudget(MEMORY_BYTES)

        def flush():
            nonlocal window, window_tokens, window_bytes, held
            if window:
                idx = [i for i, _ in window]
                out[idx] = self.encode_prepared(
                    [p for _, p in window], batch_size=batch_size, token_budget=budget, progress=bar
                )
            window, window_tokens, window_bytes = [], 0, 0
            memory.release(held)
            held = 0

        def prep(group: tuple[int, list]) -> list[Prepared]:
            start, values = group
            return self.prepare_many(values, start) if len(values) > 1 else [self.prepare(values[0], start)]

        def cost(group: tuple[int, list]) -> int:
            return sum(predicted_bytes(v, self.preprocessing) for v in group[1])

        def kept(result: list[Prepared]) -> int:
            return sum(p.nbytes for p in result)

        # decoding runs on (a byte budget ahead) while the model encodes the window before
        prepared = admitted_map(prep, _groups(items), self.workers, memory, cost, kept, flush)
        try:
            for (start, _), group, size in prepared:
                for i, p in enumerate(group, start):
                    window.append((i, p))
                    window_tokens += p.length
                    window_bytes += p.nbytes
                held += size
                del group, p  # the window holds them now: a flush frees them
                # several batches per window let sorting by length keep padding small; the byte cap
                # bounds host memory when the window is all pixels (about 19 KB per visual token)
                if window_tokens >= 8 * budget or window_bytes >= WINDOW_BYTES or len(window) >= 1024:
                    flush()
            flush()
        finally:
            prepared.close()
            bar.close()
        bad = nonfinite_rows(out)
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            raise EncodeError(f"item(s) {shown} ({len(bad)} of {len(out)}): {nonfinite_reason(self.dtype)}")
        return out

    def __repr__(self) -> str:
        return f"Encoder({self.model_id!r}, dim={self.dim}, device={self.device})"


def default_workers() -> int:
    """Decode threads when none are asked for."""
    return min(8, os.cpu_count() or 1)


def _identity(model, adapter):
    """(resolved model, absolute adapter path or None, revision) of ``Encoder.load(model, adapter=...)``."""
    from .models import fingerprint

    if adapter is None:
        resolved = resolve(model)
        return resolved, None, resolved.revision
    from .train.merge import check_adapter, resolve_base

    path = check_adapter(adapter)
    resolved = resolve_base(model, path)  # model None: the base the adapter records; another one is refused
    return resolved, str(path), f"{resolved.revision}+lora-{fingerprint(path)}"


def describe(
    model: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    settings: EncoderSettings | None = None,
) -> dict[str, Any]:
    """What ``Encoder.load(model, adapter=adapter, settings=settings).settings`` will be, found without
    loading the tokenizer or the weights (nor importing torch): enough to check an index against."""
    from .models import config_dim

    resolved, adapter_path, revision = _identity(model, adapter)
    return {
        "model_id": resolved.model_id,
        "adapter": adapter_path,
        "revision": revision,
        "dim": config_dim(resolved.path),
        **(settings or EncoderSettings()).to_dict(),
    }


TEXT_GROUP = 64  # consecutive text-only items prepared together: one tokenizer call


def _text_only(value: ItemLike) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, Item):
        return value.image is None and value.video is None
    return isinstance(value, Mapping) and value.get("image") is None and value.get("video") is None


def _groups(items: Sequence[ItemLike]) -> Iterator[tuple[int, list]]:
    """``(position of the first, items)``: runs of up to :data:`TEXT_GROUP` text-only items, media alone."""
    run: list = []
    for i, value in enumerate(items):
        if _text_only(value):
            run.append(value)
            if len(run) == TEXT_GROUP:
                yield i + 1 - len(run), run
                run = []
            continue
        if run:
            yield i - len(run), run
            run = []
        yield i, [value]
    if run:
        yield len(items) - len(run), run
