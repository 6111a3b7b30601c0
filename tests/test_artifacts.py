"""The artifact contract: atomic publish, manifest checksums, waiting, refusal of corrupt artifacts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from private_finetuning.artifacts import (
    STAGING,
    ArtifactWriter,
    current_version,
    open_artifact,
    sha256_file,
    verify,
    wait_for_artifact,
)
from private_finetuning.errors import ArtifactError, ArtifactTimeout


def publish(volume: Path, files: dict[str, str], *, keep: int = 1, name: str = "thing") -> Path:
    with ArtifactWriter(volume, "art", kind="test-kind", stage="test-stage", keep_versions=keep) as writer:
        assert writer.path is not None
        for rel, text in files.items():
            (writer.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (writer.path / rel).write_text(text)
        artifact = writer.commit(name=name, source={"type": "test"}, metadata={"n": len(files)})
    return artifact.path.resolve()


def test_publish_writes_manifest_with_checksums(tmp_path: Path) -> None:
    path = publish(tmp_path, {"a.txt": "alpha", "sub/b.txt": "beta"})
    assert (tmp_path / "art" / "current").is_symlink()
    manifest = json.loads((path / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"a.txt", "sub/b.txt"}
    assert files["a.txt"]["sha256"] == sha256_file(path / "a.txt")
    assert files["a.txt"]["size"] == 5
    assert manifest["kind"] == "test-kind"
    assert manifest["producer"]["stage"] == "test-stage"
    assert manifest["metadata"] == {"n": 2}
    assert manifest["created_at"]
    assert verify(path).digest == manifest["digest"]
    assert list((tmp_path / STAGING).iterdir()) == []


def test_failure_inside_the_writer_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path, "art", kind="k", stage="s") as writer:
        assert writer.path is not None
        (writer.path / "half.txt").write_text("half")
        raise RuntimeError("conversion crashed")
    assert not (tmp_path / "art").exists()
    assert list((tmp_path / STAGING).iterdir()) == []


def test_empty_artifact_is_refused(tmp_path: Path) -> None:
    writer = ArtifactWriter(tmp_path, "art", kind="k", stage="s")
    with pytest.raises(ArtifactError, match="empty artifact"), writer:
        writer.commit(name="x", source={})
    assert current_version(tmp_path, "art") is None


def test_identical_republish_is_a_no_op(tmp_path: Path) -> None:
    first = publish(tmp_path, {"a.txt": "alpha"})
    created = json.loads((first / "manifest.json").read_text())["created_at"]
    time.sleep(1.1)
    second = publish(tmp_path, {"a.txt": "alpha"})
    assert first == second
    assert json.loads((second / "manifest.json").read_text())["created_at"] == created
    assert [p.name for p in (tmp_path / "art").iterdir() if not p.is_symlink()] == [first.name]


def test_new_content_swaps_current_and_prunes_old_versions(tmp_path: Path) -> None:
    v1 = publish(tmp_path, {"a.txt": "one"}, keep=1)
    time.sleep(1.1)
    v2 = publish(tmp_path, {"a.txt": "two"}, keep=1)
    time.sleep(1.1)
    v3 = publish(tmp_path, {"a.txt": "three"}, keep=1)
    assert (tmp_path / "art" / "current").resolve() == v3
    assert v2.exists() and not v1.exists()
    assert (v3 / "a.txt").read_text() == "three"


def test_stale_staging_from_a_killed_run_is_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / STAGING / "art-deadbeef"
    stale.mkdir(parents=True)
    (stale / "partial.bin").write_bytes(b"\0" * 10)
    publish(tmp_path, {"a.txt": "alpha"})
    assert not stale.exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "extra", "no-manifest", "bad-manifest"])
def test_verify_refuses_a_corrupt_artifact(tmp_path: Path, damage: str) -> None:
    path = publish(tmp_path, {"a.txt": "alpha", "b.txt": "beta"})
    target = path / "a.txt"
    if damage == "flip":
        target.write_text("alphA")
        expected = "sha256 does not match"
    elif damage == "truncate":
        target.write_text("alp")
        expected = "size 3 != 5"
    elif damage == "delete":
        target.unlink()
        expected = "missing"
    elif damage == "extra":
        (path / "c.txt").write_text("sneaky")
        expected = "files not in the manifest: c.txt"
    elif damage == "no-manifest":
        (path / "manifest.json").unlink()
        expected = "half-written"
    else:
        (path / "manifest.json").write_text("{not json")
        expected = "unreadable manifest"
    with pytest.raises(ArtifactError, match=expected):
        open_artifact(tmp_path, "art", "test-kind")


def rewrite_manifest(path: Path, change: dict) -> None:
    """Edit the manifest's first file entry and fix the digest, as an attacker who can write the volume would."""
    from private_finetuning.artifacts import FileEntry, Manifest, _digest

    manifest = Manifest.from_file(path / "manifest.json")
    entry = manifest.files[0]
    manifest.files[0] = FileEntry(**{"path": entry.path, "size": entry.size, "sha256": entry.sha256, **change})
    manifest.digest = _digest(manifest.files)
    (path / "manifest.json").write_text(manifest.to_json())


