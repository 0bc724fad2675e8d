"""Masked training in the spirit of MaskDiT (Zheng et al., 2023, "Fast Training of Diffusion Models with Masked
Transformers"): each step, a random `ratio` of the patch tokens is dropped before the encoder blocks (MAE's random
masking: a per-sample shuffle, the same count for every sample), a small decoder (`DiTModel(decoder_depth=...)`)
restores the full sequence, and the loss is

    L = L_diffusion(visible patches) + λ_MAE · L_MAE(masked patches),    λ_MAE = 0.1 (MaskDiT)

where L_diffusion is the usual objective (L_simple, plus λ·L_vlb with learned sigma) averaged over the visible
patches only (MaskDiT: per patch, then over the visible ones: with patches of equal size, over their pixels),
and L_MAE is MAE's reconstruction loss at the masked patches: the prediction channels regress the noisy input x_t
of each patch, normalised per patch (MAE's `norm_pix_loss`; MaskDiT's target is its noisy input
too). With half the tokens dropped the encoder costs about half; a short unmasked phase at the end (ratio 0:
exactly the ordinary objective) closes the gap between training and sampling, which always sees every token.

    >>> import torch
    >>> from dit_pipelines import DiTDDPMScheduler, DiTModel
    >>> model = DiTModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
    ...                  num_classes=3, decoder_depth=1)
    >>> scheduler = DiTDDPMScheduler(variance_type="learned_range")
    >>> x0 = torch.randn(4, 1, 8, 8)
    >>> losses = masked_diffusion_loss(model, scheduler, x0, torch.randn_like(x0), torch.tensor([1, 5, 9, 20]),
    ...                                torch.tensor([0, 1, 2, 3]), mask_ratio=0.5)
    >>> losses.loss.shape, losses.mae is not None
    (torch.Size([4]), True)
"""

from typing import Optional, Tuple

import torch

from ..schedulers.losses import DiffusionLoss

MAE_WEIGHT = 0.1  # λ_MAE of MaskDiT


def check_mask_ratio(mask_ratio: float) -> None:
    """A `ValueError` for a mask ratio outside [0, 1)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"The mask ratio must be in [0, 1), got {mask_ratio}.")


def check_patch_values(channels: int, patch_size: int) -> None:
    """A `ValueError` for patches of a single value (1 channel, 1x1 patches): MAE's per-patch normalisation (an
    unbiased variance over the patch) has nothing to normalise."""
    if channels * patch_size**2 < 2:
        raise ValueError(
            f"Masked training normalises each patch (MAE): patches of {channels} channel(s) x {patch_size}x"
            f"{patch_size} pixels have a single value. Use patches of 2x2 or more."
        )


def visible_tokens(tokens: int, mask_ratio: float) -> int:
    """How many of `tokens` patch tokens the encoder sees at `mask_ratio` (MAE: int(T · (1 - r))); a `ValueError`
    for a ratio outside [0, 1) or one that leaves no token visible."""
    check_mask_ratio(mask_ratio)
    visible = int(tokens * (1.0 - mask_ratio))
    if visible < 1:
        raise ValueError(
            f"A mask ratio of {mask_ratio} leaves no visible token of the model's {tokens}: lower the ratio or use "
            "smaller patches."
        )
    return visible


def random_token_split(
    batch: int,
    tokens: int,
    mask_ratio: float,
    device: Optional[torch.device] = None,
    generator: Optional[torch.Generator] = None,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The indices (in increasing order) of the tokens each sample keeps, (batch, K) with K = `visible_tokens`, and
    of those it drops, (batch, T - K): a random K of each sample's `tokens` (a per-sample shuffle, as MAE's). None
    at ratio 0: nothing is dropped."""
    visible = visible_tokens(tokens, mask_ratio)
    if visible == tokens:
        return None
    order = torch.rand(batch, tokens, device=device, generator=generator).argsort(dim=1)
    return order[:, :visible].sort(dim=1).values, order[:, visible:].sort(dim=1).values


def patch_tokens(x: torch.Tensor, patch_size: int, indices: torch.Tensor) -> torch.Tensor:
    """The patches of `x` (N, C, H, W) at `indices` (N, K) (row-major token order) as (N, C, K, p·p): channels stay
    the second dimension, so the scheduler's losses take them as they take images. One gather of the patches'
    pixels from the flattened image (no patchified copy of the whole image: the loss's largest cost)."""
    n, c, h, w = x.shape
    p = patch_size
    rows, columns = indices // (w // p), indices % (w // p)
    offsets = torch.arange(p, device=x.device)
    within = (offsets[:, None] * w + offsets[None, :]).flatten()  # a patch's pixels, relative to its top-left one
    pixels = ((rows * p * w + columns * p)[..., None] + within).flatten(1)  # (N, K·p·p)
    return x.flatten(2).gather(2, pixels[:, None].expand(-1, c, -1)).view(n, c, indices.shape[1], p * p)


def mae_loss(prediction: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """MAE's reconstruction loss (N,) on patches (N, C, M, p·p) (`patch_tokens`): the squared error between the
    `prediction` and the noisy input `x_t` normalised per patch (zero mean, unit variance over its C·p·p values),
    averaged per patch and over the patches."""
    dims = (1, 3)  # a patch's channels and pixels
    target = (x_t - x_t.mean(dims, keepdim=True)) / (x_t.var(dims, keepdim=True) + 1e-6).sqrt()
    return ((prediction - target) ** 2).mean(dim=(1, 2, 3))


def masked_diffusion_loss(
    model,
    noise_scheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor,
    mask_ratio: float,
    vlb_weight: float = 0.001,
    mae_weight: float = MAE_WEIGHT,
    generator: Optional[torch.Generator] = None,
    patch_size: Optional[int] = None,
) -> DiffusionLoss:
    """The MaskDiT objective of `model` (a `DiTModel` with a decoder) on `x0` (N, C, H, W) noised with `noise` at
    `timesteps`: the diffusion loss (`noise_scheduler.training_loss`) on the visible patches plus `mae_weight` times
    `mae_loss` on the masked ones. At `mask_ratio` 0 it is `training_loss` of the plain forward, exactly.
    `patch_size`: the model's (pass it for a wrapped model, e.g. under DDP)."""
    p = patch_size or model.config.patch_size
    check_patch_values(x0.shape[1], p)
    tokens = (x0.shape[-2] // p) * (x0.shape[-1] // p)
    split = random_token_split(x0.shape[0], tokens, mask_ratio, x0.device, generator)
    x_t = noise_scheduler.add_noise(x0, noise, timesteps)
    output = model(x_t, timesteps, class_labels, keep_indices=None if split is None else split[0]).sample.float()
    if split is None:
        return noise_scheduler.training_loss(output, x0, noise, timesteps, vlb_weight=vlb_weight)
    keep, masked = split
    visible = [patch_tokens(z, p, keep) for z in (output, x0, noise)]  # the loss over the visible patches only
    losses = noise_scheduler.training_loss(*visible, timesteps, vlb_weight=vlb_weight)
    channels = x0.shape[1]
    mae = mae_loss(patch_tokens(output[:, :channels], p, masked), patch_tokens(x_t.float(), p, masked))
    return DiffusionLoss(loss=losses.loss + mae_weight * mae, mse=losses.mse, vlb=losses.vlb, mae=mae)
