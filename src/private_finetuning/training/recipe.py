"""The LoRA training recipe, in the shape torchtune and litgpt use: ``setup()`` → ``fit()`` → ``finish()``.

- ``setup``: load the tokenizer and the base model and check they belong together; encode the chat
  records with the loss on the assistant's words only; wrap the model with LoRA; build the optimizer,
  the learning-rate schedule and the step plan; resume from the last checkpoint a killed pod left.
- ``fit``: length-grouped batches, an epoch showing every fact once; logs with ETA, TensorBoard and the
  status endpoint; the time budget re-planned as it goes; checkpoints, and a SIGTERM saves one.
- ``finish``: eval loss, sample answers and the embedding projector in TensorBoard; what the stage
  publishes with the adapter.

It knows nothing of stages or volumes' layout: the stage (stages/peft_training.py) waits for the inputs,
decides whether to train at all, and publishes what :meth:`TrainingRun.finish` returns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.data.chat import Encoded, encode_for_training, encode_prompt, with_system
from private_finetuning.data.expected import expectations
from private_finetuning.data.record import Record, read_split
from private_finetuning.errors import ConfigError, InputDataError, Interrupted, PipelineError, SourceError, Termination
from private_finetuning.models import host
from private_finetuning.models.device import select_device
from private_finetuning.models.loading import load_published_model
from private_finetuning.models.scoring import answer_nll, collate
from private_finetuning.telemetry.progress import Progress
from private_finetuning.telemetry.tensorboard import add_token_projector, open_writer, run_dir
from private_finetuning.training import checkpoints, forgetting, shared_prefix, stopping
from private_finetuning.training.augmentation import Generated, augment_with_model
from private_finetuning.training.batching import (
    collate_weights,
    epoch_batches,
    fact_groups,
    padding_fraction,
    summed_loss,
)
from private_finetuning.training.checkpoints import TrainingState
from private_finetuning.training.distributed import optimizer_state, trainable_state
from private_finetuning.training.lora import apply_lora, trainable_parameters
from private_finetuning.training.schedule import CHECK_EVERY, SPEED_WINDOW, fit_budget, plan

if TYPE_CHECKING:
    import logging

    import torch
    from peft import PeftModel
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from private_finetuning.artifacts.store import Artifact
    from private_finetuning.config import PipelineConfig, TrainingConfig
    from private_finetuning.models.device import Device
    from private_finetuning.telemetry.status_server import StageStatus
    from private_finetuning.training.distributed import Distributed


class NullWriter:
    """What ranks other than 0 log to: nothing."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


class TrainingDiverged(PipelineError):
    """The loss or gradient became NaN/inf: the configuration (usually the learning rate) is at fault."""

    exit_code = 2


@dataclass(frozen=True)
class TrainingInputs:
    """The three published artifacts a run trains on (their digests make the run's id)."""

    dataset: Artifact
    base: Artifact
    tokenizer: Artifact

    def by_key(self) -> dict[str, Artifact]:
        """The three keyed as the adapter manifest's ``source`` names them (and the fingerprint reads them)."""
        return {"dataset": self.dataset, "base_model": self.base, "base_tokenizer": self.tokenizer}


@dataclass(frozen=True)
class TrainingResult:
    """What :meth:`TrainingRun.finish` hands the stage to publish with the adapter."""

    model: PeftModel
    metadata: dict[str, Any]  # the adapter manifest's metadata: steps, losses, speed, device (docs/artifacts.md)
    tensorboard_dir: Path
    weights: dict[str, Any]  # the trained (LoRA) weights, whole: the model's own are FSDP shards under fsdp


def lr_lambda(cfg: TrainingConfig, total_steps: Callable[[], int]) -> Callable[[int], float]:
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


