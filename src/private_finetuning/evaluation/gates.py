"""The promotion gates: thresholds an adapter must meet before the server may serve it (evaluation.gates).

A gate set to null is off. Fact gates apply to every eval record with a fact to check: its ``answer``,
or the facts derived from its reply (data/expected.py); only where no record has either are they
reported "not applicable" (forgetting is still gated, so such data is never promoted unchecked).
Fact gates judge the served model where it was judged (the answers users will get), forgetting the
fine-tuned transformers model (it needs log-probabilities).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from private_finetuning.evaluation.report import GateResult

if TYPE_CHECKING:
    from private_finetuning.config import EvaluationGates
    from private_finetuning.evaluation.report import ModelScores, PrivacyAudit


def check_gates(gates: EvaluationGates, metrics: dict[str, ModelScores], max_extractable: int | None = None,
                privacy: PrivacyAudit | None = None) -> list[GateResult]:
    base, tuned = metrics["base"], metrics["fine_tuned"]
    judged = metrics.get("served", tuned)
    results: list[GateResult] = []

    def gate(name: str, threshold: float | None, value: float | None, ok: bool) -> None:
        if threshold is not None:
            results.append(GateResult(name, threshold, value, bool(ok)))

    if judged.fact_accuracy is not None and base.fact_accuracy is not None:
        gain = judged.fact_accuracy - base.fact_accuracy
        gate("min_fact_accuracy_gain", gates.min_fact_accuracy_gain, gain,
             gates.min_fact_accuracy_gain is not None and gain >= gates.min_fact_accuracy_gain)
        gate("min_fact_accuracy", gates.min_fact_accuracy, judged.fact_accuracy,
             gates.min_fact_accuracy is not None and judged.fact_accuracy >= gates.min_fact_accuracy)
    elif gates.min_fact_accuracy_gain is not None or gates.min_fact_accuracy is not None:
        results.append(GateResult("fact accuracy gates", None, None, True,
                                  "not applicable: no eval record has an `answer` or a fact in its reply to check"))
    if gates.min_gain_over_retrieval is not None:
        rag = metrics.get("base_retrieval")
        if rag is None or rag.fact_accuracy is None or judged.fact_accuracy is None:
            results.append(GateResult("min_gain_over_retrieval", gates.min_gain_over_retrieval, None, True,
                                      "not applicable: no fact accuracy of the base model with retrieval"))
        else:
            gain = judged.fact_accuracy - rag.fact_accuracy
            gate("min_gain_over_retrieval", gates.min_gain_over_retrieval, gain, gain >= gates.min_gain_over_retrieval)
    if max_extractable is not None:  # privacy.max_extractable: personal data the model states when asked
        given = privacy.extractable_total if privacy is not None else 0
        gate("privacy.max_extractable", max_extractable, given, given <= max_extractable)
    kl = tuned.forgetting_kl
    gate("max_forgetting_kl", gates.max_forgetting_kl, kl,
         gates.max_forgetting_kl is not None and (kl or 0.0) <= gates.max_forgetting_kl)
    assert tuned.general_perplexity is not None and base.general_perplexity is not None
    increase = tuned.general_perplexity / base.general_perplexity - 1
    gate("max_general_perplexity_increase", gates.max_general_perplexity_increase, increase,
         gates.max_general_perplexity_increase is not None and increase <= gates.max_general_perplexity_increase)
    return results
