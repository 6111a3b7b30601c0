"""What every stage shares: argument parsing, logging, exit codes, and the relocate-and-publish flow."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from private_finetuning import __version__
from private_finetuning.artifacts.store import (
    ADAPTER,
    BASE_MODEL,
    BASE_TOKENIZER,
    DATASET,
    Artifact,
    ArtifactWriter,
    Output,
    current_version,
    open_artifact,
    verify,
    wait_for_artifact,
)
from private_finetuning.config import PipelineConfig, load_config
from private_finetuning.errors import EXIT_FAILURE, EXIT_OK, ArtifactError, PipelineError, Termination
from private_finetuning.telemetry.progress import format_duration, setup_logging


@dataclass(frozen=True)
class StageContext:
    name: str
    config: PipelineConfig
    args: argparse.Namespace
    log: logging.Logger


def run_stage(name: str, description: str, body: Callable[[StageContext], None],
              add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
              argv: Sequence[str] | None = None) -> int:
    """Parse ``--config`` and the stage's own arguments, run ``body`` and map failures to exit codes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--config", required=True, type=Path, help="the pipeline YAML (the mounted ConfigMap)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    log = setup_logging(name)
    Termination.deferred = Termination.requested = False
    signal.signal(signal.SIGTERM, Termination.handle)
    start = time.monotonic()
    log.info("starting %s (private-fine-tuning %s, python %s)", name, __version__, sys.version.split()[0])
    try:
        config = load_config(args.config)
        body(StageContext(name, config, args, log))
    except PipelineError as exc:
        log.error("%s", exc)
        log.error("%s failed after %s (exit %d)", name, format_duration(time.monotonic() - start), exc.exit_code)
        return exc.exit_code
    except Exception:
        log.exception("%s failed with an unexpected error", name)
        return EXIT_FAILURE
    log.info("%s done in %s", name, format_duration(time.monotonic() - start))
    return EXIT_OK


def fingerprint(*parts: Any) -> str:
    """A stable hash of what determines an artifact's content: source bytes, options, code version."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def already_published(ctx: StageContext, volume: Path, artifact: str, kind: str, fp: str) -> Artifact | None:
    """The published artifact if it was made from the same inputs and still verifies; else None."""
    manifest = current_version(volume, artifact)
    if manifest is None or manifest.source.get("fingerprint") != fp:
        return None
    path = (volume / artifact / "current").resolve()
    try:
        verify(path, kind)
    except ArtifactError as exc:
        ctx.log.warning("the published %s no longer verifies (%s); publishing it again", kind, exc)
        return None
    ctx.log.info("%s at %s was already published from the same inputs (fingerprint %s); nothing to do",
                 kind, path, fp[:12])
    return Artifact(path, manifest)


def relocate(ctx: StageContext, *, volume: Path, artifact: str, kind: str, fp: str,
             write: Callable[[Path], tuple[str, dict[str, Any], dict[str, Any]]]) -> Artifact:
    """Publish ``artifact`` unless the same inputs are already published.

    ``write(folder)`` fills the staging folder and returns (name, source description, metadata).
    Anything it raises leaves the volume as it was.
    """
    existing = already_published(ctx, volume, artifact, kind, fp)
    if existing is not None:
        return existing
    with ArtifactWriter(volume, artifact, kind=kind, stage=ctx.name,
                        keep_versions=ctx.config.artifacts.keep_versions) as writer:
        assert writer.path is not None
        name, source, metadata = write(writer.path)
        return writer.commit(name=name, source={**source, "fingerprint": fp}, metadata=metadata)


def wait_for_output(config: PipelineConfig, volume: Path, output: Output, timeout_s: float | None = None,
                    **match: Any) -> Artifact:
    """Wait for, verify and return a stage ``output`` (named by the artifact contract) on ``volume``.

    ``match`` (``accept``, ``wanted``) waits past published versions that are not the one wanted."""
    wait = config.artifacts
    return wait_for_artifact(volume, output.artifact, output.kind, producer=output.producer,
                             timeout_s=wait.wait_timeout_s if timeout_s is None else timeout_s,
                             poll_s=wait.poll_interval_s, **match)


# The inputs training records in the adapter's manifest, under these keys, and where each is published.
TRAINING_INPUTS = (("dataset", DATASET), ("base_model", BASE_MODEL), ("base_tokenizer", BASE_TOKENIZER))


def training_input_volumes(args: argparse.Namespace) -> dict[str, Path]:
    """The volumes of an adapter's three inputs, by the key its manifest's ``source`` names them with."""
    return {"dataset": args.datasets, "base_model": args.base_model, "base_tokenizer": args.base_tokenizer}


def adapter_fingerprint(config: PipelineConfig, digests: dict[str, str]) -> str:
    """What the adapter trained on inputs of these digests (keyed as ``TRAINING_INPUTS``) under this
    configuration records as its fingerprint.

    Training skips when the published adapter carries it; evaluation and export wait for the adapter
    that carries it, so a re-run with other data or settings never judges or exports the previous one."""
    return fingerprint(ADAPTER.kind, *(digests[key] for key, _ in TRAINING_INPUTS), config.training.model_dump(),
                       config.prompting.system_prompt)


def published_digests(volumes: dict[str, Path]) -> dict[str, str] | None:
    """The digest of each of ``TRAINING_INPUTS`` published now on its volume; None while one is missing or
    being replaced. Reads manifests only: cheap enough for every poll."""
    digests = {}
    for key, output in TRAINING_INPUTS:
        try:
            manifest = current_version(volumes[key], output.artifact)
        except ArtifactError:
            return None
        if manifest is None:
            return None
        digests[key] = manifest.digest
    return digests


def wait_for_adapter(config: PipelineConfig, fine_tuned: Path, volumes: dict[str, Path],
                     verified: dict[str, Artifact] | None = None) -> tuple[Artifact, dict[str, Artifact]]:
    """The adapter trained on the inputs published now, under the current settings, and those inputs (verified).

    ``volumes`` holds the volume of each of ``TRAINING_INPUTS``. The inputs are looked at again at every
    poll: a re-run starts every stage at once, so a relocation may publish this run's dataset or base model
    after this stage first looked, and the adapter to wait for is the one trained on what is current. An
    input in ``verified`` that is still the published one is not hashed again (a base model is 500 MiB)."""
    def expected() -> str | None:
        digests = published_digests(volumes)
        return None if digests is None else adapter_fingerprint(config, digests)

    while True:
        adapter = wait_for_output(config, fine_tuned, ADAPTER,
                                  accept=lambda m: m.source.get("fingerprint") == expected(),
                                  wanted="trained on the published inputs under the current settings")
        inputs = {key: _still_or_open(volumes[key], output, (verified or {}).get(key))
                  for key, output in TRAINING_INPUTS}
        if adapter_fingerprint(config, {k: a.manifest.digest for k, a in inputs.items()}) == \
                adapter.manifest.source.get("fingerprint"):
            return adapter, inputs
        # An input was published again between the two looks: wait for the adapter trained on it.


def _still_or_open(volume: Path, output: Output, verified: Artifact | None) -> Artifact:
    """``verified`` if it is still the published version of ``output``, else the published one, verified."""
    published = current_version(volume, output.artifact)
    if verified is not None and published is not None and published.digest == verified.manifest.digest:
        return verified
    return open_artifact(volume, output.artifact, output.kind)


def scratch_dir() -> tempfile.TemporaryDirectory:
    """Scratch space for large temporaries (the pod's emptyDir at $TMPDIR), removed on exit."""
    return tempfile.TemporaryDirectory(prefix="pft-")
