"""The training loop every Accelerate script shares: EMA, AdamW, LR schedule, accumulation, clipping, atomic
checkpoints with exact resume, validation with the EMA weights, and the final pipeline save and Hub push."""

import json
import logging
import os
import time
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import is_torch_version
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..schedulers import DiTDDIMScheduler, DiTDDPMScheduler
from .adapters import has_lora_adapter, save_lora_adapter
from .checkpoints import (
    load_checkpoint,
    load_ema,
    read_state,
    resolve_resume_path,
    resume_candidates,
    save_checkpoint,
    save_ema,
    unsafe_to_load,
)
from .config import ObjectiveConfig, RunConfig, TrainingConfig
from .nonfinite import NonFiniteGuard
from .run_folder import RunLock, save_pipeline_atomically
from .sampler import ShardedEpochSampler
from .sharding import broadcast_from_main, full_tensors, is_sharded

logger = logging.getLogger("dit_pipelines.training")


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's `Accelerator` (accumulation, mixed precision, trackers, logs under the output folder), with every
    process seeded from `seed` and its process index, so that each draws its own noise. The main process first
    takes the output folder's `RunLock` (a `ValueError` if it is not writable or another run holds it)."""
    run = config.run
    accelerator = Accelerator(
        gradient_accumulation_steps=config.optimization.gradient_accumulation_steps,
        mixed_precision=config.optimization.mixed_precision,
        log_with=None if run.report_to == "none" else run.report_to,
        project_config=ProjectConfiguration(
            project_dir=run.output_dir, logging_dir=os.path.join(run.output_dir, "logs")
        ),
    )
    _fsdp_on_cpu(accelerator)
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    if accelerator.is_main_process:  # before any work: the folder is writable and no other run uses it
        accelerator.run_lock = RunLock(run.output_dir).acquire()
    set_seed(config.optimization.seed, device_specific=True)
    return accelerator


def _fsdp_on_cpu(accelerator: Accelerator) -> None:
    """FSDP on CPU processes (gloo). accelerate 1.15 turns `ACCELERATE_USE_FSDP` into FSDP only on accelerator
    backends: on the CPU it quietly trains DDP instead (`MULTI_CPU`). Torch's FSDP2 runs on the CPU, so the plugin
    the launcher configured (the `FSDP_*` variables) is installed here, in both of accelerate's state objects (the
    accelerator state is re-copied from the partial state). Only CPU runs asked for FSDP are touched."""
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("1", "true"):
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _quiesce(accelerator: Accelerator) -> None:
    """Let every process finish the main one's saving and pushing, and the collectives' worker threads finish with
    their last work, before the process group is torn down.

    A run under gloo was seen hanging at exit (in CI, and once here in 4 runs): the DDP reducer, freed with the GIL
    held, destroyed the process group, whose destructor joins its worker threads, while one of them waited for the
    GIL to free the Python-owned tensors of a finished all-reduce (torch 2.13). The barrier makes that all-reduce
    complete everywhere; the short sleep releases the GIL so that its worker can drop it."""
    if accelerator.num_processes == 1:
        return
    accelerator.wait_for_everyone()
    time.sleep(0.2)


def _fused_adamw(accelerator: Accelerator, parameters) -> Optional[bool]:
    """Whether AdamW takes its fused kernel: on CPU and CUDA parameters of plain (not FSDP- or DeepSpeed-managed)
    runs. On the CPU the default is a loop over the parameters: 9.2 ms a step for a width-64, 6-block DiT against 2.0 ms
    fused (`benchmarks/masked_training.py`, where it is 6-8% of a training step). None: torch's default."""
    plain = accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    devices = ("cpu", "cuda") if is_torch_version(">=", "2.4") else ("cuda",)  # torch's fused CPU kernel: 2.4 on
    supported = all(p.device.type in devices and p.is_floating_point() for p in parameters)
    return True if plain and supported and parameters else None


