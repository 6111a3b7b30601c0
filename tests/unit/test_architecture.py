"""The package's shape, checked over its source: what a newcomer can rely on when opening it.

Packages by area with the layers pointing one way, no function too long to read in a screen, models and
tokenizers typed, and every extension point's choices (config, CLI) taken from its one table.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "src" / "private_finetuning"
# Cross-cutting modules allowed at the root beside the entry point; everything else lives in an area package.
ROOT_MODULES = {"__init__", "cli", "config", "errors"}
# Lowest first: a package may import its own layer and those before it, never one after it.
LAYERS = [
    {"__init__", "errors", "config"},
    {"telemetry"},
    {"data"},
    {"artifacts"},
    {"retrieval"},
    {"models"},
    {"training"},
    {"evaluation"},
    {"export"},
    {"serving"},
    {"stages"},
    {"deploy"},
    {"cli"},
]
MAX_FUNCTION_LINES = 60


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in sorted(PACKAGE.rglob("*.py"))]


def _area(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _layer(area: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if area in names)


def _imported_areas(tree: ast.Module) -> set[str]:
    """The package's areas a module imports, anywhere in it (inside functions and TYPE_CHECKING too)."""
    areas = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("private_finetuning"):
            parts = node.module.split(".")
            if len(parts) > 1:
                areas.add(parts[1])
            else:
                areas.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            areas.update(a.name.split(".")[1] for a in node.names if a.name.startswith("private_finetuning."))
    return areas


def test_the_root_holds_only_the_entry_point_and_cross_cutting_modules() -> None:
    root = {p.stem for p in PACKAGE.glob("*.py")}
    assert root == ROOT_MODULES, f"move {sorted(root - ROOT_MODULES)} into an area package (e.g. models/, training/)"
    areas = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert areas == set().union(*LAYERS) - ROOT_MODULES - {"cli"}


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = []
    for path, tree in _modules():
        area = _area(path)
        for imported in _imported_areas(tree):
            if imported in ("__version__",):
                continue
            if _layer(imported) > _layer(area):
                wrong.append(f"{path.relative_to(PACKAGE)} ({area}) imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_function_is_longer_than_a_screen() -> None:
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_models_tokenizers_and_writers_are_typed() -> None:
    untyped = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for arg in node.args.args + node.args.kwonlyargs:
                if arg.arg in ("model", "tokenizer", "writer") and (
                        arg.annotation is None or ast.unparse(arg.annotation) == "Any"):
                    untyped.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}({arg.arg})")
    assert not untyped, "\n".join(untyped)


def _literal(hint: object) -> tuple[str, ...]:
    """The choices of a Literal field (inside a list or an Optional too)."""
    for arg in (hint, *typing.get_args(hint)):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    raise AssertionError(f"{hint!r} is not a Literal")


def test_each_config_choice_comes_from_its_table() -> None:
    from private_finetuning.config import AugmentationConfig, DatasetSource, ServingConfig
    from private_finetuning.data.augment import KINDS
    from private_finetuning.data.formats import READERS
    from private_finetuning.serving.engines import ENGINES

    assert _literal(DatasetSource.model_fields["format"].annotation) == ("auto", *READERS)
    assert _literal(ServingConfig.model_fields["engine"].annotation) == ("auto", *ENGINES)
    assert _literal(AugmentationConfig.model_fields["kinds"].annotation) == tuple(KINDS)


def _choices(parser: object, option: str) -> list[str]:
    return next(a.choices for a in parser._actions if option in a.option_strings)  # type: ignore[attr-defined]


def test_each_cli_choice_comes_from_its_table() -> None:
    import argparse

    from private_finetuning.cli import build_parser
    from private_finetuning.deploy.local_runner.runtimes import RUNTIMES
    from private_finetuning.serving.engines import ENGINES
    from private_finetuning.stages import inference_server

    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    assert _choices(run, "--engine") == list(RUNTIMES)
    server = argparse.ArgumentParser()
    inference_server._arguments(server)
    assert _choices(server, "--engine") == ["auto", *ENGINES]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet", ".txt"])
def test_format_auto_picks_the_reader_that_claims_the_extension(suffix: str) -> None:
    from private_finetuning.data.formats import READERS, detect_format

    assert suffix in READERS[detect_format(Path("data" + suffix), "auto")].suffixes


def test_every_metric_of_the_table_is_in_the_report_tensorboard_and_card(tmp_path: Path) -> None:
    """A metric is one row of METRICS: the report's rows, its JSON and the model card follow without edits."""
    from private_finetuning.evaluation.metrics import METRICS
    from private_finetuning.evaluation.pages import render_markdown
    from private_finetuning.evaluation.report import (
        AnswerScores,
        EvaluationReport,
        Forgetting,
        ModelScores,
        metric_rows,
    )
    from private_finetuning.export.model_card import _evaluation_table

    answers = {m.name: 0.5 for m in METRICS if m.score is not None}
    scores = ModelScores(AnswerScores(answers), 2.0, 3.0, 0.1, 10.0, 4, trained=AnswerScores(answers))
    report = EvaluationReport(4, {"max_new_tokens": 8}, {"base": {"name": "b"}, "fine_tuned": {"name": "f"}},
                              {"name": "d", "digest": "x"}, {"base": scores, "fine_tuned": scores},
                              Forgetting(0.1, 3.0, 3.0, 0.0), [], [])
    labels = [label for label, _, _ in metric_rows(report)]
    markdown, card = render_markdown(report), "\n".join(_evaluation_table(report))
    for metric in METRICS:
        assert any(label.startswith(metric.label) for label in labels)
        assert metric.label in markdown
        assert (metric.label in card) is metric.card
        assert report.to_json()["metrics"]["fine_tuned"][metric.name] is not None
    assert EvaluationReport.from_json(report.to_json()) == report  # what the model card reads back is what was written


def test_the_stage_table_names_every_component_and_its_module() -> None:
    """stages/__init__.py's table is what a newcomer reads to find a pod's code: it must match the images."""
    import private_finetuning.stages as stages

    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in (stages.__doc__ or "").splitlines() if line.startswith("| ") and "---" not in line}
    rows.pop("component (image, pod)")
    components = {p.name for p in (REPO / "components").iterdir() if (p / "app.py").is_file()}
    assert set(rows) == components
    for component, module in rows.items():
        assert f"private_finetuning.stages.{module}" in (REPO / "components" / component / "app.py").read_text()
