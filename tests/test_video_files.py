"""Training on a user's own video files: a videofolder of RGB mp4 clips with captions, a tiny T5 saved in the
standard layout and a tiny AutoencoderKL, through `train_video_dit.py --train_data_dir ... --pretrained_text_encoder
... --vae ...`; clip decoding against a plain PyAV decode; the on-disk caches and their errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline

from dit_pipelines import DiTTextToVideoPipeline, VideoDiTModel
from dit_pipelines.data.video_files import (
    ClipSampling,
    VideoClips,
    load_captioned_videos,
    resize_and_crop,
    write_video,
)
from examples.mnist.text_encoder import save_small_t5
from training import train_video_dit

from .test_pipeline import tiny_vae
from .test_training import fresh_accelerate_state  # noqa: F401 (autouse fixture)

CAPTIONS = ["a red square moves right", "a green square moves down", "a blue square moves left"]


def square_clip(index: int, frames: int, height: int = 16, width: int = 16) -> np.ndarray:
    """(F, H, W, 3) uint8: a coloured square moving across a grey background."""
    video = np.full((frames, height, width, 3), 40, np.uint8)
    colour = np.eye(3, dtype=np.uint8)[index % 3] * 215 + 40
    for f in range(frames):
        top, left = (3 * index + f) % (height - 6), (2 * f + index) % (width - 6)
        video[f, top : top + 6, left : left + 6] = colour
    return video


def write_videofolder(folder, num_clips=6, frames=12, height=16, width=16, bad=()) -> str:
    """`num_clips` mp4 files plus metadata.jsonl with a "caption" column; `bad`: indices written as broken files."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(num_clips):
        name = f"clip{i:02d}.mp4"
        if i in bad:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"this is not a video")
        else:
            write_video(os.path.join(folder, name), square_clip(i, frames, height, width), fps=8)
        rows.append({"file_name": name, "caption": CAPTIONS[i % 3]})
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(folder)


def all_frames(path) -> np.ndarray:
    """Every frame of a video, decoded the plain way: the reference for clip selection."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A videofolder, a small T5 (tokenizer/ + text_encoder/) and a tiny RGB AutoencoderKL (f = 2)."""
    root = tmp_path_factory.mktemp("user_data")
    videos = write_videofolder(root / "videos")
    t5 = save_small_t5(str(root / "t5"), CAPTIONS, d_model=16, model_max_length=12)
    vae = tiny_vae()  # RGB, f = 2, 4 latent channels
    vae.save_pretrained(root / "vae")
    return {"videos": videos, "t5": t5, "vae": str(root / "vae"), "root": root}


def run_args(parts, output_dir, *extra):
    return [
        *("--train_data_dir", parts["videos"], "--pretrained_text_encoder", parts["t5"], "--vae", parts["vae"]),
        *("--num_frames", "4", "--frame_stride", "2", "--max_sequence_length", "12", "--train_batch_size", "2"),
        *("--hidden_size", "32", "--depth", "1", "--sampling_respacing", "3", "--num_inference_steps", "3"),
        *("--max_train_steps", "2", "--checkpointing_steps", "2", "--output_dir", str(output_dir)),
        *extra,
    ]


def train(parts, output_dir, *extra) -> str:
    return train_video_dit.main(train_video_dit.parse_args(run_args(parts, output_dir, *extra)))


def test_a_videofolder_of_rgb_mp4s_trains_and_loads_as_a_text_to_video_pipeline(parts, tmp_path):
    out = train(parts, tmp_path / "run", "--dataloader_num_workers", "1")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, DiTTextToVideoPipeline) and pipe.transformer.config.in_channels == 4
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(CAPTIONS[0], num_frames=4, height=16, width=16, output_type="np", generator=torch.manual_seed(0))
    assert frames.frames.shape == (1, 4, 16, 16, 3)


def first_losses(monkeypatch, parts, output_dir, *extra):
    """The per-step losses of a run, recorded around the script's loss function."""
    losses, real_train = [], train_video_dit.train

    def recording_train(accelerator, config, model, dataset, loss_fn, *args, **kwargs):
        def recorded(model, batch, step):
            out = loss_fn(model, batch, step)
            losses.append(out.loss.mean().item())
            return out

        return real_train(accelerator, config, model, dataset, recorded, *args, **kwargs)

    monkeypatch.setattr(train_video_dit, "train", recording_train)
    out = train(parts, output_dir, *extra)
    monkeypatch.setattr(train_video_dit, "train", real_train)
    return losses, VideoDiTModel.from_pretrained(os.path.join(out, "transformer"))


