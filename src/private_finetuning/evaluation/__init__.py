"""Judging an adapter: the metrics, the typed report, the gates that decide promotion, the charts.

``metrics`` (fact accuracy, ROUGE-L, token F1: one table of answer metrics), ``report``
(:class:`~.report.EvaluationReport` and its Markdown), ``gates``, ``charts``.
"""
