"""model-peft-server on a tiny random Llama: masking, batching, training, resume, TensorBoard, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import publish_inputs, train_argv, write_config
from private_finetuning.artifacts.store import ArtifactWriter, open_artifact
from private_finetuning.config import LoraSettings
from private_finetuning.data.chat import IGNORE_INDEX, encode_for_training, encode_prompt, with_system
from private_finetuning.errors import EXIT_BAD_INPUT, EXIT_INPUT_TIMEOUT
from private_finetuning.stages import model_relocation, peft_training
from private_finetuning.telemetry.status_server import StageStatus, StatusServer, create_app
from private_finetuning.training import recipe
from private_finetuning.training.batching import batch_order, padding_fraction
from private_finetuning.training.lora import apply_lora

FAST = {"max_steps": 6, "batch_size": 4, "checkpoint_every_steps": 2, "log_every_s": 0.01, "sample_generations": 2,
        "projector_tokens": 20, "warmup_steps": 1, "lora": {"r": 4, "alpha": 8}}


def train(tmp_path: Path, volumes: dict[str, Path], training: dict, **extra: object) -> int:
    config = write_config(tmp_path / "train.yaml", {"training": training, **extra})
    return peft_training.main(train_argv(config, volumes))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    return publish_inputs(tmp_path_factory.mktemp("inputs"), tiny_model_dir)


@pytest.fixture
def volumes(inputs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """The shared input volumes with a fresh fine-tuned-model volume per test."""
    return {**inputs, "fine-tuned-model": tmp_path / "fine-tuned-model"}


# --- masking and batching -------------------------------------------------------------------------

def test_only_assistant_tokens_carry_loss(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    messages = with_system([{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4"},
                            {"role": "user", "content": "w5"}, {"role": "assistant", "content": "w6"}], "w0")
    encoded = encode_for_training(tok, messages)
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(trained) == ["w3", "w4", "<|im_end|>", "w6", "<|im_end|>"]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(encoded.input_ids, encoded.labels, strict=True))
    # What is generated from at serving time is exactly the training context of the first answer.
    prompt = encode_prompt(tok, messages[:2])
    assert encoded.input_ids[:len(prompt)] == prompt


def test_the_tokens_stating_the_fact_weigh_more(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    messages = with_system([{"role": "user", "content": "w1 w4"}, {"role": "assistant", "content": "w3 w4 w5"}], "w0")
    encoded = encode_for_training(tok, messages, facts=["w4"], fact_weight=4.0)
    weighted = [(t, w) for t, w in zip(tok.convert_ids_to_tokens(encoded.input_ids), encoded.weights, strict=True)
                if w != 1.0]
    assert weighted == [("w4", 4.0)]  # the answer's w4, not the question's
    assert encoded.target_weight == encoded.target_tokens + 3
    assert encode_for_training(tok, messages).weights is None
    assert encode_for_training(tok, messages, facts=["w9"], fact_weight=4.0).weights is None  # not stated: no emphasis
    assert encode_for_training(tok, messages, facts=["w4"], fact_weight=1.0) == encode_for_training(tok, messages)
    # Numbers in the reply weigh as much, answer or not: "Giralda Court, rated 9.2" holds two facts.
    rated = with_system([{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w3 w4 , 9 . 2"}], "w0")
    encoded = encode_for_training(tok, rated, facts=["w4"], fact_weight=4.0)
    tokens = tok.convert_ids_to_tokens(encoded.input_ids)
    assert [t for t, w in zip(tokens, encoded.weights, strict=True) if w != 1.0] == ["w4", "9", "2"]


def test_layer_share_adapts_only_the_layers_nearest_the_output(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    def adapted(share: float) -> set[str]:
        model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSettings(r=2, layer_share=share))
        return {name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters() if p.requires_grad}

    assert adapted(0.5) == {"1"} and adapted(0.1) == {"1"}  # of layers 0 and 1; never none
    assert adapted(1.0) == {"0", "1"}


def test_system_prompt_is_added_unless_present() -> None:
    user = [{"role": "user", "content": "q"}]
    assert with_system(user, "S")[0] == {"role": "system", "content": "S"}
    own = [{"role": "system", "content": "mine"}, *user]
    assert with_system(own, "S") == own


def test_length_grouped_batches_cover_everything_with_less_padding() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(500)]
    grouped = batch_order(lengths, 8, seed=1, epoch=0, group_by_length=True)
    plain = batch_order(lengths, 8, seed=1, epoch=0, group_by_length=False)
    assert sorted(i for b in grouped for i in b) == list(range(500))
    assert padding_fraction(grouped, lengths) < 0.1 < padding_fraction(plain, lengths)
    assert grouped == batch_order(lengths, 8, seed=1, epoch=0, group_by_length=True)  # a resume replays it
    assert grouped != batch_order(lengths, 8, seed=1, epoch=1, group_by_length=True)


# --- a training run --------------------------------------------------------------------------------

def test_training_publishes_an_adapter_with_tensorboard_logs(tmp_path: Path, volumes: dict[str, Path],
                                                            capsys: pytest.CaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train(tmp_path, volumes, FAST) == 0
    # The sample answers go to TensorBoard; the pod log (shipped off the cluster) has no dataset text.
    logged = capsys.readouterr()
    eval_rows = (next(volumes["datasets"].glob("dataset/current")) / "eval.jsonl").read_text().splitlines()
    for row in eval_rows[:FAST["sample_generations"]]:
        for message in json.loads(row)["messages"]:
            assert message["content"] not in logged.out + logged.err
    out = volumes["fine-tuned-model"]
    adapter = open_artifact(out, "adapter", "lora-adapter")
    names = {f.path for f in adapter.manifest.files}
    assert names == {"adapter_model.safetensors", "adapter_config.json", "training_config.json"}
    meta = adapter.manifest.metadata
    assert meta["steps"] == 6 and meta["eval_loss"] > 0 and meta["tokens_per_s"] > 0
    assert adapter.manifest.source["dataset"]["kind"] == "dataset"
    assert json.loads(adapter.file("training_config.json").read_text())["training"]["max_steps"] == 6
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())

    run = out / meta["tensorboard_run"]
    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s", "eval/loss"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert "samples/eval_answers/text_summary" in events.Tags()["tensors"]
    projector = (run / "projector_config.pbtxt").read_text()
    assert "token_embeddings" in projector
    tensors = next(run.rglob("tensors.tsv")).read_text().splitlines()
    # The word-level test tokenizer knows few AcmeHotels words, so fewer than 20 distinct tokens occur.
    assert len(tensors) == meta["projector_tokens"] and 0 < meta["projector_tokens"] <= 20


def test_a_dataset_with_line_separators_inside_strings_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    """U+2028 is valid in a JSON string, and the dataset stage writes it unescaped; training reads it whole."""
    rows = [{"prompt": f"w{i} w{i + 1}\u2028w{i + 2}", "completion": f"w{i + 3}\u2029w{i + 4}\x85w5"}
            for i in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    volumes = publish_inputs(tmp_path, tiny_model_dir, {"source": {"type": "file", "path": "d.jsonl"},
                                                         "eval_fraction": 0.25})
    assert train(tmp_path, volumes, {**FAST, "max_steps": 2, "sample_generations": 1}) == 0
    assert open_artifact(volumes["fine-tuned-model"], "adapter", "lora-adapter").manifest.metadata["steps"] == 2


def test_loss_goes_down_on_data_it_can_learn(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Different questions, one answer: learnable even by a tiny random model, so the loss must fall.
    rows = [{"prompt": f"w{i} w{i + 1}", "completion": "w5 w6 w7"} for i in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    volumes = publish_inputs(tmp_path, tiny_model_dir,
                             {"source": {"type": "file", "path": str(tmp_path / "d.jsonl")}, "eval_fraction": 0.2})
    # The random model's frozen lm_head (std 0.02, after RMSNorm) caps its logits near +-1, so it could
    # never put most probability on one token; adapting lm_head too gives LoRA the reach to learn.
    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}
    training = {**FAST, "max_steps": 60, "learning_rate": 0.02, "lora": lora, "checkpoint_every_steps": 100}
    assert train(tmp_path, volumes, training) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((volumes["fine-tuned-model"] / "runs").iterdir())))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_rerun_with_same_inputs_is_a_no_op(tmp_path: Path, volumes: dict[str, Path],
                                           capsys: pytest.CaptureFixture) -> None:
    assert train(tmp_path, volumes, FAST) == 0
    first = (volumes["fine-tuned-model"] / "adapter" / "current").resolve()
    assert train(tmp_path, volumes, FAST) == 0
    assert (volumes["fine-tuned-model"] / "adapter" / "current").resolve() == first
    assert "already published from the same inputs" in capsys.readouterr().err


def test_killed_pod_resumes_from_its_checkpoint(tmp_path: Path, volumes: dict[str, Path]) -> None:
    config = write_config(tmp_path / "train.yaml", {"training": {**FAST, "max_steps": 300, "checkpoint_every_steps": 5,
                                                                 "sample_generations": 0}})
    argv = [sys.executable, "-m", "private_finetuning.stages.peft_training", *train_argv(config, volumes)]
    out = volumes["fine-tuned-model"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("checkpoints/*/latest/current/manifest.json")):
        assert first.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no cleanup at all, like an evicted pod
    first.wait()
    assert not (out / "adapter").exists()  # never a half-trained adapter
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = [line for line in second.stderr.splitlines() if "resuming from the checkpoint at step" in line]
    assert resumed, second.stderr[-2000:]
    assert int(resumed[0].split("at step ")[1].split()[0]) >= 5
    assert open_artifact(out, "adapter", "lora-adapter").manifest.metadata["steps"] == 300


def test_sigterm_saves_a_checkpoint_and_the_next_pod_repeats_no_step(tmp_path: Path, volumes: dict[str, Path]) -> None:
    """An eviction (SIGTERM, then SIGKILL after the grace period) at a random step, three times over: each
    pod exits 5, which the Job's podFailurePolicy ignores, having saved the step it reached; the next pod
    resumes exactly there, and the curve in TensorBoard has every step once."""
    import random

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = 40
    config = write_config(tmp_path / "train.yaml", {"training": {
        **FAST, "max_steps": total, "checkpoint_every_steps": 1000, "sample_generations": 0}})
    argv = [sys.executable, "-m", "private_finetuning.stages.peft_training", *train_argv(config, volumes)]
    out = volumes["fine-tuned-model"]
    rng = random.Random(7)
    resumed_at = []
    for _ in range(3):
        pod = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wanted = (resumed_at[-1] if resumed_at else 0) + rng.randint(2, 8)
        assert pod.stderr is not None
        for line in pod.stderr:  # the progress lines say which step the pod is at
            if f"step {wanted}/" in line or f"step {wanted + 1}/" in line:
                pod.send_signal(signal.SIGTERM)
                break
        rest = pod.communicate(timeout=120)[1]
        assert pod.returncode == 5, rest[-2000:]  # EXIT_INTERRUPTED: podFailurePolicy Ignore
        saved = int(rest.split("SIGTERM at step ")[1].split()[0])
        assert saved >= wanted
        resumed_at.append(saved)
        assert not (out / "adapter").exists()
    last = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert last.returncode == 0, last.stderr[-2000:]
    assert f"resuming from the checkpoint at step {resumed_at[-1]} of {total}" in last.stderr
    adapter = open_artifact(out, "adapter", "lora-adapter")
    assert adapter.manifest.metadata["steps"] == total
    events = EventAccumulator(str(out / adapter.manifest.metadata["tensorboard_run"]), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, total + 1))


# --- the status endpoint ---------------------------------------------------------------------------

def test_status_endpoint_routes() -> None:
    status = StageStatus("model-peft-server")
    status.update(phase="training", step=5, total_steps=20, loss=1.5)
    client = create_app(status).test_client()
    assert client.get("/health").get_json() == {"status": "ok", "stage": "model-peft-server"}
    progress = client.get("/progress").get_json()
    assert progress["phase"] == "training" and progress["step"] == 5 and progress["percent"] == 25.0


def test_status_server_answers_over_http() -> None:
    status = StageStatus("s")
    with StatusServer(status, host="127.0.0.1", port=0) as server:
        status.update(phase="waiting-for-inputs")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/progress", timeout=5) as response:
            assert json.load(response)["phase"] == "waiting-for-inputs"


def test_the_status_endpoint_listens_on_loopback_unless_the_pod_asks_for_every_interface(tmp_path: Path) -> None:
    """It bound 0.0.0.0 in code, so `pft run` exposed training's port 8080 on every interface of the machine."""
    from helpers import REPO
    from private_finetuning.deploy.local_runner.pods import pods_from_manifests
    from private_finetuning.deploy.local_runner.runtimes.process import local_command
    from private_finetuning.deploy.manifests import render

    with StatusServer(StageStatus("s"), port=0) as server:
        assert server.server.server_address[0] == "127.0.0.1"
    (training,) = [p for p in pods_from_manifests(render(REPO / "k8s" / "overlays" / "cpu"), repo=REPO, state=tmp_path)
                   if p.name == "model-peft"]
    assert training.args[training.args.index("--status-host") + 1] == "0.0.0.0"  # a pod: every interface
    argv = local_command(training)[0]
    assert argv[argv.index("--status-host") + 1] == "127.0.0.1"  # the same manifest run by `pft run`


