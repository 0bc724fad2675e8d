"""The training script end to end on a tiny generated dataset (8x8 grayscale bars of three orientations)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from safetensors.torch import load_file

from dit_pipelines import ClassConditionalUNet, DiTImagePipeline, DiTModel
from training.train_dit import main, parse_args

from .launching import finish, launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "training" / "train_dit.py")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run starts from a fresh Accelerate state, as a launched script does (the state is a
    process-wide singleton, which would keep the first run's mixed precision)."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def bars(tmp_path_factory):
    """48 images of 3 classes, saved with `save_to_disk`."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(48):
        label = i % 3
        image = rng.integers(0, 40, size=(8, 8)).astype(np.uint8)
        if label == 0:
            image[3:5, :] = 255
        elif label == 1:
            image[:, 3:5] = 255
        else:
            np.fill_diagonal(image, 255)
        images.append(image)
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["h", "v", "d"])})
    path = tmp_path_factory.mktemp("bars") / "dataset"
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return str(path)


def tiny_args(dataset, output_dir, *extra):
    return [
        "--dataset",
        dataset,
        "--output_dir",
        str(output_dir),
        *"--preset DiT-S/4 --hidden_size 32 --depth 2 --num_heads 2 --train_batch_size 8 --learning_rate 1e-3".split(),
        *"--sampling_respacing 4 --num_inference_steps 3".split(),
        *extra,
    ]


def weights(folder):
    return load_file(os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))


def test_tiny_run_saves_a_loadable_pipeline(bars, tmp_path):
    options = "--max_train_steps 4 --validation_steps 4 --checkpointing_steps 2 --checkpoints_total_limit 1"
    out = main(parse_args(tiny_args(bars, tmp_path / "run", *options.split())))
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, DiTImagePipeline) and pipe.id2label == {0: "h", 1: "v", 2: "d"}
    assert pipe.transformer.config.in_channels == 1 and pipe.transformer.config.learn_sigma
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.scheduler.config.timestep_respacing == "4"
    assert (tmp_path / "run" / "validation" / "step-4.png").exists()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]  # rotated
    images = pipe(["v", "d"], output_type="np", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1)
    # The saved transformer holds the EMA weights, which differ from the raw weights of the last step.
    raw = load_file(str(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))
    ema = weights(out)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if k != "pos_embed")


def test_the_block_type_reaches_the_saved_model_and_its_gflops_are_reported(bars, tmp_path, capsys):
    out = main(parse_args(tiny_args(bars, tmp_path / "run", "--max_train_steps", "2", "--block_type", "in_context")))
    model = DiffusionPipeline.from_pretrained(out).transformer
    assert model.config.block_type == "in_context"
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    report = f"DiTModel (in_context): {millions:.2f}M parameters, {model.gflops():.4g} Gflops per image at 8x8"
    assert report in capsys.readouterr().out


def test_the_unet_baseline_trains_saves_and_samples_through_the_same_pipeline(bars, tmp_path, capsys):
    options = "--architecture unet --unet_channels 16 32 --unet_layers_per_block 1 --max_train_steps 3"
    out = main(parse_args(tiny_args(bars, tmp_path / "unet", *options.split(), "--validation_steps", "3")))
    pipe = DiffusionPipeline.from_pretrained(out)
    unet = pipe.transformer
    assert isinstance(pipe, DiTImagePipeline) and isinstance(unet, ClassConditionalUNet)
    assert unet.config.block_out_channels == [16, 32] and unet.num_classes == 3 and unet.learn_sigma
    assert (tmp_path / "unet" / "validation" / "step-3.png").exists()
    millions = sum(p.numel() for p in unet.parameters()) / 1e6
    report = f"ClassConditionalUNet: {millions:.2f}M parameters, {unet.gflops():.4g} Gflops per image at 8x8"
    assert report in capsys.readouterr().out
    # the raw weights moved (three AdamW steps), the saved ones are the EMA of them
    raw = load_file(str(tmp_path / "unet" / "checkpoint-3" / "model.safetensors"))
    initial = ClassConditionalUNet.from_config(unet.config).state_dict()
    assert any(not torch.equal(raw[k], initial[k]) for k in raw)
    images = pipe(["v", "d"], guidance_scale=2.0, output_type="np", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="train the U-Net baseline in full"):
        main(
            parse_args(
                tiny_args(bars, tmp_path / "lora", "--architecture", "unet", "--init_from", out, "--lora_rank", "2")
            )
        )


