"""Serving throughput of model-inference-server's engines, each against the others in one run.

    .venv/bin/python bench/serve_load.py          # after `make pipeline` (uses .pft/volumes)
    .venv/bin/python bench/serve_load.py --duration 30 --clients 1 4 16 --engines openvino-in-thread openvino

Engines: ``openvino`` is the served model the promotion names (the adapter merged, int8 weights, as
the evaluation judged it), generating in a process of its own beside the HTTP worker (the default,
``serving.engine_process``); ``openvino-in-thread`` the same model on a thread of the HTTP worker (the
way before, the baseline of issue 30); ``openvino-fused`` the adapter fused into the base IR at load
(run on a copy of the fine-tuned volume whose promotion names no served model, so the server falls back
to it); ``transformers`` the exact reference; ``baseline`` the prototype's way (``model.generate`` on
the un-merged PEFT model, one request at a time). While each HTTP load level runs, a prober asks
``/health`` and ``/ready`` every 0.1 s as a kubelet would, and their latencies are reported. Each OpenVINO engine is
measured twice: in process (the engine's own worker driven by client threads, no HTTP: the ceiling)
and through HTTP (the real stage under gunicorn on loopback), with 1, 4 and 16 closed-loop clients
for ``--duration`` seconds each, every client asking the held-out questions with POST /prompt.
Reported per level: requests/s, generated tokens/s, p50/p95/p99 latency, errors and 5xx; then each
engine's ratio to the first engine listed, the HTTP layer's cost against the in-process ceiling,
the server's peak resident memory, and each engine's answers to every held-out question against
transformers' greedy answers of the merged fp32 model (``--no-exactness`` skips that).
Goals (issue 30): probes p99 <= 0.2 s under 16 clients; HTTP at 16 clients >= 0.9x the in-process
ceiling; peak RSS of all the server's processes together <= 1 GiB; no 5xx. (Issue 21, 2 cores, no
native bf16: one client >= 60 tokens/s; 16 clients >= 300 tokens/s with p50 <= 1.0 s.)
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    p.add_argument("--engines", nargs="+", default=["openvino-in-thread", "openvino"],
                   choices=["baseline", "transformers", "openvino-fused", "openvino-in-thread", "openvino"])
    p.add_argument("--no-exactness", dest="exactness", action="store_false",
                   help="skip asking every held-out question once per engine")
    return p.parse_args()


def questions(volumes: Path) -> list[str]:
    path = volumes / "datasets" / "dataset" / "current" / "eval.jsonl"
    return [json.loads(line)["messages"][-2]["content"] for line in path.read_text().splitlines()]


def held_out_records(volumes: Path) -> list:
    """The eval split as records: each one's fact is its ``answer`` or derived from its reply (data/expected.py)."""
    from private_finetuning.data.record import read_split

    return read_split(volumes / "datasets" / "dataset" / "current" / "eval.jsonl")


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
    """Closed-loop clients asking the questions with POST /prompt, while /health and /ready are probed."""
    def one(n: int) -> tuple[int, int]:
        body = json.dumps({"input_prompt": asked[n % len(asked)], "max_new_tokens": max_new_tokens}).encode()
        request = urllib.request.Request(f"{url}/prompt", data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)["completion_tokens"], 0
        except urllib.error.HTTPError as exc:
            return 0, exc.code

    probes: list[float] = []
    stop = threading.Event()

    def prober() -> None:
        while not stop.wait(0.1):
            for path in ("/health", "/ready"):
                start = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:
                        response.read()
                    probes.append(time.perf_counter() - start)
                except OSError:
                    probes.append(float("inf"))  # failed or past the kubelet's patience

    thread = threading.Thread(target=prober)
    thread.start()
    try:
        row = drive_with(one, clients, duration)
    finally:
        stop.set()
        thread.join()
    row.update(probes=len(probes), probe_p50=percentile(probes, 50), probe_p99=percentile(probes, 99),
               probe_max=max(probes, default=float("nan")))
    return row


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


