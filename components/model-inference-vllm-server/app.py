"""model-inference-vllm-server entrypoint; the logic lives in private_finetuning.stages.vllm_sidecar."""

from private_finetuning.stages.vllm_sidecar import main

if __name__ == "__main__":
    raise SystemExit(main())
