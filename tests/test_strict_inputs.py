"""Inputs that were coerced silently or failed with a raw error: each is now a ValueError that says what is allowed
(issue 13's table)."""

import logging

import numpy as np
import pytest
import torch

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler, DiTImagePipeline, DiTTextToVideoPipeline

from .test_video_pipeline import components  # noqa: F401 (fixture)


@pytest.fixture
def image_pipe(tiny_dit):
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDPMScheduler(timestep_respacing="3"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def video_pipe(components):  # noqa: F811 (the imported fixture)
    pipe = DiTTextToVideoPipeline(**components, scheduler=DiTDDPMScheduler(timestep_respacing="3"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


LABELS = "must be class indices \\(ints, numpy integers, integer tensors or arrays\\) or names"


@pytest.mark.parametrize(
    "labels, message",
    [
        (1.7, LABELS),
        (True, LABELS),
        ([1, 2.5], LABELS),
        ({1: 2}, LABELS),
        (None, LABELS),
        (torch.tensor([1.0, 2.0]), "Class label tensors must hold integers"),
        (torch.tensor([True]), "Class label tensors must hold integers"),
        ([], "Class labels must be in \\[0, 9\\]"),
        (12, "Class labels must be in \\[0, 9\\], got \\[12\\]"),
    ],
)
def test_class_labels_that_are_not_integers_or_names_are_refused(image_pipe, labels, message):
    with pytest.raises(ValueError, match=message):
        image_pipe(labels, num_inference_steps=1)


def test_integer_labels_of_every_kind_and_nested_lists_are_accepted_and_flattened(image_pipe):
    def sample(labels):
        return image_pipe(labels, generator=torch.manual_seed(0), output_type="pt").images

    expected = sample([1, 1])
    for labels in ([[1], [1]], np.array([1, 1]), [np.int64(1), torch.tensor(1)], torch.tensor([[1], [1]])):
        torch.testing.assert_close(sample(labels), expected, rtol=0, atol=0)
    assert sample(np.int64(3)).shape[0] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(height=0), "height and width must be positive multiples of 2"),
        (dict(height=-4), "height and width must be positive multiples of 2"),
        (dict(num_inference_steps=0), "num_inference_steps must be between 1 and the 1000 training steps"),
        (dict(num_inference_steps=2000), "num_inference_steps must be between 1 and the 1000 training steps"),
        (dict(latents=torch.zeros(1, 3, 8, 8, dtype=torch.long)), "latents must be a floating-point tensor"),
        (dict(latents=torch.zeros(1, 3, 8, 8, dtype=torch.complex64)), "latents must be a floating-point tensor"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt must be at least 1"),
    ],
)
def test_bad_image_sampling_requests(image_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        image_pipe([1], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=0), "num_frames must be a positive multiple of the temporal patch size"),
        (dict(height=0), "height and width must be positive multiples of 4"),
        (dict(max_sequence_length=0), "max_sequence_length must be a positive number of tokens"),
        (dict(num_videos_per_prompt=0), "num_videos_per_prompt must be at least 1"),
        (dict(prompt=[]), "prompt must be a string or a non-empty list of strings"),
        (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number"),
        (dict(num_inference_steps=0), "num_inference_steps must be between 1"),
        (dict(latents=torch.zeros(1, 4, 3, 4, 4, dtype=torch.int32)), "latents must be a floating-point tensor"),
    ],
)
def test_bad_video_sampling_requests(video_pipe, kwargs, message):
    kwargs = {"prompt": "the digit 3 moves up", **kwargs}
    with pytest.raises(ValueError, match=message):
        video_pipe(**kwargs)


def test_embeddings_with_a_wrong_mask_or_a_negative_prompt_beside_negative_embeddings(video_pipe):
    embeds, mask = torch.randn(1, 24, 16), torch.ones(1, 24, dtype=torch.long)
    with pytest.raises(ValueError, match=r"prompt_attention_mask must be \(batch, tokens\) = \(1, 24\)"):
        video_pipe(prompt_embeds=embeds, prompt_attention_mask=mask[:, :5])
    negative = dict(negative_prompt="blurry", negative_prompt_embeds=embeds, negative_prompt_attention_mask=mask)
    with pytest.raises(ValueError, match="Pass at most one of `negative_prompt` and `negative_prompt_embeds`"):
        video_pipe(prompt_embeds=embeds, prompt_attention_mask=mask, **negative)


