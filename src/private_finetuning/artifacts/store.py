"""The artifact contract between stages: atomic publish, a checksummed manifest, waiting, verification.

Layout of one artifact on its volume (see docs/artifacts.md)::

    <volume>/<artifact>/current -> <version>     # relative symlink, swapped atomically
    <volume>/<artifact>/<version>/manifest.json  # written last, lists every file with sha256
    <volume>/<artifact>/<version>/...            # the files; a version folder is never modified
    <volume>/.staging/<artifact>-<random>/       # where a producer writes before publishing

A producer writes into a staging folder on the same volume, then commits: checksums are computed,
``manifest.json`` is written, the folder is renamed to its content-addressed version and the
``current`` link is replaced in one ``rename(2)``. A consumer never sees a half-written artifact:
either ``current`` points to a complete version or it does not exist yet. Publishing content that
is already current is a no-op.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from private_finetuning import __version__
from private_finetuning.errors import ArtifactError, ArtifactTimeout

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "current"
STAGING = ".staging"
SCHEMA_VERSION = 1
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What an artifact is, where it came from and exactly which bytes make it up."""

    kind: str
    name: str
    source: dict[str, Any]
    files: list[FileEntry]
    digest: str
    created_at: str
    producer: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["files"] = [FileEntry(**f) for f in data["files"]]
            manifest = cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
        if manifest.schema_version != SCHEMA_VERSION:
            raise ArtifactError(f"{path}: manifest schema {manifest.schema_version} is not the supported "
                                f"{SCHEMA_VERSION}")
        return manifest


