"""Serving throughput of model-inference-server against the prototype's way, in one run.

    python bench/serve_load.py                    # after `make pipeline` (uses .pft/volumes)
    python bench/serve_load.py --duration 30 --clients 1 4 16

Baseline: a single-threaded loop calling ``model.generate`` on the un-merged PEFT model, one
request at a time (the original prototype's server). Then the real stage is started under gunicorn
on loopback and driven by 1, 4 and 16 concurrent clients for ``--duration`` seconds each, every
client asking the held-out AcmeHotels questions with POST /prompt. Reported per level: requests/s,
generated tokens/s, p50/p95/p99 latency and error count; the aggregate tokens/s at the highest level
is compared with the baseline (target: at least 3x, zero 5xx).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=Path, default=REPO / ".pft" / "volumes")
    p.add_argument("--config", type=Path, default=REPO / "k8s" / "base" / "pipeline.yaml")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per load level (and for the baseline)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-new-tokens", type=int, default=32)
    return p.parse_args()


def questions(volumes: Path) -> list[str]:
    path = volumes / "datasets" / "dataset" / "current" / "eval.jsonl"
    return [json.loads(line)["messages"][-2]["content"] for line in path.read_text().splitlines()]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def baseline(args: argparse.Namespace, asked: list[str]) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from private_finetuning.chat import encode_prompt, with_system
    from private_finetuning.config import load_config

    v = args.volumes
    system = load_config(args.config).prompting.system_prompt
    tok = AutoTokenizer.from_pretrained(v / "base-tokenizer" / "tokenizer" / "current")
    model = AutoModelForCausalLM.from_pretrained(v / "base-model" / "model" / "current", dtype=torch.float32)
    model = PeftModel.from_pretrained(model, v / "fine-tuned-model" / "adapter" / "current").eval()
    latencies, tokens, n = [], 0, 0
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        ids = torch.tensor([encode_prompt(tok, with_system([{"role": "user", "content": asked[n % len(asked)]}],
                                                           system))])
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        latencies.append(time.perf_counter() - start)
        tokens += out.shape[1] - ids.shape[1]
        n += 1
    elapsed = sum(latencies)
    return {"level": "baseline", "requests": n, "rps": n / elapsed, "tokens_per_s": tokens / elapsed,
            "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
            "errors": 0, "server_errors": 0}


def drive(url: str, asked: list[str], clients: int, duration: float, max_new_tokens: int) -> dict:
    latencies: list[float] = []
    tokens, errors, server_errors = [0], [0], [0]
    lock = threading.Lock()
    end = time.monotonic() + duration

    def client(offset: int) -> None:
        n = offset
        while time.monotonic() < end:
            body = json.dumps({"input_prompt": asked[n % len(asked)], "max_new_tokens": max_new_tokens}).encode()
            request = urllib.request.Request(f"{url}/prompt", data=body, method="POST", headers={
                "Content-Type": "application/json", "Accept": "application/json"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer = json.load(response)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    tokens[0] += answer["completion_tokens"]
            except urllib.error.HTTPError as exc:
                with lock:
                    errors[0] += 1
                    server_errors[0] += exc.code >= 500
            n += clients

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {"level": f"{clients} client{'s' if clients > 1 else ''}", "requests": len(latencies),
            "rps": len(latencies) / elapsed, "tokens_per_s": tokens[0] / elapsed, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "p99": percentile(latencies, 99), "errors": errors[0],
            "server_errors": server_errors[0]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    args = parse_args()
    asked = questions(args.volumes)
    rows = [baseline(args, asked)]
    port = free_port()
    v = args.volumes
    server = subprocess.Popen([sys.executable, "-m", "private_finetuning.stages.inference_server", "--config",
                               str(args.config), "--base-model", str(v / "base-model"), "--base-tokenizer",
                               str(v / "base-tokenizer"), "--fine-tuned", str(v / "fine-tuned-model"),
                               "--bind", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("the server did not become ready", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        drive(url, asked, 2, 3.0, args.max_new_tokens)  # warm-up, not reported
        rows += [drive(url, asked, clients, args.duration, args.max_new_tokens) for clients in args.clients]
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"{'level':<10} {'requests':>8} {'req/s':>7} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'errors':>6} {'5xx':>4}")
    for r in rows:
        print(f"{r['level']:<10} {r['requests']:>8} {r['rps']:>7.2f} {r['tokens_per_s']:>9.1f} {r['p50']:>7.2f} "
              f"{r['p95']:>7.2f} {r['p99']:>7.2f} {r['errors']:>6} {r['server_errors']:>4}")
    top = rows[-1]
    print(f"aggregate tokens/s at {top['level']}: {top['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x the baseline "
          f"(target >= 3x), {top['server_errors']} 5xx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
