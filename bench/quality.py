"""Does the fine-tuned model know the facts? Training + evaluation on several datasets, per configuration.

    .venv/bin/python bench/quality.py                        # after `make pipeline` (reuses its base model)
    .venv/bin/python bench/quality.py --datasets helpdesk --variant 'lr4e-3={"learning_rate": 4e-3}'

For each dataset (AcmeHotels `small`, and the other-domain sets of bench/datasets.py: one phrasing
per fact in training, a paraphrase held out) and each configuration (``before``: the 0.1.0 training
defaults, written out; ``defaults``: today's; plus any ``--variant name=JSON`` of training keys), it
runs the real stages as processes (dataset relocation, training, evaluation without the reference
model) and reports, in one table: fact accuracy on trained questions (exact fact stated) and on
held-out paraphrases, the base model's, forgetting (KL and general-text perplexity increase), and
training time, and whether the evaluation's gates passed (a failed gate is a result here, not an
error). Results also go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import datasets as domains  # noqa: E402  (bench/datasets.py)

# Training as it was in 0.1.0: 3 epochs whatever the data size.
BEFORE = {"epochs": 3, "min_steps": 0, "time_budget_s": None, "learning_rate": 2e-3, "fact_loss_weight": 1,
          "lora": {"r": 16, "alpha": 32, "layer_share": 1.0}, "warmup_steps": 10, "batch_size": 8}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=Path, default=REPO / ".pft" / "volumes",
                   help="where base-model and base-tokenizer are published (relocated here if missing)")
    p.add_argument("--datasets", nargs="+", default=["acmehotels", "helpdesk", "products"])
    p.add_argument("--variant", action="append", default=[], help="name=JSON of training keys")
    p.add_argument("--no-before", action="store_true", help="skip the 0.1.0 baseline")
    p.add_argument("--no-defaults", action="store_true", help="skip today's defaults")
    p.add_argument("--out", type=Path, default=Path("quality.json"))
    return p.parse_args()


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


def dataset_source(name: str, folder: Path) -> dict:
    if name == "acmehotels":
        return {"source": {"type": "embedded", "name": "acmehotels", "size": "small"}}
    return {"source": {"type": "file", "path": str(domains.write(name, folder / f"{name}.jsonl"))}}


def ensure_base(volumes: Path, scratch: Path) -> tuple[Path, Path]:
    model, tokenizer = volumes / "base-model", volumes / "base-tokenizer"
    if not (model / "model" / "current").exists() or not (tokenizer / "tokenizer" / "current").exists():
        model, tokenizer = scratch / "base-model", scratch / "base-tokenizer"
        config = write_yaml(scratch / "base.yaml", {})
        stage("model_relocation", config, output=model)
        stage("tokenizer_relocation", config, output=tokenizer)
    return model, tokenizer


def run_one(name: str, training: dict, base: tuple[Path, Path], folder: Path) -> dict:
    folder.mkdir(parents=True)
    config = write_yaml(folder / "pipeline.yaml", {
        "dataset": dataset_source(name, folder), "training": {**training, "sample_generations": 0},
        "evaluation": {"samples": 0, "trained_samples": 96, "include_reference": False,
                       "side_by_side": 0}})
    stage("dataset_relocation", config, output=folder / "datasets")
    start = time.monotonic()
    stage("peft_training", config, datasets=folder / "datasets", base_model=base[0], base_tokenizer=base[1],
          output=folder / "fine-tuned", status_port=Path("0"))
    wall = time.monotonic() - start
    stage("evaluation", config, datasets=folder / "datasets", base_model=base[0], base_tokenizer=base[1],
          reference_model=folder / "unused", fine_tuned=folder / "fine-tuned")
    report = json.loads((folder / "fine-tuned" / "evaluation" / "current" / "report.json").read_text())
    adapter = json.loads((folder / "fine-tuned" / "adapter" / "current" / "manifest.json").read_text())
    m = report["metrics"]
    return {"dataset": name, "trained": m["fine_tuned"]["trained"]["fact_accuracy"],
            "held_out": m["fine_tuned"]["fact_accuracy"], "base_held_out": m["base"]["fact_accuracy"],
            "base_trained": m["base"]["trained"]["fact_accuracy"], "kl": report["forgetting"]["kl"],
            "ppl_increase": report["forgetting"]["general_perplexity_increase"],
            "steps": adapter["metadata"]["steps"], "train_s": adapter["metadata"]["train_seconds"],
            "stage_s": round(wall, 1), "by_fact": m["fine_tuned"]["fact_accuracy_by_fact"],
            "gates_passed": all(g["passed"] for g in report["gates"])}


def main() -> None:
    args = parse_args()
    variants = ([] if args.no_before else [("before", BEFORE)]) + ([] if args.no_defaults else [("defaults", {})])
    variants += [(v.split("=", 1)[0], json.loads(v.split("=", 1)[1])) for v in args.variant]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pft-quality-") as tmp:
        scratch = Path(tmp)
        base = ensure_base(args.volumes, scratch)
        for dataset in args.datasets:
            for label, training in variants:
                print(f"{dataset} / {label} ...", flush=True)
                row = {"variant": label, **run_one(dataset, training, base, scratch / f"{dataset}-{label}")}
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| dataset | variant | trained exact | held-out | base held-out | KL | ppl | steps | train s | gates |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['variant']} | {r['trained']:.1%} | {r['held_out']:.1%} | {r['base_held_out']:.1%}"
              f" | {r['kl']:.2f} | {r['ppl_increase']:+.0%} | {r['steps']} | {r['train_s']:.0f}"
              f" | {'pass' if r['gates_passed'] else 'FAIL'} |")


if __name__ == "__main__":
    main()
