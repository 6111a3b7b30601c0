"""model-peft-server: LoRA fine-tuning of the base model on the private data.

The recipe, top to bottom: wait for the dataset, base model and base tokenizer; load them and
check they belong together; encode the chat records with the loss on the assistant's words only;
wrap the model with LoRA; resume from the last checkpoint if a killed pod left one; train with
length-grouped batches, logging to TensorBoard and the status endpoint; evaluate; publish the
adapter atomically. Nothing is published unless training finished.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from private_finetuning import checkpoints, forgetting, shared_prefix
from private_finetuning.artifacts import (
    ADAPTER,
    BASE_MODEL,
    BASE_TOKENIZER,
    DATASET,
    Artifact,
    ArtifactWriter,
)
from private_finetuning.batching import (
    collate,
    collate_weights,
    epoch_batches,
    fact_groups,
    padding_fraction,
    summed_loss,
)
from private_finetuning.chat import Encoded, encode_for_training, encode_prompt, with_system
from private_finetuning.config import TrainingConfig
from private_finetuning.data import jsonl
from private_finetuning.distributed import Distributed, init_distributed
from private_finetuning.errors import InputDataError, Interrupted, PipelineError, SourceError
from private_finetuning.evaluation_metrics import answer_nll
from private_finetuning.hf_io import load_published_model
from private_finetuning.lora import apply_lora, trainable_parameters
from private_finetuning.progress import Progress as ProgressLog
from private_finetuning.runtime import Runtime, select_runtime
from private_finetuning.schedule import CHECK_EVERY, SPEED_WINDOW, fit_budget, plan
from private_finetuning.stages.common import (
    StageContext,
    Termination,
    adapter_fingerprint,
    already_published,
    published_digests,
    run_stage,
    wait_for_output,
)
from private_finetuning.status_server import StageStatus, StatusServer
from private_finetuning.tensorboard_logging import add_token_projector, open_writer, run_dir

STAGE, ARTIFACT, KIND = ADAPTER.producer, ADAPTER.artifact, ADAPTER.kind


class NullWriter:
    """What ranks other than 0 log to: nothing."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


class TrainingDiverged(PipelineError):
    """The loss or gradient became NaN/inf: the configuration (usually the learning rate) is at fault."""

    exit_code = 2


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
    dist = init_distributed()
    if dist.enabled:
        ctx.log.info("data-parallel training: rank %d of %d", dist.rank, dist.world_size)
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


def wait_for_inputs(ctx: StageContext) -> tuple[Artifact, Artifact, Artifact]:
    a, cfg = ctx.args, ctx.config
    return (wait_for_output(cfg, a.datasets, DATASET), wait_for_output(cfg, a.base_model, BASE_MODEL),
            wait_for_output(cfg, a.base_tokenizer, BASE_TOKENIZER))


def check_tokenizer_matches(tokenizer: Any, model: Any, tokenizer_artifact: Artifact, base: Artifact) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise SourceError(
            f"the base tokenizer ({len(tokenizer)} tokens, {tokenizer_artifact.manifest.name!r} from "
            f"{tokenizer_artifact.path}) does not match the base model ({rows} embedding rows, "
            f"{base.manifest.name!r} from {base.path}); publish the tokenizer of the same model")


def encode_split(ctx: StageContext, tokenizer: Any, dataset: Artifact, split: str) -> tuple[list[Encoded], list[int]]:
    """The split's examples, and for each the fact it states (a record and its variants share one)."""
    cfg = ctx.config.training
    path = dataset.file(f"{split}.jsonl")
    examples, facts, dropped = [], [], 0
    for line_no, line in jsonl.read_lines(path):
        record = json.loads(line)
        fact_id = record.get("meta", {}).get("fact_id", -line_no)
        encoded = encode_for_training(tokenizer, with_system(record["messages"], ctx.config.prompting.system_prompt),
                                      record.get("meta", {}).get("answer"), cfg.fact_loss_weight)
        if len(encoded.input_ids) > cfg.max_seq_len:
            if cfg.overlong == "drop":
                dropped += 1
                continue
            raise InputDataError(str(path), f"is {len(encoded.input_ids)} tokens long with the chat template, over "
                                 "training.max_seq_len; raise it or set training.overlong: drop", line_no)
        examples.append(encoded)
        facts.append(fact_id)
    if dropped:
        ctx.log.warning("%s: left out %d examples longer than %d tokens", split, dropped, cfg.max_seq_len)
    if not examples:
        raise InputDataError(str(path), f"no usable {split} examples")
    return examples, facts


