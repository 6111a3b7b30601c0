"""Serving throughput of model-inference-server's engines against the prototype's way, in one run.

    python bench/serve_load.py                    # after `make pipeline` (uses .pft/volumes)
    python bench/serve_load.py --duration 30 --clients 1 4 16 --engines transformers openvino

Baseline: a single-threaded loop calling ``model.generate`` on the un-merged PEFT model, one
request at a time (the original prototype's server). Then the real stage is started under gunicorn
on loopback, once per engine (``serving.engine``), and driven by 1, 4 and 16 concurrent clients for
``--duration`` seconds each, every client asking the held-out questions with POST /prompt.
Reported per level: requests/s, generated tokens/s, p50/p95/p99 latency, errors and 5xx; the
aggregate tokens/s at the highest level is compared with the baseline. Then each engine answers every
held-out question once, greedily, and its answers are compared with transformers' greedy answers of
the merged fp32 model, one prompt at a time (``--no-exactness`` skips it).
Goals (issue 10, 2 cores): 16 clients >= 250 tokens/s and p50 <= 1.5 s, one client >= 50 tokens/s.
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
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--engines", nargs="+", default=["transformers", "openvino"],
                   choices=["transformers", "openvino"])
    p.add_argument("--no-exactness", dest="exactness", action="store_false",
                   help="skip asking every held-out question once per engine")
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

    from private_finetuning.config import load_config
    from private_finetuning.data.chat import encode_prompt, with_system

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


def reference_answers(args: argparse.Namespace, asked: list[str]) -> list[str]:
    """transformers' greedy answers of the merged fp32 model, one prompt at a time (no padding)."""
    from transformers import AutoTokenizer

    from private_finetuning.config import load_config
    from private_finetuning.data.chat import encode_prompt, with_system
    from private_finetuning.models.generation import generate
    from private_finetuning.models.loading import load_published_model

    v = args.volumes
    system = load_config(args.config).prompting.system_prompt
    tok = AutoTokenizer.from_pretrained(v / "base-tokenizer" / "tokenizer" / "current")
    model = load_published_model(v / "base-model" / "model" / "current",
                                 v / "fine-tuned-model" / "adapter" / "promoted").eval()
    eos = [tok.eos_token_id]
    return [generate(model, tok, [encode_prompt(tok, with_system([{"role": "user", "content": q}], system))],
                     max_new_tokens=args.max_new_tokens, eos_token_ids=eos)[0][0] for q in asked]


def ask_each(url: str, asked: list[str], max_new_tokens: int) -> list[str]:
    answers = []
    for question in asked:
        body = json.dumps({"input_prompt": question, "max_new_tokens": max_new_tokens}).encode()
        request = urllib.request.Request(f"{url}/prompt", data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answers.append(json.load(response)["answer"])
    return answers


def start_server(args: argparse.Namespace, engine: str, folder: Path) -> tuple[subprocess.Popen, str]:
    import yaml

    data = yaml.safe_load(args.config.read_text()) or {}
    data.setdefault("serving", {})["engine"] = engine
    config = folder / f"{engine}.yaml"
    config.write_text(yaml.safe_dump(data))
    port, v = free_port(), args.volumes
    server = subprocess.Popen([sys.executable, "-m", "private_finetuning.stages.inference_server", "--config",
                               str(config), "--base-model", str(v / "base-model"), "--base-tokenizer",
                               str(v / "base-tokenizer"), "--fine-tuned", str(v / "fine-tuned-model"),
                               "--base-model-openvino", str(v / "base-model-openvino"),
                               "--bind", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2):
                return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit(f"the {engine} server did not become ready") from None
            time.sleep(0.5)


def run_engine(args: argparse.Namespace, engine: str, asked: list[str], folder: Path) -> tuple[list[dict], list[str]]:
    server, url = start_server(args, engine, folder)
    try:
        drive(url, asked, 2, 3.0, args.max_new_tokens)  # warm-up, not reported
        rows = [drive(url, asked, clients, args.duration, args.max_new_tokens) for clients in args.clients]
        for row in rows:
            row["level"] = f"{engine}, {row['level']}"
        answers = ask_each(url, asked, args.max_new_tokens) if args.exactness else []
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows, answers


def main() -> int:
    import tempfile

    args = parse_args()
    asked = questions(args.volumes)
    rows = [baseline(args, asked)]
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for engine in args.engines:
            engine_rows, answers[engine] = run_engine(args, engine, asked, Path(folder))
            rows += engine_rows
    width = max(len(r["level"]) for r in rows)
    print(f"{'level':<{width}} {'requests':>8} {'req/s':>7} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'errors':>6} {'5xx':>4}")
    for r in rows:
        print(f"{r['level']:<{width}} {r['requests']:>8} {r['rps']:>7.2f} {r['tokens_per_s']:>9.1f} {r['p50']:>7.2f} "
              f"{r['p95']:>7.2f} {r['p99']:>7.2f} {r['errors']:>6} {r['server_errors']:>4}")
    for engine in args.engines:
        top = [r for r in rows if r["level"].startswith(engine)][-1]
        print(f"{engine}: {top['tokens_per_s']:.1f} tokens/s at {top['level'].split(', ')[1]}, "
              f"{top['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x the baseline, {top['server_errors']} 5xx")
    if args.exactness:
        expected = reference_answers(args, asked)
        for engine, got in answers.items():
            equal = sum(a == b for a, b in zip(got, expected, strict=True))
            print(f"{engine}: {equal}/{len(expected)} held-out answers equal to transformers' greedy answers "
                  f"(merged fp32, one prompt at a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
