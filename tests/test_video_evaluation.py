import json

import numpy as np
import pytest
import torch
from torch import nn

import examples.mnist.prompt_following as prompt_benchmark
from dit_pipelines import DiTDDPMScheduler, DiTTextToVideoPipeline, VideoDiTModel
from examples.mnist.moving_mnist import DIRECTION_NAMES, held_out_pairs, make_moving_mnist
from examples.mnist.text_encoder import small_t5_encoder, train_t5_tokenizer
from examples.mnist.video_measures import (
    centroids,
    digit_crops,
    directions_agree,
    motion_signs,
    predicted_digits,
    prompt_following,
)

from .conftest import randomize_


def glyphs():
    """Ten 28x28 "digits": a bar whose height says the label (2 + 2·label rows), centred."""
    images = np.zeros((10, 28, 28), np.uint8)
    for label in range(10):
        half = 1 + label
        images[label, 14 - half : 14 + half, 10:18] = 255
    return images


class BarHeightClassifier(nn.Module):
    """Reads a crop's label from the height of its bar: the classifier's role with a known answer."""

    def forward(self, images):  # (N, 1, 28, 28) in [0, 1]
        rows = (images[:, 0] > 0.5).any(-1).sum(-1).float()  # bar height in rows
        label = ((rows / 2 - 1).round()).clamp(0, 9).long()
        return nn.functional.one_hot(label, 10).float()


@pytest.fixture(scope="module")
def clips():
    data = make_moving_mnist(glyphs(), np.arange(10), num_clips=64, num_frames=8, frame_size=32, digit_size=16)
    video = torch.from_numpy(np.asarray(data.with_format("numpy")["video"][:])).float() / 255
    return video, [d[0] for d in data["digits"]], [w[0] for w in data["directions"]]


def test_centroids_match_a_float64_recomputation():
    video = torch.rand(2, 3, 5, 7)
    w = video.double()
    ys, xs = torch.meshgrid(
        torch.arange(5.0, dtype=torch.float64), torch.arange(7.0, dtype=torch.float64), indexing="ij"
    )
    expected = torch.stack([(w * xs).sum((2, 3)) / w.sum((2, 3)), (w * ys).sum((2, 3)) / w.sum((2, 3))], -1)
    torch.testing.assert_close(centroids(video), expected.float())


def test_real_clips_move_the_way_their_captions_say(clips):
    video, _, directions = clips
    assert len(set(directions)) == len(DIRECTION_NAMES)  # every direction is exercised
    assert directions_agree(motion_signs(centroids(video)), directions).all()
    wrong = [DIRECTION_NAMES[(DIRECTION_NAMES.index(w) + 1) % 8] for w in directions]
    assert not directions_agree(motion_signs(centroids(video)), wrong).any()
    still = video[:, :1].expand_as(video)  # a frozen clip moves nowhere
    assert (motion_signs(centroids(still)) == 0).all()


def test_crops_recover_the_digit_at_mnist_scale(clips):
    video, digits, _ = clips
    crops = digit_crops(video, digit_size=16)
    assert crops.shape == (64, 8, 1, 28, 28)
    original = torch.from_numpy(glyphs()).float()[torch.tensor(digits)] / 255  # (N, 28, 28)
    error = (crops[:, :, 0] - original[:, None]).abs().mean()
    other = torch.from_numpy(glyphs()).float()[(torch.tensor(digits) + 5) % 10] / 255
    assert error < 0.08 and (crops[:, :, 0] - other[:, None]).abs().mean() > 2 * error  # only resampling blur lost


def test_digits_and_verdicts_from_a_known_classifier(clips):
    video, digits, directions = clips
    assert predicted_digits(BarHeightClassifier(), video, 16).tolist() == digits
    flipped = video.flip(1)  # played backwards: same digit, opposite motion
    result = prompt_following(BarHeightClassifier(), flipped, digits, directions, digit_size=16)
    assert result["digit_accuracy"] == 1.0 and result["direction_accuracy"] == 0.0 and result["both"] == 0.0
    wrong_digits = [(d + 1) % 10 for d in digits]
    result = prompt_following(BarHeightClassifier(), video, wrong_digits, directions, digit_size=16)
    assert result["digit_accuracy"] == 0.0 and result["direction_accuracy"] == 1.0


