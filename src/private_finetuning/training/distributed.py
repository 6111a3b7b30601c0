"""Data-parallel training across processes: torchrun locally, a Kubeflow Trainer TrainJob on a cluster.

The process group comes from the environment. torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; Kubeflow Trainer's torch runtime sets ``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` on every node's
container (:func:`from_trainer_env` turns them into the former). With one process per node the pod's
process is the rank itself, so its exit code (2: bad input, 5: stopped by SIGTERM with a checkpoint)
reaches the Job's podFailurePolicy unchanged; with several, :func:`launch_node_workers` starts them and
passes on the workers' exit code, which torchrun would turn into 1.

Gloo on CPUs, NCCL on GPUs. Every rank builds the same epoch order from the seed and takes its share of
each optimizer step. ``training.distributed.strategy`` picks how the model is spread: ``ddp`` keeps a
whole copy per rank and averages gradients; ``fsdp`` shards each decoder layer's weights over the ranks
(FSDP2 ``fully_shard``; frozen base and LoRA weights share a unit, which FSDP2's per-parameter sharding
allows), for a base that does not fit one device. Only rank 0 logs, serves the status endpoint and
publishes; checkpoints gather the adapter and optimizer state from every rank. One process (no
``WORLD_SIZE``) is the plain, non-distributed case.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from private_finetuning.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED

if TYPE_CHECKING:
    from peft import PeftModel
    from torch.optim import Optimizer

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
TRAINER_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Weights are spread over the ranks: every rank must take part in each forward pass and state gather."""
        return self.enabled and self.strategy == "fsdp"

    @property
    def with_rank0(self) -> bool:
        """Whether this rank runs rank 0's checkpoints and evaluations: rank 0 itself, and under FSDP every rank,
        whose shards those gather."""
        return self.is_main or self.sharded

    def wrap(self, model: PeftModel, device: str) -> Any:
        """The module to call for training: DDP-wrapped or FSDP-sharded when distributed, the model otherwise.

        FSDP shards in place and replaces the parameters: build the optimizer after this."""
        if not self.enabled:
            return model
        if self.sharded:
            return _fully_shard(model)
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

    def any(self, flag: bool) -> bool:
        """Whether any rank says ``flag``: a decision all ranks take together (a collective: every rank must call
        it at the same point), so that none stops alone while the others wait in the next collective."""
        return self.sum(float(flag)) > 0 if self.enabled else flag

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def consolidate(self, model: PeftModel) -> dict[str, Any] | None:
        """After training, on every rank: the full trainable weights (on rank 0), and under FSDP the whole model
        gathered onto each rank and left so, so rank 0 alone can evaluate and generate."""
        weights = trainable_state(model)
        if self.sharded:
            from torch.distributed.fsdp import FSDPModule

            for module in model.modules():
                if isinstance(module, FSDPModule):
                    module.set_reshard_after_forward(False)
                    module.unshard()
        return weights


def _fully_shard(model: PeftModel) -> PeftModel:
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def decoder_layers(model: PeftModel) -> list[Any]:
    """The transformer blocks, each an FSDP unit (its frozen weights and its LoRA weights together)."""
    inner = model.get_base_model()
    layers = getattr(getattr(inner, "model", inner), "layers", None)
    if layers is None:
        raise ValueError(f"{type(inner).__name__}: no decoder layers at .model.layers to shard with FSDP")
    return list(layers)


def _options(**kwargs: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def trainable_state(model: PeftModel) -> dict[str, Any]:
    """The trainable (LoRA) weights by their full names, whole, on the CPU. A collective under FSDP: every rank
    calls it; rank 0 gets the tensors, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))


def optimizer_state(model: PeftModel, optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name (a collective under FSDP, like :func:`trainable_state`)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True, ignore_frozen_params=True))


def load_state(model: PeftModel, optimizer: Optimizer, weights: dict[str, Any], optim: dict[str, Any]) -> None:
    """Put whole weights and optimizer state back, each rank taking its shard under FSDP."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options(strict=False))
    set_optimizer_state_dict(model, optimizer, optim, options=_options())


def from_trainer_env(env: MutableMapping[str, str]) -> None:
    """Kubeflow Trainer's ``PET_*`` variables as torch's own, for one process per node (``PET_NPROC_PER_NODE=1``).

    Left alone where torchrun (``WORLD_SIZE``) already set them or no Trainer runtime ran us."""
    if "WORLD_SIZE" in env or "PET_NNODES" not in env or int(env.get("PET_NPROC_PER_NODE", "1")) != 1:
        return
    missing = [name for name in TRAINER_ENV if name != "PET_NPROC_PER_NODE" and not env.get(name)]
    if missing:
        raise ValueError(f"the Trainer runtime's environment lacks {', '.join(missing)}")
    env.update({"WORLD_SIZE": env["PET_NNODES"], "RANK": env["PET_NODE_RANK"], "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": env["PET_MASTER_ADDR"], "MASTER_PORT": env["PET_MASTER_PORT"]})


def node_workers(env: Mapping[str, str]) -> int:
    """How many processes this pod must start itself: ``PET_NPROC_PER_NODE`` when above 1 and not started yet."""
    if "WORLD_SIZE" in env or "PET_NNODES" not in env:
        return 0
    count = int(env.get("PET_NPROC_PER_NODE", "1"))
    return count if count > 1 else 0


def launch_node_workers(module: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Start ``PET_NPROC_PER_NODE`` ranks of ``python -m module argv`` on this node, as torchrun would (static
    rendezvous at ``PET_MASTER_ADDR:PET_MASTER_PORT``), and return their exit code, not torchrun's 1, so a
    bad input (2) or a clean SIGTERM stop (5) still reaches podFailurePolicy (:func:`workers_exit_code`)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nodes, node_rank = int(env["PET_NNODES"]), int(env.get("PET_NODE_RANK", "0"))
    config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=int(env["PET_NPROC_PER_NODE"]),
                          run_id="private-fine-tuning", rdzv_backend="static",
                          rdzv_endpoint=f"{env['PET_MASTER_ADDR']}:{env['PET_MASTER_PORT']}",
                          rdzv_configs={"rank": node_rank}, max_restarts=0, monitor_interval=1.0)
    try:
        elastic_launch(config, sys.executable)("-m", module, *argv)
    except ChildFailedError as exc:
        return workers_exit_code([f.exitcode for f in exc.failures.values()])
    except SignalException as exc:  # the workers got the same signal and saved a checkpoint first
        log.warning("stopped by signal %s; the workers were told to checkpoint", exc.sigval)
        return EXIT_INTERRUPTED
    return 0


def workers_exit_code(codes: Sequence[int]) -> int:
    """One exit code for the pod from its workers': bad input wins (retrying cannot help), then a clean stop,
    then the first other failure (a signal, negative here, reads as 128 + n, as the kubelet reports it)."""
    failed = [128 - code if code < 0 else code for code in codes if code]
    for code in (EXIT_BAD_INPUT, EXIT_INTERRUPTED):
        if code in failed:
            return code
    return failed[0] if failed else EXIT_FAILURE


def init_distributed(strategy: str = "ddp") -> Distributed:
    from_trainer_env(os.environ)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(strategy=strategy)
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       strategy=strategy)