def noise_scheduler_for(objective: ObjectiveConfig, run: RunConfig, learn_sigma: bool) -> DiTDDPMScheduler:
    """The training chain; saved with the pipeline, respaced by `run.sampling_respacing` for sampling."""
    return DiTDDPMScheduler(
        num_train_timesteps=objective.num_train_timesteps,
        beta_schedule=objective.beta_schedule,
        prediction_type=objective.prediction_type,
        variance_type="learned_range" if learn_sigma else "fixed_small",
        timestep_respacing=run.sampling_respacing,
    )


def sampling_scheduler_for(run: RunConfig, noise_scheduler: DiTDDPMScheduler):
    """The scheduler saved with the pipeline: the training chain's config, DDPM or DDIM (`run.sampling_scheduler`)."""
    kind = DiTDDIMScheduler if run.sampling_scheduler == "ddim" else DiTDDPMScheduler
    return kind.from_config(noise_scheduler.config)


def train(
    accelerator: Accelerator,
    config: TrainingConfig,
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: Callable,
    validate: Optional[Callable] = None,
    make_pipeline: Optional[Callable] = None,
    run_name: str = "train",
    hyperparameters: Optional[dict] = None,
) -> int:
    """Train `model` on `dataset`; returns the number of optimisation steps done.

    - `loss_fn(model, batch, step)` returns a `DiffusionLoss` (per-sample terms) for one batch of optimisation step
      `step` (0-based: a resumed run passes on from its checkpoint's step);
    - `validate(model, step)` runs on the main process every `run.validation_steps`, with the EMA weights loaded;
    - `make_pipeline(model)` runs on the main process at the end, with the EMA weights loaded: the pipeline it
      returns is saved into `run.output_dir` (and pushed with `hub.push_to_hub`);
    - `hyperparameters` (all the script's options) go to the trackers and to `training_args.json` beside the
      saved pipeline, which its model card reports.
    The resume path is checked before any work; trainable parameters are those with `requires_grad`, so a frozen
    parameter is not in the optimizer and neither its gradient nor weight decay moves it."""
    opt, run = config.optimization, config.run
    if accelerator.distributed_type == DistributedType.FSDP and has_lora_adapter(model):
        raise ValueError("LoRA runs are not supported under FSDP: train the adapters with DDP (they are small).")
    hyperparameters = {k: v for k, v in (hyperparameters or {}).items() if k != "hub_token"}  # never logged or saved
    resume = resolve_resume_path(run.output_dir, run.resume_from_checkpoint)
    if opt.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model_class = type(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=opt.learning_rate,
        betas=(opt.adam_beta1, opt.adam_beta2),
        weight_decay=opt.adam_weight_decay,
        fused=_fused_adamw(accelerator, trainable),
    )
    sampler = ShardedEpochSampler(
        len(dataset),
        opt.train_batch_size,
        opt.seed,
        accelerator.process_index,
        accelerator.num_processes,
        epoch_keys=getattr(dataset, "epoch_keys", False),  # (epoch, index) keys, for per-epoch random crops
    )
    loader = DataLoader(
        dataset,
        batch_size=opt.train_batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=opt.dataloader_num_workers,
        collate_fn=getattr(dataset, "collate_fn", None),  # datasets that read whole batches, or batch strings
        generator=torch.Generator(),
    )
    steps_per_epoch = sampler.batches_per_epoch // opt.gradient_accumulation_steps
    max_steps = opt.max_train_steps or opt.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        opt.lr_scheduler,
        optimizer,
        num_warmup_steps=opt.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    adapters_only = has_lora_adapter(model)

    def averaged(module):
        """The (name, parameter) pairs the EMA averages, saved by name: every parameter, or the adapters alone in a
        LoRA run (the EMA of its frozen base would be a copy of it)."""
        return [(n, p) for n, p in module.named_parameters() if p.requires_grad or not adapters_only]

    names = [name for name, _ in averaged(model)]
    if accelerator.distributed_type == DistributedType.FSDP:
        broadcast_from_main(model, accelerator.device)
    if getattr(getattr(model, "config", None), "decoder_depth", 0) and accelerator.ddp_handler is None:
        # a MaskDiT decoder's mask token gets no gradient in an unmasked step (the closing fine-tuning): DDP, which
        # otherwise waits for every parameter's gradient, must look for the unused ones
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)
    # the EMA of the prepared parameters: under FSDP each process keeps the EMA of its own shards (elementwise, so
    # the same numbers as the EMA of whole weights); gathered whole to be saved or sampled (`sharding`)
    ema_parameters = [p for _, p in averaged(unwrapped)]
    ema = EMAModel(
        ema_parameters,
        decay=opt.ema_decay,
        use_ema_warmup=opt.ema_warmup,
        foreach=False,  # DTensors have no sharding rule for _foreach_copy_ of frozen parameters
        model_cls=model_class,
        model_config=unwrapped.config,
    )
    ema.to(accelerator.device)
    # FSDP2 replaces every parameter by a DTensor: clip (and check) the prepared ones, not the list made before
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers(run_name, config={k: v for k, v in hyperparameters.items() if v is not None})

    global_step = 0
    run_state = {"train_batch_size": opt.train_batch_size, "num_processes": accelerator.num_processes}
    candidates = resume_candidates(run.output_dir, run.resume_from_checkpoint)
    for index, candidate in enumerate(candidates):
        last_chance = run.resume_from_checkpoint != "latest" or index == len(candidates) - 1
        # every process answers before any loads, so that all skip a checkpoint one of them must not read
        problem = next((p for p in gather_object([unsafe_to_load(accelerator, candidate)]) if p), None)
        try:
            if problem:
                raise ValueError(problem)
            global_step = load_checkpoint(accelerator, candidate, lambda folder: load_ema(ema, names, folder))
        except Exception as error:  # a checkpoint that cannot be read: with "latest", fall back to the one before
            if last_chance:
                raise ValueError(f"Could not resume from {candidate} ({type(error).__name__}: {error}).") from error
            logger.warning("Skipping %s, which could not be loaded (%s: %s)", candidate, type(error).__name__, error)
            continue
        resume = candidate
        logger.info("Resumed from %s at step %d", resume, global_step)
        if any(read_state(resume).get(k) != v for k, v in run_state.items()):
            logger.warning("Resuming with another batch size or process count: the data order will differ.")
        break

    sharded = any(is_sharded(p) for p in unwrapped.parameters())

    def with_ema_weights(function):
        """`function(model)` with the EMA weights, on the main process: the training model itself, its weights
        swapped, or under FSDP a whole copy built from the gathered EMA (every process takes part in gathering)."""
        if sharded:
            weights = full_tensors(ema.shadow_params)
            if not accelerator.is_main_process:
                return None
            with torch.random.fork_rng(devices=[]):  # building draws initial weights: not from the run's RNG
                copy = model_class.from_config(unwrapped.config)
            missing, unexpected = copy.load_state_dict(dict(zip(names, weights)), strict=False)
            untrained = {name for name, _ in copy.named_buffers()}  # buffers are not trained: as built
            if unexpected or set(missing) - untrained:
                raise RuntimeError(f"The EMA does not fit the model: missing {missing}, unexpected {unexpected}.")
            return function(copy.to(accelerator.device).eval())
        if not accelerator.is_main_process:
            return None
        ema.store(ema_parameters)
        ema.copy_to(ema_parameters)
        unwrapped.eval()
        try:
            return function(unwrapped)
        finally:
            unwrapped.train()
            ema.restore(ema_parameters)

    guard = NonFiniteGuard(opt.max_nonfinite_steps)
    guard.last_checkpoint = resume
    progress = tqdm(total=max_steps, initial=global_step, desc=run_name, disable=not accelerator.is_local_main_process)
    model.train()
    epoch = global_step // steps_per_epoch
    while global_step < max_steps:
        sampler.set_position(epoch, (global_step % steps_per_epoch) * opt.gradient_accumulation_steps)
        for batch in loader:
            with accelerator.accumulate(model):
                losses = loss_fn(model, batch, global_step)
                loss = losses.loss.mean()
                accelerator.backward(loss)
                finite = True
                if accelerator.sync_gradients:
                    # the norm after all-reduce (clipping by infinity leaves the gradients as they are, bit for bit)
                    grad_norm = accelerator.clip_grad_norm_(trainable, opt.max_grad_norm or float("inf"))
                    total_loss = accelerator.reduce(loss.detach(), "sum")
                    # fp16's grad scaler skips steps whose gradients overflow and lowers its scale, which takes a few
                    # steps at the start of a run: overflowing gradients are its business, a non-finite loss is ours
                    # (DeepSpeed returns no norm: the loss alone decides there)
                    norm = float(grad_norm) if accelerator.scaler is None and grad_norm is not None else 0.0
                    finite = guard.check_step(global_step + 1, float(total_loss), norm)
                if finite or accelerator.scaler is not None:
                    optimizer.step()
                    lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1  # a skipped step still consumed its batches: the data order stays a function of the step
            progress.update(1)
            if finite and not optimizer.step_was_skipped:  # (fp16: the scaler may have skipped the update)
                ema.step(ema_parameters)
                logs = {"loss": loss.item(), "mse": losses.mse.mean().item(), "lr": lr_scheduler.get_last_lr()[0]}
                for term in ("vlb", "mae"):  # the variational bound (learned sigma), masked training's MAE term
                    if getattr(losses, term, None) is not None:
                        logs[term] = getattr(losses, term).mean().item()
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                accelerator.log(logs, step=global_step)
            else:
                logger.warning("Step %d skipped: non-finite loss or gradients (%d so far)", global_step, guard.skipped)
                accelerator.log({"nonfinite_steps": guard.skipped}, step=global_step)
            if global_step % run.checkpointing_steps == 0 or global_step == max_steps:
                guard.check_weights([*unwrapped.parameters(), *ema.shadow_params], f"checkpoint-{global_step}")
                guard.last_checkpoint = save_checkpoint(
                    accelerator,
                    run.output_dir,
                    global_step,
                    run_state,
                    run.checkpoints_total_limit,
                    write_extra=lambda folder: save_ema(ema, names, folder, write=accelerator.is_main_process),
                )
            if validate and run.validation_steps and global_step % run.validation_steps == 0:
                with_ema_weights(lambda m: validate(m, global_step))
            if global_step >= max_steps:
                break
        epoch += 1
    progress.close()

    accelerator.wait_for_everyone()
    if make_pipeline is not None:
        guard.check_weights(ema.shadow_params, "the pipeline")  # (every process: under FSDP each checks its shards)

        def save(model):
            if has_lora_adapter(model):  # a LoRA run: its adapters, for any copy of the base pipeline to load
                path = save_lora_adapter(make_pipeline(model), run.output_dir)
                logger.info("Saved the LoRA adapter to %s", path)
            else:
                save_pipeline_atomically(make_pipeline(model), run.output_dir)
                logger.info("Saved the pipeline to %s", run.output_dir)
            save_training_args(run.output_dir, hyperparameters)

        if sharded:
            with_ema_weights(save)
        elif accelerator.is_main_process:
            ema.copy_to(ema_parameters)
            save(unwrapped.eval())
    if accelerator.is_main_process and make_pipeline is not None:
        if config.hub.push_to_hub:  # (on the main process)
            from ..hub import push_pipeline

            hub = config.hub
            url = push_pipeline(
                run.output_dir,
                hub.hub_model_id or os.path.basename(os.path.abspath(run.output_dir)),
                token=hub.hub_token,
                private=hub.hub_private_repo or None,
                commit_message=f"Upload {run_name} after {global_step} steps",
            )
            logger.info("Pushed to %s", url)
    _quiesce(accelerator)
    accelerator.end_training()
    if getattr(accelerator, "run_lock", None) is not None:
        accelerator.run_lock.release()
    return global_step


def save_training_args(output_dir: str, hyperparameters: dict) -> None:
    """`training_args.json` beside the saved pipeline: what the model card reports as the training configuration
    (the Hub token left out)."""
    plain = (int, float, str, bool, type(None), list)
    values = {k: v if isinstance(v, plain) else str(v) for k, v in hyperparameters.items() if k != "hub_token"}
    with open(os.path.join(output_dir, "training_args.json"), "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
