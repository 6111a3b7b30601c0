"""What the personal-data scan costs (data/pii.py): its share of the dataset stage on AcmeHotels, and its time on
N records with personal data planted in half of them.

    .venv/bin/python bench/pii_scan.py                     # AcmeHotels small, then 10,000 records
    .venv/bin/python bench/pii_scan.py --records 50000

The stage runs as a process, as in a pod, three times (fresh state each): its wall time against the scan's
own, which the stage records in the dataset manifest (``privacy.scan_seconds``), in the same run. Then the
scan alone on the planted records, in a fresh process (Presidio's import included), with what it found.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_share(runs: int) -> None:
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "pipeline.yaml"
            config.write_text("{}\n")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "private_finetuning.stages.dataset_relocation", "--config",
                            str(config), "--output", str(Path(tmp) / "volume")], check=True, capture_output=True)
            wall = time.perf_counter() - start
            manifest = next((Path(tmp) / "volume" / "dataset").glob("2*/manifest.json"))
            scan = json.loads(manifest.read_text())["metadata"]["privacy"]["scan_seconds"]
            print(f"run {i + 1}: dataset stage (AcmeHotels small) {wall:.2f} s wall, the scan {scan:.2f} s of it "
                  f"({scan / wall:.0%})")


SCAN = """
import json, sys, time
start = time.perf_counter()
from private_finetuning.data import pii
from private_finetuning.data.record import Record
records = [Record.from_json(json.loads(line)) for line in sys.stdin]
found = pii.scan(records)
print(json.dumps({"seconds": time.perf_counter() - start, "found": pii.counts(found)}))
"""


def planted(n: int) -> str:
    rng, lines = random.Random(3), []
    for i in range(n):
        reply = f"Site {i} has {rng.randint(2, 40)} desks and opens at {rng.randint(6, 10)}:00."
        if i % 2:
            reply += (f" Contact desk{i}@site.example.org or +1 415-555-01{rng.randint(10, 99)}."
                      if i % 4 == 1 else f" The router is at 192.0.2.{rng.randint(1, 254)}.")
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"Tell me about site {i}."},
                                              {"role": "assistant", "content": reply}]}))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    stage_share(args.runs)
    run = subprocess.run([sys.executable, "-c", SCAN], input=planted(args.records), capture_output=True, text=True,
                         check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"scan of {args.records} records (half with personal data), import included: {result['seconds']:.1f} s; "
          f"found {result['found']}")


if __name__ == "__main__":
    main()