def test_cached_latents_and_text_embeddings_give_the_first_loss_of_the_on_the_fly_path(parts, tmp_path, monkeypatch):
    same = ("--clip_start", "center", "--max_train_steps", "3")  # a cached clip is the one epoch 0 cuts
    live, live_model = first_losses(monkeypatch, parts, tmp_path / "live", *same)
    cached, cached_model = first_losses(
        monkeypatch, parts, tmp_path / "cached", *same, "--precompute_latents", "--precompute_text_embeddings"
    )
    assert cached[0] == pytest.approx(live[0], rel=1e-5, abs=1e-6)
    assert cached == pytest.approx(live, rel=1e-4)
    for a, b in zip(live_model.parameters(), cached_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    caches = sorted(p.name.split("-")[0] for p in (tmp_path / "cached" / "cache").iterdir())
    assert caches == ["latents", "text"]


def test_clip_frames_are_the_videos_frames_at_the_stride(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), square_clip(1, 20), fps=16)
    reference = all_frames(path)
    data = {"video": [path]}

    def clip(start, **kwargs):
        sampling = ClipSampling(num_frames=4, height=16, width=16, clip_start=start, **kwargs)
        return VideoClips(_Rows(data), sampling)

    first = clip("first", frame_stride=3)[0]["video"]  # (3, 4, 16, 16)
    assert torch.equal(first, torch.from_numpy(reference[0:12:3]).permute(3, 0, 1, 2))
    centred = clip("center", frame_stride=3)[0]["video"]
    assert torch.equal(centred, torch.from_numpy(reference[5:15:3]).permute(3, 0, 1, 2))  # (20 - 10) // 2 = 5
    by_rate = clip("first", fps=8)[0]["video"]  # 16 fps down to 8: every 2nd frame
    assert torch.equal(by_rate, torch.from_numpy(reference[0:8:2]).permute(3, 0, 1, 2))
    random = clip("random", frame_stride=2, seed=3)
    starts = set()
    for epoch in range(8):
        a, b = random[(epoch, 0)]["video"], random[(epoch, 0)]["video"]
        assert torch.equal(a, b)  # a function of (seed, epoch, index) alone
        matches = [
            s for s in range(14) if torch.equal(a, torch.from_numpy(reference[s : s + 7 : 2]).permute(3, 0, 1, 2))
        ]
        assert len(matches) == 1
        starts.add(matches[0])
    assert len(starts) > 2  # a new start most epochs


class _Rows:
    """A minimal dataset of rows (what VideoClips reads of a `datasets.Dataset`)."""

    def __init__(self, columns):
        self.columns = {"caption": ["x"] * len(columns["video"]), **columns}
        self.column_names = list(self.columns)

    def __len__(self):
        return len(self.columns["video"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}


def test_frames_are_resized_then_centre_cropped_to_any_size():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[:, :, 30:] = 255  # right half white
    out = resize_and_crop(frames, 32, 32)  # scaled by 0.8 to 32 x 48, then the middle 32 columns
    assert out.shape == (3, 2, 32, 32) and out.dtype == torch.uint8
    assert (out[..., :15] == 0).all() and (out[..., 17:] == 255).all()  # the edge: column 24 - 8 = 16 of the crop
    wide = resize_and_crop(frames, 20, 40)  # non-square: 40 / 60 = 0.667 -> 27 x 40, rows 3..23
    assert wide.shape == (3, 2, 20, 40) and (wide[..., :19] == 0).all() and (wide[..., 21:] == 255).all()
    assert torch.equal(resize_and_crop(frames, 40, 60), torch.from_numpy(frames).permute(3, 0, 1, 2))  # untouched


def test_short_and_broken_videos_are_skipped_and_counted_or_an_error_naming_the_file(tmp_path, caplog):
    folder = write_videofolder(tmp_path / "mixed", num_clips=5, frames=12, bad=(1,))
    write_video(os.path.join(folder, "clip03.mp4"), square_clip(3, 3), fps=8)  # 3 frames: too short
    data = load_captioned_videos(train_data_dir=folder)
    sampling = ClipSampling(num_frames=4, height=16, width=16, frame_stride=2)
    clips = VideoClips(data, sampling)
    assert len(clips) == 3 and clips.skipped == 2 and "Skipped 2 of 5 videos" in caplog.text
    with pytest.raises(ValueError, match=r"clip01\.mp4.*--on_bad_clip skip"):
        VideoClips(data, sampling, on_bad_clip="error")
    broken = write_videofolder(tmp_path / "broken", num_clips=3, bad=(0, 1, 2))
    with pytest.raises(ValueError, match=r"None of the 3 videos gives a clip of 4 frames; the first: .*clip00\.mp4"):
        VideoClips(load_captioned_videos(train_data_dir=broken), sampling)


def test_a_missing_caption_column_names_the_columns_there(parts, tmp_path):
    with pytest.raises(ValueError, match=r"no caption column 'text'; its columns are \['video', 'caption'\]"):
        train(parts, tmp_path / "run", "--caption_column", "text")


def test_text_embeddings_wider_than_the_models_cross_attention_are_refused(parts, tmp_path):
    narrow = VideoDiTModel(
        sample_size=8, sample_frames=4, in_channels=4, hidden_size=32, depth=1, num_heads=2, text_embed_dim=8
    )
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match="gives 16-wide embeddings.*text_embed_dim=8 in its cross-attention"):
        train(parts, tmp_path / "run", "--init_from", str(tmp_path / "narrow"))


