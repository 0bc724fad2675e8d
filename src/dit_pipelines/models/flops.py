"""The forward cost of a `DiTModel`, per image, counted as the DiT paper counts it (Peebles & Xie, 2023, Table 4).

The paper's Gflops come from fvcore's counter on the original model: one "flop" per multiply-accumulate of every
linear layer, convolution and matrix product (the attention's QKᵀ and AV included), and layer norms at 4 per element
(5 with their own scale and shift); softmax, GELU and the adaLN arithmetic are not counted. `dit_flops` writes that
count out for each block design, so that it holds for any patch grid and needs no tracing (and no fvcore):

    per image, T patch tokens (T + 2 in context), width D, MLP width rD, L = 2 conditioning tokens
    linear layers    patch embedding T·p²C + timestep MLP (256·D + D²) + final layer T·D·p²C_out (+ 2D² adaptive)
                     + per block: 4T·D² (QKV, projection) + 2r·T·D² (MLP)
                                  + 6D² adaLN-Zero | 4D² adaLN | 2T·D² + 2L·D² cross-attention (Q, out; K, V)
    attention        per block 2T²·D, + 2T·L·D cross-attention
    layer norms      4 or 5 per element of each normalised (T, D) tensor

DiT-XL/2 on 32x32x4 latents: 118.69 (Table 4: 118.64); all 12 presets are within 0.4% of the table
(`tests/test_flops.py`). The linear-layer part is exactly what `torch.utils.flop_counter.FlopCounterMode` counts
(halved: it counts 2 per multiply-accumulate); it does not see the CPU's fused attention kernel.

>>> from dit_pipelines import DiTModel
>>> model = DiTModel.from_preset("DiT-S/2", sample_size=32)
>>> round(dit_flops(model.config, 32, 32).total / 1e9, 2)  # Table 4: 6.06
6.07
"""

from dataclasses import dataclass

import torch

CONDITIONING_TOKENS = 2  # [t, c]: the cross-attention's context, the in-context design's extra tokens
TIMESTEP_FEATURES = 256  # the sinusoidal features the timestep MLP reads (`TimestepEmbedder.frequency_dim`)


@dataclass(frozen=True)
class FlopCount:
    """Multiply-accumulates of one forward per image: `linear` (linear layers and the patch convolution),
    `attention` (QKᵀ and AV), `norm` (layer norms, as fvcore counts them); `total` their sum."""

    linear: int
    attention: int
    norm: int

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.norm


