"""`dit-pipelines sample-batch`: N samples as an ADM-format .npz, the same for any process count, resumable after a
kill, with class-balanced labels, clear errors, and the frames of a video pipeline."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTModel
from dit_pipelines import sample_batch as sample_batch_module
from dit_pipelines.cli import main as cli
from dit_pipelines.evaluation.batches import batch_info
from dit_pipelines.sample_batch import sample_generators, shard_folder

from .conftest import randomize_
from .launching import finish, launch
from .test_hub import tiny_video_pipeline


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run starts from a fresh Accelerate state, as a launched command does."""
    from accelerate.state import PartialState

    yield
    PartialState._reset_state()


def image_pipeline(folder, in_channels: int = 3, respacing: str = "2", id2label=None) -> str:
    """A tiny pixel-space DiTImagePipeline of 5 classes (8x8 images), saved to `folder`."""
    torch.manual_seed(0)
    model = DiTModel(
        sample_size=8, patch_size=2, in_channels=in_channels, hidden_size=32, depth=2, num_heads=4, num_classes=5
    )
    pipe = DiTImagePipeline(randomize_(model.eval()), DiTDDPMScheduler(timestep_respacing=respacing), id2label=id2label)
    pipe.save_pretrained(folder)
    return str(folder)


def video_pipeline(folder) -> str:
    """A tiny grayscale DiTTextToVideoPipeline (2 frames of 8x8), saved to `folder`."""
    torch.manual_seed(0)
    tiny_video_pipeline(timestep_respacing="2").save_pretrained(folder)
    return str(folder)


def sample_args(pipeline, output, num_samples, *options):
    return [
        "sample-batch",
        str(pipeline),
        "--num_samples",
        str(num_samples),
        "--output",
        str(output),
        *map(str, options),
    ]


def load(path):
    with np.load(path) as batch:
        return batch["arr_0"], batch["arr_1"]


def test_two_processes_write_the_same_batch_as_one(tmp_path):
    pipe = image_pipeline(tmp_path / "pipe")
    args = sample_args(pipe, tmp_path / "two.npz", 10, "--batch_size", "3", "--seed", "4")
    # `accelerate launch -m dit_pipelines.cli ...`, as the README shows (launch() puts "-m" where a script goes)
    finish(launch("-m", ["dit_pipelines.cli", *args]), timeout=300)
    assert cli(sample_args(pipe, tmp_path / "one.npz", 10, "--batch_size", "3", "--seed", "4")) == 0
    (two_images, two_labels), (one_images, one_labels) = load(tmp_path / "two.npz"), load(tmp_path / "one.npz")
    np.testing.assert_array_equal(two_labels, one_labels)
    np.testing.assert_array_equal(two_images, one_images)
    assert two_images.shape == (10, 8, 8, 3) and len(np.unique(two_images.reshape(10, -1), axis=0)) == 10
    assert not os.path.exists(shard_folder(str(tmp_path / "two.npz")))


def identities(folder) -> dict:
    """shard name -> (inode, mtime): what a rewrite (a new file renamed over the old one) changes."""
    names = [n for n in os.listdir(folder) if n.endswith(".npz")]
    return {n: (os.stat(os.path.join(folder, n)).st_ino, os.stat(os.path.join(folder, n)).st_mtime_ns) for n in names}


