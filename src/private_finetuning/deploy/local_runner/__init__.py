"""Runs the pipeline on one machine from the same manifests a cluster runs.

``pods`` reads a rendered Job or Deployment into what its container needs (``trainjob`` first turns a Kubeflow
Trainer TrainJob into the Jobs of its nodes); ``scheduling`` is the
node and kube-scheduler's fit check; ``runtimes`` run a pod as a local process or as a container
from its image (``pft run --engine``); ``controller`` gives them Job and ReplicaSet semantics;
``pipeline`` is ``pft run``.
"""

from private_finetuning.deploy.local_runner.pipeline import run_pipeline

__all__ = ["run_pipeline"]
