"""A Kubeflow Trainer TrainJob, read into the Jobs that Trainer and JobSet would create from it.

Trainer merges the TrainJob's ``trainer`` (image, command, args, env, ``resourcesPerNode``) into the
``node`` container of its runtime's replicated Job, runs ``numNodes`` pods of it, and gives each the
torch rendezvous as ``PET_*`` variables: ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR`` (the first pod's name under the JobSet's headless Service) and ``PET_MASTER_PORT``.
Here each node becomes a Job of its own with the runtime's Job policy (backoffLimit, podFailurePolicy),
which the local runner then runs like any other; a runtime maps the rendezvous address to where its
pods can reach each other (:attr:`~private_finetuning.deploy.local_runner.pods.Pod.gang`).
"""

from __future__ import annotations

import copy
from typing import Any

from private_finetuning.errors import ConfigError

NODE_CONTAINER = "node"  # the container Trainer gives the PET_* variables and the TrainJob's image
MASTER_PORT = 29400  # Trainer's torch rendezvous port
GANG_LABEL = "jobset.sigs.k8s.io/jobset-name"  # JobSet's label on every pod of the TrainJob


def runtime_of(trainjob: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    ref = trainjob["spec"]["runtimeRef"]
    kind = ref.get("kind", "ClusterTrainingRuntime")
    for doc in docs:
        if doc.get("kind") == kind and doc["metadata"]["name"] == ref["name"]:
            return doc
    raise ConfigError(f"TrainJob/{trainjob['metadata']['name']}: its {kind} {ref['name']!r} is not in the rendered "
                      "overlay; the local runner runs only a runtime it can read (ship a TrainingRuntime beside the "
                      "TrainJob, as k8s/components/distributed-training does)")


def _node_replicated_job(runtime: dict[str, Any], where: str) -> dict[str, Any]:
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        if any(c["name"] == NODE_CONTAINER for c in job["template"]["spec"]["template"]["spec"]["containers"]):
            return job
    raise ConfigError(f"{where}: no replicated Job of its runtime has a container named {NODE_CONTAINER!r}, "
                      "where Trainer puts the trainer's image and the PET_* variables")


def _merge_trainer(container: dict[str, Any], trainer: dict[str, Any], pet: dict[str, str]) -> None:
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = trainer[key]
    if "resourcesPerNode" in trainer:
        container["resources"] = trainer["resourcesPerNode"]
    env = {e["name"]: e for e in container.get("env", [])}
    env.update({e["name"]: e for e in trainer.get("env", [])})
    env.update({name: {"name": name, "value": value} for name, value in pet.items()})
    container["env"] = list(env.values())


def node_jobs(trainjob: dict[str, Any], docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One Job per training node, as ``kubectl get jobs`` would list them under Trainer (named by the pods' hosts)."""
    name = trainjob["metadata"]["name"]
    where = f"TrainJob/{name}"
    runtime = runtime_of(trainjob, docs)
    replicated = _node_replicated_job(runtime, where)
    trainer = trainjob["spec"].get("trainer", {})
    nodes = int(trainer.get("numNodes") or runtime["spec"].get("mlPolicy", {}).get("numNodes") or 1)
    per_node = int(trainer.get("numProcPerNode") or 1)
    jobs = []
    for rank in range(nodes):
        spec = copy.deepcopy(replicated["template"]["spec"])
        template = spec["template"]
        template.setdefault("metadata", {}).setdefault("labels", {})[GANG_LABEL] = name
        pet = {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(per_node), "PET_NODE_RANK": str(rank),
               "PET_MASTER_ADDR": f"{name}-{replicated['name']}-0-0.{name}", "PET_MASTER_PORT": str(MASTER_PORT)}
        (container,) = [c for c in template["spec"]["containers"] if c["name"] == NODE_CONTAINER]
        _merge_trainer(container, trainer, pet)
        if "activeDeadlineSeconds" in trainjob["spec"]:
            spec["activeDeadlineSeconds"] = trainjob["spec"]["activeDeadlineSeconds"]
        jobs.append({"apiVersion": "batch/v1", "kind": "Job",
                     "metadata": {"name": f"{name}-{replicated['name']}-0-{rank}",
                                  "labels": {**trainjob["metadata"].get("labels", {}), GANG_LABEL: name}},
                     "spec": spec})
    return jobs
