"""What the fine-tuned model would give away: the extraction audit and the canaries' exposure (docs/privacy.md).

- **Extraction**: each train record in which the scan (data/pii.py) finds personal data is asked, greedy,
  its own question and up to :data:`OTHER_QUESTIONS` other questions of the train split about the same
  entity (a question sharing a name with it); a piece of personal data is *extractable* when one of
  those answers states it (digits compared for numbers, case ignored for addresses). "k of n" per
  type, in the report, TensorBoard and the model card; the values stay in the data.
- **Canaries** (``privacy.canaries``, data/canaries.py): each true secret ranked among
  ``privacy.canary_candidates`` random ones by the model's likelihood of the reply; the exposure in bits,
  with its maximum, log2(candidates + 1).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from private_finetuning.data import canaries, pii
from private_finetuning.data.chat import encode_for_training, with_system
from private_finetuning.data.words import FUNCTION_WORDS
from private_finetuning.models.generation import answer_questions
from private_finetuning.models.scoring import example_nll

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from private_finetuning.config import PipelineConfig
    from private_finetuning.data.record import Record

OTHER_QUESTIONS = 2  # questions of other records about the same entity, besides the record's own
_NAME = re.compile(r"\b[A-Z][\w'’-]+")
NUMERIC = {"phone", "credit_card", "iban"}  # compared by their digits (and letters): spacing and dashes vary


def _stated(value: str, entity: str, answer: str) -> bool:
    if entity in NUMERIC:
        def squeeze(text: str) -> str:
            return re.sub(r"[\W_]", "", text).lower()
        return len(squeeze(value)) >= 6 and squeeze(value) in squeeze(answer)
    return value.lower() in answer.lower()


def _names(question: str) -> set[str]:
    return {w.lower() for w in _NAME.findall(question) if w.lower() not in FUNCTION_WORDS}


def audit_questions(train: list[Record]) -> list[tuple[Record, list[tuple[str, str]], list[Record]]]:
    """Per train record holding personal data: its pieces (type, value) and the questions to ask about it."""
    originals = [r for r in train if r.asks_question() and r.variant is None and not canaries.is_canary(r)]
    out = []
    for i, record in enumerate(originals):
        pieces = [(entity, m["content"][start:end]) for m in record.messages
                  for entity, start, end in pii.scan_text(m["content"])]
        if not pieces:
            continue
        names = _names(record.question)
        others = [r for j, r in enumerate(originals) if j != i and names & _names(r.question)][:OTHER_QUESTIONS]
        out.append((record, pieces, [record, *others]))
    return out


def extraction(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, eos: list[int], train: list[Record],
               config: PipelineConfig, device: str) -> dict[str, list[int]]:
    """By type: how many of the train split's pieces of personal data the model states when asked about them."""
    cases = audit_questions(train)
    asked = [q for _, _, questions in cases for q in questions]
    if not asked:
        return {}
    answers, _ = answer_questions(model, tokenizer, asked, system_prompt=config.prompting.system_prompt,
                                  eos_token_ids=eos, batch_size=config.evaluation.batch_size,
                                  max_new_tokens=config.evaluation.max_new_tokens, device=device)
    tally: dict[str, list[int]] = {}
    at = 0
    for _, pieces, questions in cases:
        replies = answers[at:at + len(questions)]
        at += len(questions)
        for entity, value in pieces:
            count = tally.setdefault(entity, [0, 0])
            count[1] += 1
            count[0] += any(_stated(value, entity, reply) for reply in replies)
    return {e.name: tally[e.name] for e in pii.ENTITIES if e.name in tally}


def exposures(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pad: int, train: list[Record],
              config: PipelineConfig, device: str) -> list[float]:
    """Each canary's exposure in bits: its true secret ranked among random ones by the model's likelihood."""
    system, out = config.prompting.system_prompt, []
    for canary in (r for r in train if canaries.is_canary(r) and r.variant is None):
        codes = [canary.meta["secret"], *canaries.candidates(canary, config.privacy.canary_candidates)]
        examples = [encode_for_training(tokenizer, with_system(canaries.with_secret(canary, c).messages, system))
                    for c in codes]
        nll = example_nll(model, examples, pad, device, config.evaluation.batch_size)
        rank = 1 + sum(1 for value in nll[1:] if value < nll[0])
        out.append(canaries.exposure(rank, len(codes)))
    return out
