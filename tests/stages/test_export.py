"""model-export-server: what a user moving the model to llama.cpp, Ollama or transformers gets."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import NO_GATES, publish_inputs, train_argv, write_config
from private_finetuning.artifacts.store import open_artifact
from private_finetuning.errors import EXIT_GATE_FAILED, ExportError
from private_finetuning.export import gguf_file, ollama
from private_finetuning.stages import evaluation, model_export, peft_training

EXPORT = {"check_questions": 6}
EVAL = {"samples": 4, "max_new_tokens": 6, "batch_size": 4, "include_reference": False, "gates": NO_GATES}


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a byte-level BPE vocabulary (the kind GGUF writes), trained in a second."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from private_finetuning.data.chat_templates import BUILTIN
    from private_finetuning.data.general import GENERAL_CONVERSATIONS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    text = [q + " " + a for q, a in GENERAL_CONVERSATIONS] * 3 + ["system user assistant hotel price rating"]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = BUILTIN["chatml"].template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.bos_token_id, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("bpe-model")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


TRAINING = {"max_steps": 3, "batch_size": 4, "sample_generations": 0, "projector_tokens": 0,
            "lora": {"r": 4, "alpha": 8}}


def promoted_volumes(root: Path, model_dir: Path, gates: dict | None = None, engine: str = "transformers"
                     ) -> dict[str, Path]:
    """Inputs, a trained adapter and its evaluation; ``engine: openvino`` also judges and promotes a served model."""
    volumes = publish_inputs(root, model_dir)
    train = write_config(root / "train.yaml", {"training": TRAINING})
    assert peft_training.main(train_argv(train, volumes)) == 0
    # One pipeline.yaml for every stage, as on a cluster: the evaluation waits for the adapter of these settings.
    config = write_config(root / "eval.yaml", {"training": TRAINING, "serving": {"engine": engine},
                                               "evaluation": {**EVAL, "gates": {**NO_GATES, **(gates or {})}}})
    evaluation.main(["--config", str(config), "--datasets", str(volumes["datasets"]), "--base-model",
                     str(volumes["base-model"]), "--base-tokenizer", str(volumes["base-tokenizer"]),
                     "--reference-model", str(root / "unused"), "--fine-tuned", str(volumes["fine-tuned-model"])])
    volumes["exports"] = root / "exports"
    return volumes


def run_export(root: Path, volumes: dict[str, Path], **export: object) -> int:
    config = write_config(root / "export.yaml", {"training": TRAINING, "evaluation": EVAL,
                                                 "export": {**EXPORT, **export},
                                                 "artifacts": {"wait_timeout_s": 5, "poll_interval_s": 0.2}})
    return model_export.main(["--config", str(config), "--datasets", str(volumes["datasets"]), "--base-model",
                              str(volumes["base-model"]), "--base-tokenizer", str(volumes["base-tokenizer"]),
                              "--fine-tuned", str(volumes["fine-tuned-model"]), "--output", str(volumes["exports"])])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, bpe_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    volumes = promoted_volumes(root, bpe_model_dir, engine="openvino")
    assert run_export(root, volumes) == 0
    return volumes


def test_exports_every_format_and_lists_them_in_the_manifest(exported: dict[str, Path]) -> None:
    artifact = open_artifact(exported["exports"], "export", "model-export")  # verified: every file checksummed
    files = {f.path for f in artifact.manifest.files}
    assert {"merged/model.safetensors", "merged/config.json", "merged/tokenizer.json", "merged/chat_template.jinja",
            "acmehotels-assistant-f16.gguf", "acmehotels-assistant-q8_0.gguf", "Modelfile", "README.md"} <= files
    assert json.loads(artifact.file("merged/config.json").read_text())["dtype"] == "float16"
    sizes = {f.path: f.size for f in artifact.manifest.files}
    assert sizes["acmehotels-assistant-q8_0.gguf"] < sizes["acmehotels-assistant-f16.gguf"]
    trip = artifact.manifest.metadata["round_trip"]
    assert trip["questions"] == 6 and trip["f16_equal"] == 6
    # The served model, the very files the evaluation judged and the promotion names, for OpenVINO Model Server.
    served = open_artifact(exported["fine-tuned-model"], "served-model", "served-model-openvino")
    for entry in served.manifest.files:
        assert artifact.file(f"openvino/{entry.path}").read_bytes() == served.file(entry.path).read_bytes()
    assert "judged at f32" in artifact.manifest.metadata["files"]["openvino/"]


def test_the_f16_gguf_holds_the_merged_weights_and_tokenizer_exactly(exported: dict[str, Path]) -> None:
    """What transformers (and so any GGUF reader) loads is the merged model, bit for bit, same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = open_artifact(exported["exports"], "export", "model-export").path
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file="acmehotels-assistant-f16.gguf",
                                                dtype=torch.float32)
    a, b = merged.state_dict(), gguf.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "a tensor changed on the way through GGUF"
    tok_merged = AutoTokenizer.from_pretrained(folder / "merged")
    tok_gguf = AutoTokenizer.from_pretrained(folder, gguf_file="acmehotels-assistant-f16.gguf")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    assert tok_gguf.apply_chat_template(chat, add_generation_prompt=True) == \
        tok_merged.apply_chat_template(chat, add_generation_prompt=True)
    assert tok_gguf.eos_token == tok_merged.eos_token == "<|im_end|>"


