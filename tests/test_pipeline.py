import json
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler, DiTImagePipeline
from dit_pipelines.pipelines.denoising import guide

DIGITS = {i: f"digit {i}, number {i}" for i in range(10)}


@pytest.fixture
def pixel_pipe(tiny_dit):
    """A pixel-space pipeline: 3-channel 8x8 images."""
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDPMScheduler(), id2label=DIGITS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=0.5,
    ).eval()


@pytest.fixture
def latent_pipe(tiny_dit):
    """A latent pipeline: 4x8x8 latents, VAE factor 2, 16x16 images."""
    pipe = DiTImagePipeline(tiny_dit(), DiTDDPMScheduler(timestep_respacing="4"), vae=tiny_vae(), id2label=DIGITS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_output_types(pixel_pipe):
    kwargs = dict(class_labels=[1, 2], num_inference_steps=3)
    pil = pixel_pipe(**kwargs, generator=torch.manual_seed(0)).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (8, 8) and len(pil) == 2
    np_images = pixel_pipe(**kwargs, output_type="np", generator=torch.manual_seed(0)).images
    assert np_images.shape == (2, 8, 8, 3) and np_images.min() >= 0 and np_images.max() <= 1
    np.testing.assert_array_equal(np.asarray(pil[1]), (np_images[1] * 255).round().astype(np.uint8))
    pt = pixel_pipe(**kwargs, output_type="pt", generator=torch.manual_seed(0)).images
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)
    (latents,) = pixel_pipe(**kwargs, output_type="latent", generator=torch.manual_seed(0), return_dict=False)
    torch.testing.assert_close((latents / 2 + 0.5).clamp(0, 1), pt)


def test_vae_decoding_uses_its_scaling_factor(latent_pipe):
    latents = latent_pipe(3, output_type="latent", generator=torch.manual_seed(0)).images
    images = latent_pipe(3, output_type="pt", generator=torch.manual_seed(0)).images
    assert latents.shape == (1, 4, 8, 8) and images.shape == (1, 3, 16, 16)
    with torch.no_grad():
        decoded = latent_pipe.vae.decode(latents / 0.5).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))
    assert latent_pipe.scheduler.num_inference_steps == 4  # the scheduler's configured respacing


def test_default_number_of_steps_without_a_configured_respacing(pixel_pipe):
    pixel_pipe(1, output_type="latent", generator=torch.manual_seed(0))
    assert pixel_pipe.scheduler.num_inference_steps == 50


def test_names_indices_and_images_per_prompt(pixel_pipe):
    by_name = pixel_pipe(
        ["Digit 3", "number 7"],
        num_inference_steps=2,
        output_type="pt",
        num_images_per_prompt=2,
        generator=torch.manual_seed(0),
    ).images
    by_index = pixel_pipe(
        torch.tensor([3, 7]),
        num_inference_steps=2,
        output_type="pt",
        num_images_per_prompt=2,
        generator=torch.manual_seed(0),
    ).images
    assert by_name.shape[0] == 4
    torch.testing.assert_close(by_name, by_index, rtol=0, atol=0)
    assert pixel_pipe.get_label_ids("digit 3") == [3]  # a string is one name, not characters
    assert pixel_pipe.get_label_ids(["number 1", "digit 2"]) == [1, 2]


def test_guidance_combines_predictions_and_keeps_the_conditional_variance():
    cond, uncond = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    out = guide(torch.cat([uncond, cond]), 4.0, channels=4)
    torch.testing.assert_close(out[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])
    original = guide(torch.cat([uncond, cond]), 4.0, channels=4, guidance_channels=3)
    torch.testing.assert_close(original[:, :3], out[:, :3])
    torch.testing.assert_close(original[:, 3:], cond[:, 3:])  # the 4th channel and the variance: conditional


def test_guidance_changes_samples_and_scale_one_means_no_guidance(pixel_pipe):
    def sample(scale, **kw):
        return pixel_pipe(
            5, guidance_scale=scale, num_inference_steps=3, output_type="pt", generator=torch.manual_seed(0), **kw
        ).images

    assert not torch.allclose(sample(1.0), sample(4.0))
    assert not torch.allclose(sample(4.0), sample(4.0, guidance_channels=2))
    calls = []
    pixel_pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(len(out.sample)), with_kwargs=True
    )
    sample(1.0)
    sample(4.0)
    assert calls == [1] * 3 + [2] * 3  # the doubled batch only with guidance


