"""One module per pipeline stage: each is a container's entry point (``components/<image>/app.py`` calls its
``main``), parses the pod's arguments, waits for its inputs and publishes its artifact. The logic lives in
the area packages; a stage wires them to volumes.

| component (image, pod)            | module               | reads                              | publishes           |
|-----------------------------------|----------------------|------------------------------------|---------------------|
| dataset-relocation-server         | dataset_relocation   | the data file or the embedded set  | DATASET             |
| model-relocation-server           | model_relocation     | the base model source              | BASE_MODEL          |
| tokenizer-relocation-server       | tokenizer_relocation | the tokenizer source               | BASE_TOKENIZER      |
| model-reference-relocation-server | reference_relocation | the reference model source         | REFERENCE_MODEL     |
| openvino-model-conversion-server  | openvino_conversion  | base model, tokenizer              | BASE_MODEL_OPENVINO |
| model-peft-server                 | peft_training        | dataset, base model, tokenizer     | ADAPTER             |
| model-evaluation-server           | evaluation           | the above and the adapter          | EVALUATION          |
| model-export-server               | model_export         | the promoted adapter, its inputs   | EXPORT              |
| model-inference-server            | inference_server     | promoted adapter, base model or IR | (serves it)         |
| model-inference-vllm-server       | vllm_sidecar         | base model, tokenizer (GPU)        | (vLLM beside it)    |

Output names are the artifact contract's (``artifacts/store.py``); the evaluation also writes PROMOTION.
``common`` holds what every stage shares: argument parsing, exit codes, waiting and the relocate flow.
"""