def test_resume_gives_the_weights_of_an_uninterrupted_run(bars, tmp_path):
    common = ["--max_train_steps", "9", "--checkpointing_steps", "4", "--random_flip", "--ema_decay", "0.9"]
    main(parse_args(tiny_args(bars, tmp_path / "full", *common)))
    (tmp_path / "resumed").mkdir()
    os.rename(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    main(parse_args(tiny_args(bars, tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest")))
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # EMA weights
    raw_full = load_file(str(tmp_path / "full" / "checkpoint-9" / "model.safetensors"))
    raw_resumed = load_file(str(tmp_path / "resumed" / "checkpoint-9" / "model.safetensors"))
    assert all(torch.equal(raw_full[k], raw_resumed[k]) for k in raw_full)


def test_l_simple_path_without_learned_sigma(bars, tmp_path):
    out = main(parse_args(tiny_args(bars, tmp_path / "simple", "--max_train_steps", "2", "--no-learn_sigma")))
    pipe = DiffusionPipeline.from_pretrained(out)
    assert pipe.transformer.out_channels == 1 and pipe.scheduler.config.variance_type == "fixed_small"


def tiny_vae(path, latent_channels=4):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.7,
    )
    vae.save_pretrained(path)
    return str(path)


def test_latent_training_with_precomputed_latents(bars, tmp_path):
    vae = tiny_vae(tmp_path / "vae")
    out = main(
        parse_args(
            tiny_args(
                bars,
                tmp_path / "latent",
                "--max_train_steps",
                "3",
                "--vae",
                vae,
                *"--precompute_latents --random_flip --patch_size 2".split(),
            )
        )
    )
    (cache,) = (tmp_path / "latent" / "cache").glob("latents-*")  # the sharded on-disk latent cache
    assert (cache / "manifest.json").exists() and list(cache.glob("shard-*.safetensors"))
    pipe = DiffusionPipeline.from_pretrained(out)
    assert (
        pipe.vae is not None and pipe.transformer.config.in_channels == 4 and pipe.transformer.config.sample_size == 4
    )
    assert pipe(0, output_type="np", generator=torch.manual_seed(0)).images.shape == (1, 8, 8, 1)


def test_two_process_cpu_run_completes_and_saves_once(bars, tmp_path):
    args = tiny_args(bars, tmp_path / "ddp", "--max_train_steps", "3", "--checkpointing_steps", "2")
    log = finish(launch(SCRIPT, args), timeout=300)
    assert log.count("Saved the pipeline") == 1
    assert "random_states_1.pkl" in os.listdir(tmp_path / "ddp" / "checkpoint-3")  # the second process's RNG
    DiffusionPipeline.from_pretrained(tmp_path / "ddp")

    # only the second process's RNG state of the newest checkpoint cannot be read: both processes skip it together
    (tmp_path / "ddp" / "checkpoint-3" / "random_states_1.pkl").write_bytes(b"not a pickle")
    options = "--max_train_steps 4 --checkpointing_steps 2 --resume_from_checkpoint latest".split()
    log = finish(launch(SCRIPT, tiny_args(bars, tmp_path / "ddp", *options)), timeout=300)
    assert log.count("random_states_1.pkl cannot be read safely") >= 1
    assert f"Resumed from {tmp_path / 'ddp' / 'checkpoint-2'} at step 2" in log


def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint(bars, tmp_path):
    out = tmp_path / "killed"
    args = tiny_args(bars, out, "--checkpointing_steps", "3")
    process = subprocess.Popen(
        [sys.executable, SCRIPT, *args, "--max_train_steps", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not list(out.glob("checkpoint-*[0-9]")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*[0-9]"))
    assert done, "no checkpoint was written before the kill"
    (out / f"checkpoint-{done[-1] + 3}.tmp").mkdir(exist_ok=True)  # as if killed while writing the next one
    finish = done[-1] + 2
    result = subprocess.run(
        [sys.executable, SCRIPT, *args, "--max_train_steps", str(finish), "--resume_from_checkpoint", "latest"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {out / f'checkpoint-{done[-1]}'} at step {done[-1]}" in result.stderr
    state = json.loads((out / f"checkpoint-{finish}" / "training_state.json").read_text())
    assert state["global_step"] == finish
    DiffusionPipeline.from_pretrained(out)


def test_error_dataset_without_the_label_column(bars, tmp_path):
    with pytest.raises(ValueError, match="has no label column 'digit'; its columns are \\['image', 'label'\\]"):
        main(parse_args(tiny_args(bars, tmp_path / "x", "--label_column", "digit", "--max_train_steps", "1")))


def test_error_images_smaller_than_the_patch_grid(bars, tmp_path):
    with pytest.raises(ValueError, match="Images of 8x8 give a 8x8 model input .* not a whole grid of 16x16 patches"):
        main(parse_args(tiny_args(bars, tmp_path / "x", "--patch_size", "16", "--max_train_steps", "1")))


def test_error_resume_path_that_does_not_exist(bars, tmp_path):
    with pytest.raises(ValueError, match="--resume_from_checkpoint '/no/such/checkpoint' is not a checkpoint folder"):
        main(parse_args(tiny_args(bars, tmp_path / "x", "--resume_from_checkpoint", "/no/such/checkpoint")))


def test_error_vae_latent_channels_do_not_match_the_model(bars, tmp_path):
    DiTModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3
    ).save_pretrained(tmp_path / "model")
    vae = tiny_vae(tmp_path / "vae", latent_channels=2)
    with pytest.raises(ValueError, match="takes 4 input channels, but the data has 2 \\(the VAE's latent channels"):
        main(
            parse_args(
                tiny_args(
                    bars, tmp_path / "x", "--vae", vae, "--init_from", str(tmp_path / "model"), "--max_train_steps", "1"
                )
            )
        )


def test_mixed_precision_accumulation_checkpointing_and_clipping(bars, tmp_path):
    options = "--max_train_steps 2 --mixed_precision bf16 --gradient_accumulation_steps 2 --gradient_checkpointing "
    options += "--max_grad_norm 1.0 --lr_scheduler cosine --lr_warmup_steps 1"
    out = main(parse_args(tiny_args(bars, tmp_path / "mp", *options.split())))
    state = json.loads((tmp_path / "mp" / "checkpoint-2" / "training_state.json").read_text())
    assert state["global_step"] == 2
    assert DiffusionPipeline.from_pretrained(out).transformer.dtype == torch.float32


def test_preloaded_and_streamed_images_are_the_same(bars, monkeypatch):
    import dit_pipelines.training.image_data as image_data

    data = datasets.load_from_disk(bars)
    preloaded = image_data.LabelledImages(data, "image", "label", resolution=8, channels=1)
    monkeypatch.setattr(image_data, "PRELOAD_BYTES", 0)
    streamed = image_data.LabelledImages(data, "image", "label", resolution=8, channels=1)
    assert preloaded.preloaded is not None and streamed.preloaded is None
    for i in (0, 17, 47):
        assert torch.equal(preloaded[i]["pixels"], streamed[i]["pixels"])
        assert preloaded[i]["label"] == streamed[i]["label"] == i % 3


@pytest.mark.parametrize("dropout_prob, null_class_trains", [(0.5, True), (1e-9, False)])
def test_the_loss_drops_labels_to_the_null_class_at_class_dropout_prob(bars, tmp_path, dropout_prob, null_class_trains):
    """Label dropout moved from the model to the training loss: the null class's embedding gets gradients (and
    moves) only when labels are dropped; with a null class that is never drawn its row stays as initialised."""
    options = f"--max_train_steps 3 --checkpointing_steps 1 --class_dropout_prob {dropout_prob}".split()
    main(parse_args(tiny_args(bars, tmp_path / "run", *options)))

    def null_row(step):
        raw = load_file(str(tmp_path / "run" / f"checkpoint-{step}" / "model.safetensors"))
        return raw["class_embedder.embedding_table.weight"][3]  # 3 classes: the null class is index 3

    assert torch.equal(null_row(1), null_row(3)) is not null_class_trains


def test_a_diverging_run_stops_with_an_error_and_saves_nothing_non_finite(bars, tmp_path):
    from dit_pipelines.training.nonfinite import NonFiniteError
    from dit_pipelines.training.sharding import all_finite_everywhere as all_finite

    options = "--learning_rate 1e6 --max_train_steps 40 --checkpointing_steps 2 --max_nonfinite_steps 2".split()
    with pytest.raises(NonFiniteError, match="not finite for 3 steps in a row .* Last good checkpoint: .*checkpoint-"):
        main(parse_args(tiny_args(bars, tmp_path / "nan", *options)))
    saved = sorted((tmp_path / "nan").glob("checkpoint-*/model.safetensors"))
    assert saved and all(all_finite(load_file(str(path)).values()) for path in saved)
    assert not (tmp_path / "nan" / "model_index.json").exists()  # no pipeline saved, none pushed


def test_a_non_finite_step_is_skipped_and_the_run_goes_on(tmp_path):
    """A NaN loss at step 2 leaves the weights, the EMA and the learning-rate schedule as step 1 left them."""
    from torch.utils.data import Dataset

    from dit_pipelines import DiTModel
    from dit_pipelines.training import RunConfig, TrainingConfig, make_accelerator, train
    from dit_pipelines.training.config import OptimizationConfig

    class Noise(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"x": torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(i))}

    model = DiTModel(sample_size=4, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2, num_classes=2)
    optimization = OptimizationConfig(train_batch_size=4, max_train_steps=3, learning_rate=1e-2, ema_decay=0.5)
    config = TrainingConfig(optimization=optimization, run=RunConfig(output_dir=str(tmp_path), checkpointing_steps=1))
    calls, states = [], []

    def loss_fn(model, batch, step):
        calls.append(1)
        out = model(batch["x"], torch.full((4,), 500), torch.zeros(4, dtype=torch.long)).sample
        loss = (out - batch["x"].repeat(1, 2, 1, 1)).pow(2).mean((1, 2, 3))
        if len(calls) == 2:
            loss = loss * float("nan")
        return type("Losses", (), {"loss": loss, "mse": loss, "vlb": None})()

    accelerator = make_accelerator(config)
    assert train(accelerator, config, model, Noise(), loss_fn) == 3
    for step in (1, 2, 3):
        states.append(load_file(str(tmp_path / f"checkpoint-{step}" / "model.safetensors")))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # step 2 skipped
    assert any(not torch.equal(states[1][k], states[2][k]) for k in states[0])  # step 3 trained
    emas = [load_file(str(tmp_path / f"checkpoint-{s}" / "ema.safetensors")) for s in (1, 2, 3)]
    assert all(torch.equal(emas[0][k], emas[1][k]) for k in emas[0])  # no EMA update on the skipped step
    assert any(not torch.equal(emas[1][k], emas[2][k]) for k in emas[0])
    schedules = [torch.load(tmp_path / f"checkpoint-{s}" / "scheduler.bin", weights_only=True) for s in (1, 2, 3)]
    assert schedules[0]["_step_count"] == schedules[1]["_step_count"] < schedules[2]["_step_count"]


class Payload:
    """A pickle that, once unpickled with code execution, writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("ran",))


def test_resuming_unpickles_nothing_that_runs_code(bars, tmp_path):
    import pickle

    options = "--max_train_steps 2 --checkpointing_steps 2 --ema_decay 0.9".split()
    main(parse_args(tiny_args(bars, tmp_path / "run", *options)))
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "ema.safetensors").is_file() and not (checkpoint / "custom_checkpoint_0.pkl").exists()
    marker = tmp_path / "marker"
    more = "--max_train_steps 3 --checkpointing_steps 2 --ema_decay 0.9 --resume_from_checkpoint latest".split()
    # the EMA as accelerate pickled it before (loaded with weights_only=False), then a crafted RNG state
    cases = {
        "custom_checkpoint_0.pkl": "objects that only unpickling with code execution can read",
        "random_states_0.pkl": "cannot be read safely",
    }
    for name, refused in cases.items():
        original = checkpoint / name
        saved = original.read_bytes() if original.exists() else None
        original.write_bytes(pickle.dumps(Payload(marker)))
        with pytest.raises(ValueError, match=refused):
            main(parse_args(tiny_args(bars, tmp_path / "run", *more)))
        assert not marker.exists()
        original.unlink() if saved is None else original.write_bytes(saved)
    main(parse_args(tiny_args(bars, tmp_path / "run", *more)))  # the intact checkpoint resumes
    assert (tmp_path / "run" / "checkpoint-3").is_dir()


def test_latest_skips_incomplete_checkpoints_and_falls_back_from_one_that_cannot_load(bars, tmp_path, caplog):
    options = "--max_train_steps 4 --checkpointing_steps 2".split()
    main(parse_args(tiny_args(bars, tmp_path / "run", *options)))
    run = tmp_path / "run"
    (run / "checkpoint-9").mkdir()  # empty: no state file, never complete
    (run / "checkpoint-4" / "model.safetensors").write_bytes(b"truncated")  # the newest cannot be read
    more = "--max_train_steps 5 --checkpointing_steps 2 --resume_from_checkpoint latest".split()
    main(parse_args(tiny_args(bars, run, *more)))
    assert f"Skipping {run / 'checkpoint-4'}, which could not be loaded" in caplog.text
    assert f"Resumed from {run / 'checkpoint-2'} at step 2" in caplog.text
    assert (run / "checkpoint-5" / "training_state.json").is_file()


def test_a_second_run_on_the_same_folder_is_refused_and_a_stale_lock_is_taken_over(bars, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / ".training.lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(ValueError, match=f"is in use by another run \\(process {other.pid} on "):
            main(parse_args(tiny_args(bars, folder, "--max_train_steps", "1")))
    finally:
        other.kill()
        other.wait()
    main(parse_args(tiny_args(bars, folder, "--max_train_steps", "1")))  # its process is gone: stale, taken over
    assert (folder / "model_index.json").is_file() and not (folder / ".training.lock").exists()
    assert not (folder / ".pipeline.tmp").exists()


def test_an_output_folder_that_is_not_writable_is_refused_before_any_work(bars, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a path under a file instead of a read-only folder
        (tmp_path / "file").write_text("")
        folder = tmp_path / "file" / "run"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        folder = tmp_path / "ro" / "run"
    with pytest.raises(ValueError, match=f"--output_dir {folder} cannot be written"):
        main(parse_args(tiny_args(bars, folder, "--max_train_steps", "1")))


KILLABLE = textwrap.dedent("""
    # train_dit.py, but a write of interest stops half-way (marker file, then sleep) so that it can be killed there
    import runpy, sys, time
    from pathlib import Path

    marker, where, script, *args = sys.argv[1:]

    def stall():
        Path(marker).write_text("writing")
        time.sleep(120)

    if where == "checkpoint":  # accelerate writes the schedule state of checkpoint-4.tmp: half of it, then stall
        import accelerate.checkpointing as checkpointing

        save = checkpointing.save

        def half_save(obj, path, *a, **k):
            if "checkpoint-4.tmp" in str(path) and str(path).endswith("scheduler.bin"):
                Path(path).write_bytes(b"partial")
                stall()
            return save(obj, path, *a, **k)

        checkpointing.save = half_save
    else:  # the final pipeline: the transformer written, then stall before the other components
        from diffusers import ModelMixin

        save_pretrained = ModelMixin.save_pretrained

        def stalling(self, *a, **k):
            save_pretrained(self, *a, **k)
            stall()

        ModelMixin.save_pretrained = stalling
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
""")


def run_and_kill_while_writing(where, args, marker):
    command = [sys.executable, "-c", KILLABLE, str(marker), where, SCRIPT, *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the run never reached the write"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_killed_while_writing_a_checkpoint_the_run_resumes_from_the_one_before(bars, tmp_path):
    options = ["--checkpointing_steps", "2", "--ema_decay", "0.9", "--max_train_steps", "6"]
    main(parse_args(tiny_args(bars, tmp_path / "full", *options)))
    out = tmp_path / "killed"
    run_and_kill_while_writing("checkpoint", tiny_args(bars, out, *options), tmp_path / "marker")
    assert (out / "checkpoint-4.tmp" / "scheduler.bin").read_bytes() == b"partial"  # killed mid-write
    assert not (out / "checkpoint-4").exists() and (out / ".training.lock").exists()  # the lock is stale now
    main(parse_args(tiny_args(bars, out, *options, "--resume_from_checkpoint", "latest")))
    assert weights(out).keys() == weights(tmp_path / "full").keys()
    assert all(torch.equal(weights(out)[k], weights(tmp_path / "full")[k]) for k in weights(out))


def test_killed_while_saving_the_pipeline_the_folder_holds_no_half_pipeline(bars, tmp_path):
    out = tmp_path / "killed"
    options = ["--checkpointing_steps", "2", "--max_train_steps", "2"]
    run_and_kill_while_writing("pipeline", tiny_args(bars, out, *options), tmp_path / "marker")
    assert (out / ".pipeline.tmp" / "transformer" / "config.json").exists()  # killed half-way through the save
    assert not (out / "model_index.json").exists() and not (out / "transformer").exists()
    main(parse_args(tiny_args(bars, out, *options, "--resume_from_checkpoint", "latest")))
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, DiTImagePipeline) and not (out / ".pipeline.tmp").exists()

    # trained on and killed again while saving over that pipeline: the complete one stays as it was
    saved = weights(out)
    longer = ["--checkpointing_steps", "2", "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]
    run_and_kill_while_writing("pipeline", tiny_args(bars, out, *longer), tmp_path / "marker-2")
    assert (out / ".pipeline.tmp" / "transformer" / "config.json").exists()
    assert all(torch.equal(weights(out)[k], saved[k]) for k in saved)
    assert isinstance(DiffusionPipeline.from_pretrained(out), DiTImagePipeline)


def test_non_finite_weights_are_never_saved():
    from dit_pipelines.training.nonfinite import NonFiniteError, NonFiniteGuard

    guard = NonFiniteGuard(max_consecutive=3)
    guard.last_checkpoint = "out/checkpoint-4"
    guard.check_weights([torch.ones(3)], "checkpoint-6")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteError, match="Not saving checkpoint-6: .* Last good checkpoint: out/checkpoint-4"):
            guard.check_weights([torch.ones(3), torch.tensor([1.0, bad])], "checkpoint-6")
