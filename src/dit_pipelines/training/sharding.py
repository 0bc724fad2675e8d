"""What the training loop needs to run the same under FSDP as under DDP: with FSDP2 (`fully_shard`, what accelerate's
`fsdp_version: 2` applies) every parameter is a `DTensor` of which each process holds one shard. The EMA is kept
sharded the same way (elementwise, so each shard's EMA is that of the full weights), gathered whole for saving and
sampling, and sharded again when a checkpoint is loaded. Under DDP (plain tensors) every function here is the
identity or a no-op.

Gathering is a collective: every process must call `full_tensors` (and `all_finite_everywhere`) together.
"""

from typing import Iterable, List

import torch


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is an FSDP2 shard (a `DTensor`)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensors(tensors: Iterable[torch.Tensor]) -> List[torch.Tensor]:
    """The whole tensors, detached: sharded ones gathered from every process one at a time and moved to the CPU
    (a device then never holds more than one whole tensor; the CPU holds the whole model), plain ones as they are."""
    return [t.full_tensor().detach().cpu() if is_sharded(t) else t.detach() for t in tensors]


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` on `like`'s device and dtype, and sharded like `like` where that is a `DTensor`."""
    full = full.to(like.device, like.dtype)
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements)


def local_tensors(tensors: Iterable[torch.Tensor]) -> List[torch.Tensor]:
    """This process's shard of each tensor (plain tensors as they are)."""
    return [t.to_local() if is_sharded(t) else t for t in tensors]


def all_finite_everywhere(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite on every process: each checks its shards, then they agree (an
    all-reduce where a process group with more than one process is running)."""
    local = all(bool(torch.isfinite(t).all()) for t in local_tensors(tensors) if t.is_floating_point())
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())
    return local


@torch.no_grad()
def broadcast_from_main(module: torch.nn.Module, device) -> None:
    """Give every process the main process's weights before sharding: DDP broadcasts them when it wraps a model,
    FSDP shards each process's own tensors, and the processes were seeded apart (each draws its own noise), so each
    built other initial weights. Sent through `device` (nccl sends only GPU tensors)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        sent = tensor.data.to(device)
        dist.broadcast(sent, src=0)
        tensor.data.copy_(sent)
