"""The PEFT stage as Kubeflow Trainer runs it: nodes that get only PET_* variables, DDP and FSDP, SIGTERM to a rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port, publish_inputs, train_argv, write_config
from private_finetuning.artifacts.store import open_artifact
from private_finetuning.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from private_finetuning.training.distributed import from_trainer_env, node_workers, workers_exit_code

# Two nodes of one process with a micro-batch of 4 take the same 8 examples per step as one process that
# accumulates two micro-batches of 4; the shared-prefix shortcut (one process only) is off for a like-for-like sum.
TRAINING = {"max_steps": 6, "batch_size": 4, "checkpoint_every_steps": 2, "log_every_s": 0.01, "sample_generations": 1,
            "projector_tokens": 0, "warmup_steps": 1, "lora": {"r": 4, "alpha": 8}, "shared_prefix": False}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    return publish_inputs(tmp_path_factory.mktemp("inputs"), tiny_model_dir)


def node_env(rank: int, nodes: int, port: int, per_node: int = 1) -> dict[str, str]:
    """What Trainer's torch plugin gives the `node` container of each pod, and nothing torchrun would set."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(per_node), "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1"}


def start_nodes(config: Path, volumes: dict[str, Path], nodes: int = 2, per_node: int = 1) -> list[subprocess.Popen]:
    port = free_port()
    argv = [sys.executable, "-m", "private_finetuning.stages.peft_training", *train_argv(config, volumes)]
    return [subprocess.Popen(argv, env=node_env(rank, nodes, port, per_node), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for rank in range(nodes)]


def finish(pods: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    """Each node's exit code and log; a hung rendezvous kills them all instead of outliving the test."""
    try:
        return [(pod.returncode, err) for pod, err in ((p, p.communicate(timeout=timeout)[1]) for p in pods)]
    finally:
        for pod in pods:
            pod.kill()


def adapter_tensors(volume: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(open_artifact(volume, "adapter", "lora-adapter").file("adapter_model.safetensors"))


def layouts() -> list[tuple[str, int, int]]:
    """(strategy, nodes, processes per node) to compare with one process. On GPUs every rank needs a GPU of its
    own, and a pod's ranks take one each by LOCAL_RANK: there (scripts/gpu-check-fsdp.sh) one node of two."""
    import torch

    if torch.cuda.is_available():
        return [("ddp", 1, 2), ("fsdp", 1, 2)]
    return [("ddp", 2, 1), ("fsdp", 2, 1), ("fsdp", 1, 2)]


def test_trainer_nodes_train_the_adapter_one_process_trains_with_ddp_and_with_fsdp(
        tmp_path: Path, inputs: dict[str, Path]) -> None:
    import torch

    from private_finetuning.stages import peft_training

    single = {**inputs, "fine-tuned-model": tmp_path / "single"}
    fp32 = {**TRAINING, "precision": "fp32"}  # bf16 on a GPU would round differently per layout
    config = write_config(tmp_path / "one.yaml", {"training": {**fp32, "gradient_accumulation_steps": 2}})
    assert peft_training.main(train_argv(config, single)) == 0
    expected = adapter_tensors(single["fine-tuned-model"])
    for strategy, nodes, per_node in layouts():
        what = f"{strategy}, {nodes} node(s) of {per_node}"
        volumes = {**inputs, "fine-tuned-model": tmp_path / f"{strategy}-{nodes}x{per_node}"}
        config = write_config(tmp_path / f"{strategy}.yaml",
                              {"training": {**fp32, "distributed": {"strategy": strategy}}})
        results = finish(start_nodes(config, volumes, nodes, per_node))
        assert [code for code, _ in results] == [0] * nodes, what + "".join(err[-3000:] for _, err in results)
        logs = "".join(err for _, err in results)
        assert f"data-parallel training ({strategy}): rank 1 of 2" in logs
        assert "16 facts, 8 per step over 2 ranks: 2 steps per epoch" in logs  # 4 per micro-batch, 2 ranks
        assert logs.count("published lora-adapter") == 1  # rank 0 alone
        adapter = open_artifact(volumes["fine-tuned-model"], "adapter", "lora-adapter")
        assert adapter.manifest.metadata["world_size"] == 2 and adapter.manifest.metadata["steps"] == 6
        got = adapter_tensors(volumes["fine-tuned-model"])
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():  # same sums in another order: float rounding only
            torch.testing.assert_close(got[name], tensor, rtol=1e-3, atol=1e-4, msg=f"{what}: {name}")


def test_sigterm_to_one_fsdp_rank_stops_both_at_one_step_with_a_checkpoint_and_they_resume(
        tmp_path: Path, inputs: dict[str, Path]) -> None:
    """An eviction of one node: it and its peer stop at the same step (the stop is all-reduced), each exits 5
    (podFailurePolicy Ignore: new pods), the shards are gathered into one checkpoint, and the new pods resume."""
    total = 40
    volumes = {**inputs, "fine-tuned-model": tmp_path / "out"}
    config = write_config(tmp_path / "fsdp.yaml", {"training": {
        **TRAINING, "max_steps": total, "checkpoint_every_steps": 1000, "sample_generations": 0,
        "distributed": {"strategy": "fsdp"}}})
    pods = start_nodes(config, volumes)
    assert pods[0].stderr is not None
    for line in pods[0].stderr:  # rank 0's progress lines say the step
        if "step 3/" in line or "step 4/" in line:
            pods[1].send_signal(signal.SIGTERM)
            break
    results = finish(pods, timeout=300)
    assert [code for code, _ in results] == [EXIT_INTERRUPTED] * 2, results[1][1][-3000:]
    saved = int(results[0][1].split("SIGTERM at step ")[1].split()[0])
    assert f"SIGTERM at step {saved} " in results[1][1]  # the same step on both ranks
    assert "checkpoint at step" in results[0][1] and not (volumes["fine-tuned-model"] / "adapter").exists()
    results = finish(start_nodes(config, volumes))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert f"resuming from the checkpoint at step {saved} of {total}" in results[1][1]
    assert open_artifact(volumes["fine-tuned-model"], "adapter", "lora-adapter").manifest.metadata["steps"] == total


def test_a_node_of_two_processes_passes_bad_input_on_as_exit_2_not_torchruns_1(
        tmp_path: Path, inputs: dict[str, Path]) -> None:
    volumes = {**inputs, "fine-tuned-model": tmp_path / "out"}
    config = write_config(tmp_path / "bad.yaml", {"training": {**TRAINING, "max_seq_len": 8}})
    ((code, err),) = finish(start_nodes(config, volumes, nodes=1, per_node=2))
    assert code == EXIT_BAD_INPUT, err[-3000:]
    assert "tokens long with the chat template" in err
    assert not (volumes["fine-tuned-model"] / "adapter").exists()


def test_trainer_variables_become_torchs_for_one_process_per_node() -> None:
    env = {"PET_NNODES": "3", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "2",
           "PET_MASTER_ADDR": "model-peft-node-0-0.model-peft", "PET_MASTER_PORT": "29400"}
    from_trainer_env(env)
    assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == (
        "3", "2", "0", "model-peft-node-0-0.model-peft", "29400")
    assert node_workers(env) == 0  # already a rank
    several = {**env, "PET_NPROC_PER_NODE": "4"}
    several.pop("WORLD_SIZE")
    from_trainer_env(several)
    assert "WORLD_SIZE" not in several and node_workers(several) == 4  # the pod starts 4 ranks itself
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "PET_NNODES": "1"}
    from_trainer_env(torchrun)
    assert torchrun["RANK"] == "1"  # torchrun's own variables win
    with pytest.raises(ValueError, match="PET_MASTER_ADDR"):
        from_trainer_env({"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_MASTER_PORT": "29400"})


def test_one_exit_code_for_a_node_of_several_workers() -> None:
    assert workers_exit_code([1, EXIT_BAD_INPUT]) == EXIT_BAD_INPUT  # retrying cannot fix bad input
    assert workers_exit_code([EXIT_INTERRUPTED, -9]) == EXIT_INTERRUPTED  # a clean stop: a new pod, not a failure
    assert workers_exit_code([0, -9]) == 137  # SIGKILL as the kubelet reports it
    assert workers_exit_code([]) == 1


def test_fewer_batches_than_ranks_is_refused_before_the_first_step(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Every fact in one batch, two ranks: an epoch would have no optimizer step, and both ranks once spun until
    the Job's deadline. Both now stop at once with exit 2, saying why."""
    config = write_config(tmp_path / "p.yaml", {"training": {**TRAINING, "batch_size": 4096, "max_steps": 5}})
    results = finish(start_nodes(config, inputs), timeout=120)
    assert [code for code, _ in results] == [2, 2], [err[-1500:] for _, err in results]
    assert "fewer than the 2 ranks" in results[0][1] and "lower training.batch_size" in results[0][1]


AGREE = """
import os, sys
import torch.distributed as dist
from private_finetuning.training.distributed import Distributed
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[2]}", rank=rank, world_size=2)
d = Distributed(rank=rank, world_size=2)
print(d.any(rank == 1), d.any(False), flush=True)
dist.destroy_process_group()
"""


def test_a_decision_one_rank_makes_is_taken_by_every_rank() -> None:
    """Stale inputs, an adapter already published, a SIGTERM during setup: whatever one rank sees, all act on, so
    none stops alone while the others wait in their next collective."""
    port = str(free_port())
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", AGREE, str(rank), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outputs = [r.communicate(timeout=120) for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0], [err[-800:] for _, err in outputs]
    assert [out.split() for out, _ in outputs] == [["True", "False"], ["True", "False"]]