def lr_lambda(cfg: TrainingConfig, total_steps: Callable[[], int]) -> Any:
    """Warm-up, then the schedule over ``total_steps()``, read at each step: the time budget may cut it."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, total_steps() - cfg.warmup_steps)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0
    return factor


def batch_loss(model: Any, runtime: Runtime, examples: list[Encoded], pad_id: int, targets: float,
               share_prefix: bool, row_losses: list[float] | None = None) -> tuple[Any, int]:
    """Summed token loss of one micro-batch divided by the targets of the whole optimizer step.

    With ``share_prefix``, a prefix every example shares (the system prompt) is computed once for the
    batch (shared_prefix.py): the same loss and gradients, about a third less work on chat data."""
    import torch

    count = torch.tensor(targets, device=runtime.device)
    prefix = shared_prefix.split(examples) if share_prefix else None
    with runtime.autocast():
        if prefix is not None:
            return shared_prefix.loss(model, examples, prefix, pad_id, runtime.device, count, row_losses)
        batch = {k: v.to(runtime.device) for k, v in collate(examples, pad_id).items()}
        return (summed_loss(model, batch, collate_weights(examples), count, row_losses),
                int(batch["attention_mask"].sum()))


def evaluate_loss(model: Any, runtime: Runtime, examples: list[Encoded], pad_id: int, batch_size: int) -> float:
    """Mean loss over the assistant's tokens of ``examples``."""
    model.eval()
    with runtime.autocast():
        total, count = answer_nll(model, examples, pad_id, runtime.device, batch_size)
    model.train()
    return total / count


