"""Weights of the original DiT (facebookresearch/DiT checkpoints) and of diffusers' `DiTTransformer2DModel`,
converted to and from `DiTModel`.

>>> from dit_pipelines.conversion import load_original_dit
>>> model = load_original_dit("DiT-XL-2-256x256.pt")  # doctest: +SKIP
"""

import argparse
import math
import re
from typing import Dict, Mapping, Union

import torch
from diffusers import DiTTransformer2DModel
from diffusers.utils import logging

from .models import DiTModel
from .models.presets import DIT_PRESETS

logger = logging.get_logger(__name__)

StateDict = Dict[str, torch.Tensor]

# Original name pattern -> ours. Everything not listed keeps its name (qkv, proj, fc1, fc2, final_layer.linear).
_ORIGINAL_TO_OURS = [
    (r"^x_embedder\.proj\.", "patch_embed."),
    (r"^t_embedder\.", "timestep_embedder."),
    (r"^y_embedder\.", "class_embedder."),
    (r"\.adaLN_modulation\.1\.", ".modulation."),
]
_OURS_TO_ORIGINAL = [
    (r"^patch_embed\.", "x_embedder.proj."),
    (r"^timestep_embedder\.", "t_embedder."),
    (r"^class_embedder\.", "y_embedder."),
    (r"\.modulation\.", ".adaLN_modulation.1."),
]


def _rename(state_dict: Mapping[str, torch.Tensor], rules) -> StateDict:
    renamed = {}
    for name, tensor in state_dict.items():
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    return renamed


def original_to_dit_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """An original DiT state dict (`x_embedder.proj`, `blocks.N.adaLN_modulation.1`, ...) in `DiTModel` names."""
    return _rename(state_dict, _ORIGINAL_TO_OURS)


def dit_to_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A `DiTModel` state dict (adaLN-Zero blocks) in the original DiT's names, loadable by its `models.py`."""
    if any(name.startswith(("decoder_", "mask_token")) for name in state_dict):
        raise ValueError("The original DiT has no MaskDiT decoder; this state dict has one (decoder_depth > 0).")
    return _rename(state_dict, _OURS_TO_ORIGINAL)


def dit_config_from_original(state_dict: Mapping[str, torch.Tensor], **overrides) -> dict:
    """The `DiTModel` config of an original DiT state dict, read off its shapes. The head count cannot be read
    off and comes from the preset of the same width and depth, or `num_heads=` in `overrides`. The label table is
    taken to end with the null class (as in all released checkpoints) unless `class_dropout_prob=0` is given."""
    hidden_size, in_channels, patch_size, _ = state_dict["x_embedder.proj.weight"].shape
    depth = len({int(m.group(1)) for m in map(re.compile(r"^blocks\.(\d+)\.").match, state_dict) if m})
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // patch_size**2
    config = dict(
        sample_size=math.isqrt(state_dict["pos_embed"].shape[1]) * patch_size,
        patch_size=patch_size,
        in_channels=in_channels,
        hidden_size=hidden_size,
        depth=depth,
        mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden_size,
        learn_sigma=out_channels == 2 * in_channels,
    )
    config.update(overrides)
    if "num_heads" not in config:
        presets = [p for p in DIT_PRESETS.values() if (p["hidden_size"], p["depth"]) == (hidden_size, depth)]
        if not presets:
            raise ValueError(f"No DiT preset has width {hidden_size} and depth {depth}; pass num_heads=.")
        config["num_heads"] = presets[0]["num_heads"]
    rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    has_null = config.get("class_dropout_prob", 0.1) > 0
    config.setdefault("num_classes", rows - int(has_null))
    return config


def load_original_dit(checkpoint: Union[str, Mapping[str, torch.Tensor]], **overrides) -> DiTModel:
    """A `DiTModel` from an original DiT checkpoint: a path to a `.pt` file (a released state dict, or a training
    checkpoint, whose EMA weights are used) or a state dict. `overrides` adjust the inferred config."""
    if not isinstance(checkpoint, Mapping):
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("ema", checkpoint)
    model = DiTModel(**dit_config_from_original(state_dict, **overrides))
    model.load_state_dict(original_to_dit_state_dict(state_dict), strict=True)
    return model


