"""LoRA on our pipelines, the diffusers way: `pipe.load_lora_weights(repo_or_folder)`, `pipe.fuse_lora()`,
`pipe.unfuse_lora()`, `pipe.unload_lora_weights()`, `pipe.set_adapters(...)`, and
`DiTImagePipeline.save_lora_weights(folder, transformer_lora_layers=...)` (what the training scripts'
`--lora_rank` runs write: `pytorch_lora_weights.safetensors`).

Example:
    >>> import torch
    >>> from peft import LoraConfig
    >>> from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTModel
    >>> pipe = DiTImagePipeline(DiTModel.from_preset("DiT-S/8", sample_size=16, depth=2), DiTDDPMScheduler())
    >>> pipe.transformer.add_adapter(LoraConfig(r=4, target_modules=["qkv", "proj", "fc1", "fc2"]))
    >>> pipe.fuse_lora()
    >>> pipe.unfuse_lora()
    >>> pipe.unload_lora_weights()
"""

from diffusers.loaders import CogVideoXLoraLoaderMixin


class DiTLoraLoaderMixin(CogVideoXLoraLoaderMixin):
    """diffusers' LoRA loader for pipelines whose only adapted component is the `transformer`. CogVideoX's loader is
    exactly that (it converts no model-specific keys), so ours is it under a name of our own rather than a copy."""