def test_a_dataset_published_again_while_training_ran_is_trained_on_by_the_next_pod(
        tmp_path: Path, volumes: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A re-run's dataset relocation may finish after training read the previous run's dataset: that adapter would
    never be the one the evaluation waits for. Training stops without publishing (exit 5: a new pod, not a
    failure), and the next pod trains on the current dataset."""
    import shutil

    own = {**volumes, "datasets": tmp_path / "datasets"}
    shutil.copytree(volumes["datasets"], own["datasets"], symlinks=True)
    previous = open_artifact(own["datasets"], "dataset", "dataset")
    real_evaluate = recipe.evaluate_loss

    def relocation_finishes_meanwhile(*args: object, **kwargs: object) -> float:
        if open_artifact(own["datasets"], "dataset", "dataset").manifest.digest == previous.manifest.digest:
            with ArtifactWriter(own["datasets"], "dataset", kind="dataset", stage="test") as writer:
                for split in ("train", "eval"):
                    lines = previous.file(f"{split}.jsonl").read_text().splitlines()
                    (writer.path / f"{split}.jsonl").write_text("\n".join(lines[:-1] if split == "train" else lines)
                                                                + "\n")
                writer.commit(name="this run's", source={})
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(recipe, "evaluate_loss", relocation_finishes_meanwhile)
    settings = {**FAST, "sample_generations": 0}
    assert train(tmp_path, own, settings) == 5
    assert "was published again while training read the previous one" in capsys.readouterr().err
    assert not (own["fine-tuned-model"] / "adapter").exists()
    assert train(tmp_path, own, settings) == 0  # the next pod
    adapter = open_artifact(own["fine-tuned-model"], "adapter", "lora-adapter")
    assert adapter.manifest.source["dataset"]["digest"] == open_artifact(own["datasets"], "dataset",
                                                                         "dataset").manifest.digest
    assert adapter.manifest.source["dataset"]["digest"] != previous.manifest.digest


# --- bad input: a clear error, a non-zero exit, nothing published -----------------------------------

def assert_failed(code: int, expected_code: int, capsys: pytest.CaptureFixture, message: str, out: Path) -> None:
    err = capsys.readouterr().err
    assert code == expected_code, err[-2000:]
    assert message in err, err[-2000:]
    assert not (out / "adapter").exists()


def test_missing_inputs_time_out_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = {name: tmp_path / name for name in ("datasets", "base-model", "base-tokenizer", "fine-tuned-model")}
    code = train(tmp_path, empty, FAST, artifacts={"wait_timeout_s": 0.3, "poll_interval_s": 0.05})
    assert_failed(code, EXIT_INPUT_TIMEOUT, capsys, "waiting for the dataset artifact", empty["fine-tuned-model"])


def test_empty_dataset_is_refused(tmp_path: Path, volumes: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    datasets = tmp_path / "empty-datasets"
    with ArtifactWriter(datasets, "dataset", kind="dataset", stage="test") as writer:
        assert writer.path is not None
        (writer.path / "train.jsonl").write_text("")
        (writer.path / "eval.jsonl").write_text("")
        writer.commit(name="empty", source={})
    code = train(tmp_path, {**volumes, "datasets": datasets}, FAST)
    assert_failed(code, EXIT_BAD_INPUT, capsys, "no usable train examples", volumes["fine-tuned-model"])


def test_tokenizer_that_does_not_match_the_model(tmp_path: Path, tiny_model_dir: Path, volumes: dict[str, Path],
                                                 capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.vocab_size = 50
    small = tmp_path / "small-vocab"
    LlamaForCausalLM(config).save_pretrained(small)
    cfg = write_config(tmp_path / "m.yaml", {"model": {"source": {"type": "hf-folder", "path": str(small)}}})
    assert model_relocation.main(["--config", str(cfg), "--output", str(tmp_path / "small-base")]) == 0
    code = train(tmp_path, {**volumes, "base-model": tmp_path / "small-base"}, FAST)
    assert_failed(code, EXIT_BAD_INPUT, capsys, "does not match the base model (50 embedding rows",
                  volumes["fine-tuned-model"])


def test_lora_target_the_model_lacks(tmp_path: Path, volumes: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code = train(tmp_path, volumes, {**FAST, "lora": {"target_modules": ["q_proj", "c_attn"]}})
    assert_failed(code, EXIT_BAD_INPUT, capsys, "training.lora.target_modules: c_attn not in the base model",
                  volumes["fine-tuned-model"])


def test_nan_loss_stops_training(tmp_path: Path, tiny_model_dir: Path, volumes: dict[str, Path],
                                 capsys: pytest.CaptureFixture) -> None:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    broken = tmp_path / "nan-model"
    model.save_pretrained(broken)
    cfg = write_config(tmp_path / "m.yaml", {"model": {"source": {"type": "hf-folder", "path": str(broken)}}})
    assert model_relocation.main(["--config", str(cfg), "--output", str(tmp_path / "nan-base")]) == 0
    code = train(tmp_path, {**volumes, "base-model": tmp_path / "nan-base"}, FAST)
    assert_failed(code, EXIT_BAD_INPUT, capsys, "the training loss became nan at step 1", volumes["fine-tuned-model"])


def test_overlong_examples_are_named_or_dropped(tmp_path: Path, volumes: dict[str, Path],
                                                capsys: pytest.CaptureFixture) -> None:
    code = train(tmp_path, volumes, {**FAST, "max_seq_len": 8})
    assert_failed(code, EXIT_BAD_INPUT, capsys, "train.jsonl:1: tokens long with the chat template"[:12],
                  volumes["fine-tuned-model"])
    code = train(tmp_path, volumes, {**FAST, "max_seq_len": 8, "overlong": "drop"})
    assert_failed(code, EXIT_BAD_INPUT, capsys, "no usable train examples", volumes["fine-tuned-model"])


# --- data-parallel training under torchrun ------------------------------------------------------------

def test_two_process_torchrun_makes_the_same_kind_of_adapter(tmp_path: Path, volumes: dict[str, Path]) -> None:
    import socket

    from safetensors import safe_open

    single = {**volumes, "fine-tuned-model": tmp_path / "single"}
    assert train(tmp_path, single, {**FAST, "sample_generations": 0}) == 0
    config = write_config(tmp_path / "ddp.yaml", {"training": {**FAST, "sample_generations": 0}})
    double = {**volumes, "fine-tuned-model": tmp_path / "double"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # ranks talk over loopback only
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(port),
                             "-m", "private_finetuning.stages.peft_training", *train_argv(config, double)],
                            capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-parallel training (ddp): rank 1 of 2" in result.stderr
    one = open_artifact(single["fine-tuned-model"], "adapter", "lora-adapter")
    two = open_artifact(double["fine-tuned-model"], "adapter", "lora-adapter")
    assert {f.path for f in one.manifest.files} == {f.path for f in two.manifest.files}
    assert two.manifest.metadata["world_size"] == 2 and two.manifest.metadata["steps"] == 6
    with safe_open(one.file("adapter_model.safetensors"), "pt") as a, \
            safe_open(two.file("adapter_model.safetensors"), "pt") as b:
        names = list(a.keys())
        assert set(names) == set(b.keys())
        assert all(a.get_slice(k).get_shape() == b.get_slice(k).get_shape() for k in names)
    config_one = json.loads(one.file("adapter_config.json").read_text())
    config_two = json.loads(two.file("adapter_config.json").read_text())
    for config in (config_one, config_two):  # peft keeps target modules as a set: order varies
        config["target_modules"] = sorted(config["target_modules"])
    assert config_one == config_two


def test_the_run_says_its_schedule_and_a_time_budget_cuts_it(volumes: dict[str, Path],
                                                              capsys: pytest.CaptureFixture) -> None:
    """16 tiny records: 2 steps per epoch would be 6 steps; min_steps raises it; a 1 ms budget cuts it."""
    assert train(volumes["fine-tuned-model"].parent, volumes, {"batch_size": 8, "min_steps": 40, "time_budget_s": 0.001,
                                                               "sample_generations": 0, "projector_tokens": 0}) == 0
    err = capsys.readouterr().err
    assert "schedule: 16 facts, 8 per step: 2 steps per epoch; 3 epochs would be 6 steps, raised to " \
           "training.min_steps = 40 (20.0 epochs)" in err
    assert "cut to 6 steps (was 40) to end within training.time_budget_s = 0:00" in err
    adapter = open_artifact(volumes["fine-tuned-model"], "adapter", "lora-adapter")
    assert adapter.manifest.metadata["steps"] == 6



def test_held_back_questions_stop_training_when_they_stop_improving(tmp_path: Path, volumes: dict[str, Path],
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A user who sets time_budget_s null gets "trained enough": here a learning rate too small to move the held-back
    loss, so the second scoring shows no gain and training stops there, publishing the first scoring's weights.
    The base model's generated texts are checked (a random tiny model writes nothing usable: the rule variants stay)
    and none of them reaches the log."""
    training = {**FAST, "max_steps": 40, "learning_rate": 1e-7, "stopping": "held_back", "stop_check_every": 2,
                "stop_patience": 1, "generation": {"generator": "base", "samples": 1, "max_new_tokens": 8}}
    assert train(tmp_path, volumes, training) == 0
    meta = open_artifact(volumes["fine-tuned-model"], "adapter", "lora-adapter").manifest.metadata
    assert meta["steps"] == 4
    assert meta["stopping"]["stopped_by"] == "held_back" and meta["stopping"]["best_step"] == 2
    assert meta["stopping"]["held_back"] > 0 and meta["stopping"]["scorings"] == 2
    generation = meta["generation"]
    assert generation["generated_now"] > 0 and generation["precision"] == "fp32"
    assert generation["counts"]["question"]["kept"] == 0 and generation["facts_without"] > 0
    assert (volumes["fine-tuned-model"] / "generation-cache" / "generated.jsonl").is_file()
    logged = capsys.readouterr()
    assert "stopping at step 4" in logged.err and "publishing the weights of step 2" in logged.err
    train_rows = (next(volumes["datasets"].glob("dataset/current")) / "train.jsonl").read_text().splitlines()
    for row in train_rows:
        for message in json.loads(row)["messages"]:
            if message["role"] != "system":
                assert message["content"] not in logged.out + logged.err
