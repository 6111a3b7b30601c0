"""The artifact contract: atomic publish, manifest checksums, waiting, refusal of corrupt artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from private_finetuning.artifacts.store import (
    STAGING,
    ArtifactWriter,
    current_version,
    open_artifact,
    sha256_file,
    verify,
    wait_for_artifact,
)
from private_finetuning.errors import ArtifactError, ArtifactTimeout


def staged_leftovers(volume: Path) -> list[str]:
    """What a producer left in staging, less the artifact's commit lock (an empty file that stays)."""
    return sorted(p.name for p in (volume / STAGING).iterdir() if not p.name.endswith(".commit.lock"))


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
    assert staged_leftovers(tmp_path) == []


def test_failure_inside_the_writer_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path, "art", kind="k", stage="s") as writer:
        assert writer.path is not None
        (writer.path / "half.txt").write_text("half")
        raise RuntimeError("conversion crashed")
    assert not (tmp_path / "art").exists()
    assert staged_leftovers(tmp_path) == []


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
    from private_finetuning.artifacts.store import FileEntry, Manifest, _digest

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


def test_wait_keeps_one_deadline_when_current_keeps_moving(tmp_path: Path) -> None:
    """Each time `current` moved between the look and the verification, the wait started again with a fresh
    timeout (recursively): under steady republishing it never timed out. Here every look says "yes" and every
    verified version says "no", as if a producer swapped `current` each time: the wait still ends at its deadline."""
    publish(tmp_path, {"a.txt": "alpha"})
    looks = iter(range(1_000_000))

    def moving(manifest: object) -> bool:
        return next(looks) % 2 == 0  # the look accepts, the verified version (a moment later) does not

    start = time.monotonic()
    with pytest.raises(ArtifactTimeout, match="timed out after"):
        wait_for_artifact(tmp_path, "art", "test-kind", producer="p", timeout_s=0.5, poll_s=0.01, accept=moving)
    assert time.monotonic() - start < 5


def test_wait_refuses_a_corrupt_publish(tmp_path: Path) -> None:
    path = publish(tmp_path, {"a.txt": "alpha"})
    (path / "a.txt").write_text("omega")
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        wait_for_artifact(tmp_path, "art", "test-kind", producer="p", timeout_s=1, poll_s=0.05)


def test_no_output_path_is_taken_from_a_manifest(tmp_path: Path) -> None:
    """Evaluation writes TensorBoard scalars to the training run an adapter names, only if it has the
    shape of one and is a real folder of the volume."""
    from private_finetuning.telemetry.tensorboard import recorded_run_dir

    run = tmp_path / "runs" / "train-0123456789ab"
    run.mkdir(parents=True)
    assert recorded_run_dir(tmp_path, "runs/train-0123456789ab") == run
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "train-aaaaaaaaaaaa").symlink_to(tmp_path / "elsewhere")
    for recorded in ["runs/train-aaaaaaaaaaaa", "../../etc", "/etc", "runs/../../x", "runs/train-0123456789ab/..",
                     "runs/train-ffffffffffff", None, 42]:
        assert recorded_run_dir(tmp_path, recorded) is None, recorded


def test_a_live_producers_staging_is_left_alone(tmp_path: Path) -> None:
    """A retried pod whose predecessor still runs must not delete the predecessor's staging folder."""
    with ArtifactWriter(tmp_path, "art", kind="test-kind", stage="a") as first:
        assert first.path is not None
        (first.path / "a.txt").write_text("from the first")
        publish(tmp_path, {"b.txt": "from the second"})  # starts, cleans stale staging, publishes
        assert (first.path / "a.txt").is_file()
        first.commit(name="first", source={})
    assert open_artifact(tmp_path, "art", "test-kind").manifest.name == "first"
    assert staged_leftovers(tmp_path) == []


PRODUCER = """
import os, sys
from pathlib import Path
from private_finetuning.artifacts import store as artifacts
volume, content, fault = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if fault != "none":
    artifacts.fault_hook = lambda step: os.kill(os.getpid(), 9) if step == fault else None
with artifacts.ArtifactWriter(volume, "art", kind="test-kind", stage="p", keep_versions=0) as w:
    for i in range(20):
        (w.path / f"part{i}.txt").write_text(content * 1000)
    w.commit(name=content, source={})
"""


def producer(volume: Path, content: str, fault: str = "none") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(volume), content, fault])


def test_two_producers_at_once_always_leave_one_verified_current(tmp_path: Path) -> None:
    for round_ in range(20):
        volume = tmp_path / f"round{round_}"
        both = [producer(volume, f"a{round_}"), producer(volume, f"b{round_}")]
        assert [p.wait(timeout=60) for p in both] == [0, 0]
        assert open_artifact(volume, "art", "test-kind").manifest.name in (f"a{round_}", f"b{round_}")
        assert staged_leftovers(volume) == []


