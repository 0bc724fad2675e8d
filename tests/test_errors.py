"""Each input a user can get wrong raises a ValueError that says what was wrong and what is allowed."""

import pytest
import torch

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler, DiTImagePipeline, DiTModel

from .test_pipeline import DIGITS, tiny_vae


@pytest.fixture
def pipe(tiny_dit):
    pipe = DiTImagePipeline(tiny_dit(in_channels=4), DiTDDPMScheduler(), vae=tiny_vae(), id2label=DIGITS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_unknown_class_name(pipe):
    with pytest.raises(ValueError, match=r"Unknown class name\(s\) \['seven'\]; known names: digit 0"):
        pipe("seven", num_inference_steps=1)


def test_label_out_of_range(pipe):
    with pytest.raises(ValueError, match=r"Class labels must be in \[0, 9\], got \[10\]"):
        pipe([3, 10], num_inference_steps=1)
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        pipe(-1, num_inference_steps=1)


def test_size_not_divisible_by_the_patch_size(pipe):
    # 18 px = 9 latent pixels with the VAE's factor 2: not a whole number of 2x2 patches.
    with pytest.raises(ValueError, match=r"positive multiples of 4 \(VAE factor 2 x patch size 2\), got 18x16"):
        pipe(1, height=18, width=16, num_inference_steps=1)


def test_size_not_divisible_by_the_vae_factor(pipe):
    with pytest.raises(ValueError, match=r"positive multiples of 4 .* got 16x15"):
        pipe(1, height=16, width=15, num_inference_steps=1)


def test_model_input_not_divisible_by_the_patch_size(tiny_dit):
    with pytest.raises(ValueError, match=r"\(8x7\) must be divisible by the patch size 2"):
        tiny_dit()(torch.randn(1, 4, 8, 7), 1, torch.tensor([1]))


def test_guidance_without_a_null_class(tiny_dit):
    pipe = DiTImagePipeline(tiny_dit(in_channels=3, class_dropout_prob=0.0), DiTDDPMScheduler())
    with pytest.raises(ValueError, match="trained without a null class .* use guidance_scale <= 1"):
        pipe(1, guidance_scale=4.0, num_inference_steps=1)
    assert pipe(1, guidance_scale=1.0, num_inference_steps=1, output_type="pt").images.shape == (1, 3, 8, 8)


@pytest.mark.parametrize("scheduler_class", [DiTDDPMScheduler, DiTDDIMScheduler])
def test_learned_variance_output_given_to_a_fixed_variance_scheduler(scheduler_class):
    scheduler = scheduler_class(variance_type="fixed_small")
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="8 channels .* variance_type is 'fixed_small': use 'learned' or"):
        scheduler.step(torch.zeros(1, 8, 4, 4), scheduler.timesteps[0], torch.zeros(1, 4, 4, 4))


def test_prediction_only_output_given_to_a_learned_variance_scheduler():
    scheduler = DiTDDPMScheduler(variance_type="learned_range")
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="needs a model output with 2\\*C channels"):
        scheduler.step(torch.zeros(1, 4, 4, 4), scheduler.timesteps[0], torch.zeros(1, 4, 4, 4))


def test_more_inference_steps_than_training_steps(pipe):
    expected = r"num_inference_steps must be between 1 and the 1000 training steps, got 1001\."
    with pytest.raises(ValueError, match=expected):
        pipe(1, num_inference_steps=1001)
    with pytest.raises(
        ValueError, match=r"num_inference_steps \(1001\) cannot be larger than num_train_timesteps \(1000\)"
    ):
        DiTDDPMScheduler().set_timesteps(1001)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"Unknown DiT preset 'DiT-M/2'; choose one of DiT-S/2, DiT-S/4"):
        DiTModel.from_preset("DiT-M/2")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fast", "Unknown respacing spec 'fast'"),
        ("ddim0", "Unknown respacing spec 'ddim0'"),
        ("10,,20", "Unknown respacing spec '10,,20'"),
        ("2000", "cannot take 2000 steps from a section of 1000"),
        ("ddim999", "no integer stride gives exactly 999"),
    ],
)
def test_unknown_respacing_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        DiTDDPMScheduler(timestep_respacing=spec)


def test_unknown_scheduler_options():
    with pytest.raises(ValueError, match="Unknown variance_type 'learned_small'; choose one of fixed_small"):
        DiTDDPMScheduler(variance_type="learned_small")
    with pytest.raises(ValueError, match="Unknown beta_schedule 'cosine'"):
        DiTDDIMScheduler(beta_schedule="cosine")


def test_unknown_output_type(pipe):
    with pytest.raises(ValueError, match="Unknown output_type 'jpeg'; choose one of pil, np, pt, latent"):
        pipe(1, output_type="jpeg", num_inference_steps=1)


def test_latents_of_the_wrong_shape(pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 4, 8, 8\)"):
        pipe([1, 2], latents=torch.zeros(1, 4, 8, 8), num_inference_steps=1)


def test_guidance_channels_and_images_per_prompt_out_of_range(pipe):
    with pytest.raises(ValueError, match="guidance_channels must be between 1 and 4, got 5"):
        pipe(1, guidance_channels=5, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_images_per_prompt must be at least 1, got 0"):
        pipe(1, num_images_per_prompt=0, num_inference_steps=1)


def test_ambiguous_class_name(tiny_dit):
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDPMScheduler(), id2label={0: "crane", 1: "crane, bird"})
    with pytest.raises(ValueError, match=r"Class name 'crane' is ambiguous \(classes \[0, 1\]\); pass the class index"):
        pipe("crane", num_inference_steps=1)
    assert pipe.get_label_ids("bird") == [1]


def test_generator_list_of_the_wrong_length(pipe):
    with pytest.raises(ValueError, match="Got 1 generators for 2 images"):
        pipe([1, 2], generator=[torch.Generator()], num_inference_steps=1)


def test_guidance_interval_must_be_an_increasing_pair(pipe):
    with pytest.raises(ValueError, match=r"guidance_interval must be \(low, high\) timesteps with 0 <= low <= high"):
        pipe(1, guidance_interval=(600, 100), num_inference_steps=1)


@pytest.mark.parametrize("eta", [1.5, -0.1])
def test_ddim_eta_outside_zero_to_one_is_refused_not_complex(eta, tiny_dit):
    """eta > 1 made the direction coefficient sqrt(1 - a_prev - sigma²) imaginary: complex latents."""
    scheduler = DiTDDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        scheduler.step(torch.zeros(1, 8, 8, 8), scheduler.timesteps[0], x, eta=eta)
    pipe = DiTImagePipeline(tiny_dit(), DiTDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        pipe([1], num_inference_steps=3, eta=eta, output_type="latent")  # 4 channels, no VAE: no picture
    assert torch.is_floating_point(scheduler.step(torch.zeros(1, 8, 8, 8), scheduler.timesteps[0], x, eta=1.0)[0])
