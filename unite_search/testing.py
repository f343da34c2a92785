"""A deterministic tiny random Qwen2-VL, saved as a normal model folder, for tests and benchmarks.

``tiny_model(path)`` writes config, safetensors weights, a byte-level tokenizer that carries the
Qwen2 special tokens, and a preprocessor config; ``Encoder.load(path)`` reads it like a release.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

# Qwen2's added tokens in their release order (ids 151643.. there; 256.. here, after the bytes).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TOKEN_ID = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}

# Shared by every shape below: Qwen2-VL's fixed choices.
_TEXT_COMMON = dict(rms_norm_eps=1e-6, max_position_embeddings=32768, hidden_act="silu", rope_theta=1_000_000.0)
_VISION_COMMON = dict(in_chans=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)

TINY_TEXT = dict(
    _TEXT_COMMON,
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TINY_MROPE = [2, 3, 3]  # head_dim 16 -> 8 rotary frequencies over (t, h, w)
TINY_VISION = dict(_VISION_COMMON, depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2)
# Std of the random init: large enough that vectors depend visibly on content and position.
TINY_INIT_STD = 0.3

# Qwen2-VL-2B shapes, for throughput runs with random weights (see benchmarks/).
QWEN2VL_2B_TEXT = dict(
    _TEXT_COMMON,
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
)
QWEN2VL_2B_MROPE = [16, 24, 24]
QWEN2VL_2B_VISION = dict(_VISION_COMMON, depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16)


def prompt_words() -> list[str]:
    """The words of UNITE's prompt, each alone and after a space (as Qwen2's tokenizer splits them)."""
    import re

    from .prompts import MODALITY_WORDS, TEMPLATE

    text = re.sub(r"<\|[a-z_]+\|>|\{[a-z]+\}", " ", TEMPLATE) + " " + " ".join(MODALITY_WORDS.values()) + " and"
    words = sorted(set(re.findall(r"[A-Za-z]+|[.:]", text)))
    return words + [" " + w for w in words if w.isalpha()]


def write_tokenizer(path: Path, words: Sequence[str] = ()) -> None:
    """A byte-level BPE tokenizer (no merges) carrying Qwen2's special tokens, saved at ``path``.

    ``words`` become single tokens (ids after the special tokens'), so that prompts made of them take
    about as many tokens as with Qwen2's own tokenizer: throughput runs pass :func:`prompt_words` and
    the words of their texts; tests pass none."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if words:
        tok.add_tokens([AddedToken(w, normalized=False) for w in dict.fromkeys(words)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)


def _config_dict(text: dict, vision: dict, mrope: list[int], token_ids: dict[str, int], legacy: bool) -> dict:
    ids = dict(
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
    )
    if legacy:  # the flat layout transformers 4.x wrote, as in the UNITE releases
        return dict(
            architectures=["UniteQwen2VL"],
            model_type="unite_qwen2_vl",
            **text,
            **ids,
            rope_scaling={"type": "mrope", "mrope_section": mrope},
            tie_word_embeddings=True,
            vision_config=vision,
            torch_dtype="float32",
        )
    return dict(
        architectures=["Qwen2VLForConditionalGeneration"],
        model_type="qwen2_vl",
        **ids,
        text_config=dict(
            text,
            bos_token_id=ids["bos_token_id"],
            eos_token_id=ids["eos_token_id"],
            rope_parameters={"rope_type": "default", "rope_theta": text["rope_theta"], "mrope_section": mrope},
        ),
        vision_config=vision,
        tie_word_embeddings=True,
    )


def build_model(
    text: dict, vision: dict, mrope: list[int], token_ids: dict[str, int], seed: int, init_std: float | None = None
):
    """A random Qwen2VLForConditionalGeneration (not saved)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = _config_dict(text, vision, mrope, token_ids, legacy=False)
    cfg.pop("architectures")
    cfg.pop("model_type")
    config = Qwen2VLConfig(**cfg)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    if init_std is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if "norm" in name:  # keep RMSNorm/LayerNorm gains around one
                    param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
                else:
                    param.copy_(init_std * torch.randn(param.shape, generator=gen))
    return model


def save_weights(model, path: Path, *, legacy: bool) -> None:
    """Write ``model.safetensors``; ``legacy`` uses the transformers 4.x tensor names."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if legacy:
        renamed = {}
        for key, value in state.items():
            if key.startswith("model.visual."):
                key = key.removeprefix("model.")
            elif key.startswith("model.language_model."):
                key = "model." + key.removeprefix("model.language_model.")
            renamed[key] = value
        state = renamed
    else:
        state.pop("lm_head.weight", None)  # tied to the token embeddings
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def _preprocessor_config(path: Path) -> None:
    from .image import CLIP_MEAN, CLIP_STD
    from .settings import MERGE, PATCH, TEMPORAL_PATCH, EncoderSettings

    s = EncoderSettings()
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "do_resize": True,
                "do_rescale": True,
                "do_normalize": True,
                "do_convert_rgb": True,
                "resample": 3,
                "rescale_factor": 1 / 255,
                "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD),
                "min_pixels": s.min_pixels,
                "max_pixels": s.max_pixels,
                "patch_size": PATCH,
                "temporal_patch_size": TEMPORAL_PATCH,
                "merge_size": MERGE,
            },
            indent=2,
        )
    )


def tiny_model(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    legacy: bool = False,
    text: dict | None = None,
    vision: dict | None = None,
    mrope: list[int] | None = None,
) -> Path:
    """Write a deterministic tiny random Qwen2-VL model folder at ``path`` and return it.

    ``legacy=True`` saves the same weights the way the UNITE releases were saved (transformers 4.x
    tensor names, flat config with ``model_type: unite_qwen2_vl``). ``text``/``vision``/``mrope``
    replace the tiny shapes (benchmarks use a one-layer model with 2B's 1536-wide vectors).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    text, vision, mrope = text or TINY_TEXT, vision or TINY_VISION, mrope or TINY_MROPE
    model = build_model(text, vision, mrope, TOKEN_ID, seed, init_std=TINY_INIT_STD)
    save_weights(model, path, legacy=legacy)
    config = _config_dict(text, vision, mrope, TOKEN_ID, legacy)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(path)
    _preprocessor_config(path)
    return path
