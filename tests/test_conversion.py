import argparse

import pytest
import torch
from diffusers import DiTTransformer2DModel

from dit_pipelines import DiTModel
from dit_pipelines.conversion import (
    dit_config_from_original,
    dit_from_diffusers,
    dit_to_diffusers,
    dit_to_original_state_dict,
    load_original_dit,
)

from .conftest import randomize_


def diffusers_dit(tie_embedders=True, **overrides):
    config = dict(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    config.update(overrides)
    torch.manual_seed(0)
    model = randomize_(DiTTransformer2DModel(**config), std=0.1).eval()
    if tie_embedders:  # as in every diffusers DiT converted from the original: one embedder, copied per block
        shared = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(shared)
    return model


def inputs(n=3, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, size, size, generator=g), torch.tensor([0, 400, 999])[:n], torch.tensor([0, 7, 10])[:n]


@pytest.mark.parametrize("out_channels", [8, 4])
def test_converted_diffusers_dit_gives_the_same_output(out_channels):
    theirs = diffusers_dit(out_channels=out_channels)
    ours = dit_from_diffusers(theirs).eval()
    assert ours.num_parameters() < theirs.num_parameters()  # one embedder instead of one per block
    x, t, y = inputs()
    with torch.no_grad():
        expected = theirs(x, t, y).sample
        actual = ours(x, t, y).sample
    assert expected.abs().max() > 0.1
    assert (actual - expected).abs().max() < 1e-5


def test_diffusers_dit_with_different_embedders_per_block_is_refused():
    with pytest.raises(ValueError, match="shares one conditioning embedder"):
        dit_from_diffusers(diffusers_dit(tie_embedders=False))


def test_conversion_to_diffusers_round_trips():
    theirs = diffusers_dit()
    back = dit_to_diffusers(dit_from_diffusers(theirs)).eval()
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, y).sample, theirs(x, t, y).sample, rtol=0, atol=0)


def expected_original_keys(depth):
    """The state-dict names of facebookresearch/DiT's `models.py` (DiT, with learned sigma and a null class)."""
    keys = ["pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "y_embedder.embedding_table.weight"]
    keys += [f"t_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    for b in range(depth):
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            keys += [f"blocks.{b}.{layer}.weight", f"blocks.{b}.{layer}.bias"]
    keys += [f"final_layer.{layer}.{p}" for layer in ("linear", "adaLN_modulation.1") for p in ("weight", "bias")]
    return sorted(keys)


def test_original_layout_names(tiny_dit):
    state_dict = dit_to_original_state_dict(tiny_dit().state_dict())
    assert sorted(state_dict) == expected_original_keys(depth=2)


def test_original_checkpoint_files_load(tmp_path, tiny_dit):
    model = tiny_dit()
    original = dit_to_original_state_dict(model.state_dict())
    # A released checkpoint is a bare state dict; a training checkpoint holds model, ema, opt and args.
    torch.save(original, tmp_path / "released.pt")
    zeros = {k: torch.zeros_like(v) for k, v in original.items()}
    torch.save(
        {"model": zeros, "ema": original, "opt": {}, "args": argparse.Namespace(model="DiT-S/2")},
        tmp_path / "0000100.pt",
    )
    x, t, y = inputs()
    with torch.no_grad():
        expected = model(x, t, y).sample
        for name in ("released.pt", "0000100.pt"):
            loaded = load_original_dit(str(tmp_path / name), num_heads=4).eval()
            assert loaded.config.depth == 2 and loaded.config.num_classes == 10 and loaded.config.learn_sigma
            torch.testing.assert_close(loaded(x, t, y).sample, expected, rtol=0, atol=0)


def test_original_config_is_inferred_for_released_sizes():
    with torch.device("meta"):
        reference = DiTModel.from_preset("DiT-XL/2", sample_size=64)  # DiT-XL/2 512x512
        config = dit_config_from_original(dit_to_original_state_dict(reference.state_dict()))
    for key in ("sample_size", "patch_size", "hidden_size", "depth", "num_heads", "num_classes", "in_channels"):
        assert config[key] == reference.config[key], key
    assert config["learn_sigma"] and config["mlp_ratio"] == 4.0
