import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
from diffusers.utils import export_to_gif, export_to_video

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler, DiTTextToVideoPipeline, VideoDiTModel
from examples.mnist.text_encoder import small_t5_encoder, train_t5_tokenizer

from .conftest import CallCounter, check_caching_every_k_steps, randomize_

CAPTIONS = [f"the digit {d} moves {w}" for d in range(10) for w in ("up", "down", "left", "right")]


@pytest.fixture(scope="module")
def components():
    tokenizer = train_t5_tokenizer(CAPTIONS, vocab_size=64, model_max_length=24)
    text_encoder = small_t5_encoder(len(tokenizer), d_model=16, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.6,
    ).eval()
    transformer = VideoDiTModel(
        sample_size=4,
        sample_frames=3,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=1,
        num_heads=4,
        text_embed_dim=16,
    )
    randomize_(transformer, std=0.1)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer.eval(), vae=vae)


@pytest.fixture
def pipe(components):
    pipe = DiTTextToVideoPipeline(**components, scheduler=DiTDDPMScheduler(timestep_respacing="3"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt="the digit 3 moves up", **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs).frames


def test_output_types_follow_diffusers_video_convention(pipe, tmp_path):
    video = run(pipe, ["the digit 3 moves up", "the digit 5 moves left"])
    assert video.shape == (2, 3, 8, 8, 1) and video.min() >= 0 and video.max() <= 1
    pil = run(pipe, ["the digit 3 moves up", "the digit 5 moves left"], output_type="pil")
    assert len(pil) == 2 and len(pil[0]) == 3 and isinstance(pil[0][0], PIL.Image.Image)
    np.testing.assert_array_equal(np.asarray(pil[1][2]), (video[1, 2, ..., 0] * 255).round().astype(np.uint8))
    pt = run(pipe, ["the digit 3 moves up", "the digit 5 moves left"], output_type="pt")
    assert pt.shape == (2, 3, 1, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), video, atol=1e-6)
    latents = run(pipe, output_type="latent")
    assert latents.shape == (1, 4, 3, 4, 4)
    export_to_gif(pil[0], str(tmp_path / "clip.gif"))
    export_to_video(list(np.repeat(video[0], 3, axis=-1)), str(tmp_path / "clip.mp4"), fps=4)
    assert (tmp_path / "clip.gif").stat().st_size > 0 and (tmp_path / "clip.mp4").stat().st_size > 0


def test_decoding_in_chunks_and_other_frame_counts(pipe):
    whole = run(pipe, num_frames=5)
    chunked = run(pipe, num_frames=5, decode_chunk_size=2)
    assert whole.shape == (1, 5, 8, 8, 1)  # the model saw 3 frames in training
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_prompt_embeds_give_the_same_video_as_the_prompt(pipe):
    embeds, mask, negative, negative_mask = pipe.encode_prompt("the digit 7 moves down", "", True)
    from_embeds = pipe(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask,
        generator=torch.Generator().manual_seed(0),
    ).frames
    np.testing.assert_array_equal(from_embeds, run(pipe, "the digit 7 moves down"))
    assert not np.allclose(run(pipe, "the digit 7 moves down"), run(pipe, "the digit 2 moves up"))


def test_guidance_doubles_the_batch_and_num_videos_per_prompt(pipe):
    sizes = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: sizes.append(len(out.sample)), with_kwargs=True
    )
    run(pipe, guidance_scale=1.0, num_videos_per_prompt=2)
    run(pipe, guidance_scale=5.0, num_videos_per_prompt=2)
    hook.remove()
    assert sizes == [2] * 3 + [4] * 3