@pytest.mark.parametrize("step", ["staged", "manifest-written", "renamed", "published"])
def test_a_producer_killed_at_any_step_leaves_old_or_new_never_partial(tmp_path: Path, step: str) -> None:
    assert producer(tmp_path, "old").wait(timeout=60) == 0
    assert producer(tmp_path, "new", fault=step).wait(timeout=60) == -9
    seen = open_artifact(tmp_path, "art", "test-kind").manifest.name  # verified: complete
    assert seen == ("new" if step == "published" else "old")
    assert producer(tmp_path, "newer").wait(timeout=60) == 0  # and the next run cleans up after the dead one
    assert open_artifact(tmp_path, "art", "test-kind").manifest.name == "newer"
    assert staged_leftovers(tmp_path) == []
    versions = [p for p in (tmp_path / "art").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(versions) == 1  # keep_versions 0: the dead producer's orphan version was pruned too


def test_pruning_keeps_every_referenced_version(tmp_path: Path) -> None:
    from private_finetuning.artifacts.store import point

    first = publish(tmp_path, {"a.txt": "one"}, keep=0)
    point(tmp_path / "art", "promoted", first.name)
    second = publish(tmp_path, {"a.txt": "two"}, keep=0)
    third = publish(tmp_path, {"a.txt": "three"}, keep=0)
    left = {p.name for p in (tmp_path / "art").iterdir() if p.is_dir() and not p.is_symlink()}
    assert left == {first.name, third.name} and second.name not in left


def test_a_lock_file_unlinked_before_it_was_locked_is_taken_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A cleaner may unlink a producer's lock file between the producer's open and flock: the producer would
    hold a lock on a file nobody else can see, and a third producer would delete its live folder as stale."""
    import fcntl
    import os

    from private_finetuning.artifacts import store as artifacts

    real_flock, raced = fcntl.flock, []

    def flock_after_an_unlink(fd: int, op: int) -> None:
        if not raced:  # the first lock taken: its file goes away just before, as a cleaner's unlink would do it
            raced.append(fd)
            os.unlink(os.readlink(f"/proc/self/fd/{fd}"))
        real_flock(fd, op)

    monkeypatch.setattr(artifacts.fcntl, "flock", flock_after_an_unlink)
    with ArtifactWriter(tmp_path, "art", kind="test-kind", stage="a") as first:
        assert first.path is not None and first._lock_fd is not None
        lock = Path(f"{first.path}.lock")
        assert lock.is_file() and os.stat(lock).st_ino == os.fstat(first._lock_fd).st_ino
        publish(tmp_path, {"b.txt": "another producer meanwhile"})  # its cleaning must see the folder as live
        assert first.path.is_dir()


def test_a_manifest_json_below_the_top_is_hashed_like_any_file(tmp_path: Path) -> None:
    path = publish(tmp_path, {"sub/manifest.json": "{}", "a.txt": "a"})
    assert "sub/manifest.json" in {f.path for f in verify(path).files}
    (path / "sub" / "manifest.json").write_text('{"changed": true}')
    with pytest.raises(ArtifactError, match=r"sub/manifest\.json"):
        verify(path)


def test_an_unlisted_nested_manifest_json_is_reported(tmp_path: Path) -> None:
    path = publish(tmp_path, {"a.txt": "a"})
    (path / "sub").mkdir()
    (path / "sub" / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"files not in the manifest: sub/manifest.json"):
        verify(path)


def test_wait_passes_over_a_version_made_from_other_inputs(tmp_path: Path) -> None:
    """A re-run with other data finds the previous run's artifact published: it waits for the one it wants."""
    publish(tmp_path, {"a.txt": "the previous run's"}, name="old")
    publisher = threading.Timer(0.4, publish, args=(tmp_path, {"a.txt": "this run's"}), kwargs={"name": "new"})
    publisher.start()
    artifact = wait_for_artifact(tmp_path, "art", "test-kind", producer="p", timeout_s=10, poll_s=0.05,
                                 accept=lambda m: m.name == "new", wanted="of this run")
    publisher.join()
    assert (artifact.path / "a.txt").read_text() == "this run's"
    with pytest.raises(ArtifactTimeout, match=r"test-kind artifact of another run .*is not of another run"):
        wait_for_artifact(tmp_path, "art", "test-kind", producer="p", timeout_s=0.2, poll_s=0.05,
                          accept=lambda m: False, wanted="of another run")
