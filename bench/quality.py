"""Does the fine-tuned model know the facts? Training + evaluation on several datasets, per configuration.

    .venv/bin/python bench/quality.py                        # after `make pipeline` (reuses its base model)
    .venv/bin/python bench/quality.py --datasets helpdesk --seeds 1 --variant 'lp16={"loraplus_lr_ratio": 16}'
    .venv/bin/python bench/quality.py --datasets clinic --variant 'given={"dataset": {"augmentation": {"kinds": []}}}'
    .venv/bin/python bench/quality.py --converge 900 --no-before --variant 'gen={"generation": {"generator": "base"}}'

For each dataset (AcmeHotels `small`, and the other-domain sets of bench/datasets.py: one phrasing
per fact in training, a paraphrase held out), each training seed (``--seeds``, 3 by default) and
each configuration (``previous``: the defaults before question variants, LoRA+, prioritised
sampling and early stopping, written out; ``defaults``: today's; plus any ``--variant name=JSON`` of
``training``/``dataset`` overrides), it runs the real stages as processes (dataset relocation,
training, evaluation without the reference model) and reports, in one table, the mean over seeds
with the lowest and highest: fact accuracy on trained questions (exact fact stated) and on held-out
paraphrases, the lowest kind of fact, forgetting (KL and general-text perplexity increase), steps
and training time, and how many runs passed the evaluation's gates (a failed gate is a result
here, not an error). Every run also goes to ``--out`` as JSON, with its accuracy by kind of fact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import datasets as domains  # noqa: E402  (bench/datasets.py)

# The defaults before question variants, LoRA+, loss-prioritised sampling and early stopping (0.4):
# the baseline every other configuration is compared with, in the same run.
BEFORE = {"dataset": {"augmentation": {"kinds": []}},
          "training": {"loraplus_lr_ratio": 1.0, "sampling": "uniform", "early_stop_loss": None}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=Path, default=REPO / ".pft" / "volumes",
                   help="where base-model and base-tokenizer are published (relocated here if missing)")
    p.add_argument("--datasets", nargs="+", default=["acmehotels", "helpdesk", "products"])
    p.add_argument("--variant", action="append", default=[],
                   help='name=JSON: {"training": {...}, "dataset": {...}, "serving": {...}, "retrieval": {...}} '
                        'overrides (a bare object: training keys)')
    p.add_argument("--seeds", type=int, default=3, help="training seeds per configuration (1234, 1235, ...)")
    p.add_argument("--no-before", action="store_true", help="skip the previous defaults (the baseline)")
    p.add_argument("--no-defaults", action="store_true", help="skip today's defaults")
    p.add_argument("--no-answers", action="store_true",
                   help="strip `answer` and `fact` from the other-domain sets: scored by the facts of their replies, "
                        "as users' data usually is (docs/data.md)")
    p.add_argument("--converge", type=int, metavar="CAP", default=None,
                   help="quality at convergence: no time budget, training stops by the held-back rule "
                        "(training.stopping: held_back) or at CAP steps, which the table reports")
    p.add_argument("--out", type=Path, default=Path("quality.json"))
    return p.parse_args()


def converged(variant: dict, cap: int) -> dict:
    """``variant`` trained to convergence: no time budget, the held-back stopping rule, ``cap`` steps at most."""
    training = {"time_budget_s": None, "max_steps": cap, "stopping": "held_back", **variant.get("training", {})}
    return {**variant, "training": training}


SECTIONS = ("serving", "retrieval", "privacy")  # whole sections a --variant may also set
EXIT_GATE_FAILED = 4  # the evaluation published its report but a gate failed: a result, not an error


def stage(module: str, config: Path, **volumes: Path) -> None:
    argv = [sys.executable, "-m", f"private_finetuning.stages.{module}", "--config", str(config)]
    for flag, path in volumes.items():
        argv += [f"--{flag.replace('_', '-')}", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    allowed = {0, EXIT_GATE_FAILED} if module == "evaluation" else {0}
    if result.returncode not in allowed:
        raise SystemExit(f"{module} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def dataset_source(name: str, folder: Path, no_answers: bool = False) -> dict:
    if name == "acmehotels":
        return {"source": {"type": "embedded", "name": "acmehotels", "size": "small"}}
    path = domains.write(name, folder / f"{name}.jsonl")
    if no_answers:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("answer", "fact")}) + "\n"
                                for r in rows))
    return {"source": {"type": "file", "path": str(path)}}


def ensure_base(volumes: Path, scratch: Path) -> tuple[Path, Path]:
    model, tokenizer = volumes / "base-model", volumes / "base-tokenizer"
    if not (model / "model" / "current").exists() or not (tokenizer / "tokenizer" / "current").exists():
        model, tokenizer = scratch / "base-model", scratch / "base-tokenizer"
        config = write_yaml(scratch / "base.yaml", {})
        stage("model_relocation", config, output=model)
        stage("tokenizer_relocation", config, output=tokenizer)
    return model, tokenizer


def run_one(name: str, variant: dict, seed: int, base: tuple[Path, Path], folder: Path,
            no_answers: bool = False) -> dict:
    folder.mkdir(parents=True)
    training = {**variant.get("training", {}), "sample_generations": 0, "seed": seed}
    config = write_yaml(folder / "pipeline.yaml", {
        "dataset": {**dataset_source(name, folder, no_answers), **variant.get("dataset", {})}, "training": training,
        "evaluation": {"samples": 0, "trained_samples": 96, "include_reference": False,
                       "side_by_side": 0}, **{k: v for k, v in variant.items() if k in SECTIONS}})
    stage("dataset_relocation", config, output=folder / "datasets")
    start = time.monotonic()
    stage("peft_training", config, datasets=folder / "datasets", base_model=base[0], base_tokenizer=base[1],
          output=folder / "fine-tuned", status_port=Path("0"))
    wall = time.monotonic() - start
    start = time.monotonic()
    stage("evaluation", config, datasets=folder / "datasets", base_model=base[0], base_tokenizer=base[1],
          reference_model=folder / "unused", fine_tuned=folder / "fine-tuned")
    eval_wall = time.monotonic() - start
    report = json.loads((folder / "fine-tuned" / "evaluation" / "current" / "report.json").read_text())
    adapter = json.loads((folder / "fine-tuned" / "adapter" / "current" / "manifest.json").read_text())
    m = report["metrics"]
    return {"dataset": name, "trained": m["fine_tuned"]["trained"]["fact_accuracy"],
            "held_out": m["fine_tuned"]["fact_accuracy"], "base_held_out": m["base"]["fact_accuracy"],
            "base_trained": m["base"]["trained"]["fact_accuracy"], "kl": report["forgetting"]["kl"],
            "ppl_increase": report["forgetting"]["general_perplexity_increase"],
            "steps": adapter["metadata"]["steps"], "train_s": adapter["metadata"]["train_seconds"],
            "stage_s": round(wall, 1), "by_fact": m["fine_tuned"]["fact_accuracy_by_fact"], "seed": seed,
            "eval_s": round(eval_wall, 1), "planned_steps": adapter["metadata"].get("planned_steps"),
            "stopped_by": (adapter["metadata"].get("stopping") or {}).get("stopped_by"),
            "best_step": (adapter["metadata"].get("stopping") or {}).get("best_step"),
            "generation": adapter["metadata"].get("generation"),
            "curves": curves(folder / "fine-tuned" / adapter["metadata"]["tensorboard_run"]),
            "gates_passed": all(g["passed"] for g in report["gates"]),
            # retrieval, the yardstick (docs/retrieval.md): the same questions asked with the top k train records
            "base_rag_held_out": m.get("base_retrieval", {}).get("fact_accuracy"),
            "tuned_rag_held_out": m.get("fine_tuned_retrieval", {}).get("fact_accuracy"),
            "served_held_out": m.get("served", {}).get("fact_accuracy"),  # with serving.retrieval: with context
            "hit_rate": (report.get("retrieval") or {}).get("hit_rate", {}).get("held_out"),
            "scoring": report.get("scoring", {}).get("held_out")}


def curves(run: Path) -> dict[str, list[list[float]]]:
    """The run's training loss and held-back fact loss against steps, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [[e.step, round(e.value, 5)] for e in events.Scalars(tag)]
            for tag in ("train/loss", "stopping/held_back_loss", "train/anchor_kl") if tag in tags}


