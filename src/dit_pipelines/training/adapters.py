"""LoRA fine-tuning in the training scripts (`--lora_rank`): the pretrained model frozen, low-rank adapters on its
attention and MLP projections trained (with their EMA), and the result saved as a diffusers LoRA file
(`pytorch_lora_weights.safetensors`) that any copy of the base pipeline loads with `pipe.load_lora_weights`.

    accelerate launch training/train_dit.py --init_from my-user/my-dit --lora_rank 16 --dataset my_images ...
"""

import os
import shutil
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from accelerate.utils import DistributedType

from ..hub import LORA_WEIGHTS
from .config import option

#: the layers adapted by default: self-attention (qkv, proj), cross-attention (q, kv, proj) and the MLPs (fc1, fc2);
#: peft matches each name against the last part of a module's name
DEFAULT_TARGETS = ["qkv", "q", "kv", "proj", "fc1", "fc2"]


@dataclass
class AdapterConfig:
    """LoRA: train low-rank adapters of a pretrained model (--init_from) instead of all its weights."""

    lora_rank: Optional[int] = option(None, "train LoRA adapters of this rank, the base model frozen (none: all)")
    lora_alpha: Optional[float] = option(None, "LoRA scale numerator: updates scaled by alpha / rank (default rank)")
    lora_target_modules: List[str] = field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        metadata={"help": "names of the linear layers to adapt", "nargs": "+", "type": str},
    )

    @property
    def enabled(self) -> bool:
        return self.lora_rank is not None

    def check(self, init_from: Optional[str], accelerator=None) -> None:
        """The `ValueError`s of a LoRA request that cannot train."""
        if not self.enabled:
            return
        if self.lora_rank < 1:
            raise ValueError(f"--lora_rank must be a positive integer, got {self.lora_rank}.")
        if not init_from:
            raise ValueError("--lora_rank adapts a pretrained model: pass it with --init_from.")
        if accelerator is not None and accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError("LoRA runs are not supported under FSDP: train the adapters with DDP (they are small).")


def add_lora_adapter(model: torch.nn.Module, config: AdapterConfig) -> torch.nn.Module:
    """Freeze `model` and add trainable LoRA adapters (peft, through diffusers' `add_adapter`); the adapters start
    at zero (B = 0), so the model still computes what the base model does."""
    from peft import LoraConfig

    model.requires_grad_(False)
    adapter = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha or config.lora_rank,
        target_modules=list(config.lora_target_modules),
        init_lora_weights=True,
    )
    try:
        model.add_adapter(adapter)
    except ValueError as error:  # peft: none of the target names is in the model
        raise ValueError(f"--lora_target_modules {config.lora_target_modules}: {error}") from error
    return model


def has_lora_adapter(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def save_lora_adapter(pipeline, folder: str) -> str:
    """Save the adapters of `pipeline.transformer` as `folder/pytorch_lora_weights.safetensors`, diffusers' LoRA
    format, with their peft config as metadata (so that `load_lora_weights` rebuilds them with the same rank,
    alpha and targets). Written beside and renamed into place: a run killed while saving leaves the last one."""
    from peft.utils import get_peft_model_state_dict

    transformer = pipeline.transformer
    staging = os.path.join(folder, ".lora.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    type(pipeline).save_lora_weights(
        staging,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    target = os.path.join(folder, LORA_WEIGHTS)
    os.replace(os.path.join(staging, LORA_WEIGHTS), target)
    shutil.rmtree(staging)
    return target
