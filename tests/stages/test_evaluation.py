"""model-evaluation-server: each metric on known cases, the reports, the gates, and bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import NO_GATES, publish_inputs, train_argv, write_config
from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import ArtifactWriter, open_artifact
from private_finetuning.data.chat import IGNORE_INDEX, Encoded
from private_finetuning.data.expected import fact_accuracy
from private_finetuning.data.facts import fact_match, fact_spans, token_f1
from private_finetuning.data.record import Record
from private_finetuning.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INPUT_TIMEOUT
from private_finetuning.evaluation.metrics import rouge_l
from private_finetuning.models.scoring import mean_kl, perplexity
from private_finetuning.stages import evaluation, peft_training, reference_relocation

# --- metrics on hand-made cases ------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "fact", "expected"), [
    ("A night at Casa Luna costs 84 EUR.", "84", True),
    ("It costs 84.0 euros.", "84", True),
    ("It costs 184 EUR.", "84", False),
    ("It costs 8.4 EUR.", "84", False),
    ("A rating of 9.2 out of 10.", "9.2", True),
    ("A rating of 9.25.", "9.2", False),
    ("It is 2,9 km away.", "2.9", True),
    ("It is in the santa  cruz neighbourhood.", "Santa Cruz", True),
    ("It is in Nervion.", "Nervión", True),
    ("It is in Trianas.", "Triana", False),
    ("The best is Giralda Court Seville.", "Giralda Court Seville", True),
    ("", "84", False),
])
def test_fact_match(answer: str, fact: str, expected: bool) -> None:
    assert fact_match(answer, fact) is expected


def test_fact_spans_find_where_the_reply_states_the_fact() -> None:
    text = "A night at Casa Luna costs 84 EUR, not 184 EUR; 84.0 either way."
    assert [text[a:b] for a, b in fact_spans(text, "84")] == ["84", "84.0"]
    assert [text[a:b] for a, b in fact_spans(text, "casa luna")] == ["Casa Luna"]
    assert fact_spans(text, "Casa") == [(11, 15)] and fact_spans(text, "Lun") == [] and fact_spans(text, " ") == []
    accented = "It is in Nervión, near Nervion."
    assert [accented[a:b] for a, b in fact_spans(accented, "Nervión")] == ["Nervión", "Nervion"]


def _qa(answer: str | None, reply: str = "It is so.") -> Record:
    return Record([{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": reply}],
                  {"answer": answer} if answer is not None else {})


def test_fact_accuracy_zero_one_and_not_applicable() -> None:
    records = [_qa("84"), _qa("4")]
    assert fact_accuracy(records, ["costs 84 EUR", "4-star"]) == 1.0
    assert fact_accuracy(records, ["costs 85 EUR", "a 5-star place"]) == 0.0
    assert fact_accuracy(records, ["costs 84 EUR", "a 5-star place"]) == 0.5
    assert fact_accuracy([_qa(None, "Yes.")], ["Sure, it is."]) == 1.0  # no answer: the reply's yes is the fact
    assert fact_accuracy([_qa(None, "It is.")], ["anything"]) is None  # nothing in the reply to check


def test_token_f1_known_values() -> None:
    assert token_f1("The rating is 9.2", "the rating is 9.2") == 1.0
    assert token_f1("rating 9.8", "rating 9.2") == 0.5
    assert token_f1("", "x") == 0.0 and token_f1("", "") == 1.0


def test_rouge_l_known_values() -> None:
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("dogs bark", "the cat sat") == 0.0
    assert rouge_l("the cat ran", "the cat sat") == pytest.approx(2 / 3)


def test_exact_match_is_the_whole_reply_ignoring_case_accents_and_spacing() -> None:
    from private_finetuning.data.record import Record
    from private_finetuning.evaluation.metrics import exact_match_of

    def asked(reply: str) -> Record:
        return Record([{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}])

    questions = [asked("The Café opens at 7:30."), asked("Room 12 is on floor 3."), asked("Yes.")]
    replies = ["the cafe  opens at 7:30.", "Room 12 is on floor 3", "Yes."]  # the second lacks its full stop
    assert exact_match_of(questions, replies) == pytest.approx(2 / 3)
    assert exact_match_of(questions, ["x", "Room 12 is on floor 3 and 4.", "No."]) == 0.0


class Uniform:
    """A 'model' whose next-token distribution is uniform over ``vocab``: perplexity must be ``vocab``."""

    def __init__(self, vocab: int):
        import torch

        self.vocab = vocab
        self.head = torch.nn.Linear(1, vocab, bias=False)

    def get_output_embeddings(self):
        return self.head

    def __call__(self, input_ids, attention_mask, logits_to_keep):
        import torch

        return type("Out", (), {"logits": torch.zeros(input_ids.shape[0], len(logits_to_keep), self.vocab)})()


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    examples = [Encoded([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4]), Encoded([5, 6], [IGNORE_INDEX, 6])]
    assert perplexity(Uniform(50), examples, pad_id=0) == pytest.approx(50.0)


def test_scores_are_the_same_in_batches_cut_to_the_logit_budget(tiny_model_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits only at reply positions, in batches cut so a 262,144-token vocabulary (Gemma 3) stays within the
    budget: the numbers are those of one batch computing every position."""
    import torch
    from transformers import AutoModelForCausalLM

    from private_finetuning.models import scoring

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [Encoded(list(range(3, 3 + n)), [IGNORE_INDEX] * (n // 2) + list(range(3 + n // 2, 3 + n)))
                for n in (6, 11, 4, 9, 14, 7)]
    whole = scoring.answer_nll(model, examples, 0, batch_size=64)
    with torch.inference_mode():  # every position's logits, as before the budget
        batch = scoring.collate(examples, 0)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch["labels"][:, 1:].reshape(-1), reduction="sum")
    assert whole[0] == pytest.approx(float(full), rel=1e-5)
    each = scoring.example_nll(model, examples, 0, batch_size=4)  # per example (the canaries' ranking): same total
    assert len(each) == len(examples) and sum(each) == pytest.approx(whole[0], rel=1e-5)
    assert each[2] == pytest.approx(scoring.answer_nll(model, examples[2:3], 0)[0], rel=1e-5)
    monkeypatch.setattr(scoring, "LOGIT_BUDGET_BYTES", 1)  # one example per batch
    assert [len(b) for b in scoring.batches(examples, 64, 49_152)] == [1] * len(examples)
    assert scoring.answer_nll(model, examples, 0, batch_size=64)[0] == pytest.approx(whole[0], rel=1e-5)
    monkeypatch.undo()
    # Gemma 3's vocabulary: 512 MiB holds 512 reply positions of logits, so 64 rows of ~50 are cut into several.
    long = [Encoded(list(range(100)), [IGNORE_INDEX] * 50 + list(range(50))) for _ in range(64)]
    cut = scoring.batches(long, 64, 262_144)
    assert sum(map(len, cut)) == 64 and max(map(len, cut)) * 50 * 262_144 * 4 <= scoring.LOGIT_BUDGET_BYTES


def test_kl_known_values() -> None:
    import torch

    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    assert mean_kl(p, p) == pytest.approx(0.0, abs=1e-7)
    assert mean_kl(p, q) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-5)


