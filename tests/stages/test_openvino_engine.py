"""The OpenVINO engine on a tiny model: the IR stage, answers equal to transformers', continuous
batching, cancellation, hot swap, and the stage under gunicorn with probes under load."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from test_inference_server import (
    SERVING,
    ask,
    load_with_probes,
    other_base,
    train_adapter,
    wait_ready,
    wait_until,
    whole_and_streamed,
)

from helpers import Logged, free_port, publish_inputs, write_config
from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import current_version, open_artifact
from private_finetuning.config import PipelineConfig, parse_config
from private_finetuning.errors import ConfigError
from private_finetuning.serving.engines import choose
from private_finetuning.serving.engines.base import Engine, Request
from private_finetuning.serving.engines.openvino import OpenVINOEngine, adapter_alpha
from private_finetuning.serving.engines.transformers import TransformersEngine
from private_finetuning.stages import openvino_conversion

QUESTIONS = ["hi", "What is the best hotel in Seville?", "Where is the Bergen office?", "zz top", "A B C D E F"]


def convert(volumes: dict[str, Path], config: Path) -> int:
    return openvino_conversion.main(["--config", str(config), "--base-model", str(volumes["base-model"]),
                                     "--base-tokenizer", str(volumes["base-tokenizer"]),
                                     "--output", str(volumes["base-model-openvino"])])


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openvino")
    published = publish_inputs(root, tiny_model_dir)
    published["base-model-openvino"] = root / "base-model-openvino"
    assert convert(published, write_config(root / "convert.yaml", {})) == 0
    train_adapter(root, published, seed=1)
    return published


def config(**overrides: object) -> PipelineConfig:
    return parse_config(json.dumps({"serving": {**SERVING, **overrides}, "artifacts": {"poll_interval_s": 0.1}}))


def start(engine: Engine) -> Engine:
    engine.start()
    wait_until(lambda: engine.ready)
    return engine


@pytest.fixture
def engines(volumes: dict[str, Path]):
    """An OpenVINO engine and a transformers engine on the same volumes, stopped after the test."""
    paths = {"base_model": volumes["base-model"], "base_tokenizer": volumes["base-tokenizer"],
             "fine_tuned": volumes["fine-tuned-model"]}
    openvino = start(OpenVINOEngine(config(), **paths, base_model_openvino=volumes["base-model-openvino"]))
    reference = start(TransformersEngine(config(), **paths))
    yield openvino, reference
    openvino.stop()
    reference.stop()


# --- the conversion stage ---------------------------------------------------------------------------------

def test_the_ir_is_published_for_its_base_model_after_a_greedy_check(volumes: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    ir = open_artifact(volumes["base-model-openvino"], "model", "base-model-openvino")  # verified: checksums
    base = current_version(volumes["base-model"], "model")
    assert ir.manifest.metadata["base_model_digest"] == base.digest
    assert ir.manifest.metadata["check"] == "greedy tokens equal at f32"
    assert ir.manifest.metadata["check_precision"] == "f32" and ir.manifest.metadata["weight_format"] == "fp32"
    assert (ir.path / "openvino_model.xml").is_file() and (ir.path / "openvino_tokenizer.xml").is_file()
    # The same base converts once: a rerun finds it published and changes nothing.
    assert convert(volumes, write_config(tmp_path / "again.yaml", {})) == 0
    assert current_version(volumes["base-model-openvino"], "model").digest == ir.manifest.digest


def test_the_conversion_stage_checks_at_f32_on_every_kind_of_host(volumes: dict[str, Path], tmp_path: Path,
                                                                   host_kind: str) -> None:
    """A Zen 4 host (AVX512-BF16) failed this check on every run while it compared bf16 with fp32 torch. Now
    each kind publishes an IR checked at f32; where bf16 is native its agreement is measured and recorded."""
    target = {**volumes, "base-model-openvino": tmp_path / "ir"}
    assert convert(target, write_config(tmp_path / "p.yaml", {})) == 0
    meta = open_artifact(target["base-model-openvino"], "model", "base-model-openvino").manifest.metadata
    assert (meta["check_precision"], meta["host_kind"]) == ("f32", host_kind)
    assert ("bf16_agreement" in meta) is (host_kind != "avx2")
    if host_kind != "avx2":
        assert meta["bf16_agreement"].endswith(f"of {meta['check_tokens']} greedy tokens equal to fp32 before the "
                                               "first difference")


def test_without_its_tool_environment_the_conversion_fails_clearly_and_publishes_nothing(
        volumes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PFT_OPENVINO_EXPORT_PYTHON", str(tmp_path / "no-such-python"))
    target = {**volumes, "base-model-openvino": tmp_path / "ir"}
    assert convert(target, write_config(tmp_path / "p.yaml", {})) == 2
    errors = "\n".join(line for line in capsys.readouterr().err.splitlines() if " ERROR " in line)
    assert "the OpenVINO export environment is missing" in errors and "make-openvino-export-env.sh" in errors
    assert current_version(target["base-model-openvino"], "model") is None


def test_with_the_transformers_engine_there_is_nothing_to_convert(volumes: dict[str, Path], tmp_path: Path) -> None:
    target = {**volumes, "base-model-openvino": tmp_path / "ir"}
    assert convert(target, write_config(tmp_path / "p.yaml", {"serving": {"engine": "transformers"}})) == 0
    assert current_version(target["base-model-openvino"], "model") is None


# --- which engine -------------------------------------------------------------------------------------------

def test_auto_picks_openvino_on_a_cpu_with_the_ir_and_transformers_on_cuda() -> None:
    auto, asked = config(), config(engine="openvino")
    assert choose(auto, has_ir_volume=True, cuda=False) == "openvino"
    assert choose(auto, has_ir_volume=True, cuda=True) == "transformers"
    assert choose(auto, has_ir_volume=False, cuda=False) == "transformers"
    with pytest.raises(ConfigError, match="base-model-openvino"):
        choose(asked, has_ir_volume=False, cuda=False)


def test_adapter_alpha_is_peft_scaling(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    assert adapter_alpha(tmp_path) == 2.0
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32, "use_rslora": True}))
    assert adapter_alpha(tmp_path) == 8.0


# --- answers ---------------------------------------------------------------------------------------------------

def test_greedy_answers_equal_the_transformers_engine(engines: tuple[Engine, Engine]) -> None:
    openvino, reference = engines
    assert openvino.loaded.adapter_digest == reference.loaded.adapter_digest
    for question in QUESTIONS:
        got, expected = ask(openvino, question), ask(reference, question)
        assert got.error is None and (got.text, got.completion_tokens) == (expected.text, expected.completion_tokens)


def test_concurrent_requests_share_steps_and_answer_as_they_would_alone(engines: tuple[Engine, Engine]) -> None:
    openvino, _ = engines
    alone = {q: ask(openvino, q, 24).text for q in QUESTIONS}
    requests = []
    for question in QUESTIONS * 3:  # 15 at once, below max_batch_size 16
        request = Request(openvino.encode([{"role": "user", "content": question}]), 24, 0.0, 1.0,
                          deadline=time.monotonic() + 60)
        requests.append((question, openvino.submit(request)))
    for question, request in requests:
        assert request.done.wait(60) and request.error is None
        assert request.text == alone[question]
    assert openvino.largest_batch > 1


def test_a_cancelled_or_late_request_ends_alone(engines: tuple[Engine, Engine]) -> None:
    openvino, _ = engines
    cancelled = ask(openvino, "hi", 24, cancelled=True)
    assert cancelled.error == "cancelled by the client" and not cancelled.text
    late = ask(openvino, "hi", 24, deadline=time.monotonic() - 1)
    assert late.error == "the request waited past its deadline"
    assert ask(openvino, "hi").error is None  # the engine goes on


def test_streaming_gives_the_same_text_as_one_answer(engines: tuple[Engine, Engine]) -> None:
    openvino, _ = engines
    whole, streamed = whole_and_streamed(openvino, "Where is the Bergen office?", 16)
    assert whole and streamed == whole


def test_a_fault_in_admitting_or_reading_fails_that_request_alone(engines: tuple[Engine, Engine],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Only step() was guarded: a fault while admitting or reading a request killed the only worker while
    /ready stayed 200. Now that request fails, the worker goes on, and the next request is answered."""
    from private_finetuning.models import openvino_ir

    openvino, _ = engines
    real_add = openvino_ir.add_request
    monkeypatch.setattr(openvino_ir, "add_request", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("admit")))
    assert ask(openvino, "hi").error == "generation failed: admit"
    monkeypatch.setattr(openvino_ir, "add_request", real_add)
    real_advance = OpenVINOEngine._advance
    monkeypatch.setattr(OpenVINOEngine, "_advance", lambda *a: (_ for _ in ()).throw(RuntimeError("read")))
    assert ask(openvino, "hi").error == "generation failed: read"
    monkeypatch.setattr(OpenVINOEngine, "_advance", real_advance)
    assert openvino.worker_alive and openvino.ready
    assert ask(openvino, "hi").error is None


