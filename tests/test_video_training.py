"""The video training scripts end to end on a few generated clips."""

import os

import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from safetensors.torch import load_file

from dit_pipelines import DiTDDIMScheduler, DiTModel, DiTTextToVideoPipeline, VideoDiTModel
from examples.mnist import train_vae
from examples.mnist.moving_mnist import make_moving_mnist
from examples.mnist.text_encoder import save_small_t5
from examples.mnist.video_data import every_caption
from training import train_video_dit

from .test_training import fresh_accelerate_state  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def fake_mnist():
    """40 "digits" (white squares of ten sizes, labelled by size) laid out like `load_mnist()`."""
    import datasets
    import numpy as np

    images = np.zeros((40, 28, 28), np.uint8)
    for i in range(40):
        half = 3 + i % 10 // 2
        images[i, 14 - half : 14 + half, 14 - half : 14 + half] = 255
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    split = datasets.Dataset.from_dict({"image": list(images), "label": [i % 10 for i in range(40)]}, features=features)
    return datasets.DatasetDict({"train": split, "validation": split, "test": split})


@pytest.fixture(autouse=True)
def offline_mnist(fake_mnist, monkeypatch):
    import examples.mnist.video_data as video_data

    monkeypatch.setattr(video_data, "load_mnist", lambda: fake_mnist)


@pytest.fixture(scope="module")
def clips(fake_mnist, tmp_path_factory):
    """64 Moving-MNIST clips of the fake digits, with their caption columns, saved as a datasets folder, and a
    small T5 for their captions: what `train_video_dit.py` reads from a user."""
    import numpy as np

    train = fake_mnist["train"].with_format("numpy")[:]
    data = make_moving_mnist(np.stack(train["image"]), np.asarray(train["label"]), num_clips=64, seed=0)
    folder = tmp_path_factory.mktemp("clips")
    data.save_to_disk(str(folder / "clips"))
    save_small_t5(str(folder / "t5"), every_caption(data), d_model=16, model_max_length=24)
    return str(folder / "clips"), str(folder / "t5")


def train_video(output_dir, clips, *extra) -> str:
    return train_video_dit.main(train_video_dit.parse_args(video_args(output_dir, clips, *extra)))


def video_args(output_dir, clips, *extra):
    dataset, t5 = clips
    return [
        *("--dataset_name", dataset, "--text_encoder", t5, "--train_batch_size", "8", "--hidden_size", "32"),
        *("--num_frames", "8", "--max_sequence_length", "24"),
        *("--depth", "1", "--sampling_respacing", "3", "--num_inference_steps", "3", "--output_dir", str(output_dir)),
        *extra,
    ]


def test_tiny_video_run_saves_a_loadable_pipeline(clips, tmp_path):
    out = train_video(
        tmp_path / "run",
        clips,
        *"--max_train_steps 3 --image_batch_size 4 --validation_steps 3 --sampling_scheduler ddim".split(),
    )
    assert (tmp_path / "run" / "validation" / "step-3.gif").exists()
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, DiTTextToVideoPipeline) and pipe.vae is None
    assert isinstance(pipe.scheduler, DiTDDIMScheduler) and pipe.scheduler.config.timestep_respacing == "3"
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("the digit 3 moves up", num_frames=5, generator=torch.manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 1)


def test_video_resume_gives_the_weights_of_an_uninterrupted_run(clips, tmp_path):
    common = ["--max_train_steps", "5", "--checkpointing_steps", "2", "--ema_decay", "0.9", "--image_batch_size", "2"]
    train_video(tmp_path / "full", clips, *common)
    (tmp_path / "resumed").mkdir()
    os.rename(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    train_video(tmp_path / "resumed", clips, *common, "--resume_from_checkpoint", "latest")
    name = os.path.join("transformer", "diffusion_pytorch_model.safetensors")
    full, resumed = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "resumed" / name))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_vae_training_then_latent_video_training(clips, tmp_path):
    options = "--num_clips 80 --max_train_steps 2 --block_out_channels 8 8 --train_batch_size 8".split()
    vae_dir = train_vae.main(train_vae.parse_args([*options, "--output_dir", str(tmp_path / "vae")]))
    vae = AutoencoderKL.from_pretrained(vae_dir)
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor != 1.0
    out = train_video(tmp_path / "latent", clips, "--max_train_steps", "2", "--vae", vae_dir, "--precompute_latents")
    pipe = DiffusionPipeline.from_pretrained(out)
    config = pipe.transformer.config
    assert pipe.vae is not None and config.sample_size == 16 and config.in_channels == 4


