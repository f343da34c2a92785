"""Fine-tuning UNITE on your own pairs: MAMCL / InfoNCE losses, pair data, a LoRA trainer, adapter merging.

Needs the ``train`` extra (``pip install 'unite-search[train]'``, which adds peft).
"""

from __future__ import annotations

from .loss import infonce_loss, mamcl_loss, modality_code

__all__ = ["infonce_loss", "mamcl_loss", "modality_code"]