def test_a_killed_run_resumes_without_resampling_its_finished_shards(tmp_path, monkeypatch, capsys):
    pipe = image_pipeline(tmp_path / "pipe", respacing="8")
    output = tmp_path / "killed.npz"
    args = sample_args(pipe, output, 48, "--batch_size", "2")  # 24 chunks of about 40 ms each
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "dit_pipelines.cli", *args], env=env, start_new_session=True)
    shards, deadline = shard_folder(str(output)), time.monotonic() + 120
    try:
        while not (os.path.isdir(shards) and any(n.endswith(".npz") for n in os.listdir(shards))):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before writing a shard"
            time.sleep(0.005)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL and not output.exists()
    done = identities(shards)
    assert 1 <= len(done) < 24

    # other settings are refused, with what differs
    assert cli(sample_args(pipe, output, 48, "--batch_size", "2", "--seed", "1")) == 2
    assert "unfinished run with other settings (seed: 0 then 1)" in capsys.readouterr().err

    sampled, before_assembly = [], {}  # the chunks sampled on resuming; the shards as assembly finds them
    load_sampler, assemble = sample_batch_module.load_sampler, sample_batch_module.assemble

    def counting_load_sampler(settings):
        pipe, sample = load_sampler(settings)

        def counting_sample(indices):
            sampled.append(indices.start // 2)
            return sample(indices)

        return pipe, counting_sample

    def checking_assemble(settings, path, num_chunks):
        before_assembly.update(identities(shards))
        return assemble(settings, path, num_chunks)

    monkeypatch.setattr(sample_batch_module, "load_sampler", counting_load_sampler)
    monkeypatch.setattr(sample_batch_module, "assemble", checking_assemble)
    assert cli(args) == 0
    finished = {int(name[len("chunk-") : -len(".npz")]) for name in done}
    assert sorted(sampled) == sorted(set(range(24)) - finished)
    assert {name: before_assembly[name] for name in done} == done and len(before_assembly) == 24
    assert not os.path.exists(shards)

    monkeypatch.undo()
    assert cli(sample_args(pipe, tmp_path / "whole.npz", 48, "--batch_size", "2")) == 0
    for resumed, whole in zip(load(output), load(tmp_path / "whole.npz")):
        np.testing.assert_array_equal(resumed, whole)

    # a finished batch of the same settings: nothing to do; other settings: refused
    sampled.clear()
    monkeypatch.setattr(sample_batch_module, "load_sampler", counting_load_sampler)
    assert cli(args) == 0 and sampled == []
    assert cli(sample_args(pipe, output, 40, "--batch_size", "2")) == 2
    assert "exists with other settings (num_samples: 48 then 40)" in capsys.readouterr().err


def test_labels_are_class_balanced_and_each_sample_depends_on_its_index_only(tmp_path):
    pipe = image_pipeline(tmp_path / "pipe", id2label={0: "cat", 1: "dog", 2: "owl", 3: "fox", 4: "bee"})
    assert cli(sample_args(pipe, tmp_path / "all.npz", 13, "--batch_size", "4", "--seed", "2")) == 0
    images, labels = load(tmp_path / "all.npz")
    np.testing.assert_array_equal(labels, np.arange(13) % 5)
    info = batch_info(str(tmp_path / "all.npz"))
    assert info.count == 13 and info.image_shape == (8, 8, 3) and info.has_labels

    # sample 6 alone, from its own generator: the same image as in the batch (up to float rounding across batches)
    pipeline = DiTImagePipeline.from_pretrained(pipe)
    alone = pipeline([1], guidance_scale=1.5, generator=sample_generators(2, range(6, 7)), output_type="np").images
    assert np.abs((alone[0] * 255).round() - images[6].astype(float)).max() <= 1

    assert cli(sample_args(pipe, tmp_path / "some.npz", 5, "--labels", "3", "dog", "--seed", "2")) == 0
    np.testing.assert_array_equal(load(tmp_path / "some.npz")[1], [3, 1, 3, 1, 3])


@pytest.mark.skipif(shutil.which("cc") is None, reason="inductor on the CPU needs a C compiler")
def test_compile_runs_the_compiled_transformer_and_changes_only_rounding(tmp_path, monkeypatch):
    pipe = image_pipeline(tmp_path / "pipe", respacing="4")
    assert cli(sample_args(pipe, tmp_path / "eager.npz", 6, "--batch_size", "3")) == 0

    transformers, load_sampler = [], sample_batch_module.load_sampler

    def keeping_load_sampler(settings):
        pipeline, sample = load_sampler(settings)
        transformers.append(pipeline.transformer)
        return pipeline, sample

    monkeypatch.setattr(sample_batch_module, "load_sampler", keeping_load_sampler)
    torch._dynamo.reset()
    assert cli(sample_args(pipe, tmp_path / "compiled.npz", 6, "--batch_size", "3", "--compile")) == 0
    assert "_compiled_call_impl" in vars(transformers[0])  # nn.Module.compile, in place
    (eager, eager_labels), (compiled, compiled_labels) = load(tmp_path / "eager.npz"), load(tmp_path / "compiled.npz")
    np.testing.assert_array_equal(compiled_labels, eager_labels)
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1  # float rounding, at most one level
    # compiling is not a setting: the two batches record the same settings, so a run may resume either way
    stored = [json.loads((tmp_path / f"{name}.npz.json").read_text()) for name in ("eager", "compiled")]
    assert stored[0] == stored[1]


def test_a_grayscale_model_gives_rgb_images(tmp_path):
    pipe = image_pipeline(tmp_path / "pipe", in_channels=1)
    assert cli(sample_args(pipe, tmp_path / "gray.npz", 3, "--guidance_scale", "1")) == 0
    images, _ = load(tmp_path / "gray.npz")
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert (images == images[..., :1]).all()


def test_a_video_pipeline_gives_every_frame_with_its_prompt_index(tmp_path):
    pipe = video_pipeline(tmp_path / "t2v")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the digit 3 moves up\n\nthe digit 7 moves down\n")
    assert cli(sample_args(pipe, tmp_path / "frames.npz", 3, "--prompts", prompts, "--batch_size", "2")) == 0
    images, labels = load(tmp_path / "frames.npz")
    assert images.shape == (6, 8, 8, 3) and (images == images[..., :1]).all()
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 0, 0])
    assert not np.array_equal(images[0], images[1])  # two frames, not one repeated


@pytest.mark.parametrize(
    "options, message",
    [
        (["--num_samples", "0"], "num_samples must be at least 1"),
        (["--output", "x.png"], "--output must end in .npz"),
        (["--batch_size", "0"], "batch_size must be at least 1"),
        (["--labels", "7"], "labels must be class indices in [0, 4]"),
        (["--labels", "zebra"], "Unknown class name(s) ['zebra']"),
        (["--prompts", "PROMPTS"], "is an image pipeline: --prompts and --num_frames are for video"),
        (["--prompts", "missing.txt"], "--prompts missing.txt: no such file"),
        (["--video", "--labels", "1"], "text-to-video pipeline: it takes --prompts, not --labels"),
        (["--video"], "text-to-video pipeline: give --prompts FILE"),
    ],
)
def test_wrong_requests_end_with_one_line_and_status_2(tmp_path, capsys, options, message):
    (tmp_path / "prompts.txt").write_text("a prompt\n")
    video = options[0] == "--video"
    pipe = video_pipeline(tmp_path / "t2v") if video else image_pipeline(tmp_path / "pipe")
    options = [str(tmp_path / "prompts.txt") if o == "PROMPTS" else o for o in options[video:]]
    args = sample_args(pipe, tmp_path / "out.npz", 4) + options
    assert cli(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after diffusers' loading bar, if any
    assert last.startswith("dit-pipelines sample-batch: error: ") and message in last
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "out.npz.shards").exists()