@pytest.mark.parametrize(
    "scheduler, channels_given",
    [
        (DiTDDPMScheduler(), 8),
        (DiTDDPMScheduler(variance_type="fixed_large"), 4),
        (DiTDDIMScheduler(), 4),
        (DDPMScheduler(variance_type="learned_range"), 8),
        (DPMSolverMultistepScheduler(), 4),
    ],
)
def test_variance_channels_go_only_to_schedulers_that_sample_with_them(latent_pipe, scheduler, channels_given):
    pipe = DiTImagePipeline(latent_pipe.transformer, scheduler, vae=latent_pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    given = []
    step = scheduler.step
    scheduler.step = lambda model_output, *args, **kwargs: (
        given.append(model_output.shape[1]) or step(model_output, *args, **kwargs)
    )
    images = pipe([0, 1], num_inference_steps=4, output_type="np", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    assert given == [channels_given] * 4


def test_half_precision_transformer_keeps_the_chain_in_float32(latent_pipe):
    reference = latent_pipe(2, output_type="latent", generator=torch.manual_seed(0)).images
    latent_pipe.transformer.to(torch.bfloat16)
    seen = []
    images = latent_pipe(
        2,
        output_type="latent",
        generator=torch.manual_seed(0),
        callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"].dtype) or {},
    ).images
    assert set(seen) == {torch.float32} and images.dtype == torch.float32
    assert (images - reference).abs().max() < 0.1 * reference.abs().max()


def test_generator_lists_are_one_per_image(pixel_pipe):
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    pair = pixel_pipe([3, 3], num_inference_steps=2, output_type="pt", generator=generators).images
    alone = pixel_pipe(3, num_inference_steps=2, output_type="pt", generator=[torch.Generator().manual_seed(2)]).images
    assert not torch.allclose(pair[0], pair[1])
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=1e-5)


def test_callbacks_can_read_and_change_the_guidance_scale(pixel_pipe):
    scales = []

    def cutoff(pipe, i, t, kwargs):
        scales.append(pipe.guidance_scale)
        pipe._guidance_scale = 1.0  # diffusers' CFG cut-off callbacks do this
        return {}

    pixel_pipe(1, guidance_scale=5.0, num_inference_steps=3, output_type="pt", callback_on_step_end=cutoff)
    assert scales == [5.0, 1.0, 1.0] and pixel_pipe.num_timesteps == 3


def test_ddim_eta_is_passed_to_the_scheduler(pixel_pipe):
    pipe = DiTImagePipeline(pixel_pipe.transformer, DiTDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(eta, seed):
        latents = torch.ones(1, 3, 8, 8)
        kwargs = dict(eta=eta, num_inference_steps=4, output_type="pt", latents=latents)
        return pipe(1, generator=torch.manual_seed(seed), **kwargs).images

    torch.testing.assert_close(run(0.0, 0), run(0.0, 1), rtol=0, atol=0)  # deterministic given x_T
    assert not torch.allclose(run(1.0, 0), run(1.0, 1))


def test_callback_on_step_end_sees_and_replaces_latents(pixel_pipe):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((i, int(t), kwargs["latents"].shape))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else {}

    images = pixel_pipe(
        1, num_inference_steps=3, output_type="latent", callback_on_step_end=callback, generator=torch.manual_seed(0)
    ).images
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 3, 8, 8)
    assert torch.count_nonzero(images) == 0


def test_given_latents_are_used(pixel_pipe):
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    a = pixel_pipe(
        [1, 2], latents=latents, num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)
    ).images
    b = pixel_pipe(
        [1, 2], latents=latents, num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)
    ).images
    c = pixel_pipe([1, 2], num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_save_and_load_in_a_fresh_process_gives_identical_images(tmp_path, latent_pipe):
    latent_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DiTImagePipeline"
    assert index["transformer"] == ["dit_pipelines", "DiTModel"]
    assert index["scheduler"] == ["dit_pipelines", "DiTDDPMScheduler"]
    assert (tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    expected = latent_pipe(["digit 4", 9], output_type="np", generator=torch.manual_seed(42)).images
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        import dit_pipelines
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r})
        assert type(pipe).__name__ == "DiTImagePipeline", type(pipe)
        assert type(pipe.transformer).__name__ == "DiTModel" and pipe.vae is not None
        assert pipe.id2label[4] == "digit 4, number 4"
        images = pipe(["digit 4", 9], output_type="np", generator=torch.manual_seed(42)).images
        np.save({str(tmp_path / "images.npy")!r}, images)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)


def test_pixel_space_pipeline_without_vae_round_trips(tmp_path, pixel_pipe):
    pixel_pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.vae is None and isinstance(loaded, DiTImagePipeline)
    loaded.set_progress_bar_config(disable=True)
    a = loaded(2, num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    b = pixel_pipe(2, num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    np.testing.assert_array_equal(a, b)


def test_guidance_interval_guides_only_inside_it(pixel_pipe):
    pixel_pipe.scheduler = DiTDDPMScheduler(timestep_respacing="5")  # timesteps 999, 749, 500, 250, 0
    batches = []
    pixel_pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: batches.append(len(out.sample)), with_kwargs=True
    )

    def run(**kwargs):
        return pixel_pipe(2, output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs).images

    inside = run(guidance_scale=4.0, guidance_interval=(250, 749))
    assert batches == [1, 2, 2, 2, 1]  # guided at 749, 500 and 250 only
    everywhere = run(guidance_scale=4.0, guidance_interval=(0, 999))
    unguided = run(guidance_scale=1.0)
    torch.testing.assert_close(everywhere, run(guidance_scale=4.0), rtol=0, atol=0)
    assert not torch.allclose(inside, everywhere) and not torch.allclose(inside, unguided)


def test_a_transformer_in_training_mode_samples_as_in_eval_mode(tiny_dit):
    """A freshly built model is in training mode (and so is one sampled in the middle of a training loop): no label
    is dropped while sampling, so the same generator gives the same images, equal to the eval-mode ones."""
    model = tiny_dit(class_dropout_prob=0.5).train()
    pipe = DiTImagePipeline(model, DiTDDPMScheduler(timestep_respacing="5"), id2label=DIGITS)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe([1, 2, 3, 4], guidance_scale=3.0, generator=torch.manual_seed(0), output_type="pt").images

    first, second = sample(), sample()
    assert model.training
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(sample(), first, rtol=0, atol=0)


@pytest.mark.parametrize(
    "solver", [DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler, SASolverScheduler]
)
def test_diffusers_solvers_swapped_in_with_from_config_sample_a_latent_dit(latent_pipe, solver):
    """`from_config` of the DiT scheduler's config hands DPM-Solver its variance_type="learned_range", which it read
    as 'keep 3 channels': a 4-channel latent DiT failed with a size mismatch."""
    latent_pipe.scheduler = solver.from_config(latent_pipe.scheduler.config)
    images = latent_pipe([1, 2], num_inference_steps=5, output_type="np", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    assert getattr(latent_pipe.scheduler.config, "variance_type", None) is None
