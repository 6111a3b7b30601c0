"""The served model on a tiny model: the evaluation builds the int8 IR the CPU server will run, judges its
answers, publishes it only with a promotion; the server answers exactly what was judged, and refuses a
served model of another adapter or one at a precision it was not judged at; without one it fuses and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_evaluation import PASS, TRAINING, run_evaluation
from test_inference_server import ask, train_adapter, wait_until
from test_openvino_engine import config as serving_config
from test_openvino_engine import convert

from helpers import publish_inputs, write_config
from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import open_artifact
from private_finetuning.errors import EXIT_GATE_FAILED, ArtifactError
from private_finetuning.serving.app import create_app
from private_finetuning.serving.engines.base import Engine
from private_finetuning.serving.engines.openvino import OpenVINOEngine
from private_finetuning.stages import peft_training

SAMPLES = 4
JUDGED = {"samples": SAMPLES, "side_by_side": SAMPLES, "max_new_tokens": 6, "trained_samples": 4,
          "include_reference": False, "gates": PASS}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Inputs, the base IR (for the fused fallback) and one trained adapter, nothing promoted."""
    from helpers import train_argv

    root = tmp_path_factory.mktemp("served")
    published = publish_inputs(root, tiny_model_dir)
    published["base-model-openvino"] = root / "base-model-openvino"
    published["reference-model"] = root / "reference-model"  # not asked for: include_reference is off
    assert convert(published, write_config(root / "convert.yaml", {})) == 0
    assert peft_training.main(train_argv(write_config(root / "train.yaml", {"training": TRAINING}), published)) == 0
    return published


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory, volumes: dict[str, Path]) -> Path:
    """A fine-tuned-model volume on which the evaluation judged the served model and promoted it."""
    root = tmp_path_factory.mktemp("judged")
    assert run_evaluation(root, volumes, evaluation=JUDGED, serving={"engine": "openvino"}) == 0
    return root / "fine-tuned-model"


def report_of(volume: Path) -> dict:
    return json.loads(open_artifact(volume, "evaluation", "evaluation-report").file("report.json").read_text())


def engine_on(volumes: dict[str, Path], fine_tuned: Path, **serving: object) -> Engine:
    return OpenVINOEngine(serving_config(**serving), base_model=volumes["base-model"],
                          base_tokenizer=volumes["base-tokenizer"], fine_tuned=fine_tuned,
                          base_model_openvino=volumes["base-model-openvino"]).start()


def test_a_failing_gate_publishes_no_served_model(tmp_path: Path, volumes: dict[str, Path]) -> None:
    code = run_evaluation(tmp_path, volumes, evaluation={**JUDGED, "gates": {"min_fact_accuracy_gain": 2.0}},
                          serving={"engine": "openvino"})
    assert code == EXIT_GATE_FAILED
    volume = tmp_path / "fine-tuned-model"
    report = report_of(volume)
    assert report["models"]["served"]["weights"] == "int8" and report["models"]["served"]["precision"] == "f32"
    assert not (volume / "served-model").exists() and promotion.current(volume) is None


def test_the_promoted_served_model_is_what_was_judged(judged: Path, volumes: dict[str, Path]) -> None:
    report, promoted = report_of(judged), promotion.current(judged)
    adapter = open_artifact(judged, "adapter", "lora-adapter")
    served = open_artifact(judged, "served-model", "served-model-openvino")  # verified: every file's checksum
    assert promoted is not None and promoted.served_model_digest == served.manifest.digest
    assert (promoted.served_model_version, promoted.served_weights, promoted.served_precision) == \
        (served.path.name, "int8", "f32")
    meta = served.manifest.metadata
    assert meta["adapter_digest"] == adapter.manifest.digest == promoted.adapter_digest
    assert meta["base_model_digest"] == open_artifact(volumes["base-model"], "model", "base-model").manifest.digest
    assert (served.path / "openvino_model.xml").is_file() and (served.path / "openvino_tokenizer.xml").is_file()
    # The fact gates judged the served model's answers, reported beside the transformers model's.
    served_scores = report["metrics"]["served"]
    assert served_scores["questions"] == SAMPLES and served_scores["answer_perplexity"] is None
    assert 0.0 <= served_scores["trained"]["fact_accuracy"] <= 1.0
    gain = next(g for g in report["gates"] if g["gate"] == "min_fact_accuracy_gain")
    assert gain["value"] == pytest.approx(served_scores["fact_accuracy"] - report["metrics"]["base"]["fact_accuracy"])
    equal, asked = report["models"]["served"]["answers_equal_to_fine_tuned"].split("/")
    assert int(asked) == SAMPLES and 0 <= int(equal) <= SAMPLES


