"""Data-parallel training across processes: torchrun locally, a PyTorchJob on a cluster.

The process group comes from the environment torchrun and the Kubeflow Training Operator set
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPUs, NCCL on
GPUs. Every rank builds the same epoch order from the seed and takes its share of each optimizer
step; gradients are averaged by DistributedDataParallel. Only rank 0 logs, checkpoints, serves the
status endpoint and publishes; one process (no ``WORLD_SIZE``) is the plain, non-distributed case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: PreTrainedModel, device: str) -> Any:
        """The module to call for training: DDP-wrapped when distributed, the model itself otherwise."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (rotary frequencies) never change, and broadcasting them would make every forward a
        # collective: rank 0 alone could then not run evaluation on the side.
        return DistributedDataParallel(model, device_ids=[self.local_rank] if device.startswith("cuda") else None,
                                       broadcast_buffers=False)

    def share(self, micro_batches: list[Any]) -> list[Any]:
        """This rank's micro-batches of one optimizer step (round robin, so every rank gets one)."""
        return micro_batches[self.rank::self.world_size]

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"  # NCCL reduces CUDA tensors
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init_distributed() -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