def test_health_and_ready_fail_once_the_worker_has_stopped(engines: tuple[Engine, Engine]) -> None:
    from private_finetuning.serving.app import create_app

    openvino, _ = engines
    client = create_app(openvino, openvino.config).test_client()
    assert client.get("/health").status_code == 200 and client.get("/ready").get_json()["worker"] == "alive"
    openvino.stop()  # the worker thread ends, as it would on a fault nothing caught
    wait_until(lambda: not openvino.worker_alive)
    assert client.get("/health").status_code == 503 and client.get("/ready").status_code == 503
    assert "worker has stopped" in client.get("/health").get_json()["error"]["message"]


def test_a_promoted_adapter_is_fused_and_served_without_a_restart(tmp_path: Path, tiny_model_dir: Path,
                                                                   volumes: dict[str, Path]) -> None:
    fresh = {**publish_inputs(tmp_path, tiny_model_dir), "base-model-openvino": volumes["base-model-openvino"]}
    first = train_adapter(tmp_path, fresh, seed=1)
    paths = {"base_model": fresh["base-model"], "base_tokenizer": fresh["base-tokenizer"],
             "fine_tuned": fresh["fine-tuned-model"]}
    engine = start(OpenVINOEngine(config(), **paths, base_model_openvino=fresh["base-model-openvino"]))
    try:
        assert engine.loaded.adapter_digest == first
        second = train_adapter(tmp_path, fresh, seed=2, promote=False)
        time.sleep(1.0)
        assert engine.loaded.adapter_digest == first  # published but not promoted: not served
        promotion.promote(fresh["fine-tuned-model"], open_artifact(fresh["fine-tuned-model"], "adapter",
                                                                   "lora-adapter"), report_digest=None, by="test",
                          reason="test")
        assert ask(engine, "hi").error is None  # answering through the swap
        wait_until(lambda: engine.loaded.adapter_digest == second)
        reference = start(TransformersEngine(config(), **paths))  # loads the promoted (second) adapter
        try:
            for question in QUESTIONS:
                assert ask(engine, question).text == ask(reference, question).text
        finally:
            reference.stop()
    finally:
        engine.stop()