def parameter_groups(model: Any, cfg: TrainingConfig) -> list[dict[str, Any]]:
    """The trainable parameters, LoRA's B matrices at ``loraplus_lr_ratio`` times the learning rate (LoRA+)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    b = [p for n, p in named if "lora_B" in n]
    rest = [p for n, p in named if "lora_B" not in n]
    if cfg.loraplus_lr_ratio == 1 or not b:
        return [{"params": b + rest}]
    return [{"params": rest}, {"params": b, "lr": cfg.learning_rate * cfg.loraplus_lr_ratio}]


def epoch_priorities(cfg: TrainingConfig, state: checkpoints.Progress) -> list[float] | None:
    """Each fact's chance in the next epoch under ``sampling: loss`` (its last loss; an unseen fact gets
    the highest), or None to show every fact once."""
    seen = [loss for loss in state.fact_losses if loss is not None]
    if cfg.sampling != "loss" or not seen:
        return None
    top = max(seen)
    return [top if loss is None else loss for loss in state.fact_losses]


def learnt(cfg: TrainingConfig, state: checkpoints.Progress) -> bool:
    """True when, after at least two epochs, nine facts in ten have a loss under ``early_stop_loss``."""
    losses = state.fact_losses
    if cfg.early_stop_loss is None or state.epoch < 2 or not losses or any(loss is None for loss in losses):
        return False
    under = sum(loss < cfg.early_stop_loss for loss in losses)
    return under >= 0.9 * len(losses)


def optimizer_steps(batches: list[list[int]], accum: int, dist: Distributed) -> list[list[list[int]]]:
    """Group an epoch's batches into optimizer steps of ``accum`` micro-batches per rank.

    A last step too short to give every rank a micro-batch is left out (a rank with nothing to do
    would hang the gradient all-reduce); with one process nothing is left out.
    """
    span = accum * dist.world_size
    return [batches[i:i + span] for i in range(0, len(batches), span) if len(batches[i:i + span]) >= dist.world_size]


def train(ctx: StageContext, status: StageStatus, dist: Distributed) -> None:
    import torch
    from transformers import AutoTokenizer

    cfg, out, log = ctx.config.training, ctx.args.output, ctx.log
    status.update(phase="waiting-for-inputs", detail="dataset, base-model, base-tokenizer")
    dataset, base, tok_artifact = wait_for_inputs(ctx)
    run_id = adapter_fingerprint(ctx.config, {"dataset": dataset.manifest.digest, "base_model": base.manifest.digest,
                                              "base_tokenizer": tok_artifact.manifest.digest})
    if already_published(ctx, out, ARTIFACT, KIND, run_id):
        return

    status.update(phase="loading", detail="model and data")
    runtime = select_runtime(cfg.precision)
    log.info("device: %s", runtime.description)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(tok_artifact.path, local_files_only=True)
    model = load_published_model(base.path)
    check_tokenizer_matches(tokenizer, model, tok_artifact, base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set, fact_ids = encode_split(ctx, tokenizer, dataset, "train")
    eval_set, _ = encode_split(ctx, tokenizer, dataset, "eval")
    lengths = [len(e.input_ids) for e in train_set]
    groups = fact_groups(fact_ids)
    log.info("%d facts in the train split, %d with variants (%d examples in all): an epoch shows each fact once",
             len(groups), sum(len(g) > 1 for g in groups), len(train_set))
    log.info("encoded %d train / %d eval examples; %d train tokens per epoch (mean %.0f, max %d), %.0f%% of them "
             "trained on (the assistant's)", len(train_set), len(eval_set), sum(lengths), sum(lengths) / len(lengths),
             max(lengths), 100 * sum(e.target_tokens for e in train_set) / sum(lengths))

    model = apply_lora(model, cfg.lora).to(runtime.device)
    trainable, total_params = trainable_parameters(model)
    layers = model.peft_config["default"].layers_to_transform
    log.info("LoRA r=%d alpha=%d on %s of %s: %.2fM trainable of %.1fM parameters; fact tokens weigh %g in the "
             "loss (weighted in %d of %d train examples)", cfg.lora.r, cfg.lora.alpha,
             ",".join(cfg.lora.target_modules), f"layers {layers[0]}-{layers[-1]}" if layers else "every layer",
             trainable / 1e6, total_params / 1e6, cfg.fact_loss_weight,
             sum(e.weights is not None for e in train_set), len(train_set))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=runtime.device == "cuda")
    accum = cfg.gradient_accumulation_steps

    def epoch_order(epoch: int, priorities: list[float] | None) -> list[list[int]]:
        return epoch_batches(lengths, groups, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length, priorities)

    steps_per_epoch = len(optimizer_steps(epoch_order(0, None), accum, dist))
    schedule = plan(cfg, len(groups), steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, lambda: schedule.total_steps))
    forward = dist.wrap(model, runtime.device)
    forward = torch.compile(forward) if cfg.compile else forward
    # Two forward calls per step (prefix, then suffixes) suit neither DDP's reducer nor a compiled graph.
    share_prefix = cfg.shared_prefix and dist.world_size == 1 and not cfg.compile

    ckpt_dir = out / "checkpoints" / run_id[:12]
    state = checkpoints.load(ckpt_dir, run_id=run_id, model=model, optimizer=optimizer, scheduler=scheduler)
    if state is not None and state.total_steps:
        schedule.total_steps = state.total_steps
    if state is not None:
        log.info("resuming from the checkpoint at step %d of %d (epoch %d)", state.step, schedule.total_steps,
                 state.epoch + 1)
    state = state or checkpoints.Progress()
    if len(state.fact_losses) != len(groups):
        state.fact_losses = [None] * len(groups)
    fact_of = {i: f for f, group in enumerate(groups) for i in group}
    anchors = forgetting.anchor_examples(tokenizer, ctx.config.prompting.system_prompt) if cfg.kl_weight else []
    if anchors and dist.world_size > 1:
        log.warning("training.kl_weight is not applied with %d processes: the base-model pass would desynchronise "
                    "the ranks' gradients; it applies on one process", dist.world_size)
        anchors = []
    log.info("schedule: %s", schedule.explanation)
    total_steps = schedule.total_steps
    tb_dir = run_dir(out, run_id)
    # Events after the checkpoint's step were logged by a pod that died before saving again: drop them.
    writer = open_writer(tb_dir, purge_step=state.step + 1 if state.step else None) if dist.is_main else NullWriter()
    writer.add_text("config/training", f"```\n{json.dumps(asdict(cfg), indent=2)}\n```", 0)

    refuse_stale_inputs(ctx, dataset, base, tok_artifact, ckpt_dir)
    status.update(phase="training", detail=runtime.description, total_steps=total_steps, step=state.step)
    meter = ProgressLog(log, "step", total_steps - state.step, unit="steps", every_s=cfg.log_every_s)
    model.train()
    start, tokens_this_run = time.monotonic(), 0
    prior_seconds = state.train_seconds
    step_times = deque([start], maxlen=SPEED_WINDOW + 1)  # when each of the last steps ended
    steps_at_start = state.step
    Termination.deferred = True  # a SIGTERM now saves a checkpoint at the end of the step (below)
    while state.step < total_steps:
        if state.step_in_epoch == 0:
            state.epoch_priorities = epoch_priorities(cfg, state) if dist.world_size == 1 else None
        this_epoch = epoch_order(state.epoch, state.epoch_priorities)
        if state.step_in_epoch == 0 and dist.is_main:
            log.info("epoch %d: %d batches, %.1f%% padding%s", state.epoch + 1, len(this_epoch),
                     100 * padding_fraction(this_epoch, lengths),
                     ", facts drawn by their loss" if state.epoch_priorities else "")
        for micro_batches in optimizer_steps(this_epoch, accum, dist)[state.step_in_epoch:]:
            step_start = time.monotonic()
            # The loss is normalised by the target tokens of the whole step, on every rank together.
            targets = sum(train_set[i].target_weight for b in micro_batches for i in b)
            step_loss, step_tokens = 0.0, 0
            for indices in dist.share(micro_batches):
                rows: list[float] = []
                loss, tokens = batch_loss(forward, runtime, [train_set[i] for i in indices], pad_id, targets,
                                          share_prefix, rows)
                for i, row_loss in zip(indices, rows, strict=True):
                    state.fact_losses[fact_of[i]] = row_loss
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"the training loss became {loss.item()} at step {state.step + 1}; "
                                           f"lower training.learning_rate (now {cfg.learning_rate})")
                (loss * dist.world_size).backward()  # DDP averages gradients over ranks; this makes it a sum
                step_loss += loss.detach().item()
                step_tokens += tokens
            if anchors:
                with runtime.autocast():
                    anchor_kl = forgetting.kl_to_base(model, forgetting.anchor_batch(anchors, state.step), pad_id,
                                                      runtime.device)
                (cfg.kl_weight * anchor_kl).backward()
                writer.add_scalar("train/anchor_kl", anchor_kl.item(), state.step + 1)
            step_loss, step_tokens = dist.sum(step_loss), int(dist.sum(step_tokens))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(f"the gradient norm became {grad_norm} at step {state.step + 1}; "
                                       f"lower training.learning_rate (now {cfg.learning_rate})")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            now = time.monotonic()
            step_times.append(now)
            if (state.step - steps_at_start) % CHECK_EVERY == 0:
                said = fit_budget(schedule, cfg, state.step, prior_seconds + now - start,
                                  (now - step_times[0]) / (len(step_times) - 1))
                if said:
                    log.info("schedule: %s", said)
                    total_steps = schedule.total_steps
                    meter.total = total_steps - steps_at_start
            state.total_steps = schedule.total_steps
            state.train_seconds = prior_seconds + time.monotonic() - start
            state.tokens_seen += step_tokens
            state.last_loss = step_loss
            tokens_this_run += step_tokens
            tokens_per_s = step_tokens / max(1e-9, time.monotonic() - step_start)
            for tag, value in (("train/loss", step_loss), ("train/learning_rate", lr),
                               ("train/grad_norm", grad_norm), ("train/tokens_per_s", tokens_per_s)):
                writer.add_scalar(tag, value, state.step)
            if dist.is_main:
                meter.update(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
            status.update(step=state.step, epoch=state.epoch + 1, loss=round(step_loss, 5), learning_rate=lr,
                          tokens_per_s=round(tokens_this_run / (time.monotonic() - start), 1),
                          eta_s=round((total_steps - state.step) * (time.monotonic() - start) / max(1, meter.done), 1))
            if cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0 and dist.is_main:
                eval_loss = evaluate_loss(model, runtime, eval_set, pad_id, cfg.batch_size)
                writer.add_scalar("eval/loss", eval_loss, state.step)
                log.info("step %d: eval loss %.4f", state.step, eval_loss)
            stopping = dist.sum(float(Termination.requested)) > 0  # every rank stops at the same step
            due = state.step < total_steps and state.step % cfg.checkpoint_every_steps == 0
            if (due or stopping) and dist.is_main:
                writer.flush()  # the curve up to the checkpoint survives the pod; a resume purges what follows
                checkpoints.save(ckpt_dir, stage=STAGE, run_id=run_id, model=model, optimizer=optimizer,
                                 scheduler=scheduler, progress=state)
            if stopping:
                raise Interrupted(f"SIGTERM at step {state.step} of {total_steps}: checkpoint saved; the next pod "
                                  "resumes from it")
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.step_in_epoch = 0
            if cfg.early_stop_loss and dist.sum(float(learnt(cfg, state))) == dist.world_size:
                log.info("schedule: every fact learnt after %d epochs (nine in ten under training.early_stop_loss "
                         "= %g nats): stopping at step %d of %d", state.epoch, cfg.early_stop_loss, state.step,
                         total_steps)
                break
    if state.step > steps_at_start and dist.is_main:
        # What follows (eval loss, samples, publishing) is not resumable: a SIGTERM from here on stops at once,
        # and the next pod starts from this last step instead of repeating the steps since the last checkpoint.
        checkpoints.save(ckpt_dir, stage=STAGE, run_id=run_id, model=model, optimizer=optimizer,
                         scheduler=scheduler, progress=state)
    Termination.deferred = False
    if Termination.requested:
        raise Interrupted(f"SIGTERM after the last step ({state.step}): checkpoint saved; the next pod resumes "
                          "from it")

    elapsed = time.monotonic() - start
    if not dist.is_main:  # rank 0 evaluates and publishes; the others are done
        dist.barrier()
        return
    status.update(phase="evaluating", detail="eval loss and sample answers")
    eval_loss = evaluate_loss(model, runtime, eval_set, pad_id, cfg.batch_size)
    writer.add_scalar("eval/loss", eval_loss, state.step)
    log.info("training done: %d steps in %.0fs, final train loss %.4f, eval loss %.4f, %.0f tokens/s",
             state.step, elapsed, state.last_loss or float("nan"), eval_loss, tokens_this_run / max(elapsed, 1e-9))
    eos_ids = tok_artifact.manifest.metadata.get("end_of_turn_ids") or [tokenizer.eos_token_id]
    write_samples(ctx, writer, model, tokenizer, dataset, runtime, eos_ids, state.step)
    projected = add_token_projector(writer, model.get_base_model(), tokenizer, [e.input_ids for e in train_set],
                                    cfg.projector_tokens)
    writer.close()

    status.update(phase="publishing", detail=str(out / ARTIFACT))
    metrics = {"steps": state.step, "epochs": state.epoch + (1 if state.step_in_epoch else 0), "facts": len(groups),
               "planned_steps": total_steps, "loraplus_lr_ratio": cfg.loraplus_lr_ratio, "sampling": cfg.sampling,
               "final_train_loss": state.last_loss, "eval_loss": eval_loss, "train_seconds": round(elapsed, 1),
               "tokens_per_s": round(tokens_this_run / max(elapsed, 1e-9), 1), "tokens_seen": state.tokens_seen,
               "trainable_parameters": trainable, "device": runtime.description, "projector_tokens": projected,
               "world_size": dist.world_size}
    refuse_stale_inputs(ctx, dataset, base, tok_artifact, ckpt_dir)
    publish(ctx, model, run_id, dataset, base, tok_artifact, metrics, tb_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the adapter is published; its checkpoints are spent
    dist.barrier()


def refuse_stale_inputs(ctx: StageContext, dataset: Artifact, base: Artifact, tokenizer: Artifact,
                        ckpt_dir: Path) -> None:
    """Stop (exit 5: a new pod, not a failure) if an input was published again since training read it.

    A re-run starts every stage at once: a relocation still publishing this run's dataset or base model
    when training first looked left training on the previous run's. Its adapter would never be the one the
    evaluation waits for; the next pod trains on what is current instead."""
    a = ctx.args
    used = {"dataset": dataset, "base_model": base, "base_tokenizer": tokenizer}
    now = published_digests({"dataset": a.datasets, "base_model": a.base_model, "base_tokenizer": a.base_tokenizer})
    moved = [used[key].manifest.kind for key in used if now is not None and now[key] != used[key].manifest.digest]
    if moved:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # progress on inputs that are no longer current: never resumed
        raise Interrupted(f"the {' and '.join(moved)} was published again while training read the previous one (a "
                          "re-run's relocation finished after training started); nothing was published, the next "
                          "pod trains on the current inputs")


def write_samples(ctx: StageContext, writer: Any, model: Any, tokenizer: Any, dataset: Artifact, runtime: Runtime,
                  eos_ids: list[int], step: int) -> None:
    from private_finetuning.generation import generate

    count = ctx.config.training.sample_generations
    if not count:
        return
    records = jsonl.read_records(dataset.file("eval.jsonl"))[:count]
    prompts = [encode_prompt(tokenizer, with_system(r["messages"][:-1], ctx.config.prompting.system_prompt))
               for r in records]
    model.eval()
    answers = generate(model, tokenizer, prompts, max_new_tokens=48, eos_token_ids=eos_ids, device=runtime.device)
    table = ["| question | expected | fine-tuned answer |", "|---|---|---|"]
    for record, (answer, _) in zip(records, answers, strict=True):
        question, expected = record["messages"][-2]["content"], record["messages"][-1]["content"]
        table.append(f"| {question} | {expected} | {answer} |")
    writer.add_text("samples/eval_answers", "\n".join(table), step)
    # Questions and answers are private text: TensorBoard on the volume only, never the pod log.
    ctx.log.info("%d sample answers written to TensorBoard (samples/eval_answers)", len(records))


def publish(ctx: StageContext, model: Any, run_id: str, dataset: Artifact, base: Artifact, tokenizer: Artifact,
            metrics: dict[str, Any], tb_dir: Path) -> None:
    out = ctx.args.output
    inputs = {name: {"kind": a.manifest.kind, "name": a.manifest.name, "digest": a.manifest.digest}
              for name, a in (("dataset", dataset), ("base_model", base), ("base_tokenizer", tokenizer))}
    with ArtifactWriter(out, ARTIFACT, kind=KIND, stage=STAGE,
                        keep_versions=ctx.config.artifacts.keep_versions) as writer:
        assert writer.path is not None
        model.save_pretrained(writer.path, safe_serialization=True)
        (writer.path / "README.md").unlink(missing_ok=True)  # peft's hub model card: nothing to say here
        (writer.path / "training_config.json").write_text(json.dumps({
            "pipeline": ctx.config.name, "training": asdict(ctx.config.training),
            "system_prompt": ctx.config.prompting.system_prompt, "inputs": inputs,
        }, indent=2) + "\n")
        writer.commit(name=f"{ctx.config.name}-lora", source={**inputs, "fingerprint": run_id},
                      metadata={**metrics, "tensorboard_run": str(tb_dir.relative_to(out)),
                                "end_of_turn_ids": tokenizer.manifest.metadata.get("end_of_turn_ids")})


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
