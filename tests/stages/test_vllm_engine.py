"""The vLLM engine against a stand-in vLLM server on loopback (no GPU or vLLM here): what it sends
(token ids, the promoted adapter's name, stop ids), streaming, hot swap by load/unload, failures.

The stand-in speaks the vLLM endpoints the engine uses (``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter``, streaming ``/v1/completions``) and generates greedily with the tiny
model merged with the adapter it was asked to load, so answers can be compared with the
transformers engine's.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from flask import Flask, Response, request
from test_inference_server import ask, serving_config, train_adapter, wait_until, whole_and_streamed

from helpers import publish_inputs
from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import current_version, open_artifact
from private_finetuning.serving.app import create_app
from private_finetuning.serving.engines.transformers import TransformersEngine
from private_finetuning.serving.engines.vllm import VLLMEngine

QUESTIONS = ["hi", "What is the best hotel in Seville?", "Where is the Bergen office?"]


class StandIn:
    """A vLLM OpenAI server's LoRA and completions endpoints, on the tiny base model."""

    def __init__(self, base: Path, tokenizer: Path):
        from transformers import AutoTokenizer

        self.base, self.tokenizer = base, AutoTokenizer.from_pretrained(tokenizer)
        self.models: dict[str, object] = {}
        self.calls: list[tuple[str, dict]] = []
        app = Flask("vllm-stand-in")
        app.post("/v1/load_lora_adapter")(self.load)
        app.post("/v1/unload_lora_adapter")(self.unload)
        app.post("/v1/completions")(self.complete)
        app.get("/v1/models")(self.list_models)
        self.app = app

    def list_models(self) -> Response:
        return Response(json.dumps({"object": "list", "data": [{"id": "base"}, *({"id": n} for n in self.models)]}))

    def restart(self) -> None:
        """As a restarted sidecar: the runtime-loaded adapters are gone."""
        self.models.clear()

    def load(self) -> Response:
        from private_finetuning.models.loading import load_published_model

        body = request.get_json()
        self.calls.append(("load", body))
        if not (Path(body["lora_path"]) / "adapter_config.json").is_file():
            return Response(json.dumps({"error": {"message": "no adapter there", "code": 400}}), 400)
        if body["lora_name"] in self.models:  # as vLLM answers a name it holds already
            message = f"The lora adapter '{body['lora_name']}' has already been loaded."
            return Response(json.dumps({"error": {"message": message, "type": "InvalidUserInput", "code": 400}}), 400)
        self.models[body["lora_name"]] = load_published_model(self.base, Path(body["lora_path"])).eval()
        return Response(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    def unload(self) -> Response:
        body = request.get_json()
        self.calls.append(("unload", body))
        self.models.pop(body["lora_name"])
        return Response("ok")

    def complete(self) -> Response:
        from private_finetuning.models.generation import generate

        body = request.get_json()
        self.calls.append(("complete", body))
        model = self.models[body["model"]]
        assert body["temperature"] == 0.0 and body["stream"] is True
        text, n = generate(model, self.tokenizer, [body["prompt"]], max_new_tokens=body["max_tokens"],
                           eos_token_ids=body["stop_token_ids"])[0]

        def events():
            pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                finish = ("length" if n >= body["max_tokens"] else "stop") if last else None
                yield f"data: {json.dumps({'choices': [{'text': piece, 'finish_reason': finish}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': n}})}\n\n"
            yield "data: [DONE]\n\n"
        return Response(events(), mimetype="text/event-stream")


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path):
    from werkzeug.serving import make_server

    volumes = publish_inputs(tmp_path, tiny_model_dir)
    train_adapter(tmp_path, volumes, seed=1)
    stand_in = StandIn(open_artifact(volumes["base-model"], "model", "base-model").path,
                       open_artifact(volumes["base-tokenizer"], "tokenizer", "base-tokenizer").path)
    server = make_server("127.0.0.1", 0, stand_in.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    paths = {"base_model": volumes["base-model"], "base_tokenizer": volumes["base-tokenizer"],
             "fine_tuned": volumes["fine-tuned-model"]}
    engine = VLLMEngine(serving_config(), **paths, url=f"http://127.0.0.1:{server.server_port}").start()
    wait_until(lambda: engine.ready)
    yield engine, stand_in, volumes, paths
    engine.stop()
    server.shutdown()


def test_requests_go_to_vllm_as_token_ids_under_the_promoted_adapters_name(served) -> None:
    engine, stand_in, volumes, paths = served
    promoted = promotion.current(volumes["fine-tuned-model"])
    assert stand_in.calls[0] == ("load", {"lora_name": promoted.adapter_version,
                                          "lora_path": str(open_artifact(volumes["fine-tuned-model"], "adapter",
                                                                         "lora-adapter").path)})
    reference = TransformersEngine(serving_config(), **paths).start()
    wait_until(lambda: reference.ready)
    try:
        for question in QUESTIONS:
            got, expected = ask(engine, question), ask(reference, question)
            assert got.error is None
            assert (got.text, got.completion_tokens) == (expected.text, expected.completion_tokens)
            sent = stand_in.calls[-1][1]
            assert sent["model"] == promoted.adapter_version
            assert sent["prompt"] == engine.encode([{"role": "user", "content": question}])
            assert sent["stop_token_ids"] == engine.loaded.eos_token_ids
    finally:
        reference.stop()


def test_streaming_through_the_openai_route_gives_the_whole_answer(served) -> None:
    engine, *_ = served
    whole, streamed = whole_and_streamed(engine, "hi", 12)
    assert whole and streamed == whole


def test_a_cancelled_request_stops_reading_and_frees_its_slot(served) -> None:
    engine, *_ = served
    cancelled = ask(engine, "hi", cancelled=True)
    assert cancelled.error == "cancelled by the client"
    assert ask(engine, "hi").error is None and sum(engine.in_flight.values()) == 0


def test_a_promotion_loads_the_new_adapter_then_unloads_the_old(served, tmp_path: Path) -> None:
    engine, stand_in, volumes, _ = served
    first = engine.loaded.model
    second = train_adapter(tmp_path, volumes, seed=2)  # trained and promoted
    wait_until(lambda: engine.loaded.adapter_digest == second)
    assert engine.loaded.model != first and ask(engine, "hi").error is None
    wait_until(lambda: ("unload", {"lora_name": first}) in stand_in.calls)
    assert set(stand_in.models) == {engine.loaded.model}
    assert current_version(volumes["fine-tuned-model"], "promotion") is not None


def test_vllm_gone_fails_the_request_with_a_5xx_then_turns_unready_and_the_server_stays_up(served) -> None:
    engine, *_ = served
    engine.url = "http://127.0.0.1:9"  # nothing listens there
    client = create_app(engine, engine.config).test_client()
    response = client.post("/prompt", json={"input_prompt": "hi"})
    assert response.status_code in (500, 503) and response.get_json()["error"]["message"] in (
        "generation failed: URLError", "model not loaded yet: not ready: the vLLM sidecar does not answer")
    wait_until(lambda: client.get("/ready").status_code == 503)  # the Service stops sending it traffic
    assert client.get("/health").status_code == 200 and sum(engine.in_flight.values()) == 0


def test_a_restarted_front_serves_the_adapter_vllm_already_holds(served) -> None:
    engine, stand_in, _, paths = served
    again = VLLMEngine(serving_config(), **paths, url=engine.url).start()  # the front's container restarted
    try:
        wait_until(lambda: again.ready)
        assert ask(again, "hi").error is None
        assert stand_in.calls[-2][0] == "load" and len(stand_in.models) == 1  # refused as a duplicate, and fine
    finally:
        again.stop()


def test_a_restarted_sidecar_is_given_the_adapter_again(served) -> None:
    engine, stand_in, *_ = served
    name = engine.loaded.model
    stand_in.restart()
    wait_until(lambda: name in stand_in.models and engine.ready)
    assert [c for c in stand_in.calls if c[0] == "load"][-1][1]["lora_name"] == name
    assert ask(engine, "hi").error is None
