"""A T5 for the sandbox's captions, since no pretrained T5 can be downloaded here: a T5 tokenizer trained on the
captions and a small randomly initialised T5 encoder. Users with their own data pass a real one
(`--text_encoder google/t5-v1_1-xxl`).

>>> from dit_pipelines.pipelines.text_encoding import encode_text
>>> from examples.mnist.text_encoder import small_t5_encoder, train_t5_tokenizer
>>> tokenizer = train_t5_tokenizer(["the digit 3 moves up", "the digit 7 moves left"] * 20, model_max_length=32)
>>> encoder = small_t5_encoder(len(tokenizer), d_model=32)
>>> embeds, mask = encode_text(tokenizer, encoder, ["the digit 3 moves left"], max_sequence_length=32)
>>> embeds.shape, bool(mask[0, 0]), bool(mask[0, -1])  # tokens first, then padding
(torch.Size([1, 32, 32]), True, False)
"""

import math
import os
from collections import Counter
from typing import List

import torch


def train_t5_tokenizer(texts: List[str], vocab_size: int = 256, model_max_length: int = 32):
    """A `T5TokenizerFast` whose unigram vocabulary (T5's, as sentencepiece writes it: pad 0, eos 1, unk 2, then
    pieces with log-probability scores, and 100 sentinel ids) is estimated from `texts`: the most frequent words as
    whole pieces ("▁digit", scored by their log frequency), and every character of `texts` as a much less likely
    fallback piece, so that known words are one token each and other words are spelled out. Deterministic given
    `texts`; saved and loaded with `save_pretrained` / `from_pretrained` like any other tokenizer.

    (The `tokenizers` UnigramTrainer, given a caption vocabulary this small, prunes every multi-character piece and
    returns a character-level vocabulary, whose 35-token captions would not fit T5's sequence length.)"""
    from transformers import T5TokenizerFast

    words = Counter(word for text in texts for word in text.split())
    chars = sorted({ch for text in texts for ch in text if not ch.isspace()} | {"▁"})
    kept = sorted(words.items(), key=lambda item: (-item[1], item[0]))[: max(vocab_size - len(chars) - 3, 0)]
    total = sum(count for _, count in kept) or 1
    floor = math.log(1 / total) - 10.0  # a character costs more than any word: whole words win the segmentation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + word, round(math.log(count / total), 6)) for word, count in kept]
    vocab += [(ch, floor) for ch in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=model_max_length)


def small_t5_encoder(vocab_size: int, d_model: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0):
    """A randomly initialised `T5EncoderModel` (T5 v1.1 layout: gated-GELU feed-forward of 2·d_model): frozen, it
    is a fixed random feature map of the tokens, which is all a caption vocabulary of this size needs."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def save_small_t5(
    folder: str, captions: List[str], d_model: int = 64, model_max_length: int = 24, seed: int = 0
) -> str:
    """Train the tokenizer on `captions`, build the small T5 and save both in the layout `--text_encoder` of
    `training/train_video_dit.py` reads (`folder/tokenizer`, `folder/text_encoder`). Returns `folder`."""
    tokenizer = train_t5_tokenizer(sorted(set(captions)), vocab_size=256, model_max_length=model_max_length)
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    small_t5_encoder(len(tokenizer), d_model=d_model, seed=seed).save_pretrained(os.path.join(folder, "text_encoder"))
    return folder
