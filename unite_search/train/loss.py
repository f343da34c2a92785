"""UNITE's contrastive losses: symmetric InfoNCE (stage 1) and modality-aware masked InfoNCE (MAMCL, stage 2).

``S = q @ c.T / tau`` with L2-normalised rows and ``tau = 0.03``. MAMCL keeps, for query ``i``, only
the candidates whose modality code equals the code of query ``i``'s target (text 1, image 2,
video 4, summed for composed items; the diagonal always matches) and sets the others to ``-1e9``
before cross-entropy against the diagonal. With ``dual=True`` the loss is the mean of that term and
the candidate-to-query term on the unmasked ``S.T``, ``(L_q2c + L_c2q) / 2``, as upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

TAU = 0.03
MASK_VALUE = -1e9
CODES = {"text": 1, "image": 2, "video": 4}


def modality_code(modalities: str | Iterable[str]) -> int:
    """Bit flags of a modality set: ``"text,image"`` -> 3, ``{"video"}`` -> 4."""
    names = modalities.split(",") if isinstance(modalities, str) else modalities
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"a modality set is a name or a list of names, not {modalities!r}")
    code = 0
    for name in names:
        name = name.strip()
        if name not in CODES:
            raise ValueError(f"unknown modality {name!r}; use text, image or video")
        code |= CODES[name]
    if not code:
        raise ValueError("empty modality set")
    return code


def _codes(values: Sequence[int | str | Iterable[str]], device):
    import torch

    return torch.tensor([v if isinstance(v, int) else modality_code(v) for v in values], device=device)


def infonce_loss(q, c, *, tau: float = TAU):
    """Stage 1: symmetric InfoNCE, ``(CE(S) + CE(S.T)) / 2`` with diagonal labels, no mask."""
    import torch.nn.functional as F

    s = q @ c.T / tau  # (n, n)
    labels = _arange(s)
    return (F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels)) / 2


def mamcl_loss(q, c, query_target, cand_modality, *, tau: float = TAU, dual: bool = False):
    """Stage 2: modality-aware masked InfoNCE.

    ``query_target[i]``: the modality (code or names) that query ``i`` is looking for;
    ``cand_modality[j]``: candidate ``j``'s modality. Both length n; q and c are (n, dim), normalised.
    """
    import torch.nn.functional as F

    s = q @ c.T / tau  # (n, n)
    mask = _codes(query_target, s.device)[:, None] == _codes(cand_modality, s.device)[None, :]
    if not bool(mask.diagonal().all()):
        raise ValueError("a query's own candidate must have the query's target modality")
    masked = s.masked_fill(~mask, MASK_VALUE)
    labels = _arange(s)
    loss = F.cross_entropy(masked, labels)
    if dual:
        loss = (loss + F.cross_entropy(s.T, labels)) / 2
    return loss


def _arange(s):
    import torch

    return torch.arange(s.shape[0], device=s.device)
