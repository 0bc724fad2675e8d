"""Sharing on the Hub, end to end against a loopback Hub (tests/local_hub.py): the real huggingface_hub client
pushes, diffusers loads by repo id in fresh processes, online and offline; the `dit-pipelines` command."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline
from PIL import Image

from dit_pipelines import (
    DiTDDIMScheduler,
    DiTDDPMScheduler,
    DiTImagePipeline,
    DiTModel,
    DiTTextToVideoPipeline,
    VideoDiTModel,
)
from dit_pipelines.cli import main as cli
from dit_pipelines.conversion import dit_to_original_state_dict
from dit_pipelines.evaluation import EvaluationRecord, Metric
from dit_pipelines.hub import model_card
from examples.mnist.text_encoder import small_t5_encoder, train_t5_tokenizer

from .conftest import randomize_
from .local_hub import LocalHub
from .test_training import SCRIPT, bars, tiny_args  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = textwrap.dedent("""
    import sys
    import numpy as np, torch
    import dit_pipelines  # registers the classes with diffusers
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    if type(pipe).__name__ == "DiTImagePipeline":
        out = pipe([0, 1, 2], num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    else:
        out = pipe("the digit 3 moves up", num_inference_steps=3, generator=torch.manual_seed(0)).frames
    np.save(sys.argv[2], out)
""")


SERVER_ERRORS = []  # what the loopback Hub failed to serve, shown when a client process fails


@pytest.fixture(scope="module")
def hub():
    with LocalHub(user="tester") as hub:
        hub.errors = SERVER_ERRORS
        yield hub
    assert not SERVER_ERRORS


def hub_env(hub, home, offline=False):
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN="hf_local_test",
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT),
    )
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run(args, env, expect=0):
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == expect, done.stderr[-3000:] + f"\nserver errors: {SERVER_ERRORS}"
    return done


def front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def sample_here(folder):
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe([0, 1, 2], num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images


def test_training_pushes_and_users_load_by_repo_id_online_and_offline(bars, hub, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    env = hub_env(hub, tmp_path / "pusher")
    run(
        [
            SCRIPT,
            *tiny_args(
                bars,
                out,
                *"--max_train_steps 2 --checkpointing_steps 1 --push_to_hub --hub_model_id tester/tiny-dit".split(),
            ),
        ],
        env,
    )
    assert (out / "checkpoint-2").is_dir()  # the run kept its checkpoints locally ...
    files = hub.files("tester/tiny-dit")
    assert not [p for p in files if p.startswith("checkpoint-") or "optimizer" in p]  # ... and pushed none
    assert {"model_index.json", "README.md", "training_args.json", "transformer/config.json"} <= set(files)
    assert isinstance(hub.repos["tester/tiny-dit"].head[1]["transformer/diffusion_pytorch_model.safetensors"], tuple)
    metadata = front_matter(files["README.md"])
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "unconditional-image-generation"
    assert "dit_pipelines" in metadata["tags"] and metadata["license"] == "apache-2.0"
    assert "POST /api/validate-yaml" in hub.requests  # the card's metadata was validated before the upload
    assert json.loads(files["training_args.json"])["max_train_steps"] == 2

    expected = sample_here(out)
    user = tmp_path / "user"
    run(["-c", SAMPLE, "tester/tiny-dit", str(tmp_path / "online.npy")], hub_env(hub, user))
    np.testing.assert_array_equal(np.load(tmp_path / "online.npy"), expected)
    served = len(hub.requests)
    run(["-c", SAMPLE, "tester/tiny-dit", str(tmp_path / "offline.npy")], hub_env(hub, user, offline=True))
    np.testing.assert_array_equal(np.load(tmp_path / "offline.npy"), expected)
    assert len(hub.requests) == served  # offline: from the cache, not a single request
    failed = run(
        ["-c", SAMPLE, "tester/tiny-dit", str(tmp_path / "x.npy")],
        hub_env(hub, tmp_path / "empty-cache", offline=True),
        expect=1,
    )
    assert "offline" in failed.stderr.lower() or "cache" in failed.stderr.lower()


def tiny_image_pipeline(seed: int) -> DiTImagePipeline:
    torch.manual_seed(seed)
    model = DiTModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    return DiTImagePipeline(randomize_(model, std=0.05, seed=seed), DiTDDPMScheduler(timestep_respacing="3"))


def test_interrupted_upload_leaves_the_previous_commit_and_a_retry_succeeds(hub, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    tiny_image_pipeline(seed=0).save_pretrained(tmp_path / "v1")
    run(["-m", "dit_pipelines.cli", "push", str(tmp_path / "v1"), "tester/flaky"], env)
    before = hub.repos["tester/flaky"].head
    tiny_image_pipeline(seed=1).save_pretrained(tmp_path / "v2")

    hub.drop_next("POST", r"/commit/main$")  # the connection dies while the commit is being sent
    failed = run(["-m", "dit_pipelines.cli", "push", str(tmp_path / "v2"), "tester/flaky"], env, expect=2)
    assert "dit-pipelines push: error" in failed.stderr
    assert hub.repos["tester/flaky"].head == before  # nothing half-applied
    hub._drops.clear()

    run(["-m", "dit_pipelines.cli", "push", str(tmp_path / "v2"), "tester/flaky"], env)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert hub.repos["tester/flaky"].head != before
    assert hub.files("tester/flaky")[weights] == (tmp_path / "v2" / weights).read_bytes()


def tiny_video_pipeline(timestep_respacing: str) -> DiTTextToVideoPipeline:
    captions = [f"the digit {d} moves {w}" for d in range(10) for w in ("up", "down")]
    tokenizer = train_t5_tokenizer(captions, model_max_length=12)
    transformer = VideoDiTModel(
        sample_size=8,
        sample_frames=2,
        patch_size=4,
        in_channels=1,
        hidden_size=16,
        depth=1,
        num_heads=2,
        text_embed_dim=8,
    )
    encoder = small_t5_encoder(len(tokenizer), d_model=8, num_layers=1, num_heads=2)
    return DiTTextToVideoPipeline(
        tokenizer, encoder, randomize_(transformer, std=0.1), DiTDDPMScheduler(timestep_respacing=timestep_respacing)
    )


def test_a_video_pipeline_loads_by_repo_id(hub, tmp_path):
    tiny_video_pipeline(timestep_respacing="3").save_pretrained(tmp_path / "video")
    env = hub_env(hub, tmp_path / "home")
    run(["-m", "dit_pipelines.cli", "push", str(tmp_path / "video"), "tester/tiny-t2v"], env)
    assert front_matter(hub.files("tester/tiny-t2v")["README.md"])["pipeline_tag"] == "text-to-video"
    run(["-c", SAMPLE, "tester/tiny-t2v", str(tmp_path / "hub.npy")], env)
    run(["-c", SAMPLE, str(tmp_path / "video"), str(tmp_path / "local.npy")], env)
    np.testing.assert_array_equal(np.load(tmp_path / "hub.npy"), np.load(tmp_path / "local.npy"))


def test_convert_an_original_checkpoint_then_sample_from_the_command_line(tmp_path):
    torch.manual_seed(0)
    original = randomize_(
        DiTModel(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=5),
        std=0.05,
    )
    torch.save(dit_to_original_state_dict(original.state_dict()), tmp_path / "DiT-tiny.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli_module, converted = ["-m", "dit_pipelines.cli"], str(tmp_path / "conv")
    convert = ["convert", str(tmp_path / "DiT-tiny.pt"), "--output", converted]
    run(cli_module + convert + "--sampling_respacing 4 --num_heads 2".split(), env)
    sample = ["sample", converted, *"--labels 1 4 --seed 3".split()]
    run(cli_module + sample + ["--output", str(tmp_path / "cli.png")], env)
    run(cli_module + sample + ["--cache_interval", "2", "--output", str(tmp_path / "cached.png")], env)

    pipe = DiffusionPipeline.from_pretrained(tmp_path / "conv")
    assert isinstance(pipe, DiTImagePipeline) and pipe.scheduler.config.timestep_respacing == "4"
    pipe.set_progress_bar_config(disable=True)
    images = pipe([1, 4], generator=torch.Generator().manual_seed(3), output_type="np").images
    expected = np.concatenate(list((images * 255).round().astype(np.uint8)), axis=1)  # a 1x2 grid
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli.png").convert("RGB")), expected)
    for name, tensor in pipe.transformer.state_dict().items():
        torch.testing.assert_close(tensor, original.state_dict()[name], rtol=0, atol=0)
    cached = pipe([1, 4], generator=torch.Generator().manual_seed(3), output_type="np", cache_interval=2).images
    expected = np.concatenate(list((cached * 255).round().astype(np.uint8)), axis=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cached.png").convert("RGB")), expected)


def test_command_line_help_and_errors(tmp_path, capsys):
    for command in ("sample", "convert", "push"):
        with pytest.raises(SystemExit) as exit:
            cli([command, "--help"])
        assert exit.value.code == 0 and f"usage: dit-pipelines {command}" in capsys.readouterr().out
    assert cli(["convert", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "o")]) == 2
    assert "is neither a checkpoint file nor a folder" in capsys.readouterr().err
    assert cli(["push", str(tmp_path), "tester/x"]) == 2
    assert "is not a saved pipeline folder" in capsys.readouterr().err
    tiny_image_pipeline(seed=0).save_pretrained(tmp_path / "pipe")
    assert cli(["sample", str(tmp_path / "pipe"), "--labels", "1", "--output", str(tmp_path / "x.gif")]) == 2
    assert "needs --labels and an --output ending in .png" in capsys.readouterr().err
    assert cli(["sample", str(tmp_path / "pipe"), "--labels", "cat", "--output", str(tmp_path / "x.png")]) == 2
    assert "Unknown class name(s) ['cat']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        cli(["sample", str(tmp_path / "pipe")])  # --output is required
    assert exit.value.code == 2


def test_model_card_is_filled_from_the_run_folder(tmp_path):
    folder = tmp_path / "run"
    tiny_image_pipeline(seed=0).save_pretrained(folder)
    training = {
        "learning_rate": 0.002,
        "max_train_steps": 14000,
        "init_from": "someone/dit-base",
        "hub_token": None,
        "dataset": "someone/pets",
    }
    (folder / "training_args.json").write_text(json.dumps(training))
    metrics = [Metric("class accuracy", 0.985, "{:.1%}", "a classifier's"), Metric("FID", 61.14, "{:.1f}")]
    EvaluationRecord("quality", metrics, {"guidance_scale": 4.0}, "Measured with a test's record.").save(str(folder))
    Image.new("L", (8, 8)).save(folder / "samples.png")
    card = model_card(str(folder), "tester/dit-pets")
    assert card.data.library_name == "diffusers" and card.data.base_model == "someone/dit-base"
    assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.datasets == ["someone/pets"]
    text = card.content
    assert front_matter(text.encode())["base_model"] == "someone/dit-base"
    assert "### quality" in text and "| class accuracy | 98.5% | a classifier's |" in text and "| FID | 61.1 |" in text
    assert "Settings: guidance_scale = 4.0." in text and "Measured with a test's record." in text
    assert "| learning_rate | 0.002 |" in text and "hub_token" not in text
    assert 'DiffusionPipeline.from_pretrained("tester/dit-pets")' in text and "![Samples](samples.png)" in text
    assert "mnist" not in text.lower()  # the card knows no dataset but the one the run names
    assert "| hidden_size | 32 |" in text and "| timestep_respacing | 3 |" in text
    gflops = DiffusionPipeline.from_pretrained(folder).transformer.gflops()
    assert "| block_type | adaln_zero |" in text and f"counted as DiT's Table 4) | {gflops:.4g} |" in text
    assert "decoder_depth" not in text  # no MaskDiT decoder, no row
    with pytest.raises(ValueError, match="is not a saved pipeline"):
        model_card(str(tmp_path), "tester/x")


def test_video_model_card_names_the_vae_scheduler_and_prompt_following(tmp_path):
    from diffusers import AutoencoderKL

    pipe = tiny_video_pipeline(timestep_respacing="50")
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
    )
    pipe.register_modules(vae=vae, scheduler=DiTDDIMScheduler.from_config(pipe.scheduler.config))
    pipe.save_pretrained(tmp_path / "t2v")
    (tmp_path / "t2v" / "clips").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "t2v" / "clips" / "held_out.gif")
    settings = {"clips": 100, "scheduler": "DiTDDIMScheduler", "num_inference_steps": 50}
    record = EvaluationRecord(
        "prompt_following", [Metric("right digit", 0.83, "{:.1%}")], settings, sample="clips/held_out.gif"
    )
    record.save(str(tmp_path / "t2v"))
    (tmp_path / "t2v" / "training_args.json").write_text(json.dumps({"validation_prompts": ["a cat jumps"]}))
    text = model_card(str(tmp_path / "t2v"), "tester/t2v").content
    assert "| vae | AutoencoderKL, f = 4, 4 latent channels |" in text
    assert "| scheduler | DiTDDIMScheduler |" in text and "num_inference_steps = 50" in text
    assert "| right digit | 83.0% |" in text and "![Generated clips](clips/held_out.gif)" in text
    assert '"a cat jumps",' in text  # the usage example prompts as the run validated


def test_sample_videos_from_the_command_line(tmp_path, capsys, monkeypatch):
    tiny_video_pipeline(timestep_respacing="2").save_pretrained(tmp_path / "t2v")
    prompts = ["the digit 3 moves up", "the digit 5 moves down"]
    assert (
        cli(
            [
                "sample",
                str(tmp_path / "t2v"),
                "--prompt",
                *prompts,
                "--num_frames",
                "4",
                "--output",
                str(tmp_path / "clip.gif"),
            ]
        )
        == 0
    )
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 4 and gif.size == (2 * 8, 8)  # the two clips side by side, 4 frames
    assert cli(["sample", str(tmp_path / "t2v"), "--prompt", prompts[0], "--output", str(tmp_path / "clip.mp4")]) == 0
    assert (tmp_path / "clip.mp4").stat().st_size > 0
    assert cli(["sample", str(tmp_path / "t2v"), "--labels", "3", "--output", str(tmp_path / "x.png")]) == 2
    assert "A video pipeline needs --prompt and an --output ending in .gif/.mp4" in capsys.readouterr().err
    from dit_pipelines.pipelines import denoising as module

    intervals, make_cache = [], module.feature_cache_for
    monkeypatch.setattr(module, "feature_cache_for", lambda k: intervals.append(k) or make_cache(k))
    cached = ["--cache_interval", "2", "--output", str(tmp_path / "cached.gif")]
    assert cli(["sample", str(tmp_path / "t2v"), "--prompt", prompts[0], *cached]) == 0
    assert intervals == [2] and Image.open(tmp_path / "cached.gif").n_frames == 2  # the model's sample_frames


def test_the_console_script_is_installed():
    import shutil

    script = shutil.which("dit-pipelines", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert script is not None, "pip install -e . installs the dit-pipelines command"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "{sample,sample-batch,convert,push,evaluate}" in done.stdout


def test_a_push_uploads_only_what_the_pipeline_needs(hub, tmp_path):
    """An allow-list, not a deny-list: a latent cache, an .env, stray pickles and binaries, checkpoints and
    validation samples in the run folder stay local; the card lists what went up."""
    folder = tmp_path / "run"
    tiny_video_pipeline(timestep_respacing="3").save_pretrained(folder)
    strays = "latents-0123abcd.pt .env stray.pkl transformer/extra.bin notes.txt checkpoint-2/model.safetensors"
    for stray in (strays + " validation/step-2.gif tokenizer/cache.pkl").split():
        (folder / stray).parent.mkdir(parents=True, exist_ok=True)
        (folder / stray).write_bytes(b"HF_TOKEN=secret")
    (folder / "clips").mkdir()
    Image.new("L", (8, 8)).save(folder / "clips" / "held_out.gif")
    EvaluationRecord("prompt_following", [Metric("right digit", 0.5, "{:.0%}")], sample="clips/held_out.gif").save(
        str(folder)
    )
    (folder / "training_args.json").write_text(json.dumps({"max_train_steps": 2}))
    run(["-m", "dit_pipelines.cli", "push", str(folder), "tester/allow-listed"], hub_env(hub, tmp_path / "home"))

    files = set(hub.files("tester/allow-listed"))
    expected = {"README.md", "model_index.json", "training_args.json", "evaluation/prompt_following.json"}
    expected |= {"clips/held_out.gif", "scheduler/scheduler_config.json", "transformer/config.json"}
    expected |= {"transformer/diffusion_pytorch_model.safetensors", "text_encoder/config.json"}
    assert expected <= files
    assert {f for f in files if f.split("/")[0] in ("tokenizer", "text_encoder")} == {
        f"{c}/{p.name}" for c in ("tokenizer", "text_encoder") for p in (folder / c).iterdir() if p.suffix != ".pkl"
    }
    assert not files & {"latents-0123abcd.pt", ".env", "stray.pkl", "transformer/extra.bin", "notes.txt"}
    assert not [f for f in files if f.startswith(("checkpoint-", "validation/")) or f.endswith(".pkl")]
    card = hub.files("tester/allow-listed")["README.md"].decode()
    assert "## Files" in card and "- `transformer/diffusion_pytorch_model.safetensors`" in card and ".env" not in card