@pytest.mark.parametrize("listed", ["../x", "/etc/passwd", "./a.txt", "sub/../a.txt", "a.txt/", ""])
def test_a_manifest_path_outside_the_version_folder_is_refused(tmp_path: Path, listed: str) -> None:
    path = publish(tmp_path / "volume", {"a.txt": "alpha"})
    (tmp_path / "volume" / "art" / "x").write_text("alpha")  # what ../x would hash, if it were followed
    rewrite_manifest(path, {"path": listed})
    with pytest.raises(ArtifactError, match="not a plain relative path inside the artifact"):
        open_artifact(tmp_path / "volume", "art", "test-kind")


def test_a_symlink_out_of_the_volume_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("alpha")
    path = publish(tmp_path / "volume", {"a.txt": "alpha"})
    (path / "a.txt").unlink()
    (path / "a.txt").symlink_to(outside)  # same bytes, so only the link itself can give it away
    with pytest.raises(ArtifactError, match="a symlink inside an artifact"):
        open_artifact(tmp_path / "volume", "art", "test-kind")


def test_a_symlinked_folder_or_manifest_or_special_file_is_refused(tmp_path: Path) -> None:
    import os

    path = publish(tmp_path / "volume", {"sub/a.txt": "alpha"})
    real = tmp_path / "elsewhere"
    (path / "sub").rename(real)
    (path / "sub").symlink_to(real)
    with pytest.raises(ArtifactError, match="a symlink inside an artifact"):
        open_artifact(tmp_path / "volume", "art", "test-kind")
    (path / "sub").unlink()
    real.rename(path / "sub")
    os.mkfifo(path / "pipe")
    with pytest.raises(ArtifactError, match="only regular files and folders"):
        open_artifact(tmp_path / "volume", "art", "test-kind")
    (path / "pipe").unlink()
    (tmp_path / "m.json").write_text((path / "manifest.json").read_text())
    (path / "manifest.json").unlink()
    (path / "manifest.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(ArtifactError, match="a symlink inside an artifact"):
        open_artifact(tmp_path / "volume", "art", "test-kind")


def test_open_refuses_the_wrong_kind(tmp_path: Path) -> None:
    publish(tmp_path, {"a.txt": "alpha"})
    with pytest.raises(ArtifactError, match="holds a 'test-kind' artifact, expected 'base-model'"):
        open_artifact(tmp_path, "art", "base-model")


def test_wait_times_out_naming_what_and_who(tmp_path: Path) -> None:
    with pytest.raises(ArtifactTimeout, match=r"base-model artifact at .*art/current/manifest.json.*model-relocation"):
        wait_for_artifact(tmp_path, "art", "base-model", producer="model-relocation-server", timeout_s=0.3,
                          poll_s=0.05)


def test_wait_returns_once_published(tmp_path: Path) -> None:
    publisher = threading.Timer(0.3, publish, args=(tmp_path, {"a.txt": "late"}))
    publisher.start()
    artifact = wait_for_artifact(tmp_path, "art", "test-kind", producer="p", timeout_s=10, poll_s=0.05)
    publisher.join()
    assert (artifact.path / "a.txt").read_text() == "late"
    assert artifact.path.name != "current"  # resolved once: a later swap cannot mix versions


def test_wait_refuses_a_corrupt_publish(tmp_path: Path) -> None:
    path = publish(tmp_path, {"a.txt": "alpha"})
    (path / "a.txt").write_text("omega")
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        wait_for_artifact(tmp_path, "art", "test-kind", producer="p", timeout_s=1, poll_s=0.05)


def test_no_output_path_is_taken_from_a_manifest(tmp_path: Path) -> None:
    """Evaluation writes TensorBoard scalars to the training run an adapter names, only if it has the
    shape of one and is a real folder of the volume."""
    from private_finetuning.tensorboard_logging import recorded_run_dir

    run = tmp_path / "runs" / "train-0123456789ab"
    run.mkdir(parents=True)
    assert recorded_run_dir(tmp_path, "runs/train-0123456789ab") == run
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "train-aaaaaaaaaaaa").symlink_to(tmp_path / "elsewhere")
    for recorded in ["runs/train-aaaaaaaaaaaa", "../../etc", "/etc", "runs/../../x", "runs/train-0123456789ab/..",
                     "runs/train-ffffffffffff", None, 42]:
        assert recorded_run_dir(tmp_path, recorded) is None, recorded
