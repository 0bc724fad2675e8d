"""Feature caching (FORA): off by default, exact at interval 1, and at a reuse call exactly the cached features
combined with the current step's adaLN gates."""

import pytest
import torch

from dit_pipelines import DiTDDIMScheduler, DiTImagePipeline, VideoDiTModel
from dit_pipelines.models import FeatureCache

from .conftest import CallCounter, check_caching_every_k_steps, randomize_


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)


def block_layers(model):
    """The layers a reuse call skips: every block's attention(s) and MLP."""
    names = ("attn", "temporal_attn", "cross_attn", "mlp")
    return [getattr(block, name) for block in model.blocks for name in names if getattr(block, name, None) is not None]


@pytest.mark.parametrize("interval", [0, -2, 2.5, True, "3"])
def test_the_interval_must_be_a_positive_integer(interval):
    with pytest.raises(ValueError, match="positive integer"):
        FeatureCache(interval)


def test_interval_one_is_the_uncached_model(tiny_dit):
    model, (x, y), cache = tiny_dit(), inputs(), FeatureCache(1)
    with torch.no_grad():
        for t in (999, 700, 400, 10):
            cached = model(x, t, y, feature_cache=cache).sample
            torch.testing.assert_close(cached, model(x, t, y).sample, rtol=0, atol=0)
    assert (cache.computed_calls, cache.reused_calls) == (4, 0)


def test_refresh_calls_are_exact_and_reuse_calls_skip_attention_and_mlp(tiny_dit):
    model, (x, y), cache = tiny_dit(), inputs(), FeatureCache(3)
    with torch.no_grad():
        for call, t in enumerate((999, 950, 900, 850, 800)):
            with CallCounter(block_layers(model)) as layers:
                cached = model(x + 0.01 * call, t, y, feature_cache=cache).sample
            if call % 3 == 0:  # refresh: all blocks computed, nothing approximated
                assert layers.count == 2 * len(model.blocks)
                torch.testing.assert_close(cached, model(x + 0.01 * call, t, y).sample, rtol=0, atol=0)
            else:
                assert layers.count == 0
    assert (cache.computed_calls, cache.reused_calls) == (2, 3)


def test_a_reuse_call_combines_the_cached_features_with_this_steps_gates(tiny_dit):
    """Recompute a reuse call in float64 by hand: the blocks' attention and MLP outputs recorded at the refresh call,
    the adaLN gates, the patch embedding and the final layer of the new input and timestep."""
    model, (x, y), cache = tiny_dit(), inputs(), FeatureCache(2)
    recorded = {}
    hooks = [
        module.register_forward_hook(lambda m, a, out, key=(i, name): recorded.__setitem__(key, out.double()))
        for i, block in enumerate(model.blocks)
        for name, module in (("attn", block.attn), ("mlp", block.mlp))
    ]
    with torch.no_grad():
        model(x, 999, y, feature_cache=cache)
        for hook in hooks:
            hook.remove()
        x2, t2 = x + 0.1 * torch.randn_like(x), torch.tensor([900, 900])
        cached = model(x2, t2, y, feature_cache=cache).sample

        reference = model.double()
        tokens = reference.patch_embed(x2.double()).flatten(2).transpose(1, 2) + reference.pos_embed
        condition = reference.condition(t2, y)
        for i, block in enumerate(reference.blocks):
            gates = block.modulation(condition)[:, None].chunk(6, dim=-1)
            tokens = tokens + gates[2] * recorded[(i, "attn")] + gates[5] * recorded[(i, "mlp")]
        out = reference.final_layer(tokens, condition).reshape(2, 4, 4, 2, 2, 8)
        expected = torch.einsum("nhwpqc->nchpwq", out).reshape(2, 8, 8, 8)
    torch.testing.assert_close(cached.double(), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(cached.double(), reference(x2.double(), t2, y).sample, atol=1e-3)  # an approximation


def test_a_change_of_input_shape_recomputes_the_features(tiny_dit):
    """Guidance switched off between two calls halves the batch, another resolution changes the token count: stored
    features of another shape are not used."""
    model, cache = tiny_dit(), FeatureCache(4)
    x, y = inputs(batch=4)
    with torch.no_grad():
        model(x, 999, y, feature_cache=cache)
        half = model(x[:2], 990, y[:2], feature_cache=cache).sample
        torch.testing.assert_close(half, model(x[:2], 990, y[:2]).sample, rtol=0, atol=0)
        larger = torch.randn(2, 4, 12, 12)
        torch.testing.assert_close(
            model(larger, 980, y[:2], feature_cache=cache).sample, model(larger, 980, y[:2]).sample
        )
        model(larger, 970, y[:2], feature_cache=cache)  # the same shape again: reused
    assert (cache.computed_calls, cache.reused_calls) == (3, 1)


def test_a_cache_is_refused_while_gradients_are_enabled(tiny_dit):
    """Stored features would keep their autograd graphs and tie a later backward to an earlier call."""
    model, (x, y) = tiny_dit(), inputs()
    with pytest.raises(ValueError, match="torch.no_grad"):
        model(x, 10, y, feature_cache=FeatureCache(2))


def test_the_pipeline_caches_only_when_asked(tiny_dit):
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(**kwargs):
        with CallCounter(block_layers(pipe.transformer)) as layers:
            images = pipe([1, 2], num_inference_steps=7, generator=torch.manual_seed(0), output_type="pt", **kwargs)
        return images.images, layers.count // (2 * len(pipe.transformer.blocks))

    check_caching_every_k_steps(run)


def test_caching_with_a_guidance_interval_recomputes_where_guidance_starts_and_stops(tiny_dit):
    """With guidance on only inside (250, 749) the batch doubles at step 1 and halves at step 4: both recompute."""
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    batches = []
    pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: batches.append(len(out.sample)), with_kwargs=True
    )
    with CallCounter([pipe.transformer.blocks[0].attn]) as attention:
        pipe(
            [1], num_inference_steps=5, guidance_interval=(250, 749), cache_interval=10, generator=torch.manual_seed(0)
        )
    assert batches == [1, 2, 2, 2, 1]  # timesteps 999, 749, 500, 250, 0
    assert attention.count == 3  # steps 0 (first), 1 (batch doubled) and 4 (batch halved)


@pytest.mark.parametrize("layout", ["interleaved", "factorized", "full"])
def test_the_video_model_is_exact_on_refresh_calls_and_skips_its_layers_on_reuse_calls(layout):
    torch.manual_seed(0)
    model = VideoDiTModel(
        sample_size=8, sample_frames=2, hidden_size=32, depth=2, num_heads=4, text_embed_dim=16, attention_layout=layout
    )
    model = randomize_(model.eval(), std=0.1)
    x, text, cache = torch.randn(2, 4, 2, 8, 8), torch.randn(2, 5, 16), FeatureCache(2)
    with torch.no_grad():
        for call, t in enumerate((900, 850, 800)):
            with CallCounter(block_layers(model)) as layers:
                out = model(x + 0.01 * call, t, encoder_hidden_states=text, feature_cache=cache).sample
            if call % 2 == 0:
                assert layers.count == len(block_layers(model))
                torch.testing.assert_close(
                    out, model(x + 0.01 * call, t, encoder_hidden_states=text).sample, rtol=0, atol=0
                )
            else:
                assert layers.count == 0
