"""Captions for text-to-video training: the frozen T5 embeddings of every distinct caption, computed once, and the
caption ids each clip carries (its whole caption and, where the data has them, shorter parts of it)."""

import os
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from ..pipelines.text_encoding import encode_text


def load_text_encoder(path: str) -> Tuple[object, torch.nn.Module]:
    """The tokenizer and frozen `T5EncoderModel` at `path`: a folder or Hub repo with tokenizer/ and text_encoder/
    sub-folders (a saved pipeline, PixArt-α's repos), or a plain T5 folder or repo ("google/t5-v1_1-xxl")."""
    from transformers import AutoTokenizer, T5EncoderModel

    local = os.path.isdir(path)
    nested = os.path.isdir(os.path.join(path, "text_encoder")) if local else _has_subfolder(path)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer" if nested else "")
    encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder" if nested else "")
    return tokenizer, encoder.eval().requires_grad_(False)


def _has_subfolder(repo_id: str) -> bool:
    """Whether a Hub repo keeps its T5 in text_encoder/ (asked of the Hub; False when it cannot be reached)."""
    try:
        from huggingface_hub import file_exists

        return file_exists(repo_id, "text_encoder/config.json")
    except Exception:  # offline, or not a repo id: load from the root, whose error then names the problem
        return False


class CaptionTable:
    """The T5 embeddings (K, L, D) and masks (K, L) of K distinct captions, the empty caption (the unconditional
    prompt of classifier-free guidance) last, encoded once because the text encoder is frozen."""

    def __init__(self, tokenizer, text_encoder, captions: Iterable[str], max_sequence_length: int):
        self.captions: List[str] = sorted(set(captions) - {""}) + [""]
        self.index = {caption: i for i, caption in enumerate(self.captions)}
        self.empty = self.index[""]
        self.embeds, self.masks = encode_text(
            tokenizer, text_encoder, self.captions, max_sequence_length, torch.device("cpu")
        )

    def ids(self, captions: Sequence[str]) -> torch.Tensor:
        """(N,) ids of `captions`."""
        return torch.tensor([self.index[c] for c in captions], dtype=torch.long)

    def part_ids(self, captions: Sequence[str], parts: Optional[Sequence[Sequence[str]]]) -> torch.Tensor:
        """(N, K) ids of each caption's parts, padded with the whole caption (K = the most parts of any caption;
        1 where there are none)."""
        parts = parts or [[] for _ in captions]
        width = max([len(p) for p in parts] + [1])
        return torch.tensor(
            [[self.index[c] for c in (list(p) + [whole] * (width - len(p)))] for whole, p in zip(captions, parts)],
            dtype=torch.long,
        )

    def lookup(self, ids: torch.Tensor, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """The embeddings (N, L, D) and masks (N, L) of caption `ids` (N,), on `device`."""
        ids = ids.cpu()
        return self.embeds[ids].to(device), self.masks[ids].to(device)