def test_majority_vote_over_frames(clips):
    video, digits, _ = clips
    mixed = video.clone()
    mixed[:, :3] = video[[(i + 1) % len(video) for i in range(len(video))], :3]  # 3 of 8 frames from another clip
    assert predicted_digits(BarHeightClassifier(), mixed, 16).tolist() == digits


def test_the_benchmark_reports_generated_and_real_clips(tmp_path, monkeypatch):
    """The whole benchmark on a tiny random pipeline, with bar "digits" and their classifier standing in for MNIST."""
    captions = [f"the digit {d} moves {w}" for d in range(10) for w in DIRECTION_NAMES]
    tokenizer = train_t5_tokenizer(captions, vocab_size=64, model_max_length=16)
    transformer = VideoDiTModel(
        sample_size=32,
        sample_frames=8,
        patch_size=8,
        temporal_patch_size=2,
        in_channels=1,
        hidden_size=16,
        depth=1,
        num_heads=2,
        text_embed_dim=8,
    )
    text_encoder = small_t5_encoder(len(tokenizer), d_model=8, num_layers=1, num_heads=2)
    pipe = DiTTextToVideoPipeline(
        tokenizer, text_encoder, randomize_(transformer, std=0.1), DiTDDPMScheduler(timestep_respacing="2")
    )
    pipe.save_pretrained(tmp_path / "pipe")
    images = torch.from_numpy(glyphs()).float()[:, None].repeat(2, 1, 1, 1) / 255
    monkeypatch.setattr(prompt_benchmark, "load_classifier", BarHeightClassifier)
    monkeypatch.setattr(prompt_benchmark, "mnist_tensors", lambda split: (images, torch.arange(10).repeat(2)))
    result = prompt_benchmark.main(
        prompt_benchmark.parse_args(
            ["--pipeline", str(tmp_path / "pipe"), "--clips_per_prompt", "2", "--batch_size", "7"]
        )
    )
    saved = json.loads((tmp_path / "pipe" / "prompt_following" / "prompt_following.json").read_text())
    assert saved == result and result["clips"] == 20 and result["num_frames"] == 8
    assert result["real"]["digit_accuracy"] == 1.0 and result["real"]["direction_accuracy"] == 1.0
    assert len(result["generated"]["digit_ok"]) == 20
    assert (tmp_path / "pipe" / "prompt_following" / "held_out_prompts.gif").stat().st_size > 0
    from PIL import Image

    assert Image.open(tmp_path / "pipe" / "prompt_following" / "held_out_prompts.png").size == (2 * 8 * 34, 2 * 10 * 32)
    assert (result["scheduler"], result["num_inference_steps"]) == ("DiTDDPMScheduler", 2)

    seen = prompt_benchmark.main(
        prompt_benchmark.parse_args(
            ["--pipeline", str(tmp_path / "pipe"), "--clips_per_prompt", "1", "--prompts", "seen"]
        )
    )
    pairs = {tuple(p.removeprefix("the digit ").split(" moves ")) for p in seen["prompts"]}
    assert {int(d) for d, _ in pairs} == set(range(10)) and len(pairs) == 10
    assert not {(int(d), w) for d, w in pairs} & held_out_pairs()  # prompts that occur in training
    assert seen["prompt_set"] == "seen" and seen["real"]["digit_accuracy"] == 1.0
    assert json.loads((tmp_path / "pipe" / "prompt_following" / "prompt_following_seen.json").read_text()) == seen
    assert (tmp_path / "pipe" / "prompt_following" / "seen_prompts.gif").stat().st_size > 0
    assert saved == json.loads((tmp_path / "pipe" / "prompt_following" / "prompt_following.json").read_text())