def test_q8_0_stays_close_to_the_merged_weights(exported: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = open_artifact(exported["exports"], "export", "model-export").path
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32).state_dict()
    q8 = AutoModelForCausalLM.from_pretrained(folder, gguf_file="acmehotels-assistant-q8_0.gguf",
                                              dtype=torch.float32).state_dict()
    weight = "model.layers.0.self_attn.q_proj.weight"
    error = (merged[weight] - q8[weight]).abs().max() / merged[weight].abs().max()
    assert 0 < error < 0.01  # quantized (not a copy), within Q8_0's 1/127 per-block step


def _go_render(template: str, system: str, messages: list[tuple[str, str]]) -> str:
    """Just enough of Go's text/template to run the Modelfile's TEMPLATE (it uses no trim markers)."""
    tokens = re.split(r"({{.*?}})", template)

    def parse(i: int) -> tuple[list, int, str | None]:
        nodes: list = []
        while i < len(tokens):
            token = tokens[i]
            action = token[2:-2].strip() if token.startswith("{{") else None
            if action in ("end",) or (action or "").startswith("else if"):
                return nodes, i, action
            if action == "range .Messages":
                body, i, _ = parse(i + 1)
                nodes.append(("range", body))
            elif (action or "").startswith("if eq .Role"):
                branches = []
                while True:
                    body, i, stop = parse(i + 1)
                    branches.append((json.loads(action.rsplit(" ", 1)[1]), body))
                    if stop == "end":
                        break
                    action = stop
                nodes.append(("if", branches))
            else:
                nodes.append(("text", token) if action is None else ("var", action))
            i += 1
        return nodes, i, None

    def run(nodes: list, message: tuple[str, str] | None) -> str:
        out = []
        for kind, value in nodes:
            if kind == "text":
                out.append(value)
            elif kind == "var":
                out.append({".System": system, ".Content": message[1] if message else ""}.get(value)
                           or json.loads(value))
            elif kind == "range":
                out += [run(value, m) for m in messages]
            else:
                out.append(next((run(body, message) for role, body in value if message and role == message[0]), ""))
        return "".join(out)

    return run(parse(0)[0], None)