@dataclass(frozen=True)
class Artifact:
    """A published, verified artifact: read its files under ``path``."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _digest(files: list[FileEntry]) -> str:
    """One hash over the file list: same files, same bytes -> same digest, whatever the write order."""
    lines = "".join(f"{f.sha256}  {f.size}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def _scan(root: Path) -> list[FileEntry]:
    entries = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ArtifactError(f"{path}: artifacts may not contain symlinks")
        if path.is_file() and path != root / MANIFEST:  # a manifest.json below the top is a file like any other
            with path.open("rb") as fh:  # make the bytes durable before the rename publishes them
                os.fsync(fh.fileno())
            entries.append(FileEntry(str(path.relative_to(root)), path.stat().st_size, sha256_file(path)))
    return entries


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step(name: str) -> None:
    """A named point of the publish protocol; tests set ``fault_hook`` to kill a producer exactly there."""
    if fault_hook is not None:
        fault_hook(name)


fault_hook: Callable[[str], None] | None = None


def _locked_fd(path: Path, *, blocking: bool = True) -> int | None:
    """An open descriptor holding an exclusive flock on the file ``path`` names now; None if busy.

    The file may be unlinked (a cleaner found it free) between our open and our flock: we would then hold a
    lock nobody else can see, and a third producer would take our folder for stale. So the lock counts only
    if ``path`` still names the very inode locked; otherwise it is taken again on the file there now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``path`` (created if missing), released when the holder exits or dies."""
    fd = _locked_fd(path, blocking=blocking)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def volume_lock(volume: Path, name: str) -> Iterator[None]:
    """An exclusive lock named ``name`` on ``volume``, across processes and pods that mount it (flock)."""
    (Path(volume) / STAGING).mkdir(parents=True, exist_ok=True)
    with _flock(Path(volume) / STAGING / f"{name}.lock"):
        yield


class ArtifactWriter:
    """Writes one artifact into staging and publishes it atomically on :meth:`commit`.

    Use as a context manager: if the block raises (bad input, a crash in conversion), the staging
    folder is removed and nothing is published. Several producers of one artifact may run at once (a
    retried pod whose predecessor still runs, two runs): each stages in a folder of its own, held by
    a lock for as long as it lives, and only folders whose holder is gone are cleaned up. Commits
    are serialised per artifact, so the last one wins and ``current`` is always a complete version.
    """

    def __init__(self, volume: Path, artifact: str, *, kind: str, stage: str, keep_versions: int = 1):
        self.volume, self.artifact, self.kind, self.stage = Path(volume), artifact, kind, stage
        self.keep_versions = keep_versions
        self.path: Path | None = None
        self.published: Artifact | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> ArtifactWriter:
        staging = self.volume / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{self.artifact}-{secrets.token_hex(4)}"
        # The lock comes before the folder, so a folder never exists without a live or dead holder's lock.
        self._lock_fd = _locked_fd(Path(f"{path}.lock"))
        path.mkdir()
        self.path = path
        self._remove_stale(staging)
        return self

    def _remove_stale(self, staging: Path) -> None:
        """Staging folders of producers that died (their lock is free); a live producer's stay."""
        for stale in staging.glob(f"{self.artifact}-*"):
            stale = stale.with_suffix("") if stale.suffix == ".lock" else stale  # a lock whose folder is gone, too
            if stale == self.path or not (stale.exists() or Path(f"{stale}.lock").exists()):
                continue
            with _flock(Path(f"{stale}.lock"), blocking=False) as free:
                if free:
                    if stale.exists():
                        log.info("removing staging leftover of an interrupted run: %s", stale)
                        shutil.rmtree(stale, ignore_errors=True)
                    Path(f"{stale}.lock").unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        if self.path is not None:
            Path(f"{self.path}.lock").unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if exc_type is not None:
            log.warning("discarded the staged %s; nothing was published to %s", self.artifact, self.volume)

    def commit(self, *, name: str, source: dict[str, Any], metadata: dict[str, Any] | None = None) -> Artifact:
        assert self.path is not None, "commit() outside the with-block"
        files = _scan(self.path)
        if not files:
            raise ArtifactError(f"{self.path}: refusing to publish an empty artifact")
        _step("staged")
        digest = _digest(files)
        root = self.volume / self.artifact
        root.mkdir(parents=True, exist_ok=True)
        with _flock(self.volume / STAGING / f"{self.artifact}.commit.lock"):
            current = current_version(self.volume, self.artifact)
            if current is not None and current.digest == digest:
                log.info("%s/%s: identical content already published (%s); nothing to do",
                         self.volume, self.artifact, digest[:12])
                self.published = Artifact((root / CURRENT).resolve(), current)
                return self.published
            manifest = self._write_manifest(name, source, metadata, files, digest)
            version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest[:12]}"
            if (root / version).exists():  # the same bytes, published this second by another producer
                verify(root / version, self.kind)
            else:
                os.replace(self.path, root / version)
                _fsync_dir(root)
            _step("renamed")
            point(root, CURRENT, version)  # the publish: one atomic rename
            _step("published")
            self._prune(root)
        log.info("published %s %r to %s (%d files, %s, digest %s)", self.kind, name, root / version,
                 len(files), human_size(sum(f.size for f in files)), digest[:12])
        self.published = Artifact(root / version, manifest)  # these very bytes, whatever `current` becomes
        return self.published

    def _write_manifest(self, name: str, source: dict[str, Any], metadata: dict[str, Any] | None,
                        files: list[FileEntry], digest: str) -> Manifest:
        assert self.path is not None
        manifest = Manifest(
            kind=self.kind, name=name, source=source, files=files, digest=digest,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            producer={"stage": self.stage, "package_version": __version__, "host": socket.gethostname()},
            metadata=metadata or {},
        )
        (self.path / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        with (self.path / MANIFEST).open("rb") as fh:
            os.fsync(fh.fileno())
        _step("manifest-written")
        return manifest

    def _prune(self, root: Path) -> None:
        """Keep every version a reference points at (current, promoted, served...) and the newest others."""
        referenced = {link.resolve().name for link in root.iterdir() if link.is_symlink()}
        older = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name not in referenced),
                       key=lambda p: p.name, reverse=True)
        for old in older[self.keep_versions:]:
            shutil.rmtree(old, ignore_errors=True)


def hold_reference(volume: Path, artifact: str, reference: str, version: str, *, missing_ok: bool = False) -> None:
    """Point ``artifact/reference`` at an existing version, under the artifact's commit lock, so that no
    concurrent publish prunes the version between the check and the link (pruning keeps linked versions)."""
    root = Path(volume) / artifact
    (Path(volume) / STAGING).mkdir(parents=True, exist_ok=True)
    with _flock(Path(volume) / STAGING / f"{artifact}.commit.lock"):
        if not (root / version).is_dir() or (root / version).is_symlink():
            if missing_ok:
                return
            raise ArtifactError(f"{root / version}: no such version of {artifact}")
        point(root, reference, version)


