"""What retrieval costs: the index build for N records, and the time it adds to a request under concurrency.

    .venv/bin/python bench/retrieval_speed.py                 # 10,000 records, 16 clients, words counted
    .venv/bin/python bench/retrieval_speed.py --tokenizer .pft/volumes/base-tokenizer/tokenizer/current

Records are made-up helpdesk-like question/reply pairs of unique codes and names (bench/datasets.py's
syllables), so every question has exactly one right record. Per request it times what the server adds
with serving.retrieval on (serving/retrieval.py): the search, the records cut to max_record_tokens with
the served model's tokenizer, the template; with --tokenizer, also a baseline in the same run: the same clients
encoding the same question alone (what every request costs anyway). Prints the build time, p50/p99
of the added milliseconds per request, and the share of questions whose right record was retrieved.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import datasets as domains  # noqa: E402  (bench/datasets.py)


def records(n: int, seed: int = 5) -> list[tuple[str, str, str]]:
    """(question, reply, code) with a unique site name and code each."""
    rng, out, names = random.Random(seed), [], set()
    while len(names) < n:
        names.add(domains._name(rng, 4) + str(rng.randint(10, 99)))
    for name in sorted(names):
        code = f"{name[:3].upper()}-GW-{rng.randint(100, 999)}"
        out.append((f"Which VPN host does the {name} office use?", f"The {name} office connects through {code}.", code))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=100, help="per client")
    p.add_argument("--tokenizer", type=Path, help="a tokenizer folder (the published base tokenizer) to count "
                   "tokens with, as the server does; without it, words are counted")
    args = p.parse_args()

    from transformers import AutoTokenizer

    from private_finetuning.data.record import Record
    from private_finetuning.retrieval.index import RetrievalIndex

    rows = records(args.records)
    train = [Record([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a, _ in rows]
    start = time.perf_counter()
    index = RetrievalIndex.build(train, "bench")
    build = time.perf_counter() - start
    print(f"index build: {args.records} records in {build:.2f} s")

    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer), local_files_only=True) if args.tokenizer else None
    count = (lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])) if tokenizer else None
    asked = [(f"Which gateway should I set when I work from the {q.split('the ')[1].split(' office')[0]} office?", c)
             for q, _, c in rows]
    with_retrieval, hits = run(args, asked, lambda q: index.context(q, 3, 96, count).prompt)
    print(f"{args.clients} clients x {args.requests} requests: retrieval adds p50 {percentile(with_retrieval, 50):.2f} "
          f"ms, p99 {percentile(with_retrieval, 99):.2f} ms per request (wall time, threads contending as in the "
          f"server); the right record among the top 3: {hits:.1%}")
    if tokenizer is not None:
        plain, _ = run(args, asked, lambda q: str(tokenizer(q)["input_ids"]))
        print(f"baseline, same run: encoding the question alone takes p50 {percentile(plain, 50):.2f} ms, "
              f"p99 {percentile(plain, 99):.2f} ms")


def percentile(ms: list[float], q: float) -> float:
    ordered = sorted(ms)
    return ordered[int(q / 100 * (len(ordered) - 1))]


def run(args: argparse.Namespace, asked: list[tuple[str, str]], work) -> tuple[list[float], float]:
    """Milliseconds of ``work(question)`` per request from ``args.clients`` threads, and the share of results
    holding the question's code."""
    rng, lock = random.Random(1), threading.Lock()
    times: list[float] = []
    found = [0]

    def client() -> None:
        for _ in range(args.requests):
            with lock:
                question, code = rng.choice(asked)
            start = time.perf_counter()
            out = work(question)
            elapsed = 1000 * (time.perf_counter() - start)
            with lock:
                times.append(elapsed)
                found[0] += code in out
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, found[0] / len(times)

if __name__ == "__main__":
    main()
