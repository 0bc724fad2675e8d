"""The training loop the Accelerate scripts share: arguments, EMA, AdamW, LR schedule, accumulation, clipping,
atomic checkpoints with exact resume, validation with the EMA weights, and the final pipeline save / Hub push."""

import argparse
import json
import logging
import os
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler
from training.common import ShardedEpochSampler, read_state, resolve_resume_path, save_checkpoint

logger = logging.getLogger("training")


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The objective, optimisation and run options of every training script."""
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
    optim.add_argument("--dataloader_num_workers", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", default="outputs/dit")
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=None)
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--validation_steps", type=int, default=0, help="sample every N steps (0: never)")
    run.add_argument("--num_inference_steps", type=int, default=50, help="sampling steps of the validation samples")
    run.add_argument("--guidance_scale", type=float, default=4.0, help="guidance of the validation samples")
    run.add_argument("--sampling_respacing", default="250", help="respacing saved in the pipeline's scheduler")
    run.add_argument("--sampling_scheduler", default="ddpm", choices=["ddpm", "ddim"],
                     help="the scheduler saved with the pipeline (the same chain either way)")  # fmt: skip
    run.add_argument("--report_to", default="none", help="tensorboard, wandb, ... or none")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_private_repo", action="store_true")
    run.add_argument("--hub_token", default=None, help="default: HF_TOKEN or the saved login")


def make_accelerator(args) -> Accelerator:
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
    return accelerator


def noise_scheduler_for(args, learn_sigma: bool) -> DiTDDPMScheduler:
    """The training chain; saved with the pipeline, respaced by `--sampling_respacing` for sampling."""
    return DiTDDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        variance_type="learned_range" if learn_sigma else "fixed_small",
        timestep_respacing=args.sampling_respacing,
    )


def sampling_scheduler_for(args, noise_scheduler: DiTDDPMScheduler):
    """The scheduler saved with the pipeline: the training chain's config, DDPM or DDIM (`--sampling_scheduler`)."""
    kind = DiTDDIMScheduler if args.sampling_scheduler == "ddim" else DiTDDPMScheduler
    return kind.from_config(noise_scheduler.config)


def train(
    accelerator: Accelerator,
    args,
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: Callable,
    validate: Optional[Callable] = None,
    save_pipeline: Optional[Callable] = None,
    run_name: str = "train",
) -> int:
    """Train `model` on `dataset`; returns the number of optimisation steps done.

    - `loss_fn(model, batch)` returns a `DiffusionLoss` (per-sample terms) for one batch;
    - `validate(model, step)` runs on the main process every `--validation_steps`, with the EMA weights loaded;
    - `save_pipeline(model)` runs on the main process at the end, with the EMA weights loaded, and saves the
      pipeline into `args.output_dir` (then pushed with `--push_to_hub`).
    The resume path is checked before any work; trainable parameters are those with `requires_grad`."""
    resume = resolve_resume_path(args.output_dir, args.resume_from_checkpoint)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=args.ema_warmup,
                   model_cls=type(model), model_config=model.config)  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay)  # fmt: skip
    sampler = ShardedEpochSampler(len(dataset), args.train_batch_size, args.seed, accelerator.process_index,
                                  accelerator.num_processes)  # fmt: skip
    loader = DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler, drop_last=True,
                        num_workers=args.dataloader_num_workers, generator=torch.Generator())  # fmt: skip
    steps_per_epoch = sampler.batches_per_epoch // args.gradient_accumulation_steps
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)  # fmt: skip
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers(run_name, config={k: v for k, v in vars(args).items() if v is not None})

    global_step = 0
    run_state = {"train_batch_size": args.train_batch_size, "num_processes": accelerator.num_processes}
    if resume:
        accelerator.load_state(resume)
        global_step = read_state(resume)["global_step"]
        logger.info("Resumed from %s at step %d", resume, global_step)
        if any(read_state(resume).get(k) != v for k, v in run_state.items()):
            logger.warning("Resuming with another batch size or process count: the data order will differ.")

    unwrapped = accelerator.unwrap_model(model)

    def with_ema_weights(function):
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
        unwrapped.eval()
        try:
            return function(unwrapped)
        finally:
            unwrapped.train()
            ema.restore(unwrapped.parameters())

    progress = tqdm(total=max_steps, initial=global_step, desc=run_name, disable=not accelerator.is_local_main_process)
    model.train()
    epoch = global_step // steps_per_epoch
    while global_step < max_steps:
        sampler.set_position(epoch, (global_step % steps_per_epoch) * args.gradient_accumulation_steps)
        for batch in loader:
            with accelerator.accumulate(model):
                losses = loss_fn(model, batch)
                loss = losses.loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
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
            if validate and args.validation_steps and global_step % args.validation_steps == 0:
                if accelerator.is_main_process:
                    with_ema_weights(lambda m: validate(m, global_step))
            if global_step >= max_steps:
                break
        epoch += 1
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process and save_pipeline is not None:
        ema.copy_to(unwrapped.parameters())
        unwrapped.eval()
        save_pipeline(unwrapped)
        save_training_args(args)
        logger.info("Saved the pipeline to %s", args.output_dir)
        if args.push_to_hub:
            from dit_pipelines.hub import push_pipeline

            repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
            url = push_pipeline(args.output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo or None,
                                commit_message=f"Upload {run_name} after {global_step} steps")  # fmt: skip
            logger.info("Pushed to %s", url)
    accelerator.end_training()
    return global_step


def save_training_args(args) -> None:
    """`training_args.json` beside the saved pipeline: what the model card reports as the training configuration."""
    plain = (int, float, str, bool, type(None), list)
    values = {k: v if isinstance(v, plain) else str(v) for k, v in vars(args).items()}
    values.pop("hub_token", None)
    with open(os.path.join(args.output_dir, "training_args.json"), "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