@pytest.mark.parametrize("scheduler", [DiTDDIMScheduler(), DPMSolverMultistepScheduler()])
def test_other_schedulers(components, scheduler):
    pipe = DiTTextToVideoPipeline(**components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    video = run(pipe, num_inference_steps=3)
    assert video.shape == (1, 3, 8, 8, 1) and np.isfinite(video).all()


def test_callback_on_step_end(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(kwargs["latents"].shape)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    latents = run(pipe, output_type="latent", callback_on_step_end=callback)
    assert seen == [(1, 4, 3, 4, 4)] * 3 and torch.count_nonzero(latents) == 0


def test_save_and_load_in_a_fresh_process_gives_identical_frames(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    expected = run(pipe, "the digit 4 moves right")
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        import dit_pipelines
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r})
        assert type(pipe).__name__ == "DiTTextToVideoPipeline", type(pipe)
        assert type(pipe.transformer).__name__ == "VideoDiTModel"
        assert type(pipe.text_encoder).__name__ == "T5EncoderModel"
        frames = pipe("the digit 4 moves right", generator=torch.Generator().manual_seed(0)).frames
        np.save({str(tmp_path / "frames.npy")!r}, frames)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy"), expected)


def test_bad_inputs(pipe, components):
    embeds, mask, _, _ = pipe.encode_prompt("the digit 1 moves up", "", False)
    with pytest.raises(ValueError, match="exactly one of `prompt` and `prompt_embeds`"):
        pipe("the digit 1 moves up", prompt_embeds=embeds, prompt_attention_mask=mask)
    with pytest.raises(ValueError, match="need their `prompt_attention_mask`"):
        pipe(prompt_embeds=embeds)
    with pytest.raises(ValueError, match="positive multiples of 4"):
        pipe("x", height=10)
    with pytest.raises(ValueError, match="Unknown output_type 'gif'"):
        pipe("x", output_type="gif")
    with pytest.raises(ValueError, match="Got 2 negative prompts for 1 prompts"):
        pipe("x", negative_prompt=["a", "b"])
    with pytest.raises(ValueError, match="num_frames must be a positive multiple of the temporal patch size 2"):
        tubelets = VideoDiTModel(
            sample_size=4,
            patch_size=2,
            temporal_patch_size=2,
            in_channels=4,
            hidden_size=32,
            depth=1,
            num_heads=4,
            text_embed_dim=16,
        )
        DiTTextToVideoPipeline(
            components["tokenizer"], components["text_encoder"], tubelets, DiTDDPMScheduler(), components["vae"]
        )("x", num_frames=5)
    with pytest.raises(ValueError, match="must have the same shape"):  # batch sizes of prompt and negative differ
        pipe(
            prompt_embeds=embeds,
            prompt_attention_mask=mask,
            negative_prompt_embeds=embeds.repeat(2, 1, 1),
            negative_prompt_attention_mask=mask.repeat(2, 1),
        )
    with pytest.raises(ValueError, match="The text embeddings are 8 wide, but the transformer takes text_embed_dim=16"):
        pipe(prompt_embeds=embeds[..., :8], prompt_attention_mask=mask)
    with pytest.raises(ValueError, match="encoder_hidden_states are 8 wide; this model takes text_embed_dim=16"):
        pipe.transformer(torch.zeros(1, 4, 3, 4, 4), 10, encoder_hidden_states=embeds[..., :8])
    class_model = VideoDiTModel(
        sample_size=4, in_channels=4, hidden_size=32, depth=1, num_heads=4, conditioning="class", num_classes=3
    )
    wrong = DiTTextToVideoPipeline(
        components["tokenizer"], components["text_encoder"], class_model, DiTDDPMScheduler(), components["vae"]
    )
    with pytest.raises(ValueError, match="needs a VideoDiTModel with conditioning='text'"):
        wrong("x")


def test_tokenizer_training_is_deterministic_across_processes():
    """The tokenizers trainer breaks score ties (and rounds scores) differently in each process; a resumed training
    run retrains the tokenizer, so its vocabulary must not depend on the process."""
    script = textwrap.dedent(f"""
        from examples.mnist.text_encoder import train_t5_tokenizer
        print(train_t5_tokenizer({CAPTIONS!r}, vocab_size=64).backend_tokenizer.to_str())
    """)
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and '"<pad>"' in runs[0]


def test_feature_caching_runs_the_blocks_every_k_steps_only(pipe):
    pipe.scheduler = DiTDDIMScheduler(timestep_respacing="ddim7")
    block = pipe.transformer.blocks[0]

    def frames(**kwargs):
        with CallCounter([block.attn, block.cross_attn, block.mlp]) as layers:
            return run(pipe, output_type="pt", **kwargs), layers.count // 3

    check_caching_every_k_steps(frames)


def test_a_video_transformer_in_training_mode_samples_as_in_eval_mode(components):
    transformer = components["transformer"].train()
    try:
        pipe = DiTTextToVideoPipeline(**components, scheduler=DiTDDPMScheduler(timestep_respacing="3"))
        pipe.set_progress_bar_config(disable=True)
        first, second = run(pipe, output_type="pt"), run(pipe, output_type="pt")
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        transformer.eval()
        torch.testing.assert_close(run(pipe, output_type="pt"), first, rtol=0, atol=0)
    finally:
        transformer.eval()
    # a class-conditioned video DiT drops no label in training mode either
    model = randomize_(
        VideoDiTModel(
            sample_size=4,
            sample_frames=2,
            in_channels=2,
            hidden_size=16,
            depth=1,
            num_heads=2,
            conditioning="class",
            num_classes=3,
            class_dropout_prob=0.5,
        )
    )
    x, labels = torch.randn(6, 2, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        training = model.train()(x, 500, class_labels=labels).sample
        torch.testing.assert_close(model.eval()(x, 500, class_labels=labels).sample, training, rtol=0, atol=0)
