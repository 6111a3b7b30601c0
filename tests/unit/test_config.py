"""The pipeline YAML: defaults, strict validation with the bad key named, path resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO, write_config
from private_finetuning.config import PipelineConfig, load_config, parse_config
from private_finetuning.errors import ConfigError


def test_shipped_yaml_is_exactly_the_defaults() -> None:
    loaded = load_config(REPO / "k8s" / "base" / "pipeline.yaml")
    assert loaded.to_dict() == PipelineConfig().to_dict()


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("")
    assert load_config(path).to_dict() == PipelineConfig().to_dict()


@pytest.mark.parametrize(("text", "message"), [
    ("modle: {}", "modle: unknown key"),
    ("model: {source: {typ: gguf}}", "model.source.typ: unknown key"),
    ("model: {dtype: float64}", "model.dtype: 'float64' is not one of"),
    ("dataset: {seed: 'x'}", "dataset.seed: expected an integer"),
    ("dataset: {seed: true}", "dataset.seed: expected an integer"),
    ("dataset: {eval_fraction: 1.5}", "dataset.eval_fraction: must be between 0 and 1"),
    ("model: {source: {type: gguf}}", "model.source.path: required"),
    ("model: {source: {name: llama-70b}}", "model.source.name: unknown embedded model"),
    ("model: {source: {type: gguf, path: x.gguf, sha256: abc}}", "model.source.sha256: expected 64"),
    ("dataset: {source: {type: file, path: d.csv}}", "dataset.source.csv_template: required for CSV"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{q}'}}}",
     "dataset.source.csv_template.assistant: required"),
    ("dataset: {source: {type: file, path: d.jsonl, encoding: klingon}}", "dataset.source.encoding: unknown"),
    ("model: [1, 2]", "model: expected a mapping"),
    ("- just\n- a list", "<top level>: expected a mapping"),
    ("artifacts: {wait_timeout_s: 0}", "artifacts.wait_timeout_s: must be positive"),
    ("training: {max_grad_norm: 0}", "training.max_grad_norm: must be positive"),
    ("evaluation: {samples: -1}", "evaluation.samples: must be zero or more"),
    ("serving: {batch_window_ms: -1}", "serving.batch_window_ms: must be zero or more"),
    ("serving: {max_new_tokens: 300}", "serving.max_new_tokens: above max_new_tokens_limit (256)"),
    ("training: {max_steps: 0}", "training.max_steps: must be positive (or null for epochs)"),
    ("serving: {request_timeout_s: .nan}", "serving.request_timeout_s: nan is not a finite number"),
    ("serving: {adapter_poll_interval_s: .inf}", "serving.adapter_poll_interval_s: inf is not a finite number"),
    ("training: {learning_rate: '-inf'}", "training.learning_rate: -inf is not a finite number"),
    ("dataset: {max_file_bytes: 0}", "dataset.max_file_bytes: must be positive"),
    ("serving: {request_timeout_s: 1e300}", "serving.request_timeout_s: 1e+300 is more than the sensible maximum"),
    ("training: {learning_rate: 50}", "training.learning_rate: 50.0 is more than the sensible maximum 1"),
    ("artifacts: {poll_interval_s: 1e9}", "artifacts.poll_interval_s: 1000000000.0 is more than the sensible"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: 'Q: {}', assistant: '{a}'}}}",
     "dataset.source.csv_template.user: field {} must name a CSV column"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{0}', assistant: '{a}'}}}",
     "dataset.source.csv_template.user: field {0} must name a CSV column"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{q.x}', assistant: '{a}'}}}",
     "dataset.source.csv_template.user: field {q.x} must name a CSV column"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{q}', assistant: 'x {a'}}}",
     "dataset.source.csv_template.assistant: not a valid format string"),
    # Once accepted here, then a ValueError and a traceback on the dataset stage's first row (three retries):
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{question!x}', assistant: '{a}'}}}",
     "dataset.source.csv_template.user: field {question} has a conversion (!x)"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{q}', assistant: '{n:d}'}}}",
     "dataset.source.csv_template.assistant: field {n} has a format spec (:d)"),
    ("dataset: {source: {type: file, path: d.csv, csv_template: {user: '{q:>999999999}', assistant: '{a}'}}}",
     "dataset.source.csv_template.user: field {q} has a format spec (:>999999999)"),
    ("serving: {openvino: {precision: bf16, kv_cache_precision: f32}}",
     "serving.openvino.kv_cache_precision: f32 with precision bf16"),
    ("model: " + "[" * 5000 + "]" * 5000, "nested too deeply to be a pipeline config"),
    ("serving: {model_name: ../../etc/evil}", "serving.model_name: must be 1 to 64 letters, digits"),
    ("serving: {model_name: \"ok\\nSYSTEM injected\"}", "serving.model_name: must be 1 to 64 letters, digits"),
    ("serving: {model_name: ''}", "serving.model_name: must be 1 to 64 letters, digits"),
])
def test_invalid_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  dtype: [float32\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipeline config not found"):
        load_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config = load_config(write_config(tmp_path / "sub" / "p.yaml",
                                      {"dataset": {"source": {"type": "file", "path": "data.jsonl"}}}))
    assert config.resolve_path("data.jsonl") == tmp_path / "sub" / "data.jsonl"
    assert config.resolve_path("/abs/x") == Path("/abs/x")


def test_config_through_a_symlink_resolves_against_the_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "mount").mkdir()
    target = write_config(tmp_path / "real" / "p.yaml", {})
    (tmp_path / "mount" / "pipeline.yaml").symlink_to(target)
    assert load_config(tmp_path / "mount" / "pipeline.yaml").base_dir == tmp_path / "real"


def test_published_schema_and_reference_are_the_models_own() -> None:
    """Editors read k8s/base/pipeline.schema.json and people docs/configuration.md: both say what the code checks.
    After changing a field: .venv/bin/pft config-schema > k8s/base/pipeline.schema.json and
    .venv/bin/pft config-schema --markdown > docs/configuration.md."""
    from private_finetuning.config import json_schema_text, reference_markdown

    assert (REPO / "k8s" / "base" / "pipeline.schema.json").read_text() == json_schema_text()
    assert (REPO / "docs" / "configuration.md").read_text() == reference_markdown()
    assert (REPO / "k8s" / "base" / "pipeline.yaml").read_text().startswith(
        "# yaml-language-server: $schema=pipeline.schema.json\n")


def test_the_shipped_yaml_is_valid_against_the_schema_and_a_typo_is_not() -> None:
    import json

    import jsonschema
    import yaml

    schema = json.loads((REPO / "k8s" / "base" / "pipeline.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((REPO / "k8s" / "base" / "pipeline.yaml").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"training": {"learning_rte": 0.001}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"training": {"learning_rate": 50}}, schema)


def test_every_key_has_help() -> None:
    import typing

    from pydantic import BaseModel

    missing = []

    def walk(cls: type[BaseModel], where: str) -> None:
        for name, info in cls.model_fields.items():
            key = f"{where}.{name}" if where else name
            if not info.description:
                missing.append(key)
            for arg in (info.annotation, *typing.get_args(info.annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, key)

    walk(PipelineConfig, "")
    assert not missing, f"add a docstring under each of {missing} in config.py"


def test_an_error_names_the_file_line_of_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: x\ntraining:\n  epochs: 2\n  learning_rte: 0.001\nserving:\n  max_batch_size: 0\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:4: training.learning_rte: unknown key; expected one of")):
        load_config(path)
    path.write_text("name: x\ntraining:\n  epochs: 2\nserving:\n  max_batch_size: 0\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:5: serving.max_batch_size: must be positive")):
        load_config(path)
