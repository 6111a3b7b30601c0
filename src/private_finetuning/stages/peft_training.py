"""model-peft-server: LoRA fine-tuning of the base model on the private data.

The stage around the recipe (training/recipe.py: setup → fit → finish): wait for the dataset, base
model and base tokenizer; skip if an adapter of these inputs and settings is already published; serve
/health and /progress; run the recipe; refuse to publish if an input was replaced meanwhile; publish
the adapter atomically. Nothing is published unless training finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import ADAPTER, BASE_MODEL, BASE_TOKENIZER, DATASET, ArtifactWriter
from private_finetuning.errors import Interrupted, Termination
from private_finetuning.stages.common import (
    StageContext,
    adapter_fingerprint,
    already_published,
    published_digests,
    run_stage,
    training_input_volumes,
    wait_for_output,
)
from private_finetuning.telemetry.status_server import StageStatus, StatusServer
from private_finetuning.training.distributed import Distributed, init_distributed, launch_node_workers, node_workers
from private_finetuning.training.recipe import TrainingInputs, TrainingResult, TrainingRun

STAGE, ARTIFACT, KIND = ADAPTER.producer, ADAPTER.artifact, ADAPTER.kind


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", required=True, type=Path, help="the datasets volume")
    parser.add_argument("--base-model", required=True, type=Path, help="the base-model volume")
    parser.add_argument("--base-tokenizer", required=True, type=Path, help="the base-tokenizer volume")
    parser.add_argument("--output", required=True, type=Path, help="the fine-tuned-model volume")
    parser.add_argument("--status-port", type=int, default=8080, help="port of /health and /progress (0: any)")
    parser.add_argument("--status-host", default="127.0.0.1",
                        help="address of /health and /progress (the pod's manifest gives 0.0.0.0; loopback otherwise)")


def _run(ctx: StageContext) -> None:
    status = StageStatus(STAGE)
    dist = init_distributed(ctx.config.training.distributed.strategy)
    if dist.enabled:
        ctx.log.info("data-parallel training (%s): rank %d of %d", dist.strategy, dist.rank, dist.world_size)
    server = None
    try:
        if dist.is_main:
            server = StatusServer(status, host=ctx.args.status_host, port=ctx.args.status_port)
    except OSError as exc:  # a busy port must not stop training; the endpoint is a convenience
        ctx.log.warning("status endpoint not started on port %d: %s", ctx.args.status_port, exc)
    if server is not None:
        server.__enter__()
        ctx.log.info("status endpoint on %s:%d: GET /health, GET /progress", ctx.args.status_host, server.port)
    try:
        train(ctx, status, dist)
        status.update(phase="done")
    except BaseException as exc:
        status.update(phase="failed", detail=str(exc))
        raise
    finally:
        if server is not None:
            server.__exit__()
        dist.close()


def train(ctx: StageContext, status: StageStatus, dist: Distributed) -> None:
    """Wait for the inputs, run the recipe unless its adapter is already published, and publish."""
    a, cfg = ctx.args, ctx.config
    status.update(phase="waiting-for-inputs", detail="dataset, base-model, base-tokenizer")
    inputs = TrainingInputs(wait_for_output(cfg, a.datasets, DATASET), wait_for_output(cfg, a.base_model, BASE_MODEL),
                            wait_for_output(cfg, a.base_tokenizer, BASE_TOKENIZER))
    run_id = adapter_fingerprint(cfg, {key: a.manifest.digest for key, a in inputs.by_key().items()})
    # Every decision below is agreed by all ranks (Distributed.any): a rank that stopped alone would leave the
    # others waiting in their next collective until its timeout. A SIGTERM during setup is held until fit()
    # starts, where all ranks act on it together.
    Termination.deferred = dist.enabled
    if dist.any(already_published(ctx, a.output, ARTIFACT, KIND, run_id) is not None):
        return
    run = TrainingRun(cfg, inputs, out=a.output, run_id=run_id, log=ctx.log, status=status, dist=dist, stage=STAGE,
                      check_inputs=lambda checkpoints: refuse_stale_inputs(ctx, inputs, checkpoints, dist))
    run.setup()
    run.fit()
    result = run.finish()
    status.update(phase="publishing" if result else "done", detail=str(a.output / ARTIFACT))
    refuse_stale_inputs(ctx, inputs, run.checkpoint_dir, dist, look=result is not None)
    if result is not None:
        publish(ctx, result, run_id, inputs)
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)  # the adapter is published; its checkpoints are spent
    dist.barrier()


def refuse_stale_inputs(ctx: StageContext, inputs: TrainingInputs, checkpoint_dir: Path, dist: Distributed,
                        look: bool = True) -> None:
    """Stop (exit 5: a new pod, not a failure) if an input was published again since training read it.

    A re-run starts every stage at once: a relocation still publishing this run's dataset or base model
    when training first looked left training on the previous run's. Its adapter would never be the one the
    evaluation waits for; the next pod trains on what is current instead. Every rank calls this at the same
    point and all stop if any saw it (``look``: whether this rank looks; before publishing only rank 0 does)."""
    used = inputs.by_key()
    now = published_digests(training_input_volumes(ctx.args)) if look else None
    moved = [used[key].manifest.kind for key in used if now is not None and now[key] != used[key].manifest.digest]
    if dist.any(bool(moved)):
        moved = moved or ["input (seen by another rank)"]
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # progress on inputs no longer current: never resumed
        raise Interrupted(f"the {' and '.join(moved)} was published again while training read the previous one (a "
                          "re-run's relocation finished after training started); nothing was published, the next "
                          "pod trains on the current inputs")


def publish(ctx: StageContext, result: TrainingResult, run_id: str, inputs: TrainingInputs) -> None:
    out = ctx.args.output
    provenance = {name: {"kind": a.manifest.kind, "name": a.manifest.name, "digest": a.manifest.digest}
                  for name, a in inputs.by_key().items()}
    with ArtifactWriter(out, ARTIFACT, kind=KIND, stage=STAGE,
                        keep_versions=ctx.config.artifacts.keep_versions) as writer:
        assert writer.path is not None
        result.model.save_pretrained(writer.path, safe_serialization=True, state_dict=result.weights)
        (writer.path / "README.md").unlink(missing_ok=True)  # peft's hub model card: nothing to say here
        (writer.path / "training_config.json").write_text(json.dumps({
            "pipeline": ctx.config.name, "training": ctx.config.training.model_dump(),
            "system_prompt": ctx.config.prompting.system_prompt, "inputs": provenance,
        }, indent=2) + "\n")
        writer.commit(name=f"{ctx.config.name}-lora", source={**provenance, "fingerprint": run_id},
                      metadata={**result.metadata, "tensorboard_run": str(result.tensorboard_dir.relative_to(out)),
                                "end_of_turn_ids": inputs.tokenizer.manifest.metadata.get("end_of_turn_ids")})


def main(argv: Sequence[str] | None = None) -> int:
    if node_workers(os.environ):  # a Trainer node of several processes: this one only starts them
        args = sys.argv[1:] if argv is None else list(argv)
        return launch_node_workers("private_finetuning.stages.peft_training", args, os.environ)
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