def batch_loss(model: PreTrainedModel, device: Device, examples: list[Encoded], pad_id: int, targets: float,
               share_prefix: bool, row_losses: list[float] | None = None) -> tuple[torch.Tensor, int]:
    """Summed token loss of one micro-batch divided by the targets of the whole optimizer step.

    With ``share_prefix``, a prefix every example shares (the system prompt) is computed once for the
    batch (shared_prefix.py): the same loss and gradients, about a third less work on chat data."""
    import torch

    count = torch.tensor(targets, device=device.name)
    prefix = shared_prefix.split(examples) if share_prefix else None
    with device.autocast():
        if prefix is not None:
            return shared_prefix.loss(model, examples, prefix, pad_id, device.name, count, row_losses)
        batch = {k: v.to(device.name) for k, v in collate(examples, pad_id).items()}
        return (summed_loss(model, batch, collate_weights(examples), count, row_losses),
                int(batch["attention_mask"].sum()))


def evaluate_loss(model: PreTrainedModel, device: Device, examples: list[Encoded], pad_id: int,
                  batch_size: int) -> float:
    """Mean loss over the assistant's tokens of ``examples``."""
    model.eval()
    with device.autocast():
        total, count = answer_nll(model, examples, pad_id, device.name, batch_size)
    model.train()
    return total / count