def point(root: Path, reference: str, version: str) -> None:
    """Make ``root/reference`` a relative link to ``version``, in one atomic rename."""
    link_tmp = root / f".{reference}-{secrets.token_hex(4)}"
    os.symlink(version, link_tmp)
    os.replace(link_tmp, root / reference)
    _fsync_dir(root)


def current_version(volume: Path, artifact: str) -> Manifest | None:
    """The manifest of the currently published version, or None if nothing is published yet."""
    link = Path(volume) / artifact / CURRENT
    if not (link / MANIFEST).is_file():
        return None
    return Manifest.from_file(link / MANIFEST)


def verify(path: Path, expect_kind: str | None = None) -> Manifest:
    """Check every file of the artifact at ``path`` against its manifest; raise ArtifactError if not."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}; the artifact is half-written or not an artifact")
    _regular_file(path, MANIFEST)
    manifest = Manifest.from_file(manifest_path)
    if expect_kind is not None and manifest.kind != expect_kind:
        raise ArtifactError(f"{path}: holds a {manifest.kind!r} artifact, expected {expect_kind!r}")
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        file = _regular_file(path, _confined(entry.path, manifest_path))
        if file.stat().st_size != entry.size:
            raise ArtifactError(f"{file}: size {file.stat().st_size} != {entry.size} in the manifest (truncated?)")
        if sha256_file(file) != entry.sha256:
            raise ArtifactError(f"{file}: sha256 does not match the manifest; the artifact is corrupt")
    for found in path.rglob("*"):  # nothing but folders and regular files, as on publish
        if found.is_symlink() or not (found.is_dir() or found.is_file()):
            raise ArtifactError(f"{found}: artifacts may hold only regular files and folders")
    extra = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.is_file() and p != manifest_path and str(p.relative_to(path)) not in listed)
    if extra:
        raise ArtifactError(f"{path}: files not in the manifest: {', '.join(extra)}")
    if _digest(manifest.files) != manifest.digest:
        raise ArtifactError(f"{manifest_path}: digest does not match its file list")
    return manifest


def _confined(relative: str, manifest_path: Path) -> str:
    """A manifest's file path, refused unless relative, normalised and inside the version folder."""
    pure = PurePosixPath(relative)
    if (not relative or pure.is_absolute() or "\\" in relative or str(pure) != relative
            or any(part in ("..", ".") for part in pure.parts) or relative == MANIFEST):
        raise ArtifactError(f"{manifest_path}: file path {relative!r} is not a plain relative path inside the "
                            "artifact; refusing it")
    return relative


def _regular_file(path: Path, relative: str) -> Path:
    """``path/relative``, refused if a symlink lies on the way or it is not a regular file."""
    file = path
    for part in PurePosixPath(relative).parts:
        file = file / part
        if file.is_symlink():
            raise ArtifactError(f"{file}: a symlink inside an artifact; refusing it")
    if not file.exists():
        raise ArtifactError(f"{file}: listed in the manifest but missing")
    if not stat.S_ISREG(file.lstat().st_mode):
        raise ArtifactError(f"{file}: not a regular file; refusing it")
    return file


def open_artifact(volume: Path, artifact: str, expect_kind: str) -> Artifact:
    """The current version of a published artifact, verified. Raises if absent or corrupt."""
    link = Path(volume) / artifact / CURRENT
    if not link.exists():
        raise ArtifactError(f"{link}: no {expect_kind} artifact is published")
    # Resolve once, so a publish that swaps `current` while we read cannot mix two versions.
    path = link.resolve()
    return Artifact(path, verify(path, expect_kind))