def test_an_ir_of_another_base_is_never_used(tmp_path: Path, tiny_model_dir: Path, volumes: dict[str, Path]) -> None:
    """A re-published base waits for its own IR (saying so in /ready), then serves once it is converted."""
    import shutil

    config_file = write_config(tmp_path / "base2.yaml", {"model": {"source": {
        "type": "hf-folder", "path": str(other_base(tmp_path, tiny_model_dir))}}})
    fresh = publish_inputs(tmp_path, tiny_model_dir)
    from private_finetuning.stages import model_relocation
    assert model_relocation.main(["--config", str(config_file), "--output", str(fresh["base-model"])]) == 0
    fresh["base-model-openvino"] = tmp_path / "ir"
    shutil.copytree(volumes["base-model-openvino"], fresh["base-model-openvino"], symlinks=True)  # the old base's IR
    adapter = train_adapter(tmp_path, fresh, seed=1)
    engine = OpenVINOEngine(config(), base_model=fresh["base-model"], base_tokenizer=fresh["base-tokenizer"],
                            fine_tuned=fresh["fine-tuned-model"], base_model_openvino=fresh["base-model-openvino"])
    engine.start()
    try:
        time.sleep(1.0)
        assert not engine.ready and engine.status == "waiting for the base model's OpenVINO IR " \
                                                      "(openvino-model-conversion)"
        assert convert(fresh, write_config(tmp_path / "p.yaml", {})) == 0  # its own IR
        wait_until(lambda: engine.ready)
        assert engine.loaded.adapter_digest == adapter and ask(engine, "hi").error is None
    finally:
        engine.stop()


# --- the stage under gunicorn ----------------------------------------------------------------------------------

def test_the_stage_serves_with_openvino_and_answers_probes_under_load(tmp_path: Path,
                                                                      volumes: dict[str, Path]) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "p.yaml", {"serving": SERVING})
    argv = [sys.executable, "-m", "private_finetuning.stages.inference_server", "--config", str(cfg),
            "--base-model", str(volumes["base-model"]), "--base-tokenizer", str(volumes["base-tokenizer"]),
            "--fine-tuned", str(volumes["fine-tuned-model"]), "--base-model-openvino",
            str(volumes["base-model-openvino"]), "--bind", f"127.0.0.1:{port}"]
    server = Logged(argv)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        statuses, probes = load_with_probes(url, clients=16, seconds=3.0)
        assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
        assert probes and all(ok for ok, _ in probes), [p for p in probes if not p[0]]
    finally:
        output = server.stop()
    assert "inference engine: openvino" in output
