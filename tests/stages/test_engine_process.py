"""Generation in a process of its own (serving.engine_process): the HTTP process answers probes and bad input
without waiting for a step, a killed engine process fails only its own requests (503) and is restarted, and
the existing bad-input and OpenAPI fuzz tests pass through the process boundary unchanged."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from test_inference_server import (  # noqa: F401  (imported tests run again here, against the engine process)
    CHAT,
    make_engine,
    serving_config,
    test_api_conforms_to_its_openapi_description,
    test_bad_input_gets_a_json_4xx_and_the_server_keeps_answering,
    test_malformed_chat_messages_get_a_422_naming_the_field,
    trained_volumes,
    wait_until,
    whole_and_streamed,
)

from private_finetuning.config import PipelineConfig
from private_finetuning.serving.app import create_app
from private_finetuning.serving.engines import EngineVolumes
from private_finetuning.serving.engines.process import EngineProcess


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    return trained_volumes(tmp_path_factory.mktemp("engine-process"), tiny_model_dir)


def start(volumes: dict[str, Path], config: PipelineConfig) -> EngineProcess:
    engine = EngineProcess(config, EngineVolumes(volumes["base-model"], volumes["base-tokenizer"],
                                                 volumes["fine-tuned-model"])).start()
    wait_until(lambda: engine.ready, timeout=120)
    return engine


@pytest.fixture(scope="module")
def engine(volumes: dict[str, Path]):
    engine = start(volumes, serving_config(engine="transformers"))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def client(engine: EngineProcess):
    return create_app(engine, engine.config).test_client()


def test_it_answers_as_the_engine_in_this_process_does(engine: EngineProcess, volumes: dict[str, Path]) -> None:
    here = make_engine(volumes, serving_config()).start()
    try:
        wait_until(lambda: here.ready)
        for question in ("hi", "What is the best hotel in Seville?"):
            assert whole_and_streamed(engine, question, 12) == whole_and_streamed(here, question, 12)
    finally:
        here.stop()
    ready = create_app(engine, engine.config).test_client().get("/ready").get_json()
    assert ready["engine"] == "transformers" and ready["engine_process"]["pid"] == engine.pid != os.getpid()


@pytest.fixture(scope="module")
def slow(volumes: dict[str, Path]):
    """An engine process whose batches wait 3 s for company: a request stays inside it long enough to act on."""
    engine = start(volumes, serving_config(engine="transformers", batch_window_ms=3000))
    yield engine
    engine.stop()
    assert not engine._process.is_alive()


def test_a_streaming_client_that_goes_away_cancels_its_generation_in_the_engine_process(slow: EngineProcess) -> None:
    client = create_app(slow, slow.config).test_client()
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32, "stream": True}
    response = client.post(CHAT, data=json.dumps(body), content_type="application/json", buffered=False)
    assert next(response.response).startswith(b"data: ")  # the role chunk: the request is in the engine process
    (request,) = slow._pending.values()
    response.close()  # the client goes away while its request waits for its batch
    wait_until(lambda: request.done.is_set(), timeout=30)
    assert request.error == "cancelled by the client" and request.text == ""


def test_a_killed_engine_process_fails_its_request_with_a_503_and_is_restarted(slow: EngineProcess) -> None:
    client = create_app(slow, slow.config).test_client()
    answered: list = []
    asking = threading.Thread(target=lambda: answered.append(client.post("/prompt", json={"input_prompt": "hi"})))
    asking.start()
    wait_until(lambda: slow._pending)
    killed = slow.pid
    os.kill(killed, signal.SIGKILL)
    asking.join(30)
    response = answered[0]
    assert response.status_code == 503 and response.headers["Retry-After"]
    body = response.get_json()["error"]
    assert body["status"] == 503 and "engine process stopped (killed by signal 9)" in body["message"]
    # Meanwhile the probes say what happened.
    for probe in ("/health", "/ready"):
        down = client.get(probe)
        assert down.status_code == 503 and "engine process" in down.get_json()["error"]["message"], probe
    wait_until(lambda: slow.ready, timeout=120)
    assert slow.pid != killed and client.post("/prompt", json={"input_prompt": "hi"}).status_code == 200
    ready = client.get("/ready").get_json()
    assert ready["engine_process"]["restarts"] == 1
    assert ready["engine_process"]["last_exit"].startswith("killed by signal 9")
    assert client.get("/health").status_code == 200


def test_an_engine_process_stopped_by_sigterm_is_not_an_error_and_still_comes_back(
        slow: EngineProcess, caplog: pytest.LogCaptureFixture) -> None:
    """Ctrl-C of pft run, or a pod stopping, sends SIGTERM to the whole process group: the engine process goes first,
    and the server that is stopping too must not log an error about it. Alone, it is restarted all the same."""
    import logging

    wait_until(lambda: slow.ready, timeout=120)
    restarts = slow.restarts
    with caplog.at_level(logging.INFO, logger="model-inference-server"):
        os.kill(slow.pid, signal.SIGTERM)
        wait_until(lambda: slow.restarts == restarts + 1, timeout=60)
        wait_until(lambda: slow.ready, timeout=120)
    stopped = [r for r in caplog.records if "stopped by SIGTERM" in r.getMessage()]
    assert stopped and all(r.levelno == logging.INFO for r in stopped)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