def test_the_modelfile_template_renders_the_chat_template_exactly(exported: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    folder = open_artifact(exported["exports"], "export", "model-export").path
    text = (folder / "Modelfile").read_text()
    assert "FROM ./acmehotels-assistant-q8_0.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S).group(1)
    turns = [("user", "Which floor is the VPN desk on?"), ("assistant", "The 4th."), ("user", "And the SLA?")]
    tokenizer = AutoTokenizer.from_pretrained(folder / "merged")
    expected = tokenizer.apply_chat_template([{"role": "system", "content": system}]
                                             + [{"role": r, "content": c} for r, c in turns],
                                             tokenize=False, add_generation_prompt=True)
    assert _go_render(template, system, turns) == expected


def test_a_template_that_depends_on_position_is_refused(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.chat_template = ("{% for m in messages %}{% if loop.last %}LAST {% endif %}"
                               "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(ExportError, match="depends on more than each message's role"):
        ollama.turn_format(tokenizer)
    tokenizer.chat_template = "{% for m in messages if m['role'] != 'system' %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ExportError, match="drops the system"):
        ollama.turn_format(tokenizer)


def test_the_model_card_names_digests_never_the_data(exported: dict[str, Path]) -> None:
    folder = open_artifact(exported["exports"], "export", "model-export").path
    card = (folder / "README.md").read_text()
    for volume, artifact, kind in (("base-model", "model", "base-model"), ("datasets", "dataset", "dataset")):
        assert open_artifact(exported[volume], artifact, kind).manifest.digest in card
    assert card.startswith("---\n") and "base_model:" in card and "never left it" in card
    assert "## Evaluation" in card and "## Limitations" in card and "6/6 greedy answers" in card
    assert "| served |" in card and "held-out answers are identical to the fine-tuned model's" in card
    assert "Fact accuracy of the " in card and "by their `answer`" in card  # how its facts were judged
    rows = [json.loads(line) for split in ("train.jsonl", "eval.jsonl")
            for line in open_artifact(exported["datasets"], "dataset", "dataset").file(split).read_text().splitlines()]
    for row in rows:
        for message in row["messages"]:
            if message["role"] != "system":
                assert message["content"] not in card, "a dataset row leaked into the model card"


def test_same_inputs_export_nothing_new(exported: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert run_export(tmp_path, exported) == 0
    assert "already published from the same inputs" in capsys.readouterr().err


def test_an_adapter_that_failed_its_gates_is_not_exported(tmp_path: Path, bpe_model_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    volumes = promoted_volumes(tmp_path, bpe_model_dir, gates={"min_fact_accuracy_gain": 2.0})
    capsys.readouterr()
    assert run_export(tmp_path, volumes) == EXIT_GATE_FAILED
    assert "failed its evaluation gates" in capsys.readouterr().err
    assert not (volumes["exports"] / "export").exists()


def test_a_vocabulary_gguf_cannot_hold_exports_the_merged_model_only(tmp_path: Path, tiny_model_dir: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    volumes = promoted_volumes(tmp_path, tiny_model_dir)  # a word-level tokenizer
    assert run_export(tmp_path, volumes, check_questions=2) == 0
    artifact = open_artifact(volumes["exports"], "export", "model-export")
    assert not any(f.path.endswith(".gguf") or f.path == "Modelfile" for f in artifact.manifest.files)
    assert "WordLevel" in artifact.manifest.metadata["gguf_skipped"]
    assert "No GGUF was written" in artifact.file("README.md").read_text()


def test_rotary_permutation_matches_the_interleaved_layout() -> None:
    """Row pairs (i, i + d/2) of each head become neighbours, which is what llama.cpp's RoPE expects."""
    import numpy as np

    heads, dim = 2, 4
    rows = np.arange(heads * dim, dtype=np.float32)[:, None]
    assert gguf_file.rotary_permute(rows, heads)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_a_disabled_export_publishes_nothing(tmp_path: Path, exported: dict[str, Path]) -> None:
    volumes = {**exported, "exports": tmp_path / "exports"}
    shutil.rmtree(tmp_path / "exports", ignore_errors=True)
    assert run_export(tmp_path, volumes, enabled=False) == 0
    assert not (tmp_path / "exports").exists()


def test_a_gguf_base_keeps_its_llama_cpp_pre_tokenizer_name_through_relocation(tmp_path: Path,
                                                                                bpe_model_dir: Path) -> None:
    """transformers drops `tokenizer.ggml.pre` on load; the tokenizer stage keeps it for the GGUF export."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from private_finetuning.stages import tokenizer_relocation

    source = tmp_path / "source"
    shutil.copytree(bpe_model_dir, source)
    (source / "gguf_tokenizer.json").write_text(json.dumps({"tokenizer.ggml.pre": "smollm"}))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    config = json.loads((source / "config.json").read_text())
    gguf_file.write_gguf(tmp_path / "base.gguf", model.state_dict(), config, source,
                         AutoTokenizer.from_pretrained(source), name="base", kind="f16")
    gguf_source = {"type": "gguf", "path": str(tmp_path / "base.gguf")}
    cfg = write_config(tmp_path / "tok.yaml", {"model": {"source": gguf_source}})
    assert tokenizer_relocation.main(["--config", str(cfg), "--output", str(tmp_path / "tok")]) == 0
    published = open_artifact(tmp_path / "tok", "tokenizer", "base-tokenizer")
    keys = json.loads(published.file("gguf_tokenizer.json").read_text())
    assert keys["tokenizer.ggml.pre"] == "smollm" and keys["tokenizer.ggml.model"] == "gpt2"


def test_modelfile_strings_are_raw_as_ollama_reads_them(tiny_tokenizer_dir: Path) -> None:
    """Ollama's parser takes a quoted value as it is, with no escapes: a stop string is written raw (not JSON-
    escaped), in triple quotes if it holds a quote, and a piece that would end the string is refused."""
    assert ollama.modelfile_string("<|im_end|>") == '"<|im_end|>"'
    assert ollama.modelfile_string("</s>\\n") == '"</s>\\n"'  # a backslash stays one backslash
    assert ollama.modelfile_string('say "hi"x') == '"""say "hi"x"""'
    for bad in ('a"""b', 'ends with "'):
        with pytest.raises(ExportError, match="stop string"):
            ollama.modelfile_string(bad)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    fmt = ollama.TurnFormat(head='"""', system_tail="", user_tail="", assistant_tail="")
    with pytest.raises(ExportError, match="turn markers contain"):
        ollama.modelfile("m.gguf", fmt, tokenizer, "Be brief.", num_predict=8)
