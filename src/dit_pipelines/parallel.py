"""Context parallelism (Ulysses) for our transformers on CPU processes, over gloo.

On GPUs use diffusers' own route, which reads the models' `_cp_plan`:

    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))   # under torchrun / accelerate launch

diffusers' `enable_parallelism` places each process on `rank % torch.accelerator.device_count()`, which divides
by zero on a host without an accelerator (diffusers 0.42). `enable_context_parallel_on_cpu` does the same steps
with the CPU as the device: the parallel config over a ("ring", "ulysses") CPU mesh, the config in every attention
processor, and the model's plan applied with diffusers' `apply_context_parallel`. It is for tests and for
CPU-only clusters; on GPUs prefer `enable_parallelism`.

Example (on each of 2 processes, after `torch.distributed.init_process_group("gloo")`):

    >>> from dit_pipelines.parallel import enable_context_parallel_on_cpu  # doctest: +SKIP
    >>> enable_context_parallel_on_cpu(model)                               # doctest: +SKIP
    >>> out = model(x, t, class_labels=y).sample  # the whole output on every process  # doctest: +SKIP
"""

from typing import Optional

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, ParallelConfig
from diffusers.hooks.context_parallel import apply_context_parallel
from diffusers.models.attention import AttentionModuleMixin
from torch.distributed.device_mesh import init_device_mesh


def check_backend_supports_context_parallel(model: torch.nn.Module) -> None:
    """diffusers' check in `enable_parallelism`: the attention backend must implement context parallelism."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    for module in model.modules():
        if isinstance(module, AttentionModuleMixin):
            backend = module.processor._attention_backend
            backend = AttentionBackendName(backend) if backend else _AttentionBackendRegistry.get_active_backend()[0]
            if not _AttentionBackendRegistry._is_context_parallel_available(backend):
                supported = sorted(b.value for b in _AttentionBackendRegistry._supports_context_parallel)
                raise ValueError(
                    f"The attention backend {backend.value!r} has no context parallelism; use one of {supported}."
                )
            return


def enable_context_parallel_on_cpu(model: torch.nn.Module, ulysses_degree: Optional[int] = None) -> ParallelConfig:
    """Split `model`'s tokens over all the CPU processes (`ulysses_degree`, if given, must be their number) as its
    `_cp_plan` says; every process must call it, with the same inputs later. The number of attention heads and of
    tokens must be divisible by the degree. Returns the parallel config, as recorded on the model."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("Initialise torch.distributed (e.g. init_process_group('gloo')) before enabling it.")
    if model._parallel_config is not None:
        raise RuntimeError(f"Parallelism is already applied to this {type(model).__name__}.")
    plan = model._cp_plan  # (a ValueError for a model whose layout has no plan)
    degree = ulysses_degree or dist.get_world_size()
    if degree != dist.get_world_size():
        raise ValueError(
            f"ulysses_degree={degree} must be the number of processes ({dist.get_world_size()}): the mesh this "
            "helper builds covers them all (for a subset, build a mesh and call apply_context_parallel yourself)."
        )
    check_backend_supports_context_parallel(model)
    context_parallel = ContextParallelConfig(ulysses_degree=degree)
    mesh = init_device_mesh("cpu", context_parallel.mesh_shape, mesh_dim_names=context_parallel.mesh_dim_names)
    config = ParallelConfig(context_parallel_config=context_parallel)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    model._parallel_config = config
    for module in model.modules():
        if isinstance(module, AttentionModuleMixin):
            module.processor._parallel_config = config
    apply_context_parallel(model, context_parallel, plan)
    return config
