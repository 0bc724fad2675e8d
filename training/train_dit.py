"""Train a class-conditional DiT with Accelerate: the recipe of Peebles & Xie (2023) (hybrid loss with learned
sigma, EMA, optionally VAE latents) plus resume, mixed precision, accumulation, validation grids and a saved
diffusers pipeline at the end.

    accelerate launch training/train_dit.py --dataset mnist --preset DiT-S/4 --output_dir outputs/dit-mnist
    python -c "import dit_pipelines, diffusers; diffusers.DiffusionPipeline.from_pretrained('outputs/dit-mnist')"

Also importable: `main(parse_args([...]))` returns the output folder.
"""

import argparse
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.utils import make_image_grid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dit_pipelines import DIT_PRESETS, DiTDDPMScheduler, DiTImagePipeline, DiTModel  # noqa: E402
from dit_pipelines.data import class_names, load_image_dataset  # noqa: E402
from dit_pipelines.pipelines.common import transformer_folder  # noqa: E402
from training.common import resolve_resume_path  # noqa: E402
from training.image_data import build_training_data  # noqa: E402
from training.loop import add_training_args, make_accelerator, noise_scheduler_for, sampling_scheduler_for, train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="mnist",
        help="'mnist', an image folder (class = sub-folder), a folder "
        "saved with datasets' save_to_disk, or a datasets name",
    )
    data.add_argument("--dataset_config", default=None, help="datasets config name")
    data.add_argument("--split", default="train")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--resolution", type=int, default=None, help="training image size (default: the data's)")
    data.add_argument("--random_flip", action="store_true", help="flip images horizontally at random")
    data.add_argument("--max_train_samples", type=int, default=None, help="use the first N samples only")
    model = p.add_argument_group("model")
    model.add_argument("--preset", default="DiT-S/4", choices=sorted(DIT_PRESETS), help="DiT size and patch")
    for name in ("hidden_size", "depth", "num_heads", "patch_size"):
        model.add_argument(f"--{name}", type=int, default=None, help=f"override the preset's {name}")
    model.add_argument(
        "--learn_sigma",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learn the variance (hybrid loss); --no-learn_sigma trains L_simple with fixed variance",
    )
    model.add_argument("--class_dropout_prob", type=float, default=0.1, help="label dropout for guidance")
    model.add_argument("--init_from", default=None, help="start from a saved DiTModel or DiTImagePipeline folder")
    model.add_argument("--vae", default=None, help="AutoencoderKL path or repo id: train on its latents")
    model.add_argument("--precompute_latents", action="store_true", help="encode the data once with the VAE")
    add_training_args(p)
    p.add_argument("--validation_images_per_class", type=int, default=2, help="columns of the validation grids")
    return p.parse_args(argv)


def build_model(args, in_channels: int, sample_size: int, num_classes: int) -> DiTModel:
    if args.init_from:
        model = DiTModel.from_pretrained(transformer_folder(args.init_from))
        if model.config.in_channels != in_channels:
            raise ValueError(
                f"The model at {args.init_from} takes {model.config.in_channels} input channels, but the data has "
                f"{in_channels} (the VAE's latent channels, or the image channels without a VAE)."
            )
        return model
    overrides = {k: getattr(args, k) for k in ("hidden_size", "depth", "num_heads", "patch_size") if getattr(args, k)}
    return DiTModel.from_preset(
        args.preset,
        sample_size=sample_size,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=args.learn_sigma,
        class_dropout_prob=args.class_dropout_prob,
        **overrides,
    )


def sample_grid(pipe, num_classes, args, accelerator, step):
    """A class-conditional grid (one row per class, up to 10) from `pipe`, saved as a PNG and logged."""
    pipe = DiTImagePipeline(pipe.transformer, DiTDDPMScheduler.from_config(pipe.scheduler.config), vae=pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    classes = list(range(min(10, num_classes)))
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe(classes, num_images_per_prompt=args.validation_images_per_class, guidance_scale=args.guidance_scale,
                  num_inference_steps=args.num_inference_steps, generator=generator).images  # fmt: skip
    grid = make_image_grid(images, rows=len(classes), cols=args.validation_images_per_class)
    path = os.path.join(args.output_dir, "validation", f"step-{step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path


def main(args) -> str:
    accelerator = make_accelerator(args)
    resolve_resume_path(args.output_dir, args.resume_from_checkpoint)  # fail before any work

    # Data and model.
    vae = AutoencoderKL.from_pretrained(args.vae).to(accelerator.device).eval() if args.vae else None
    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column, args.dataset_config)
    if args.max_train_samples:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    names = class_names(dataset, args.label_column)
    patch_size = args.patch_size or DIT_PRESETS[args.preset]["patch_size"]
    if args.init_from:
        patch_size = DiTModel.load_config(transformer_folder(args.init_from))["patch_size"]
    data = build_training_data(dataset, args, vae, patch_size, accelerator)
    model = build_model(args, data.channels, data.sample_size, len(names))
    noise_scheduler = noise_scheduler_for(args, model.config.learn_sigma)

    def loss_fn(model, batch):
        x0, labels = data.to_model_input(batch, accelerator.device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, args.num_train_timesteps, (x0.shape[0],), device=x0.device)
        output = model(noise_scheduler.add_noise(x0, noise, t), t, labels).sample
        return noise_scheduler.training_loss(output.float(), x0, noise, t, vlb_weight=args.vlb_weight)

    def pipeline(model):
        return DiTImagePipeline(
            model, sampling_scheduler_for(args, noise_scheduler), vae=vae, id2label=dict(enumerate(names))
        )

    def validate(model, step):
        sample_grid(pipeline(model), len(names), args, accelerator, step)

    train(
        accelerator,
        args,
        model,
        data.dataset,
        loss_fn,
        validate,
        lambda m: pipeline(m).save_pretrained(args.output_dir),
        run_name="train_dit",
    )
    return args.output_dir


if __name__ == "__main__":
    main(parse_args())
