"""T5 prompt encoding, shared by the text-to-video pipeline and the training script's caption cache."""

from typing import List, Optional, Tuple

import torch


@torch.no_grad()
def encode_text(
    tokenizer, text_encoder, prompts: List[str], max_sequence_length: int, device: Optional[torch.device] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """T5 embeddings (B, L, d_model) and attention mask (B, L; 1 = token, 0 = padding) of `prompts`, padded to
    `max_sequence_length` tokens, computed where the encoder is and returned on `device`."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
    )
    ids, mask = tokens.input_ids.to(text_encoder.device), tokens.attention_mask.to(text_encoder.device)
    embeds = text_encoder(ids, attention_mask=mask).last_hidden_state
    device = device or text_encoder.device  # the encoder may live elsewhere (a CPU T5 beside a GPU transformer)
    return embeds.to(device), mask.to(device)