def overrides(text: str) -> tuple[str, dict]:
    name, _, body = text.partition("=")
    data = json.loads(body)
    return name, data if {"training", "dataset", *SECTIONS} & set(data) else {"training": data}


def summary(rows: list[dict]) -> list[str]:
    """One line per dataset and configuration: the mean over seeds, and the lowest and highest."""
    def cell(values: list[float], fmt: str) -> str:
        mean = sum(values) / len(values)
        return format(mean, fmt) if len(values) < 2 else f"{mean:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    def optional(group: list[dict], key: str) -> str:
        values = [r[key] for r in group if r.get(key) is not None]
        return cell(values, ".1%") if values else "n/a"

    lines = ["| dataset | configuration | seeds | trained exact | held-out | lowest kind held-out | base + retrieval "
             "| fine-tuned + retrieval | retrieval hit rate | served | KL | general ppl | steps | stopped by | train s "
             "| gates |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["dataset"], r["variant"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["variant"]) == key]
        worst = [min(r["by_fact"].values()) for r in group if r["by_fact"]]
        stops = ", ".join(f"{k} {n}" for k, n in Counter(r.get("stopped_by") or "plan" for r in group).items())
        lines.append(f"| {key[0]} | {key[1]} | {len(group)} | {cell([r['trained'] for r in group], '.1%')} "
                     f"| {cell([r['held_out'] for r in group], '.1%')} | {cell(worst, '.1%') if worst else 'n/a'} "
                     f"| {optional(group, 'base_rag_held_out')} | {optional(group, 'tuned_rag_held_out')} "
                     f"| {optional(group, 'hit_rate')} | {optional(group, 'served_held_out')} "
                     f"| {cell([r['kl'] for r in group], '.2f')} | {cell([r['ppl_increase'] for r in group], '+.0%')} "
                     f"| {cell([r['steps'] for r in group], '.0f')} "
                     f"| {stops} "
                     f"| {cell([r['train_s'] for r in group], '.0f')} "
                     f"| {sum(r['gates_passed'] for r in group)}/{len(group)} pass |")
    return lines


def main() -> None:
    args = parse_args()
    variants = ([] if args.no_before else [("previous", BEFORE)]) + ([] if args.no_defaults else [("defaults", {})])
    variants += [overrides(v) for v in args.variant]
    if args.converge:
        variants = [(label, converged(v, args.converge)) for label, v in variants]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pft-quality-") as tmp:
        scratch = Path(tmp)
        base = ensure_base(args.volumes, scratch)
        for dataset in args.datasets:
            for seed in range(1234, 1234 + args.seeds):
                for label, variant in variants:
                    print(f"{dataset} / {label} / seed {seed} ...", flush=True)
                    folder = scratch / f"{dataset}-{label}-{seed}"
                    rows.append({"variant": label, **run_one(dataset, variant, seed, base, folder, args.no_answers)})
                    print(json.dumps(rows[-1]), flush=True)
                    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n" + "\n".join(summary(rows)))


if __name__ == "__main__":
    main()
