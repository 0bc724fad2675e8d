"""Train a class-conditional DiT with Accelerate: the recipe of Peebles & Xie (2023) (hybrid loss with learned
sigma, EMA, optionally VAE latents) plus resume, mixed precision, accumulation, validation grids and a saved
diffusers pipeline at the end.

    accelerate launch training/train_dit.py --dataset mnist --preset DiT-S/4 --output_dir outputs/dit-mnist
    python -c "import dit_pipelines, diffusers; diffusers.DiffusionPipeline.from_pretrained('outputs/dit-mnist')"

Also importable: `main(parse_args([...]))` returns the output folder.
"""

import argparse
import logging
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dit_pipelines import DIT_PRESETS, DiTDDPMScheduler, DiTImagePipeline, DiTModel  # noqa: E402
from dit_pipelines.data import class_names, load_image_dataset  # noqa: E402
from training.common import ShardedEpochSampler, read_state, resolve_resume_path, save_checkpoint  # noqa: E402
from training.image_data import build_training_data  # noqa: E402

logger = logging.getLogger(__name__)


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
    data.add_argument("--dataloader_num_workers", type=int, default=0)
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
    objective = p.add_argument_group("objective")
    objective.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    objective.add_argument("--beta_schedule", default="linear")
    objective.add_argument("--num_train_timesteps", type=int, default=1000)
    objective.add_argument("--vlb_weight", type=float, default=0.001, help="lambda of L_simple + lambda L_vlb")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=64, help="per process")
    optim.add_argument("--max_train_steps", type=int, default=None)
    optim.add_argument("--num_train_epochs", type=int, default=1, help="used when --max_train_steps is not set")
    optim.add_argument("--learning_rate", type=float, default=1e-4, help="AdamW, as DiT (no weight decay)")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--lr_scheduler", default="constant", help="diffusers get_scheduler name")
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients (DiT does not)")
    optim.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument("--ema_decay", type=float, default=0.9999)
    optim.add_argument("--ema_warmup", action="store_true", help="EMA decay 1 - (1 + step)^(-2/3), capped")
    optim.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", default="outputs/dit")
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=None)
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--validation_steps", type=int, default=0, help="sample a grid every N steps (0: never)")
    run.add_argument("--validation_images_per_class", type=int, default=2)
    run.add_argument("--num_inference_steps", type=int, default=50, help="steps of the validation grids")
    run.add_argument("--guidance_scale", type=float, default=4.0, help="guidance of the validation grids")
    run.add_argument("--sampling_respacing", default="250", help="respacing saved in the pipeline's scheduler")
    run.add_argument("--report_to", default="none", help="tensorboard, wandb, ... or none")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_private_repo", action="store_true")
    return p.parse_args(argv)


def build_model(args, in_channels: int, sample_size: int, num_classes: int) -> DiTModel:
    if args.init_from:
        folder = os.path.join(args.init_from, "transformer")
        model = DiTModel.from_pretrained(folder if os.path.isdir(folder) else args.init_from)
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


