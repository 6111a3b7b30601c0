"""Every function that runs a pattern over user text takes time linear in it: one dataset row must never hang
the dataset stage until its Job's deadline (a trailing-name pattern once took 8.7 s on a row of capitalised
words, doubling with each one). Each runs on adversarial 10,000-character strings in a child process with a
timeout (a backtracking pattern never returns, so it cannot be timed in this one), and its time is compared
with a benign text of the same length."""

from __future__ import annotations

import json
import subprocess
import sys

N = 10_000
ADVERSARIAL = {
    "capitalised words then a stray character": "Who is the contact for " + "ACME GMBH NORD " * 700 + "(Hamburg)?",
    "one capitalised run then a symbol": "what is the rate of " + "A" * N + "#",
    "prepositions only": "What is the rate " + "of " * 3_300 + "x",
    "a wh-question with a long punctuation tail then a letter": "what is a" + " ?." * 3_300 + "x",
    "a wh-question of spaces": "What is " + " " * N + "x?",
    "numbers glued by separators": "1.2," * 2_500,
    "signs and digits": "-1-" * 3_300,
    "capitalised words with inner dots": "What is the code for " + "St.A.B.C.-D'E " * 700 + "!",
    # the derived facts' finders (data/expected.py): codes, e-mail addresses, URLs, dates, times
    "letters and digits glued by separators": "a1-" * 3_300 + "@",
    "an address with no end": "x." * 5_000 + "@",
    "at signs": "x@" * 5_000,
    "clock-like digits": "7:" * 5_000,
    "web prefixes": "www." * 2_500,
    "month names and days": "March 1 " * 1_250,
}
BENIGN = ("the quick brown fox jumps over the lazy dog " * 300)[:N]
SCRIPT = """
import json, sys, time
from private_finetuning.data import augment, expected, facts
texts = json.loads(sys.stdin.read())
acme = expected.Expected("answer", (expected.Span("answer", "ACME", 0, 0),), "fact")
calls = {f"variant {name}": (lambda t, k=kind: k.make(t, t, acme)) for name, kind in augment.KINDS.items()}
calls.update({f"derived variant {name}": (lambda t, k=kind: k.make("What is it?", t, expected.Expected(
    "derived", expected.derive("What is it?", t), "fact"))) for name, kind in augment.KINDS.items()})
calls["derive"] = lambda t: expected.derive("What is it?", t)
calls["derived fact stated"] = lambda t: expected.Expected("derived", expected.derive("What is it?", t), "f").met_by(t)
calls.update({"fact_spans": lambda t: facts.fact_spans(t, "ACME 1.2"), "number_spans": facts.number_spans,
              "fact_match": lambda t: facts.fact_match(t, "ACME"), "normalize": facts.normalize})
out = {}
for label, text in texts.items():
    for name, call in calls.items():
        print(label, "/", name, file=sys.stderr, flush=True)  # where it stopped, if it never returns
        start = time.perf_counter(); call(text); first = time.perf_counter() - start
        start = time.perf_counter(); call(text); second = time.perf_counter() - start
        out[f"{label} / {name}"] = min(first, second)
print(json.dumps(out))
"""


def timings(texts: dict[str, str], timeout: float) -> dict[str, float]:
    run = _bounded(texts, timeout)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def _bounded(texts: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", SCRIPT], input=json.dumps(texts), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        stuck = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise AssertionError(f"still running after {timeout:.0f}s, at: {stuck}") from None


def test_every_pattern_over_user_text_is_linear() -> None:
    assert all(0.95 * N <= len(t) <= 1.1 * N for t in ADVERSARIAL.values())  # about 10,000 characters each
    benign = timings({"benign": BENIGN}, timeout=60)
    slowest_benign = max(benign.values())
    adversarial = timings(ADVERSARIAL, timeout=60)
    # 50x the slowest benign call (a few milliseconds at most), and never over a second in absolute terms.
    limit = min(1.0, max(50 * slowest_benign, 0.02))
    slow = {case: round(t, 4) for case, t in adversarial.items() if t > limit}
    assert not slow, f"over {limit:.3f}s (benign {slowest_benign:.4f}s): {slow}"
