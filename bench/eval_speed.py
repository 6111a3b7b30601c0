"""Wall time of model-evaluation-server against the prototype's way of evaluating, in one run.

    python bench/eval_speed.py                  # after `make pipeline` (uses .pft/volumes)
    python bench/eval_speed.py --questions 48   # the default evaluation's size (the baseline takes ~20 min)

Both sides answer the same held-out questions with the same three models (base, fine-tuned,
reference), loading each model once:

- baseline: the original prototype's way: one question at a time, un-batched, up to 256 new tokens;
- stage: the evaluation stage itself (its `main`, on a scratch copy of the fine-tuned volume), with
  its defaults: batches of 16, greedy, 32 new tokens, and all of its scoring (fact accuracy, ROUGE-L,
  perplexities, forgetting KL), which the baseline does not even do.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from private_finetuning.data.record import Record

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=Path, default=REPO / ".pft" / "volumes")
    p.add_argument("--questions", type=int, default=16, help="held-out questions, the same for both sides")
    p.add_argument("--baseline-new-tokens", type=int, default=256)
    return p.parse_args()


def baseline(args: argparse.Namespace, questions: list[Record]) -> float:
    import torch

    from private_finetuning.artifacts.store import open_artifact
    from private_finetuning.config import PipelineConfig
    from private_finetuning.data.chat import encode_prompt, with_system
    from private_finetuning.evaluation.judge import Judge

    v = args.volumes
    inputs = {"base": open_artifact(v / "base-model", "model", "base-model"),
              "tokenizer": open_artifact(v / "base-tokenizer", "tokenizer", "base-tokenizer"),
              "adapter": open_artifact(v / "fine-tuned-model", "adapter", "lora-adapter"),
              "reference": open_artifact(v / "reference-model", "model", "reference-model")}
    inputs["dataset"] = open_artifact(v / "datasets", "dataset", "dataset")
    config = PipelineConfig()
    system = config.prompting.system_prompt
    judge = Judge(config, inputs, "cpu", logging.getLogger("bench"))
    start = time.perf_counter()
    for kind in ("base", "fine_tuned", "reference"):
        model, tokenizer, eos = judge.load(kind)
        for q in questions:
            ids = torch.tensor([encode_prompt(tokenizer, with_system(q.messages[:-1], system))])
            with torch.inference_mode():
                model.generate(input_ids=ids, max_new_tokens=args.baseline_new_tokens, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos[0])
        print(f"  baseline: {kind} done at {time.perf_counter() - start:.0f}s", flush=True)
        del model
    return time.perf_counter() - start


def stage(args: argparse.Namespace) -> float:
    from private_finetuning.stages import evaluation

    v = args.volumes
    with tempfile.TemporaryDirectory() as scratch:
        fine_tuned = Path(scratch) / "fine-tuned-model"
        shutil.copytree(v / "fine-tuned-model", fine_tuned, symlinks=True,
                        ignore=shutil.ignore_patterns("evaluation", "checkpoints"))
        config = Path(scratch) / "pipeline.yaml"
        # The settings the adapter was trained with: the evaluation judges only the adapter of its own pipeline.yaml.
        trained = json.loads((v / "fine-tuned-model" / "adapter" / "current" / "training_config.json").read_text())
        config.write_text(json.dumps({"training": trained["training"], "evaluation": {"samples": args.questions},
                                      "prompting": {"system_prompt": trained["system_prompt"]}}))
        start = time.perf_counter()
        code = evaluation.main(["--config", str(config), "--datasets", str(v / "datasets"), "--base-model",
                                str(v / "base-model"), "--base-tokenizer", str(v / "base-tokenizer"),
                                "--reference-model", str(v / "reference-model"), "--fine-tuned", str(fine_tuned)])
        elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the evaluation stage failed with exit {code}")
    return elapsed


def main() -> int:
    args = parse_args()
    from private_finetuning.data.heldout import pick_questions

    questions = pick_questions(args.volumes / "datasets" / "dataset" / "current" / "eval.jsonl", args.questions)
    stage_s = stage(args)
    baseline_s = baseline(args, questions)
    print(f"\n{len(questions)} held-out questions x 3 models")
    print(f"baseline (one at a time, {args.baseline_new_tokens} new tokens): {baseline_s:7.1f}s")
    print(f"evaluation stage (batched, greedy, scored):  {stage_s:7.1f}s")
    print(f"speed-up: {baseline_s / stage_s:.1f}x (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
