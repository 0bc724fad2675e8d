import pytest
import torch

from dit_pipelines import VideoDiTModel
from dit_pipelines.models.embeddings import sincos_1d
from dit_pipelines.models.video_blocks import Mixing

from .conftest import randomize_

LAYOUTS = ["interleaved", "factorized", "full"]


def video_dit(random=True, **overrides):
    config = dict(
        sample_size=8,
        sample_frames=4,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=2,
        num_heads=4,
        text_embed_dim=16,
        num_classes=5,
    )
    config.update(overrides)
    torch.manual_seed(0)
    model = VideoDiTModel(**config).eval()
    return randomize_(model, std=0.1) if random else model


def text(batch=2, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, 16, generator=g), torch.ones(batch, length)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("frames", [1, 4])
def test_shapes_for_each_layout_and_single_frames(layout, frames):
    model = video_dit(attention_layout=layout)
    states, mask = text()
    out = model(torch.randn(2, 4, frames, 8, 8), torch.tensor([3, 900]), states, mask).sample
    assert out.shape == (2, 8, frames, 8, 8) and torch.isfinite(out).all()
    blocks = {"interleaved": 4, "factorized": 2, "full": 2}[layout]
    assert len(model.blocks) == blocks


def test_zero_output_at_initialisation_and_fixed_sigma_and_tubelets():
    states, mask = text(1)
    model = video_dit(random=False)
    assert torch.count_nonzero(model(torch.randn(1, 4, 4, 8, 8), 10, states, mask).sample) == 0
    tubelets = video_dit(temporal_patch_size=2, learn_sigma=False)
    assert tubelets(torch.randn(1, 4, 6, 8, 8), 10, states, mask).sample.shape == (1, 4, 6, 8, 8)
    with pytest.raises(ValueError, match="divisible by the tubelet 2x2x2"):
        tubelets(torch.randn(1, 4, 5, 8, 8), 10, states, mask)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_frames_see_each_other(layout):
    model = video_dit(attention_layout=layout)
    states, mask = text(1)
    video = torch.randn(1, 4, 4, 8, 8)
    changed = video.clone()
    changed[:, :, 0] += 1.0
    a, b = model(video, 500, states, mask).sample, model(changed, 500, states, mask).sample
    assert not torch.allclose(a[:, :, 3], b[:, :, 3])  # frame 0 reaches frame 3


def test_more_frames_than_trained_get_interpolated_positions():
    model = video_dit(sample_frames=8)
    positions = model.temporal_positions(12)
    torch.testing.assert_close(positions[0], sincos_1d(32, torch.tensor([0.0]))[0].float())
    torch.testing.assert_close(positions[-1], sincos_1d(32, torch.tensor([7.0]))[0].float())
    torch.testing.assert_close(model.temporal_positions(6), sincos_1d(32, torch.arange(6.0)).float())
    states, mask = text(1)
    assert model(torch.randn(1, 4, 12, 8, 8), 100, states, mask).sample.shape == (1, 8, 12, 8, 8)


@pytest.mark.parametrize("layout,pooled", [(layout, False) for layout in LAYOUTS] + [("factorized", True)])
def test_padding_tokens_do_not_change_the_output(layout, pooled):
    model = video_dit(attention_layout=layout, pooled_text_conditioning=pooled)
    video = torch.randn(2, 4, 2, 8, 8)
    states, _ = text(2, length=5)
    short = model(video, 200, states[:, :3], torch.ones(2, 3)).sample
    padded_states = states.clone()
    padded_states[:, 3:] = 1e3 * torch.randn(2, 2, 16)  # garbage where the mask says padding
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    padded = model(video, 200, padded_states, mask).sample
    torch.testing.assert_close(padded, short, atol=1e-5, rtol=1e-5)
    unmasked = model(video, 200, padded_states, torch.ones(2, 5)).sample
    assert not torch.allclose(unmasked, short, atol=1e-3)


@pytest.mark.parametrize("layout", ["interleaved", "factorized"])
def test_from_image_dit_reproduces_the_image_model_frame_by_frame(tiny_dit, layout):
    image = tiny_dit(in_channels=4, num_classes=5)
    video = VideoDiTModel.from_image_dit(image, attention_layout=layout, sample_frames=3).eval()
    frames = torch.randn(2, 4, 3, 8, 8)
    labels, t = torch.tensor([1, 4]), torch.tensor([30, 700])
    out = video(frames, t, class_labels=labels).sample
    for f in range(3):
        expected = image(frames[:, :, f], t, labels).sample
        torch.testing.assert_close(out[:, :, f], expected, atol=1e-5, rtol=1e-5)
    # A text-conditioned video model starts as the image model's unconditional (null-class) prediction.
    text_video = VideoDiTModel.from_image_dit(
        image, attention_layout=layout, conditioning="text", text_embed_dim=16, pooled_text_conditioning=True
    )
    states, mask = text(2)
    out = text_video.eval()(frames, t, states, mask).sample
    null = torch.full_like(labels, 5)
    torch.testing.assert_close(out[:, :, 1], image(frames[:, :, 1], t, null).sample, atol=1e-5, rtol=1e-5)


