import math

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from dit_pipelines import DIT_PRESETS, DiTModel
from dit_pipelines.models.embeddings import sincos_2d, timestep_features


def original_sincos_2d(dim, grid_h, grid_w):
    """The original DiT / MAE formula, in float64 numpy: meshgrid(w, h), first half from grid[0]."""
    grid = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_sincos_positions_match_the_original_formula(grid):
    ours = sincos_2d(16, *grid).double().numpy()
    np.testing.assert_allclose(ours, original_sincos_2d(16, *grid), atol=1e-7)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_timestep_features_match_diffusers(shift):
    t = torch.tensor([0.0, 1.0, 17.0, 999.0])
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_features(t, 256, freq_shift=shift), theirs)


def test_output_is_exactly_zero_at_initialisation(tiny_dit):
    model = tiny_dit(random=False)
    out = model(torch.randn(3, 4, 8, 8), timestep=torch.tensor([0, 10, 999]), class_labels=torch.tensor([1, 2, 3]))
    assert out.sample.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out.sample) == 0
    # ... but the network is not dead: the final layer receives gradient.
    out.sample.sum().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_learned_sigma_doubles_the_output_channels(tiny_dit):
    x = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([0, 1])
    assert tiny_dit(learn_sigma=True)(x, 5, labels).sample.shape == (2, 8, 8, 8)
    assert tiny_dit(learn_sigma=False)(x, 5, labels).sample.shape == (2, 4, 8, 8)


def test_non_square_inputs_use_positions_of_their_own_grid(tiny_dit):
    model = tiny_dit()
    x = torch.randn(2, 4, 6, 10)
    out = model(x, torch.tensor([3, 700]), torch.tensor([4, 5]), return_dict=False)[0]
    assert out.shape == (2, 8, 6, 10)
    torch.testing.assert_close(model.positions(3, 5)[0], sincos_2d(32, 3, 5))
    # Tokens are independent of batch-mates: each sample's output is its own.
    single = model(x[:1], torch.tensor([3]), torch.tensor([4])).sample
    torch.testing.assert_close(single, out[:1], atol=1e-5, rtol=1e-5)


def test_attention_equals_softmax_attention_in_float64(tiny_dit):
    attn = tiny_dit().blocks[0].attn.double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = lambda z: z.view(2, 5, 4, 8).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ heads(v)).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(attn(x), expected)


def test_labels_are_dropped_to_the_null_class_only_when_the_loss_asks(tiny_dit):
    from dit_pipelines.training import drop_labels

    model = tiny_dit(class_dropout_prob=0.5).train()
    table = model.class_embedder.embedding_table.weight
    labels = torch.arange(10).repeat(20)
    torch.testing.assert_close(model.class_embedder(labels), table[labels])  # training mode alone drops nothing
    u = torch.rand(len(labels), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(labels, u, dropout_prob=0.5, null_class=10)
    assert torch.equal(dropped == 10, u < 0.5) and torch.equal(dropped[u >= 0.5], labels[u >= 0.5])
    assert 0.3 < (dropped == 10).float().mean() < 0.7


def test_no_null_class_without_label_dropout(tiny_dit):
    assert tiny_dit(class_dropout_prob=0.1).class_embedder.embedding_table.num_embeddings == 11
    model = tiny_dit(class_dropout_prob=0.0)
    assert model.class_embedder.embedding_table.num_embeddings == 10 and not model.has_null_class


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dit):
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), torch.tensor([3, 4])
    grads = []
    for checkpointing in (False, True):
        model = tiny_dit()
        calls = []
        if checkpointing:
            model.enable_gradient_checkpointing(
                lambda block, *args: (
                    calls.append(block) or torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
                )
            )
        model(x, t, y).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert len(calls) == (2 if checkpointing else 0)  # every block goes through the checkpoint function
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "name, millions", [("DiT-S/2", 33.0), ("DiT-B/2", 130.5), ("DiT-L/2", 458.1), ("DiT-XL/2", 675.1)]
)
def test_preset_parameter_counts_equal_the_paper(name, millions):
    with torch.device("meta"):
        model = DiTModel.from_preset(name)  # 32x32x4 latents, learned sigma, 1000 classes
    assert round(model.num_parameters() / 1e6, 1) == millions


def test_all_twelve_presets():
    assert sorted(DIT_PRESETS) == sorted(f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8))
    with torch.device("meta"):
        for name, preset in DIT_PRESETS.items():
            model = DiTModel.from_preset(name, num_classes=10)
            assert model.config.patch_size == int(name[-1]) == preset["patch_size"]
            assert model.config.num_classes == 10  # overrides apply


def test_save_and_load_with_safetensors(tmp_path, tiny_dit):
    model = tiny_dit()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = DiTModel.from_pretrained(tmp_path).eval()
    assert not loaded.pos_embed.requires_grad
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 50]), torch.tensor([1, 2])
    torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y).sample, rtol=0, atol=0)


def test_position_table_is_not_shared_with_the_cache(tiny_dit):
    model = tiny_dit()
    with torch.no_grad():
        model.pos_embed.add_(1.0)
    assert not torch.equal(model.pos_embed[0], sincos_2d(32, 4, 4))
    assert torch.equal(tiny_dit().pos_embed[0], sincos_2d(32, 4, 4))
