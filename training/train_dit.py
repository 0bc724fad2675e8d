"""Train a class-conditional DiT with Accelerate on your own labelled images: the recipe of Peebles & Xie (2023)
(hybrid loss with learned sigma, EMA, optionally VAE latents) plus resume, mixed precision, accumulation,
validation grids (and FID: `--validation_fid_reference`) and a saved diffusers pipeline at the end.

    accelerate launch training/train_dit.py --dataset path/to/images --preset DiT-S/4 --output_dir outputs/dit
    python -c "import dit_pipelines, diffusers; diffusers.DiffusionPipeline.from_pretrained('outputs/dit')"

`--dataset` is an image folder with one sub-folder per class, a folder saved with `datasets.save_to_disk`, or a
`datasets` name. Also importable: `main(parse_args([...]))` returns the output folder.
"""

import argparse
import os

import numpy as np
import torch
from diffusers.utils import make_image_grid

from dit_pipelines import DIT_PRESETS, ClassConditionalUNet, DiTDDPMScheduler, DiTImagePipeline, DiTModel
from dit_pipelines.data import class_names, load_image_dataset
from dit_pipelines.models import BLOCK_TYPES
from dit_pipelines.models.unet_baseline import unet_input_multiple
from dit_pipelines.pipelines.saved_layout import transformer_folder
from dit_pipelines.training import (
    AdapterConfig,
    ImageDataConfig,
    LatentConfig,
    TrainingConfig,
    add_arguments,
    add_lora_adapter,
    add_training_arguments,
    build_training_images,
    drop_labels,
    from_arguments,
    load_vae,
    make_accelerator,
    noise_scheduler_for,
    resolve_resume_path,
    sampling_scheduler_for,
    train,
)
from dit_pipelines.training.masking import check_mask_ratio, check_patch_values, masked_diffusion_loss, visible_tokens
from dit_pipelines.training.validation_fid import ValidationFID, ValidationFIDConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, ImageDataConfig, LatentConfig)
    model = p.add_argument_group("model")
    model.add_argument("--preset", default="DiT-S/4", choices=sorted(DIT_PRESETS), help="DiT size and patch")
    for name in ("hidden_size", "depth", "num_heads", "patch_size"):
        model.add_argument(f"--{name}", type=int, default=None, help=f"override the preset's {name}")
    model.add_argument(
        "--block_type", default="adaln_zero", choices=BLOCK_TYPES, help="the block design (DiT paper, section 3.2)"
    )
    model.add_argument(
        "--architecture",
        default="dit",
        choices=["dit", "unet"],
        help="dit, or the U-Net baseline (diffusers' UNet2DModel, ADM-style, sampled by the same pipeline)",
    )
    model.add_argument(
        "--unet_channels",
        type=int,
        nargs="+",
        default=[128, 256, 256],
        help="--architecture unet: the width of each level (each but the last halves the resolution)",
    )
    model.add_argument("--unet_layers_per_block", type=int, default=2, help="--architecture unet: resnets a level")
    masking = p.add_argument_group("masked training (MaskDiT, Zheng et al. 2023: dit_pipelines.training.masking)")
    masking.add_argument(
        "--mask_ratio", type=float, default=0.0, help="the share of patch tokens the encoder drops each step, in [0, 1)"
    )
    masking.add_argument(
        "--decoder_depth",
        type=int,
        default=None,
        help="blocks of the decoder that restores the dropped tokens (default with --mask_ratio > 0: a quarter of the "
        "encoder's, at least 1, as MaskDiT's 8 for 28; none otherwise)",
    )
    masking.add_argument(
        "--decoder_hidden_size",
        type=int,
        default=None,
        help="the decoder's width (default with --mask_ratio > 0: half the encoder's, as MaskDiT's 512 for 1152)",
    )
    masking.add_argument(
        "--unmask_finetune_steps",
        type=int,
        default=0,
        help="the last N of --max_train_steps train unmasked (ratio 0), closing the gap to sampling",
    )
    model.add_argument(
        "--learn_sigma",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learn the variance (hybrid loss); --no-learn_sigma trains L_simple with fixed variance",
    )
    model.add_argument("--class_dropout_prob", type=float, default=0.1, help="label dropout for guidance")
    model.add_argument("--init_from", default=None, help="start from a saved DiTModel or DiTImagePipeline folder")
    add_arguments(p, AdapterConfig)
    add_training_arguments(p)
    p.add_argument("--validation_images_per_class", type=int, default=2, help="columns of the validation grids")
    add_arguments(p, ValidationFIDConfig)
    args = p.parse_args(argv)
    if args.dataset is None:
        p.error("--dataset is required: an image folder, a save_to_disk folder or a datasets name")
    return args


