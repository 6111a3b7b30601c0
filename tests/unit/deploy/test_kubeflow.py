"""The Kubeflow pipeline compiles and runs the same images, arguments and volumes as k8s/."""

from __future__ import annotations

from pathlib import Path

import yaml

from helpers import REPO
from private_finetuning.deploy.manifests import render


def test_pipeline_compiles_with_the_manifests_images_args_and_volumes(tmp_path: Path) -> None:
    from private_finetuning.deploy.kubeflow import compile_pipeline

    overlay = REPO / "k8s" / "overlays" / "cpu"
    docs = list(yaml.safe_load_all(compile_pipeline(overlay, tmp_path / "pipeline.yaml").read_text()))
    spec, platform = docs[0], docs[1]
    jobs = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in render(overlay) if o["kind"] == "Job"}

    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    assert {t["taskInfo"]["name"] for t in tasks.values()} == set(jobs)
    for task in tasks.values():
        name = task["taskInfo"]["name"]
        container = jobs[name]["containers"][0]
        executor = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
        assert executor["image"] == container["image"]
        assert executor["args"] == container["args"]
        assert executor["command"] == ["python", "/app/app.py"]
        mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
            spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        claims = {m["constant"] if "constant" in m else m.get("pvcName") for m in mounts.get("pvcMount", [])}
        expected = {v["persistentVolumeClaim"]["claimName"] for v in jobs[name]["volumes"]
                    if "persistentVolumeClaim" in v}
        assert claims == expected, name
        config_maps = {c["configMapName"] for c in mounts.get("configMapAsVolume", [])}
        assert config_maps == {v["configMap"]["name"] for v in jobs[name]["volumes"] if "configMap" in v}
    after = {t["taskInfo"]["name"]: set(t.get("dependentTasks", [])) for t in tasks.values()}
    assert after["model-evaluation"] == {"model-peft", "model-reference-relocation"}
    assert after["model-peft"] == {"dataset-relocation", "model-relocation", "tokenizer-relocation"}


def test_an_overlay_whose_training_is_a_trainjob_is_not_compiled_without_its_training(tmp_path: Path) -> None:
    import pytest

    from private_finetuning.deploy.kubeflow import compile_pipeline
    from private_finetuning.errors import ConfigError

    with pytest.raises(ConfigError, match="its training is a Kubeflow Trainer TrainJob"):
        compile_pipeline(REPO / "k8s" / "overlays" / "distributed", tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()