def diffusers_to_dit_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A diffusers `DiTTransformer2DModel` state dict in `DiTModel` names.

    diffusers keeps a copy of the timestep/label embedder in every block; a DiT has one. All copies must be equal
    (they are in every checkpoint converted from the original DiT); otherwise a `ValueError` is raised."""
    ours: StateDict = {}
    blocks = sorted({int(m.group(1)) for m in map(re.compile(r"^transformer_blocks\.(\d+)\.").match, state_dict) if m})
    embedder_keys = {
        "timestep_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
        "timestep_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
        "class_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table",
    }
    for name, theirs in embedder_keys.items():
        for param in ("weight", "bias") if "table" not in name else ("weight",):
            copies = [state_dict[f"transformer_blocks.{i}.{theirs}.{param}"] for i in blocks]
            if any(not torch.equal(copies[0], c) for c in copies[1:]):
                raise ValueError(
                    f"The blocks' copies of `{theirs}.{param}` differ, but a DiT shares one conditioning embedder; "
                    "only diffusers models whose per-block embedders are identical can be converted."
                )
            ours[f"{name}.{param}"] = copies[0]
    ours["patch_embed.weight"] = state_dict["pos_embed.proj.weight"]
    ours["patch_embed.bias"] = state_dict["pos_embed.proj.bias"]
    for i in blocks:
        b = f"transformer_blocks.{i}."
        for param in ("weight", "bias"):
            ours[f"blocks.{i}.modulation.{param}"] = state_dict[f"{b}norm1.linear.{param}"]
            ours[f"blocks.{i}.attn.qkv.{param}"] = torch.cat(
                [state_dict[f"{b}attn1.to_{x}.{param}"] for x in "qkv"], dim=0
            )
            ours[f"blocks.{i}.attn.proj.{param}"] = state_dict[f"{b}attn1.to_out.0.{param}"]
            ours[f"blocks.{i}.mlp.fc1.{param}"] = state_dict[f"{b}ff.net.0.proj.{param}"]
            ours[f"blocks.{i}.mlp.fc2.{param}"] = state_dict[f"{b}ff.net.2.{param}"]
    for param in ("weight", "bias"):
        ours[f"final_layer.modulation.{param}"] = state_dict[f"proj_out_1.{param}"]
        ours[f"final_layer.linear.{param}"] = state_dict[f"proj_out_2.{param}"]
    return ours


def dit_to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor], depth: int) -> StateDict:
    """A `DiTModel` state dict in diffusers' `DiTTransformer2DModel` names (the embedder copied into each block)."""
    theirs: StateDict = {}
    for param in ("weight", "bias"):
        theirs[f"pos_embed.proj.{param}"] = state_dict[f"patch_embed.{param}"]
        theirs[f"proj_out_1.{param}"] = state_dict[f"final_layer.modulation.{param}"]
        theirs[f"proj_out_2.{param}"] = state_dict[f"final_layer.linear.{param}"]
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        emb = f"{b}norm1.emb."
        theirs[f"{emb}class_embedder.embedding_table.weight"] = state_dict["class_embedder.embedding_table.weight"]
        for param in ("weight", "bias"):
            theirs[f"{emb}timestep_embedder.linear_1.{param}"] = state_dict[f"timestep_embedder.mlp.0.{param}"]
            theirs[f"{emb}timestep_embedder.linear_2.{param}"] = state_dict[f"timestep_embedder.mlp.2.{param}"]
            theirs[f"{b}norm1.linear.{param}"] = state_dict[f"blocks.{i}.modulation.{param}"]
            q, k, v = state_dict[f"blocks.{i}.attn.qkv.{param}"].chunk(3, dim=0)
            theirs.update({f"{b}attn1.to_q.{param}": q, f"{b}attn1.to_k.{param}": k, f"{b}attn1.to_v.{param}": v})
            theirs[f"{b}attn1.to_out.0.{param}"] = state_dict[f"blocks.{i}.attn.proj.{param}"]
            theirs[f"{b}ff.net.0.proj.{param}"] = state_dict[f"blocks.{i}.mlp.fc1.{param}"]
            theirs[f"{b}ff.net.2.{param}"] = state_dict[f"blocks.{i}.mlp.fc2.{param}"]
    return theirs


