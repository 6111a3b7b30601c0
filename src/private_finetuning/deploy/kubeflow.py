"""The pipeline as a Kubeflow Pipelines v2 pipeline, built from the rendered kustomize Jobs.

Each Job of the overlay becomes one task with the same image, command, arguments, resources, PVC
mounts and pipeline ConfigMap, so the Kubeflow run and the ``kubectl``/Skaffold run cannot drift
apart. Tasks are ordered by the artifacts they exchange (the stages also wait for each other's
manifests, as they do without Kubeflow). The inference server and TensorBoard are long-running
Deployments, not pipeline steps: deploy them from ``k8s/`` next to the pipeline (docs/kubeflow.md).

    pft kubeflow-compile pipeline.yaml          # then upload it in the Kubeflow Pipelines UI
"""

# No `from __future__ import annotations` here: kfp reads the component's return annotation at run time.
from pathlib import Path
from typing import Any

from private_finetuning.deploy.manifests import APP_DIR, render
from private_finetuning.errors import ConfigError

# Which Job consumes which Jobs' artifacts (the artifact contract's producers and consumers).
DEPENDS_ON = {
    "model-peft": ("dataset-relocation", "model-relocation", "tokenizer-relocation"),
    "model-evaluation": ("model-peft", "model-reference-relocation"),
    "model-export": ("model-evaluation",),
    "openvino-model-conversion": ("model-relocation", "tokenizer-relocation"),
}


def _component(name: str, container: dict[str, Any]) -> Any:
    from kfp import dsl

    command = list(container.get("command", []))
    if command[1:2] == ["app.py"] and container.get("workingDir", APP_DIR) == APP_DIR:
        command[1] = f"{APP_DIR}/app.py"  # a KFP container has no workingDir
    image, args = container["image"], list(container.get("args", []))

    def component() -> dsl.ContainerSpec:
        return dsl.ContainerSpec(image=image, command=command, args=args)

    component.__name__ = name.replace("-", "_")
    return dsl.container_component(component)


def _apply_pod_settings(task: Any, pod: dict[str, Any]) -> None:
    from kfp import kubernetes

    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            kubernetes.mount_pvc(task, pvc_name=volume["persistentVolumeClaim"]["claimName"],
                                 mount_path=mount["mountPath"])
        elif "configMap" in volume:
            kubernetes.use_config_map_as_volume(task, config_map_name=volume["configMap"]["name"],
                                                mount_path=mount["mountPath"])
        elif "emptyDir" in volume:
            kubernetes.empty_dir_mount(task, volume_name=mount["name"], mount_path=mount["mountPath"])
    for item in container.get("env", []):
        task.set_env_variable(item["name"], str(item["value"]))
    resources = container.get("resources", {})
    if "cpu" in resources.get("requests", {}):
        task.set_cpu_request(str(resources["requests"]["cpu"]))
    if "memory" in resources.get("requests", {}):
        task.set_memory_request(str(resources["requests"]["memory"]))
    if "memory" in resources.get("limits", {}):
        task.set_memory_limit(str(resources["limits"]["memory"]))
    if "nvidia.com/gpu" in resources.get("limits", {}):
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(int(resources["limits"]["nvidia.com/gpu"]))
    task.set_caching_options(False)  # the stages skip work themselves when their inputs did not change


def build_pipeline(overlay: Path) -> Any:
    from kfp import dsl

    rendered = render(overlay)
    if any(o["kind"] == "TrainJob" for o in rendered):
        raise ConfigError(f"{overlay}: its training is a Kubeflow Trainer TrainJob, which is not a Kubeflow Pipelines "
                          "step; compile the cpu or gpu overlay, or apply this one with kubectl (docs/cluster.md)")
    jobs = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "Job"}
    order = sorted(jobs, key=lambda n: (n in DEPENDS_ON, n == "model-evaluation", n))

    @dsl.pipeline(name="private-fine-tuning",
                  description="Relocate the base model, tokenizer, reference model and data; LoRA fine-tune; "
                              "evaluate. Same images, arguments and volumes as the k8s/ manifests.")
    def pipeline() -> None:
        tasks: dict[str, Any] = {}
        for name in order:
            pod = jobs[name]["spec"]["template"]["spec"]
            task = _component(name, pod["containers"][0])()
            task.set_display_name(name)
            _apply_pod_settings(task, pod)
            task.after(*(tasks[d] for d in DEPENDS_ON.get(name, ()) if d in tasks))
            tasks[name] = task

    return pipeline


def compile_pipeline(overlay: Path, output: Path) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(overlay), package_path=str(output))
    return output
