"""model-export-server entrypoint; the logic lives in private_finetuning.stages.model_export."""

from private_finetuning.stages.model_export import main

if __name__ == "__main__":
    raise SystemExit(main())
