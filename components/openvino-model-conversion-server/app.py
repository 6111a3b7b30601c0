"""openvino-model-conversion-server entrypoint; the logic lives in private_finetuning.stages.openvino_conversion."""

from private_finetuning.stages.openvino_conversion import main

if __name__ == "__main__":
    raise SystemExit(main())
