"""The DiT weight initialisation (Peebles & Xie, 2023, §3.2), shared by the image and the video DiT."""

from typing import Iterable

from torch import nn


def initialize_dit_weights(
    model: nn.Module, patch_embed: nn.Module, normal: Iterable[nn.Linear | nn.Embedding], zero: Iterable[nn.Linear]
) -> None:
    """Initialise `model` as DiT does, so that a new model predicts exactly zero:

    - every `nn.Linear`: xavier-uniform weights, zero biases (the transformer's default);
    - `patch_embed` (a convolution with stride = kernel): xavier-uniform like a linear map of flattened patches;
    - the `normal` layers (label table, timestep MLP, caption projection): weights ~ N(0, 0.02²);
    - the `zero` layers (adaLN-Zero modulations, the final layer, residual branches without a gate such as the
      cross-attention output): weights and biases zero, so every block starts as the identity.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.xavier_uniform_(patch_embed.weight.view(patch_embed.weight.shape[0], -1))
    nn.init.zeros_(patch_embed.bias)
    for layer in normal:
        nn.init.normal_(layer.weight, std=0.02)
    for layer in zero:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
