"""Private Fine-Tuning: LoRA fine-tuning of an LLM on private data, inside your own cluster.

Code map, lowest layer first (a package imports only those above it in this list; tests/unit/test_architecture.py
checks it):

- ``errors``, ``config``: exit codes and the pipeline YAML (pydantic models, ``pft config-schema``);
- ``telemetry/``: log lines with ETA, the /status endpoint, TensorBoard runs;
- ``data/``: the input readers (one table, ``formats.READERS``), the ``Record`` type stages exchange, chat
  encoding and templates, how facts are matched, question variants, the embedded AcmeHotels set;
- ``artifacts/``: the artifact contract (versioned, checksummed outputs; each stage's output names) and the
  promotion pointer;
- ``models/``: where weights come from, loading, device, generation, teacher-forced scoring, OpenVINO IR;
- ``training/``: the LoRA recipe (``recipe.TrainingRun``: setup → fit → finish) and its parts;
- ``evaluation/``: the metric table, the judge, the typed ``EvaluationReport``, gates, charts, pages;
- ``export/``: GGUF, the Ollama Modelfile and the model card;
- ``serving/``: the inference server (one table of engines, ``serving.engines.ENGINES``);
- ``stages/``: one entry point per container (the table in ``stages/__init__.py``);
- ``deploy/``: rendering the kustomize overlays, the local runner (``pft run``), the Kubeflow compiler;
- ``cli``: ``pft``.
"""

__version__ = "0.1.0"