def test_a_cache_for_another_vae_or_resolution_is_never_reused(parts, tmp_path):
    from dit_pipelines.training import Field, ShardedCache

    cache_dir = str(tmp_path / "shared_cache")
    common = ("--precompute_latents", "--cache_dir", cache_dir, "--max_train_steps", "1", "--checkpointing_steps", "9")
    train(parts, tmp_path / "a", *common)
    (first,) = os.listdir(cache_dir)
    other_vae = AutoencoderKL.from_pretrained(parts["vae"])
    with torch.no_grad():
        other_vae.encoder.conv_in.weight.mul_(2)  # the same folder name, other weights
    other_vae.save_pretrained(tmp_path / "vae2")
    train(parts, tmp_path / "b", *common, "--vae", str(tmp_path / "vae2"))
    train(parts, tmp_path / "c", *common, "--resolution", "8", "--patch_size", "1")
    assert len(os.listdir(cache_dir)) == 3  # a new cache for each, none reused
    folder = os.path.join(cache_dir, first)
    with open(os.path.join(folder, "manifest.json")) as f:
        assert json.load(f)["fields"]["latents"][0] == [2, 4, 4, 8, 8]
    # a run whose model needs other latents (4x4 for an 8x8 cache) is refused when it reads the cache
    with pytest.raises(ValueError, match=r"holds .*\[2, 4, 4, 8, 8\].* but this run needs .*\[2, 4, 4, 4, 4\]"):
        ShardedCache(folder, fields={"latents": Field((2, 4, 4, 4, 4), torch.float32)})


KILLABLE = """
import sys, time
import dit_pipelines.training.sharded_cache as sharded_cache
import dit_pipelines.training.video_data as video_data
from training import train_video_dit

sharded_cache.SHARD_BYTES = 2 * 4 * 4 * 8 * 8 * 4  # one clip per shard
slow = video_data.clip_posteriors
def clip_posteriors(*args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return slow(*args, **kwargs)
video_data.clip_posteriors = clip_posteriors
train_video_dit.main(train_video_dit.parse_args(sys.argv[2:]))
"""


def test_a_run_killed_while_precomputing_resumes_the_cache_without_redoing_complete_shards(parts, tmp_path):
    def command(delay, output_dir, cache_dir):
        args = run_args(parts, output_dir, "--precompute_latents", "--cache_dir", str(cache_dir))
        return [sys.executable, "-c", KILLABLE, str(delay), *args, "--max_train_steps", "1"]

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = subprocess.Popen(command(0.5, tmp_path / "k", tmp_path / "cache_k"), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    shards = lambda: sorted((tmp_path / "cache_k").glob("*/shard-*.safetensors"))  # noqa: E731
    while len(shards()) < 2 and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards()}
    assert 2 <= len(done) < 6, done  # killed part-way through the 6 shards
    subprocess.run(command(0, tmp_path / "k", tmp_path / "cache_k"), env=env, check=True, stderr=subprocess.DEVNULL)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards()}
    assert len(after) == 6 and all(after[name] == stamp for name, stamp in done.items())  # complete ones kept
    subprocess.run(command(0, tmp_path / "u", tmp_path / "cache_u"), env=env, check=True, stderr=subprocess.DEVNULL)
    (resumed,), (uninterrupted,) = (list((tmp_path / n).glob("*")) for n in ("cache_k", "cache_u"))
    assert resumed.name == uninterrupted.name and not list(resumed.glob("*.tmp"))
    from safetensors.torch import load_file

    for name in after:
        a, b = load_file(resumed / name), load_file(uninterrupted / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