def dit_flops(config, height: int, width: int) -> FlopCount:
    """The `FlopCount` of a `DiTModel` with `config` on one `height` x `width` input (model pixels: latents for a
    latent model), every patch token seen (as at sampling); see the module docstring for what is counted. A MaskDiT
    decoder (`decoder_depth`) adds its bridge, its condition map and its blocks at its width."""
    p, d, block_type = config.patch_size, config.hidden_size, config.block_type
    if height % p or width % p:
        raise ValueError(f"Height and width ({height}x{width}) must be divisible by the patch size {p}.")
    patches = (height // p) * (width // p)
    out_channels = 2 * config.in_channels if config.learn_sigma else config.in_channels
    adaptive = block_type in ("adaln_zero", "adaln")
    per_element = 4 if adaptive else 5  # fvcore: 5 for a layer norm with its own scale and shift
    decoder_depth = getattr(config, "decoder_depth", 0)
    decoder_width = (getattr(config, "decoder_hidden_size", None) or d) if decoder_depth else d

    encoder = _blocks_flops(config, d, patches, config.depth)
    ends = FlopCount(
        linear=patches * p * p * config.in_channels * d  # patch embedding
        + TIMESTEP_FEATURES * d
        + d * d  # timestep MLP
        + patches * decoder_width * p * p * out_channels  # final linear layer
        + (2 * decoder_width * decoder_width if adaptive else 0),  # the final adaLN map
        attention=0,
        norm=per_element * decoder_width * patches,  # the final layer's norm
    )
    if not decoder_depth:
        return _sum(encoder, ends)
    # the bridge (norm, adaLN map, linear map to the decoder's width), then the condition at the decoder's width
    bridged = patches + (CONDITIONING_TOKENS if block_type == "in_context" else 0)
    condition = 0
    if decoder_width != d and block_type != "in_context":
        condition = (CONDITIONING_TOKENS if block_type == "cross_attention" else 1) * d * decoder_width
    bridge = FlopCount(
        linear=bridged * d * decoder_width + (2 * d * d if adaptive else 0) + condition,
        attention=0,
        norm=per_element * d * bridged,
    )
    return _sum(encoder, ends, bridge, _blocks_flops(config, decoder_width, patches, decoder_depth))


def _blocks_flops(config, d: int, patches: int, depth: int) -> FlopCount:
    """`depth` blocks of `config.block_type` at width `d` over `patches` patch tokens."""
    block_type = config.block_type
    tokens = patches + CONDITIONING_TOKENS if block_type == "in_context" else patches
    mlp_width = int(d * config.mlp_ratio)
    block = 4 * tokens * d * d + 2 * tokens * d * mlp_width
    attention = 2 * tokens * tokens * d
    norms_per_block = 2
    if block_type == "adaln_zero":
        block += 6 * d * d
    elif block_type == "adaln":
        block += 4 * d * d
    elif block_type == "cross_attention":
        block += 2 * tokens * d * d + 2 * CONDITIONING_TOKENS * d * d
        attention += 2 * tokens * CONDITIONING_TOKENS * d
        norms_per_block = 3
    per_element = 4 if block_type in ("adaln_zero", "adaln") else 5
    return FlopCount(depth * block, depth * attention, per_element * d * depth * norms_per_block * tokens)


def _sum(*counts: FlopCount) -> FlopCount:
    return FlopCount(*(sum(getattr(c, f) for c in counts) for f in ("linear", "attention", "norm")))


def saved_config_gflops(stored: dict) -> float:
    """Gflops per image, at its `sample_size`, of a `DiTModel` config as saved (`transformer/config.json`; keys it
    lacks, from configs saved before they existed, take `DiTModel`'s defaults), or of a `ClassConditionalUNet`'s
    (measured on a model built from it). For model cards: no weights loaded."""
    import inspect
    from types import SimpleNamespace

    from .dit_transformer import DiTModel
    from .unet_baseline import ClassConditionalUNet

    name = stored.get("_class_name")
    if name == ClassConditionalUNet.__name__:
        return ClassConditionalUNet.from_config(stored).gflops()
    if name != DiTModel.__name__:
        raise ValueError(f"Not a saved DiTModel or ClassConditionalUNet config: _class_name {name}")

    parameters = inspect.signature(DiTModel.__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    config = SimpleNamespace(**{**defaults, **stored})
    return dit_flops(config, config.sample_size, config.sample_size).total / 1e9


def measured_flops(model, *inputs) -> float:
    """Multiply-accumulates of `model(*inputs)` on a batch of one, counted as `dit_flops` counts, for any model:
    torch's `FlopCounterMode` for the convolutions and linear layers (halved: it counts 2 per multiply-accumulate),
    hooks on the attention modules for their products QKᵀ and AV (2·T·S·inner width), which the fused attention
    kernels hide from the counter, and on the norms (4 per element, 5 with their own scale and shift). Elementwise
    work (activations, upsampling, residual sums) is not counted, as fvcore leaves the adaLN arithmetic out."""
    from diffusers.models.attention_processor import Attention
    from torch.utils.flop_counter import FlopCounterMode

    from .attention import CrossAttention, SelfAttention

    extra = []

    def attention_hook(module, args, kwargs, output):
        queries = args[0] if args else kwargs["hidden_states"]
        if queries.ndim == 4:  # a U-Net's attention on (N, C, H, W) feature maps
            queries = queries.flatten(2).transpose(1, 2)
        keys = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states", kwargs.get("context"))
        width = module.inner_dim if isinstance(module, Attention) else queries.shape[-1]
        extra.append(2 * queries.shape[1] * (queries if keys is None else keys).shape[1] * width)

    def norm_hook(module, args, kwargs, output):
        affine = getattr(module, "elementwise_affine", getattr(module, "affine", False))
        extra.append((5 if affine else 4) * args[0][0].numel())

    hooks = {SelfAttention: attention_hook, CrossAttention: attention_hook, Attention: attention_hook}
    hooks.update({torch.nn.LayerNorm: norm_hook, torch.nn.GroupNorm: norm_hook})
    handles = [
        module.register_forward_hook(hooks[type(module)], with_kwargs=True)
        for module in model.modules()
        if type(module) in hooks
    ]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    counted = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    if any(op in counted for op in ("aten.bmm", "aten.baddbmm")):
        raise ValueError(
            "measured_flops needs the default attention backend: this one computes the attention products as matrix "
            "products, which the counter would count beside the hooks (model.reset_attention_backend())."
        )
    products = sum(flops for op, flops in counted.items() if "scaled_dot_product" not in op)  # the hooks count those
    return products / 2 + sum(extra)