@pytest.mark.parametrize("layout", ["factorized", "interleaved"])
def test_freeze_image_layers_keeps_every_frozen_tensor_bit_identical_under_weight_decay(clips, tmp_path, layout):
    image = DiTModel(
        sample_size=32,
        patch_size=4,
        in_channels=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        class_dropout_prob=0.1,
    )
    with torch.no_grad():  # a "trained" image model: its zero-initialised output layers would pass no gradient
        for parameter in image.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    image.save_pretrained(tmp_path / "image")
    out = train_video(
        tmp_path / "video",
        clips,
        *"--max_train_steps 3 --learning_rate 1e-2 --init_from_image_dit".split(),
        str(tmp_path / "image"),
        "--train_temporal_only",
        "--attention_layout",
        layout,
        *"--adam_weight_decay 0.1 --ema_decay 0.0".split(),
    )
    trained = dict(DiffusionPipeline.from_pretrained(out).transformer.named_parameters())

    start = VideoDiTModel.from_image_dit(
        image, attention_layout=layout, sample_frames=8, text_embed_dim=16, conditioning="text"
    )
    start.freeze_image_layers()
    frozen = {name: p for name, p in start.named_parameters() if not p.requires_grad}
    assert len(frozen) > 20 and any(".modulation." in name for name in frozen)
    for name, parameter in frozen.items():
        assert torch.equal(trained[name], parameter), name  # neither the gradient nor the decay moved it
    new = {name: p for name, p in start.named_parameters() if p.requires_grad}
    moved = [name for name, p in new.items() if not torch.equal(trained[name], p)]
    temporal = "blocks.0.temporal_modulation.weight" if layout == "factorized" else "blocks.1.modulation.weight"
    assert temporal in moved and "blocks.0.cross_attn.proj.weight" in moved  # zero at the start: they trained