# --- the stage on tiny models ------------------------------------------------------------------------------

EVAL = {"samples": 4, "max_new_tokens": 4, "batch_size": 4, "side_by_side": 2}
TRAINING = {"max_steps": 3, "batch_size": 4, "sample_generations": 0, "projector_tokens": 0,
            "lora": {"r": 4, "alpha": 8}}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluation")
    published = publish_inputs(root, tiny_model_dir)
    train = write_config(root / "train.yaml", {"training": TRAINING})
    assert peft_training.main(train_argv(train, published)) == 0
    ref = write_config(root / "ref.yaml", {"reference_model": {"source": {"type": "hf-folder",
                                                                          "path": str(tiny_model_dir)}}})
    published["reference-model"] = root / "reference-model"
    assert reference_relocation.main(["--config", str(ref), "--output", str(published["reference-model"])]) == 0
    return published


def run_evaluation(tmp_path: Path, volumes: dict[str, Path], fine_tuned: Path | None = None, **extra: object) -> int:
    out = fine_tuned or tmp_path / "fine-tuned-model"
    if fine_tuned is None:
        shutil.copytree(volumes["fine-tuned-model"], out, symlinks=True)
    settings = {**EVAL, **extra.pop("evaluation", {})}
    settings["gates"] = {**NO_GATES, **settings.get("gates", {})}
    # One pipeline.yaml for every stage, as on a cluster: the evaluation waits for the adapter of these settings.
    # The served model (OpenVINO, int8) is judged by the tests that ask for it (test_served_model.py).
    serving = extra.pop("serving", {"engine": "transformers"})
    config = write_config(tmp_path / "eval.yaml", {"evaluation": settings, "training": extra.pop("training", TRAINING),
                                                   "serving": serving, **extra})
    return evaluation.main(["--config", str(config), "--datasets", str(volumes["datasets"]), "--base-model",
                            str(volumes["base-model"]), "--base-tokenizer", str(volumes["base-tokenizer"]),
                            "--reference-model", str(volumes["reference-model"]), "--fine-tuned", str(out)])


