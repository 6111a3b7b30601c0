"""The Kubernetes side, proven without a cluster: render, validate against schemas, cross-check files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from private_finetuning.manifests import plan, render

SCHEMAS = REPO.parent / "shared" / "schemas"
OVERLAYS = sorted(p.parent for p in (REPO / "k8s" / "overlays").glob("*/kustomization.yaml"))
K8S_VERSION = "1.32.0"


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return render(request.param)


def test_every_object_validates_against_the_kubernetes_schema(rendered: list[dict]) -> None:
    import kubernetes_validate

    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


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
    assert claims == {"datasets", "base-model", "base-tokenizer", "reference-model", "fine-tuned-model"}
    config_maps = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert any("pipeline.yaml" in c.get("data", {}) for c in config_maps)
    assert {o["metadata"]["namespace"] for o in rendered if o["kind"] != "Namespace"} == {"private-fine-tuning"}


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


def test_every_workload_image_is_a_component_with_its_files(rendered: list[dict], tmp_path: Path) -> None:
    pods = plan(rendered, repo=REPO, state=tmp_path)
    assert pods
    for pod in pods:
        for name in ("app.py", "Dockerfile", "requirements.txt"):
            assert (REPO / "components" / pod.image / name).is_file(), f"{pod.image}/{name}"


def test_local_translation_maps_mounts_to_state_folders(rendered: list[dict], tmp_path: Path) -> None:
    pod = next(p for p in plan(rendered, repo=REPO, state=tmp_path) if p.name == "model-relocation")
    assert pod.cwd == REPO / "components" / "model-relocation-server"
    assert pod.argv[pod.argv.index("--output") + 1] == str(tmp_path / "volumes" / "base-model")
    config = Path(pod.argv[pod.argv.index("--config") + 1])
    assert config.is_file() and "smollm2-135m-instruct" in config.read_text()
    assert pod.env["TMPDIR"].startswith(str(tmp_path / "scratch"))
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


def test_skaffold_builds_every_component_with_its_dockerfile() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    components = {p.name for p in (REPO / "components").iterdir() if p.is_dir()}
    assert set(artifacts) == components
    for image, artifact in artifacts.items():
        assert artifact["docker"]["dockerfile"] == f"components/{image}/Dockerfile"
    for path in config["manifests"]["kustomize"]["paths"]:
        assert (REPO / path / "kustomization.yaml").is_file()


@pytest.mark.parametrize("component", sorted(p.name for p in (REPO / "components").iterdir() if p.is_dir()))
def test_dockerfile_copy_sources_exist_and_entrypoint_imports(component: str) -> None:
    import ast
    import importlib

    dockerfile = (REPO / "components" / component / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"{component}/Dockerfile copies missing {source}"
    app = REPO / "components" / component / "app.py"
    tree = ast.parse(app.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imports, f"{app} imports nothing"
    for node in imports:
        module = importlib.import_module(node.module or "")
        for alias in node.names:
            assert hasattr(module, alias.name), f"{app}: {node.module}.{alias.name}"