def build_model(args, in_channels: int, sample_size: int, num_classes: int) -> "DiTModel | ClassConditionalUNet":
    kind = ClassConditionalUNet if args.architecture == "unet" else DiTModel
    if args.init_from:
        model = kind.from_pretrained(transformer_folder(args.init_from))
        if model.config.in_channels != in_channels:
            raise ValueError(
                f"The model at {args.init_from} takes {model.config.in_channels} input channels, but the data has "
                f"{in_channels} (the VAE's latent channels, or the image channels without a VAE)."
            )
        return model
    if args.architecture == "unet":
        return ClassConditionalUNet.for_images(
            sample_size,
            in_channels,
            num_classes,
            learn_sigma=args.learn_sigma,
            block_out_channels=args.unet_channels,
            layers_per_block=args.unet_layers_per_block,
        )
    overrides = {k: getattr(args, k) for k in ("hidden_size", "depth", "num_heads", "patch_size") if getattr(args, k)}
    decoder = {"decoder_depth": args.decoder_depth or 0, "decoder_hidden_size": args.decoder_hidden_size}
    if args.mask_ratio:  # MaskDiT's proportions: a decoder a quarter as deep and half as wide as the encoder
        config = {**DIT_PRESETS[args.preset], **overrides}
        decoder["decoder_depth"] = args.decoder_depth or max(1, config["depth"] // 4)
        decoder["decoder_hidden_size"] = args.decoder_hidden_size or config["hidden_size"] // 2
    return DiTModel.from_preset(
        args.preset,
        sample_size=sample_size,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=args.learn_sigma,
        class_dropout_prob=args.class_dropout_prob,
        block_type=args.block_type,
        **decoder,
        **overrides,
    )


def check_masking(args) -> None:
    """The `ValueError`s of a masked-training request that cannot run, before any work (the token count is checked
    once the data's size is known)."""
    check_mask_ratio(args.mask_ratio)
    if args.mask_ratio and args.architecture == "unet":
        raise ValueError("--mask_ratio drops patch tokens of a DiT; the U-Net baseline has none.")
    if args.unmask_finetune_steps:
        if not args.mask_ratio:
            raise ValueError("--unmask_finetune_steps ends a masked run (--mask_ratio > 0) unmasked.")
        if not args.max_train_steps or args.unmask_finetune_steps > args.max_train_steps:
            raise ValueError("--unmask_finetune_steps needs --max_train_steps, and at most that many steps.")


def sample_grid(pipe, num_classes: int, columns: int, config: TrainingConfig, accelerator, step: int) -> str:
    """A class-conditional grid (one row per class, up to 10; `columns` samples each) from `pipe`, saved as a PNG
    and logged."""
    run = config.run
    pipe = DiTImagePipeline(pipe.transformer, DiTDDPMScheduler.from_config(pipe.scheduler.config), vae=pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    classes = list(range(min(10, num_classes)))
    images = pipe(
        classes,
        num_images_per_prompt=columns,
        guidance_scale=run.guidance_scale,
        num_inference_steps=run.num_inference_steps,
        generator=torch.Generator().manual_seed(config.optimization.seed),
    ).images
    grid = make_image_grid(images, rows=len(classes), cols=columns)
    path = os.path.join(run.output_dir, "validation", f"step-{step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path


def main(args) -> str:
    config = TrainingConfig.from_arguments(args)
    adapter = from_arguments(AdapterConfig, args)
    objective, run = config.objective, config.run
    data_config, latent_config = from_arguments(ImageDataConfig, args), from_arguments(LatentConfig, args)
    accelerator = make_accelerator(config)
    adapter.check(args.init_from, accelerator)  # before any work
    if args.architecture == "unet" and adapter.enabled:
        raise ValueError("--lora_rank adapts a DiT's attention and MLP layers; train the U-Net baseline in full.")
    check_masking(args)
    fid_config = from_arguments(ValidationFIDConfig, args)
    fid_config.check(run.validation_steps)
    measure_fid = ValidationFID(
        fid_config, accelerator.device, guidance_scale=run.guidance_scale, num_inference_steps=run.num_inference_steps
    )
    resolve_resume_path(run.output_dir, run.resume_from_checkpoint)  # fail before any work

    # Data and model.
    vae = load_vae(latent_config, accelerator.device)
    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column, args.dataset_config)
    if args.max_train_samples:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    names = class_names(dataset, args.label_column)
    # what the image sides must be multiples of: a DiT's patch size, 2 for each of a U-Net's downsamplings
    patch_size = args.patch_size or DIT_PRESETS[args.preset]["patch_size"]
    levels = len(args.unet_channels)
    if args.init_from:
        stored = DiTModel.load_config(transformer_folder(args.init_from))
        patch_size, levels = stored.get("patch_size"), len(stored.get("block_out_channels", ()))
    if args.architecture == "unet":
        patch_size = unet_input_multiple(levels)
    data = build_training_images(dataset, data_config, latent_config, vae, patch_size, run.output_dir, accelerator)
    model = build_model(args, data.channels, data.sample_size, len(names))
    if args.mask_ratio:
        if not getattr(model.config, "decoder_depth", 0):
            raise ValueError(
                "--mask_ratio needs a model with a decoder (--decoder_depth > 0; --init_from a model "
                "saved without one cannot train masked)."
            )
        visible_tokens((data.sample_size // model.config.patch_size) ** 2, args.mask_ratio)
        check_patch_values(model.config.in_channels, model.config.patch_size)
    design = f"DiTModel ({model.config.block_type})" if isinstance(model, DiTModel) else type(model).__name__
    accelerator.print(
        f"{design}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{model.gflops():.4g} Gflops per image at {data.sample_size}x{data.sample_size}"
    )
    if adapter.enabled:  # LoRA: the pretrained model frozen, adapters trained
        add_lora_adapter(model, adapter)
    noise_scheduler = noise_scheduler_for(objective, run, model.learn_sigma)
    # classifier-free guidance: labels dropped to the null class ("no label") at the model's class_dropout_prob
    # (a U-Net keeps no label dropout in its config: the run's --class_dropout_prob)
    label_dropout_prob = getattr(model.config, "class_dropout_prob", args.class_dropout_prob)
    null_class = model.num_classes

    # the step the unmasked fine-tuning starts at (check_masking: --unmask_finetune_steps comes with max_train_steps)
    unmasked_from = (
        config.optimization.max_train_steps - args.unmask_finetune_steps if args.unmask_finetune_steps else None
    )

    def loss_fn(model, batch, step):
        x0, labels = data.to_model_input(batch, accelerator.device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, objective.num_train_timesteps, (x0.shape[0],), device=x0.device)
        labels = drop_labels(labels, torch.rand(len(labels), device=labels.device), label_dropout_prob, null_class)
        if args.mask_ratio:  # MaskDiT; its last --unmask_finetune_steps see every token
            ratio = args.mask_ratio if unmasked_from is None or step < unmasked_from else 0.0
            patch = accelerator.unwrap_model(model).config.patch_size
            return masked_diffusion_loss(
                model, noise_scheduler, x0, noise, t, labels, ratio, objective.vlb_weight, patch_size=patch
            )
        output = model(noise_scheduler.add_noise(x0, noise, t), t, labels).sample
        return noise_scheduler.training_loss(output.float(), x0, noise, t, vlb_weight=objective.vlb_weight)

    def pipeline(model):
        scheduler = sampling_scheduler_for(run, noise_scheduler)
        return DiTImagePipeline(model, scheduler, vae=vae, id2label=dict(enumerate(names)))

    def validate(model, step):
        sample_grid(pipeline(model), len(names), args.validation_images_per_class, config, accelerator, step)
        if fid_config.enabled:
            fid = measure_fid(pipeline(model), config.optimization.seed)
            accelerator.log({"validation_fid": fid}, step=step)
            print(f"step {step}: validation FID {fid:.2f} ({fid_config.validation_fid_samples} samples)")

    hyperparameters = vars(args)
    train(accelerator, config, model, data.dataset, loss_fn, validate, pipeline, "train_dit", hyperparameters)
    return run.output_dir


if __name__ == "__main__":
    main(parse_args())