def fused_volume(args: argparse.Namespace, folder: Path) -> Path:
    """A copy of the fine-tuned volume's promoted adapter, promoted again with no served model: the server
    then fuses the adapter into the base IR, the default before served models."""
    from private_finetuning.artifacts import promotion
    from private_finetuning.artifacts.store import ADAPTER

    source = args.volumes / "fine-tuned-model"
    promoted = promotion.current(source)
    if promoted is None:
        raise SystemExit(f"nothing is promoted on {source}: run `make pipeline` first")
    copy = folder / "fine-tuned-fused"
    shutil.copytree(source / ADAPTER.artifact / promoted.adapter_version,
                    copy / ADAPTER.artifact / promoted.adapter_version)
    promotion.promote(copy, promotion.adapter_of(copy, promoted), report_digest=promoted.report_digest, by="bench",
                      reason="the fused fallback, for comparison")
    return copy


def engine_config(args: argparse.Namespace, engine: str, folder: Path) -> Path:
    import yaml

    data = yaml.safe_load(args.config.read_text()) or {}
    serving = data.setdefault("serving", {})
    serving["engine"] = "transformers" if engine == "transformers" else "openvino"
    serving["engine_process"] = not engine.endswith("-in-thread")
    config = folder / f"{engine}.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


def start_server(args: argparse.Namespace, engine: str, folder: Path, fine_tuned: Path) -> tuple[subprocess.Popen, str]:
    port, v = free_port(), args.volumes
    server = subprocess.Popen([sys.executable, "-m", "private_finetuning.stages.inference_server", "--config",
                               str(engine_config(args, engine, folder)), "--base-model", str(v / "base-model"),
                               "--base-tokenizer", str(v / "base-tokenizer"), "--fine-tuned", str(fine_tuned),
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


def descendants(pid: int) -> list[int]:
    """A process and every process under it (gunicorn's master, its worker, the worker's engine process)."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return [pid, *(d for c in children for d in descendants(c))]


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of all the server's processes together, MiB (each one's high-water mark, summed)."""
    total = 0
    for proc in descendants(pid):
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def in_process(args: argparse.Namespace, engine: str, asked: list[str], folder: Path, fine_tuned: Path) -> list[dict]:
    """The engine's own worker driven by client threads, no HTTP: the ceiling the server can reach."""
    from private_finetuning.config import load_config
    from private_finetuning.serving.engines import make_engine
    from private_finetuning.serving.engines.base import Request

    v = args.volumes
    eng = make_engine(load_config(engine_config(args, engine, folder)), base_model=v / "base-model",
                      base_tokenizer=v / "base-tokenizer", fine_tuned=fine_tuned,
                      base_model_openvino=v / "base-model-openvino").start()
    deadline = time.monotonic() + 300
    while not eng.ready:
        if time.monotonic() > deadline:
            raise SystemExit(f"the {engine} engine did not load: {eng.status}")
        time.sleep(0.2)
    prompts = [eng.encode([{"role": "user", "content": q}]) for q in asked]

    def one(n: int) -> tuple[int, int]:
        request = eng.submit(Request(prompts[n % len(prompts)], args.max_new_tokens, 0.0, 1.0,
                                     deadline=time.monotonic() + 120))
        request.done.wait(130)
        return request.completion_tokens, 0 if request.error is None else 500

    try:
        drive_with(one, 2, 3.0)
        rows = [drive_with(one, clients, args.duration) for clients in args.clients]
    finally:
        eng.stop()
    for row in rows:
        row["level"] = f"{engine} in process, {row['level']}"
    return rows


def drive_with(one, clients: int, duration: float) -> dict:
    """Closed-loop clients calling ``one(n)`` -> (tokens, HTTP status of a failure or 0) for ``duration`` seconds."""
    latencies: list[float] = []
    tokens, errors, server_errors = [0], [0], [0]
    lock = threading.Lock()
    end = time.monotonic() + duration

    def client(offset: int) -> None:
        n = offset
        while time.monotonic() < end:
            start = time.perf_counter()
            got, failed = one(n)
            with lock:
                if not failed:
                    latencies.append(time.perf_counter() - start)
                    tokens[0] += got
                else:
                    errors[0] += 1
                    server_errors[0] += failed >= 500
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


def run_engine(args: argparse.Namespace, engine: str, asked: list[str], folder: Path) -> tuple[list[dict], list[str]]:
    if engine == "baseline":
        return [baseline(args, asked)], []
    fine_tuned = fused_volume(args, folder) if engine == "openvino-fused" else args.volumes / "fine-tuned-model"
    # The in-thread variant's ceiling is the same engine's: measured once, under the name without the suffix.
    rows = in_process(args, engine, asked, folder, fine_tuned) if engine in ("openvino", "openvino-fused") else []
    server, url = start_server(args, engine, folder, fine_tuned)
    try:
        drive(url, asked, 2, 3.0, args.max_new_tokens)  # warm-up, not reported
        http = [drive(url, asked, clients, args.duration, args.max_new_tokens) for clients in args.clients]
        for row in http:
            row["level"] = f"{engine}, {row['level']}"
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as response:
            ready = json.load(response)
        http[-1]["rss_mib"] = peak_rss_mib(server.pid)
        http[-1]["serving"] = ("fused into the base IR (not judged)" if ready.get("fallback") else
                               f"{ready.get('weights', 'fp32')} weights, {ready.get('precision', '-')}")
        answers = ask_each(url, asked, args.max_new_tokens) if args.exactness else []
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows + http, answers


def main() -> int:
    import tempfile

    args = parse_args()
    asked = questions(args.volumes)
    rows: list[dict] = []
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for engine in args.engines:
            engine_rows, answers[engine] = run_engine(args, engine, asked, Path(folder))
            rows += engine_rows
    print_rows(rows)
    summarize(args, rows)
    if args.exactness:
        from private_finetuning.data.expected import fact_accuracy

        expected, facts = reference_answers(args, asked), held_out_records(args.volumes)
        print(f"transformers (merged fp32): held-out fact accuracy {fact_accuracy(facts, expected):.1%}")
        for engine, got in answers.items():
            if got:
                equal = sum(a == b for a, b in zip(got, expected, strict=True))
                print(f"{engine}: {equal}/{len(expected)} held-out answers equal to transformers' greedy answers "
                      f"(merged fp32, one prompt at a time); fact accuracy {fact_accuracy(facts, got):.1%}")
    return 0


def print_rows(rows: list[dict]) -> None:
    width = max(len(r["level"]) for r in rows)
    print(f"{'level':<{width}} {'requests':>8} {'req/s':>7} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'errors':>6} {'5xx':>4}")
    for r in rows:
        print(f"{r['level']:<{width}} {r['requests']:>8} {r['rps']:>7.2f} {r['tokens_per_s']:>9.1f} {r['p50']:>7.2f} "
              f"{r['p95']:>7.2f} {r['p99']:>7.2f} {r['errors']:>6} {r['server_errors']:>4}")


def summarize(args: argparse.Namespace, rows: list[dict]) -> None:
    """Per engine: its HTTP figures against the first engine's, against its own in-process ceiling, and memory."""
    top = f"{max(args.clients)} client{'s' if max(args.clients) > 1 else ''}"
    single = f"{min(args.clients)} client{'s' if min(args.clients) > 1 else ''}"
    by_level = {r["level"]: r for r in rows}
    first = next((e for e in args.engines if f"{e}, {top}" in by_level), None)
    for engine in args.engines:
        http = by_level.get(f"{engine}, {top}")
        if http is None:
            continue
        alone = by_level[f"{engine}, {single}"]["tokens_per_s"]
        line = (f"{engine} ({http.get('serving', '-')}): {alone:.1f} tokens/s at {single}, "
                f"{http['tokens_per_s']:.1f} at {top} (p50 {http['p50']:.2f} s)")
        if first and engine != first:
            line += f", {http['tokens_per_s'] / by_level[f'{first}, {top}']['tokens_per_s']:.2f}x {first}"
        ceiling = by_level.get(f"{engine.removesuffix('-in-thread')} in process, {top}")
        if ceiling:
            line += (f", HTTP {1 - http['tokens_per_s'] / ceiling['tokens_per_s']:.0%} below its in-process "
                     f"{ceiling['tokens_per_s']:.1f}")
        server_errors = sum(r["server_errors"] for r in rows if r["level"].startswith(engine + ","))
        print(line + f", probes p99 {http['probe_p99']:.3f} s (max {http['probe_max']:.3f} s, {http['probes']} "
                     f"probes), peak RSS of all its processes {http['rss_mib']:.0f} MiB, {server_errors} 5xx")


if __name__ == "__main__":
    sys.exit(main())
