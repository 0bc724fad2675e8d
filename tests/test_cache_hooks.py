"""diffusers' own cache hooks (`transformer.enable_cache(...)`) on both pipelines: FirstBlockCache, TaylorSeer,
MagCache (from its own calibration), PyramidAttentionBroadcast and FasterCache. For each: it skips work and
changes the samples; the steps it does not cache are exact; its no-op setting (a zero threshold, a skip range of
1, ...) reproduces the uncached samples; its state is reset between pipeline calls."""

import contextlib
import io
import re

import pytest
import torch
from diffusers import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.hooks._helpers import TransformerBlockRegistry

import dit_pipelines.models.attention as attention_module
from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTTextToVideoPipeline
from dit_pipelines.models.dit_transformer import DiTBlock
from dit_pipelines.models.video_blocks import VideoDiTBlock

from .test_video_pipeline import components  # noqa: F401 (fixture)

STEPS = 8
EVERYWHERE = (-1, 1001)  # a timestep range holding every timestep


@pytest.fixture(params=["image", "video"])
def pipe(request, tiny_dit, tiny_video_dit, components):  # noqa: F811
    scheduler = DiTDDPMScheduler(timestep_respacing=str(STEPS))
    if request.param == "image":
        pipe = DiTImagePipeline(tiny_dit(in_channels=3, depth=3), scheduler)
    else:  # spatial, temporal and cross-attention in every block
        parts = {k: components[k] for k in ("tokenizer", "text_encoder", "vae")}
        pipe = DiTTextToVideoPipeline(**parts, transformer=tiny_video_dit(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class AttentionCalls:
    """Counts the attention computations (calls of `dispatch_attention_fn`), which every cache hook saves."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = attention_module.dispatch_attention_fn

        def counting(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(attention_module, "dispatch_attention_fn", counting)


def sample(pipe, calls: AttentionCalls):
    """The output and the latents after each step of a guided call, and the attention computations it made."""
    steps = []

    def record(pipe, i, t, tensors):
        steps.append(tensors["latents"].clone())
        return tensors

    calls.count = 0
    conditioning = [1, 2] if isinstance(pipe, DiTImagePipeline) else ["the digit 3 moves up", "the digit 5 moves left"]
    out = pipe(
        conditioning,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=record,
    )
    out = out.images if isinstance(pipe, DiTImagePipeline) else out.frames
    return out, steps, calls.count


def calibrated_mag_ratios(pipe) -> list:
    """MagCache's calibration run (no skipping) prints the ratios to pass as `mag_ratios`: read them as a user
    copies them."""
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sample(pipe, AttentionCalls(pytest.MonkeyPatch()))
    pipe.transformer.disable_cache()
    return [float(x) for x in re.findall(r"\[([^\]]*)\]\s*$", printed.getvalue())[0].split(",")]


def configs(pipe, kind: str):
    """(a setting that caches, its no-op setting, the steps the caching setting computes exactly) for a hook."""
    now = lambda: pipe.current_timestep  # noqa: E731
    if kind == "first_block":
        return FirstBlockCacheConfig(threshold=1e6), FirstBlockCacheConfig(threshold=0.0), 1
    if kind == "taylorseer":
        cached = TaylorSeerCacheConfig(
            cache_interval=3, disable_cache_before_step=2, taylor_factors_dtype=torch.float32
        )
        return cached, TaylorSeerCacheConfig(cache_interval=1, disable_cache_before_step=0), 2
    if kind == "mag":
        ratios = calibrated_mag_ratios(pipe)
        assert len(ratios) == STEPS and ratios[0] == 1.0
        cached = MagCacheConfig(
            threshold=1e6, max_skip_steps=2, retention_ratio=0.25, num_inference_steps=STEPS, mag_ratios=ratios
        )
        exact = MagCacheConfig(threshold=0.0, retention_ratio=0.0, num_inference_steps=STEPS, mag_ratios=ratios)
        return cached, exact, 2  # int(0.25 * 8 + 0.5) = 2 retained steps
    if kind == "pyramid_attention_broadcast":

        def pab(skip):
            return PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=skip,
                spatial_attention_timestep_skip_range=EVERYWHERE,
                cross_attention_block_skip_range=skip,
                cross_attention_timestep_skip_range=EVERYWHERE,
                current_timestep_callback=now,
            )

        return pab(3), pab(1), 1
    if kind == "faster":

        def faster(skip):
            return FasterCacheConfig(
                spatial_attention_block_skip_range=skip,
                spatial_attention_timestep_skip_range=EVERYWHERE,
                unconditional_batch_skip_range=skip,
                unconditional_batch_timestep_skip_range=EVERYWHERE,
                attention_weight_callback=lambda _: 0.5,
                current_timestep_callback=now,
            )

        return faster(2), faster(1), 1
    raise ValueError(kind)


HOOKS = ["first_block", "taylorseer", "mag", "pyramid_attention_broadcast", "faster"]


@pytest.mark.filterwarnings("ignore:.*FasterCache.*")
@pytest.mark.parametrize("kind", HOOKS)
def test_cache_hook_skips_work_keeps_uncached_steps_exact_and_resets_between_calls(pipe, kind, monkeypatch):
    calls = AttentionCalls(monkeypatch)
    exact_out, exact_steps, full_work = sample(pipe, calls)
    cached_config, noop_config, exact_prefix = configs(pipe, kind)

    pipe.transformer.enable_cache(cached_config)
    out, steps, work = sample(pipe, calls)
    again, _, work_again = sample(pipe, calls)  # state reset between calls: the same chain again
    pipe.transformer.disable_cache()
    assert work < full_work and not torch.allclose(out, exact_out, atol=1e-3)
    for step in range(exact_prefix):
        torch.testing.assert_close(steps[step], exact_steps[step], rtol=0, atol=0)
    assert not torch.equal(steps[exact_prefix], exact_steps[exact_prefix])
    assert work_again == work
    torch.testing.assert_close(again, out, rtol=0, atol=0)

    pipe.transformer.enable_cache(noop_config)
    same, _, work = sample(pipe, calls)
    pipe.transformer.disable_cache()
    assert work == full_work
    torch.testing.assert_close(same, exact_out, rtol=0, atol=1e-6)

    restored, _, work = sample(pipe, calls)  # disabling removes every hook
    assert work == full_work
    torch.testing.assert_close(restored, exact_out, rtol=0, atol=0)


def test_our_blocks_are_in_diffusers_block_registry():
    for block in (DiTBlock, VideoDiTBlock):
        metadata = TransformerBlockRegistry.get(block)
        assert metadata.return_hidden_states_index == 0 and metadata.return_encoder_hidden_states_index is None


def test_faster_cache_config_is_completed_for_the_model_not_changed(tiny_dit):
    model = tiny_dit()
    config = FasterCacheConfig(current_timestep_callback=lambda: 500)
    model.enable_cache(config)
    used = model._cache_config
    model.disable_cache()
    assert used.tensor_format == "BCHW" and "class_labels" in used._unconditional_conditional_input_kwargs_identifiers
    assert (
        config.tensor_format == "BCFHW"
        and "class_labels" not in config._unconditional_conditional_input_kwargs_identifiers
    )


@pytest.mark.parametrize("kind", HOOKS)
def test_a_hook_is_refused_where_guidance_covers_only_some_steps(pipe, kind):
    """The hooks keep a state per kind of call (or one for both): a chain whose batch changes size between steps
    would feed them stale outputs or misaligned step counts."""
    pipe.transformer.enable_cache(configs(pipe, kind)[0])
    conditioning = [1, 2] if isinstance(pipe, DiTImagePipeline) else ["the digit 3 moves up"]
    try:
        with pytest.raises(ValueError, match="guidance_interval"):
            pipe(conditioning, guidance_scale=3.0, guidance_interval=(300, 700), output_type="latent")
        with pytest.raises(ValueError, match="would both cache"):
            pipe(conditioning, guidance_scale=3.0, cache_interval=2, output_type="latent")
        if kind == "faster":
            with pytest.raises(ValueError, match="is_guidance_distilled"):
                pipe(conditioning, guidance_scale=1.0, output_type="latent")
    finally:
        pipe.transformer.disable_cache()


def test_a_guided_batch_is_unconditional_then_conditional(tiny_dit):
    """diffusers' order, which FasterCache's split relies on: the null class first."""
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDPMScheduler(timestep_respacing="2"))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["class_labels"]), with_kwargs=True)
    pipe([3, 7], guidance_scale=4.0)
    null = pipe.transformer.config.num_classes
    assert all(labels.tolist() == [null, null, 3, 7] for labels in seen) and len(seen) == 2


@pytest.mark.parametrize("layout", ["interleaved", "factorized"])
def test_attention_hooks_find_spatial_temporal_and_cross_attention_by_the_models_names(tiny_video_dit, layout):
    model = tiny_video_dit(attention_layout=layout)
    model.enable_cache(
        PyramidAttentionBroadcastConfig(temporal_attention_block_skip_range=2, current_timestep_callback=int)
    )
    hooked = {
        name for name, m in model.named_modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
    }
    model.disable_cache()
    if layout == "factorized":
        expected = {f"blocks.{i}.temporal_attn" for i in range(2)}
    else:  # the time blocks' only attention
        expected = {f"blocks.{i}.attn" for i in (1, 3)}
    assert hooked == expected
