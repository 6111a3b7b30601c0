"""Judging an adapter: the metrics, the typed report, the gates that decide promotion, the charts.

``metrics`` (the METRICS table: fact accuracy, token F1, exact match, ROUGE-L, perplexities, latency),
``judge`` (each model's answers and scores), ``report`` (:class:`~.report.EvaluationReport`), ``gates``,
``pages`` (report.md and report.html), ``charts``.
"""
