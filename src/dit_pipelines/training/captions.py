"""Captions for text-to-video training: a frozen T5 (`load_text_encoder`), whose embeddings a training step gets
either per batch (`CaptionEncoder`) or from an on-disk cache computed once (`TextEmbeddingCache`); both give the
same zero-padded states and masks."""

import hashlib
import json
import os
from typing import Iterable, List, Sequence, Tuple

import torch

from ..pipelines.text_encoding import encode_text
from .sharded_cache import Field, fill_cache, module_fingerprint


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


class CaptionEncoder:
    """Caption embeddings for training, computed per batch by the frozen T5: `embed(captions)` gives (B, L, D)
    states and (B, L) masks, L = `max_sequence_length`, padding positions zero (so that they equal what
    `TextEmbeddingCache` returns). The encoder runs under `no_grad` in `dtype` (the mixed-precision dtype)."""

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int, device, dtype=torch.float32):
        self.tokenizer, self.max_sequence_length = tokenizer, max_sequence_length
        self.text_encoder = text_encoder.to(device, dtype)

    def embed(self, captions: Sequence[str], device) -> Tuple[torch.Tensor, torch.Tensor]:
        states, mask = encode_text(self.tokenizer, self.text_encoder, list(captions), self.max_sequence_length, device)
        return states * mask[..., None].to(states.dtype), mask


class TextEmbeddingCache:
    """The T5 embeddings of every distinct caption of a dataset, computed once into an on-disk `ShardedCache`
    (`--precompute_text_embeddings`) by all processes, storing each caption's unpadded tokens (n_i, D); `embed`
    pads them back to `max_sequence_length` with zeros. The caption -> row index is a dict in memory (a few dozen
    bytes a caption); the embeddings stay on disk."""

    def __init__(self, encoder: CaptionEncoder, captions: Iterable[str], root: str, accelerator, dataset_key: str):
        self.captions: List[str] = sorted(set(captions) | {""})
        self.index = {caption: i for i, caption in enumerate(self.captions)}
        self.max_sequence_length = encoder.max_sequence_length
        text_encoder = encoder.text_encoder
        digest = hashlib.sha1("\n".join(self.captions).encode()).hexdigest()[:16]
        key = {
            "kind": "caption embeddings",
            "dataset": dataset_key,
            "captions": digest,
            "encoder": module_fingerprint(text_encoder),
            "tokenizer": _tokenizer_fingerprint(encoder.tokenizer),
            "max_sequence_length": self.max_sequence_length,
            "dtype": str(text_encoder.dtype),
        }
        field = Field((None, text_encoder.config.d_model), text_encoder.dtype)

        def encode_rows(rows, batch_size=64):
            out = []
            for start in range(rows.start, rows.stop, batch_size):
                batch = self.captions[start : min(rows.stop, start + batch_size)]
                states, mask = encoder.embed(batch, "cpu")
                out += [s[: int(m.sum())] for s, m in zip(states, mask)]
            return {"tokens": out}

        self.cache = fill_cache(
            root,
            "text",
            key,
            len(self.captions),
            {"tokens": field},
            encode_rows,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            wait=accelerator.wait_for_everyone,
        )

    def embed(self, captions: Sequence[str], device) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = self.cache.read([self.index[c] for c in captions])["tokens"]
        states = torch.zeros(len(rows), self.max_sequence_length, rows[0].shape[-1], dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), self.max_sequence_length, dtype=torch.long)
        for i, tokens in enumerate(rows):
            states[i, : len(tokens)], mask[i, : len(tokens)] = tokens, 1
        return states.to(device), mask.to(device)


def _tokenizer_fingerprint(tokenizer) -> str:
    """What identifies a tokenizer for the cache key: its vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()[:16]
