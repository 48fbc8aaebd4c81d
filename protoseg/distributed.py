"""The process group of a multi-process run, from the environment that torchrun
sets (and the SLURM backend exports): RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT. Without a group of two or more, every helper is a
no-op, so single-process code runs unchanged. Also the device a run's spec names, and the
DistributedDataParallel wrapping of its model."""
from __future__ import annotations

import inspect
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

_created = False  # destroy() tears down only a group that init_from_env made


def pick_device(name: str) -> torch.device:
    """train.device: "auto" is CUDA where there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(device_type: str) -> tuple[int, int]:
    """(rank, world_size); joins the group when WORLD_SIZE > 1 and none exists yet."""
    global _created
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device_type == "cuda":
            # modulo: a task may see only its own GPU (CUDA_VISIBLE_DEVICES set per task)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", init_method="env://")
            _created = True
    if not _active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def lost_peer(err: BaseException) -> bool:
    """Did a collective fail because another process of the run is gone (killed, its node lost)? Then the
    run is not at fault and resumes from its checkpoint. NCCL and the c10d store raise DistError; gloo's
    transport raises a RuntimeError that names it."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo/transport" in str(err))


def destroy() -> None:
    global _created
    if _created:
        dist.destroy_process_group()
        _created = False


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any."""
    if not _active():
        return flag
    value = torch.tensor(int(flag), device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over ranks (a NaN on one rank is a NaN on all); without a group, `tensor`."""
    if not _active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def all_gather(obj: Any) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if not _active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite `tensors` in place with rank 0's."""
    if _active():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def barrier() -> None:
    if _active():
        device = _device()
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model: torch.nn.Module, norm: str, world: int, device_type: str) -> int:
    """Under `model.norm: SyncBN`, every BatchNorm of `model` (backbone, decoder, auxiliary head) becomes a
    SyncBatchNorm when the run has several CUDA processes, as mmseg's and the official recipes train;
    the number converted. SyncBatchNorm does not run on CPU, and one process has nothing to synchronise:
    there the model keeps BatchNorm, said in one notice line."""
    if norm != "SyncBN":
        return 0
    if world < 2 or device_type != "cuda":
        from .config import notice

        notice(f"model.norm is SyncBN, but this run has {world} process(es) on {device_type}: BatchNorm stays "
               "per-process (SyncBatchNorm needs CUDA and more than one process)")
        return 0
    from ._compat import prepare_torchvision

    prepare_torchvision()
    # timm's conversion keeps the activation of its fused BatchNormAct2d (EfficientNet), torch's drops it
    from timm.layers import convert_sync_batchnorm

    count = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convert_sync_batchnorm(model)
    return count


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP without find_unused_parameters: every parameter of every registered backbone and head gets a gradient."""
    # No buffer broadcast at each forward: the head averages the prototypes over ranks itself, and
    # BN statistics are unused in training mode (the engine evaluates with rank 0's). torch 2.13 renamed the flag.
    flag = "forward_sync_buffers"
    if flag not in inspect.signature(DistributedDataParallel).parameters:
        flag = "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **{flag: False})
