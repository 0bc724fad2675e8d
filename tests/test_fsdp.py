"""The image training script under accelerate's FSDP (FSDP2, `training/configs/fsdp.yaml`) on 2 CPU processes over
gloo: a run completes and saves once, resuming from its checkpoint gives the uninterrupted run's weights, and its EMA
equals that of the same run under DDP."""

import os
import shutil

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from .launching import finish, launch
from .test_training import ROOT, SCRIPT, bars, tiny_args  # noqa: F401 (bars: fixture)

FSDP_CONFIG = str(ROOT / "training" / "configs" / "fsdp.yaml")


def test_fsdp_run_saves_once_resumes_exactly_and_its_ema_equals_ddps(bars, tmp_path):  # noqa: F811
    options = "--max_train_steps 4 --checkpointing_steps 2 --ema_decay 0.9 --seed 3".split()
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    runs = [
        launch(SCRIPT, tiny_args(bars, fsdp, *options), FSDP_CONFIG),
        launch(SCRIPT, tiny_args(bars, ddp, *options)),
    ]
    fsdp_log, _ = (finish(run) for run in runs)
    assert os.path.isdir(fsdp / "checkpoint-4" / "pytorch_model_fsdp_0")  # sharded (FSDP), not DDP, checkpoints
    assert fsdp_log.count("Saved the pipeline") == 1
    pipe = DiffusionPipeline.from_pretrained(fsdp)
    assert pipe(0, num_inference_steps=2, output_type="np").images.shape[1:3] == (8, 8)

    # resume from the FSDP run's step-2 checkpoint, in a fresh folder
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(fsdp / "checkpoint-2", resumed / "checkpoint-2")
    finish(launch(SCRIPT, tiny_args(bars, resumed, *options, "--resume_from_checkpoint", "latest"), FSDP_CONFIG))

    def saved(folder):
        return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))

    uninterrupted, again, data_parallel = saved(fsdp), saved(resumed), saved(ddp)
    assert uninterrupted.keys() == again.keys() == data_parallel.keys()
    for name, value in uninterrupted.items():  # the saved (EMA) weights
        torch.testing.assert_close(again[name], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(data_parallel[name], value, rtol=0, atol=1e-6)
    ema_fsdp = load_file(str(fsdp / "checkpoint-4" / "ema.safetensors"))
    ema_ddp = load_file(str(ddp / "checkpoint-4" / "ema.safetensors"))
    assert ema_fsdp.keys() == ema_ddp.keys()
    assert max((ema_fsdp[k] - ema_ddp[k]).abs().max().item() for k in ema_fsdp) <= 1e-6
    assert max((ema_fsdp[k] - uninterrupted[k]).abs().max().item() for k in ema_fsdp) == 0  # the pipeline is the EMA