def test_prompts_cut_by_max_sequence_length_are_named_in_a_warning(video_pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="dit_pipelines.pipelines.pipeline_dit_text_to_video"):
        video_pipe(["the digit 3 moves up", "a"], max_sequence_length=3, num_inference_steps=1)
    assert "longer than max_sequence_length=3 tokens and are cut: ['the digit 3 moves up']" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta_end=1.5), "Every beta must be in \\(0, 1\\)"),
        (dict(beta_start=0.0), "Every beta must be in \\(0, 1\\)"),
        (dict(trained_betas=[0.1] * 10), "trained_betas has 10 values; num_train_timesteps=1000 needs one"),
    ],
)
def test_scheduler_configs_are_checked_at_construction(kwargs, message):
    for scheduler in (DiTDDPMScheduler, DiTDDIMScheduler):
        with pytest.raises(ValueError, match=message):
            scheduler(**kwargs)


def test_training_timesteps_outside_the_chain_are_refused():
    scheduler = DiTDDPMScheduler()
    x = torch.zeros(2, 4, 8, 8)
    for t in ([-1, 3], [0, 1000]):
        with pytest.raises(ValueError, match=r"Training timesteps must be in \[0, 999\]"):
            scheduler.add_noise(x, x, torch.tensor(t))
    with pytest.raises(ValueError, match=r"Training timesteps must be in \[0, 999\]"):
        scheduler.training_loss(torch.zeros(2, 8, 8, 8), x, x, torch.tensor([-1, 3]))


@pytest.mark.parametrize("steps, message", [(0, "between 1 and the 1000"), (1001, "between 1 and the 1000")])
def test_diffusers_solvers_in_the_pipeline_get_the_same_step_checks(image_pipe, steps, message):
    """DPM-Solver with 0 steps returned the initial noise, and with more steps than training steps an IndexError."""
    from diffusers import DPMSolverMultistepScheduler

    image_pipe.scheduler = DPMSolverMultistepScheduler()
    with pytest.raises(ValueError, match=message):
        image_pipe([1], num_inference_steps=steps)


def test_converting_a_checkpoint_that_holds_code_is_a_command_line_error(tmp_path, capsys):
    """The conversion refuses a pickle that would run code (weights_only); the CLI says so in one line, exit 2."""
    import pickle

    from dit_pipelines.cli import main as cli

    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": Exploit()}))
    assert cli(["convert", str(tmp_path / "evil.pt"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr()
    assert "dit-pipelines convert: error:" in err.err and "ran" not in err.out


def test_a_checkpoint_that_cannot_be_written_says_where(tmp_path, monkeypatch):
    """A full disk used to surface as 'basic_ios::clear: iostream error' with no path."""
    import errno

    from accelerate import Accelerator

    from dit_pipelines.training.checkpoints import save_checkpoint

    accelerator = Accelerator(cpu=True)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", full_disk)
    with pytest.raises(OSError, match=f"Could not write checkpoint-3 into {tmp_path / 'checkpoint-3.tmp'}: .*No space"):
        save_checkpoint(accelerator, str(tmp_path), 3, {})


def test_ranges_generators_and_arrays_of_names_are_labels_too(tiny_dit):
    pipe = DiTImagePipeline(tiny_dit(in_channels=3), DiTDDPMScheduler(timestep_respacing="2"), id2label={1: "cat"})
    pipe.set_progress_bar_config(disable=True)

    def sample(labels):
        return pipe(labels, generator=torch.manual_seed(0), output_type="pt").images

    expected = sample([0, 1])
    for labels in (range(2), (i for i in range(2)), [0, np.array(["cat"])]):
        torch.testing.assert_close(sample(labels), expected, rtol=0, atol=0)


def test_a_component_saved_with_pickled_weights_only_is_not_pushed_half(tmp_path, tiny_dit):
    from dit_pipelines.hub import pipeline_files

    DiTImagePipeline(tiny_dit(), DiTDDPMScheduler()).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ValueError, match="holds its weights only as pickles .*safe_serialization=True"):
        pipeline_files(str(tmp_path))