def wait_for_artifact(volume: Path, artifact: str, expect_kind: str, *, producer: str,
                      timeout_s: float, poll_s: float = 2.0, report_every_s: float = 30.0,
                      accept: Callable[[Manifest], bool] | None = None, wanted: str = "") -> Artifact:
    """Block until ``producer`` has published ``artifact`` on ``volume``, then verify and return it.

    With ``accept``, a published version it rejects (one made from other inputs, say the previous
    run's) is waited past until the producer publishes one it accepts; ``wanted`` says which in words.
    Polling reads the manifest only; the files are verified once, when an accepted version is found.
    One deadline holds for the whole wait, also when ``current`` moves between the look and the verification
    (under steady republishing a wait that restarted its clock each time would never time out)."""
    link = Path(volume) / artifact / CURRENT
    start = time.monotonic()
    while True:
        _await_manifest(link, expect_kind, producer=producer, start=start, timeout_s=timeout_s, poll_s=poll_s,
                        report_every_s=report_every_s, accept=accept, wanted=wanted)
        log.info("found %s at %s; verifying checksums", expect_kind, link)
        found = Artifact(link.resolve(), verify(link.resolve(), expect_kind))
        if accept is None or accept(found.manifest):
            return found
        # `current` moved between the look and the resolve: look again, against the same deadline
        if time.monotonic() - start >= timeout_s:
            raise ArtifactTimeout(f"timed out after {time.monotonic() - start:.0f}s waiting for the {expect_kind} "
                                  f"artifact{' ' + wanted if wanted else ''} at {link / MANIFEST}: it kept changing "
                                  f"between each look and its verification; it is published by {producer}")
        time.sleep(poll_s)


def _await_manifest(link: Path, expect_kind: str, *, producer: str, start: float, timeout_s: float, poll_s: float,
                    report_every_s: float, accept: Callable[[Manifest], bool] | None, wanted: str) -> None:
    """Poll ``link`` until it names a manifest ``accept`` takes (or one that cannot be read: the verification
    reports it); ArtifactTimeout once ``timeout_s`` has passed since ``start``."""
    next_report = time.monotonic()
    while True:
        published = _published_manifest(link)
        if published is not None and (accept is None or published is _UNREADABLE or accept(published)):
            return
        waited = time.monotonic() - start
        stale = "" if published is None else f" (the published one, {published.digest[:12]}, is not {wanted})"
        if waited >= timeout_s:
            raise ArtifactTimeout(
                f"timed out after {waited:.0f}s waiting for the {expect_kind} artifact{' ' + wanted if wanted else ''}"
                f" at {link / MANIFEST}{stale}; it is published by {producer}: check that stage's logs")
        if time.monotonic() >= next_report:
            limit = "no time limit" if timeout_s == float("inf") else f"times out at {timeout_s:.0f}s"
            log.info("waiting for %s%s from %s at %s%s (%.0fs so far, %s)", expect_kind,
                     " " + wanted if wanted else "", producer, link, stale, waited, limit)
            next_report += report_every_s
        time.sleep(poll_s)


_UNREADABLE = Manifest(kind="", name="", source={}, files=[], digest="", created_at="", producer={})


def _published_manifest(link: Path) -> Manifest | None:
    """The manifest ``link`` points at; None while nothing is published; ``_UNREADABLE`` if it cannot be read."""
    if not (link / MANIFEST).is_file():
        return None
    try:
        return Manifest.from_file(link / MANIFEST)
    except ArtifactError:
        return _UNREADABLE


@dataclass(frozen=True)
class Output:
    """One stage output of the pipeline: its folder on the volume, its manifest kind, who publishes it.

    The contract owns these names: consumers (training, evaluation, serving) learn them here, never
    by importing another stage's module.
    """

    artifact: str
    kind: str
    producer: str


DATASET = Output("dataset", "dataset", "dataset-relocation-server")
BASE_MODEL = Output("model", "base-model", "model-relocation-server")
BASE_TOKENIZER = Output("tokenizer", "base-tokenizer", "tokenizer-relocation-server")
REFERENCE_MODEL = Output("model", "reference-model", "model-reference-relocation-server")
ADAPTER = Output("adapter", "lora-adapter", "model-peft-server")
EVALUATION = Output("evaluation", "evaluation-report", "model-evaluation-server")
PROMOTION = Output("promotion", "promotion", "model-evaluation-server")
EXPORT = Output("export", "model-export", "model-export-server")
BASE_MODEL_OPENVINO = Output("model", "base-model-openvino", "openvino-model-conversion-server")
# The promoted model as the CPU server runs it (adapter merged, int8 weights), built and judged by the evaluation.
SERVED_MODEL = Output("served-model", "served-model-openvino", "model-evaluation-server")
# Inside a served model judged with retrieval (serving.retrieval): the BM25 index it was judged with.
RETRIEVAL_FOLDER = "retrieval"


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