def sample_grid(model, scheduler, vae, names, args, accelerator, step):
    """A class-conditional grid (one row per class, up to 10) from the current weights, saved as a PNG."""
    pipe = DiTImagePipeline(
        model, DiTDDPMScheduler.from_config(scheduler.config), vae=vae, id2label=dict(enumerate(names))
    )
    pipe.set_progress_bar_config(disable=True)
    classes = list(range(min(10, len(names))))
    model.eval()
    images = pipe(
        classes,
        num_images_per_prompt=args.validation_images_per_class,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    model.train()
    grid = make_image_grid(images, rows=len(classes), cols=args.validation_images_per_class)
    path = os.path.join(args.output_dir, "validation", f"step-{step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path


def main(args) -> str:
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
    )
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed, device_specific=True)  # each process draws its own noise
    resume = resolve_resume_path(args.output_dir, args.resume_from_checkpoint)

    # Data and model.
    vae = AutoencoderKL.from_pretrained(args.vae).to(accelerator.device).eval() if args.vae else None
    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column, args.dataset_config)
    if args.max_train_samples:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    names = class_names(dataset, args.label_column)
    patch_size = args.patch_size or DIT_PRESETS[args.preset]["patch_size"]
    if args.init_from:
        patch_size = DiTModel.load_config(
            os.path.join(args.init_from, "transformer")
            if os.path.isdir(os.path.join(args.init_from, "transformer"))
            else args.init_from
        )["patch_size"]
    data = build_training_data(dataset, args, vae, patch_size, accelerator)
    model = build_model(args, data.channels, data.sample_size, len(names))
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    noise_scheduler = DiTDDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        variance_type="learned_range" if model.config.learn_sigma else "fixed_small",
        timestep_respacing=args.sampling_respacing,
    )
    ema = EMAModel(
        model.parameters(),
        decay=args.ema_decay,
        use_ema_warmup=args.ema_warmup,
        model_cls=DiTModel,
        model_config=model.config,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
    )
    sampler = ShardedEpochSampler(
        len(data.dataset), args.train_batch_size, args.seed, accelerator.process_index, accelerator.num_processes
    )
    loader = DataLoader(
        data.dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator(),
    )
    steps_per_epoch = sampler.batches_per_epoch // args.gradient_accumulation_steps
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers("train_dit", config={k: v for k, v in vars(args).items() if v is not None})

    global_step = 0
    if resume:
        accelerator.load_state(resume)
        global_step = read_state(resume)["global_step"]
        logger.info("Resumed from %s at step %d", resume, global_step)
    run_state = {"train_batch_size": args.train_batch_size, "num_processes": accelerator.num_processes}
    if resume and any(read_state(resume).get(k) != v for k, v in run_state.items()):
        logger.warning("Resuming with another batch size or process count: the data order will differ.")

    progress = tqdm(total=max_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process)
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    epoch = global_step // steps_per_epoch
    while global_step < max_steps:
        sampler.set_position(epoch, (global_step % steps_per_epoch) * args.gradient_accumulation_steps)
        for batch in loader:
            with accelerator.accumulate(model):
                x0, labels = data.to_model_input(batch, accelerator.device)
                noise = torch.randn_like(x0)
                t = torch.randint(0, args.num_train_timesteps, (x0.shape[0],), device=x0.device)
                x_t = noise_scheduler.add_noise(x0, noise, t)
                output = model(x_t, t, labels).sample
                losses = noise_scheduler.training_loss(output.float(), x0, noise, t, vlb_weight=args.vlb_weight)
                loss = losses.loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            ema.step(unwrapped.parameters())
            global_step += 1
            logs = {"loss": loss.item(), "mse": losses.mse.mean().item(), "lr": lr_scheduler.get_last_lr()[0]}
            if losses.vlb is not None:
                logs["vlb"] = losses.vlb.mean().item()
            progress.update(1)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0 or global_step == max_steps:
                save_checkpoint(accelerator, args.output_dir, global_step, run_state, args.checkpoints_total_limit)
            if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                ema.store(unwrapped.parameters())
                ema.copy_to(unwrapped.parameters())
                sample_grid(unwrapped, noise_scheduler, vae, names, args, accelerator, global_step)
                ema.restore(unwrapped.parameters())
            if global_step >= max_steps:
                break
        epoch += 1
    progress.close()

    # The EMA weights, a sampling scheduler and the class names, as one diffusers pipeline.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ema.copy_to(unwrapped.parameters())
        pipeline = DiTImagePipeline(unwrapped, noise_scheduler, vae=vae, id2label=dict(enumerate(names)))
        pipeline.save_pretrained(args.output_dir)
        logger.info("Saved the pipeline to %s", args.output_dir)
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(
                args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir)),
                private=args.hub_private_repo,
                exist_ok=True,
            ).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=args.output_dir,
                commit_message="Trained with train_dit.py",
                ignore_patterns=["checkpoint-*", "checkpoint-*/**", "validation/**", "logs/**"],
            )
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    main(parse_args())