def dit_from_diffusers(transformer: DiTTransformer2DModel) -> DiTModel:
    """A `DiTModel` computing what a diffusers `DiTTransformer2DModel` computes at its `sample_size` (same outputs,
    float32 < 1e-5).

    It keeps diffusers' two differences from the original DiT: timestep frequencies with shift 1 and
    LayerNorm eps 1e-5 before the MLP. At other sizes the two differ: diffusers squeezes the positions of a larger
    grid into the training grid's range, `DiTModel` (like the original) continues them."""
    c = transformer.config
    unsupported = {
        "norm_type": (c.norm_type, "ada_norm_zero"),
        "activation_fn": (c.activation_fn, "gelu-approximate"),
        "norm_elementwise_affine": (c.norm_elementwise_affine, False),
        "attention_bias": (c.attention_bias, True),
    }
    for key, (value, expected) in unsupported.items():
        if value != expected:
            raise ValueError(f"Cannot convert a DiTTransformer2DModel with {key}={value!r}; only {expected!r}.")
    hidden_size = c.num_attention_heads * c.attention_head_dim
    out_channels = c.out_channels or c.in_channels
    if out_channels not in (c.in_channels, 2 * c.in_channels):
        raise ValueError(f"out_channels must be in_channels or 2 * in_channels, got {out_channels}.")
    fc1 = transformer.transformer_blocks[0].ff.net[0].proj
    model = DiTModel(
        sample_size=c.sample_size,
        patch_size=c.patch_size,
        in_channels=c.in_channels,
        hidden_size=hidden_size,
        depth=c.num_layers,
        num_heads=c.num_attention_heads,
        mlp_ratio=fc1.out_features / hidden_size,
        class_dropout_prob=transformer.transformer_blocks[0].norm1.emb.class_embedder.dropout_prob,
        num_classes=c.num_embeds_ada_norm,
        learn_sigma=out_channels == 2 * c.in_channels,
        timestep_freq_shift=1.0,
        mlp_norm_eps=c.norm_eps,
    )
    state_dict = diffusers_to_dit_state_dict(transformer.state_dict())
    state_dict["pos_embed"] = model.pos_embed.data  # diffusers does not save its (identical) sin-cos table
    model.load_state_dict(state_dict, strict=True)
    return model if transformer.dtype == model.dtype else model.to(transformer.dtype)


def dit_to_diffusers(model: DiTModel) -> DiTTransformer2DModel:
    """A diffusers `DiTTransformer2DModel` with `model`'s weights. diffusers fixes the timestep frequency shift to 1
    and the pre-MLP LayerNorm eps to its `norm_eps`: a model with another shift gives slightly different outputs
    there, which is logged as a warning."""
    c = model.config
    if c.block_type != "adaln_zero":
        raise ValueError(f"diffusers' DiTTransformer2DModel has adaLN-Zero blocks; this model's are {c.block_type!r}.")
    if c.decoder_depth:
        raise ValueError(
            "diffusers' DiTTransformer2DModel has no MaskDiT decoder; this model has one (decoder_depth > 0)."
        )
    if c.timestep_freq_shift != 1.0:
        logger.warning(
            "diffusers' DiTTransformer2DModel uses timestep frequency shift 1, this model %s: outputs will differ "
            "slightly from this model's.",
            c.timestep_freq_shift,
        )
    if not model.has_null_class or c.mlp_ratio != 4.0:
        raise ValueError(
            "diffusers' DiTTransformer2DModel always has a null class and mlp_ratio 4; this model has "
            f"class_dropout_prob={c.class_dropout_prob} and mlp_ratio={c.mlp_ratio}."
        )
    transformer = DiTTransformer2DModel(
        num_attention_heads=c.num_heads,
        attention_head_dim=c.hidden_size // c.num_heads,
        in_channels=c.in_channels,
        out_channels=model.out_channels,
        num_layers=c.depth,
        sample_size=c.sample_size,
        patch_size=c.patch_size,
        num_embeds_ada_norm=c.num_classes,
        norm_eps=c.mlp_norm_eps,
    )
    transformer.load_state_dict(dit_to_diffusers_state_dict(model.state_dict(), c.depth), strict=True)
    return transformer if transformer.dtype == model.dtype else transformer.to(model.dtype)