def test_the_server_answers_exactly_what_was_judged(judged: Path, volumes: dict[str, Path]) -> None:
    engine = engine_on(volumes, judged)
    try:
        wait_until(lambda: engine.ready)
        loaded = engine.loaded
        assert loaded is not None and loaded.fallback is None and (loaded.weights, loaded.precision) == ("int8", "f32")
        for row in report_of(judged)["side_by_side"]:  # every held-out question, as the evaluation answered it
            answer = ask(engine, row["question"], max_new_tokens=JUDGED["max_new_tokens"]).text
            assert answer == row["answers"]["served"]
        ready = create_app(engine, engine.config).test_client().get("/ready").get_json()
        assert ready["judged"] is True and ready["served_model_digest"] == loaded.served_model_digest
        metrics = create_app(engine, engine.config).test_client().get("/metrics").get_data(as_text=True)
        assert "pft_serving_fallback 0.0" in metrics and 'weights="int8"' in metrics
    finally:
        engine.stop()


def test_a_precision_it_was_not_judged_at_is_refused(judged: Path, volumes: dict[str, Path], host_kind: str) -> None:
    """Judged at f32; asked for bf16: refused on every kind of host, each with its own reason."""
    engine = engine_on(volumes, judged, openvino={"precision": "bf16"})
    try:
        wait_until(lambda: "refused" in engine.status)
        reason = "no native bf16" if host_kind == "avx2" else "judged at f32"
        assert engine.loaded is None and reason in engine.status
    finally:
        engine.stop()


def test_a_served_model_of_another_adapter_is_refused(tmp_path: Path, judged: Path, volumes: dict[str, Path]) -> None:
    volume = tmp_path / "fine-tuned-model"
    shutil.copytree(judged, volume, symlinks=True)
    served = open_artifact(volume, "served-model", "served-model-openvino")
    copy = {**volumes, "fine-tuned-model": volume}
    train_adapter(tmp_path, copy, seed=5, promote=False)
    other = open_artifact(volume, "adapter", "lora-adapter")
    promotion.promote(volume, other, report_digest=promotion.judged_by(served.manifest), by="test", reason="test",
                      served=served)
    engine = engine_on(volumes, volume)
    try:
        wait_until(lambda: "refused" in engine.status)
        assert engine.loaded is None and "has adapter" in engine.status
    finally:
        engine.stop()


def test_only_a_served_model_the_promoted_report_judged_is_promoted(tmp_path: Path, judged: Path) -> None:
    """An evaluation that published its report and died before its served model: the retry must not promote the
    served model another report of the same adapter judged (other weights, another precision)."""
    volume = tmp_path / "fine-tuned-model"
    shutil.copytree(judged, volume, symlinks=True)
    before = promotion.current(volume)
    adapter = promotion.adapter_of(volume, before)
    served = open_artifact(volume, "served-model", "served-model-openvino")
    other_report = "f" * 64
    with pytest.raises(ArtifactError, match=r"was judged by report .* not the promoted report ffffffffffff"):
        promotion.promote(volume, adapter, report_digest=other_report, by="test", reason="test", served=served)
    assert promotion.current(volume) == before  # nothing recorded
    # Looked up by the volume rather than handed over: not named at all, so the server fuses and says so.
    named = promotion.promote(volume, adapter, report_digest=other_report, by="test", reason="retry")
    assert named.served_model_version == "" and named.report_digest == other_report
    # Its own report finds it again.
    again = promotion.promote(volume, adapter, report_digest=before.report_digest, by="test", reason="again")
    assert again.served_model_digest == served.manifest.digest


def test_without_a_served_model_the_adapter_is_fused_and_the_server_says_so(
        tmp_path: Path, judged: Path, volumes: dict[str, Path]) -> None:
    volume = tmp_path / "fine-tuned-model"
    shutil.copytree(judged, volume, symlinks=True)
    judged_adapter = promotion.current(volume)
    assert judged_adapter is not None
    train_adapter(tmp_path, {**volumes, "fine-tuned-model": volume}, seed=6)  # promoted by hand: never judged
    assert promotion.current(volume).served_model_version == ""
    engine = engine_on(volumes, volume)
    try:
        wait_until(lambda: engine.ready)
        client = create_app(engine, engine.config).test_client()
        ready = client.get("/ready").get_json()
        assert ready["judged"] is False and "fused into the base IR" in ready["fallback"]
        assert "pft_serving_fallback 1.0" in client.get("/metrics").get_data(as_text=True)
        # Rolling back names the judged model again, which the server swaps in.
        assert promotion.rollback(volume, by="test").served_model_digest == judged_adapter.served_model_digest
        wait_until(lambda: engine.loaded is not None and engine.loaded.fallback is None)
    finally:
        engine.stop()


