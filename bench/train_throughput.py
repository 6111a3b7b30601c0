"""Training throughput of model-peft-server's step against the prototype's naive step, in one run.

    python bench/train_throughput.py                       # after `make pipeline` (uses .pft/volumes)
    python bench/train_throughput.py --steps 20 --seq-len 1024 --batch-size 16   # e.g. on a GPU

Both variants train the same LoRA (the pipeline's settings) on the same model and data:

- baseline: the original prototype's settings: fp32, batch 8, every example padded to 128 tokens,
  no length grouping, loss over the whole sequence;
- stage: this project's training step (the functions model-peft-server runs): bf16 autocast where
  the hardware has it, length-grouped batches padded only to the batch's longest example, loss on
  the assistant's tokens.

Throughput counts real (non-padding) tokens per second, the work that teaches the model something.
Each variant runs in its own process so its peak memory (RSS on CPU, allocated memory on CUDA) is its
own. On CUDA the report adds model-FLOPs utilisation: a LoRA step costs about 4 x (frozen parameters)
FLOPs per token (forward, plus the backward pass to activations, no weight gradients) plus attention,
12 x layers x sequence x hidden per token, divided by the peak bf16 FLOP/s given by --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOLUMES = REPO / ".pft" / "volumes"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=VOLUMES / "base-model" / "model" / "current")
    p.add_argument("--tokenizer", type=Path, default=VOLUMES / "base-tokenizer" / "tokenizer" / "current")
    p.add_argument("--data", type=Path, default=VOLUMES / "datasets" / "dataset" / "current" / "train.jsonl")
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    p.add_argument("--batch-size", type=int, default=8, help="the stage's batch size")
    p.add_argument("--seq-len", type=int, default=0,
                   help="if set, repeat the chat examples into rows of this many tokens (long-sequence GPU runs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the stage's model (GPU)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the accelerator's peak bf16 TFLOP/s, for MFU")
    p.add_argument("--variant", choices=["baseline", "stage"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load_examples(args: argparse.Namespace):
    from transformers import AutoTokenizer

    from private_finetuning.config import PromptingConfig
    from private_finetuning.data.chat import Encoded, encode_for_training, with_system

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    system = PromptingConfig().system_prompt
    records = [json.loads(line) for line in args.data.read_text().splitlines()]
    examples = [encode_for_training(tok, with_system(r["messages"], system)) for r in records]
    if args.seq_len:  # concatenate examples into long rows: the long-context regime a GPU runs well
        rows, ids, labels = [], [], []
        for e in examples * 64:
            ids, labels = ids + e.input_ids, labels + e.labels
            if len(ids) >= args.seq_len:
                rows.append(Encoded(ids[:args.seq_len], labels[:args.seq_len]))
                ids, labels = [], []
        examples = rows
    return tok, examples


def load_model(args: argparse.Namespace, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    from private_finetuning.config import LoraSettings
    from private_finetuning.training.lora import apply_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    frozen = sum(p.numel() for p in model.parameters())
    return apply_lora(model, LoraSettings()).to(device), frozen, model.config


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from private_finetuning.models.device import select_device
    from private_finetuning.models.scoring import collate
    from private_finetuning.training.batching import batch_order
    from private_finetuning.training.recipe import batch_loss

    device = select_device("auto" if args.variant == "stage" else "fp32")
    tok, examples = load_examples(args)
    model, frozen, config = load_model(args, device.name)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.name == "cuda")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    lengths = [len(e.input_ids) for e in examples]

    if args.variant == "stage":
        forward = torch.compile(model) if args.compile else model
        batches = batch_order(lengths, args.batch_size, seed=0, epoch=0, group_by_length=True)

        def step(indices: list[int]) -> int:
            chosen = [examples[i] for i in indices]
            loss, tokens = batch_loss(forward, device, chosen, pad, sum(e.target_tokens for e in chosen),
                                      share_prefix=not args.compile)
            loss.backward()
            return tokens
        seq_len = args.seq_len or max(lengths)
    else:
        seq_len = args.seq_len or 128
        batch_size = 8
        batches = [list(range(i, min(i + batch_size, len(examples)))) for i in range(0, len(examples), batch_size)]

        def step(indices: list[int]) -> int:
            rows = [examples[i].input_ids[:seq_len] for i in indices]
            ids = torch.full((len(rows), seq_len), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            ids, mask = ids.to(device.name), mask.to(device.name)
            out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
            out.loss.backward()
            return int(mask.sum())

    del collate  # the stage's collate runs inside batch_loss; imported to show the path is the stage's
    if device.name == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, elapsed = 0, 0.0
    for n in range(args.warmup + args.steps):
        indices = batches[n % len(batches)]
        if device.name == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        counted = step(indices)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.name == "cuda":
            torch.cuda.synchronize()
        if n >= args.warmup:
            elapsed += time.perf_counter() - start
            tokens += counted
    peak = (torch.cuda.max_memory_allocated() if device.name == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {"variant": args.variant, "device": device.description, "tokens_per_s": tokens / elapsed,
              "peak_memory_gib": peak / 2**30, "seq_len": seq_len, "steps": args.steps}
    if args.peak_tflops and device.name == "cuda":
        flops_per_token = 4 * frozen + 12 * config.num_hidden_layers * seq_len * config.hidden_size
        result["mfu"] = result["tokens_per_s"] * flops_per_token / (args.peak_tflops * 1e12)
    return result


def main() -> int:
    args = parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return 0
    results = {}
    for variant in ("baseline", "stage"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'variant':<9} {'device':<28} {'seq':>5} {'tokens/s':>10} {'peak mem':>10}  mfu")
    for r in results.values():
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['variant']:<9} {r['device']:<28} {r['seq_len']:>5} {r['tokens_per_s']:>10.0f} "
              f"{r['peak_memory_gib']:>8.2f}GiB  {mfu}")
    speedup = results["stage"]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
    print(f"speed-up of the stage over the baseline: {speedup:.2f}x (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