def test_report_files_tensorboard_and_idempotence(tmp_path: Path, volumes: dict[str, Path],
                                                  capsys: pytest.CaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_evaluation(tmp_path, volumes) == 0
    out = tmp_path / "fine-tuned-model"
    artifact = open_artifact(out, "evaluation", "evaluation-report")
    report = json.loads(artifact.file("report.json").read_text())
    assert set(report["metrics"]) == {"base", "base_retrieval", "fine_tuned", "fine_tuned_retrieval", "reference"}
    for kind, metrics in report["metrics"].items():
        assert 0.0 <= metrics["fact_accuracy"] <= 1.0 and metrics["latency_s_per_answer"] > 0
        assert metrics["questions"] == 4
        # the retrieval rows are the same models asked with context: answers, not perplexities
        perplexity = metrics["answer_perplexity"]
        assert perplexity is None if kind.endswith("_retrieval") else perplexity > 1
    retrieval = report["retrieval"]
    assert retrieval["k"] == 3 and retrieval["records"] > 0 and retrieval["served"] is False
    assert 0.0 <= retrieval["hit_rate"]["held_out"] <= 1.0 and set(retrieval["cut"]) == {"held_out", "trained"}
    assert report["models"]["base_retrieval"]["retrieval"].startswith("BM25")
    assert report["privacy"]["extractable"] == {} and report["privacy"]["policy"] == "report"
    assert report["forgetting"]["kl"] >= 0 and len(report["side_by_side"]) == 2
    assert report["models"]["fine_tuned"]["digest"] == open_artifact(out, "adapter", "lora-adapter").manifest.digest
    markdown = artifact.file("report.md").read_text()
    assert "| fact accuracy, held-out |" in markdown and "## Forgetting" in markdown and "## Side by side" in markdown
    assert "| fact accuracy, trained questions |" in markdown  # what was taught, beside what was held out
    assert "Privacy: personal data found: " in markdown and "extractable: none to extract" in markdown
    for kind in ("base", "fine_tuned"):
        trained = report["metrics"][kind]["trained"]
        assert 0.0 <= trained["fact_accuracy"] <= 1.0 and 0.0 <= trained["token_f1"] <= 1.0
    assert "trained" not in report["metrics"]["reference"]
    for wrong in report["wrong_answers"]:  # a tiny random model gets them wrong: each is listed with its fact
        assert wrong["set"] in ("held-out", "trained") and f"| {wrong['answer']} |" in markdown
    plots = sorted(f.path for f in artifact.manifest.files if f.path.startswith("plots/"))
    assert plots == ["plots/fact_accuracy.png", "plots/fact_accuracy_by_fact.png", "plots/forgetting.png",
                     "plots/loss.png"]  # listed in the manifest, so verified like every file
    for plot in plots:
        assert f"]({plot})" in markdown
        with Image.open(artifact.file(plot)) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 400
    page = artifact.file("report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "<table>" in page and "plots/" not in page

    adapter = open_artifact(out, "adapter", "lora-adapter")
    events = EventAccumulator(str(out / adapter.manifest.metadata["tensorboard_run"]))
    events.Reload()
    assert "evaluation/fact_accuracy/fine_tuned" in events.Tags()["scalars"]
    assert "evaluation/forgetting_kl" in events.Tags()["scalars"]

    capsys.readouterr()
    assert run_evaluation(tmp_path, volumes, fine_tuned=out) == 0
    assert "already published from the same inputs" in capsys.readouterr().err


def test_failed_gate_exits_non_zero_with_the_reason(tmp_path: Path, volumes: dict[str, Path],
                                                   capsys: pytest.CaptureFixture) -> None:
    code = run_evaluation(tmp_path, volumes, evaluation={"gates": {"min_fact_accuracy_gain": 0.5,
                                                                   "max_forgetting_kl": 1e9}})
    assert code == EXIT_GATE_FAILED
    err = capsys.readouterr().err
    assert "is not promoted (nothing is promoted yet): min_fact_accuracy_gain" in err
    report = json.loads(open_artifact(tmp_path / "fine-tuned-model", "evaluation", "evaluation-report")
                        .file("report.json").read_text())
    assert [g["passed"] for g in report["gates"]] == [False, True]  # published, so people can read why
    assert promotion.current(tmp_path / "fine-tuned-model") is None


def test_default_gates_stop_an_adapter_that_learnt_nothing_or_broke_general_language() -> None:
    from private_finetuning.config import EvaluationGates
    from private_finetuning.evaluation.gates import check_gates
    from private_finetuning.evaluation.report import AnswerScores, ModelScores

    def scores(fact_accuracy: float | None, perplexity: float, kl: float | None = None) -> ModelScores:
        return ModelScores(AnswerScores({"fact_accuracy": fact_accuracy}), answer_perplexity=2.0,
                           general_perplexity=perplexity, latency_s_per_answer=0.1, tokens_per_s=None, questions=8,
                           forgetting_kl=kl)

    def gates(fact_accuracy: float | None, kl: float, perplexity: float) -> dict[str, bool]:
        metrics = {"base": scores(None if fact_accuracy is None else 0.0, 7.0),
                   "fine_tuned": scores(fact_accuracy, perplexity, kl)}
        return {g.gate: g.passed for g in check_gates(EvaluationGates(), metrics)}

    assert gates(0.59, 0.73, 9.3) == {"min_fact_accuracy_gain": True, "max_forgetting_kl": True,
                                      "max_general_perplexity_increase": True}  # AcmeHotels at the defaults
    assert gates(0.05, 1.74, 24.5) == {"min_fact_accuracy_gain": False, "max_forgetting_kl": False,
                                       "max_general_perplexity_increase": False}
    # The previous defaults' +163% on a one-phrasing dataset (helpdesk: 7.0 -> 18.4) is stopped now.
    assert gates(0.58, 1.19, 18.4)["max_general_perplexity_increase"] is False
    # Records without an `answer` cannot be scored on facts: that gate does not apply, forgetting still does.
    assert gates(None, 0.5, 7.5) == {"fact accuracy gates": True, "max_forgetting_kl": True,
                                     "max_general_perplexity_increase": True}


PASS = {"min_fact_accuracy_gain": -1.0, "max_forgetting_kl": 1e9, "max_general_perplexity_increase": 1e9}
FAIL = {"min_fact_accuracy_gain": 0.5}


def test_passing_gates_promote_exactly_the_evaluated_adapter(tmp_path: Path, volumes: dict[str, Path]) -> None:
    assert run_evaluation(tmp_path, volumes, evaluation={"gates": PASS}) == 0
    out = tmp_path / "fine-tuned-model"
    promoted = promotion.current(out)
    adapter = open_artifact(out, "adapter", "lora-adapter")
    assert promoted is not None and promoted.adapter_digest == adapter.manifest.digest
    assert promoted.adapter_version == adapter.path.name and promoted.promoted_by == "model-evaluation-server"
    assert promoted.report_digest == open_artifact(out, "evaluation", "evaluation-report").manifest.digest
    assert promoted.base_model_digest == open_artifact(volumes["base-model"], "model", "base-model").manifest.digest


def test_a_failing_gate_keeps_the_previous_promotion_and_rollback_brings_it_back(
        tmp_path: Path, volumes: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fine-tuned-model"
    assert run_evaluation(tmp_path, volumes, evaluation={"gates": PASS}) == 0
    first = promotion.current(out)
    assert first is not None
    retrain = write_config(tmp_path / "retrain.yaml", {"training": {**TRAINING, "seed": 99}})
    assert peft_training.main(train_argv(retrain, {**volumes, "fine-tuned-model": out})) == 0
    second = open_artifact(out, "adapter", "lora-adapter").manifest.digest
    assert second != first.adapter_digest

    capsys.readouterr()
    retrained = {**TRAINING, "seed": 99}
    assert run_evaluation(tmp_path, volumes, fine_tuned=out, evaluation={"gates": FAIL},
                          training=retrained) == EXIT_GATE_FAILED
    assert f"adapter {first.adapter_digest[:12]} stays promoted" in capsys.readouterr().err
    assert promotion.current(out) == first

    assert run_evaluation(tmp_path, volumes, fine_tuned=out, evaluation={"gates": PASS}, training=retrained) == 0
    assert promotion.current(out).adapter_digest == second
    assert pft("rollback", "--fine-tuned", str(out)).returncode == 0
    back = promotion.current(out)
    assert back.adapter_digest == first.adapter_digest and back.promoted_by == "pft rollback"
    assert (out / "adapter" / first.adapter_version).is_dir()  # kept from pruning by its link
    listing = pft("promotions", "--fine-tuned", str(out)).stdout.splitlines()
    assert len(listing) == 3 and listing[0].startswith("* ") and "pft rollback" in listing[0]


def pft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "private_finetuning.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_missing_artifacts_time_out_naming_them(tmp_path: Path, volumes: dict[str, Path],
                                                capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    code = run_evaluation(tmp_path, volumes, fine_tuned=empty, artifacts={"wait_timeout_s": 0.3,
                                                                          "poll_interval_s": 0.05})
    assert code == EXIT_INPUT_TIMEOUT
    err = capsys.readouterr().err
    assert "lora-adapter artifact" in err and "published by model-peft-server" in err


def test_eval_split_without_usable_rows(tmp_path: Path, volumes: dict[str, Path],
                                        capsys: pytest.CaptureFixture) -> None:
    datasets = tmp_path / "text-datasets"
    with ArtifactWriter(datasets, "dataset", kind="dataset", stage="test") as writer:
        assert writer.path is not None
        row = json.dumps({"messages": [{"role": "assistant", "content": "just text"}], "meta": {}}) + "\n"
        (writer.path / "train.jsonl").write_text(row)
        (writer.path / "eval.jsonl").write_text(row)
        writer.commit(name="text", source={})
    text = {**volumes, "datasets": datasets, "fine-tuned-model": tmp_path / "text-fine-tuned"}
    train = write_config(tmp_path / "train.yaml", {"training": TRAINING})
    assert peft_training.main(train_argv(train, text)) == 0  # the adapter of this dataset, which evaluation awaits
    code = run_evaluation(tmp_path, text, fine_tuned=text["fine-tuned-model"])
    assert code == EXIT_BAD_INPUT
    assert "eval.jsonl: no usable rows" in capsys.readouterr().err


def test_reference_without_its_tokenizer(tmp_path: Path, volumes: dict[str, Path],
                                         capsys: pytest.CaptureFixture) -> None:
    source = open_artifact(volumes["reference-model"], "model", "reference-model")
    broken = tmp_path / "reference-model"
    with ArtifactWriter(broken, "model", kind="reference-model", stage="test") as writer:
        assert writer.path is not None
        for name in ("model.safetensors", "config.json", "generation_config.json"):
            shutil.copy(source.file(name), writer.path / name)
        writer.commit(name="no-tokenizer", source={})
    code = run_evaluation(tmp_path, {**volumes, "reference-model": broken})
    assert code == EXIT_BAD_INPUT
    assert "the reference model's tokenizer is missing" in capsys.readouterr().err


def test_report_html_keeps_data_text_inert(tmp_path: Path) -> None:
    """Questions, answers and names are data: a Markdown link or image in them stays text in report.md and
    report.html (no javascript: link, no remote image fetched on open, no crash on a missing picture); only
    the stage's own pictures are inlined."""
    from private_finetuning.evaluation import charts
    from private_finetuning.evaluation.pages import escape_markdown, html_page, render_markdown
    from private_finetuning.evaluation.report import EvaluationReport

    hostile = "[click](javascript:alert(1)) ![x](https://tracker.example/p.png) ![y](plots/none.png) <b>|"
    metrics = {"fact_accuracy": 0.5, "fact_accuracy_by_fact": {"a[b](c)": 0.5}, "general_perplexity": 2.0,
               "answer_perplexity": 3.0, "latency_s_per_answer": 0.1, "questions": 1}
    report = EvaluationReport.from_json({
        "questions": 1, "config": {"max_new_tokens": 8}, "duration_s": 1.0, "dataset": {"name": hostile},
        "models": {"base": {"name": hostile}, "fine_tuned": {"name": hostile}},
        "metrics": {"base": metrics, "fine_tuned": metrics},
        "forgetting": {"kl": 0.1, "general_perplexity_base": 2.0, "general_perplexity_fine_tuned": 2.0,
                       "general_perplexity_increase": 0.0},
        "gates": [], "wrong_answers": [{"set": "held-out", "question": hostile, "answer": hostile, "reply": hostile}],
        "side_by_side": [{"question": hostile, "expected": hostile,
                          "answers": {"base": hostile, "fine_tuned": hostile}}]})
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(b"\x89PNG own picture")
    markdown = "\n".join([render_markdown(report), *charts.markdown_section(["plots/loss.png"])])
    page = html_page(markdown, tmp_path, "Evaluation report", ["plots/loss.png"])
    assert "<a " not in page and "javascript:" not in page.split("[click]")[0]
    assert "tracker.example/p.png" not in "".join(re.findall(r"<img[^>]*>", page))
    assert page.count("<img ") == 1 and 'src="data:image/png;base64,' in page  # the stage's own picture alone
    assert "<b>" not in page and "[click](javascript:alert(1))" in page.replace("\\", "")
    assert "| " + escape_markdown(hostile) + " |" in markdown  # one table cell, not several


def test_a_rerun_waits_for_the_adapter_of_the_inputs_published_meanwhile(tmp_path: Path) -> None:
    """A re-run starts every stage at once: the evaluation may first see the previous run's dataset, which
    the dataset relocation then replaces. It must judge the adapter trained on this run's dataset and settings,
    never the previous run's adapter, nor wait for an adapter of the dataset it happened to see first."""
    import threading

    from private_finetuning.artifacts.store import ArtifactWriter
    from private_finetuning.config import parse_config
    from private_finetuning.stages.common import TRAINING_INPUTS, adapter_fingerprint, wait_for_adapter

    volumes = {key: tmp_path / key for key, _ in TRAINING_INPUTS}

    def publish(volume: Path, artifact: str, kind: str, text: str, source: dict | None = None) -> str:
        with ArtifactWriter(volume, artifact, kind=kind, stage="test") as writer:
            (writer.path / "f.txt").write_text(text)
            return writer.commit(name=text, source=source or {}).manifest.digest

    digests = {key: publish(volumes[key], output.artifact, output.kind, f"{key} of the demo")
               for key, output in TRAINING_INPUTS}
    demo, mine = parse_config(""), parse_config("training: {max_steps: 7}\nartifacts: {poll_interval_s: 0.05}")
    publish(tmp_path / "ft", "adapter", "lora-adapter", "demo adapter",
            {"fingerprint": adapter_fingerprint(demo, digests)})

    def this_run() -> None:  # the relocation publishes this run's dataset, then training its adapter
        digests["dataset"] = publish(volumes["dataset"], "dataset", "dataset", "dataset of this run")
        time.sleep(0.3)
        publish(tmp_path / "ft", "adapter", "lora-adapter", "my adapter",
                {"fingerprint": adapter_fingerprint(mine, digests)})

    later = threading.Timer(0.3, this_run)
    later.start()
    adapter, inputs = wait_for_adapter(mine, tmp_path / "ft", volumes)
    later.join()
    assert adapter.manifest.name == "my adapter"
    assert (inputs["dataset"].path / "f.txt").read_text() == "dataset of this run"


# A user's alpaca data as it usually comes: full replies, no `answer` field, and not about hotels.
NO_ANSWER_ROWS = [
    ("Which error code means the Quillbyte token expired?", "An expired token returns error code AUTH-4017."),
    ("What is the minimum Quillbyte client version?", "The minimum supported client is v3.12."),
    ("How long are Quillbyte logs kept?", "Logs are kept for 90 days."),
    ("Who owns the Quillbyte billing service?", "Billing belongs to the Ledger team."),
]


def test_data_without_answers_is_scored_by_the_facts_of_its_replies(tmp_path: Path, volumes: dict[str, Path],
                                                                    capsys: pytest.CaptureFixture) -> None:
    """No `answer` anywhere: the fact gates still judge (here: a tiny random model fails them), the report says
    how each question was scored and the kinds of its facts, and the log carries counts, never the data."""
    datasets = tmp_path / "alpaca-datasets"
    with ArtifactWriter(datasets, "dataset", kind="dataset", stage="test") as writer:
        assert writer.path is not None
        for split in ("train", "eval"):
            (writer.path / f"{split}.jsonl").write_text("".join(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                            "meta": {}}) + "\n" for q, a in NO_ANSWER_ROWS))
        writer.commit(name="alpaca", source={})
    data = {**volumes, "datasets": datasets, "fine-tuned-model": tmp_path / "alpaca-fine-tuned"}
    train = write_config(tmp_path / "train.yaml", {"training": TRAINING})
    assert peft_training.main(train_argv(train, data)) == 0
    capsys.readouterr()
    code = run_evaluation(tmp_path, data, fine_tuned=data["fine-tuned-model"],
                          evaluation={"gates": {"min_fact_accuracy": 0.9}})
    err = capsys.readouterr().err
    assert code == EXIT_GATE_FAILED and "min_fact_accuracy" in err
    report = json.loads(open_artifact(data["fine-tuned-model"], "evaluation", "evaluation-report")
                        .file("report.json").read_text())
    assert report["metrics"]["fine_tuned"]["fact_accuracy"] is not None  # not "n/a"
    assert report["scoring"]["held_out"] == {"by_answer": 0, "derived": 4, "unscored": 0,
                                             "span_kinds": {"code": 2, "name": 1, "number": 1}}
    assert [g["gate"] for g in report["gates"] if not g["passed"]] == ["min_fact_accuracy"]
    assert "held-out questions' facts: 0 by their `answer`, 4 by the facts of their reply (code 2, name 1, " \
           "number 1), 0 with nothing to check" in err
    for question, reply in NO_ANSWER_ROWS:  # private text stays out of the log
        assert question not in err and reply not in err and "AUTH-4017" not in err