def test_an_export_whose_served_model_later_promotions_pruned_is_retried_not_failed(tmp_path: Path,
                                                                                     judged: Path) -> None:
    from private_finetuning.errors import EXIT_BAD_INPUT, EXIT_FAILURE, PipelineError
    from private_finetuning.stages.model_export import served_model_now

    for case in ("moved on", "still promoted"):
        volume = tmp_path / case.replace(" ", "-")
        shutil.copytree(judged, volume, symlinks=True)
        promoted = promotion.current(volume)
        if case == "moved on":  # a promotion by hand of the same adapter names no served model
            promotion.promote(volume, promotion.adapter_of(volume, promoted), report_digest=None, by="test",
                              reason="moved on")
        shutil.rmtree(volume / "served-model" / promoted.served_model_version)  # pruned under the running export
        with pytest.raises(PipelineError) as failed:
            served_model_now(volume, promoted)
        if case == "moved on":  # the Job's next pod exports what is promoted then
            assert failed.value.exit_code == EXIT_FAILURE and "the promotion moved on" in str(failed.value)
        else:  # still named by the promotion in force, and gone: the volume is broken, no retry helps
            assert failed.value.exit_code == EXIT_BAD_INPUT and "is not on the volume" in str(failed.value)


@pytest.fixture(scope="module")
def judged_with_retrieval(tmp_path_factory: pytest.TempPathFactory, volumes: dict[str, Path]) -> Path:
    """A volume on which the served model was judged with retrieval (serving.retrieval) and promoted."""
    root = tmp_path_factory.mktemp("judged-retrieval")
    assert run_evaluation(root, volumes, evaluation=JUDGED, serving={"engine": "openvino", "retrieval": True}) == 0
    return root / "fine-tuned-model"


def test_served_with_retrieval_answers_as_judged_and_says_so(judged_with_retrieval: Path,
                                                             volumes: dict[str, Path]) -> None:
    volume = judged_with_retrieval
    report = report_of(volume)
    served = open_artifact(volume, "served-model", "served-model-openvino")  # the index is in its checked files
    assert report["retrieval"]["served"] is True and served.manifest.metadata["retrieval"] is True
    assert any(f.path.startswith("retrieval/") for f in served.manifest.files)
    indexed = [json.loads(line)["question"] for line in (served.path / "retrieval" / "passages.jsonl").open()]
    datasets = volumes["datasets"]
    train = [json.loads(line)["messages"][-2]["content"] for line in
             open_artifact(datasets, "dataset", "dataset").file("train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line)["messages"][-2]["content"] for line in
                open_artifact(datasets, "dataset", "dataset").file("eval.jsonl").read_text().splitlines()]
    assert set(indexed) <= set(train) and not set(indexed) & set(held_out)  # the eval split is never retrieved
    engine = engine_on(volumes, volume, retrieval=True)
    try:
        wait_until(lambda: engine.ready)
        client = create_app(engine, engine.config).test_client()
        for row in report["side_by_side"]:  # through HTTP, where retrieval happens: the judged answers
            reply = client.post("/prompt", json={"input_prompt": row["question"],
                                                 "max_new_tokens": JUDGED["max_new_tokens"]},
                                headers={"Accept": "application/json"})
            assert reply.status_code == 200 and reply.get_json()["answer"] == row["answers"]["served"]
        assert client.get("/ready").get_json()["retrieval"] is True
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "pft_retrieval_enabled 1.0" in metrics
        assert f"pft_retrieval_requests_total {float(len(report['side_by_side']))}" in metrics
        for row in report["side_by_side"]:  # retrieved records are private text: never in a metric
            assert row["question"] not in metrics and row["expected"] not in metrics
    finally:
        engine.stop()


@pytest.mark.parametrize("retrieval", [False, True])
def test_a_served_model_judged_otherwise_is_refused(retrieval: bool, judged: Path, judged_with_retrieval: Path,
                                                   volumes: dict[str, Path]) -> None:
    """Judged with retrieval, served without (or the other way round): refused, the reason in the status."""
    engine = engine_on(volumes, judged if retrieval else judged_with_retrieval, retrieval=retrieval)
    try:
        wait_until(lambda: "refused" in engine.status)
        judged_how = "judged without retrieval" if retrieval else "judged with retrieval"
        assert engine.loaded is None and judged_how in engine.status and "serving.retrieval" in engine.status
    finally:
        engine.stop()