def test_video_errors(clips, tmp_path):
    with pytest.raises(ValueError, match="--resume_from_checkpoint '/nowhere' is not a checkpoint folder"):
        train_video(tmp_path / "x", clips, "--resume_from_checkpoint", "/nowhere")
    image = DiTModel(sample_size=32, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    image.save_pretrained(tmp_path / "rgb")
    with pytest.raises(ValueError, match="The image DiT takes 3 channels, the data has 1"):
        train_video(tmp_path / "y", clips, "--init_from_image_dit", str(tmp_path / "rgb"))


def test_caption_parts_and_the_caption_each_sample_trains_with():
    from dit_pipelines.training import training_caption_ids, training_captions

    images = torch.zeros(20, 28, 28, dtype=torch.uint8).numpy()
    data = make_moving_mnist(images, [i % 10 for i in range(20)], num_clips=30, max_digits=2, seed=0)
    for row in data:
        if len(row["digits"]) == 1:
            digit, direction = row["digits"][0], row["directions"][0]
            assert row["caption_parts"] == [f"the digit {digit}", f"a digit moves {direction}"]
            assert row["image_caption"] == f"the digit {digit}"
        else:  # two digits: no parts, the whole caption stays
            assert row["caption_parts"] == []
    assert {len(r["digits"]) for r in data} == {1, 2}
    # the strings each sample trains with: u below 0.1 drops the caption, the next 0.2 picks one of its parts
    u = torch.tensor([0.05, 0.15, 0.25, 0.5]).repeat(len(data))[: len(data)]
    chosen = training_captions(u, data["caption"], data["caption_parts"], dropout_prob=0.1, part_dropout_prob=0.2)
    for row, draw, caption in zip(data, u.tolist(), chosen):
        parts = row["caption_parts"]
        if draw < 0.1:
            assert caption == ""
        elif draw < 0.3 and parts:
            assert caption == parts[0 if draw < 0.2 else 1]
        else:
            assert caption == row["caption"]

    u = (torch.arange(1000) + 0.5) / 1000  # no draw on a boundary
    whole, empty = torch.full((1000,), 7), 0
    cut = torch.tensor([[1, 2]]).expand(1000, 2)
    ids = training_caption_ids(u, whole, cut, empty, dropout_prob=0.1, part_dropout_prob=0.2)
    assert [(ids == i).sum().item() for i in (0, 1, 2, 7)] == [100, 100, 100, 700]
    assert (ids[u < 0.1] == 0).all() and (ids[(u >= 0.1) & (u < 0.2)] == 1).all() and (ids[u >= 0.3] == 7).all()
    plain = training_caption_ids(u, whole, cut, empty, dropout_prob=0.1, part_dropout_prob=0.0)
    assert [(plain == i).sum().item() for i in (0, 1, 2, 7)] == [100, 0, 0, 900]


def test_a_run_with_caption_parts_saves_a_pipeline(clips, tmp_path):
    out = train_video(tmp_path / "run", clips, "--max_train_steps", "2", "--caption_part_dropout_prob", "0.5")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert pipe.tokenizer.tokenize("a digit moves up") == ["▁a", "▁digit", "▁moves", "▁up"]  # part captions' words


def test_color_clips_train_a_three_channel_model(clips, tmp_path):
    """Clips stored as (F, H, W, C) train a C-channel model; (F, H, W) ones a one-channel model."""
    import datasets
    import numpy as np

    from dit_pipelines.data import frames_as_tensor

    gray = datasets.load_from_disk(clips[0]).select(range(16))
    video = np.asarray(gray.with_format("numpy")["video"][:])  # (N, F, H, W)
    color = np.stack([video, video // 2, 255 - video], axis=-1)  # (N, F, H, W, 3)
    rows = {"video": color, "caption": list(gray["caption"])}
    features = datasets.Features(
        {"video": datasets.Array4D(shape=color.shape[1:], dtype="uint8"), "caption": datasets.Value("string")}
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "color"))
    colored = datasets.load_from_disk(str(tmp_path / "color"))
    assert frames_as_tensor(gray).shape == (16, 1, 8, 32, 32)
    assert torch.equal(frames_as_tensor(colored)[:, 2], torch.from_numpy(255 - video))  # channels first

    out = train_video(tmp_path / "run", (str(tmp_path / "color"), clips[1]), "--max_train_steps", "2")
    pipe = DiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.in_channels == 3
    assert pipe("the digit 3 moves up", generator=torch.manual_seed(0)).frames.shape == (1, 8, 32, 32, 3)


def test_a_t5_loads_from_a_plain_folder_or_from_tokenizer_and_text_encoder_subfolders(clips, tmp_path):
    from dit_pipelines.training import load_text_encoder

    tokenizer, encoder = load_text_encoder(clips[1])  # tokenizer/ and text_encoder/, as a saved pipeline has
    tokenizer.save_pretrained(tmp_path / "plain")
    encoder.save_pretrained(tmp_path / "plain")
    plain_tokenizer, plain_encoder = load_text_encoder(str(tmp_path / "plain"))
    assert plain_tokenizer.tokenize("the digit 3 moves up") == tokenizer.tokenize("the digit 3 moves up")
    assert not any(p.requires_grad for p in plain_encoder.parameters()) and not plain_encoder.training
    assert all(torch.equal(a, b) for a, b in zip(plain_encoder.state_dict().values(), encoder.state_dict().values()))


def test_a_lora_video_run_saves_an_adapter_that_loads_into_the_base_pipeline(clips, tmp_path):
    base = train_video(tmp_path / "base", clips, "--max_train_steps", "2")
    out = train_video(tmp_path / "lora", clips, "--max_train_steps", "2", "--init_from", base, "--lora_rank", "2")
    saved = load_file(os.path.join(out, "pytorch_lora_weights.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert any(".cross_attn." in k for k in saved) and any(".temporal_attn." in k for k in saved)
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    before = pipe("the digit 3 moves up", generator=torch.manual_seed(0), output_type="np").frames
    pipe.load_lora_weights(out)
    after = pipe("the digit 3 moves up", generator=torch.manual_seed(0), output_type="np").frames
    assert before.shape == after.shape and not (before == after).all()  # the adapters were trained away from zero
