"""Conditioning dropout for classifier-free guidance (Ho & Salimans, 2022), done by the training loss and only
there: class labels replaced by the null class, captions by the empty caption or by one of their shorter parts.

>>> import torch
>>> drop_labels(torch.tensor([3, 4]), torch.tensor([0.05, 0.5]), dropout_prob=0.1, null_class=10)
tensor([10,  4])
"""

from typing import List, Sequence

import torch


def drop_labels(labels: torch.Tensor, u: torch.Tensor, dropout_prob: float, null_class: int) -> torch.Tensor:
    """`labels` (N,) with each sample's label replaced by `null_class` where its uniform draw `u` (N,) is below
    `dropout_prob`."""
    return torch.where(u.to(labels.device) < dropout_prob, torch.full_like(labels, null_class), labels)


def training_caption_ids(
    u: torch.Tensor,
    caption_ids: torch.Tensor,
    part_ids: torch.Tensor,
    empty: int,
    dropout_prob: float,
    part_dropout_prob: float,
) -> torch.Tensor:
    """The caption id each sample trains with, from one uniform draw `u` (N,) per sample: the empty caption `empty`
    when u < dropout_prob; on the next `part_dropout_prob`, one of the K parts of its caption (`part_ids` (N, K):
    for example what is seen alone and how it moves alone, each taking an equal share); else the whole caption
    (`caption_ids` (N,))."""
    num_parts = part_ids.shape[1]
    if part_dropout_prob:
        part = ((u - dropout_prob) / part_dropout_prob * num_parts).floor().long()
    else:
        part = torch.full(u.shape, num_parts, dtype=torch.long)  # never a part: no sample is cut
    is_part = (part >= 0) & (part < num_parts)
    cut = part_ids.gather(1, part.clamp(0, num_parts - 1)[:, None])[:, 0]
    ids = torch.where(is_part, cut, caption_ids)
    return torch.where(u < dropout_prob, torch.full_like(caption_ids, empty), ids)


def training_captions(
    u: torch.Tensor,
    captions: Sequence[str],
    parts: Sequence[Sequence[str]],
    dropout_prob: float,
    part_dropout_prob: float,
) -> List[str]:
    """`training_caption_ids` on strings: the caption each sample of a batch trains with, given its whole caption
    and its parts (a list per sample, possibly empty; a sample without parts keeps its whole caption)."""
    vocabulary = sorted(set(captions) | {p for row in parts for p in row} | {""})
    index = {caption: i for i, caption in enumerate(vocabulary)}
    width = max([len(row) for row in parts] + [1])
    part_ids = [[index[p] for p in list(row) + [whole] * (width - len(row))] for whole, row in zip(captions, parts)]
    ids = training_caption_ids(
        u,
        torch.tensor([index[c] for c in captions]),
        torch.tensor(part_ids),
        index[""],
        dropout_prob,
        part_dropout_prob,
    )
    return [vocabulary[i] for i in ids.tolist()]