def test_from_image_dit_refuses_full_attention(tiny_dit):
    with pytest.raises(ValueError, match="cannot start as the image model"):
        VideoDiTModel.from_image_dit(tiny_dit(), attention_layout="full")


def test_class_conditioning_and_missing_conditions():
    model = video_dit(conditioning="class")
    out = model(torch.randn(2, 4, 2, 8, 8), 5, class_labels=torch.tensor([0, 5])).sample  # 5 = the null class
    assert out.shape == (2, 8, 2, 8, 8) and model.has_null_class
    with pytest.raises(ValueError, match="class-conditioned: pass class_labels"):
        model(torch.randn(1, 4, 2, 8, 8), 5)
    with pytest.raises(ValueError, match="text-conditioned: pass encoder_hidden_states"):
        video_dit()(torch.randn(1, 4, 2, 8, 8), 5)
    with pytest.raises(ValueError, match="Unknown attention_layout 'diagonal'"):
        VideoDiTModel(attention_layout="diagonal")


def test_gradient_checkpointing_and_save_load(tmp_path):
    states, mask = text(1)
    video = torch.randn(1, 4, 2, 8, 8)
    grads = []
    for checkpointing in (False, True):
        model = video_dit(attention_layout="interleaved")
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(video, 10, states, mask).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
    model.save_pretrained(tmp_path)
    loaded = VideoDiTModel.from_pretrained(tmp_path)
    assert loaded.config.attention_layout == "interleaved"
    torch.testing.assert_close(loaded(video, 10, states, mask).sample, model(video, 10, states, mask).sample)


def test_pooled_text_is_the_masked_mean_and_conditions_adaln():
    from dit_pipelines.models.video_dit import pooled_text

    states, mask = torch.randn(2, 5, 16, dtype=torch.float64), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(pooled_text(states, mask), torch.stack([states[0, :2].mean(0), states[1].mean(0)]))
    model = video_dit(pooled_text_conditioning=True, random=False)
    assert model(torch.randn(1, 4, 2, 8, 8), 10, *text(1)).sample.abs().max() == 0  # adaLN-Zero still holds
    randomize_(model, std=0.1)
    for block in model.blocks:  # without cross-attention, the text still reaches the output through adaLN
        block.cross_attn.proj.weight.data.zero_()
        block.cross_attn.proj.bias.data.zero_()
    video, (a, mask), (b, _) = torch.randn(1, 4, 2, 8, 8), text(1, seed=0), text(1, seed=1)
    assert not torch.allclose(model(video, 10, a, mask).sample, model(video, 10, b, mask).sample)


@pytest.mark.parametrize("mixing", [Mixing.SPACE, Mixing.TIME, Mixing.FULL])
def test_attention_mixings_match_a_loop_over_frames_or_locations(mixing):
    """Each mixing against its definition, written as a loop in float64: one attention per frame (space), per
    location with temporal positions added (time), or over the whole clip with them (full)."""
    from dit_pipelines.models.video_blocks import VideoDiTBlock, attend

    b, frames, s, d = 2, 3, 4, 16
    block = randomize_(VideoDiTBlock(d, 2, 4.0, mixing, cross_attention=False)).double()
    h, pos = torch.randn(b, frames * s, d, dtype=torch.float64), torch.randn(1, frames, 1, d, dtype=torch.float64)
    per_token = pos.expand(1, frames, s, d).flatten(1, 2)  # the full mixing takes one row per token
    out = attend(block.attn, h, mixing, frames, per_token if mixing is Mixing.FULL else pos).view(b, frames, s, d)
    grid = h.view(b, frames, s, d)
    if mixing is Mixing.SPACE:
        expected = torch.stack([block.attn(grid[:, f]) for f in range(frames)], 1)
    elif mixing is Mixing.TIME:
        expected = torch.stack([block.attn(grid[:, :, i] + pos[:, :, 0]) for i in range(s)], 2)
    else:
        expected = block.attn((grid + pos).reshape(b, frames * s, d)).view(b, frames, s, d)
    torch.testing.assert_close(out, expected)


def test_temporal_blocks_without_cross_attention_as_in_latte():
    model = video_dit(attention_layout="interleaved", temporal_cross_attention=False)
    assert [block.cross_attn is not None for block in model.blocks] == [True, False] * model.config.depth
    assert model(torch.randn(2, 4, 3, 8, 8), 10, *text(2)).sample.shape == (2, 8, 3, 8, 8)
    with pytest.raises(ValueError, match="interleaved"):
        video_dit(attention_layout="factorized", temporal_cross_attention=False)