def parameter_groups(model: PeftModel, cfg: TrainingConfig) -> list[dict[str, Any]]:
    """The trainable parameters, LoRA's B matrices at ``loraplus_lr_ratio`` times the learning rate (LoRA+)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    b = [p for n, p in named if "lora_B" in n]
    rest = [p for n, p in named if "lora_B" not in n]
    if cfg.loraplus_lr_ratio == 1 or not b:
        return [{"params": b + rest}]
    return [{"params": rest}, {"params": b, "lr": cfg.learning_rate * cfg.loraplus_lr_ratio}]


def epoch_priorities(cfg: TrainingConfig, state: TrainingState) -> list[float] | None:
    """Each fact's chance in the next epoch under ``sampling: loss`` (its last loss; an unseen fact gets
    the highest), or None to show every fact once."""
    seen = [loss for loss in state.fact_losses if loss is not None]
    if cfg.sampling != "loss" or not seen:
        return None
    top = max(seen)
    return [top if loss is None else loss for loss in state.fact_losses]


def learnt(cfg: TrainingConfig, state: TrainingState) -> bool:
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


def check_tokenizer_matches(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, tokenizer_artifact: Artifact,
                            base: Artifact) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise SourceError(
            f"the base tokenizer ({len(tokenizer)} tokens, {tokenizer_artifact.manifest.name!r} from "
            f"{tokenizer_artifact.path}) does not match the base model ({rows} embedding rows, "
            f"{base.manifest.name!r} from {base.path}); publish the tokenizer of the same model")


class TrainingRun:
    """One training run of an adapter: ``setup()``, ``fit()``, then ``finish()``; every rank runs all three.

    ``check_inputs(checkpoint_dir)`` is the stage's check that its inputs are still the published ones
    (it raises :class:`Interrupted` otherwise), called before the first step and before finishing.
    """

    def __init__(self, config: PipelineConfig, inputs: TrainingInputs, *, out: Path, run_id: str,
                 log: logging.Logger, status: StageStatus, dist: Distributed, stage: str,
                 check_inputs: Callable[[Path], None]) -> None:
        self.config, self.cfg, self.inputs = config, config.training, inputs
        self.out, self.run_id, self.log, self.status, self.dist, self.stage = out, run_id, log, status, dist, stage
        self.check_inputs = check_inputs
        self.checkpoint_dir = out / "checkpoints" / run_id[:12]
        self.tensorboard_dir = run_dir(out, run_id)

    # --- setup ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch

        self.status.update(phase="loading", detail="model and data")
        self.device = select_device(self.cfg.precision)
        self.log.info("device: %s", self.device.description)
        torch.manual_seed(self.cfg.seed)
        self._load_model()
        self._encode_data()
        self._add_lora()
        self._build_optimizer()
        self._resume()
        self._open_writer()

    def _load_model(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.inputs.tokenizer.path, local_files_only=True)
        self.model = load_published_model(self.inputs.base.path)
        check_tokenizer_matches(self.tokenizer, self.model, self.inputs.tokenizer, self.inputs.base)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    def _encode_data(self) -> None:
        path = self.inputs.dataset.file("train.jsonl")
        records = read_split(path)
        self.generation = self._generate(records) if self.cfg.generation.generator != "none" else None
        if self.generation is not None:
            records = records + self.generation.records
        held: list[Record] = []
        if self.cfg.stops_on_held_back and self.dist.world_size == 1:
            records, held = stopping.hold_back(records)
        elif self.cfg.stops_on_held_back:
            self.log.warning("training.stopping: held_back is not applied with %d processes (the ranks would have to "
                             "agree on every scoring); it applies on one process", self.dist.world_size)
        self.train_set, fact_ids = self.encode_records(records, path, "train")
        self.eval_set, _ = self.encode_split("eval")
        self.probe_set = ([stopping.fact_tokens_only(e) for e in self.encode_records(held, path, "held-back")[0]]
                          if held else [])
        self.lengths = [len(e.input_ids) for e in self.train_set]
        self.groups = fact_groups(fact_ids)
        self.fact_of = {i: f for f, group in enumerate(self.groups) for i in group}
        train, lengths = self.train_set, self.lengths
        self.log.info("%d facts in the train split, %d with variants (%d examples in all): an epoch shows each "
                      "fact once", len(self.groups), sum(len(g) > 1 for g in self.groups), len(train))
        if self.cfg.stops_on_held_back and not held and self.dist.world_size == 1:
            self.log.warning("training.stopping: held_back found no question variant to hold back "
                             "(dataset.augmentation made none): training runs its cap")
        if held:
            self.log.info("stopping: held_back: %d questions held back from training (one per fact), scored every %d "
                          "steps; training stops after %d scorings without improvement", len(held),
                          self.cfg.stop_check_every, self.cfg.stop_patience)
        self.log.info("encoded %d train / %d eval examples; %d train tokens per epoch (mean %.0f, max %d), %.0f%% of "
                      "them trained on (the assistant's)", len(train), len(self.eval_set), sum(lengths),
                      sum(lengths) / len(lengths), max(lengths),
                      100 * sum(e.target_tokens for e in train) / sum(lengths))

    def _generate(self, records: list[Record]) -> Generated:
        """Self-augmentation with the base model, before its adapters are added (training/augmentation.py)."""
        self.status.update(phase="generating", detail="questions and statements of each fact")
        eos = self.inputs.tokenizer.manifest.metadata.get("end_of_turn_ids") or [self.tokenizer.eos_token_id]
        self.model.to(self.device.name)
        result = augment_with_model(self.model, self.tokenizer, records, self.cfg.generation, seed=self.cfg.seed,
                                    generator_digest=self.inputs.base.manifest.digest,
                                    cache_dir=self.out / "generation-cache", eos=eos, log=self.log,
                                    device=self.device.name)
        for kind, counts in result.counts.items():
            dropped = {k.removeprefix("dropped: "): n for k, n in counts.items() if k.startswith("dropped")}
            self.log.info("generation: %s: %d generated, %d kept, dropped: %s", kind, counts["generated"],
                          counts["kept"], ", ".join(f"{k} {n}" for k, n in sorted(dropped.items())) or "none")
        self.log.info("generation: %d facts with nothing usable keep their rule variants only; %d completions "
                      "generated now (the rest cached), %.0fs", result.facts_without, result.generated_now,
                      result.seconds)
        return result

    def encode_split(self, split: str) -> tuple[list[Encoded], list[int]]:
        """The split's examples, and for each the fact it states (a record and its variants share one)."""
        path = self.inputs.dataset.file(f"{split}.jsonl")
        return self.encode_records(read_split(path), path, split)

    def encode_records(self, records: list[Record], path: Path, split: str) -> tuple[list[Encoded], list[int]]:
        """``records`` encoded for training (read from ``path``), and for each the fact it states."""
        cfg = self.cfg
        system = self.config.prompting.system_prompt
        examples, facts, dropped = [], [], 0
        # The tokens of each record's fact weigh more: its `answer`, else the facts its reply states (numbers,
        # codes, names... data/expected.py), so data without an `answer` field gets the same emphasis.
        stated = [[s.text for s in e.spans] for e in expectations(records)]
        for line_no, (record, fact_texts) in enumerate(zip(records, stated, strict=True), start=1):
            encoded = encode_for_training(self.tokenizer, with_system(record.messages, system), fact_texts,
                                          cfg.fact_loss_weight)
            if len(encoded.input_ids) > cfg.max_seq_len:
                if cfg.overlong == "drop":
                    dropped += 1
                    continue
                raise InputDataError(str(path), f"is {len(encoded.input_ids)} tokens long with the chat template, "
                                     "over training.max_seq_len; raise it or set training.overlong: drop", line_no)
            examples.append(encoded)
            facts.append(record.meta.get("fact_id", -line_no))
        if dropped:
            self.log.warning("%s: left out %d examples longer than %d tokens", split, dropped, cfg.max_seq_len)
        if not examples and split != "held-back":
            raise InputDataError(str(path), f"no usable {split} examples")
        return examples, facts

    def _add_lora(self) -> None:
        cfg = self.cfg
        self.model = apply_lora(self.model, cfg.lora).to(self.device.name)
        self.trainable, total = trainable_parameters(self.model)
        layers = self.model.peft_config["default"].layers_to_transform
        where = f"layers {layers[0]}-{layers[-1]}" if layers else "every layer"
        self.log.info("LoRA r=%d alpha=%d on %s of %s: %.2fM trainable of %.1fM parameters; fact tokens weigh %g in "
                      "the loss (weighted in %d of %d train examples)", cfg.lora.r, cfg.lora.alpha,
                      ",".join(cfg.lora.target_modules), where,
                      self.trainable / 1e6, total / 1e6, cfg.fact_loss_weight,
                      sum(e.weights is not None for e in self.train_set), len(self.train_set))

    def _build_optimizer(self) -> None:
        import torch

        cfg, dist = self.cfg, self.dist
        forward = dist.wrap(self.model, self.device.name)  # first: FSDP replaces the parameters with shards
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg), lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay, fused=self.device.name == "cuda")
        first_epoch = self.epoch_order(0, None)
        steps_per_epoch = len(optimizer_steps(first_epoch, cfg.gradient_accumulation_steps, dist))
        if steps_per_epoch == 0:  # every rank computes this alike, so all stop here, before any step's collective
            raise ConfigError(
                f"training: {len(self.groups)} facts in batches of {cfg.batch_size} make {len(first_epoch)} "
                f"batch(es) per epoch, fewer than the {dist.world_size} ranks x "
                f"{cfg.gradient_accumulation_steps} accumulation steps one optimizer step needs, so no step could "
                "ever run; lower training.batch_size or gradient_accumulation_steps, or train on fewer ranks")
        self.schedule = plan(cfg, len(self.groups), steps_per_epoch, dist.world_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(cfg, lambda: self.schedule.total_steps))
        self.forward = torch.compile(forward) if cfg.compile else forward
        # Two forward calls per step (prefix, then suffixes) suit neither DDP's reducer nor a compiled graph.
        self.share_prefix = cfg.shared_prefix and dist.world_size == 1 and not cfg.compile

    def epoch_order(self, epoch: int, priorities: list[float] | None) -> list[list[int]]:
        cfg = self.cfg
        return epoch_batches(self.lengths, self.groups, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length,
                             priorities)

    def _resume(self) -> None:
        resumed = checkpoints.load(self.checkpoint_dir, run_id=self.run_id, model=self.model,
                                   optimizer=self.optimizer, scheduler=self.scheduler, world_size=self.dist.world_size)
        state, best = resumed if resumed is not None else (None, None)
        if state is not None and state.total_steps:
            self.schedule.total_steps = state.total_steps
        if state is not None:
            self.log.info("resuming from the checkpoint at step %d of %d (epoch %d)", state.step,
                          self.schedule.total_steps, state.epoch + 1)
        self.state = state or TrainingState()
        if len(self.state.fact_losses) != len(self.groups):
            self.state.fact_losses = [None] * len(self.groups)
        self.anchors = (forgetting.anchor_examples(self.tokenizer, self.config.prompting.system_prompt)
                        if self.cfg.kl else [])
        if self.anchors and self.dist.world_size > 1:
            self.log.warning("training.kl_weight is not applied with %d processes: the base-model pass would "
                             "desynchronise the ranks' gradients; it applies on one process", self.dist.world_size)
            self.anchors = []
        if self.anchors:
            self.anchor_base = forgetting.base_log_probs(self.model, self.anchors, self.pad_id, self.device)
            why = "" if self.cfg.kl_weight is not None else " null: on when training runs to the held-back rule"
            self.log.info("forgetting control: KL to the base model at weight %g on %d general conversations, %d a "
                          "step (training.kl_weight%s)", self.cfg.kl, len(self.anchors), forgetting.BATCH, why)
        self.stop_rule = stopping.StopRule(**(self.state.stop_rule or {"patience": self.cfg.stop_patience}))
        self.stop_rule.patience = self.cfg.stop_patience
        self.best = best if self.probe_set else None
        self.stopped_by = "plan"
        self.log.info("schedule: %s", self.schedule.explanation)
        self.total_steps = self.schedule.total_steps

    def _open_writer(self) -> None:
        step = self.state.step
        # Events after the checkpoint's step were logged by a pod that died before saving again: drop them.
        self.writer: SummaryWriter | NullWriter = (
            open_writer(self.tensorboard_dir, purge_step=step + 1 if step else None) if self.dist.is_main
            else NullWriter())
        self.writer.add_text("config/training", f"```\n{json.dumps(self.cfg.model_dump(), indent=2)}\n```", 0)

    # --- fit ------------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train to the planned step (the budget may move it), saving a checkpoint on the way out."""
        if self.dist.any(Termination.requested):  # a SIGTERM during setup, held until every rank got here
            raise Interrupted("SIGTERM before the first step: no progress to keep; the next pod starts again")
        self.check_inputs(self.checkpoint_dir)
        state = self.state
        self.status.update(phase="training", detail=self.device.description, total_steps=self.total_steps,
                           step=state.step)
        self.meter = Progress(self.log, "step", self.total_steps - state.step, unit="steps",
                              every_s=self.cfg.log_every_s)
        self.model.train()
        self.start, self.tokens_this_run = time.monotonic(), 0
        self.prior_seconds, self.steps_at_start = state.train_seconds, state.step
        self.step_times = deque([self.start], maxlen=SPEED_WINDOW + 1)  # when each of the last steps ended
        Termination.deferred = True  # a SIGTERM now saves a checkpoint at the end of the step (below)
        while state.step < self.total_steps and not self._run_epoch():
            pass
        if state.step > self.steps_at_start and self.dist.with_rank0:
            # What follows (eval loss, samples, publishing) is not resumable: a SIGTERM from here on stops at
            # once, and the next pod starts from this last step instead of repeating those since the last checkpoint.
            self._save_checkpoint()
        Termination.deferred = False
        if self.dist.sum(float(Termination.requested)) > 0:  # every rank stops, or none (FSDP gathers next)
            raise Interrupted(f"SIGTERM after the last step ({state.step}): checkpoint saved; the next pod resumes "
                              "from it")

    def _run_epoch(self) -> bool:
        """The rest of the current epoch; True when training is over (the plan is done or the data learnt)."""
        state, cfg, dist = self.state, self.cfg, self.dist
        if state.step_in_epoch == 0:
            state.epoch_priorities = epoch_priorities(cfg, state) if dist.world_size == 1 else None
        this_epoch = self.epoch_order(state.epoch, state.epoch_priorities)
        if state.step_in_epoch == 0 and dist.is_main:
            self.log.info("epoch %d: %d batches, %.1f%% padding%s", state.epoch + 1, len(this_epoch),
                          100 * padding_fraction(this_epoch, self.lengths),
                          ", facts drawn by their loss" if state.epoch_priorities else "")
        for micro_batches in optimizer_steps(this_epoch, cfg.gradient_accumulation_steps, dist)[state.step_in_epoch:]:
            step_start = time.monotonic()
            self._after_step(step_start, *self._step(micro_batches))
            if state.step >= self.total_steps or self.stopped_by == "held_back":
                return True
        state.epoch += 1
        state.step_in_epoch = 0
        if cfg.early_stop_loss and dist.sum(float(learnt(cfg, state))) == dist.world_size:
            self.log.info("schedule: every fact learnt after %d epochs (nine in ten under training.early_stop_loss "
                          "= %g nats): stopping at step %d of %d", state.epoch, cfg.early_stop_loss, state.step,
                          self.total_steps)
            self.stopped_by = "early_stop_loss"
            return True
        return False

    def _step(self, micro_batches: list[list[int]]) -> tuple[float, int, float, float]:
        """One optimizer step: its loss, tokens, gradient norm and the learning rate it ran at."""
        import torch

        state, cfg, dist = self.state, self.cfg, self.dist
        # The loss is normalised by the target tokens of the whole step, on every rank together.
        targets = sum(self.train_set[i].target_weight for b in micro_batches for i in b)
        step_loss, step_tokens = 0.0, 0
        for indices in dist.share(micro_batches):
            rows: list[float] = []
            loss, tokens = batch_loss(self.forward, self.device, [self.train_set[i] for i in indices], self.pad_id,
                                      targets, self.share_prefix, rows)
            for i, row_loss in zip(indices, rows, strict=True):
                state.fact_losses[self.fact_of[i]] = row_loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the training loss became {loss.item()} at step {state.step + 1}; "
                                       f"lower training.learning_rate (now {cfg.learning_rate})")
            (loss * dist.world_size).backward()  # DDP averages gradients over ranks; this makes it a sum
            step_loss += loss.detach().item()
            step_tokens += tokens
        if self.anchors:
            self._anchor_step()
        step_loss, step_tokens = dist.sum(step_loss), int(dist.sum(step_tokens))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm became {grad_norm} at step {state.step + 1}; "
                                   f"lower training.learning_rate (now {cfg.learning_rate})")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.step_in_epoch += 1
        return step_loss, step_tokens, grad_norm, lr

    def _anchor_step(self) -> None:
        """The KL(base || fine-tuned) term on general conversations (``training.kl_weight``), backpropagated."""
        with self.device.autocast():
            rows = forgetting.anchor_rows(len(self.anchors), self.state.step)
            anchor_kl = forgetting.kl_to_base(self.model, [self.anchors[i] for i in rows], self.pad_id,
                                              self.device.name, [self.anchor_base[i] for i in rows])
        (self.cfg.kl * anchor_kl).backward()
        self.writer.add_scalar("train/anchor_kl", anchor_kl.item(), self.state.step + 1)

    def _after_step(self, step_start: float, step_loss: float, step_tokens: int, grad_norm: float, lr: float) -> None:
        state = self.state
        now = time.monotonic()
        self.step_times.append(now)
        self._fit_budget(now)
        state.total_steps = self.schedule.total_steps
        state.train_seconds = self.prior_seconds + time.monotonic() - self.start
        state.tokens_seen += step_tokens
        state.last_loss = step_loss
        self.tokens_this_run += step_tokens
        tokens_per_s = step_tokens / max(1e-9, time.monotonic() - step_start)
        for tag, value in (("train/loss", step_loss), ("train/learning_rate", lr),
                           ("train/grad_norm", grad_norm), ("train/tokens_per_s", tokens_per_s)):
            self.writer.add_scalar(tag, value, state.step)
        if self.dist.is_main:
            self.meter.update(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
        elapsed = time.monotonic() - self.start
        self.status.update(step=state.step, epoch=state.epoch + 1, loss=round(step_loss, 5), learning_rate=lr,
                           tokens_per_s=round(self.tokens_this_run / elapsed, 1),
                           eta_s=round((self.total_steps - state.step) * elapsed / max(1, self.meter.done), 1))
        # Under FSDP every forward gathers weights from all ranks, so all of them evaluate (to the same loss).
        if self.cfg.eval_every_steps and state.step % self.cfg.eval_every_steps == 0 and self.dist.with_rank0:
            eval_loss = evaluate_loss(self.model, self.device, self.eval_set, self.pad_id, self.cfg.batch_size)
            self.writer.add_scalar("eval/loss", eval_loss, state.step)
            self.log.info("step %d: eval loss %.4f", state.step, eval_loss)
        if self.probe_set and state.step % self.cfg.stop_check_every == 0:
            self._score_held_back()
        self._checkpoint_or_stop()

    def _score_held_back(self) -> None:
        """Score the held-back questions' fact tokens; keep the weights when best; stop when past patience."""
        rule, step = self.stop_rule, self.state.step
        loss = evaluate_loss(self.model, self.device, self.probe_set, self.pad_id, self.cfg.batch_size)
        self.writer.add_scalar("stopping/held_back_loss", loss, step)
        if rule.observe(step, loss):
            self.best = {k: v.detach().clone().cpu() for k, v in trainable_state(self.model).items()}
        self.state.stop_rule = dataclasses.asdict(rule)
        self.log.info("step %d: held-back fact loss %.4f (best %.4f at step %d, %d of %d scorings since)", step, loss,
                      rule.best, rule.best_step, rule.since_best, rule.patience)
        if rule.done:
            self.log.info("schedule: the held-back questions have not improved for %d scorings: stopping at step %d "
                          "of %d, publishing the weights of step %d", rule.patience, step, self.total_steps,
                          rule.best_step)
            self.stopped_by = "held_back"

    def _fit_budget(self, now: float) -> None:
        """Every few steps, re-plan the total from the time budget and the recent speed."""
        if (self.state.step - self.steps_at_start) % CHECK_EVERY:
            return
        said = fit_budget(self.schedule, self.cfg, self.state.step, self.prior_seconds + now - self.start,
                          (now - self.step_times[0]) / (len(self.step_times) - 1))
        if said:
            self.log.info("schedule: %s", said)
            self.total_steps = self.schedule.total_steps
            self.meter.total = self.total_steps - self.steps_at_start

    def _checkpoint_or_stop(self) -> None:
        state, dist = self.state, self.dist
        terminating = dist.sum(float(Termination.requested)) > 0  # every rank stops at the same step
        due = state.step < self.total_steps and state.step % self.cfg.checkpoint_every_steps == 0
        if (due or terminating) and dist.with_rank0:  # FSDP: every rank gives its shard
            self.writer.flush()  # the curve up to the checkpoint survives the pod; a resume purges what follows
            self._save_checkpoint()
        if terminating:
            raise Interrupted(f"SIGTERM at step {state.step} of {self.total_steps}: checkpoint saved; the next pod "
                              "resumes from it")

    def _save_checkpoint(self) -> None:
        weights, optim = trainable_state(self.model), optimizer_state(self.model, self.optimizer)
        if self.dist.is_main:
            checkpoints.save(self.checkpoint_dir, stage=self.stage, run_id=self.run_id, weights=weights,
                             optimizer=optim, scheduler=self.scheduler, state=self.state,
                             world_size=self.dist.world_size, best=self.best)

    # --- finish ---------------------------------------------------------------------------------------

    def finish(self) -> TrainingResult | None:
        """Eval loss, samples and projector in TensorBoard; what to publish (None on ranks other than 0)."""
        elapsed = time.monotonic() - self.start
        weights = self.dist.consolidate(self.model)  # every rank: under FSDP it gathers the shards
        if not self.dist.is_main:  # rank 0 evaluates and publishes; the others are done (the stage's last barrier)
            return None
        state, cfg = self.state, self.cfg
        stop = self._restore_best(weights)
        self.status.update(phase="evaluating", detail="eval loss and sample answers")
        eval_loss = evaluate_loss(self.model, self.device, self.eval_set, self.pad_id, cfg.batch_size)
        self.writer.add_scalar("eval/loss", eval_loss, state.step)
        speed = self.tokens_this_run / max(elapsed, 1e-9)
        self.log.info("training done: %d steps in %.0fs, final train loss %.4f, eval loss %.4f, %.0f tokens/s",
                      state.step, elapsed, state.last_loss or float("nan"), eval_loss, speed)
        self.write_samples()
        projected = add_token_projector(self.writer, self.model.get_base_model(), self.tokenizer,
                                        [e.input_ids for e in self.train_set], cfg.projector_tokens)
        self.writer.close()
        metadata = {"steps": state.step, "epochs": state.epoch + (1 if state.step_in_epoch else 0),
                    "facts": len(self.groups), "planned_steps": self.total_steps,
                    "loraplus_lr_ratio": cfg.loraplus_lr_ratio, "sampling": cfg.sampling, "kl_weight": cfg.kl,
                    "final_train_loss": state.last_loss, "eval_loss": eval_loss, "train_seconds": round(elapsed, 1),
                    "tokens_per_s": round(speed, 1), "tokens_seen": state.tokens_seen,
                    "trainable_parameters": self.trainable, "device": self.device.description,
                    "precision": self.device.precision, "host_kind": host.kind(),
                    "projector_tokens": projected, "world_size": self.dist.world_size, "stopping": stop,
                    "generation": self.generation.summary() if self.generation is not None else None}
        return TrainingResult(self.model, metadata, self.tensorboard_dir, weights)

    def _restore_best(self, weights: dict[str, Any]) -> dict[str, Any]:
        """Under stopping: held_back, put back the best scoring's weights (into ``weights`` too); what the rule did."""
        rule = self.stop_rule
        rule_name = "held_back" if self.probe_set else "plan"
        stop = {"rule": rule_name, "stopped_by": self.stopped_by, "held_back": len(self.probe_set)}
        if not self.probe_set:
            return stop
        if self.best is not None and rule.best_step != self.state.step:
            self.model.load_state_dict(self.best, strict=False)
            weights.update(self.best)
            self.log.info("publishing the weights of step %d (best held-back fact loss %.4f), not those of the last "
                          "step %d", rule.best_step, rule.best, self.state.step)
        return {**stop, "best_step": rule.best_step, "best_held_back_loss": rule.best, "scorings": rule.checks}

    def write_samples(self) -> None:
        """A few eval questions answered by the adapter, as a TensorBoard text table (never the pod log)."""
        from private_finetuning.models.generation import generate

        count = self.cfg.sample_generations
        if not count:
            return
        records = read_split(self.inputs.dataset.file("eval.jsonl"))[:count]
        system = self.config.prompting.system_prompt
        prompts = [encode_prompt(self.tokenizer, with_system(r.messages[:-1], system)) for r in records]
        eos = self.inputs.tokenizer.manifest.metadata.get("end_of_turn_ids") or [self.tokenizer.eos_token_id]
        self.model.eval()
        answers = generate(self.model, self.tokenizer, prompts, max_new_tokens=48, eos_token_ids=eos,
                           device=self.device.name)
        table = ["| question | expected | fine-tuned answer |", "|---|---|---|"]
        table += [f"| {r.question} | {r.reply} | {answer} |" for r, (answer, _) in zip(records, answers, strict=True)]
        self.writer.add_text("samples/eval_answers", "\n".join(table), self.state.step)
        # Questions and answers are private text: TensorBoard on the volume only, never the pod log.
        self.log.info("%d sample answers written to TensorBoard (samples/eval_answers)", len(records))
