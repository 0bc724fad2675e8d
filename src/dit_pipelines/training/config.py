"""The typed training configuration: one dataclass per option group, each field with a one-line reason, turned
into command-line options by `add_arguments` and built once from the parsed command line by `from_arguments`.

    parser = argparse.ArgumentParser()
    add_arguments(parser, ObjectiveConfig, OptimizationConfig, RunConfig, HubConfig)
    config = TrainingConfig.from_arguments(parser.parse_args())   # library code receives `config`, never argparse

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_arguments(parser, OptimizationConfig)
>>> from_arguments(OptimizationConfig, parser.parse_args(["--learning_rate", "3e-4"])).learning_rate
0.0003
"""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


def option(default: Any, help: str, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line option: `help` is its one-line reason; `argparse_kwargs`
    (choices, nargs, ...) go to `add_argument`."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class ObjectiveConfig:
    """What the model learns."""

    prediction_type: str = option("epsilon", "what the model predicts", choices=["epsilon", "v_prediction", "sample"])
    beta_schedule: str = option("linear", "the noise schedule (DiT: linear betas 1e-4..0.02)")
    num_train_timesteps: int = option(1000, "T, the length of the training chain")
    vlb_weight: float = option(0.001, "lambda of the hybrid loss L_simple + lambda L_vlb (Improved DDPM)")


@dataclass
class OptimizationConfig:
    """How the weights are updated."""

    train_batch_size: int = option(64, "samples per process and step")
    max_train_steps: Optional[int] = option(None, "optimisation steps (default: --num_train_epochs epochs)")
    num_train_epochs: int = option(1, "epochs, when --max_train_steps is not set")
    learning_rate: float = option(1e-4, "AdamW's learning rate (DiT: 1e-4)")
    adam_beta1: float = option(0.9, "AdamW's beta1")
    adam_beta2: float = option(0.999, "AdamW's beta2")
    adam_weight_decay: float = option(0.0, "AdamW's decoupled weight decay (DiT uses none)")
    lr_scheduler: str = option("constant", "a diffusers get_scheduler name (constant_with_warmup, cosine, ...)")
    lr_warmup_steps: int = option(0, "steps of learning-rate warm-up")
    gradient_accumulation_steps: int = option(1, "batches per optimisation step")
    max_grad_norm: Optional[float] = option(None, "clip the gradient norm (DiT does not)")
    max_nonfinite_steps: int = option(3, "non-finite loss or gradient steps in a row (each skipped) before stopping")
    mixed_precision: Optional[str] = option(None, "autocast dtype", choices=["no", "fp16", "bf16"])
    gradient_checkpointing: bool = option(False, "recompute block activations in backward to save memory")
    ema_decay: float = option(0.9999, "decay of the EMA weights that are validated and saved (DiT: 0.9999)")
    ema_warmup: bool = option(False, "EMA decay 1 - (1 + step)^(-2/3), capped: short runs get a useful EMA")
    seed: int = option(0, "seeds the data order, the noise and the initial weights")
    dataloader_num_workers: int = option(0, "DataLoader worker processes")


@dataclass
class RunConfig:
    """Where the run writes, how often it checkpoints and validates, and the scheduler saved with the pipeline."""

    output_dir: str = option("outputs/dit", "where checkpoints, validation samples and the pipeline go")
    checkpointing_steps: int = option(500, "save a resumable checkpoint every N steps")
    checkpoints_total_limit: Optional[int] = option(None, "keep only the newest N checkpoints")
    resume_from_checkpoint: Optional[str] = option(None, "'latest' or a checkpoint folder")
    validation_steps: int = option(0, "sample with the EMA weights every N steps (0: never)")
    num_inference_steps: int = option(50, "sampling steps of the validation samples")
    guidance_scale: float = option(4.0, "classifier-free guidance of the validation samples")
    sampling_respacing: str = option("250", "the respacing saved in the pipeline's scheduler")
    sampling_scheduler: str = option("ddpm", "the scheduler saved with the pipeline", choices=["ddpm", "ddim"])
    report_to: str = option("none", "an Accelerate tracker: tensorboard, wandb, ... or none")


@dataclass
class HubConfig:
    """Sharing the saved pipeline."""

    push_to_hub: bool = option(False, "upload the final pipeline with its model card")
    hub_model_id: Optional[str] = option(None, "user/name on the Hub (default: the output folder's name)")
    hub_private_repo: bool = option(False, "create the repository as private")
    hub_token: Optional[str] = option(None, "default: HF_TOKEN or the saved login")


@dataclass
class TrainingConfig:
    """Everything the shared training loop (`dit_pipelines.training.train`) reads."""

    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    @classmethod
    def from_arguments(cls, arguments: argparse.Namespace) -> "TrainingConfig":
        """The configuration from a command line parsed with `add_training_arguments`."""
        return cls(**{f.name: from_arguments(f.type, arguments) for f in dataclasses.fields(cls)})


def add_arguments(parser: argparse.ArgumentParser, *configs: type) -> None:
    """One argument group per config dataclass, one `--name` option per field: booleans as flags
    (`--no-name` for those that default to true), optional numbers typed by their inner type."""
    for config in configs:
        group = parser.add_argument_group(config.__name__.removesuffix("Config").lower(), config.__doc__)
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            kwargs = {k: v for k, v in f.metadata.items()}
            kind = _inner_type(hints[f.name])
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
            else:
                kwargs.setdefault("type", kind)
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # (lists: a factory)
            group.add_argument(f"--{f.name}", default=default, **kwargs)


def from_arguments(config: type, arguments: argparse.Namespace):
    """An instance of the dataclass `config` from the options of the same names."""
    return config(**{f.name: getattr(arguments, f.name) for f in dataclasses.fields(config)})


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every `TrainingConfig` group."""
    add_arguments(parser, *(f.type for f in dataclasses.fields(TrainingConfig)))


def _inner_type(hint) -> type:
    """`Optional[int]` -> int; a plain type as it is."""
    if typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
